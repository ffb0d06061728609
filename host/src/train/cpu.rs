//! The core's CPU trainer as a [`Backend`]: slow, simple, the reference for the GPU, on every core. Training steps
//! split each convolution's output planes (or filters), and each batch norm's and PReLU's channels and planes, over
//! the threads ([`Threads`]); embeddings split the batch. Each plane, filter, channel and image is computed alone by
//! the same code wherever it runs, so the threads change nothing but the time: the same bits on any number of them.

use anyhow::{anyhow, ensure, Result};
use elasticface_core::model::{forward, IResNetConfig, StateRef, StepConfig, StepReport, Trainer, TrainerLayout};
use elasticface_core::nn::{preprocess_image, ImageShape};
use elasticface_core::parallel::Executor;
use elasticface_core::rng::Philox4x32;

use super::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::{Batch, Position};
use crate::streams::INIT_STREAM;

/// Owns the memory of a core [`Trainer`] and hands out trainers over it.
#[derive(Clone)]
pub struct CpuBackend {
    layout: TrainerLayout,
    step_cfg: StepConfig,
    arena: Vec<f32>,
    order: Vec<u32>,
    steps: u64,
    /// Threads that train and embed at once.
    threads: Threads,
}

/// The core's [`Executor`] on this many threads (at least 1): the calling one and scoped ones started for each
/// layer, each given an equal share of the rows.
#[derive(Clone, Copy, Debug)]
pub struct Threads(usize);

impl Threads {
    /// One thread a core of this machine.
    pub fn per_core() -> Self {
        Self(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `n` threads (at least 1).
    pub fn new(n: usize) -> Self {
        Self(n.max(1))
    }

    /// How many.
    pub fn count(self) -> usize {
        self.0
    }
}

/// "1 thread", "N threads".
impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => write!(f, "1 thread"),
            n => write!(f, "{n} threads"),
        }
    }
}

impl Executor for Threads {
    fn for_each_rows(&self, out: &mut [f32], row_len: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let rows = out.len() / row_len.max(1);
        let per = rows.div_ceil(self.0).max(1);
        if per >= rows {
            return f(0, out);
        }
        std::thread::scope(|scope| {
            let mut pieces = out.chunks_mut(per * row_len).enumerate();
            let own = pieces.next();
            for (i, piece) in pieces {
                scope.spawn(move || f(i * per, piece));
            }
            if let Some((_, piece)) = own {
                f(0, piece);
            }
        });
    }
}

impl CpuBackend {
    /// A trainer for `cfg` at batch `batch` with `classes` classes, initialised from `seed` as insightface does.
    pub fn new(cfg: &IResNetConfig, batch: usize, classes: usize, step_cfg: StepConfig, seed: u64) -> Result<Self> {
        let layout = TrainerLayout::new(cfg, batch, classes)?;
        let threads = Threads::per_core();
        let arena = vec![0.0; layout.arena_len()];
        let mut me = Self { arena, order: vec![0; batch], layout, step_cfg, steps: 0, threads };
        me.trainer()?.init(&mut Philox4x32::new(seed, INIT_STREAM))?;
        Ok(me)
    }

