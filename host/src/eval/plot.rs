//! ROC plots of verification runs (one curve per set, TAR against FAR on a logarithmic FAR axis), the demo's
//! picture, and `report`'s training pictures (loss and accuracies against the step), as PNG and SVG.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (through `ab_glyph`), so the PNG needs no system
//! fonts; the SVG names the font family and leaves rendering to the viewer.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use elasticface_core::nn::ImageShape;
use elasticface_core::verify::RocPoint;
use plotters::backend::{BitMapBackend, SVGBackend};
use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::ValueFormatter;
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
    write_png_and_svg(SIZE, png, svg, |root| draw(root, curves), |root| draw(root, curves))
}

/// Draws a picture of `size` twice, with `bitmap` as a PNG at `png` and with `vector` as an SVG at `svg` (the
/// same drawing on two backends: plotters' backends are types of their own).
fn write_png_and_svg(
    size: (u32, u32),
    png: &Path,
    svg: &Path,
    bitmap: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    vector: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let (w, h) = size;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        bitmap(&root).context("drawing the PNG plot")?;
        root.present().map_err(|e| anyhow!("drawing the PNG plot: {e}"))?;
    }
    let bytes = encode_png(&rgb, ImageShape { h: h as usize, w: w as usize })?;
    std::fs::write(png, bytes).with_context(|| format!("cannot write {}", png.display()))?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        vector(&root).context("drawing the SVG plot")?;
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
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("false accept rate (FAR)")
        .y_desc("true accept rate (TAR)")
        .x_labels(12)
        .y_labels(11)
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.2}"));
    draw_mesh(&mut mesh)?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = c.points.iter().filter(|p| p.far > 0.0).map(|p| (p.far, p.tar.max(y0)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.as_str())
            .legend(legend_mark(color));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Draws a chart's grid, axes and labels in the plots' style, once their descriptions and formats are set.
fn draw_mesh<X, Y, DB: DrawingBackend>(mesh: &mut MeshStyle<'_, '_, X, Y, DB>) -> Result<()>
where
    X: Ranged + ValueFormatter<X::ValueType>,
    Y: Ranged + ValueFormatter<Y::ValueType>,
    DB::ErrorType: 'static,
{
    mesh.label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

/// A series' mark in the legend: a short thick line of its colour.
fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
}

/// Draws the legend of the series labelled so far, boxed, at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))
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

/// One line of a training picture: its legend and its `(step, value)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend: a run's name, or a set's (`lfw`, `r100: lfw`).
    pub label: String,
    /// `(step, value)`, in step order.
    pub points: Vec<(f64, f64)>,
    /// Whether each point is also marked (measurements few and far between).
    pub marks: bool,
}

/// The size of a training picture: two panels side by side.
pub const TRAINING_SIZE: (u32, u32) = (1500, 600);

/// Writes a training picture as a PNG and an SVG: `losses` (one curve a run) on the left, `accuracies` (one a set
/// of a run) on the right; a panel with no series says so.
pub fn write_training(losses: &[Series], accuracies: &[Series], png: &Path, svg: &Path) -> Result<()> {
    write_png_and_svg(
        TRAINING_SIZE,
        png,
        svg,
        |root| draw_training(root, losses, accuracies),
        |root| draw_training(root, losses, accuracies),
    )
}

/// Draws a training picture on any backend.
fn draw_training<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    losses: &[Series],
    accuracies: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (left, right) = root.split_horizontally(TRAINING_SIZE.0 / 2);
    draw_steps(&left, losses, Panel::Loss)?;
    draw_steps(&right, accuracies, Panel::Accuracy)
}

/// What a panel of a training picture shows.
#[derive(Clone, Copy, PartialEq)]
enum Panel {
    /// The margin loss, from 0.
    Loss,
    /// Verification accuracy, from the tenth at or below the lowest to 1.
    Accuracy,
}

/// Draws series against the step on one panel.
fn draw_steps<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &[Series], panel: Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let (caption, y_desc) = match panel {
        Panel::Loss => ("training loss", "margin loss"),
        Panel::Accuracy => ("verification accuracy (10-fold)", "accuracy"),
    };
    let points = || series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite());
    if points().next().is_none() {
        let style = ("sans-serif", 20).into_font().color(&BLACK);
        let text = format!("{caption}: nothing measured");
        root.draw(&Text::new(text, (40, 40), style)).map_err(err)?;
        return Ok(());
    }
    let x_max = points().map(|p| p.0).fold(1.0f64, f64::max);
    let (y0, y1) = match panel {
        Panel::Loss => (0.0, points().map(|p| p.1).fold(1e-3f64, f64::max) * 1.05),
        Panel::Accuracy => {
            let low = points().map(|p| p.1).fold(1.0f64, f64::min);
            (((low * 10.0).floor() / 10.0).clamp(0.0, 0.9), 1.0)
        }
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y0..y1)
        .map_err(err)?;
    let x_label = |x: &f64| format!("{x:.0}");
    let y_label = |y: &f64| match panel {
        Panel::Loss => format!("{y:.1}"),
        Panel::Accuracy => format!("{y:.2}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step").y_desc(y_desc).x_label_formatter(&x_label).y_label_formatter(&y_label);
    draw_mesh(&mut mesh)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(legend_mark(color));
        if s.marks {
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    let position = match panel {
        Panel::Loss => SeriesLabelPosition::UpperRight,
        Panel::Accuracy => SeriesLabelPosition::LowerRight,
    };
    draw_legend(&mut chart, position)
}
