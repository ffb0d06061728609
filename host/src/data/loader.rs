//! Shuffled, flipped, prefetched batches of one epoch, reproducible from a seed and resumable at any batch.
//!
//! # Order
//!
//! Epoch `e` visits the samples in the order [`epoch_order`]`(seed, e, n)`: a Fisher–Yates shuffle driven by
//! `Philox4x32::new(seed,` [`SHUFFLE_STREAM`]` | e)`, drawn exactly as follows (this is a reproducibility contract: a
//! resumed or repeated run depends on it):
//!
//! ```text
//! order = [0, 1, ..., n-1]
//! for i = n-1 down to 1:
//!     j = below(i + 1); swap(order[i], order[j])
//! below(m):                       // uniform in [0, m), Lemire's multiply-and-reject, one u32 per try
//!     t = (2^32 - m) mod m
//!     loop: x = next_u32(); p = x * m (64-bit); if (p mod 2^32) >= t: return p >> 32
//! ```
//!
//! The epoch's `k`-th position is called position `k`. The stream is not `Philox4x32::new(seed, e)` itself:
//! the margin sampler draws step `s`'s margins from stream `s` of the same seed, and the data must not reuse
//! those numbers (see [`crate::streams`]). With `shuffle: false` the order is `0..n`.
//!
//! # Flips
//!
//! Position `k` of epoch `e` is flipped horizontally when [`flip_for`]`(seed, e, k)`: bit `k mod 32` of word
//! `(k / 32) mod 4` of `Philox4x32::block(seed,` [`FLIP_STREAM`]` | e, k / 128)`. The loader only decides: the image
//! bytes are delivered unflipped, with [`Batch::flips`], for the preprocess step (the GPU kernel and
//! `elasticface_core::nn::preprocess_image` take a flip flag per image). A flip belongs to a position, not to
//! a batch slot, so it does not change when bad samples are skipped before it.
//!
//! # Batches
//!
//! Batch `b` takes the next `batch_size` good samples in epoch order, starting where batch `b-1` stopped. With
//! no bad samples batch `b` is exactly positions `b*B .. (b+1)*B`. A last, shorter batch is dropped with
//! `drop_last` and delivered otherwise.
//!
//! # Bad samples
//!
//! A sample whose loading fails (unreadable, corrupt, wrong size, label out of range) stops the loader with an
//! error naming it, its file and record, and its position, unless `skip_bad_samples` is set: it is then left
//! out, the batch is filled with the samples that follow, and it is counted in [`Loader::bad_samples`] (with
//! the first [`BadSamples::MAX_KEPT`] messages). Whether a sample is bad is a property of the data, so the
//! batches are still a deterministic function of seed, epoch and data.
//!
//! # Resuming
//!
//! [`Batch::next`] is the [`Position`] just after the batch: `Loader::new(.., batch.next)` delivers exactly the
//! batches a loader that went on would have. Without skipped samples it is `Position::at_batch(e, b + 1, B)`.
//!
//! # Threads
//!
//! `workers` threads decode one chunk of `batch_size` consecutive positions at a time; at most
//! `max(prefetch, workers)` chunks are decoded ahead of the consumer (bounded memory), and chunks are
//! reassembled in order, so batches never depend on thread timing. Dropping the [`Loader`] stops and joins its
//! workers (each finishes at most the sample it is decoding). A panic inside a dataset's `load` becomes that
//! sample's error.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::rng::Philox4x32;
use rand_core::RngCore;

use super::{Dataset, ImageShape};
use crate::streams::{FLIP_STREAM, SHUFFLE_STREAM};

/// Epochs must be below this, so that their streams stay apart from each other and from the margin steps.
pub const MAX_EPOCH: u64 = 1 << 62;

/// The order in which epoch `epoch` visits `len` samples (see the [module documentation](self)).
///
/// Errors when `len` exceeds `u32::MAX` (sample indices are stored as `u32`) or `epoch >= MAX_EPOCH`.
pub fn epoch_order(seed: u64, epoch: u64, len: usize, shuffle: bool) -> Result<Vec<u32>> {
    ensure!(len <= u32::MAX as usize, "{len} samples: at most {} are supported", u32::MAX);
    ensure!(epoch < MAX_EPOCH, "epoch {epoch} is not below {MAX_EPOCH}");
    let mut order: Vec<u32> = (0..len as u32).collect();
    if shuffle {
        let mut rng = Philox4x32::new(seed, SHUFFLE_STREAM | epoch);
        for i in (1..len).rev() {
            let j = below(&mut rng, i as u32 + 1);
            order.swap(i, j as usize);
        }
    }
    Ok(order)
}

