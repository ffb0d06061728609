//! `iresnet_tiny.safetensors`: a tiny iResNet with an ElasticFace head, trained three SGD steps by PyTorch in
//! float64 (inputs and parameters rounded to f32 first). We load `init.*`, run the same three steps through the
//! core's CPU trainer in f32 and compare:
//! - step 0: embeddings (batch statistics), loss, backbone gradient norm, every gradient after clipping, every
//!   parameter and running statistic after the update;
//! - steps 1 and 2: embeddings, loss and gradient norm;
//! - the final parameters and running statistics, and the eval-mode embeddings of a fresh batch.
//!
//! The network's config comes from the file's manifest, so other files of the same format can be checked.

use anyhow::{anyhow, bail, Context, Result};
use elasticface_core::margin::{MarginConfig, MarginKind, PlusAssignment};
use elasticface_core::model::{IResNetConfig, StepConfig, StepReport, TensorKind, Trainer, TrainerLayout};
use elasticface_core::nn::{BatchNorm, Sgd, WinogradTile};
use serde_json::Value;

use crate::gpu::kernels::conv2d::{ConvPrecision, ConvTileChoice};
use crate::gpu::kernels::winograd::WinogradTileChoice;
use crate::gpu::Gpu;
use crate::reference::{Check, Tolerance};
use crate::tensorfile::TensorFile;
use crate::train::gpu::{ConvSettings, GpuBackend};
use crate::train::Backend;

// Tolerances. The reference is float64 autograd; we compute in f32 with another summation order, so every tensor
// carries f32 rounding (~6e-8 relative per operation) accumulated through the network: batch norm divides by the
// batch standard deviation (the last stage normalises over only 6 x 2 x 2 = 24 values) and the head multiplies
// cosines by s = 64. Measured on x86-64, every tensor's largest error is 1e-7..1e-5 of the tensor's largest value
// (the `max_rel` column of the selftest). Each bound is `abs + rel * |reference|` per element: its absolute part
// is 5-15x the largest error measured for its family, and the relative part widens it on the largest elements
// (the head gradient's bound there is ~90x its error, the parameters' ~150x). Real mistakes stay far outside: a
// missing weight decay moves a parameter ~1.5e-5 against a bound of ~4e-6 where it is small, a wrong index, a
// missing term or a wrong momentum by 1e-2 and up.

/// Embeddings (values ~1): a ~30-layer forward pass in f32; measured 9e-6 at step 2.
const FORWARD: Tolerance = Tolerance::new(2e-5, 2e-4);
/// The loss (~60) and the backbone gradient norm (~400): one reduction over the batch; measured 4e-7 and 1.2e-6
/// relative.
const SCALAR: Tolerance = Tolerance::new(0.0, 1e-5);
/// Backbone gradients after clipping (values up to ~0.3): the backward pass doubles the depth; measured 7e-7.
const GRADIENT: Tolerance = Tolerance::new(5e-6, 1e-4);
/// The head gradient reaches ~250: the gradient with respect to a raw class centre is the one with respect to the
/// unit centre divided by the centre's norm, ~0.04 after `N(0, 0.01)` init; measured 3.1e-4 (1.2e-6 of the scale).
const HEAD_GRADIENT: Tolerance = Tolerance::new(3e-3, 1e-4);
/// Backbone parameters after one update move by lr * (gradient + decay); measured 7e-8.
const PARAMETER: Tolerance = Tolerance::new(1e-6, 1e-5);
/// Running statistics mix in the batch statistics with momentum 0.1 (running_var with the unbiased variance);
/// measured 6e-8.
const RUNNING: Tolerance = Tolerance::new(1e-6, 1e-5);
/// The head after one update (values up to ~25, from the large head gradient); measured 3.1e-5.
const HEAD_PARAMETER: Tolerance = Tolerance::new(3e-4, 1e-5);
/// Backbone parameters and running statistics after three steps carry three rounds of the above; measured 8.4e-7.
const FINAL: Tolerance = Tolerance::new(5e-6, 5e-5);
/// The head after three steps (values up to ~70); measured 1.7e-4.
const HEAD_FINAL: Tolerance = Tolerance::new(2e-3, 5e-5);
/// Eval-mode embeddings of the final network (running statistics); measured 1.8e-6.
const EVAL: Tolerance = Tolerance::new(2e-5, 2e-4);

