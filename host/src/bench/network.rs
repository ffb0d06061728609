//! `elasticface bench` (the default): whole training steps of an iResNet on the GPU trainer, on synthetic data.
//!
//! What is timed is [`Backend::step`] exactly as `elasticface train` calls it: the upload of a batch of u8 images,
//! flips, labels and margins, the whole step on the GPU (preprocess, forward, margin head, backward, clipping, SGD)
//! in one submission, and the read-back of its 16-byte report. The data pipeline is not included (it runs on other
//! threads during training; `bench --data` measures it alone). After `warmup` untimed steps, each of `steps` steps
//! is timed with the wall clock; images/s is the batch divided by the median step.
//!
//! Then, when the adapter has timestamp queries, one more step runs with a timestamp around every dispatch
//! ([`GpuBackend::profile_step`]): GPU time per kernel. Its sum is below the median step by the launch and
//! synchronisation overhead, which the report gives as well.
//!
//! Memory is what the trainer allocated ([`GpuBackend::memory`], every buffer it holds: its peak, since nothing is
//! allocated during a step) and, where the backend reports it, what the allocator reserved from the driver.
//!
//! [`tune`] (`bench --tune`) times the same steps in each [`ConvSettings`] of the convolutions on one trainer (the step
//! is rebuilt between settings; the weights keep training), so that the settings a GPU runs fastest are measured
//! on it rather than guessed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::margin::MarginConfig;
use elasticface_core::model::{IResNetConfig, StepConfig};
use elasticface_core::rng::Philox4x32;
use rand_core::RngCore;
use serde::Serialize;

use crate::data::{Batch, Position};
use crate::gpu::kernels::conv2d::{ConvPrecision, ConvTileChoice, TileShape};
use crate::gpu::kernels::winograd::WinogradTileChoice;
use crate::gpu::Gpu;
use crate::streams::BENCH_STREAM;
use crate::train::gpu::{ConvSettings, GpuBackend, MemoryUse};
use crate::train::Backend;

/// What to measure.
#[derive(Clone, Debug)]
pub struct NetworkBenchConfig {
    /// The network, input size included.
    pub cfg: IResNetConfig,
    /// Its name, for the report (`r100`).
    pub arch: String,
    /// Batch size.
    pub batch: usize,
    /// Classes of the margin head.
    pub classes: usize,
    /// The loss.
    pub margin: MarginConfig,
    /// Arithmetic of the convolutions.
    pub precision: ConvPrecision,
    /// The 3x3 stride-1 convolutions of at least this many channels run as Winograd (`None`: none do).
    pub winograd: Option<usize>,
    /// Their tile.
    pub winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the convolutions.
    pub conv_tile: ConvTileChoice,
    /// Untimed steps first (pipelines warm, caches filled).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Run one more step with per-dispatch timestamps (skipped where the adapter has none).
    pub profile: bool,
    /// Seed of the weights and the synthetic data.
    pub seed: u64,
}

impl NetworkBenchConfig {
    /// The convolution settings it measures.
    pub fn setting(&self) -> ConvSettings {
        ConvSettings {
            precision: self.precision,
            winograd: self.winograd,
            winograd_tile: self.winograd_tile,
            conv_tile: self.conv_tile,
        }
    }
}

/// GPU time of one kernel over the profiled step.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    /// The kernel (a dispatch's label: its entry point).
    pub kernel: String,
    /// Dispatches of it in one step.
    pub dispatches: usize,
    /// Milliseconds, all its dispatches together.
    pub ms: f64,
    /// Its share of the summed GPU time of the step.
    pub share: f64,
}

/// Bytes of GPU memory.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Backbone state, gradients and momentum.
    pub parameters: u64,
    /// The head: weight, gradient, momentum, normalised copy, scratch.
    pub head: u64,
    /// Activations kept for the backward pass.
    pub activations: u64,
    /// Rotating gradient buffers.
    pub gradient_buffers: u64,
    /// Inputs, shared scratch, reductions, report.
    pub scratch: u64,
    /// Everything the trainer allocated: its peak, as nothing is allocated during a step.
    pub total: u64,
    /// What the device's allocator reserved from the driver, where the backend reports it.
    pub allocator_reserved: Option<u64>,
}

