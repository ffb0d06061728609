//! `elasticface bench --data PATH`: the input pipeline alone on the CPU, so that one can tell whether it keeps
//! the GPU fed.
//!
//! The dataset at `PATH` is opened as training opens it ([`crate::data::open`]: a RecordIO folder or `.rec` file,
//! or an image folder). Its image size comes from the RecordIO `property` file; an image folder has none and is
//! read at the training default ([`TrainConfig`]'s `input_size`, 112x112).
//!
//! Two figures are measured:
//!
//! - **The loader**: the [`Loader`] training uses, with training's settings (shuffle, random flips, `drop_last`,
//!   prefetch) and `workers` threads, delivers batches until at least `images` images have been delivered,
//!   starting new epochs when the dataset is smaller. One batch of a separate loader is read first to warm up
//!   (files in the page cache, allocator); that loader is dropped before the clock starts, so nothing it decoded
//!   ahead is counted. The timed region is: starting each epoch's loader (its threads), reading, decoding and
//!   checking every sample, deciding its flip and assembling the batches, up to the delivery of the last batch.
//!   Nothing is done with the batches. The flips themselves (like normalisation) are applied by the GPU
//!   preprocess kernel, so the flip decision is the whole of the CPU's augmentation.
//! - **One thread**: `min(images, 1024)` samples, in the order of epoch 0, loaded one after the other on the
//!   calling thread by the dataset's own [`Dataset::load`] (read the record or file, decode, check), without the
//!   loader: the decoding speed of one core, whatever the thread scaling.
//!
//! The target is [`TARGET_IMAGES_PER_S_PER_CORE`] images/s per core for 112x112 JPEGs. The one-thread figure is
//! compared with it; the loader's per-worker figure is a per-core figure only while `workers` does not exceed the
//! cores available.

use std::fmt;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use elasticface_core::nn::ImageShape;
use serde::Serialize;

use crate::data::recordio::read_property;
use crate::data::{self, epoch_order, Dataset, Loader, LoaderConfig, Position, RecordIoPaths};
use crate::train::run::TrainConfig;

/// Images per second per core that decoding must reach for 112x112 JPEGs (so that the pipeline never starves the
/// GPU).
pub const TARGET_IMAGES_PER_S_PER_CORE: f64 = 400.0;

/// At most this many samples are decoded for the one-thread figure.
pub const MAX_ONE_THREAD_IMAGES: usize = 1024;

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataBenchConfig {
    /// Images the loader must deliver in the timed region (rounded up to whole batches).
    pub images: usize,
    /// Images per batch.
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Seed of the shuffles and flips.
    pub seed: u64,
}

impl DataBenchConfig {
    /// `images` images in batches of `batch`, on one worker per available core, with training's default seed.
    pub fn new(images: usize, batch: usize) -> Self {
        Self { images, batch, workers: available_cores(), seed: TrainConfig::default().seed }
    }
}

impl Default for DataBenchConfig {
    /// 4096 images in training's default batch, one worker per available core.
    fn default() -> Self {
        Self::new(4096, TrainConfig::default().batch)
    }
}

/// The measured figures.
#[derive(Clone, Debug, Serialize)]
pub struct DataBenchResult {
    /// The dataset, as given.
    pub path: String,
    /// Its number of samples.
    pub samples: usize,
    /// Its number of classes.
    pub classes: usize,
    /// Image height.
    pub image_h: usize,
    /// Image width.
    pub image_w: usize,
    /// Images per batch.
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Cores available to this process (`std::thread::available_parallelism`).
    pub cores: usize,
    /// Images the loader delivered in the timed region.
    pub images: usize,
    /// Batches it delivered.
    pub batches: usize,
    /// Epochs it started (more than one when the dataset holds fewer images than asked for).
    pub epochs: u64,
    /// Seconds of the timed region.
    pub seconds: f64,
    /// Images per second delivered by the loader, all threads together.
    pub images_per_s: f64,
    /// `images_per_s / workers`.
    pub images_per_s_per_worker: f64,
    /// Images decoded on the calling thread alone.
    pub decode_images: usize,
    /// Seconds they took.
    pub decode_seconds: f64,
    /// Images per second of one thread reading and decoding samples (no loader).
    pub decode_images_per_s_one_thread: f64,
    /// [`TARGET_IMAGES_PER_S_PER_CORE`].
    pub target_images_per_s_per_core: f64,
    /// Whether the one-thread figure reaches the target.
    pub meets_target: bool,
}

/// The number of cores this process may use (1 when unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The image size to open `path` with: the RecordIO `property` file's when `path` is a RecordIO set that has one,
/// else training's default input size. [`data::open`] then checks everything else.
fn image_shape_for(path: &Path) -> Result<ImageShape> {
    let paths = RecordIoPaths::resolve(path);
    if paths.rec.is_file() && paths.property.is_file() {
        return Ok(read_property(&paths.property)?.1);
    }
    let size = TrainConfig::default().input_size;
    Ok(ImageShape { h: size, w: size })
}

