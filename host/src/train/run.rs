//! The training loop behind `elasticface train`: data, schedule, steps (of several micro-batches with
//! `accumulate`), metrics, checkpoints, verification (held-out identities or insightface's packs), and a clean stop
//! on Ctrl-C or SIGTERM.
//!
//! A run lives in one folder (`out`): `config.toml` (what was asked), `metrics.jsonl` (one JSON object per step,
//! per set at each evaluation, per epoch that skipped unreadable samples, and one for a fine-tuning run's start),
//! `checkpoint.safetensors` (the latest state, rewritten atomically), `final.safetensors` (written the same
//! way) and, with verification, `best.safetensors` (the backbone of the best measurement, [`super::best`]). A folder
//! holding a run is only trained on again by resuming it; a fresh run removes what an attempt killed before its
//! first checkpoint left there.
//!
//! A run may start from a trained model (`init`, fine-tuning): its backbone replaces the seeded one, and the class
//! centres are imprinted from the training data ([`super::imprint`]) or left as seeded.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::margin::{MarginConfig, PlusAssignment};
use elasticface_core::model::{IResNetConfig, StepConfig};
use elasticface_core::nn::{BatchNorm, ImageShape, Sgd};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::best::{self, Best, BestModel};
use super::cpu::CpuBackend;
use super::imprint::{self, imprint, Outcome, Progress, Reading};
use super::schedule::Schedule;
use super::Backend;
use crate::checkpoint::{describe_network, Backbone, Checkpoint};
use crate::data::{self, BadSamples, Dataset, Loader, LoaderConfig, Position};
use crate::eval::{self, Pairs};
use crate::files::{remove_if_present, write_atomically};
use crate::fingerprint::Fnv1a;
use crate::gpu::kernels::conv2d::{ConvPrecision, ConvTileChoice};
use crate::gpu::kernels::winograd::WinogradTileChoice;

/// A run folder's settings, as `--config` reads them.
pub const CONFIG_FILE: &str = "config.toml";
/// A run folder's metrics: one JSON object a line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// A run folder's latest checkpoint, which `--resume` continues.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The epochs of a run bounded by `max_steps` alone (the demo's): TOML's largest integer (an i64), so that its
/// `config.toml` reads back.
pub const UNBOUNDED_EPOCHS: u64 = i64::MAX as u64;

/// Where to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// A hardware GPU when one is found, else the CPU reference (faster than a software Vulkan adapter).
    Auto,
    /// A GPU adapter (Vulkan, Metal or DX12; lavapipe counts).
    Gpu,
    /// The core's CPU reference trainer: exact and slow, for small networks.
    Cpu,
}

/// The class centres a fine-tuning run (`init`) starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InitHead {
    /// Each class's centre the unit mean direction of its images' embeddings under the starting backbone (one pass
    /// of inference over the training data first; Ctrl-C keeps its progress, which the same command carries on
    /// from).
    Imprint,
    /// Random centres from the seed, as a run from scratch.
    Random,
}

/// The arithmetic of the convolutions on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// The faster of the two on this GPU as measured: f32 (whose 3x3 convolutions of 128 channels and more run as
    /// Winograd) until the mixed-precision kernels overtake it (on an H200 mixed ran at 335 images/s against f32's
    /// 341 before Winograd).
    Auto,
    /// f32 throughout (the CPU reference's arithmetic).
    F32,
    /// Convolution operands rounded to f16, products accumulated in f32 on tensor cores, with dynamic loss
    /// scaling; the activations the convolutions read and write, and their gradients, stored as f16 (half the
    /// memory); weights and their gradients, batch norm statistics, the head and the loss stay f32. Without tensor
    /// cores, with `ELASTICFACE_EMULATE_TENSOR_CORES=1`: the same arithmetic emulated in f32 (slow; for testing).
    Mixed,
}

impl Precision {
    /// What this choice means on `gpu`. Errors for `Mixed` where the adapter cannot.
    pub fn resolve(self, gpu: &crate::gpu::Gpu) -> Result<ConvPrecision> {
        match self {
            Precision::Auto | Precision::F32 => Ok(ConvPrecision::F32),
            Precision::Mixed if gpu.caps.mixed_precision() => Ok(ConvPrecision::Mixed),
            Precision::Mixed if !gpu.caps.f16 => {
                bail!(
                    "--precision mixed: {} has no f16 in shaders, which mixed precision stores its activations in",
                    gpu.info.name
                )
            }
            Precision::Mixed => bail!(
                "--precision mixed: {} has no cooperative matrices with f16 inputs and f32 accumulators{} \
                 (ELASTICFACE_EMULATE_TENSOR_CORES=1 emulates them, slowly, to test the mixed-precision path)",
                gpu.info.name,
                gpu.caps.no_cooperative_matrix.as_deref().map(|why| format!(": {why}")).unwrap_or_default()
            ),
        }
    }
}

/// Which 3x3 stride-1 convolutions run as Winograd on the GPU (2.25x to 4x fewer multiply-adds, see
/// [`WinogradTileChoice`]; in mixed precision too). Written `auto`, `off`, or a channel count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WinogradLayers {
    /// The adapter's default in f32 ([`default_winograd`](super::gpu::default_winograd)): layers
    /// of at least 128 input and output channels on a GPU, 64 on a CPU adapter. None in mixed precision, whose
    /// direct convolutions run on tensor cores (Winograd there is for `bench --tune` to weigh).
    Auto,
    /// None: every convolution runs directly.
    Off,
    /// Layers with at least this many input and output channels.
    MinChannels(usize),
}

impl WinogradLayers {
    /// The minimum channel count this choice means on `gpu` in `precision` (`None`: no layer).
    pub fn resolve(self, gpu: &crate::gpu::Gpu, precision: ConvPrecision) -> Option<usize> {
        match self {
            WinogradLayers::Auto if precision == ConvPrecision::Mixed => None,
            WinogradLayers::Auto => super::gpu::default_winograd(gpu),
            WinogradLayers::Off => None,
            WinogradLayers::MinChannels(c) => Some(c),
        }
    }
}

impl std::str::FromStr for WinogradLayers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(WinogradLayers::Auto),
            "off" => Ok(WinogradLayers::Off),
            n => n.parse().map(WinogradLayers::MinChannels).map_err(|_| {
                format!("`{n}`: winograd layers are `auto`, `off`, or the fewest channels of a layer (e.g. 128)")
            }),
        }
    }
}

impl std::fmt::Display for WinogradLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WinogradLayers::Auto => f.write_str("auto"),
            WinogradLayers::Off => f.write_str("off"),
            WinogradLayers::MinChannels(c) => write!(f, "{c}"),
        }
    }
}

serde_as_text!(WinogradLayers);