impl MemoryReport {
    fn new(m: MemoryUse, gpu: &Gpu) -> Self {
        Self {
            parameters: m.parameters,
            head: m.head,
            activations: m.activations,
            gradient_buffers: m.gradient_buffers,
            scratch: m.scratch,
            total: m.total(),
            allocator_reserved: gpu.device.generate_allocator_report().map(|r| r.total_reserved_bytes),
        }
    }
}

/// The measured figures.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkBenchResult {
    /// The adapter, its backend and driver.
    pub adapter: String,
    /// Network name.
    pub arch: String,
    /// Input size (square).
    pub input_size: usize,
    /// Batch size.
    pub batch: usize,
    /// Head classes.
    pub classes: usize,
    /// Arithmetic of the convolutions (the fc layer, the head and the loss are f32 in both; the batch norms
    /// compute in f32, on f16 activations in mixed precision).
    pub precision: ConvPrecision,
    /// The fewest channels of a convolution run as Winograd (`None`: every convolution runs directly).
    pub winograd: Option<usize>,
    /// Their tile (`auto`, `2` or `4`).
    pub winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the convolutions (`ROWSxCOLSxDEPTH`), the adapter's or the one asked for.
    pub conv_tile: String,
    /// Mixed precision's loss scale after the last step.
    pub loss_scale: Option<f32>,
    /// Warm-up steps.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median step, milliseconds.
    pub step_ms_median: f64,
    /// Fastest step, milliseconds.
    pub step_ms_min: f64,
    /// Slowest step, milliseconds.
    pub step_ms_max: f64,
    /// Batch over the median step.
    pub images_per_s: f64,
    /// Floating-point operations of the convolutions and the fc layer in one step (forward, and both gradients
    /// except the input image's), multiply-adds counted twice.
    pub gflop_per_step: f64,
    /// `gflop_per_step` over the median step.
    pub tflops: f64,
    /// Dispatches recorded per step.
    pub dispatches_per_step: usize,
    /// Loss of the first and the last timed step (finite: the step really trains).
    pub loss_first: f32,
    /// Loss of the last timed step.
    pub loss_last: f32,
    /// GPU memory.
    pub memory: MemoryReport,
    /// Summed GPU time of the profiled step's dispatches, milliseconds (absent without timestamps).
    pub gpu_ms_profiled: Option<f64>,
    /// GPU time per kernel, slowest first (empty without timestamps).
    pub kernels: Vec<KernelTime>,
}

/// Multiply-adds times two of the convolutions and the fc layer of one training step of `batch` images: the
/// forward pass, the weight gradients, and the input gradients of every layer but the stem.
pub fn gflop_per_step(cfg: &IResNetConfig, batch: usize) -> f64 {
    // (positions out, c_out, c_in * k * k) of each product.
    let conv = |ho: usize, wo: usize, c_out: usize, depth: usize| (ho * wo * c_out * depth) as f64 * 2.0;
    let stem = conv(cfg.input_h, cfg.input_w, cfg.widths[0], 3 * 9);
    let blocks: f64 = cfg
        .blocks()
        .map(|b| {
            let conv1 = conv(b.h, b.w, b.c_out, b.c_in * 9);
            let conv2 = conv(b.out_h(), b.out_w(), b.c_out, b.c_out * 9);
            let down = if b.downsample { conv(b.out_h(), b.out_w(), b.c_out, b.c_in) } else { 0.0 };
            conv1 + conv2 + down
        })
        .sum();
    let fc = 2.0 * (cfg.fc_inputs() * cfg.embedding) as f64;
    // Forward, weight gradient, input gradient (none for the stem).
    batch as f64 * (2.0 * stem + 3.0 * (blocks + fc)) / 1e9
}

/// Synthetic batches: random pixels and labels from `seed` (the step's cost does not depend on the values).
fn synthetic_batches(cfg: &IResNetConfig, batch: usize, classes: usize, seed: u64, count: usize) -> Vec<Batch> {
    let mut rng = Philox4x32::new(seed, BENCH_STREAM);
    (0..count)
        .map(|index| {
            let mut images = vec![0u8; batch * cfg.input_len()];
            rng.fill_bytes(&mut images);
            let labels = (0..batch).map(|_| (rng.next_u64() % classes as u64) as u32).collect();
            Batch {
                epoch: 0,
                index,
                images,
                labels,
                flips: (0..batch).map(|i| i % 2 == 1).collect(),
                indices: (0..batch).collect(),
                next: Position::at_batch(0, index + 1, batch),
            }
        })
        .collect()
}