/// Uniform in `[0, m)` for `m >= 1` by Lemire's multiply-and-reject method (exact draw documented above).
fn below(rng: &mut Philox4x32, m: u32) -> u32 {
    let threshold = m.wrapping_neg() % m;
    loop {
        let product = u64::from(rng.next_u32()) * u64::from(m);
        if product as u32 >= threshold {
            return (product >> 32) as u32;
        }
    }
}

/// Whether position `position` of epoch `epoch` is flipped (see the [module documentation](self)).
pub fn flip_for(seed: u64, epoch: u64, position: usize) -> bool {
    let k = position as u64;
    let block = Philox4x32::block(seed, FLIP_STREAM | epoch, k / 128);
    (block[((k / 32) % 4) as usize] >> (k % 32)) & 1 == 1
}

/// How a [`Loader`] batches, shuffles and reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (at least 1).
    pub batch_size: usize,
    /// Seed of the shuffles and flips.
    pub seed: u64,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// How many chunks of `batch_size` samples may be decoded ahead of the consumer (memory: that many batches);
    /// raised to `workers` when lower, so that no worker idles.
    pub prefetch: usize,
    /// Shuffle each epoch ([`epoch_order`]); `false` keeps the dataset's order.
    pub shuffle: bool,
    /// Decide a random horizontal flip per sample ([`flip_for`]); `false` makes every flip `false`.
    pub random_flip: bool,
    /// Drop the last batch of an epoch when it is short.
    pub drop_last: bool,
    /// Leave out samples that fail to load instead of stopping (see the [module documentation](self)).
    pub skip_bad_samples: bool,
}

impl LoaderConfig {
    /// Training defaults: shuffled, random flips, `drop_last`, errors stop; 4 workers, 8 chunks ahead.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            seed,
            workers: 4,
            prefetch: 8,
            shuffle: true,
            random_flip: true,
            drop_last: true,
            skip_bad_samples: false,
        }
    }
}

/// A place in the training data: the next batch to deliver and the epoch position it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Epoch.
    pub epoch: u64,
    /// Index in the epoch of the next batch (numbers the batches; does not decide which samples they hold).
    pub batch: usize,
    /// Epoch position of the next sample to read.
    pub sample: usize,
    /// Samples of the epoch before `sample` left out as unreadable (`skip_bad_samples`): a loader started here
    /// counts on from them, so an epoch's [`BadSamples::count`] is the whole epoch's after a resume too.
    pub skipped: usize,
}

impl Position {
    /// The start of epoch `epoch`.
    pub fn epoch_start(epoch: u64) -> Self {
        Self { epoch, batch: 0, sample: 0, skipped: 0 }
    }

    /// Batch `batch` of epoch `epoch` when no sample before it was skipped: position `batch * batch_size`.
    pub fn at_batch(epoch: u64, batch: usize, batch_size: usize) -> Self {
        Self { epoch, batch, sample: batch.saturating_mul(batch_size), skipped: 0 }
    }

    /// As files record it (a checkpoint's manifest, an imprint's progress): `{"epoch", "batch", "sample",
    /// "skipped"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"epoch": self.epoch, "batch": self.batch, "sample": self.sample, "skipped": self.skipped})
    }

    /// The position [`Position::to_json`] wrote; `Err` names the first field missing or out of range. A record
    /// without `skipped` (written before skips were counted) counts the epoch's skips from this position: 0.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, &'static str> {
        let u = |field: &'static str| v[field].as_u64().and_then(|x| usize::try_from(x).ok()).ok_or(field);
        Ok(Self {
            epoch: v["epoch"].as_u64().ok_or("epoch")?,
            batch: u("batch")?,
            sample: u("sample")?,
            skipped: if v.get("skipped").is_some() { u("skipped")? } else { 0 },
        })
    }
}