/// The network, loss and optimizer described by the file's manifest.
struct Setup {
    cfg: IResNetConfig,
    classes: usize,
    batch: usize,
    steps: usize,
    step: StepConfig,
}

fn usize_at(v: &Value, key: &str) -> Result<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| anyhow!("manifest: `{key}` is missing"))
}

fn f32_at(v: &Value, key: &str) -> Result<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32).ok_or_else(|| anyhow!("manifest: `{key}` is missing"))
}

fn four(v: &Value, key: &str) -> Result<[usize; 4]> {
    let a: Vec<usize> = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("manifest: `{key}` is missing"))?
        .iter()
        .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!("manifest: `{key}` must hold integers")))
        .collect::<Result<_>>()?;
    a.try_into().map_err(|_| anyhow!("manifest: `{key}` must have 4 entries"))
}

impl Setup {
    fn from_manifest(meta: &Value) -> Result<Self> {
        let hw = meta.get("input_hw").and_then(Value::as_array).ok_or_else(|| anyhow!("manifest: no `input_hw`"))?;
        let dim = |i: usize| hw.get(i).and_then(Value::as_u64).map(|x| x as usize);
        let (Some(input_h), Some(input_w)) = (dim(0), dim(1)) else { bail!("manifest: `input_hw` needs 2 sizes") };
        let cfg = IResNetConfig {
            layers: four(meta, "layers")?,
            widths: four(meta, "widths")?,
            input_h,
            input_w,
            embedding: usize_at(meta, "embedding")?,
        };
        cfg.validate().context("manifest describes an invalid network")?;
        let loss = meta.get("loss").ok_or_else(|| anyhow!("manifest: no `loss`"))?;
        let kind = match loss.get("kind").and_then(Value::as_str) {
            Some("arc") => MarginKind::Arc,
            Some("cos") => MarginKind::Cos,
            other => bail!("manifest: loss kind {other:?} is neither \"arc\" nor \"cos\""),
        };
        let margin = MarginConfig {
            kind,
            s: f32_at(loss, "s")?,
            m: f32_at(loss, "m")?,
            sigma: f32_at(loss, "std")?,
            plus: PlusAssignment::None, // the manifest's margins are already assigned per sample
        };
        let opt = meta.get("optimizer").ok_or_else(|| anyhow!("manifest: no `optimizer`"))?;
        let step = StepConfig {
            margin,
            sgd: Sgd {
                lr: f32_at(opt, "lr")?,
                momentum: f32_at(opt, "momentum")?,
                weight_decay: f32_at(opt, "weight_decay")?,
            },
            clip_norm: f32_at(opt, "backbone_clip_grad_norm")?,
            bn: BatchNorm::default(),
        };
        Ok(Self {
            cfg,
            classes: usize_at(meta, "classes")?,
            batch: usize_at(meta, "batch")?,
            steps: usize_at(meta, "steps")?,
            step,
        })
    }
}

/// The tolerances of one implementation's run (see the constants above).
struct Tolerances {
    forward: Tolerance,
    scalar: Tolerance,
    gradient: Tolerance,
    head_gradient: Tolerance,
    after_step0: StateTolerance,
    final_state: StateTolerance,
    eval: Tolerance,
}

/// The CPU reference's tolerances.
const CPU: Tolerances = Tolerances {
    forward: FORWARD,
    scalar: SCALAR,
    gradient: GRADIENT,
    head_gradient: HEAD_GRADIENT,
    after_step0: StateTolerance { params: PARAMETER, running: RUNNING, head: HEAD_PARAMETER },
    final_state: StateTolerance { params: FINAL, running: FINAL, head: HEAD_FINAL },
    eval: EVAL,
};

