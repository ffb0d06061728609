//! The core's CPU trainer as a [`Backend`]: slow, simple, the reference for the GPU.

use anyhow::{ensure, Result};
use elasticface_core::model::{IResNetConfig, StepConfig, StepReport, Trainer, TrainerLayout};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::Philox4x32;

use super::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::{Batch, Position};

/// The seed stream of the initial weights (margins use streams `0..steps`).
pub const INIT_STREAM: u64 = u64::MAX;

/// Owns the memory of a core [`Trainer`] and hands out trainers over it.
pub struct CpuBackend {
    layout: TrainerLayout,
    step_cfg: StepConfig,
    arena: Vec<f32>,
    order: Vec<u32>,
    steps: u64,
}

impl CpuBackend {
    /// A trainer for `cfg` at batch `batch` with `classes` classes, initialised from `seed` as insightface does.
    pub fn new(cfg: &IResNetConfig, batch: usize, classes: usize, step_cfg: StepConfig, seed: u64) -> Result<Self> {
        let layout = TrainerLayout::new(cfg, batch, classes)?;
        let mut me = Self { arena: vec![0.0; layout.arena_len()], order: vec![0; batch], layout, step_cfg, steps: 0 };
        me.trainer()?.init(&mut Philox4x32::new(seed, INIT_STREAM))?;
        Ok(me)
    }

    /// The core trainer over this backend's memory.
    pub fn trainer(&mut self) -> Result<Trainer<'_>> {
        let mut t = Trainer::attach(self.layout.clone(), self.step_cfg, &mut self.arena, &mut self.order)?;
        t.set_steps(self.steps);
        Ok(t)
    }

    fn shape(&self) -> ImageShape {
        ImageShape { h: self.layout.cfg.input_h, w: self.layout.cfg.input_w }
    }
}

impl Backend for CpuBackend {
    fn step(&mut self, batch: &Batch, margins_raw: &[f32]) -> Result<StepReport> {
        let b = self.layout.batch;
        if batch.len() > b && batch.len().is_multiple_of(b) && !self.layout.accumulates() {
            // The sums of gradient accumulation go after everything else: the arena grows, the rest stays.
            self.layout = self.layout.clone().with_accumulation();
            self.arena.resize(self.layout.arena_len(), 0.0);
        }
        let input = batch.to_input(self.shape())?;
        let mut t = self.trainer()?;
        let report = t.step(&input, &batch.labels, margins_raw)?;
        self.steps = t.steps();
        Ok(report)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.step_cfg.sgd.lr = lr;
        Ok(())
    }

    fn embed(&mut self, images: &[u8], flips: &[bool]) -> Result<Vec<f32>> {
        let shape = self.shape();
        let (b, e) = (self.layout.batch, self.layout.cfg.embedding);
        let per = shape.h * shape.w * 3;
        ensure!(images.len() == flips.len() * per, "embed: {} bytes for {} images", images.len(), flips.len());
        let mut out = Vec::with_capacity(flips.len() * e);
        let mut input = vec![0.0; b * per];
        for (imgs, fl) in images.chunks(b * per).zip(flips.chunks(b)) {
            let n = fl.len();
            for ((rgb, &flip), chw) in imgs.chunks_exact(per).zip(fl).zip(input.chunks_exact_mut(per)) {
                elasticface_core::nn::preprocess_image(&shape, rgb, flip, chw)?;
            }
            let mut emb = vec![0.0; n * e];
            self.trainer()?.embed(n, &input[..n * per], &mut emb)?;
            out.extend_from_slice(&emb);
        }
        Ok(out)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn checkpoint(&self, seed: u64, position: Position, run: serde_json::Value) -> Result<Checkpoint> {
        // `Trainer` borrows mutably; build the checkpoint from a clone of the memory.
        let (mut arena, mut order) = (self.arena.clone(), self.order.clone());
        let mut t = Trainer::attach(self.layout.clone(), self.step_cfg, &mut arena, &mut order)?;
        t.set_steps(self.steps);
        Ok(Checkpoint::from_trainer(&t, seed, position, run))
    }

    fn load(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.step_cfg = checkpoint.step_cfg;
        let mut t = self.trainer()?;
        checkpoint.apply_to(&mut t)?;
        self.steps = checkpoint.step;
        Ok(())
    }

    fn device(&self) -> String {
        "cpu".to_string()
    }
}