/// Wall-clock times of the timed steps of one run of [`time_steps`].
struct Timing {
    /// Median, fastest and slowest step, seconds.
    median: f64,
    min: f64,
    max: f64,
    /// Loss of the first and the last timed step.
    loss_first: f32,
    loss_last: f32,
    /// The step number the next step would have (its margins are drawn for it).
    next_step: u64,
}

impl Timing {
    /// Errors unless both losses are finite: a setting whose kernels compute garbage on an adapter may well be fast
    /// (the step's guard then skips every update), and must not be measured as if it trained.
    fn check_trains(&self) -> Result<()> {
        ensure!(
            self.loss_first.is_finite() && self.loss_last.is_finite(),
            "its steps do not train (losses {} and {}): its kernels do not compute on this adapter",
            self.loss_first,
            self.loss_last
        );
        Ok(())
    }
}

/// Runs `b.warmup` untimed, then `b.steps` (at least 1) timed steps of `backend`, numbered from `first_step` (the
/// margins of step s are drawn for s), cycling through `batches`; reports each step through `say`.
fn time_steps(
    backend: &mut GpuBackend,
    b: &NetworkBenchConfig,
    batches: &[Batch],
    first_step: u64,
    say: &dyn Fn(String),
) -> Result<Timing> {
    let mut margins = vec![0.0; b.batch];
    let mut times = Vec::with_capacity(b.steps);
    let (mut loss_first, mut loss_last) = (f32::NAN, f32::NAN);
    for i in 0..b.warmup + b.steps {
        let step = first_step + i as u64;
        let timed = i >= b.warmup;
        let t = Instant::now();
        b.margin.draw_margins_at(b.seed, step, &mut margins);
        let report =
            backend.step(&batches[step as usize % batches.len()], &margins).with_context(|| format!("step {step}"))?;
        let s = t.elapsed().as_secs_f64();
        if timed {
            times.push(s);
            if times.len() == 1 {
                loss_first = report.loss;
            }
            loss_last = report.loss;
        }
        let what = if timed { "step" } else { "warm-up" };
        say(format!("{what} {}: {:.1} ms, loss {:.3}", i + 1, s * 1e3, report.loss));
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 { times[n / 2] } else { 0.5 * (times[n / 2 - 1] + times[n / 2]) };
    Ok(Timing {
        median,
        min: times[0],
        max: times[n - 1],
        loss_first,
        loss_last,
        next_step: first_step + (b.warmup + b.steps) as u64,
    })
}

/// Where progress lines go: stderr, or nowhere when `quiet`.
fn progress(quiet: bool) -> impl Fn(String) {
    move |s| {
        if !quiet {
            eprintln!("{s}");
        }
    }
}

/// The trainer `b` describes, in `settings`.
fn build_trainer(gpu: &Arc<Gpu>, b: &NetworkBenchConfig, settings: ConvSettings) -> Result<GpuBackend> {
    let step_cfg = StepConfig::recipe(b.margin);
    GpuBackend::with_settings(gpu.clone(), &b.cfg, b.batch, b.classes, step_cfg, b.seed, settings).with_context(|| {
        format!("building the {} trainer at batch {} with {} classes ({settings})", b.arch, b.batch, b.classes)
    })
}

/// Builds the trainer on `gpu` and measures it (progress on stderr unless `quiet`).
pub fn measure(gpu: Arc<Gpu>, b: &NetworkBenchConfig, quiet: bool) -> Result<NetworkBenchResult> {
    ensure!(b.steps > 0, "bench: --steps must be at least 1");
    let say = progress(quiet);
    let adapter = crate::gpu::AdapterLine(gpu.info.clone()).to_string();
    let t = Instant::now();
    let mut backend = build_trainer(&gpu, b, b.setting())?;
    let memory = MemoryReport::new(backend.memory(), &gpu);
    say(format!(
        "{}: {} at batch {}, {} classes: trainer built in {:.1} s, {:.2} GB allocated, {} dispatches per step",
        adapter,
        b.arch,
        b.batch,
        b.classes,
        t.elapsed().as_secs_f64(),
        memory.total as f64 / 1e9,
        backend.dispatches_per_step()
    ));
    let batches = synthetic_batches(&b.cfg, b.batch, b.classes, b.seed, 4);
    let timing = time_steps(&mut backend, b, &batches, 0, &say)?;
    let mut margins = vec![0.0; b.batch];
    let gflop = gflop_per_step(&b.cfg, b.batch);
    let (mut gpu_ms_profiled, mut kernels) = (None, Vec::new());
    if b.profile && gpu.caps.timestamps {
        b.margin.draw_margins_at(b.seed, timing.next_step, &mut margins);
        let profile = backend.profile_step(&batches[0], &margins).context("profiled step")?;
        let total: f64 = profile.iter().map(|(_, s)| s).sum();
        let mut by: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (label, s) in &profile {
            let e = by.entry(label.as_str()).or_default();
            e.0 += 1;
            e.1 += s;
        }
        kernels = by
            .into_iter()
            .map(|(k, (n, s))| KernelTime {
                kernel: k.to_string(),
                dispatches: n,
                ms: s * 1e3,
                share: if total > 0.0 { s / total } else { 0.0 },
            })
            .collect();
        kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        gpu_ms_profiled = Some(total * 1e3);
    } else if b.profile {
        say(format!("{}: no timestamp queries, no per-kernel times", gpu.info.name));
    }
    Ok(NetworkBenchResult {
        adapter,
        arch: b.arch.clone(),
        input_size: b.cfg.input_h,
        batch: b.batch,
        classes: b.classes,
        precision: b.precision,
        winograd: backend.winograd(),
        winograd_tile: backend.winograd_tile(),
        conv_tile: backend.conv_tile().tiling(&gpu).tile.to_string(),
        loss_scale: backend.loss_scale().map(|l| l.scale),
        warmup: b.warmup,
        steps: b.steps,
        step_ms_median: timing.median * 1e3,
        step_ms_min: timing.min * 1e3,
        step_ms_max: timing.max * 1e3,
        images_per_s: b.batch as f64 / timing.median,
        gflop_per_step: gflop,
        tflops: gflop / timing.median / 1e3,
        dispatches_per_step: backend.dispatches_per_step(),
        loss_first: timing.loss_first,
        loss_last: timing.loss_last,
        memory,
        gpu_ms_profiled,
        kernels,
    })
}

impl fmt::Display for NetworkBenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gb = |b: u64| b as f64 / 1e9;
        writeln!(f, "adapter      {}", self.adapter)?;
        writeln!(
            f,
            "network      {} at {}x{}, batch {}, {} classes, {:?} convolutions on {} tiles{}{}",
            self.arch,
            self.input_size,
            self.input_size,
            self.batch,
            self.classes,
            self.precision,
            self.conv_tile,
            self.winograd
                .map(|c| format!(", Winograd (tile {}) from {c} channels", self.winograd_tile))
                .unwrap_or_default(),
            self.loss_scale.map(|s| format!(" (loss scale {s})")).unwrap_or_default()
        )?;
        writeln!(
            f,
            "step         median {:.1} ms (min {:.1}, max {:.1}) over {} steps after {} warm-up",
            self.step_ms_median, self.step_ms_min, self.step_ms_max, self.steps, self.warmup
        )?;
        writeln!(f, "throughput   {:.1} images/s", self.images_per_s)?;
        writeln!(f, "arithmetic   {:.1} GFLOP per step, {:.2} TFLOP/s", self.gflop_per_step, self.tflops)?;
        writeln!(f, "loss         {:.4} -> {:.4}", self.loss_first, self.loss_last)?;
        let m = &self.memory;
        write!(
            f,
            "memory       {:.2} GB allocated (parameters {:.2}, head {:.2}, activations {:.2}, gradient buffers {:.2}, \
             scratch {:.2})",
            gb(m.total),
            gb(m.parameters),
            gb(m.head),
            gb(m.activations),
            gb(m.gradient_buffers),
            gb(m.scratch)
        )?;
        if let Some(r) = m.allocator_reserved {
            write!(f, "; allocator reserved {:.2} GB", gb(r))?;
        }
        writeln!(f)?;
        write!(f, "dispatches   {} per step", self.dispatches_per_step)?;
        if let Some(gpu_ms) = self.gpu_ms_profiled {
            writeln!(
                f,
                "\nGPU time     {gpu_ms:.1} ms in the profiled step's dispatches ({:.1} ms of the median step outside them)",
                (self.step_ms_median - gpu_ms).max(0.0)
            )?;
            write!(f, "{:<36} {:>10} {:>10} {:>7}", "kernel", "dispatches", "ms", "share")?;
            for k in &self.kernels {
                write!(f, "\n{:<36} {:>10} {:>10.2} {:>6.1}%", k.kernel, k.dispatches, k.ms, 100.0 * k.share)?;
            }
        }
        Ok(())
    }
}