/// The GPU trainer's tolerances: the CPU's. The GPU sums in other orders (tiles, split reductions, fixed trees)
/// but in f32 with the same operations, so its errors against float64 are of the same size as the core's. Measured
/// on lavapipe (largest absolute error, GPU vs core): embeddings 1.1e-5 vs 9.1e-6, loss 5.3e-5 vs 2.7e-5 (9e-7
/// relative), gradient norm 7.9e-4 vs 4.6e-4 (2e-6 relative), backbone gradients 9.0e-7 vs 6.9e-7, head gradient
/// 5.3e-4 vs 3.1e-4, parameters after step 0 1.2e-7 (both), head 5.3e-5 vs 3.1e-5, final state 8.4e-7 (both),
/// final head 1.4e-4 vs 1.7e-4, eval embeddings 2.4e-6 vs 1.9e-6: at most twice the core's, and every bound is at
/// least 5x the GPU's error.
const GPU: Tolerances = CPU;

/// Mixed precision's tolerances. The convolutions round their operands to f16 (relative error up to 2^-11 each),
/// so every convolution output carries ~1e-3 of relative noise instead of ~1e-7; the batch norms (normalising over
/// as few as 24 values here) pass it on, the head multiplies cosines by s = 64, and three steps compound it.
/// Measured on an H200 (NVIDIA Vulkan driver 580), largest absolute error per family: embeddings 4.9e-2 (of
/// values up to ~2), loss 0.21 (4e-3 relative), gradient norm 4.9e-2 relative, backbone gradients 9.9e-3, head
/// gradient 0.72 (of ~250), parameters after one step 9.9e-4, running statistics 1.4e-4, head 7.2e-2, after three
/// steps 8.7e-3, 3.9e-3 and 0.41, eval embeddings 2.0e-2. Each bound is 5x its family's: loose next to f32's, but a
/// real mistake (a missing term, a wrong scale) is an error of the order of the values themselves. Since the
/// activations are stored as f16 too (each batch norm input rounded), measured on lavapipe (emulated): at most 0.41
/// of a bound (eval embeddings 4.1e-2; 0.25 before), and with the 3x3 convolutions as Winograd (the transforms on
/// the f16 activations) 0.57 with F(2x2), its products on tensor cores (final head 1.13; 0.45 with its products
/// in f32), and 0.39 with F(4x4), its products in f32 (embeddings after two steps; on tensor cores its products
/// exceeded these bounds by half: head gradient 6.1 against 4).
/// Winograd F(4x4, 3x3)'s tolerances, for the run with every 3x3 stride-1 convolution in F(4x4) (F(2x2) keeps the
/// f32 ones). Its transforms add and subtract inputs with weights up to 8 and scale by up to 1/576 before the
/// products, so each convolution's rounding error is relative to terms ~100x larger than F(2x2)'s (the core's
/// bound: `(K + 17) * 64 * EPSILON * P` against `(K + 16) * 16 * EPSILON * P`); on random data it is 5-9x F(2x2)'s.
/// Where the result is much smaller than its terms (a weight gradient summed over the batch that nearly cancels)
/// the relative error grows further. Measured on lavapipe, largest absolute error per family (F(2x2) in brackets):
/// embeddings 4.8e-5 (1.2e-5), loss 9.5e-5 (5.3e-5), gradient norm 2.9e-2 at step 2, 7.7e-5 relative (8.5e-4,
/// 2.3e-6), backbone gradients 2.8e-6 (4.8e-7), head gradient 1.5e-3 (2.3e-4), parameters after one step 2.8e-7
/// (1.2e-7), running statistics 3.6e-7 (1.2e-7), head 1.5e-4 (2.3e-5), after three steps 2.1e-4, 1.3e-6 and 4.0e-4
/// (6.3e-7, 3.6e-7, 1.6e-4), eval embeddings 3.8e-4 (1.9e-6). Steps 0 and 1 stay within a few times F(2x2)'s
/// errors; step 2's gradients carry 30x, which its update passes to the final state. Each bound is at least 5x its
/// family's error: looser than f32's, far tighter than mixed precision's, and a real mistake (a wrong transform
/// entry, index or scale) still gives errors of the order of the values.
const WINOGRAD_F4: Tolerances = Tolerances {
    forward: Tolerance::new(2.5e-4, 2e-4),
    scalar: Tolerance::new(0.0, 4e-4),
    gradient: Tolerance::new(1.5e-5, 1e-4),
    head_gradient: Tolerance::new(7.5e-3, 1e-4),
    after_step0: StateTolerance {
        params: Tolerance::new(1.5e-6, 1e-5),
        running: Tolerance::new(2e-6, 1e-5),
        head: Tolerance::new(7.5e-4, 1e-5),
    },
    final_state: StateTolerance {
        params: Tolerance::new(1e-3, 5e-5),
        running: Tolerance::new(1e-5, 5e-5),
        head: HEAD_FINAL,
    },
    eval: Tolerance::new(2e-3, 2e-4),
};

