//! `elasticface report`: how training runs went, from their folders alone (`metrics.jsonl`, `config.toml`,
//! `best.safetensors`, a fine-tuning run's `imprint.safetensors`), while they train or after: a summary per run and a
//! picture of the loss and of each verification set's accuracy over the steps, several runs on the same axes.
//!
//! Nothing here needs the data, the model or a GPU; a run being written to is read as it stands (a line cut short
//! by a crash, or being written, is left out and counted).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::eval::plot::{self, Series};
use crate::train::best::{self, Best};
use crate::train::imprint;
use crate::train::run::{CONFIG_FILE, METRICS_FILE, UNBOUNDED_EPOCHS};

/// One training step's line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLine {
    /// Steps taken after it (1 for the first).
    pub step: u64,
    /// The epoch its batch came from (0-based).
    pub epoch: u64,
    /// Its loss; `None` where it was not finite (a refused step).
    pub loss: Option<f64>,
    /// Its learning rate.
    pub lr: f64,
    /// Its speed, as measured by the run.
    pub images_per_second: f64,
}

/// One verification set's accuracies over a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SetLine {
    /// The set's name (`lfw`, `held-out` ...).
    pub set: String,
    /// `(step, 10-fold accuracy)` of each measurement, in the file's order.
    pub points: Vec<(u64, f64)>,
}

/// What a run's `metrics.jsonl` holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// The step lines, in the file's order.
    pub steps: Vec<StepLine>,
    /// The verification sets, in the order they first appear.
    pub sets: Vec<SetLine>,
    /// Lines that are not JSON (cut short by a crash, or being written).
    pub unreadable_lines: usize,
}

impl Metrics {
    /// Reads the lines of a `metrics.jsonl` text. Lines of other kinds (a fine-tuning run's start, an epoch's
    /// unreadable samples) are passed over.
    pub fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                m.unreadable_lines += 1;
                continue;
            };
            let Some(step) = v["step"].as_u64() else { continue };
            if let (Some(set), Some(accuracy)) = (v["set"].as_str(), v["val"]["accuracy"].as_f64()) {
                match m.sets.iter_mut().find(|s| s.set == set) {
                    Some(s) => s.points.push((step, accuracy)),
                    None => m.sets.push(SetLine { set: set.to_string(), points: vec![(step, accuracy)] }),
                }
            } else if v.get("loss").is_some() {
                // serde_json writes a non-finite loss as null.
                m.steps.push(StepLine {
                    step,
                    epoch: v["epoch"].as_u64().unwrap_or(0),
                    loss: v["loss"].as_f64(),
                    lr: v["lr"].as_f64().unwrap_or(f64::NAN),
                    images_per_second: v["images_per_second"].as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        m
    }
}

/// A run folder as read: its metrics, its settings (`config.toml`, if there) and the record of its best model.
#[derive(Clone, Debug)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// Its `metrics.jsonl`.
    pub metrics: Metrics,
    /// Its `config.toml`, if it has one that reads.
    pub config: Option<toml::Table>,
    /// The record in its `best.safetensors`, if it has one.
    pub best: Option<Best>,
    /// Where it has an imprint's progress (a fine-tuning run in its imprint, or stopped there): the samples read at
    /// the last save and the samples in the data ([`imprint::read_progress`]).
    pub imprint: Option<(usize, usize)>,
}