/// Everything a run is configured with; a TOML file (`--config`) holds the same keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Training data: a folder with `train.rec`/`train.idx`/`property` (insightface RecordIO), a `.rec` file,
    /// or an image folder (one sub-folder per identity).
    pub data: PathBuf,
    /// What to measure verification on during training: held-out identities (same formats as `data`), or
    /// insightface verification packs (a `.bin` file, or a folder holding `*.bin` files, each scored as `elasticface
    /// eval` scores it).
    pub val: Option<PathBuf>,
    /// Verification pairs drawn from held-out identities in `val`.
    pub val_pairs: usize,
    /// The run folder.
    pub out: PathBuf,
    /// A trained model whose backbone starts the run (fine-tuning): its weights and batch norm statistics, with a
    /// new head seeded from `seed` and zero momentum ([`Backbone::open`] reads it). Its network must be the run's.
    /// A resumed run continues from its checkpoint and does not read it.
    pub init: Option<PathBuf>,
    /// The class centres a run from `init` starts with.
    pub init_head: InitHead,
    /// Backbone: r18, r34, r50, r100, r200, or `custom` with `layers`/`widths`.
    pub arch: String,
    /// Blocks per stage of a custom backbone.
    pub layers: Option<[usize; 4]>,
    /// Widths of a custom backbone.
    pub widths: Option<[usize; 4]>,
    /// Embedding size.
    pub embedding: usize,
    /// Input height and width (multiples of 16); the data must have this size.
    pub input_size: usize,
    /// Loss preset: arcface, cosface, elastic-arc, elastic-cos, elastic-arc-plus, elastic-cos-plus.
    pub loss: String,
    /// Plus assignment: paper (default) or released-code (reproduces the released implementation).
    pub plus_assignment: String,
    /// Images per step, or per micro-batch where `accumulate` is more than 1: the batch norms' batch.
    pub batch: usize,
    /// Micro-batches of `batch` images per step, whose mean gradient makes one update (gradient accumulation: a
    /// step of `batch * accumulate` images, as `accumulate` data-parallel GPUs of `batch` each).
    pub accumulate: usize,
    /// Epochs.
    pub epochs: u64,
    /// Stop after this many steps in all (0: no limit).
    pub max_steps: u64,
    /// Base learning rate, for a global batch of 512; scaled by the images of a step (`batch * accumulate`) / 512.
    pub lr: f32,
    /// `step` (x0.1 at `decay_epochs`, the ElasticFace recipe) or `poly` (warmup then power-2 decay).
    pub schedule: String,
    /// Epochs (counted from 1) from whose start the step schedule has decayed: 8 is the eighth epoch, as the
    /// released config counts.
    pub decay_epochs: Vec<u64>,
    /// Warmup epochs of the poly schedule.
    pub warmup_epochs: u64,
    /// SGD momentum.
    pub momentum: f32,
    /// Weight decay (backbone and head).
    pub weight_decay: f32,
    /// Global gradient-norm clip of the backbone.
    pub clip_norm: f32,
    /// Seed of the initial weights, margins, data order and flips.
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
    /// Where to train.
    pub device: Device,
    /// Adapter name filter (GPU).
    pub adapter: Option<String>,
    /// Threads of the CPU reference, 0 for one a core the process may use. The results are the same bits on any
    /// number.
    pub threads: usize,
    /// Arithmetic of the convolutions on the GPU (the CPU reference is f32).
    pub precision: Precision,
    /// The GPU convolutions that run as Winograd.
    pub winograd: WinogradLayers,
    /// Their tile: F(4x4, 3x3), F(2x2, 3x3), or per layer.
    pub winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the GPU convolutions: the adapter's, or `ROWSxCOLSxDEPTH[x2]`.
    pub conv_tile: ConvTileChoice,
    /// Write a checkpoint every this many steps (0: only at the end and on interruption).
    pub checkpoint_every: u64,
    /// Measure held-out verification every this many steps (0: only at the start and the end).
    pub eval_every: u64,
    /// Skip (and count) samples that fail to load instead of stopping.
    pub skip_bad_samples: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            val: None,
            val_pairs: 600,
            out: PathBuf::from("runs/train"),
            init: None,
            init_head: InitHead::Imprint,
            arch: "r100".into(),
            layers: None,
            widths: None,
            embedding: 512,
            input_size: 112,
            loss: "elastic-arc-plus".into(),
            plus_assignment: "paper".into(),
            batch: 128,
            accumulate: 1,
            epochs: 26,
            max_steps: 0,
            lr: 0.1,
            schedule: "step".into(),
            decay_epochs: vec![8, 14, 20, 25],
            warmup_epochs: 0,
            momentum: 0.9,
            weight_decay: 5e-4,
            clip_norm: 5.0,
            seed: 0,
            workers: 4,
            device: Device::Auto,
            adapter: None,
            threads: 0,
            precision: Precision::Auto,
            winograd: WinogradLayers::Auto,
            winograd_tile: WinogradTileChoice::Auto,
            conv_tile: ConvTileChoice::Auto,
            checkpoint_every: 2000,
            eval_every: 0,
            skip_bad_samples: false,
        }
    }
}

impl TrainConfig {
    /// The same settings with the backbone `net`: `arch` the preset with its blocks and widths (`custom` with
    /// `layers` and `widths` where none has them), its embedding and input size. A network whose input is not
    /// square cannot be trained here (`input_size` is both sides).
    pub fn with_network(self, net: &IResNetConfig) -> Result<Self> {
        ensure!(
            net.input_h == net.input_w,
            "the network takes {}x{} images; training takes square ones (--input-size)",
            net.input_h,
            net.input_w
        );
        let preset = IResNetConfig::PRESETS.iter().find(|(_, p)| p.layers == net.layers && p.widths == net.widths);
        let (arch, layers, widths) = match preset {
            Some((name, _)) => (name.to_string(), None, None),
            None => ("custom".to_string(), Some(net.layers), Some(net.widths)),
        };
        Ok(Self { arch, layers, widths, embedding: net.embedding, input_size: net.input_h, ..self })
    }

    /// Fine-tuning: the same settings with the parts of the network that `given` says are unset taken from `model`
    /// (`given` answers for the config keys `arch`, `layers`, `widths`, `embedding` and `input_size`, set by a flag
    /// or a file): the blocks and widths unless any of `arch`, `layers`, `widths` is given, the embedding and the
    /// input size each unless given.
    pub fn with_unset_network_of(self, model: &IResNetConfig, given: impl Fn(&str) -> bool) -> Result<Self> {
        let m = TrainConfig::default().with_network(model)?;
        let mut c = self;
        if !["arch", "layers", "widths"].into_iter().any(&given) {
            (c.arch, c.layers, c.widths) = (m.arch, m.layers, m.widths);
        }
        if !given("embedding") {
            c.embedding = m.embedding;
        }
        if !given("input_size") {
            c.input_size = m.input_size;
        }
        Ok(c)
    }

    /// The backbone.
    pub fn network(&self) -> Result<IResNetConfig> {
        let mut cfg = match self.arch.as_str() {
            "custom" => {
                let (Some(layers), Some(widths)) = (self.layers, self.widths) else {
                    bail!("arch `custom` needs `layers` and `widths`");
                };
                IResNetConfig { layers, widths, input_h: 112, input_w: 112, embedding: 512 }
            }
            name => IResNetConfig::preset(name).with_context(|| {
                format!("unknown arch `{name}`; use r18, r34, r50, r100, r200 or custom (with layers and widths)")
            })?,
        };
        if self.arch != "custom" {
            if let Some(l) = self.layers {
                cfg.layers = l;
            }
            if let Some(w) = self.widths {
                cfg.widths = w;
            }
        }
        cfg.input_h = self.input_size;
        cfg.input_w = self.input_size;
        cfg.embedding = self.embedding;
        cfg.validate().map_err(|e| anyhow::anyhow!("network: {e}"))?;
        Ok(cfg)
    }

    /// The loss with its Plus assignment.
    pub fn margin(&self) -> Result<MarginConfig> {
        let loss: MarginConfig = self.loss.parse().map_err(|e| anyhow::anyhow!("loss `{}`: {e}", self.loss))?;
        let plus: PlusAssignment = self
            .plus_assignment
            .parse()
            .map_err(|e| anyhow::anyhow!("plus assignment `{}`: {e}", self.plus_assignment))?;
        Ok(if loss.plus == PlusAssignment::None { loss } else { loss.with_plus(plus) })
    }