const MIXED: Tolerances = Tolerances {
    forward: Tolerance::new(0.25, 0.0),
    scalar: Tolerance::new(0.0, 0.25),
    gradient: Tolerance::new(5e-2, 0.0),
    head_gradient: Tolerance::new(4.0, 0.0),
    after_step0: StateTolerance {
        params: Tolerance::new(5e-3, 0.0),
        running: Tolerance::new(1e-3, 0.0),
        head: Tolerance::new(0.4, 0.0),
    },
    final_state: StateTolerance {
        params: Tolerance::new(5e-2, 0.0),
        running: Tolerance::new(2e-2, 0.0),
        head: Tolerance::new(2.0, 0.0),
    },
    eval: Tolerance::new(0.1, 0.0),
};

/// What the checks need of a trainer: the core's ([`Trainer`]) or the GPU's ([`GpuBackend`]).
trait Subject {
    /// One training step on a float input `(B, 3, H, W)`.
    fn step(&mut self, input: &[f32], labels: &[u32], margins: &[f32]) -> Result<StepReport>;
    /// The embeddings `(B, E)` of the last step (batch statistics).
    fn embeddings(&self) -> Result<Vec<f32>>;
    /// The backbone gradients of the last step after clipping (state layout).
    fn grads(&self) -> Result<Vec<f32>>;
    /// The head gradient of the last step `(D, C)`.
    fn head_grad(&self) -> Result<Vec<f32>>;
    /// The backbone state.
    fn state(&self) -> Result<Vec<f32>>;
    /// The head `(D, C)`.
    fn head(&self) -> Result<Vec<f32>>;
    /// Steps taken.
    fn steps(&self) -> u64;
    /// Eval-mode embeddings of float inputs `(N, 3, H, W)`.
    fn embed(&mut self, input: &[f32]) -> Result<Vec<f32>>;
}

impl Subject for Trainer<'_> {
    fn step(&mut self, input: &[f32], labels: &[u32], margins: &[f32]) -> Result<StepReport> {
        Ok(Trainer::step(self, input, labels, margins)?)
    }
    fn embeddings(&self) -> Result<Vec<f32>> {
        Ok(Trainer::embeddings(self).to_vec())
    }
    fn grads(&self) -> Result<Vec<f32>> {
        Ok(Trainer::grads(self).to_vec())
    }
    fn head_grad(&self) -> Result<Vec<f32>> {
        Ok(Trainer::head_grad(self).to_vec())
    }
    fn state(&self) -> Result<Vec<f32>> {
        Ok(Trainer::state(self).to_vec())
    }
    fn head(&self) -> Result<Vec<f32>> {
        Ok(Trainer::head(self).to_vec())
    }
    fn steps(&self) -> u64 {
        Trainer::steps(self)
    }
    fn embed(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        let cfg = self.layout().cfg;
        let n = input.len() / cfg.input_len();
        let mut emb = vec![0.0f32; n * cfg.embedding];
        Trainer::embed(self, n, input, &mut emb)?;
        Ok(emb)
    }
}

