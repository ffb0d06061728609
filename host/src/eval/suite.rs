//! `elasticface eval`: a model on several verification packs, with a table, a JSON report and ROC plots.
//!
//! Each pack's images are decoded in chunks (on all cores; images of another size are resized as insightface
//! does, with a warning), embedded with their mirror images on the backend, and scored with the core's protocol
//! ([`super::score`]). One report covers every pack of a run: `report.json`, `roc.png`, `roc.svg`.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use elasticface_core::nn::ImageShape;
use elasticface_core::verify::RocPoint;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::bin::VerificationPack;
use super::ijb::{IjbReport, RankReport, TpirReport, IJB_FARS, IJB_FPIRS};
use super::plot::{self, Curve};
use super::{roc_curve, score, FlipEmbeddings, VerifyReport};
use crate::data::decode::decode_many;
use crate::train::Backend;

/// Images decoded and embedded at a time (bounds the memory of decoded pixels: 1024 112x112 images are 38 MB).
pub const CHUNK_IMAGES: usize = 1024;

/// Points of each ROC curve kept in the report and the plot.
pub const ROC_POINTS: usize = 2000;

/// One pack's results.
#[derive(Clone, Debug, Serialize)]
pub struct SetReport {
    /// The pack's name: its file name without `.bin` (`lfw`, `cfp_fp`, ...).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Images in the pack (twice the pairs).
    pub images: usize,
    /// Images that were not of the network's input size and were resized.
    pub resized_images: usize,
    /// The protocol's figures.
    #[serde(flatten)]
    pub verify: VerifyReport,
    /// The ROC curve (FAR, TAR at each threshold), at most [`ROC_POINTS`] points.
    pub roc: Vec<RocJson>,
}

/// A ROC point as the report stores it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RocJson {
    /// Squared-distance threshold (pairs with `dist < threshold` are accepted); the curve's last point, which
    /// accepts every pair, has `+inf`, written `null` in JSON (which has no infinity).
    pub threshold: f64,
    /// False-accept rate.
    pub far: f64,
    /// True-accept rate.
    pub tar: f64,
}

impl From<RocPoint> for RocJson {
    fn from(p: RocPoint) -> Self {
        Self { threshold: p.threshold, far: p.far, tar: p.tar }
    }
}

impl From<RocJson> for RocPoint {
    fn from(p: RocJson) -> Self {
        Self { threshold: p.threshold, far: p.far, tar: p.tar }
    }
}

/// What a run of `elasticface eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// The model file.
    pub model: PathBuf,
    /// The network, in words.
    pub network: String,
    /// The device the embeddings were computed on.
    pub device: String,
    /// How the figures were computed.
    pub protocol: &'static str,
    /// One entry per pack, in the order given.
    pub sets: Vec<SetReport>,
    /// The IJB protocol ([`super::ijb::IJB_PROTOCOL`]), where IJB sets were evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ijb_protocol: Option<&'static str>,
    /// One entry per IJB set, in the order given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ijb: Vec<IjbReport>,
}

/// The protocol, as the report states it.
pub const PROTOCOL: &str = "each image and its horizontal flip embedded, fused = l2normalize(e + e_flip), \
dist = squared L2; 10 consecutive folds, thresholds 0.00..3.99 step 0.01, each fold's threshold chosen on the other \
nine (first maximum), accuracy mean and population std over folds; TAR at FAR: the largest threshold whose FAR on \
different pairs does not exceed the target";

/// Whether `path` is a verification pack: a file named `*.bin`.
fn is_pack(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("bin"))
}

/// Every `*.bin` file in `dir`, sorted by name (none is not an error here).
fn packs_found_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
        if is_pack(&path) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Every `*.bin` file in `dir`, sorted by name; a folder without one is an error.
pub fn packs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let found = packs_found_in(dir)?;
    if found.is_empty() {
        bail!("{} holds no verification pack (*.bin)", dir.display());
    }
    Ok(found)
}