/// The settings `bench --tune` compares on `gpu` for `cfg`, most telling first, so that a tune cut short by its
/// budget has measured what matters most:
/// 1. the baselines: `default` (what `train` runs without flags), every convolution direct in f32, and mixed
///    precision's default where the adapter has cooperative matrices;
/// 2. Winograd from each width of the network on (the thresholds that differ, narrowest first: the largest changes of
///    arithmetic), in f32 with the `auto` tile, then in mixed precision with F(2x2)'s products on tensor cores;
/// 3. the default and mixed precision on each other convolution tile that fits the adapter's workgroup memory, the
///    most products per staged element first (the largest tiles, then the deeper, then double-buffered, then the
///    taller);
/// 4. the rest: Winograd from each width with F(2x2) throughout in f32, and with the `auto` tile in mixed precision.
pub fn tune_settings(gpu: &Gpu, cfg: &IResNetConfig, default: ConvSettings) -> Vec<ConvSettings> {
    let mut widths = cfg.widths.to_vec();
    widths.sort_unstable();
    widths.dedup();
    let f32_setting = |winograd, winograd_tile| ConvSettings {
        precision: ConvPrecision::F32,
        winograd,
        winograd_tile,
        conv_tile: ConvTileChoice::Auto,
    };
    let mixed = gpu.caps.cooperative_matrix.is_some().then_some(ConvSettings {
        precision: ConvPrecision::Mixed,
        winograd: None,
        winograd_tile: WinogradTileChoice::Auto,
        conv_tile: ConvTileChoice::Auto,
    });
    let mixed_winograd = |w, winograd_tile| mixed.map(|m| ConvSettings { winograd: Some(w), winograd_tile, ..m });
    // 1.
    let mut all = vec![default, f32_setting(None, WinogradTileChoice::Auto)];
    all.extend(mixed);
    // 2.
    for &w in &widths {
        all.push(f32_setting(Some(w), WinogradTileChoice::Auto));
        all.extend(mixed_winograd(w, WinogradTileChoice::F2x2));
    }
    // 3. `Auto` is the adapter's own tile, so it is not listed again as a shape.
    let adapter_tile = ConvTileChoice::Auto.tiling(gpu).tile;
    let limit = gpu.caps.max_workgroup_memory;
    let mut tiles: Vec<TileShape> = TileShape::ALL.into_iter().filter(|t| *t != adapter_tile).collect();
    tiles.sort_by_key(|t| std::cmp::Reverse((t.rows * t.cols, t.depth, t.buffers, t.rows)));
    for tile in tiles {
        let conv_tile = ConvTileChoice::Shape(tile);
        if tile.f32_bytes() <= limit {
            all.push(ConvSettings { precision: ConvPrecision::F32, conv_tile, ..default });
        }
        if let Some(m) = mixed.filter(|_| tile.coop_bytes() <= limit) {
            all.push(ConvSettings { conv_tile, ..m });
        }
    }
    // 4.
    for &w in &widths {
        all.push(f32_setting(Some(w), WinogradTileChoice::F2x2));
        all.extend(mixed_winograd(w, WinogradTileChoice::Auto));
    }
    let mut settings: Vec<ConvSettings> = Vec::with_capacity(all.len());
    for s in all.into_iter().map(ConvSettings::canonical) {
        if !settings.contains(&s) {
            settings.push(s);
        }
    }
    settings
}

