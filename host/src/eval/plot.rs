//! ROC plots of verification runs: one curve per set, TAR against FAR on a logarithmic FAR axis, as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (through `ab_glyph`), so the PNG needs no system
//! fonts; the SVG names the font family and leaves rendering to the viewer.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use elasticface_core::nn::ImageShape;
use elasticface_core::verify::RocPoint;
use plotters::backend::{BitMapBackend, SVGBackend};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::data::decode::encode_png;

/// Size of the plots in pixels.
pub const SIZE: (u32, u32) = (900, 640);

/// The curve colours, in set order (then repeated): distinguishable on white and for most colour-blind readers.
pub const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One curve: its legend and its points.
#[derive(Clone, Debug)]
pub struct Curve {
    /// The legend, e.g. `lfw (99.82%)`.
    pub label: String,
    /// ROC points; those with FAR 0 lie off the logarithmic axis and are skipped.
    pub points: Vec<RocPoint>,
}

/// Writes the curves as a PNG and an SVG plot.
pub fn write_roc(curves: &[Curve], png: &Path, svg: &Path) -> Result<()> {
    register_font()?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, curves).context("drawing the PNG plot")?;
        root.present().map_err(|e| anyhow!("drawing the PNG plot: {e}"))?;
    }
    let bytes = encode_png(&rgb, ImageShape { h: h as usize, w: w as usize })?;
    std::fs::write(png, bytes).with_context(|| format!("cannot write {}", png.display()))?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        draw(&root, curves).context("drawing the SVG plot")?;
        root.present().map_err(|e| anyhow!("drawing the SVG plot: {e}"))?;
    }
    std::fs::write(svg, text).with_context(|| format!("cannot write {}", svg.display()))?;
    Ok(())
}

/// Makes DejaVu Sans the `sans-serif` family of every plot (once per process).
fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font does not load"));
    });
    result
}

/// The axis ranges: FAR from the power of ten at or below the smallest plotted FAR (at least two decades) to 1;
/// TAR from the tenth at or below the smallest plotted TAR to 1.
fn ranges(curves: &[Curve]) -> ((f64, f64), (f64, f64)) {
    let plotted = || curves.iter().flat_map(|c| c.points.iter().filter(|p| p.far > 0.0));
    let min_far = plotted().map(|p| p.far).fold(1.0f64, f64::min);
    let x_min = 10f64.powf(min_far.log10().floor()).min(1e-2);
    let min_tar = plotted().map(|p| p.tar).fold(1.0f64, f64::min);
    let y_min = ((min_tar * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    ((x_min, 1.0), (y_min, 1.0))
}

/// Draws the chart on any backend.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &[Curve]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let ((x0, x1), (y0, y1)) = ranges(curves);
    let mut chart = ChartBuilder::on(root)
        .caption("ROC: verification (flip-fused embeddings)", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("false accept rate (FAR)")
        .y_desc("true accept rate (TAR)")
        .x_labels(12)
        .y_labels(11)
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = c.points.iter().filter(|p| p.far > 0.0).map(|p| (p.far, p.tar.max(y0)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The demo's picture (PNG): the training loss per step on the left, the held-out ROC before and after training
/// on the right.
pub fn write_demo(losses: &[f32], before: &Curve, after: &Curve, png: &Path) -> Result<()> {
    register_font()?;
    let size = (1500u32, 600u32);
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        let (left, right) = root.split_horizontally(size.0 / 2);
        draw_losses(&left, losses).context("drawing the loss curve")?;
        draw(&right, &[before.clone(), after.clone()]).context("drawing the ROC")?;
        root.present().map_err(|e| anyhow!("drawing the demo picture: {e}"))?;
    }
    let bytes = encode_png(&rgb, ImageShape { h: size.1 as usize, w: size.0 as usize })?;
    std::fs::write(png, bytes).with_context(|| format!("cannot write {}", png.display()))
}

/// The loss of every step, on a linear scale.
fn draw_losses<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, losses: &[f32]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let top = losses.iter().copied().filter(|l| l.is_finite()).fold(1e-3f32, f32::max) as f64 * 1.05;
    let mut chart = ChartBuilder::on(root)
        .caption("training loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..losses.len().max(1) as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("margin loss")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(246, 246, 246))
        .draw()
        .map_err(err)?;
    let points = losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, f64::from(l)));
    chart.draw_series(LineSeries::new(points, COLORS[0].stroke_width(2))).map_err(err)?;
    Ok(())
}