impl Subject for GpuBackend<&Gpu> {
    fn step(&mut self, input: &[f32], labels: &[u32], margins: &[f32]) -> Result<StepReport> {
        self.step_input(input, labels, margins)
    }
    fn embeddings(&self) -> Result<Vec<f32>> {
        GpuBackend::embeddings(self)
    }
    fn grads(&self) -> Result<Vec<f32>> {
        GpuBackend::grads(self)
    }
    fn head_grad(&self) -> Result<Vec<f32>> {
        GpuBackend::head_grad(self)
    }
    fn state(&self) -> Result<Vec<f32>> {
        GpuBackend::state(self)
    }
    fn head(&self) -> Result<Vec<f32>> {
        GpuBackend::head(self)
    }
    fn steps(&self) -> u64 {
        Backend::steps(self)
    }
    fn embed(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        self.embed_input(input)
    }
}

/// Runs the file through the core's CPU trainer and compares every tensor.
pub fn check_cpu(file: &TensorFile) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(e) = run_cpu(file, &mut checks) {
        checks.push(Check::failed("iresnet_tiny", format!("{e:#}")));
    }
    checks
}

/// Runs the file through the GPU trainer ([`GpuBackend`], from the float inputs: the reference's inputs are not
/// images) and compares every tensor, as [`check_cpu`] does.
/// With `precision` mixed, the trainer's convolutions run in mixed precision, checked with mixed precision's
/// tolerances (written in this module with their reasons). With `winograd`, every 3x3 stride-1 convolution
/// runs as Winograd with that tile ([`GpuBackend::set_winograd`], [`GpuBackend::set_winograd_tile`]; in mixed
/// precision on its f16 activations, F(2x2)'s products on tensor cores): F(2x2) is checked with the f32
/// tolerances, F(4x4) with its own (in mixed precision, both with mixed precision's).
pub fn check_gpu(file: &TensorFile, gpu: &Gpu, precision: ConvPrecision, winograd: Option<WinogradTile>) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(e) = run_gpu(file, gpu, precision, winograd, &mut checks) {
        checks.push(Check::failed("iresnet_tiny", format!("{e:#}")));
    }
    checks
}

fn run_cpu(file: &TensorFile, checks: &mut Vec<Check>) -> Result<()> {
    let setup = Setup::from_manifest(&file.meta)?;
    let (state, head) = initial_weights(file, &setup.cfg, setup.classes)?;
    let layout = TrainerLayout::new(&setup.cfg, setup.batch, setup.classes)?;
    let mut arena = vec![0.0f32; layout.arena_len()];
    let mut order = vec![0u32; setup.batch];
    let mut trainer = Trainer::new(layout, setup.step, &mut arena, &mut order)?;
    trainer.state_mut().copy_from_slice(&state);
    trainer.head_mut().copy_from_slice(&head);
    run(file, &setup, &mut trainer, &CPU, checks)
}

fn run_gpu(
    file: &TensorFile,
    gpu: &Gpu,
    precision: ConvPrecision,
    winograd: Option<WinogradTile>,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let setup = Setup::from_manifest(&file.meta)?;
    let (state, head) = initial_weights(file, &setup.cfg, setup.classes)?;
    let (cfg, b, k) = (setup.cfg, setup.batch, setup.classes);
    let settings = ConvSettings {
        precision,
        winograd: winograd.map(|_| 1),
        winograd_tile: winograd.map_or(WinogradTileChoice::Auto, WinogradTileChoice::from),
        conv_tile: ConvTileChoice::Auto,
    };
    let mut trainer = GpuBackend::with_weights(gpu, &cfg, b, k, setup.step, &state, &head, settings)?;
    let tol = match (precision, winograd) {
        (ConvPrecision::Mixed, _) => &MIXED,
        (ConvPrecision::F32, None | Some(WinogradTile::F2x2)) => &GPU,
        (ConvPrecision::F32, Some(WinogradTile::F4x4)) => &WINOGRAD_F4,
    };
    run(file, &setup, &mut trainer, tol, checks)
}

