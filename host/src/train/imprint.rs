//! Imprinted class centres for fine-tuning (`train --init MODEL`, `--init-head imprint`): each class's centre
//! starts on the mean direction of its training images' embeddings under the starting backbone (weight
//! imprinting: Qi, Brown and Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018), instead of at random.
//!
//! A margin head scores cosines, so a random centre is a direction no face is near: every image is far from its
//! class and the loss starts at its largest, whatever the backbone knows. An imprinted centre is where the
//! backbone already puts the class, and the loss starts far lower (README -> Fine-tuning has the figures, and what
//! it changed in accuracy).
//!
//! Each centre is the normalised sum of its images' unit embeddings (each image as stored, not mirrored), in
//! dataset order: a unit vector. A class with no readable image keeps its seeded centre.
//!
//! The length matters. A cosine's gradient with respect to a centre is inversely proportional to the centre's
//! length, so an SGD step moves a centre by about `lr s / |w|`, `lr s / |w|²` of its length. A seeded centre is
//! short (`0.01 sqrt(E)`: [`init_head`] draws every value from N(0, 0.01²)), and the first step moves it many
//! times its own length: imprinted that short, the imprint was gone after one step (on the README's fine-tuning
//! set, the loss back from 17.7 to 46 at the second step). A unit centre keeps its direction (the loss 15.9 at the
//! second step); a trained head's centres are longer still (the demo's: 11 on average).
//!
//! An imprint reads the whole training set once: on a large set, as long as an epoch's forward passes. Its progress
//! (the sums so far and the data position after them) is kept in a file ([`Progress`]): rewritten atomically every
//! [`Progress::save_every`], when `stop` is set (the imprint then returns [`Outcome::Stopped`]) and at the end. An
//! imprint that finds a file of the same inputs ([`Progress::key`]) carries on from it, through the same batches in
//! the same order: the centres are the same bits as an imprint that never stopped. A file of other inputs, or one
//! that does not read, is started afresh.
//!
//! [`init_head`]: elasticface_core::model::init_head

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::Backend;
use crate::data::{Dataset, Loader, LoaderConfig, Position};
use crate::tensorfile::TensorFile;

/// The progress file's name in a run folder.
pub const FILE: &str = "imprint.safetensors";

/// What an imprint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imprinted {
    /// Images embedded (an earlier, stopped imprint's included).
    pub images: usize,
    /// Classes whose centre was imprinted; the others (no readable image) kept their seeded centre.
    pub classes: usize,
    /// Unreadable samples left out (with `skip_bad_samples`; an earlier, stopped imprint's included).
    pub skipped: usize,
    /// Images an earlier imprint had embedded, from whose file this one carried on (0 for a fresh one).
    pub carried_on_from: usize,
}

/// How an imprint ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every sample was read; the head holds the centres.
    Done(Imprinted),
    /// `stop` was set: the progress is in the file, the head is untouched.
    Stopped {
        /// Samples read so far (embedded or left out).
        read: usize,
        /// Samples in the dataset.
        of: usize,
    },
}

/// How an imprint reads the training data: `batch` samples at a time, decoded by `workers` threads, unreadable ones
/// left out with `skip_bad_samples` (else an error naming the sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Samples per embedding call.
    pub batch: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Leave out unreadable samples instead of stopping.
    pub skip_bad_samples: bool,
}

/// Where and how often an imprint keeps its progress, and what stops it.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The progress file.
    pub path: &'a Path,
    /// A fingerprint of everything the sums depend on: the backbone's values, the dataset, the reading and the
    /// device's arithmetic. A file of another key is started afresh.
    pub key: u64,
    /// The longest time between two saves (a crash loses at most this much work); [`Duration::ZERO`] saves after
    /// every batch.
    pub save_every: Duration,
    /// Set (by Ctrl-C, say) to stop after the current batch, with the progress saved.
    pub stop: &'a AtomicBool,
}

/// What a progress file's manifest records beside its sums (`{"imprint_progress": {...}}`).
struct Record {
    /// [`Progress::key`], as 16 hex digits.
    key: String,
    /// Images embedded into the sums.
    images: usize,
    /// Samples in the dataset.
    samples: usize,
    /// The data position after the sums' samples.
    position: Position,
}