    /// Refuses settings out of their domain, each named as its flag and its config key, all at once. Floats must
    /// be finite: an infinity trains but the checkpoint's JSON manifest cannot hold it, NaN poisons the weights.
    /// A clip norm of 0 freezes the backbone and a negative one turns descent into ascent; so does a negative
    /// learning rate or weight decay; a momentum of 1 or more never forgets a gradient and diverges.
    pub fn validate(&self) -> Result<()> {
        let mut bad = Vec::new();
        let mut check = |ok: bool, flag: &str, key: &str, value: String, want: &str| {
            if !ok {
                bad.push(format!("--{flag} ({key} in a --config file) is {value}: {want}"));
            }
        };
        let (lr, m, wd, clip) = (self.lr, self.momentum, self.weight_decay, self.clip_norm);
        check(lr.is_finite() && lr > 0.0, "lr", "lr", lr.to_string(), "a finite number above 0 (0.1 in the recipe)");
        let want = "a finite number in [0, 1) (0.9 in the recipe)";
        check(m.is_finite() && (0.0..1.0).contains(&m), "momentum", "momentum", m.to_string(), want);
        let want = "a finite number, 0 or more (5e-4 in the recipe)";
        check(wd.is_finite() && wd >= 0.0, "weight-decay", "weight_decay", wd.to_string(), want);
        let want = "a finite number above 0 (5 in the recipe)";
        check(clip.is_finite() && clip > 0.0, "clip-norm", "clip_norm", clip.to_string(), want);
        check(self.batch >= 2, "batch", "batch", self.batch.to_string(), "at least 2 (batch norm)");
        let want = "at least 1 (micro-batches per step)";
        check(self.accumulate >= 1, "accumulate", "accumulate", self.accumulate.to_string(), want);
        match bad.len() {
            0 => Ok(()),
            1 => bail!("{}", bad[0]),
            _ => bail!("invalid settings:\n  {}", bad.join("\n  ")),
        }
    }

    /// Images per step: `batch * accumulate`.
    pub fn step_images(&self) -> usize {
        self.batch * self.accumulate
    }

    /// The learning rate scaled to the images of a step: `lr * batch * accumulate / 512`.
    pub fn scaled_lr(&self) -> f32 {
        self.lr * self.step_images() as f32 / 512.0
    }

    /// The steps of the whole run at `steps_per_epoch`: the epochs', or `max_steps` where that is fewer.
    pub fn total_steps(&self, steps_per_epoch: u64) -> u64 {
        let by_epochs = self.epochs.saturating_mul(steps_per_epoch);
        if self.max_steps > 0 {
            by_epochs.min(self.max_steps)
        } else {
            by_epochs
        }
    }

    /// The schedule for `steps_per_epoch`.
    pub fn schedule(&self, steps_per_epoch: u64) -> Result<Schedule> {
        let lr = self.scaled_lr();
        let s = match self.schedule.as_str() {
            "step" => Schedule::Step { lr, epochs: self.decay_epochs.clone(), factor: 0.1 },
            "poly" => Schedule::Poly {
                lr,
                warmup: self.warmup_epochs.saturating_mul(steps_per_epoch),
                total: self.total_steps(steps_per_epoch).max(1),
                power: 2.0,
            },
            other => bail!("schedule `{other}`: use step or poly"),
        };
        s.validate()?;
        Ok(s)
    }
}

/// The verification pairs of `cfg.val` (drawn from the run's seed), if the run has held-out data.
pub fn held_out_pairs(cfg: &TrainConfig, shape: ImageShape) -> Result<Option<Pairs>> {
    let Some(p) = &cfg.val else { return Ok(None) };
    let ds = data::open(p, shape).with_context(|| format!("validation data {}", p.display()))?;
    Ok(Some(eval::pairs_from_dataset(ds.as_ref(), cfg.val_pairs, cfg.seed)?))
}

/// What a run measures verification on (`val`): pairs drawn from held-out identities, or insightface's
/// verification packs (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...) as `elasticface eval` scores them.
pub enum Validation {
    /// [`held_out_pairs`].
    HeldOut(Pairs),
    /// The packs, in name order where they came from a folder.
    Packs(Vec<PathBuf>),
}

impl Validation {
    /// What `cfg.val` names: a `.bin` file, or a folder holding `*.bin` files (insightface's `faces_emore` holds its
    /// packs next to `train.rec`), is verification packs; anything else held-out identities ([`data::open`]).
    pub fn of(cfg: &TrainConfig, shape: ImageShape) -> Result<Option<Self>> {
        let Some(p) = &cfg.val else { return Ok(None) };
        if let Some(packs) = eval::suite::packs_at(p).with_context(|| format!("validation data {}", p.display()))? {
            return Ok(Some(Validation::Packs(packs)));
        }
        Ok(held_out_pairs(cfg, shape)?.map(Validation::HeldOut))
    }

    /// Verification on every set, in the backend's current state (each image and its mirror image embedded).
    pub fn measure(&self, backend: &mut dyn Backend, shape: ImageShape) -> Result<Vec<SetResult>> {
        match self {
            Validation::HeldOut(pairs) => {
                Ok(vec![SetResult { set: "held-out".into(), report: eval::verify(backend, pairs)? }])
            }
            Validation::Packs(paths) => paths
                .iter()
                .map(|p| {
                    let report = eval::suite::evaluate_pack(backend, p, shape, true)?.verify;
                    Ok(SetResult { set: eval::suite::pack_name(p), report })
                })
                .collect(),
        }
    }
}

/// Verification measured on one set during a run.
#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    /// `held-out`, or the pack's name (its file name without `.bin`).
    pub set: String,
    /// What was measured.
    pub report: eval::VerifyReport,
}

/// Measures `val`, appends one metrics line per set (`{"step", "set", "val"}`) and offers the measurement to
/// `best` (which keeps the backbone when its mean accuracy is the highest so far).
fn measure_and_log(
    val: &Validation,
    backend: &mut dyn Backend,
    shape: ImageShape,
    metrics: &Path,
    best: &mut BestModel,
) -> Result<Vec<SetResult>> {
    let results = val.measure(backend, shape)?;
    for r in &results {
        append_jsonl(metrics, &json!({"step": backend.steps(), "set": r.set, "val": r.report}))?;
    }
    let sets: Vec<(String, f64)> = results.iter().map(|r| (r.set.clone(), r.report.accuracy)).collect();
    best.offer(backend.steps(), &sets, || backend.backbone())?;
    Ok(results)
}

/// Set by Ctrl-C or SIGTERM (in [`train`]): the loop saves a checkpoint and stops after the current step.
static STOP: AtomicBool = AtomicBool::new(false);

/// What a finished (or interrupted) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Steps taken in all (including those before a resume).
    pub steps: u64,
    /// Loss of the first step of this invocation and of the last.
    pub first_loss: f32,
    /// See `first_loss`.
    pub last_loss: f32,
    /// Verification before and after, a result per set of `val` (none without `val`; none after an interrupted
    /// run).
    pub val_before: Vec<SetResult>,
    /// See `val_before`.
    pub val_after: Vec<SetResult>,
    /// Seconds of this invocation's steps: each one's wait for its batch and the step itself (not the evaluations
    /// nor the checkpoints).
    pub seconds: f64,
    /// Images per second over those seconds.
    pub images_per_second: f64,
    /// Whether the run stopped early on a signal.
    pub interrupted: bool,
    /// Samples left out as unreadable, counted in every epoch that read them.
    pub skipped_samples: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// With `val`: the measurement of the highest mean accuracy in the run folder's `best.safetensors` (this
    /// invocation's, or an earlier one's of a resumed run), [`super::best`].
    pub best: Option<(PathBuf, Best)>,
    /// Where a signal stopped a fine-tuning run in its imprint, before its first step (no checkpoint was written):
    /// the samples read and the dataset's size. The progress is in the run folder's [`imprint::FILE`]; the same
    /// command (a fresh run, not `--resume`) carries on from it.
    pub stopped_imprinting: Option<(usize, usize)>,
}

impl RunSummary {
    /// A run stopped in its imprint, having read `read.0` of `read.1` samples; `checkpoint` where the run would have
    /// written its checkpoint (none is there).
    fn stopped_in_imprint(read: (usize, usize), checkpoint: PathBuf) -> Self {
        Self {
            steps: 0,
            first_loss: f32::NAN,
            last_loss: f32::NAN,
            val_before: Vec::new(),
            val_after: Vec::new(),
            seconds: 0.0,
            images_per_second: 0.0,
            interrupted: true,
            skipped_samples: 0,
            checkpoint,
            best: None,
            stopped_imprinting: Some(read),
        }
    }
}