/// The initial state and head `init.*`: every tensor of our state must come from the file.
fn initial_weights(file: &TensorFile, cfg: &IResNetConfig, classes: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut state = vec![0.0f32; cfg.state_len()];
    for t in cfg.tensors() {
        let want = file.f32(&format!("init.{t}"))?;
        if want.len() != t.len {
            bail!("init.{t} has {} elements, the manifest's network needs {}", want.len(), t.len);
        }
        state[t.range()].copy_from_slice(want);
    }
    let head = file.f32("init.head.weight")?;
    if head.len() != cfg.embedding * classes {
        bail!("init.head.weight has {} elements, expected {}", head.len(), cfg.embedding * classes);
    }
    Ok((state, head.to_vec()))
}

/// The reference's steps on `trainer`, compared tensor by tensor within `tol`.
fn run(
    file: &TensorFile,
    setup: &Setup,
    trainer: &mut impl Subject,
    tol: &Tolerances,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let cfg = setup.cfg;
    for step in 0..setup.steps {
        let p = format!("step{step}.");
        let input = file.f32(&format!("{p}input"))?;
        let labels = file.labels(&format!("{p}labels"))?;
        let margins = file.f32(&format!("{p}margins"))?;
        let report = trainer.step(input, &labels, margins).with_context(|| format!("step {step}"))?;
        let emb = trainer.embeddings()?;
        checks.push(Check::compare(format!("{p}embeddings"), &emb, file.f32(&format!("{p}embeddings"))?, tol.forward));
        checks.push(Check::compare(format!("{p}loss"), &[report.loss], file.f32(&format!("{p}loss"))?, tol.scalar));
        let norm_key = format!("{p}backbone_grad_norm");
        checks.push(Check::compare(norm_key.clone(), &[report.grad_norm], file.f32(&norm_key)?, tol.scalar));
        if step == 0 {
            let grads = trainer.grads()?;
            for t in cfg.tensors().filter(|t| t.kind == TensorKind::Trainable) {
                let key = format!("step0.grad.{t}");
                checks.push(Check::compare(key.clone(), &grads[t.range()], file.f32(&key)?, tol.gradient));
            }
            let key = "step0.grad.head.weight";
            checks.push(Check::compare(key, &trainer.head_grad()?, file.f32(key)?, tol.head_gradient));
            compare_state(file, trainer, &cfg, "after_step0", &tol.after_step0, checks)?;
        }
    }
    compare_state(file, trainer, &cfg, "final", &tol.final_state, checks)?;

    let input = file.f32("eval.input")?;
    let emb = trainer.embed(input).context("eval-mode forward")?;
    checks.push(Check::compare("eval.embeddings", &emb, file.f32("eval.embeddings")?, tol.eval));
    Ok(())
}

/// Tolerances of a state snapshot.
struct StateTolerance {
    params: Tolerance,
    running: Tolerance,
    head: Tolerance,
}

/// Compares every state tensor, the head and `num_batches_tracked` with `{prefix}.*`.
fn compare_state(
    file: &TensorFile,
    trainer: &impl Subject,
    cfg: &IResNetConfig,
    prefix: &str,
    tol: &StateTolerance,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let state = trainer.state()?;
    for t in cfg.tensors() {
        let key = format!("{prefix}.{t}");
        let t_tol = if t.kind == TensorKind::RunningStat { tol.running } else { tol.params };
        checks.push(Check::compare(key.clone(), &state[t.range()], file.f32(&key)?, t_tol));
    }
    let key = format!("{prefix}.head.weight");
    checks.push(Check::compare(key.clone(), &trainer.head()?, file.f32(&key)?, tol.head));
    // Every batch norm counts the training steps; check them all against our counter.
    let counters: Vec<&str> =
        file.keys().into_iter().filter(|k| k.starts_with(prefix) && k.ends_with(".num_batches_tracked")).collect();
    let mismatched = counters.iter().filter(|k| file.i64(k).map(|v| v != [trainer.steps() as i64]).unwrap_or(true));
    let bad = mismatched.count();
    let name = format!("{prefix}.*.num_batches_tracked ({} counters)", counters.len());
    checks.push(Check::exact(name, bad as f64, 0.0));
    Ok(())
}