impl Record {
    /// The record in `file`'s manifest, if it holds one.
    fn of(file: &TensorFile) -> Option<Self> {
        let m = &file.meta["imprint_progress"];
        let u = |v: &serde_json::Value| v.as_u64().and_then(|v| usize::try_from(v).ok());
        Some(Self {
            key: m["key"].as_str()?.to_string(),
            images: u(&m["images"])?,
            samples: u(&m["samples"])?,
            position: Position::from_json(&m["position"]).ok()?,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"imprint_progress": {
            "key": self.key, "images": self.images, "samples": self.samples, "position": self.position.to_json(),
        }})
    }
}

impl Progress<'_> {
    /// [`Progress::key`] as the file records it.
    fn key_text(&self) -> String {
        format!("{:016x}", self.key)
    }

    /// Sums and position kept in the file, when it holds an imprint of this key over `classes x e` sums.
    fn read(&self, classes: usize, e: usize) -> Option<(Vec<f32>, Position, usize)> {
        let file = TensorFile::open(self.path).ok()?;
        let record = Record::of(&file).filter(|r| r.key == self.key_text())?;
        let sums = file.f32("sums").ok().filter(|s| s.len() == classes * e)?;
        Some((sums.to_vec(), record.position, record.images))
    }

    /// Writes the sums `(C, E)` over the samples before `position` of the `samples` of the dataset, `images` of them
    /// embedded (atomically).
    fn save(&self, sums: &[f32], classes: usize, (position, samples): (Position, usize), images: usize) -> Result<()> {
        let meta = Record { key: self.key_text(), images, samples, position }.to_json();
        let mut file = TensorFile::new(&self.path.display().to_string(), meta);
        file.insert_f32("sums", &[classes, sums.len() / classes], sums.to_vec())?;
        file.save(self.path).with_context(|| format!("cannot keep the imprint's progress in {}", self.path.display()))
    }
}