/// One setting's figures in `bench --tune`.
#[derive(Clone, Debug, Serialize)]
pub struct TuneRow {
    /// The setting.
    pub setting: ConvSettings,
    /// Its flags for `train`.
    pub flags: String,
    /// Whether it is what `train` runs without flags.
    pub default: bool,
    /// Median, fastest and slowest step, milliseconds.
    pub step_ms_median: f64,
    /// Fastest step, milliseconds.
    pub step_ms_min: f64,
    /// Slowest step, milliseconds.
    pub step_ms_max: f64,
    /// Batch over the median step.
    pub images_per_s: f64,
    /// `images_per_s` over the first row's: the default's, or where the default could not run, the first setting
    /// measured.
    pub speedup: f64,
    /// Bytes the trainer holds in this setting (the Winograd workspace depends on it).
    pub memory: u64,
    /// Loss of the last timed step (finite: the steps really train).
    pub loss_last: f32,
}

/// What `bench --tune` measured.
#[derive(Clone, Debug, Serialize)]
pub struct TuneResult {
    /// The adapter, its backend and driver.
    pub adapter: String,
    /// Network name.
    pub arch: String,
    /// Input size (square).
    pub input_size: usize,
    /// Batch size.
    pub batch: usize,
    /// Head classes.
    pub classes: usize,
    /// Warm-up steps per setting.
    pub warmup: usize,
    /// Timed steps per setting.
    pub steps: usize,
    /// One row per setting measured, in the order measured (the default first, where it ran).
    pub rows: Vec<TuneRow>,
    /// The row with the most images/s.
    pub fastest: usize,
    /// The settings that could not run on this adapter (e.g. a tile its driver does not compile), with why.
    pub failed: Vec<TuneFailure>,
    /// The time the settings were given, seconds (`None`: no limit).
    pub budget_s: Option<f64>,
    /// The flags of the settings not measured because the budget was spent, in the order they would have been.
    pub not_measured: Vec<String>,
}

