//! The core's CPU trainer as a [`Backend`]: slow, simple, the reference for the GPU. Training steps run on one
//! thread; embeddings on every core (each image's embedding is the same bits in any batch, so the threads change
//! nothing but the time).

use anyhow::{anyhow, ensure, Result};
use elasticface_core::model::{forward, IResNetConfig, StateRef, StepConfig, StepReport, Trainer, TrainerLayout};
use elasticface_core::nn::{preprocess_image, ImageShape};
use elasticface_core::rng::Philox4x32;

use super::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::{Batch, Position};

/// The seed stream of the initial weights (margins use streams `0..steps`).
pub const INIT_STREAM: u64 = u64::MAX;

/// Owns the memory of a core [`Trainer`] and hands out trainers over it.
#[derive(Clone)]
pub struct CpuBackend {
    layout: TrainerLayout,
    step_cfg: StepConfig,
    arena: Vec<f32>,
    order: Vec<u32>,
    steps: u64,
    /// Threads that embed at once.
    threads: usize,
}

impl CpuBackend {
    /// A trainer for `cfg` at batch `batch` with `classes` classes, initialised from `seed` as insightface does.
    pub fn new(cfg: &IResNetConfig, batch: usize, classes: usize, step_cfg: StepConfig, seed: u64) -> Result<Self> {
        let layout = TrainerLayout::new(cfg, batch, classes)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arena = vec![0.0; layout.arena_len()];
        let mut me = Self { arena, order: vec![0; batch], layout, step_cfg, steps: 0, threads };
        me.trainer()?.init(&mut Philox4x32::new(seed, INIT_STREAM))?;
        Ok(me)
    }

    /// Embeds on `threads` threads (at least 1) instead of one a core.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
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

    /// Evaluation-mode embeddings of `images` (RGB, `u8 (N, H, W, 3)`), flipped where `flips` says, on
    /// [`Self::with_threads`] threads sharing the weights: each embeds parts of `B / threads` images (`B` the
    /// batch), so that their activations together take about one batch's.
    fn embed(&mut self, images: &[u8], flips: &[bool]) -> Result<Vec<f32>> {
        let shape = self.shape();
        let (cfg, bn) = (self.layout.cfg, self.step_cfg.bn);
        let (per, e) = (cfg.input_len(), cfg.embedding);
        ensure!(images.len() == flips.len() * per, "embed: {} bytes for {} images", images.len(), flips.len());
        let part = self.layout.batch.div_ceil(self.threads).max(1);
        let mut out = vec![0.0; flips.len() * e];
        // Part i goes to thread i % threads.
        let parts = images.chunks(part * per).zip(flips.chunks(part)).zip(out.chunks_mut(part * e));
        let mut lanes: Vec<Vec<_>> = (0..self.threads).map(|_| Vec::new()).collect();
        for (i, p) in parts.enumerate() {
            lanes[i % self.threads].push(p);
        }
        let t = self.trainer()?;
        let state = t.state();
        std::thread::scope(|scope| {
            let workers: Vec<_> = lanes
                .into_iter()
                .filter(|lane| !lane.is_empty())
                .map(|lane| {
                    scope.spawn(move || -> Result<()> {
                        let (mut input, mut acts) = (vec![0.0; part * per], vec![0.0; cfg.activations_len(part)]);
                        for ((rgb, flips), out) in lane {
                            let n = flips.len();
                            for ((rgb, &flip), chw) in rgb.chunks_exact(per).zip(flips).zip(input.chunks_exact_mut(per))
                            {
                                preprocess_image(&shape, rgb, flip, chw)?;
                            }
                            let acts = &mut acts[..cfg.activations_len(n)];
                            forward(&cfg, &bn, StateRef::Eval(state), n, &input[..n * per], acts, out)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().map_err(|_| anyhow!("an embedding thread panicked"))?)
        })?;
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

#[cfg(test)]
mod tests {
    use elasticface_core::margin::MarginConfig;

    use super::*;

    #[test]
    fn embeddings_on_any_number_of_threads_are_the_cores_one_image_at_a_time() {
        let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };
        let step = StepConfig::recipe(MarginConfig::ARCFACE);
        let n = 11;
        let images: Vec<u8> = (0..n * cfg.input_len()).map(|i| (i * 37 % 251) as u8).collect();
        let flips: Vec<bool> = (0..n).map(|i| i % 3 == 1).collect();
        let mut one = CpuBackend::new(&cfg, 4, 3, step, 7).unwrap().with_threads(1);
        // Move the running statistics away from their initial values, as training does.
        let batch = crate::data::Batch {
            epoch: 0,
            index: 0,
            images: images[..4 * cfg.input_len()].to_vec(),
            labels: vec![0, 1, 2, 0],
            flips: vec![false; 4],
            indices: vec![0, 1, 2, 3],
            next: Position::at_batch(0, 1, 4),
        };
        one.step(&batch, &[0.5; 4]).unwrap();
        let shape = one.shape();
        let mut t = one.trainer().unwrap();
        let mut alone = Vec::new();
        for (rgb, &flip) in images.chunks_exact(cfg.input_len()).zip(&flips) {
            let mut x = vec![0.0; cfg.input_len()];
            preprocess_image(&shape, rgb, flip, &mut x).unwrap();
            let mut emb = vec![0.0; cfg.embedding];
            t.embed(1, &x, &mut emb).unwrap();
            alone.extend(emb);
        }
        for threads in [1, 2, 3, 8] {
            let got = one.clone().with_threads(threads).embed(&images, &flips).unwrap();
            assert_eq!(got.len(), alone.len());
            assert!(got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
        }
    }
}