/// Imprints `head` `(E, C)` (one centre per column, seeded) with the embeddings `backend` makes of every sample of
/// `dataset`, read as `reading` says, keeping its progress as `progress` says (the module documentation). `quiet`
/// hides the progress bar and the note on a progress file started afresh.
pub fn imprint(
    backend: &mut dyn Backend,
    dataset: Arc<dyn Dataset>,
    reading: Reading,
    head: &mut [f32],
    progress: Progress<'_>,
    quiet: bool,
) -> Result<Outcome> {
    let Reading { batch, workers, skip_bad_samples } = reading;
    let classes = dataset.num_classes();
    ensure!(
        classes > 0 && head.len().is_multiple_of(classes),
        "imprint: a head of {} values for {classes} classes",
        head.len()
    );
    let e = head.len() / classes;
    let config = LoaderConfig {
        workers: workers.max(1),
        shuffle: false,
        random_flip: false,
        drop_last: false,
        skip_bad_samples,
        ..LoaderConfig::new(batch, 0)
    };
    // Sums of unit embeddings `(C, E)`, and the images in them, from where an earlier imprint stopped.
    let (mut sums, start, mut images) = match progress.read(classes, e) {
        Some(kept) => kept,
        None => {
            if progress.path.exists() && !quiet {
                eprintln!("{}: another imprint's progress (other inputs): imprinting afresh", progress.path.display());
            }
            (vec![0.0f32; classes * e], Position::epoch_start(0), 0)
        }
    };
    let carried_on_from = images;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(dataset.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  imprinting class centres  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(start.sample as u64);
    bar.reset_eta();
    let mut loader = Loader::new(Arc::clone(&dataset), config, start)?;
    let mut unit = vec![0.0f32; e];
    let mut saved = Instant::now();
    while let Some(b) = loader.next_batch()? {
        let embeddings = backend.embed(&b.images, &b.flips)?;
        ensure!(
            embeddings.len() == b.len() * e,
            "imprint: {} values for {} embeddings of {e}",
            embeddings.len(),
            b.len()
        );
        for ((x, &label), &index) in embeddings.chunks_exact(e).zip(&b.labels).zip(&b.indices) {
            elasticface_core::embedding::l2_normalize(x, &mut unit)
                .with_context(|| format!("imprint: the embedding of {}", dataset.describe(index)))?;
            let sum = &mut sums[label as usize * e..][..e];
            sum.iter_mut().zip(&unit).for_each(|(s, u)| *s += u);
        }
        images += b.len();
        bar.set_position(loader.position().sample as u64);
        let stop = progress.stop.load(Ordering::SeqCst);
        if stop || saved.elapsed() >= progress.save_every {
            progress.save(&sums, classes, (loader.position(), dataset.len()), images)?;
            saved = Instant::now();
        }
        if stop {
            bar.finish_and_clear();
            return Ok(Outcome::Stopped { read: loader.position().sample, of: dataset.len() });
        }
    }
    bar.finish_and_clear();
    // Kept whole: a run that fails before its first checkpoint starts again from here, not from the first image.
    progress.save(&sums, classes, (loader.position(), dataset.len()), images)?;
    let mut imprinted = 0;
    for (c, sum) in sums.chunks_exact(e).enumerate() {
        // No image (all unreadable), or sums that cancel: the seeded centre stays.
        if elasticface_core::embedding::l2_normalize(sum, &mut unit).is_err() {
            continue;
        }
        for (d, u) in unit.iter().enumerate() {
            head[d * classes + c] = *u;
        }
        imprinted += 1;
    }
    Ok(Outcome::Done(Imprinted { images, classes: imprinted, skipped: loader.bad_samples().count, carried_on_from }))
}

/// How far the imprint whose progress file is `path` had got at its last save: the samples read (embedded or left
/// out) and the samples in its dataset.
pub fn read_progress(path: &Path) -> Result<(usize, usize)> {
    let record = Record::of(&TensorFile::open(path)?);
    let record = record.with_context(|| format!("{}: not an imprint's progress", path.display()))?;
    Ok((record.position.sample, record.samples))
}

#[cfg(test)]
mod tests {
    use anyhow::bail;
    use elasticface_core::embedding::l2_normalize;
    use elasticface_core::margin::MarginConfig;
    use elasticface_core::model::{IResNetConfig, StepConfig};
    use elasticface_core::nn::ImageShape;

    use super::*;
    use crate::data::{Sample, SyntheticDataset};
    use crate::train::cpu::CpuBackend;

    const CFG: IResNetConfig =
        IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };
    const SHAPE: ImageShape = ImageShape { h: 16, w: 16 };

    /// A synthetic set whose sample `bad` cannot be read.
    struct OneBad(SyntheticDataset, usize);

    impl Dataset for OneBad {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn num_classes(&self) -> usize {
            self.0.num_classes()
        }
        fn image_shape(&self) -> ImageShape {
            self.0.image_shape()
        }
        fn load(&self, index: usize) -> Result<Sample> {
            if index == self.1 {
                bail!("sample {index} is broken");
            }
            self.0.load(index)
        }
    }

    /// Never set: an imprint that runs to the end.
    static GO: AtomicBool = AtomicBool::new(false);

    /// Progress kept in `path` under `key` after every batch, stopped by `stop`.
    fn progress<'a>(path: &'a Path, key: u64, stop: &'a AtomicBool) -> Progress<'a> {
        Progress { path, key, save_every: Duration::ZERO, stop }
    }

    fn backend(classes: usize) -> CpuBackend {
        CpuBackend::new(&CFG, 3, classes, StepConfig::recipe(MarginConfig::ARCFACE), 11).unwrap().with_threads(2)
    }

    fn seeded_head(b: &CpuBackend) -> Vec<f32> {
        b.checkpoint(0, Position::epoch_start(0), serde_json::Value::Null).unwrap().head
    }

    /// Column `c` of a head `(E, C)`.
    fn column(head: &[f32], classes: usize, c: usize) -> Vec<f32> {
        head.iter().skip(c).step_by(classes).copied().collect()
    }

    #[test]
    fn each_centre_is_its_class_mean_direction() {
        // 9 classes, 13 samples (labels index % 9): classes 0-3 have two images, 4-8 one; batches of 3, the last
        // short. Sample 4 unreadable and skipped: class 4 keeps its seeded centre.
        let classes = 9;
        let data = Arc::new(OneBad(SyntheticDataset::new(5, 13, classes, SHAPE).unwrap(), 4));
        let mut b = backend(classes);
        let seeded = seeded_head(&b);
        let mut head = seeded.clone();
        let reading = Reading { batch: 3, workers: 2, skip_bad_samples: true };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let done = imprint(&mut b, data.clone(), reading, &mut head, progress(&path, 1, &GO), true).unwrap();
        assert_eq!(done, Outcome::Done(Imprinted { images: 12, classes: 8, skipped: 1, carried_on_from: 0 }));
        let e = CFG.embedding;
        for c in 0..classes {
            let got = column(&head, classes, c);
            if c == 4 {
                assert_eq!(got, column(&seeded, classes, c), "a class without images keeps its seeded centre");
                continue;
            }
            // Each image embedded alone, normalised and summed in dataset order.
            let mut sum = vec![0.0f32; e];
            for i in (c..13).step_by(classes) {
                let x = b.embed(&data.load(i).unwrap().rgb, &[false]).unwrap();
                let mut unit = vec![0.0; e];
                l2_normalize(&x, &mut unit).unwrap();
                sum.iter_mut().zip(&unit).for_each(|(s, u)| *s += u);
            }
            let mut want = vec![0.0; e];
            l2_normalize(&sum, &mut want).unwrap();
            assert_eq!(got, want, "class {c}");
        }
    }

    #[test]
    fn an_unreadable_sample_stops_the_imprint_with_its_name() {
        let data = Arc::new(OneBad(SyntheticDataset::new(5, 6, 3, SHAPE).unwrap(), 4));
        let mut b = backend(3);
        let mut head = seeded_head(&b);
        let reading = Reading { batch: 3, workers: 1, skip_bad_samples: false };
        let dir = tempfile::tempdir().unwrap();
        let err = imprint(&mut b, data, reading, &mut head, progress(&dir.path().join(FILE), 1, &GO), true);
        let err = err.unwrap_err();
        assert!(format!("{err:#}").contains("sample 4 is broken"), "{err:#}");
    }

    #[test]
    fn a_stopped_imprint_carries_on_to_the_same_centres() {
        // 9 classes, 13 samples, batches of 3; sample 1 unreadable and left out, so the first batch reads 4.
        let classes = 9;
        let data = Arc::new(OneBad(SyntheticDataset::new(5, 13, classes, SHAPE).unwrap(), 1));
        let reading = Reading { batch: 3, workers: 2, skip_bad_samples: true };
        let mut b = backend(classes);
        let seeded = seeded_head(&b);
        let dir = tempfile::tempdir().unwrap();
        let whole_path = dir.path().join("whole.safetensors");
        let mut whole = seeded.clone();
        let done = imprint(&mut b, data.clone(), reading, &mut whole, progress(&whole_path, 1, &GO), true).unwrap();
        let want = Imprinted { images: 12, classes: 9, skipped: 1, carried_on_from: 0 };
        assert_eq!(done, Outcome::Done(want.clone()));

        // Stopped after the first batch: the head untouched, the progress in the file.
        let path = dir.path().join(FILE);
        let mut head = seeded.clone();
        let stop = AtomicBool::new(true);
        let stopped = imprint(&mut b, data.clone(), reading, &mut head, progress(&path, 1, &stop), true).unwrap();
        assert_eq!(stopped, Outcome::Stopped { read: 4, of: 13 });
        assert_eq!(head, seeded);
        let meta = &TensorFile::open(&path).unwrap().meta["imprint_progress"];
        assert_eq!((meta["images"].as_u64(), meta["position"]["skipped"].as_u64()), (Some(3), Some(1)));

        // Carried on: the same bits as the imprint that never stopped, the skipped sample counted once.
        let done = imprint(&mut b, data.clone(), reading, &mut head, progress(&path, 1, &GO), true).unwrap();
        assert_eq!(done, Outcome::Done(Imprinted { carried_on_from: 3, ..want.clone() }));
        assert_eq!(head, whole);

        // The finished file is kept whole: an imprint of the same key reads no image and gives the same centres.
        let mut again = seeded.clone();
        let done = imprint(&mut b, data.clone(), reading, &mut again, progress(&path, 1, &GO), true).unwrap();
        assert_eq!(done, Outcome::Done(Imprinted { carried_on_from: 12, ..want.clone() }));
        assert_eq!(again, whole);

        // Another key (another backbone, say) starts afresh, and so does a file that does not read.
        let mut other = seeded.clone();
        let done = imprint(&mut b, data.clone(), reading, &mut other, progress(&path, 2, &GO), true).unwrap();
        assert_eq!((done, other), (Outcome::Done(want.clone()), whole.clone()));
        std::fs::write(&path, b"torn").unwrap();
        let mut torn = seeded.clone();
        let done = imprint(&mut b, data, reading, &mut torn, progress(&path, 2, &GO), true).unwrap();
        assert_eq!((done, torn), (Outcome::Done(want), whole));

        crate::files::remove_if_present(&path).unwrap();
        assert!(!path.exists());
        crate::files::remove_if_present(&path).unwrap();
    }
}