impl Run {
    /// Reads run folder `dir`: its `metrics.jsonl`, which a run that has not yet written one (opening its data,
    /// imprinting) lacks, and which a folder without a `config.toml` must hold.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(METRICS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.join(CONFIG_FILE).exists() => String::new(),
            read => read.with_context(|| {
                format!("cannot read {}: is {} a run folder (train --out)?", path.display(), dir.display())
            })?,
        };
        // All are written atomically by `train`: one that does not read was changed by hand, and the summary goes
        // on without it, saying so.
        let config = optional(&dir.join(CONFIG_FILE), |p| Ok(std::fs::read_to_string(p)?.parse::<toml::Table>()?));
        let best =
            optional(&dir.join(best::FILE), |p| Best::read(p)?.context("its manifest holds no best_of_run record"));
        let imprint = optional(&dir.join(imprint::FILE), imprint::read_progress);
        Ok(Self { dir: dir.to_path_buf(), metrics: Metrics::parse(&text), config, best, imprint })
    }

    /// Whether its metrics hold a step or a verification: something to draw.
    fn has_lines(&self) -> bool {
        !(self.metrics.steps.is_empty() && self.metrics.sets.is_empty())
    }
}

/// `read(path)` where `path` exists; an error is a warning on stderr, and `None`.
fn optional<T>(path: &Path, read: impl FnOnce(&Path) -> Result<T>) -> Option<T> {
    if !path.exists() {
        return None;
    }
    read(path).map_err(|e| eprintln!("warning: {}: {e:#}; left out", path.display())).ok()
}

/// A span of steps and the mean of their finite losses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LossSpan {
    /// First step of the span.
    pub from: u64,
    /// Last step of the span.
    pub to: u64,
    /// The mean of its finite losses.
    pub loss: f64,
}

impl LossSpan {
    /// `48.0254 (steps 1-18)`, or `(step 1)` for a span of one step.
    fn describe(&self) -> String {
        match self.from == self.to {
            true => format!("{:.4} (step {})", self.loss, self.from),
            false => format!("{:.4} (steps {}-{})", self.loss, self.from, self.to),
        }
    }
}

/// One set's accuracy at one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measured {
    /// Steps taken when it was measured.
    pub step: u64,
    /// The 10-fold accuracy.
    pub accuracy: f64,
}

/// One verification set over a run: its first, last and best measurement (of equal accuracies, the earliest).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetSummary {
    /// The set's name.
    pub set: String,
    /// How many times it was measured.
    pub measurements: usize,
    /// The first measurement.
    pub first: Measured,
    /// The last.
    pub last: Measured,
    /// The highest.
    pub best: Measured,
}

/// What `report` says of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The run folder.
    pub run: PathBuf,
    /// The network, loss and batch of its `config.toml`, in words.
    pub settings: Option<String>,
    /// Step lines read.
    pub steps: usize,
    /// Steps taken at its last step line.
    pub last_step: u64,
    /// The epoch of the last step (1-based).
    pub epoch: Option<u64>,
    /// The epochs `config.toml` asks for, where they bound the run (the demo's, bounded by steps alone, do not).
    pub epochs: Option<u64>,
    /// The steps `config.toml` bounds the run to (`max_steps`), if it does.
    pub max_steps: Option<u64>,
    /// The mean loss over the first steps and over the last ones (a tenth of the steps, at most 100, each).
    pub loss: Option<(LossSpan, LossSpan)>,
    /// Steps whose loss was not finite (refused).
    pub non_finite_steps: usize,
    /// The learning rate of the last step.
    pub lr: Option<f64>,
    /// The median speed over the last steps (the same span as the last loss).
    pub images_per_second: Option<f64>,
    /// Each verification set.
    pub sets: Vec<SetSummary>,
    /// The record of the run's `best.safetensors`.
    pub best_model: Option<Best>,
    /// Lines of metrics.jsonl left out (not JSON).
    pub unreadable_lines: usize,
    /// A fine-tuning run's imprint, where the folder holds its progress: the samples read at its last save and the
    /// samples in the data.
    pub imprint: Option<(usize, usize)>,
}

/// The loss spans' length for `n` steps: a tenth of them, at least 1, at most 100.
fn span_len(n: usize) -> usize {
    (n / 10).clamp(1, 100)
}