/// The packs `path` names, if it names any: itself where it is a `*.bin` file, the `*.bin` files it holds (sorted by
/// name) where it is a folder holding some; `None` for anything else (e.g. a dataset of held-out identities).
pub fn packs_at(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    if is_pack(path) {
        return Ok(Some(vec![path.to_path_buf()]));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let found = packs_found_in(path)?;
    Ok((!found.is_empty()).then_some(found))
}

/// The name a pack is reported under: its file name without the extension.
pub fn pack_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// Evaluates one pack on `backend`, whose input is `shape`. `quiet` hides the progress bar.
pub fn evaluate_pack(backend: &mut dyn Backend, path: &Path, shape: ImageShape, quiet: bool) -> Result<SetReport> {
    let pack = VerificationPack::open(path)?;
    let name = pack_name(path);
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(pack.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} images  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix(name.clone());
    let mut emb = FlipEmbeddings::default();
    let mut resized = 0;
    let mut example: Option<ImageShape> = None;
    for start in (0..pack.len()).step_by(CHUNK_IMAGES) {
        let count = CHUNK_IMAGES.min(pack.len() - start);
        let (pixels, originals) = decode_many(
            count,
            shape,
            |i| Ok(Cow::Borrowed(pack.image(start + i))),
            |i| format!("{}: image {} (pair {})", pack.name, start + i, (start + i) / 2),
        )?;
        for o in originals.into_iter().flatten() {
            resized += 1;
            example.get_or_insert(o);
        }
        emb.extend(backend, &pixels, count).with_context(|| format!("{}: embedding", pack.name))?;
        bar.inc(count as u64);
    }
    bar.finish_and_clear();
    if let Some(o) = example {
        eprintln!(
            "warning: {}: {resized} of {} images are not {}x{} (e.g. {}x{}); resized as insightface does (shorter \
             side to the input size, centre crop)",
            pack.name,
            pack.len(),
            shape.h,
            shape.w,
            o.h,
            o.w
        );
    }
    let verify = score(&emb, &pack.issame).with_context(|| format!("{}: scoring", pack.name))?;
    let roc = roc_curve(&verify.dist, &pack.issame, ROC_POINTS)
        .with_context(|| format!("{}: ROC", pack.name))?
        .into_iter()
        .map(RocJson::from)
        .collect();
    Ok(SetReport { name, file: path.to_path_buf(), images: pack.len(), resized_images: resized, verify, roc })
}

/// The files a run writes.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// `report.json`.
    pub json: PathBuf,
    /// `roc.png`.
    pub png: PathBuf,
    /// `roc.svg`.
    pub svg: PathBuf,
}

/// Writes `report.json`, `roc.png` and `roc.svg` into `dir` (created if needed).
pub fn write_outputs(report: &EvalReport, dir: &Path) -> Result<Outputs> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = Outputs { json: dir.join("report.json"), png: dir.join("roc.png"), svg: dir.join("roc.svg") };
    let text = serde_json::to_string_pretty(report)?;
    crate::files::write_atomically(&out.json, (text + "\n").as_bytes())?;
    let packs = report.sets.iter().map(|s| Curve {
        label: format!("{} ({:.2}%)", s.name, 100.0 * s.verify.accuracy),
        points: s.roc.iter().map(|&p| p.into()).collect(),
    });
    // IJB sets are labelled with the TAR at FAR 1e-4, the figure papers give, or at the next FAR the set resolves.
    let ijb = report.ijb.iter().map(|s| Curve {
        label: match s.tar_at_far.iter().filter(|t| t.far >= 1e-4).find_map(|t| Some((t.far, t.tar?))) {
            Some((far, tar)) => format!("{} (TAR {:.2}% at FAR {far:.0e})", s.name, 100.0 * tar),
            None => s.name.clone(),
        },
        points: s.roc.iter().map(|&p| p.into()).collect(),
    });
    let curves: Vec<Curve> = packs.chain(ijb).collect();
    plot::write_roc(&curves, &out.png, &out.svg)?;
    Ok(out)
}

/// Formats a TAR for the table: a percentage, or `n/a` when the set has too few different pairs.
fn tar_cell(tar: Option<f64>) -> String {
    match tar {
        Some(t) => format!("{:.2}", 100.0 * t),
        None => "n/a".to_string(),
    }
}