/// A setting `bench --tune` could not measure.
#[derive(Clone, Debug, Serialize)]
pub struct TuneFailure {
    /// The setting.
    pub setting: ConvSettings,
    /// Its flags for `train`.
    pub flags: String,
    /// Why, with its causes.
    pub error: String,
}

/// Builds the trainer `b` describes once and times `settings` on it in turn (`b.warmup` untimed and `b.steps`
/// timed steps each; the weights keep training from one setting to the next). `settings[0]` is marked as the
/// default and is the baseline of the speed-ups. A setting that cannot run (its kernels do not compile or fit, its
/// steps fail, or its losses are not finite) is reported in [`TuneResult::failed`] and the others go on; where that is the default, the first
/// setting measured is the baseline (and the trainer is built in the first setting that builds). With a `budget`,
/// no setting starts once that much time has passed since the tune began (the trainer's build included) and one
/// has been measured: the rest are listed in [`TuneResult::not_measured`]. Errors when no setting could run.
/// Progress on stderr unless `quiet`.
pub fn tune(
    gpu: Arc<Gpu>,
    b: &NetworkBenchConfig,
    settings: &[ConvSettings],
    budget: Option<Duration>,
    quiet: bool,
) -> Result<TuneResult> {
    ensure!(!settings.is_empty(), "bench --tune: no setting to measure");
    ensure!(b.steps > 0, "bench: --steps must be at least 1");
    let began = Instant::now();
    let say = progress(quiet);
    let adapter = crate::gpu::AdapterLine(gpu.info.clone()).to_string();
    let batches = synthetic_batches(&b.cfg, b.batch, b.classes, b.seed, 4);
    let mut backend: Option<GpuBackend> = None;
    let mut rows: Vec<TuneRow> = Vec::with_capacity(settings.len());
    let mut failed = Vec::new();
    let mut next_step = 0;
    let mut not_measured = Vec::new();
    for (i, setting) in settings.iter().enumerate() {
        if !rows.is_empty() && budget.is_some_and(|budget| began.elapsed() >= budget) {
            not_measured = settings[i..].iter().map(ConvSettings::to_string).collect();
            say(format!("the budget is spent: {} settings not measured", not_measured.len()));
            break;
        }
        say(format!("[{}/{}] {setting}", i + 1, settings.len()));
        let measured = in_setting(&gpu, b, &mut backend, setting)
            .and_then(|backend| {
                let timing = time_steps(backend, b, &batches, next_step, &say)?;
                timing.check_trains()?;
                Ok((timing, backend.memory().total()))
            })
            .with_context(|| format!("{setting}"));
        let (timing, memory) = match measured {
            Ok(measured) => measured,
            Err(e) => {
                say(format!("{setting}: failed, skipped: {e:#}"));
                failed.push(TuneFailure { setting: *setting, flags: setting.to_string(), error: format!("{e:#}") });
                continue;
            }
        };
        next_step = timing.next_step;
        let images_per_s = b.batch as f64 / timing.median;
        // The row as it comes: what a run cut short (a time limit, an interruption) still tells.
        say(format!(
            "{setting}: {images_per_s:.1} images/s (median step {:.1} ms), {:.2} GB",
            timing.median * 1e3,
            memory as f64 / 1e9
        ));
        rows.push(TuneRow {
            setting: *setting,
            flags: setting.to_string(),
            default: i == 0,
            step_ms_median: timing.median * 1e3,
            step_ms_min: timing.min * 1e3,
            step_ms_max: timing.max * 1e3,
            images_per_s,
            speedup: rows.first().map_or(1.0, |d| images_per_s / d.images_per_s),
            memory,
            loss_last: timing.loss_last,
        });
    }
    if rows.is_empty() {
        let why: Vec<String> = failed.iter().map(|f| format!("{}: {}", f.flags, f.error)).collect();
        bail!("bench --tune: no setting could run:\n  {}", why.join("\n  "));
    }
    let fastest = (0..rows.len()).max_by(|&a, &b| rows[a].images_per_s.total_cmp(&rows[b].images_per_s)).unwrap_or(0);
    Ok(TuneResult {
        adapter,
        arch: b.arch.clone(),
        input_size: b.cfg.input_h,
        batch: b.batch,
        classes: b.classes,
        warmup: b.warmup,
        steps: b.steps,
        rows,
        fastest,
        failed,
        budget_s: budget.map(|d| d.as_secs_f64()),
        not_measured,
    })
}