/// The mean step and the mean loss of the steps with a finite loss; `None` where there are none.
fn mean_finite_loss(steps: &[StepLine]) -> Option<(f64, f64)> {
    let finite: Vec<(f64, f64)> = steps.iter().filter_map(|s| Some((s.step as f64, s.loss?))).collect();
    let (n, (step_sum, loss_sum)) =
        (finite.len() as f64, finite.iter().fold((0.0, 0.0), |(a, b), (s, l)| (a + s, b + l)));
    (!finite.is_empty()).then_some((step_sum / n, loss_sum / n))
}

fn loss_span(steps: &[StepLine]) -> Option<LossSpan> {
    let (_, loss) = mean_finite_loss(steps)?;
    Some(LossSpan { from: steps.first()?.step, to: steps.last()?.step, loss })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The network, loss and batch a `config.toml` asks for, in words: `r100, elastic-arc-plus, batch 128 x 4`.
fn describe_settings(c: &toml::Table) -> String {
    let text = |key: &str| c.get(key).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let int = |key: &str| c.get(key).and_then(|v| v.as_integer());
    let mut network = text("arch");
    if network == "custom" {
        let list = |key: &str| match c.get(key).and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","),
            None => "?".into(),
        };
        network = format!("custom (layers {}, widths {})", list("layers"), list("widths"));
    }
    let mut batch = format!("batch {}", int("batch").map_or("?".into(), |b| b.to_string()));
    if let Some(a) = int("accumulate").filter(|&a| a > 1) {
        batch += &format!(" x {a}");
    }
    let embedding = int("embedding").map_or(String::new(), |e| format!(", {e}-d"));
    format!("{network}{embedding}, {}, {batch}", text("loss"))
}

impl Summary {
    /// The summary of `run`.
    pub fn of(run: &Run) -> Self {
        let m = &run.metrics;
        let n = span_len(m.steps.len());
        let last = &m.steps[m.steps.len().saturating_sub(n)..];
        let loss = match (loss_span(&m.steps[..n.min(m.steps.len())]), loss_span(last)) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        let setting = |key: &str| run.config.as_ref().and_then(|c| c.get(key)?.as_integer()).map(|v| v as u64);
        let sets = m
            .sets
            .iter()
            .map(|s| {
                let at = |&(step, accuracy): &(u64, f64)| Measured { step, accuracy };
                // The first of the highest: max_by keeps the last of equals, so compare against the reversed index.
                let best = s.points.iter().enumerate().max_by(|(i, a), (j, b)| a.1.total_cmp(&b.1).then(j.cmp(i)));
                SetSummary {
                    set: s.set.clone(),
                    measurements: s.points.len(),
                    first: at(&s.points[0]),
                    last: at(s.points.last().expect("a set has a measurement")),
                    best: at(best.expect("a set has a measurement").1),
                }
            })
            .collect();
        Self {
            run: run.dir.clone(),
            settings: run.config.as_ref().map(describe_settings),
            steps: m.steps.len(),
            last_step: m.steps.last().map_or(0, |s| s.step),
            epoch: m.steps.last().map(|s| s.epoch + 1),
            epochs: setting("epochs").filter(|&e| e < UNBOUNDED_EPOCHS),
            max_steps: setting("max_steps").filter(|&s| s > 0),
            loss,
            non_finite_steps: m.steps.iter().filter(|s| s.loss.is_none()).count(),
            lr: m.steps.last().map(|s| s.lr).filter(|l| l.is_finite()),
            images_per_second: median(last.iter().map(|s| s.images_per_second).collect()),
            sets,
            best_model: run.best.clone(),
            unreadable_lines: m.unreadable_lines,
            imprint: run.imprint,
        }
    }