/// Measures the input pipeline on the dataset at `path` (see the [module documentation](self)).
///
/// Errors: `images`, `batch` or `workers` zero; a dataset that cannot be opened or holds fewer samples than one
/// batch; a sample that fails to load (named with its file and record). Each names the path.
pub fn measure(path: &Path, cfg: &DataBenchConfig) -> Result<DataBenchResult> {
    ensure!(cfg.images > 0, "the data benchmark needs at least one image to time");
    ensure!(cfg.batch > 0, "the data benchmark needs a batch of at least one image");
    ensure!(cfg.workers > 0, "the data benchmark needs at least one loader thread");
    let shape = image_shape_for(path).with_context(|| format!("data benchmark: cannot open {}", path.display()))?;
    let dataset = data::open(path, shape).with_context(|| format!("data benchmark: cannot open {}", path.display()))?;
    ensure!(
        dataset.len() >= cfg.batch,
        "data benchmark: {} holds {} images, fewer than one batch of {}",
        path.display(),
        dataset.len(),
        cfg.batch
    );
    let config = LoaderConfig { workers: cfg.workers, ..LoaderConfig::new(cfg.batch, cfg.seed) };
    let failed = |what: &str| format!("data benchmark on {}: {what}", path.display());

    // Warm-up: one batch from a loader that is dropped before the clock starts.
    {
        let mut warm = Loader::new(Arc::clone(&dataset), config.clone(), Position::epoch_start(0))
            .with_context(|| failed("cannot start the loader"))?;
        black_box(warm.next_batch().with_context(|| failed("warm-up batch"))?);
    }

    // The loader, epoch after epoch, until `images` images are delivered.
    let (mut images, mut batches, mut epochs) = (0usize, 0usize, 0u64);
    let started = Instant::now();
    let seconds = loop {
        let mut loader = Loader::new(Arc::clone(&dataset), config.clone(), Position::epoch_start(epochs))
            .with_context(|| failed(&format!("cannot start the loader for epoch {epochs}")))?;
        epochs += 1;
        while images < cfg.images {
            // `None` at the end of the epoch: the loader has stopped its threads already.
            let Some(batch) = loader.next_batch().with_context(|| failed("loading a batch"))? else { break };
            images += batch.len();
            batches += 1;
            black_box(&batch);
        }
        if images >= cfg.images {
            let seconds = started.elapsed().as_secs_f64();
            // Stopping the threads that are decoding ahead is not part of the pipeline's throughput.
            drop(loader);
            break seconds;
        }
    };
    finish(path, cfg, &*dataset, (images, batches, epochs, seconds))
}

/// Times the one-thread decoding and assembles the result.
fn finish(
    path: &Path,
    cfg: &DataBenchConfig,
    dataset: &dyn Dataset,
    (images, batches, epochs, seconds): (usize, usize, u64, f64),
) -> Result<DataBenchResult> {
    let order = epoch_order(cfg.seed, 0, dataset.len(), true)
        .with_context(|| format!("data benchmark on {}: epoch order", path.display()))?;
    let decode_images = cfg.images.min(MAX_ONE_THREAD_IMAGES);
    let started = Instant::now();
    for k in 0..decode_images {
        let index = order[k % order.len()] as usize;
        let sample = dataset
            .load(index)
            .with_context(|| format!("data benchmark on {}: decoding sample {index}", path.display()))?;
        black_box(sample);
    }
    let decode_seconds = started.elapsed().as_secs_f64();
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { f64::INFINITY };
    let images_per_s = rate(images, seconds);
    let decode_images_per_s_one_thread = rate(decode_images, decode_seconds);
    let shape = dataset.image_shape();
    Ok(DataBenchResult {
        path: path.display().to_string(),
        samples: dataset.len(),
        classes: dataset.num_classes(),
        image_h: shape.h,
        image_w: shape.w,
        batch: cfg.batch,
        workers: cfg.workers,
        cores: available_cores(),
        images,
        batches,
        epochs,
        seconds,
        images_per_s,
        images_per_s_per_worker: images_per_s / cfg.workers as f64,
        decode_images,
        decode_seconds,
        decode_images_per_s_one_thread,
        target_images_per_s_per_core: TARGET_IMAGES_PER_S_PER_CORE,
        meets_target: decode_images_per_s_one_thread >= TARGET_IMAGES_PER_S_PER_CORE,
    })
}