/// Opens the backend the config asks for: `cfg.device` (`auto` falls back to the CPU reference with a warning when
/// there is no GPU backend), `cfg.adapter`, `cfg.batch` and `cfg.seed` (of the initial weights) count.
pub(crate) fn open_backend(
    cfg: &TrainConfig,
    net: &IResNetConfig,
    classes: usize,
    step_cfg: StepConfig,
) -> Result<Box<dyn Backend>> {
    let cpu = || -> Result<Box<dyn Backend>> {
        ensure!(cfg.precision != Precision::Mixed, "--precision mixed needs a GPU; the CPU reference is f32");
        let backend = CpuBackend::new(net, cfg.batch, classes, step_cfg, cfg.seed)?;
        Ok(Box::new(if cfg.threads > 0 { backend.with_threads(cfg.threads) } else { backend }))
    };
    match cfg.device {
        Device::Cpu => cpu(),
        Device::Gpu | Device::Auto => {
            match super::open_gpu_backend(cfg, net, classes, step_cfg, cfg.device == Device::Auto) {
                Ok(b) => Ok(b),
                Err(e) if cfg.device == Device::Auto => {
                    eprintln!("note: {e:#}; running on the CPU reference");
                    cpu()
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Opens a backend that embeds with `backbone` (evaluation, embedding extraction), on the device chosen as for
/// training (`device`, `adapter`; `threads` on the CPU reference, 0 for one a core), embedding up to `batch` images
/// at a time (at least 2).
pub fn open_inference(
    backbone: &Backbone,
    device: Device,
    adapter: Option<String>,
    threads: usize,
    batch: usize,
) -> Result<Box<dyn Backend>> {
    ensure!(batch >= 2, "the embedding batch must be at least 2");
    let ck = backbone.inference_checkpoint();
    // Embeddings for evaluation are computed in f32, whatever the model was trained with.
    let cfg = TrainConfig { device, adapter, threads, batch, precision: Precision::F32, ..TrainConfig::default() };
    let mut backend = open_backend(&cfg, &backbone.cfg, ck.classes, ck.step_cfg)?;
    backend.load(&ck)?;
    Ok(backend)
}

/// `error`, with `backend`'s checkpoint at `position` saved to `path` first when this invocation trained (steps
/// beyond `start_steps`): the context says where, or why it could not be saved.
fn with_progress_saved(
    error: anyhow::Error,
    backend: &dyn Backend,
    start_steps: u64,
    (seed, position): (u64, Position),
    run: &serde_json::Value,
    path: &Path,
) -> anyhow::Error {
    let steps = backend.steps();
    if steps <= start_steps {
        return error;
    }
    match backend.checkpoint(seed, position, run.clone()).and_then(|ck| ck.save(path)) {
        Ok(()) => error.context(format!(
            "the run stopped after step {steps}, saved in {} (fix the cause, then --resume from it)",
            path.display()
        )),
        Err(e) => error.context(format!("the run stopped after step {steps}, and saving it failed: {e:#}")),
    }
}

fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f =
        OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("cannot write {}", path.display()))
}

/// On resuming from step `step` at data position `position`, drops the lines of `metrics.jsonl` that the resumed
/// run writes again: those of later steps (written after the checkpoint, before a crash; a resumed run repeats
/// them bit for bit), evaluations at `step` when the run measures before its first step (`reevaluated`), the
/// skipped-samples line of `position`'s epoch at `step` (written when the run stopped there, or when it read the
/// epoch's last samples after its last step: the resumed run reads them again and counts the whole epoch, from
/// [`Position::skipped`]), and a line a crash cut short (not JSON). The file is rewritten atomically, only if a
/// line goes; returns how many went.
fn drop_metrics_after(path: &Path, step: u64, position: Position, reevaluated: bool) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (mut kept, mut dropped) = (String::with_capacity(text.len()), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let keep = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => match v["step"].as_u64() {
                Some(s) if s == step => {
                    let reevaluation = reevaluated && v.get("set").is_some();
                    let recounted = v.get("skipped_samples").is_some() && v["epoch"].as_u64() == Some(position.epoch);
                    !(reevaluation || recounted)
                }
                Some(s) => s < step,
                None => true,
            },
            Err(_) => false,
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        write_atomically(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// Refuses a fresh run in a folder that holds another run's weights: it would overwrite them (a forgotten
/// `--resume` and a Ctrl-C would lose a long run) and mix two runs in one metrics.jsonl.
fn refuse_existing_run(out: &Path) -> Result<()> {
    for name in [CHECKPOINT_FILE, "final.safetensors"] {
        if out.join(name).exists() {
            bail!(
                "{} already holds a run ({name}): pass `--resume {}` to continue it, or choose another --out (delete \
                 the folder to start over in it)",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// A fresh run's start in folder `out`: what an earlier attempt there left without a checkpoint (killed before it
/// wrote one, so [`refuse_existing_run`] let it by), `metrics.jsonl` and `best.safetensors`, is removed, with a note
/// on stderr unless `quiet`: the run's lines would follow that attempt's, and its best would be measured against a
/// model it did not train. Its imprint's progress ([`imprint::FILE`]) stays: the imprint carries on from it where its
/// inputs are the same.
fn remove_leftovers(out: &Path, quiet: bool) -> Result<()> {
    let mut removed = Vec::new();
    for name in [METRICS_FILE, best::FILE] {
        if remove_if_present(&out.join(name))? {
            removed.push(name);
        }
    }
    if !removed.is_empty() && !quiet {
        eprintln!("{}: {} of an earlier attempt without a checkpoint removed", out.display(), removed.join(" and "));
    }
    Ok(())
}

/// Each setting of this run that differs from what checkpoint `ck` was trained with, as `flag: checkpoint value,
/// given value`. A resumed run trains with the checkpoint's loss and optimizer (they are part of its state) while
/// the margins of every step are drawn from this run's loss, so any difference would train a mixture silently.
fn resume_mismatches(
    ck: &Checkpoint,
    cfg: &TrainConfig,
    net: &IResNetConfig,
    classes: usize,
    step_cfg: &StepConfig,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut differ = |flag: &str, then: String, now: String| {
        if then != now {
            found.push(format!("{flag}: {then} in the checkpoint, {now} given"));
        }
    };
    let (c, n) = (&ck.cfg, net);
    differ("--arch/--layers (blocks per stage)", format!("{:?}", c.layers), format!("{:?}", n.layers));
    differ("--arch/--widths", format!("{:?}", c.widths), format!("{:?}", n.widths));
    differ("--embedding", c.embedding.to_string(), n.embedding.to_string());
    differ("--input-size", format!("{}x{}", c.input_h, c.input_w), format!("{}x{}", n.input_h, n.input_w));
    differ("--data (its classes)", ck.classes.to_string(), classes.to_string());
    differ("--seed", ck.seed.to_string(), cfg.seed.to_string());
    // The Plus assignment is a flag of its own only where both losses are Plus variants; otherwise it is part of
    // the loss (a Plus variant against a plain one).
    let (then, now) = (ck.step_cfg.margin, step_cfg.margin);
    let none = PlusAssignment::None;
    if then.with_plus(none) == now.with_plus(none) && then.plus != none && now.plus != none {
        differ("--plus-assignment", then.plus.to_string(), now.plus.to_string());
    } else {
        differ("--loss", then.to_string(), now.to_string());
    }
    // f32's Display is the shortest text that reads back as the same number: equal texts, equal values.
    let (then, now) = (&ck.step_cfg, step_cfg);
    differ("--momentum", then.sgd.momentum.to_string(), now.sgd.momentum.to_string());
    differ("--weight-decay", then.sgd.weight_decay.to_string(), now.sgd.weight_decay.to_string());
    differ("--clip-norm", then.clip_norm.to_string(), now.clip_norm.to_string());
    found
}

/// The backbone of the model `path` (`--init`) for a run of network `net` whose batch norms use `bn`. The model's
/// blocks and widths must be the run's (else it is refused, naming both networks and the flags of the model's); its
/// embedding size and input size may differ, and then the tensors whose shapes differ start seeded
/// ([`start_from`]).
fn initial_backbone(path: &Path, net: &IResNetConfig, bn: BatchNorm) -> Result<Backbone> {
    let backbone = Backbone::open(path, None, None)
        .with_context(|| format!("--init {}: cannot read the model", path.display()))?;
    ensure!(
        (backbone.cfg.layers, backbone.cfg.widths) == (net.layers, net.widths),
        "--init {} holds {}, not the network this run trains ({}): give {}, or leave the network unset (flags and \
         --config keys) to train the model's own (the embedding and input sizes may differ from the model's)",
        path.display(),
        backbone.describe(),
        describe_network(net),
        network_flags(&backbone.cfg).unwrap_or_else(|| "the model's network".into()),
    );
    ensure!(
        backbone.bn.eps == bn.eps,
        "--init {}: its batch norms divide by sqrt(var + {}), training's by sqrt(var + {})",
        path.display(),
        backbone.bn.eps,
        bn.eps
    );
    Ok(backbone)
}

/// The flags that make `train` build `net` (`--arch r50 --embedding 512 --input-size 112`), where it can.
fn network_flags(net: &IResNetConfig) -> Option<String> {
    let c = TrainConfig::default().with_network(net).ok()?;
    let join = |v: [usize; 4]| v.map(|x| x.to_string()).join(",");
    let custom = match (c.layers, c.widths) {
        (Some(l), Some(w)) => format!(" --layers {} --widths {}", join(l), join(w)),
        _ => String::new(),
    };
    Some(format!("--arch {}{custom} --embedding {} --input-size {}", c.arch, c.embedding, c.input_size))
}

/// Copies into `state` (laid out for `net`) every tensor of `backbone` of the same name and shape; returns the names
/// of `net`'s tensors that `backbone` has in another shape (they keep what `state` holds).
fn copy_matching(net: &IResNetConfig, state: &mut [f32], backbone: &Backbone) -> Vec<String> {
    let theirs: std::collections::HashMap<String, _> =
        backbone.cfg.tensors().map(|t| (t.to_string(), (t.dims().to_vec(), t.range()))).collect();
    let mut differ = Vec::new();
    for t in net.tensors() {
        let name = t.to_string();
        match theirs.get(&name) {
            Some((dims, range)) if dims == t.dims() => state[t.range()].copy_from_slice(&backbone.state[range.clone()]),
            _ => differ.push(name),
        }
    }
    differ
}

/// Starts `backend` (fresh: step 0, zero momentum) from `backbone`: its weights and batch norm statistics replace
/// the seeded ones, but for those of another shape (a model of another embedding or input size: the `fc` and
/// `features` tensors), which stay seeded and are named on stderr unless `quiet`. With [`InitHead::Imprint`], the
/// class centres are then imprinted from `dataset` ([`imprint`]), which is reported on stderr unless `quiet` and in
/// `metrics`; its progress is kept in the run folder's [`imprint::FILE`], and `stop` stops it there. Returns the
/// samples read and the dataset's size where `stop` stopped the imprint (the backend then holds the seeded head,
/// and `metrics` has no line of the start).
fn start_from(
    backend: &mut dyn Backend,
    backbone: &Backbone,
    cfg: &TrainConfig,
    dataset: &Arc<dyn Dataset>,
    metrics: &Path,
    stop: &AtomicBool,
    quiet: bool,
) -> Result<Option<(usize, usize)>> {
    let mut ck = backend.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null)?;
    let seeded = copy_matching(&ck.cfg, &mut ck.state, backbone);
    if !seeded.is_empty() && !quiet {
        eprintln!(
            "the model is {}, the run {}: {} start seeded",
            describe_network(&backbone.cfg),
            describe_network(&ck.cfg),
            seeded.join(", ")
        );
    }
    backend.load(&ck)?;
    let mut line = json!({"step": 0, "init": cfg.init, "seeded": seeded, "init_head": cfg.init_head});
    if cfg.init_head == InitHead::Imprint {
        let t = Instant::now();
        let reading = Reading { batch: cfg.batch, workers: cfg.workers, skip_bad_samples: cfg.skip_bad_samples };
        let path = cfg.out.join(imprint::FILE);
        let key = imprint_key(&ck, cfg, dataset.as_ref(), &backend.arithmetic());
        let progress = Progress { path: &path, key, save_every: IMPRINT_SAVE_EVERY, stop };
        let done = match imprint(backend, Arc::clone(dataset), reading, &mut ck.head, progress, quiet)? {
            Outcome::Done(done) => done,
            Outcome::Stopped { read, of } => return Ok(Some((read, of))),
        };
        backend.load(&ck)?;
        let seconds = t.elapsed().as_secs_f64();
        if !quiet {
            let mut notes = Vec::new();
            if done.carried_on_from > 0 {
                notes.push(format!("carried on after the {} an earlier attempt embedded", done.carried_on_from));
            }
            if done.skipped > 0 {
                notes.push(format!("{} unreadable left out", done.skipped));
            }
            eprintln!(
                "imprinted {} of {} class centres from {} images in {seconds:.1} s{}",
                done.classes,
                dataset.num_classes(),
                done.images,
                if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
            );
        }
        line["imprint"] = json!({
            "classes": done.classes, "images": done.images, "unreadable": done.skipped, "seconds": seconds,
            "carried_on_from": done.carried_on_from,
        });
    }
    append_jsonl(metrics, &line)?;
    Ok(None)
}

/// The longest time an imprint goes without saving its progress: at most this much of its work is lost to a crash.
/// For r100's head of 85,742 classes a save writes 176 MB.
const IMPRINT_SAVE_EVERY: Duration = Duration::from_secs(120);

/// The key of an imprint's progress ([`Progress::key`]): the backbone it embeds with (`ck`'s values, network and
/// batch norm), the dataset (its path, size, classes and image shape), the reading (batch, skipping) and the
/// backend's `arithmetic` ([`Backend::arithmetic`]: the GPU, its precision and convolution settings).
fn imprint_key(ck: &Checkpoint, cfg: &TrainConfig, dataset: &dyn Dataset, arithmetic: &str) -> u64 {
    let mut h = Fnv1a::new();
    h.eat(b"elasticface imprint 1\0");
    h.eat(bytemuck::cast_slice(&ck.state));
    let data = std::fs::canonicalize(&cfg.data).unwrap_or_else(|_| cfg.data.clone());
    let about = format!(
        "{:?}|{:?}|{}|{}|{}|{:?}|{}|{}|{arithmetic}",
        ck.cfg,
        ck.step_cfg.bn,
        data.display(),
        dataset.len(),
        dataset.num_classes(),
        dataset.image_shape(),
        cfg.batch,
        cfg.skip_bad_samples
    );
    h.eat(about.as_bytes());
    h.finish()
}

/// The checkpoint `resume` names (a file, or a run folder's `checkpoint.safetensors`), refused unless it was
/// trained with this run's network, classes, seed, loss and optimizer settings ([`resume_mismatches`]).
fn checkpoint_to_resume(
    resume: &Path,
    cfg: &TrainConfig,
    net: &IResNetConfig,
    classes: usize,
    step_cfg: &StepConfig,
) -> Result<Checkpoint> {
    let path = if resume.is_dir() { resume.join(CHECKPOINT_FILE) } else { resume.to_path_buf() };
    let ck = Checkpoint::load(&path).with_context(|| format!("resuming from {}", path.display()))?;
    let mismatches = resume_mismatches(&ck, cfg, net, classes, step_cfg);
    if !mismatches.is_empty() {
        bail!(
            "cannot resume from {}: it was trained with other settings than given (its run folder's config.toml \
             holds them); give the same flags, or start a new run with another --out:\n  {}",
            path.display(),
            mismatches.join("\n  ")
        );
    }
    let images = |run: &serde_json::Value| {
        let (batch, accumulate) = (run.get("batch")?.as_u64()?, run["accumulate"].as_u64().unwrap_or(1));
        Some((batch, accumulate))
    };
    let now = (cfg.batch as u64, cfg.accumulate as u64);
    if let Some(then) = images(&ck.run).filter(|&then| then != now) {
        eprintln!(
            "note: {} was trained in steps of {} x {} images (batch x accumulate); this run goes on with {} x {}",
            path.display(),
            then.0,
            then.1,
            now.0,
            now.1
        );
    }
    Ok(ck)
}

/// How many of the reasons for skipped samples a run prints (the loader keeps [`BadSamples::MAX_KEPT`]).
const REASONS_SHOWN: usize = 5;

/// Reports the samples an epoch's loader left out (`--skip-bad-samples`): a metrics line per epoch that skipped
/// any (`{"step", "epoch", "skipped_samples", "first_skipped"}`: the epoch's count, a resumed epoch's included,
/// and the first reasons this process met), and the first reasons on stderr, once a run (every epoch visits the
/// same samples, so the reasons repeat).
fn report_bad_samples(
    bad: &BadSamples,
    epoch: u64,
    step: u64,
    metrics: &Path,
    bar: &ProgressBar,
    shown: &mut bool,
) -> Result<()> {
    if bad.count == 0 {
        return Ok(());
    }
    append_jsonl(
        metrics,
        &json!({"step": step, "epoch": epoch, "skipped_samples": bad.count, "first_skipped": bad.first}),
    )?;
    // A resumed epoch's samples left out before the resume were reported when they were read.
    if !*shown && !bad.first.is_empty() {
        *shown = true;
        let reasons: Vec<&str> = bad.first.iter().take(REASONS_SHOWN).map(String::as_str).collect();
        bar.suspend(|| {
            eprintln!(
                "warning: epoch {epoch} skipped {} unreadable samples (--skip-bad-samples); the first {}:\n  {}",
                bad.count,
                reasons.len(),
                reasons.join("\n  ")
            )
        });
    }
    Ok(())
}

/// Writes `ck` as the checkpoint of the run in folder `out`; an imprint's progress there is no longer needed then.
fn save_checkpoint(ck: &Checkpoint, out: &Path) -> Result<()> {
    ck.save(&out.join(CHECKPOINT_FILE))?;
    remove_if_present(&out.join(imprint::FILE)).map(drop)
}

/// Trains as `cfg` says, resuming from `resume` when given (a checkpoint file, or `out`'s latest checkpoint
/// when `resume` is the run folder itself). `quiet` hides the progress bar. Ctrl-C or SIGTERM saves a checkpoint
/// and stops after the current step; in a fine-tuning run's imprint, before the first step, it stops after the
/// imprint's batch with its progress kept ([`RunSummary::stopped_imprinting`]).
///
/// Refused before anything is written: settings out of their domain ([`TrainConfig::validate`]), a fresh run
/// (no `resume`) into a folder that holds a checkpoint, and a resume with other settings than the checkpoint's.
pub fn train(cfg: &TrainConfig, resume: Option<&Path>, quiet: bool) -> Result<RunSummary> {
    train_inner(cfg, resume, quiet, None)
}

/// [`train`], stopping (with a checkpoint, as on Ctrl-C) after the step during which `stop` is set, for callers
/// that stop a run themselves; signals are left to the caller. A `stop` set before the call stops after the first
/// step, or a run that imprints after the imprint's first batch.
pub fn train_until(cfg: &TrainConfig, resume: Option<&Path>, quiet: bool, stop: &AtomicBool) -> Result<RunSummary> {
    train_inner(cfg, resume, quiet, Some(stop))
}

fn train_inner(cfg: &TrainConfig, resume: Option<&Path>, quiet: bool, stop: Option<&AtomicBool>) -> Result<RunSummary> {
    cfg.validate()?;
    let net = cfg.network()?;
    let margin = cfg.margin()?;
    // Read first: a model of another network is refused before the data are checked against that network.
    let init = match (resume, &cfg.init) {
        (None, Some(path)) => Some(initial_backbone(path, &net, BatchNorm::default())?),
        _ => None,
    };
    let shape = ImageShape { h: net.input_h, w: net.input_w };
    let dataset = data::open(&cfg.data, shape).with_context(|| format!("training data {}", cfg.data.display()))?;
    let classes = dataset.num_classes();
    let steps_per_epoch = (dataset.len() / cfg.step_images()) as u64;
    ensure!(
        steps_per_epoch > 0,
        "{} holds {} images, fewer than one step of {}",
        cfg.data.display(),
        dataset.len(),
        match cfg.accumulate {
            1 => cfg.batch.to_string(),
            n => format!("{n} micro-batches of {}", cfg.batch),
        }
    );
    let schedule = cfg.schedule(steps_per_epoch)?;
    let step_cfg = StepConfig {
        margin,
        sgd: Sgd { lr: schedule.lr(0, 0), momentum: cfg.momentum, weight_decay: cfg.weight_decay },
        clip_norm: cfg.clip_norm,
        bn: BatchNorm::default(),
    };
    let resumed = match resume {
        Some(r) => Some(checkpoint_to_resume(r, cfg, &net, classes, &step_cfg)?),
        None => {
            refuse_existing_run(&cfg.out)?;
            None
        }
    };
    let mut backend = open_backend(cfg, &net, classes, step_cfg)?;
    let mut position = Position::epoch_start(0);
    if let Some(ck) = &resumed {
        backend.load(ck)?;
        position = ck.position;
    }
    let resumed_at = resumed.as_ref().map(|ck| (ck.step, ck.position));
    // Loaded into the backend: not kept through the run.
    drop(resumed);
    // Only now that the run is accepted: a refused resume leaves the folder's config.toml as it was.
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
    write_atomically(&cfg.out.join(CONFIG_FILE), toml::to_string(cfg)?.as_bytes())?;
    if resumed_at.is_none() {
        remove_leftovers(&cfg.out, quiet)?;
    }
    let metrics = cfg.out.join(METRICS_FILE);
    let ck_path = cfg.out.join(CHECKPOINT_FILE);

    let stop = match stop {
        Some(s) => s,
        None => {
            STOP.store(false, Ordering::SeqCst);
            // The first Ctrl-C (or SIGTERM) stops after the step with a checkpoint (or after the imprint's batch, with
            // its progress); a second one, in an evaluation of minutes say, quits at once (both files are written
            // atomically: a file is whole or not there).
            let _ = ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!(
                    "\nstopping after this step (or imprint batch), keeping what is done (Ctrl-C again quits at once)"
                );
            });
            &STOP
        }
    };
    let val = Validation::of(cfg, shape)?;
    if let Some(backbone) = init {
        if let Some(read) = start_from(backend.as_mut(), &backbone, cfg, &dataset, &metrics, stop, quiet)? {
            return Ok(RunSummary::stopped_in_imprint(read, ck_path));
        }
    }
    let mut best = match resumed_at {
        Some(_) => BestModel::resumed(&cfg.out, quiet),
        None => BestModel::fresh(&cfg.out),
    };
    if let Some((step, position)) = resumed_at {
        let dropped = drop_metrics_after(&metrics, step, position, val.is_some())?;
        if dropped > 0 && !quiet {
            let lines = if dropped == 1 { "line" } else { "lines" };
            eprintln!(
                "{}: {dropped} {lines} from step {step} on dropped (the run writes them again)",
                metrics.display()
            );
        }
    }
    let val_before = match &val {
        Some(val) => measure_and_log(val, backend.as_mut(), shape, &metrics, &mut best)?,
        None => Vec::new(),
    };
    let mut last_eval: Option<(u64, Vec<SetResult>)> = None;

    let total_steps = cfg.total_steps(steps_per_epoch);
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total_steps) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(backend.steps().min(total_steps));
    // A resumed run's steps so far took no time in this process: not a rate to estimate from.
    bar.reset_eta();
    bar.set_message(format!("on {}", backend.device()));

    let run_json = serde_json::to_value(cfg)?;
    let mut step_seconds = 0.0f64;
    let (start_steps, mut first_loss, mut last_loss) = (backend.steps(), f32::NAN, f32::NAN);
    let (mut interrupted, mut skipped, mut reasons_shown) = (false, 0, false);
    while position.epoch < cfg.epochs && backend.steps() < total_steps {
        let lc = LoaderConfig {
            workers: cfg.workers.max(1),
            skip_bad_samples: cfg.skip_bad_samples,
            ..LoaderConfig::new(cfg.step_images(), cfg.seed)
        };
        let epoch_start = position;
        let mut loader = Loader::new(Arc::clone(&dataset), lc, position)?;
        let (mut batches, mut finished) = (0u64, false);
        loop {
            // A step's time: the wait for its batch and the step (what the data and the device sustain together).
            let t = Instant::now();
            // A failing sample (without --skip-bad-samples) or step keeps the steps done so far: they are saved
            // before the error is returned, at the position of the last batch trained on.
            let saved = |e, backend: &dyn Backend| {
                with_progress_saved(e, backend, start_steps, (cfg.seed, position), &run_json, &ck_path)
            };
            let batch = match loader.next_batch() {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => return Err(saved(e, backend.as_ref())),
            };
            batches += 1;
            let step = backend.steps();
            let lr = schedule.lr(step, batch.epoch);
            backend.set_lr(lr)?;
            let mut margins = vec![0.0; batch.len()];
            margin.draw_margins_at(cfg.seed, step, &mut margins);
            let report = match backend.step(&batch, &margins) {
                Ok(report) => report,
                Err(e) => return Err(saved(e.context(format!("step {step}")), backend.as_ref())),
            };
            let secs = t.elapsed().as_secs_f64();
            step_seconds += secs;
            position = batch.next;
            if first_loss.is_nan() {
                first_loss = report.loss;
            }
            last_loss = report.loss;
            let ips = batch.len() as f64 / secs;
            append_jsonl(
                &metrics,
                &json!({
                    "step": step + 1, "epoch": batch.epoch, "loss": report.loss, "grad_norm": report.grad_norm,
                    "lr": lr, "images_per_second": ips,
                }),
            )?;
            bar.set_position(step + 1);
            bar.set_message(format!("epoch {} loss {:.4} lr {:.2e} {:.0} img/s", batch.epoch, report.loss, lr, ips));
            let done = backend.steps();
            // A stop asked for during the step goes straight to the checkpoint below the loop: neither the
            // periodic checkpoint (written there anyway) nor an evaluation (minutes on large packs) delays it.
            if stop.load(Ordering::SeqCst) {
                (interrupted, finished) = (true, true);
                break;
            }
            if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 {
                save_checkpoint(&backend.checkpoint(cfg.seed, position, run_json.clone())?, &cfg.out)?;
            }
            if let (Some(val), true) = (&val, cfg.eval_every > 0 && done % cfg.eval_every == 0) {
                if !stop.load(Ordering::SeqCst) {
                    last_eval = Some((done, measure_and_log(val, backend.as_mut(), shape, &metrics, &mut best)?));
                }
            }
            if stop.load(Ordering::SeqCst) {
                (interrupted, finished) = (true, true);
                break;
            }
            if done >= total_steps {
                finished = true;
                break;
            }
        }
        let bad = loader.bad_samples();
        skipped += bad.count;
        report_bad_samples(bad, epoch_start.epoch, backend.steps(), &metrics, &bar, &mut reasons_shown)?;
        // An epoch with a step's worth of samples that delivers no batch has left every one of them out: going on
        // would end "successfully" with weights no step touched.
        if batches == 0 && dataset.len().saturating_sub(epoch_start.sample) >= cfg.step_images() {
            bar.finish_and_clear();
            if backend.steps() > start_steps {
                save_checkpoint(&backend.checkpoint(cfg.seed, epoch_start, run_json.clone())?, &cfg.out)?;
            }
            let first: Vec<&str> = bad.first.iter().take(REASONS_SHOWN).map(String::as_str).collect();
            bail!(
                "epoch {} delivered no batch: all {} samples read were left out as unreadable (--skip-bad-samples){}",
                epoch_start.epoch,
                bad.count - epoch_start.skipped,
                if first.is_empty() { String::new() } else { format!("; the first:\n  {}", first.join("\n  ")) }
            );
        }
        if finished {
            break;
        }
        position = Position::epoch_start(position.epoch + 1);
    }
    bar.finish_and_clear();
    let ck = backend.checkpoint(cfg.seed, position, run_json)?;
    save_checkpoint(&ck, &cfg.out)?;
    if !interrupted {
        // Written as the checkpoint is (atomically, synced), not copied: a crash mid-copy would leave a torn file.
        ck.save(&cfg.out.join("final.safetensors")).context("cannot write final.safetensors")?;
    }
    // The weights twice over (with a large head, gigabytes): not kept through the last evaluation.
    drop(ck);
    let val_after = match (&val, interrupted, last_eval) {
        // The last step was just measured: not again.
        (Some(_), false, Some((step, results))) if step == backend.steps() => results,
        (Some(val), false, _) => measure_and_log(val, backend.as_mut(), shape, &metrics, &mut best)?,
        _ => Vec::new(),
    };
    let seconds = step_seconds;
    let steps = backend.steps();
    Ok(RunSummary {
        steps,
        first_loss,
        last_loss,
        val_before,
        val_after,
        seconds,
        images_per_second: (steps - start_steps) as f64 * cfg.step_images() as f64 / seconds.max(1e-9),
        interrupted,
        skipped_samples: skipped,
        checkpoint: ck_path,
        best: val.and(best.best().cloned()).map(|b| (best.path().to_path_buf(), b)),
        stopped_imprinting: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winograd_layers_parse_print_and_round_trip_through_the_config_file() {
        for (text, w) in
            [("auto", WinogradLayers::Auto), ("off", WinogradLayers::Off), ("96", WinogradLayers::MinChannels(96))]
        {
            assert_eq!(text.parse::<WinogradLayers>().unwrap(), w);
            assert_eq!(w.to_string(), text);
            let cfg = TrainConfig { winograd: w, ..TrainConfig::default() };
            let file = toml::to_string(&cfg).unwrap();
            assert!(file.contains(&format!("winograd = \"{text}\"")), "{file}");
            assert_eq!(toml::from_str::<TrainConfig>(&file).unwrap(), cfg);
        }
        let err = "some".parse::<WinogradLayers>().unwrap_err();
        assert!(err.contains("`auto`, `off`, or the fewest channels"), "{err}");
        assert!(toml::from_str::<TrainConfig>("winograd = \"-1\"").is_err());
    }

    #[test]
    fn settings_from_the_config_file_are_checked_as_flags_are() {
        TrainConfig::default().validate().unwrap();
        for (text, want) in [
            ("clip_norm = inf", "--clip-norm (clip_norm in a --config file) is inf: a finite number above 0"),
            ("clip_norm = 0.0", "--clip-norm (clip_norm in a --config file) is 0"),
            ("momentum = nan", "--momentum (momentum in a --config file) is NaN"),
            ("weight_decay = -1e-4", "--weight-decay (weight_decay in a --config file) is -0.0001"),
            ("lr = -inf", "--lr (lr in a --config file) is -inf"),
        ] {
            let cfg: TrainConfig = toml::from_str(text).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn conv_tiles_round_trip_through_the_config_file() {
        for text in ["auto", "128x128x32", "64x64x16"] {
            let cfg = TrainConfig { conv_tile: text.parse().unwrap(), ..TrainConfig::default() };
            let file = toml::to_string(&cfg).unwrap();
            assert!(file.contains(&format!("conv_tile = \"{text}\"")), "{file}");
            assert_eq!(toml::from_str::<TrainConfig>(&file).unwrap(), cfg);
        }
        // A file from before the setting existed runs the adapter's tile; a bad shape is refused.
        assert_eq!(toml::from_str::<TrainConfig>("batch = 64").unwrap().conv_tile, ConvTileChoice::Auto);
        let e = toml::from_str::<TrainConfig>("conv_tile = \"100x64x16\"").unwrap_err().to_string();
        assert!(e.contains("rows and columns must be 64 or 128"), "{e}");
    }

    #[test]
    fn winograd_tiles_parse_print_round_trip_and_auto_picks_by_width() {
        use elasticface_core::nn::{Conv2dShape, WinogradTile};
        for (text, t) in
            [("auto", WinogradTileChoice::Auto), ("2", WinogradTileChoice::F2x2), ("4", WinogradTileChoice::F4x4)]
        {
            assert_eq!(text.parse::<WinogradTileChoice>().unwrap(), t);
            assert_eq!(t.to_string(), text);
            let cfg = TrainConfig { winograd_tile: t, ..TrainConfig::default() };
            let file = toml::to_string(&cfg).unwrap();
            assert!(file.contains(&format!("winograd_tile = \"{text}\"")), "{file}");
            assert_eq!(toml::from_str::<TrainConfig>(&file).unwrap(), cfg);
        }
        let err = "8".parse::<WinogradTileChoice>().unwrap_err();
        assert!(err.contains("`auto`, `2` (F(2x2, 3x3)) or `4`"), "{err}");
        // auto: F(4x4) from 64 tiles of 4x4 in the batch. A 7x7 output has 2x2 such tiles per image: F(2x2) at a
        // batch of 15, F(4x4) at 16; a 14x14 one has 16 per image: F(4x4) from a batch of 4.
        let conv = |n, hw| Conv2dShape { n, c_in: 8, h: hw, w: hw, c_out: 8, kh: 3, kw: 3, stride: 1, pad: 1 };
        let auto = |s| WinogradTileChoice::Auto.tile_for(&s);
        assert_eq!(auto(conv(15, 7)), WinogradTile::F2x2);
        assert_eq!(auto(conv(16, 7)), WinogradTile::F4x4);
        assert_eq!(auto(conv(3, 14)), WinogradTile::F2x2);
        assert_eq!(auto(conv(4, 14)), WinogradTile::F4x4);
        assert_eq!(WinogradTileChoice::F2x2.tile_for(&conv(128, 56)), WinogradTile::F2x2);
        assert_eq!(WinogradTileChoice::F4x4.tile_for(&conv(1, 7)), WinogradTile::F4x4);
    }

    #[test]
    fn a_network_becomes_the_settings_that_build_it() {
        let custom =
            IResNetConfig { layers: [2, 1, 1, 1], widths: [8, 16, 16, 32], input_h: 32, input_w: 32, embedding: 16 };
        for net in [IResNetConfig::R50, IResNetConfig::R100, custom] {
            let cfg = TrainConfig::default().with_network(&net).unwrap();
            assert_eq!(cfg.network().unwrap(), net);
            assert_eq!(cfg.layers.is_none(), cfg.arch != "custom", "{cfg:?}");
        }
        assert_eq!(TrainConfig::default().with_network(&IResNetConfig::R50).unwrap().arch, "r50");
        let flags = network_flags(&custom).unwrap();
        assert_eq!(flags, "--arch custom --layers 2,1,1,1 --widths 8,16,16,32 --embedding 16 --input-size 32");
        let wide = IResNetConfig { input_w: 96, ..IResNetConfig::R18 };
        let err = TrainConfig::default().with_network(&wide).unwrap_err().to_string();
        assert!(err.contains("112x96 images; training takes square ones"), "{err}");
    }

    #[test]
    fn a_run_starts_from_the_models_backbone_with_a_seeded_head() {
        let net = IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };
        let step = StepConfig::recipe(MarginConfig::ARCFACE);
        let model = CpuBackend::new(&net, 2, 3, step, 5).unwrap().with_threads(1);
        let backbone = model.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap().backbone();
        let dir = tempfile::tempdir().unwrap();

        // Another network is refused, naming the flags of the model's.
        let path = dir.path().join("model.safetensors");
        backbone.save(&path, serde_json::Value::Null).unwrap();
        let other = IResNetConfig { widths: [4, 8, 8, 8], ..net };
        let err = format!("{:#}", initial_backbone(&path, &other, step.bn).unwrap_err());
        assert!(
            err.contains("--arch custom --layers 1,1,1,1 --widths 4,8,8,16 --embedding 8 --input-size 16"),
            "{err}"
        );
        assert_eq!(initial_backbone(&path, &net, step.bn).unwrap(), backbone);

        // Another embedding size: every tensor but the fc's and the features batch norm's is the model's.
        let wider = IResNetConfig { embedding: 16, ..net };
        assert!(initial_backbone(&path, &wider, step.bn).is_ok());
        let fresh16 = CpuBackend::new(&wider, 2, 3, step, 9).unwrap();
        let mut state = fresh16.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap().state;
        let before = state.clone();
        let seeded = copy_matching(&wider, &mut state, &backbone);
        let want = ["fc.weight", "fc.bias", "features.weight", "features.bias", "features.running_mean"];
        assert_eq!(seeded, [&want[..], &["features.running_var"]].concat());
        let theirs: std::collections::HashMap<String, _> = net.tensors().map(|t| (t.to_string(), t.range())).collect();
        for t in wider.tensors() {
            let kept = if seeded.contains(&t.to_string()) {
                &before[t.range()]
            } else {
                &backbone.state[theirs[&t.to_string()].clone()]
            };
            assert_eq!(&state[t.range()], kept, "{t}");
        }

        let mut fresh = CpuBackend::new(&net, 2, 4, step, 9).unwrap().with_threads(1);
        let seeded = fresh.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap();
        assert_ne!(seeded.state, backbone.state);
        let out = dir.path().to_path_buf();
        let cfg = TrainConfig { init_head: InitHead::Random, batch: 2, out, ..TrainConfig::default() };
        let data: Arc<dyn Dataset> =
            Arc::new(data::SyntheticDataset::new(1, 8, 4, ImageShape { h: 16, w: 16 }).unwrap());
        let metrics = dir.path().join("metrics.jsonl");
        let go = AtomicBool::new(false);
        assert_eq!(start_from(&mut fresh, &backbone, &cfg, &data, &metrics, &go, true).unwrap(), None);
        let started = fresh.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap();
        assert_eq!(started.state, backbone.state, "weights and batch norm statistics");
        assert_eq!(started.head, seeded.head);
        assert!(started.momentum.iter().chain(&started.head_momentum).all(|&m| m == 0.0));
        assert_eq!(started.step, 0);
        let line: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
        assert_eq!((&line["init_head"], &line["seeded"], line.get("imprint")), (&json!("random"), &json!([]), None));
        std::fs::remove_file(&metrics).unwrap();

        let cfg = TrainConfig { init_head: InitHead::Imprint, ..cfg };
        // Stopped in the imprint (after its first batch of 2): the seeded head, no line, the progress kept.
        let stop = AtomicBool::new(true);
        assert_eq!(start_from(&mut fresh, &backbone, &cfg, &data, &metrics, &stop, true).unwrap(), Some((2, 8)));
        assert_eq!(fresh.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap().head, seeded.head);
        assert!(!metrics.exists());
        assert!(dir.path().join(imprint::FILE).exists());
        // Carried on from it.
        assert_eq!(start_from(&mut fresh, &backbone, &cfg, &data, &metrics, &go, true).unwrap(), None);
        let imprinted = fresh.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap();
        assert_eq!(imprinted.state, backbone.state);
        assert_ne!(imprinted.head, seeded.head);
        let line: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
        assert_eq!((line["imprint"]["classes"].as_u64(), line["imprint"]["images"].as_u64()), (Some(4), Some(8)));
        assert_eq!(line["imprint"]["carried_on_from"].as_u64(), Some(2));
        // The run's first checkpoint makes the progress unneeded.
        save_checkpoint(&imprinted, dir.path()).unwrap();
        assert!(!dir.path().join(imprint::FILE).exists());
        assert!(dir.path().join(CHECKPOINT_FILE).exists());
    }
}