/// One batch of training images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its index in the epoch (0, 1, ...).
    pub index: usize,
    /// `u8 (B, H, W, 3)` RGB, unflipped.
    pub images: Vec<u8>,
    /// Class of each image, `(B)`, each below the dataset's number of classes.
    pub labels: Vec<u32>,
    /// Whether each image is to be flipped horizontally by the preprocess step, `(B)`.
    pub flips: Vec<bool>,
    /// Dataset index of each image, `(B)`.
    pub indices: Vec<usize>,
    /// Where the batch after this one starts: resume here.
    pub next: Position,
}

impl Batch {
    /// The network input `f32 (B, 3, H, W)`: every image through the core's `preprocess_image`, mirrored where
    /// `flips` says (the CPU twin of the GPU preprocess kernel).
    pub fn to_input(&self, shape: ImageShape) -> Result<Vec<f32>> {
        let (img, px) = (shape.h * shape.w * 3, shape.h * shape.w * 3);
        ensure!(self.images.len() == self.len() * img, "batch images are not {}x{}", shape.h, shape.w);
        let mut out = vec![0.0; self.len() * px];
        for ((rgb, &flip), chw) in self.images.chunks_exact(img).zip(&self.flips).zip(out.chunks_exact_mut(px)) {
            elasticface_core::nn::preprocess_image(&shape, rgb, flip, chw)?;
        }
        Ok(out)
    }

    /// Number of images `B` (the configured batch size, or fewer for a last short batch).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no image (never true for a delivered batch).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The samples a [`Loader`] left out with `skip_bad_samples`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BadSamples {
    /// How many were left out in the epoch, those before the loader's start position included
    /// ([`Position::skipped`]).
    pub count: usize,
    /// Messages of the first [`BadSamples::MAX_KEPT`] this loader met: position, sample, file, record and what
    /// went wrong.
    pub first: Vec<String>,
}

impl BadSamples {
    /// Messages kept.
    pub const MAX_KEPT: usize = 8;

    fn record(&mut self, message: String) {
        self.count += 1;
        if self.first.len() < Self::MAX_KEPT {
            self.first.push(message);
        }
    }
}

/// A decoded chunk of consecutive epoch positions.
struct Chunk {
    /// Chunk number (0 for the chunk starting at the loader's start position).
    id: usize,
    /// `(n, H, W, 3)`: slot `i`'s pixels (zeros for a failed slot).
    images: Vec<u8>,
    /// Per slot: the label, or the error.
    slots: Vec<Result<u32>>,
}

/// What the workers share.
struct Shared {
    dataset: Arc<dyn Dataset>,
    order: Vec<u32>,
    /// Epoch position of chunk 0's first slot.
    start: usize,
    batch_size: usize,
    epoch: u64,
    stop: AtomicBool,
}

impl Shared {
    /// Decodes chunk `id`; stops early (returning `None`) when asked to stop.
    fn decode_chunk(&self, id: usize) -> Option<Chunk> {
        let first = self.start + id * self.batch_size;
        let end = (first + self.batch_size).min(self.order.len());
        let image_len = self.dataset.image_shape().len();
        let mut images = vec![0u8; (end - first) * image_len];
        let mut slots = Vec::with_capacity(end - first);
        for (position, pixels) in (first..end).zip(images.chunks_exact_mut(image_len)) {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            slots.push(self.load_into(position, pixels));
        }
        Some(Chunk { id, images, slots })
    }