    /// The summary as lines of text, for a terminal.
    pub fn lines(&self) -> Vec<String> {
        // (label, text) rows, the labels then padded to one column.
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some((read, of)) = self.imprint {
            let state = if read < of { "at its last save" } else { "done; kept until the first checkpoint" };
            rows.push(("imprint".into(), format!("{read} of {of} samples read ({state})")));
        }
        let mut steps = self.last_step.to_string();
        if let Some(max) = self.max_steps {
            steps += &format!(" of at most {max}");
        }
        match (self.epoch, self.epochs) {
            (Some(e), Some(of)) => steps += &format!(" (epoch {e} of {of})"),
            (Some(e), None) => steps += &format!(" (epoch {e})"),
            _ => {}
        }
        if let Some(ips) = self.images_per_second {
            steps += &format!(", {ips:.0} images/s (median of the last steps)");
        }
        rows.push(("steps".into(), steps));
        if let Some((a, b)) = self.loss {
            rows.push(("loss".into(), format!("{} -> {}", a.describe(), b.describe())));
        }
        if self.non_finite_steps > 0 {
            rows.push(("refused".into(), format!("{} steps with a non-finite loss", self.non_finite_steps)));
        }
        if let Some(lr) = self.lr {
            rows.push(("lr".into(), format!("{lr:.3e} (last step)")));
        }
        for s in &self.sets {
            let pct = |m: &Measured| format!("{:.2}% (step {})", 100.0 * m.accuracy, m.step);
            rows.push((s.set.clone(), format!("{} -> {}, best {}", pct(&s.first), pct(&s.last), pct(&s.best))));
        }
        if let Some(b) = &self.best_model {
            let text = format!("step {}, mean verification accuracy {:.2}%", b.step, 100.0 * b.mean_accuracy);
            rows.push((best::FILE.into(), text));
        }
        if self.unreadable_lines > 0 {
            rows.push(("left out".into(), format!("{} lines of metrics.jsonl (not JSON)", self.unreadable_lines)));
        }
        let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let head = format!("{}: {}", self.run.display(), self.settings.as_deref().unwrap_or("no config.toml"));
        std::iter::once(head).chain(rows.iter().map(|(label, text)| format!("  {label:width$}  {text}"))).collect()
    }
}

/// A short name for each run: the folder's name, or its path where two runs share a name.
fn run_names(runs: &[Run]) -> Vec<String> {
    let name = |r: &Run| {
        // `.` and `..` have no file name: the folder's own name.
        let named =
            r.dir.file_name().map(PathBuf::from).or_else(|| Some(r.dir.canonicalize().ok()?.file_name()?.into()));
        named.map_or(r.dir.display().to_string(), |n| n.display().to_string())
    };
    let names: Vec<String> = runs.iter().map(name).collect();
    runs.iter()
        .zip(&names)
        .map(
            |(r, n)| if names.iter().filter(|m| *m == n).count() > 1 { r.dir.display().to_string() } else { n.clone() },
        )
        .collect()
}

/// At most this many points a loss curve: the steps are averaged in as many buckets.
pub const LOSS_POINTS: usize = 600;

/// The loss curve of a run: the mean finite loss of each bucket of consecutive steps (at most [`LOSS_POINTS`]
/// buckets of equal length, the last one shorter), at the bucket's mean step. Buckets without a finite loss are
/// left out.
pub fn loss_curve(steps: &[StepLine]) -> Vec<(f64, f64)> {
    let size = steps.len().div_ceil(LOSS_POINTS).max(1);
    steps.chunks(size).filter_map(mean_finite_loss).collect()
}

/// `elasticface report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run folders (train --out): each one's metrics.jsonl, config.toml and best.safetensors are read.
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write training.png and training.svg [default: the first RUN].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the summaries as JSON (one array) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write no picture.
    #[arg(long)]
    pub no_plot: bool,
}

