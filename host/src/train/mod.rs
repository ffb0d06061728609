//! Training: the step on a device ([`Backend`]: the core's CPU trainer, or the GPU trainer), schedules,
//! checkpoints and the `elasticface train` loop.

pub mod best;
pub mod cpu;
pub mod gpu;
pub mod imprint;
pub mod run;
pub mod schedule;

use anyhow::Result;
use elasticface_core::model::StepReport;

use crate::checkpoint::{Backbone, Checkpoint};
use crate::data::{Batch, Position};

/// A device that trains one iResNet with its margin head: the CPU reference ([`cpu::CpuBackend`]) or the GPU.
///
/// Both take the same inputs (u8 images with flip flags, labels, the step's sampled margins) and produce the same
/// training state, so a run can be checked on one against the other and checkpoints move between them.
pub trait Backend {
    /// One step on `batch` (`N B` images `u8 (N B, H, W, 3)`, flipped where `batch.flips` says) with the margins
    /// drawn for this step `margins_raw (N B)` (the Plus variants assign them by rank inside the head), `B` the
    /// backend's batch: with `N > 1`, `N` micro-batches of `B` whose gradients are averaged into one update
    /// (gradient accumulation, [`Trainer::step`](elasticface_core::model::Trainer::step); the memory of the sums
    /// is taken at the first such step). A non-finite loss or gradient is an error and leaves the weights untouched.
    fn step(&mut self, batch: &Batch, margins_raw: &[f32]) -> Result<StepReport>;

    /// Sets the learning rate of the following steps.
    fn set_lr(&mut self, lr: f32) -> Result<()>;

    /// Embeddings `(N, E)` of `n` images `u8 (N, H, W, 3)` in evaluation mode, each mirrored where `flips` says.
    fn embed(&mut self, images: &[u8], flips: &[bool]) -> Result<Vec<f32>>;

    /// Training steps taken.
    fn steps(&self) -> u64;

    /// The complete training state, with the run's seed, data position and settings.
    fn checkpoint(&self, seed: u64, position: Position, run: serde_json::Value) -> Result<Checkpoint>;

    /// Loads a checkpoint of the same network and class count.
    fn load(&mut self, checkpoint: &Checkpoint) -> Result<()>;

    /// The device, in words (`cpu`, or the adapter's name).
    fn device(&self) -> String;

    /// What decides the bits of its results, in words: [`Backend::device`] (on a GPU: the adapter, the precision
    /// and the convolution settings), less what changes nothing but the time (the CPU reference's threads).
    fn arithmetic(&self) -> String {
        self.device()
    }

    /// The network as it stands (weights and batch norm running statistics), without the head and the optimizer.
    fn backbone(&self) -> Result<Backbone> {
        Ok(self.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null)?.backbone())
    }
}

/// Opens the GPU trainer for a run on the adapter chosen by `cfg.adapter` or the environment. With
/// `prefer_hardware`, a software adapter (lavapipe) is refused with a message: for small networks the CPU
/// reference is faster than a CPU emulating a GPU.
pub(crate) fn open_gpu_backend(
    cfg: &run::TrainConfig,
    net: &elasticface_core::model::IResNetConfig,
    classes: usize,
    step_cfg: elasticface_core::model::StepConfig,
    prefer_hardware: bool,
) -> Result<Box<dyn Backend>> {
    let mut opts = crate::gpu::GpuOptions::from_env();
    opts.adapter_name = cfg.adapter.clone().or(opts.adapter_name);
    let gpu = crate::gpu::Gpu::new(&opts)?;
    if prefer_hardware && gpu.info.device_type == wgpu::DeviceType::Cpu {
        anyhow::bail!("only a software adapter ({}) was found; `--device gpu` uses it", gpu.info.name);
    }
    let precision = cfg.precision.resolve(&gpu)?;
    let settings = gpu::ConvSettings {
        precision,
        winograd: cfg.winograd.resolve(&gpu, precision),
        winograd_tile: cfg.winograd_tile,
        conv_tile: cfg.conv_tile,
    };
    let gpu = std::sync::Arc::new(gpu);
    let backend = gpu::GpuBackend::with_settings(gpu, net, cfg.batch, classes, step_cfg, cfg.seed, settings)?;
    Ok(Box::new(backend))
}