impl fmt::Display for DataBenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target_images_per_s_per_core;
        let versus = |rate: f64| if rate >= target { "meets" } else { "below" };
        writeln!(
            f,
            "data: {} ({} images, {} classes, {}x{})",
            self.path, self.samples, self.classes, self.image_h, self.image_w
        )?;
        writeln!(
            f,
            "loader: {} images in {} batches of {} ({} epoch(s)), {} worker(s), {} core(s) available, {:.3} s",
            self.images, self.batches, self.batch, self.epochs, self.workers, self.cores, self.seconds
        )?;
        writeln!(f, "{:<28} {:>12}", "", "images/s")?;
        writeln!(f, "{:<28} {:>12.1}", "loader, all workers", self.images_per_s)?;
        let note = if self.workers > self.cores { " (more workers than cores: not a per-core figure)" } else { "" };
        writeln!(f, "{:<28} {:>12.1}{note}", "loader, per worker", self.images_per_s_per_worker)?;
        writeln!(
            f,
            "{:<28} {:>12.1} ({} images, {:.3} s)",
            "decode, one thread", self.decode_images_per_s_one_thread, self.decode_images, self.decode_seconds
        )?;
        writeln!(
            f,
            "target {target:.0} images/s per core (112x112 JPEG): one thread {:.1} {} it; per worker {:.1} {} it",
            self.decode_images_per_s_one_thread,
            versus(self.decode_images_per_s_one_thread),
            self.images_per_s_per_worker,
            versus(self.images_per_s_per_worker)
        )
    }
}

/// Prints the result for humans (see [`DataBenchResult`]'s `Display`).
pub fn print_table(r: &DataBenchResult) {
    print!("{r}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{synth, SynthConfig};

    /// A RecordIO set of `ids * per_id` generated JPEG faces of `size` pixels; returns its `train/` folder.
    fn faces(dir: &Path, ids: usize, per_id: usize, size: usize) -> std::path::PathBuf {
        let cfg = SynthConfig {
            out: dir.to_owned(),
            ids,
            per_id,
            val_ids: 2,
            val_per_id: 2,
            val_pairs: 2,
            size,
            seed: 7,
            quality: 95,
        };
        synth(&cfg, true).unwrap().train
    }

    fn check_rates(r: &DataBenchResult) {
        for rate in [r.images_per_s, r.images_per_s_per_worker, r.decode_images_per_s_one_thread, r.seconds] {
            assert!(rate.is_finite() && rate > 0.0, "{r:?}");
        }
        assert_eq!(r.meets_target, r.decode_images_per_s_one_thread >= TARGET_IMAGES_PER_S_PER_CORE);
    }

    #[test]
    fn measures_recordio_jpegs_across_epochs() {
        let dir = tempfile::tempdir().unwrap();
        // 40 samples: 2 batches of 16 per epoch (drop_last), so 64 images take exactly 2 epochs.
        let train = faces(dir.path(), 8, 5, 112);
        let cfg = DataBenchConfig { images: 64, batch: 16, workers: 2, seed: 3 };
        let r = measure(&train, &cfg).unwrap();
        assert_eq!((r.samples, r.classes, r.image_h, r.image_w), (40, 8, 112, 112));
        assert_eq!((r.images, r.batches, r.epochs, r.workers, r.batch), (64, 4, 2, 2, 16));
        assert_eq!(r.decode_images, 64);
        assert!(r.cores >= 1);
        check_rates(&r);
        assert!((r.images_per_s_per_worker * 2.0 - r.images_per_s).abs() < 1e-9 * r.images_per_s);
        let table = r.to_string();
        assert!(table.contains("per worker") && table.contains("400 images/s per core"), "{table}");
        print_table(&r);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["images"], 64);
    }

    #[test]
    fn rounds_up_to_whole_batches_and_reads_the_size_from_the_property_file() {
        let dir = tempfile::tempdir().unwrap();
        let train = faces(dir.path(), 4, 4, 32);
        let rec = train.join("train.rec");
        let cfg = DataBenchConfig { images: 10, batch: 4, workers: 1, seed: 0 };
        let r = measure(&rec, &cfg).unwrap();
        assert_eq!((r.image_h, r.image_w, r.samples), (32, 32, 16));
        assert_eq!((r.images, r.batches, r.epochs, r.decode_images), (12, 3, 1, 10));
        check_rates(&r);
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-data");
        let e = format!("{:#}", measure(&missing, &DataBenchConfig::new(64, 16)).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn fewer_samples_than_a_batch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let train = faces(dir.path(), 2, 3, 32);
        let cfg = DataBenchConfig { images: 64, batch: 16, workers: 2, seed: 0 };
        let e = format!("{:#}", measure(&train, &cfg).unwrap_err());
        assert!(e.contains("fewer than one batch of 16") && e.contains(&train.display().to_string()), "{e}");
    }

    #[test]
    fn zero_images_or_workers_are_errors() {
        let p = Path::new("unused");
        assert!(measure(p, &DataBenchConfig { images: 0, batch: 1, workers: 1, seed: 0 }).is_err());
        assert!(measure(p, &DataBenchConfig { images: 1, batch: 1, workers: 0, seed: 0 }).is_err());
        assert!(measure(p, &DataBenchConfig { images: 1, batch: 0, workers: 1, seed: 0 }).is_err());
    }
}