impl ReportArgs {
    /// Prints each run's summary and writes the picture.
    pub fn run(&self) -> Result<ExitCode> {
        let runs = self.runs.iter().map(|d| Run::open(d)).collect::<Result<Vec<_>>>()?;
        let summaries: Vec<Summary> = runs.iter().map(Summary::of).collect();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summaries)?);
        } else {
            for s in &summaries {
                println!("{}", s.lines().join("\n"));
            }
        }
        if !runs.iter().any(Run::has_lines) {
            // A run opening its data or imprinting: a summary, but nothing to draw yet.
            if !self.no_plot {
                eprintln!("no picture: no step or verification line yet");
            }
        } else if !self.no_plot {
            let out = self.out.clone().unwrap_or_else(|| self.runs[0].clone());
            let (png, svg) = write_picture(&runs, &out)?;
            if !self.json {
                println!("wrote {}, {}", png.display(), svg.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Writes `out/training.png` and `out/training.svg`: the runs' loss curves, and each set's accuracy of each run.
pub fn write_picture(runs: &[Run], out: &Path) -> Result<(PathBuf, PathBuf)> {
    if !runs.iter().any(Run::has_lines) {
        bail!("nothing to draw: no step or verification line in the runs' metrics.jsonl");
    }
    let names = run_names(runs);
    let several = runs.len() > 1;
    let losses: Vec<Series> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| Series { label: n.clone(), points: loss_curve(&r.metrics.steps), marks: false })
        .collect();
    let accuracies: Vec<Series> = runs
        .iter()
        .zip(&names)
        .flat_map(|(r, n)| {
            r.metrics.sets.iter().map(move |s| Series {
                label: if several { format!("{n}: {}", s.set) } else { s.set.clone() },
                points: s.points.iter().map(|&(step, a)| (step as f64, a)).collect(),
                marks: true,
            })
        })
        .collect();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (png, svg) = (out.join("training.png"), out.join("training.svg"));
    plot::write_training(&losses, &accuracies, &png, &svg)?;
    Ok((png, svg))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn step(step: u64, epoch: u64, loss: Option<f64>) -> String {
        let loss = loss.map_or("null".to_string(), |l| l.to_string());
        format!(
            "{{\"step\":{step},\"epoch\":{epoch},\"loss\":{loss},\"lr\":0.1,\"images_per_second\":{},\
             \"grad_norm\":1.0}}\n",
            100 + step
        )
    }

    fn val(step: u64, set: &str, accuracy: f64) -> String {
        format!("{{\"step\":{step},\"set\":\"{set}\",\"val\":{{\"accuracy\":{accuracy},\"pairs\":600}}}}\n")
    }

    /// Steps, sets in first-appearance order, a refused step, other kinds of lines passed over, a cut line counted.
    #[test]
    fn a_metrics_file_reads_into_steps_and_sets() {
        let mut text = String::from("{\"step\":0,\"init\":\"m.pth\",\"seeded\":[],\"init_head\":\"imprint\"}\n");
        text += &val(0, "lfw", 0.5);
        text += &val(0, "agedb_30", 0.55);
        text += &step(1, 0, Some(40.0));
        text += &step(2, 0, None);
        text += "{\"step\":2,\"epoch\":0,\"skipped_samples\":1,\"reasons\":[]}\n";
        text += &step(3, 1, Some(30.0));
        text += &val(3, "lfw", 0.9);
        text += &val(3, "agedb_30", 0.8);
        text += "{\"step\":4,\"epoch\":1,\"lo";
        let m = Metrics::parse(&text);
        assert_eq!(m.steps.len(), 3);
        assert_eq!(m.steps[1], StepLine { step: 2, epoch: 0, loss: None, lr: 0.1, images_per_second: 102.0 });
        assert_eq!(m.sets.iter().map(|s| s.set.as_str()).collect::<Vec<_>>(), ["lfw", "agedb_30"]);
        assert_eq!(m.sets[1].points, [(0, 0.55), (3, 0.8)]);
        assert_eq!(m.unreadable_lines, 1);
    }

    /// The loss spans are a tenth of the steps each (refused steps left out of the mean), the best of a set the
    /// earliest of its highest, the speed the median of the last span.
    #[test]
    fn a_summary_spans_the_first_and_last_tenth() {
        let mut text = String::new();
        for s in 1..=40u64 {
            text += &step(s, (s - 1) / 20, if s == 39 { None } else { Some(s as f64) });
        }
        for (s, a) in [(0, 0.5), (10, 0.7), (20, 0.9), (30, 0.9), (40, 0.8)] {
            text += &val(s, "held-out", a);
        }
        let config: toml::Table = "arch = \"r100\"\nloss = \"elastic-arc-plus\"\nbatch = 128\naccumulate = 4\n\
                                   embedding = 512\nepochs = 26\n"
            .parse()
            .unwrap();
        let run = Run {
            dir: "runs/x".into(),
            metrics: Metrics::parse(&text),
            config: Some(config),
            best: None,
            imprint: None,
        };
        let s = Summary::of(&run);
        assert_eq!(s.settings.as_deref(), Some("r100, 512-d, elastic-arc-plus, batch 128 x 4"));
        assert_eq!((s.steps, s.last_step, s.epoch, s.epochs, s.max_steps), (40, 40, Some(2), Some(26), None));
        assert_eq!(s.non_finite_steps, 1);
        assert_eq!(
            s.loss,
            Some((
                LossSpan { from: 1, to: 4, loss: 2.5 },
                LossSpan { from: 37, to: 40, loss: (37.0 + 38.0 + 40.0) / 3.0 }
            ))
        );
        assert_eq!(s.images_per_second, Some(139.0));
        let set = &s.sets[0];
        assert_eq!(set.measurements, 5);
        assert_eq!(set.first, Measured { step: 0, accuracy: 0.5 });
        assert_eq!(set.last, Measured { step: 40, accuracy: 0.8 });
        assert_eq!(set.best, Measured { step: 20, accuracy: 0.9 });
        let text = s.lines().join("\n");
        assert!(text.contains("\n  held-out  50.00% (step 0) -> 80.00% (step 40), best 90.00% (step 20)"), "{text}");
        assert!(text.contains("\n  loss      2.5000 (steps 1-4) -> 38.3333 (steps 37-40)"), "{text}");
        assert!(text.contains("40 (epoch 2 of 26)"), "{text}");
    }

    /// Long runs are averaged into at most LOSS_POINTS buckets; a bucket of refused steps alone is left out.
    #[test]
    fn a_loss_curve_averages_buckets_of_steps() {
        let steps: Vec<StepLine> = (1..=1300u64)
            .map(|s| StepLine {
                step: s,
                epoch: 0,
                loss: (!(4..=6).contains(&s)).then_some(s as f64),
                lr: 0.1,
                images_per_second: 1.0,
            })
            .collect();
        let curve = loss_curve(&steps);
        // Buckets of 3 steps: 434 of them, the second (steps 4-6) all refused.
        assert_eq!(curve.len(), 433);
        assert_eq!(curve[0], (2.0, 2.0));
        assert_eq!(curve[1], (8.0, 8.0));
        assert_eq!(*curve.last().unwrap(), (1300.0, 1300.0));
        assert_eq!(loss_curve(&steps[..10]).len(), 10 - 3);
    }

    /// The picture: both panels drawn in the first series' colour (the loss left, the accuracy right), the legend
    /// in the SVG; runs with nothing to draw are refused.
    #[test]
    fn the_picture_draws_the_loss_and_the_accuracies() {
        let mut text = String::new();
        for s in 1..=50u64 {
            text += &step(s, 0, Some(60.0 - s as f64));
        }
        text += &val(0, "lfw", 0.6);
        text += &val(50, "lfw", 0.9);
        let dir = tempfile::tempdir().unwrap();
        let run = Run { dir: "runs/x".into(), metrics: Metrics::parse(&text), config: None, best: None, imprint: None };
        let (png, svg) = write_picture(std::slice::from_ref(&run), dir.path()).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), plot::TRAINING_SIZE);
        let c = plot::COLORS[0];
        let half = plot::TRAINING_SIZE.0 / 2;
        let drawn = |xs: std::ops::Range<u32>| {
            img.enumerate_pixels().filter(|(x, _, p)| xs.contains(x) && p.0 == [c.0, c.1, c.2]).count()
        };
        assert!(
            drawn(0..half) > 200 && drawn(half..plot::TRAINING_SIZE.0) > 200,
            "{} {}",
            drawn(0..half),
            drawn(half..plot::TRAINING_SIZE.0)
        );
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("\nlfw\n") && svg.contains("\nx\n"), "legends");

        let empty = Run { metrics: Metrics::default(), ..run };
        let err = write_picture(&[empty], dir.path()).unwrap_err().to_string();
        assert!(err.contains("nothing to draw"), "{err}");
    }

    /// A run bounded by steps alone (the demo's: as many epochs as TOML's largest integer) names no epoch count.
    #[test]
    fn a_run_bounded_by_steps_names_them() {
        let config: toml::Table = format!("epochs = {UNBOUNDED_EPOCHS}\nmax_steps = 60\n").parse().unwrap();
        let metrics = Metrics::parse(&(step(1, 0, Some(3.0)) + &step(2, 1, Some(2.0))));
        let run = Run { dir: "runs/demo".into(), metrics, config: Some(config), best: None, imprint: None };
        let s = Summary::of(&run);
        assert_eq!((s.epoch, s.epochs, s.max_steps), (Some(2), None, Some(60)));
        assert!(
            s.lines()[1].ends_with("  2 of at most 60 (epoch 2), 102 images/s (median of the last steps)"),
            "{:?}",
            s.lines()
        );
    }

    /// A folder without metrics.jsonl is refused unless it holds a config.toml (a run before its first line: in its
    /// imprint, say); a config.toml, best.safetensors or imprint.safetensors that does not read is left out.
    #[test]
    fn a_run_folder_reads_what_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Run::open(dir.path()).unwrap_err());
        assert!(err.contains("metrics.jsonl") && err.contains("a run folder"), "{err}");

        // Imprinting: no line yet, the imprint's progress as it was last saved.
        std::fs::write(dir.path().join("config.toml"), "batch = 8\narch = \"r50\"").unwrap();
        let progress = json!({"imprint_progress": {"key": "0", "images": 95, "samples": 2000,
            "position": {"epoch": 0, "batch": 3, "sample": 96, "skipped": 1}}});
        let mut file = crate::tensorfile::TensorFile::new("imprint", progress);
        file.insert_f32("sums", &[1, 1], vec![0.0]).unwrap();
        file.save(&dir.path().join(imprint::FILE)).unwrap();
        let run = Run::open(dir.path()).unwrap();
        assert!(!run.has_lines());
        assert_eq!(run.imprint, Some((96, 2000)));
        let lines = Summary::of(&run).lines();
        assert!(lines[1].ends_with("imprint  96 of 2000 samples read (at its last save)"), "{lines:?}");
        std::fs::write(dir.path().join(imprint::FILE), b"torn").unwrap();
        assert_eq!(Run::open(dir.path()).unwrap().imprint, None);

        std::fs::write(dir.path().join("metrics.jsonl"), step(1, 0, Some(3.0))).unwrap();
        std::fs::write(dir.path().join("config.toml"), "batch = ").unwrap();
        std::fs::write(dir.path().join(best::FILE), b"not safetensors").unwrap();
        let run = Run::open(dir.path()).unwrap();
        assert_eq!((run.metrics.steps.len(), run.config, run.best), (1, None, None));
        std::fs::write(dir.path().join("config.toml"), "batch = 8\narch = \"r50\"").unwrap();
        assert_eq!(Summary::of(&Run::open(dir.path()).unwrap()).settings.as_deref(), Some("r50, ?, batch 8"));
    }

    #[test]
    fn runs_of_the_same_name_are_told_apart_by_their_path() {
        let run = |d: &str| Run { dir: d.into(), metrics: Metrics::default(), config: None, best: None, imprint: None };
        let names = run_names(&[run("a/r100"), run("b/r100"), run("c/r50")]);
        assert_eq!(names, ["a/r100", "b/r100", "r50"]);
    }
}