/// The trainer in `setting`: `backend` switched to it, or built in it where there is none yet (a failed build
/// leaves none).
fn in_setting<'a>(
    gpu: &Arc<Gpu>,
    b: &NetworkBenchConfig,
    backend: &'a mut Option<GpuBackend>,
    setting: &ConvSettings,
) -> Result<&'a mut GpuBackend> {
    match backend {
        Some(existing) => {
            existing.set_settings(setting)?;
            Ok(existing)
        }
        None => Ok(backend.insert(build_trainer(gpu, b, *setting)?)),
    }
}

impl fmt::Display for TuneResult {
    /// The settings fastest first, then the fastest one's flags.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "adapter      {}", self.adapter)?;
        writeln!(
            f,
            "network      {} at {}x{}, batch {}, {} classes; median of {} steps after {} warm-up per setting",
            self.arch, self.input_size, self.input_size, self.batch, self.classes, self.steps, self.warmup
        )?;
        writeln!(
            f,
            "{:<62} {:>9} {:>10} {:>8} {:>8}",
            "setting (flags of train)", "images/s", "median ms", "x base", "GB"
        )?;
        let mut order: Vec<&TuneRow> = self.rows.iter().collect();
        order.sort_by(|a, b| b.images_per_s.total_cmp(&a.images_per_s));
        for r in order {
            let flags = if r.default { format!("{} (default)", r.flags) } else { r.flags.clone() };
            writeln!(
                f,
                "{:<62} {:>9.1} {:>10.1} {:>8.2}x {:>8.2}",
                flags,
                r.images_per_s,
                r.step_ms_median,
                r.speedup,
                r.memory as f64 / 1e9
            )?;
        }
        for failure in &self.failed {
            writeln!(f, "{:<62} failed: {}", failure.flags, failure.error)?;
        }
        if let (Some(budget), false) = (self.budget_s, self.not_measured.is_empty()) {
            writeln!(f, "not measured within the budget of {budget:.0} s: {}", self.not_measured.len())?;
            for flags in &self.not_measured {
                writeln!(f, "  {flags}")?;
            }
        }
        let (best, base) = (&self.rows[self.fastest], &self.rows[0]);
        let base =
            if base.default { "the default".to_string() } else { format!("{} (the default failed)", base.flags) };
        write!(f, "fastest: {} at {:.1} images/s ({:.2}x {base})", best.flags, best.images_per_s, best.speedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_trains_only_with_finite_losses() {
        let timing =
            |loss_first, loss_last| Timing { median: 1.0, min: 1.0, max: 1.0, loss_first, loss_last, next_step: 3 };
        assert!(timing(40.0, 39.5).check_trains().is_ok());
        for (first, last) in [(f32::NAN, 39.5), (40.0, f32::INFINITY), (f32::NAN, f32::NAN)] {
            let e = format!("{:#}", timing(first, last).check_trains().unwrap_err());
            assert!(e.contains("its steps do not train"), "{e}");
        }
    }
}