/// Prints the results as tables: the packs, then the IJB sets.
pub fn print_table(report: &EvalReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "model {} ({}), on {}", report.model.display(), report.network, report.device)?;
    if !report.sets.is_empty() {
        writeln!(
            out,
            "{:<12} {:>6} {:>17} {:>14} {:>14} {:>10} {:>10}",
            "set", "pairs", "accuracy (%)", "TAR@FAR=1e-3", "TAR@FAR=1e-4", "threshold", "best thr"
        )?;
        for s in &report.sets {
            let v = &s.verify;
            writeln!(
                out,
                "{:<12} {:>6} {:>17} {:>14} {:>14} {:>10.3} {:>10.2}",
                s.name,
                v.pairs,
                format!("{:.2} ± {:.2}", 100.0 * v.accuracy, 100.0 * v.accuracy_std),
                tar_cell(v.tar(1e-3)),
                tar_cell(v.tar(1e-4)),
                v.threshold,
                v.best_threshold,
            )?;
        }
        writeln!(
            out,
            "thresholds are squared distances of unit embeddings (cosine = 1 - t/2): `threshold` is the mean of the \
             10 folds' choices, `best thr` the best over all pairs; n/a: fewer than 1/FAR different pairs"
        )?;
    }
    if !report.ijb.is_empty() {
        write!(out, "{:<8} {:>8} {:>9} {:>10}", "IJB set", "faces", "templates", "pairs")?;
        for far in IJB_FARS {
            write!(out, " {:>7}", format!("{far:.0e}"))?;
        }
        writeln!(out)?;
        for s in &report.ijb {
            write!(out, "{:<8} {:>8} {:>9} {:>10}", s.name, s.faces, s.templates, s.pairs)?;
            for far in IJB_FARS {
                write!(out, " {:>7}", tar_cell(s.tar(far)))?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "IJB: TAR (%) at each FAR, 1:1 verification of templates; n/a: fewer than 1/FAR different pairs"
        )?;
    }
    if report.ijb.iter().any(|s| s.search.is_some()) {
        print_search_table(report, out)?;
    }
    Ok(())
}

/// The IJB sets' 1:N identification: each gallery, then over the galleries.
fn print_search_table(report: &EvalReport, out: &mut dyn Write) -> std::io::Result<()> {
    write!(
        out,
        "{:<8} {:<7} {:>9} {:>7} {:>9} {:>6} {:>6} {:>7}",
        "IJB 1:N", "gallery", "templates", "mated", "non-mated", "rank1", "rank5", "rank10"
    )?;
    for fpir in IJB_FPIRS {
        write!(out, " {:>7}", format!("{fpir:.0e}"))?;
    }
    writeln!(out)?;
    let row = |out: &mut dyn Write, cells: [String; 5], rank: &[RankReport], tpir: &[TpirReport]| {
        let [set, gallery, templates, mated, non_mated] = cells;
        write!(out, "{set:<8} {gallery:<7} {templates:>9} {mated:>7} {non_mated:>9}")?;
        for r in rank {
            write!(out, " {:>6.2}", 100.0 * r.rate)?;
        }
        for t in tpir {
            write!(out, " {:>7}", tar_cell(t.tpir))?;
        }
        writeln!(out)
    };
    for s in &report.ijb {
        let Some(search) = &s.search else { continue };
        for g in &search.galleries {
            let (name, templates, sc) = (g.name.clone(), g.templates.to_string(), &g.scores);
            let cells = [s.name.clone(), name, templates, sc.mated.to_string(), sc.non_mated.to_string()];
            row(out, cells, &sc.rank, &sc.tpir_at_fpir)?;
        }
        let cells = [s.name.clone(), "all".into(), String::new(), String::new(), format!("{} probes", search.probes)];
        row(out, cells, &search.rank, &search.tpir_at_fpir)?;
    }
    writeln!(
        out,
        "IJB 1:N: identification rate (%) at rank 1, 5, 10 over mated probes, then TPIR (%) at each FPIR; each gallery \
         searched by every probe template (those of subjects it does not hold are non-mated); all: ranks over every \
         gallery's mated probes, mean TPIR; n/a: fewer than 1/FPIR non-mated probes"
    )
}