    /// Trains and embeds on `threads` threads (at least 1) instead of one a core.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Threads::new(threads);
        self
    }

    /// The core trainer over this backend's memory, on its threads.
    pub fn trainer(&mut self) -> Result<Trainer<'_>> {
        let t = Trainer::attach(self.layout.clone(), self.step_cfg, &mut self.arena, &mut self.order)?;
        let mut t = t.with_executor(&self.threads);
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
    /// batch), so that their activations together take about one batch's; with fewer parts than threads, each part's
    /// convolutions are shared out too.
    fn embed(&mut self, images: &[u8], flips: &[bool]) -> Result<Vec<f32>> {
        let shape = self.shape();
        let (cfg, bn) = (self.layout.cfg, self.step_cfg.bn);
        let (per, e) = (cfg.input_len(), cfg.embedding);
        ensure!(images.len() == flips.len() * per, "embed: {} bytes for {} images", images.len(), flips.len());
        let threads = self.threads.count();
        let part = self.layout.batch.div_ceil(threads).max(1);
        let mut out = vec![0.0; flips.len() * e];
        // Part i goes to thread i % threads.
        let parts = images.chunks(part * per).zip(flips.chunks(part)).zip(out.chunks_mut(part * e));
        let mut lanes: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, p) in parts.enumerate() {
            lanes[i % threads].push(p);
        }
        lanes.retain(|lane| !lane.is_empty());
        // Fewer parts than threads (a few images): the threads left over share out each lane's convolutions.
        let exec = Threads::new(threads / lanes.len().max(1));
        let t = self.trainer()?;
        let state = t.state();
        std::thread::scope(|scope| {
            let workers: Vec<_> = lanes
                .into_iter()
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
                            forward(&exec, &cfg, &bn, StateRef::Eval(state), n, &input[..n * per], acts, out)?;
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
        format!("cpu ({})", self.threads)
    }

    fn arithmetic(&self) -> String {
        "cpu".into()
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
            // Two images: fewer parts than threads, the threads left over share out the convolutions.
            let (two, per) = (2 * cfg.embedding, cfg.input_len());
            let got = one.clone().with_threads(threads).embed(&images[..2 * per], &flips[..2]).unwrap();
            assert!(got.iter().zip(&alone[..two]).all(|(a, b)| a.to_bits() == b.to_bits()), "2 on {threads} threads");
        }
    }

    #[test]
    fn training_on_any_number_of_threads_is_the_cores_serial_trainer() {
        // Stride 2, a downsampling shortcut and planes of 1x1 at the end: pieces of every kind.
        let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };
        let step = StepConfig::recipe("elastic-arc-plus".parse().unwrap());
        let (b, classes, seed) = (5, 3, 11);
        let per = cfg.input_len();
        let batches: Vec<_> = (0..2)
            .map(|k| crate::data::Batch {
                epoch: 0,
                index: k,
                images: (0..b * per).map(|i| ((i * 37 + k * 101) % 251) as u8).collect(),
                labels: vec![0, 1, 2, 0, (k % 3) as u32],
                flips: vec![false; b],
                indices: (0..b).collect(),
                next: Position::at_batch(0, k + 1, b),
            })
            .collect();
        let margins = |k: usize| -> Vec<f32> { (0..b).map(|i| 0.4 + 0.02 * (i + k) as f32).collect() };

        // The core's trainer on its default executor: the calling thread, in one piece.
        let layout = TrainerLayout::new(&cfg, b, classes).unwrap();
        let (mut arena, mut order) = (vec![0.0; layout.arena_len()], vec![0; b]);
        let mut core = Trainer::new(layout, step, &mut arena, &mut order).unwrap();
        core.init(&mut Philox4x32::new(seed, INIT_STREAM)).unwrap();
        let shape = ImageShape { h: cfg.input_h, w: cfg.input_w };
        let want: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(k, batch)| core.step(&batch.to_input(shape).unwrap(), &batch.labels, &margins(k)).unwrap())
            .collect();
        let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|v| v.to_bits()).collect() };
        let want_arena = bits(&arena);

        for threads in [1, 2, 3, 8] {
            let mut backend = CpuBackend::new(&cfg, b, classes, step, seed).unwrap().with_threads(threads);
            for (k, batch) in batches.iter().enumerate() {
                let got = backend.step(batch, &margins(k)).unwrap();
                assert_eq!(got.loss.to_bits(), want[k].loss.to_bits(), "loss of step {k} on {threads} threads");
                assert_eq!(got.grad_norm.to_bits(), want[k].grad_norm.to_bits(), "{threads} threads");
            }
            assert!(bits(&backend.arena) == want_arena, "weights, gradients, momentum on {threads} threads");
        }
    }
}