    /// Loads the sample at `position` into `pixels` and checks it; errors say which sample and where.
    fn load_into(&self, position: usize, pixels: &mut [u8]) -> Result<u32> {
        let index = self.order[position] as usize;
        let ds = &*self.dataset;
        let loaded = catch_unwind(AssertUnwindSafe(|| ds.load(index)))
            .unwrap_or_else(|panic| Err(anyhow!("{}: panicked: {}", ds.describe(index), panic_message(&*panic))));
        // The dataset promises both; a dataset that broke the promise must not put a wrong sample in a batch.
        let checked = loaded.and_then(|sample| {
            ensure!(
                (sample.label as usize) < ds.num_classes(),
                "{}: label {} is outside [0, {})",
                ds.describe(index),
                sample.label,
                ds.num_classes()
            );
            ensure!(
                sample.rgb.len() == pixels.len(),
                "{}: {} RGB bytes where the image size needs {}",
                ds.describe(index),
                sample.rgb.len(),
                pixels.len()
            );
            pixels.copy_from_slice(&sample.rgb);
            Ok(sample.label)
        });
        checked.with_context(|| format!("epoch {} position {position}, sample {index}", self.epoch))
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The batches of one epoch from a start [`Position`] on (see the [module documentation](self)).
///
/// Get them with [`Loader::next_batch`] or as an iterator of `Result<Batch>`; after the last batch or an error
/// there are no more. Dropping the loader stops its threads.
pub struct Loader {
    config: LoaderConfig,
    shared: Arc<Shared>,
    /// Number of chunks from the start position to the end of the epoch.
    num_chunks: usize,
    /// Chunks handed to the workers so far.
    issued: usize,
    /// Chunks taken out of the results so far (including `current`).
    taken: usize,
    /// Chunks decoded but not yet taken, by id.
    pending: BTreeMap<usize, Chunk>,
    /// The chunk being consumed and the next slot of it.
    current: Option<(Chunk, usize)>,
    jobs: Option<Sender<usize>>,
    results: Option<Receiver<Chunk>>,
    threads: Vec<JoinHandle<()>>,
    /// The next batch to deliver.
    position: Position,
    bad: BadSamples,
    done: bool,
}

impl Loader {
    /// Starts `config.workers` threads decoding `dataset`'s epoch `start.epoch` from `start` on.
    ///
    /// Errors: a zero batch size or worker count, an empty dataset, more than `u32::MAX` samples, an epoch
    /// `>= MAX_EPOCH`, or a start position past the end of the epoch.
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig, start: Position) -> Result<Self> {
        ensure!(config.batch_size > 0, "batch size must be at least 1");
        ensure!(config.workers > 0, "the loader needs at least one worker");
        ensure!(!dataset.is_empty(), "the dataset has no sample");
        let len = dataset.len();
        ensure!(start.sample <= len, "start position {} is past the {len} samples of an epoch", start.sample);
        ensure!(
            start.skipped <= start.sample,
            "{} samples skipped before start position {}: more than were read",
            start.skipped,
            start.sample
        );
        let order = epoch_order(config.seed, start.epoch, len, config.shuffle)?;
        // Without skipping, chunk k is batch k exactly, so a short tail that `drop_last` drops is not even read.
        let remaining = len - start.sample;
        let num_chunks = if config.drop_last && !config.skip_bad_samples {
            remaining / config.batch_size
        } else {
            remaining.div_ceil(config.batch_size)
        };
        let shared = Arc::new(Shared {
            dataset,
            order,
            start: start.sample,
            batch_size: config.batch_size,
            epoch: start.epoch,
            stop: AtomicBool::new(false),
        });
        let (jobs_tx, jobs_rx) = mpsc::channel::<usize>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let depth = config.prefetch.max(config.workers);
        let (results_tx, results_rx) = mpsc::sync_channel::<Chunk>(depth);
        let mut threads = Vec::with_capacity(config.workers);
        for w in 0..config.workers {
            let (mine, jobs, results) = (Arc::clone(&shared), Arc::clone(&jobs_rx), results_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("elasticface-loader-{w}"))
                .spawn(move || worker(&mine, &jobs, &results));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    drop(jobs_tx);
                    threads.into_iter().for_each(|t: JoinHandle<()>| drop(t.join()));
                    return Err(e).context("cannot start a loader thread");
                }
            }
        }
        let mut loader = Self {
            config,
            shared,
            num_chunks,
            issued: 0,
            taken: 0,
            pending: BTreeMap::new(),
            current: None,
            jobs: Some(jobs_tx),
            results: Some(results_rx),
            threads,
            position: start,
            bad: BadSamples { count: start.skipped, first: Vec::new() },
            done: false,
        };
        loader.issue();
        Ok(loader)
    }

    /// The position of the next batch (after the last one delivered).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The samples left out so far (only with `skip_bad_samples`).
    pub fn bad_samples(&self) -> &BadSamples {
        &self.bad
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Hands chunks to the workers up to the prefetch depth.
    fn issue(&mut self) {
        let depth = self.config.prefetch.max(self.config.workers);
        let Some(jobs) = &self.jobs else { return };
        while self.issued < self.num_chunks && self.issued < self.taken + depth {
            if jobs.send(self.issued).is_err() {
                return; // every worker is gone; `take_chunk` reports it
            }
            self.issued += 1;
        }
    }

    /// Waits for chunk number `self.taken`.
    fn take_chunk(&mut self) -> Result<Chunk> {
        let id = self.taken;
        let chunk = loop {
            if let Some(chunk) = self.pending.remove(&id) {
                break chunk;
            }
            let results = self.results.as_ref().context("the loader is stopped")?;
            match results.recv() {
                Ok(chunk) => {
                    self.pending.insert(chunk.id, chunk);
                }
                Err(_) => bail!("the loader's worker threads stopped before epoch {} was read", self.position.epoch),
            }
        };
        self.taken += 1;
        self.issue();
        Ok(chunk)
    }

    /// The next batch of the epoch, `None` after the last (or after an error).
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.done {
            return Ok(None);
        }
        let result = self.assemble();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
            self.shutdown();
        }
        result
    }

    /// Builds the next batch from the chunks, in epoch order.
    fn assemble(&mut self) -> Result<Option<Batch>> {
        let b = self.config.batch_size;
        let image_len = self.shared.dataset.image_shape().len();
        let (seed, epoch) = (self.config.seed, self.position.epoch);
        let mut images = Vec::new();
        let (mut labels, mut flips, mut indices) = (Vec::new(), Vec::new(), Vec::new());
        let mut next_sample = self.position.sample;
        while labels.len() < b {
            let (chunk, slot) = match self.current.take() {
                Some((chunk, slot)) if slot < chunk.slots.len() => (chunk, slot),
                _ if self.taken < self.num_chunks => (self.take_chunk()?, 0),
                _ => break, // end of the epoch
            };
            let chunk_start = self.shared.start + chunk.id * b;
            // A whole chunk of good samples is exactly one batch: hand its buffer over.
            if labels.is_empty() && slot == 0 && chunk.slots.len() == b && chunk.slots.iter().all(Result::is_ok) {
                images = chunk.images;
                for (i, label) in chunk.slots.into_iter().enumerate() {
                    let position = chunk_start + i;
                    labels.push(label.expect("checked"));
                    flips.push(self.config.random_flip && flip_for(seed, epoch, position));
                    indices.push(self.shared.order[position] as usize);
                }
                next_sample = chunk_start + b;
                break;
            }
            if images.is_empty() {
                images.reserve_exact(b * image_len);
            }
            let mut slot = slot;
            let mut chunk = chunk;
            while slot < chunk.slots.len() && labels.len() < b {
                let position = chunk_start + slot;
                match std::mem::replace(&mut chunk.slots[slot], Ok(0)) {
                    Ok(label) => {
                        images.extend_from_slice(&chunk.images[slot * image_len..(slot + 1) * image_len]);
                        labels.push(label);
                        flips.push(self.config.random_flip && flip_for(seed, epoch, position));
                        indices.push(self.shared.order[position] as usize);
                    }
                    Err(e) if self.config.skip_bad_samples => self.bad.record(format!("{e:#}")),
                    Err(e) => return Err(e),
                }
                slot += 1;
                next_sample = position + 1;
            }
            self.current = Some((chunk, slot));
        }
        if labels.is_empty() || (labels.len() < b && self.config.drop_last) {
            return Ok(None);
        }
        let next = Position { epoch, batch: self.position.batch + 1, sample: next_sample, skipped: self.bad.count };
        let batch = Batch { epoch, index: self.position.batch, images, labels, flips, indices, next };
        self.position = next;
        Ok(Some(batch))
    }

    /// Stops the workers and waits for them.
    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.jobs = None; // workers waiting for a job see the channel closed
        self.results = None; // a worker sending a result sees it closed
        self.pending.clear();
        self.current = None;
        for t in self.threads.drain(..) {
            // A worker cannot panic outside `catch_unwind`; if one did, there is nothing more to report.
            let _ = t.join();
        }
    }
}

/// A worker: decode the chunks it is handed until the job channel closes or the consumer is gone.
fn worker(shared: &Shared, jobs: &Mutex<Receiver<usize>>, results: &SyncSender<Chunk>) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            jobs.recv()
        };
        let Ok(id) = job else { return };
        let Some(chunk) = shared.decode_chunk(id) else { return };
        if results.send(chunk).is_err() {
            return;
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("config", &self.config)
            .field("position", &self.position)
            .field("bad", &self.bad)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
