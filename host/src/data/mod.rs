//! Training data: datasets of labelled RGB images, and a loader that decodes them into shuffled batches.
//!
//! - [`Dataset`]: a numbered set of labelled images of one size. Sources:
//!   [`RecordIoDataset`] (insightface's MXNet `train.rec`/`train.idx`/`property`), [`ImageFolder`]
//!   (`root/<identity>/<image>`), [`SyntheticDataset`] (random pixels from a seed, for benchmarks).
//!   [`open`] picks the source from a path.
//! - [`Loader`]: batches of one epoch in a reproducible order (shuffle and flips from a seed), decoded by worker
//!   threads ahead of the consumer, resumable at any batch.
//! - [`decode`]: JPEG/PNG to RGB bytes, and the encoders the writers and tests use.
//!
//! A trainer does:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::{path::Path, sync::Arc};
//! use elasticface::data::{self, Loader, LoaderConfig, Position};
//! use elasticface_core::nn::ImageShape;
//!
//! let dataset = data::open(Path::new("faces_emore"), ImageShape { h: 112, w: 112 })?;
//! let config = LoaderConfig { workers: 8, ..LoaderConfig::new(128, 42) };
//! for epoch in 0..26 {
//!     let mut loader = Loader::new(Arc::clone(&dataset), config.clone(), Position::epoch_start(epoch))?;
//!     while let Some(batch) = loader.next_batch()? {
//!         // upload batch.images (B, H, W, 3) u8 and batch.flips to the preprocess kernel; batch.labels to the loss;
//!         // checkpoint batch.next to resume right after this batch.
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod decode;
pub mod faces;
pub mod folder;
pub mod loader;
pub mod recordio;
pub mod synthetic;

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Result};
use elasticface_core::nn::ImageShape;

pub use folder::ImageFolder;
pub use loader::{epoch_order, flip_for, BadSamples, Batch, Loader, LoaderConfig, Position};
pub use recordio::{RecordIoDataset, RecordIoPaths, RecordIoWriter};
pub use synthetic::SyntheticDataset;

/// One decoded training image and its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `u8 (H, W, 3)` RGB, row-major, of the dataset's [`Dataset::image_shape`].
    pub rgb: Vec<u8>,
    /// The class, in `[0, num_classes)`.
    pub label: u32,
}

/// A numbered set of labelled RGB images, all of one size, that many threads may read at once.
///
/// Implementations check what they read: a sample whose label is out of range, whose image does not decode or
/// has another size is an error naming the file and record ([`Dataset::describe`]), never a wrong sample.
pub trait Dataset: Send + Sync {
    /// Number of samples; they are numbered `0..len()`.
    fn len(&self) -> usize;

    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes: every label is below it.
    fn num_classes(&self) -> usize;

    /// Size of every image.
    fn image_shape(&self) -> ImageShape;

    /// Reads and decodes sample `index`. Errors name the file and record.
    fn load(&self, index: usize) -> Result<Sample>;

    /// Where sample `index` comes from, for messages: a file, a record key.
    fn describe(&self, index: usize) -> String {
        format!("sample {index}")
    }
}

/// Opens the training set at `path`, whose images must be of `shape`:
///
/// - a directory holding `train.rec` (or a `.rec` file): [`RecordIoDataset`]; its `property` must give `shape`;
/// - any other directory: [`ImageFolder`] (one sub-folder per identity).
pub fn open(path: &Path, shape: ImageShape) -> Result<Arc<dyn Dataset>> {
    let is_rec = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("rec"));
    if is_rec || path.join("train.rec").is_file() {
        let ds = RecordIoDataset::open(path)?;
        let found = ds.image_shape();
        ensure!(
            found == shape,
            "{}: images are {}x{} (property file) but {}x{} is required",
            path.display(),
            found.h,
            found.w,
            shape.h,
            shape.w
        );
        Ok(Arc::new(ds))
    } else {
        Ok(Arc::new(ImageFolder::open(path, shape)?))
    }
}
