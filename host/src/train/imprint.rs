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
//! [`init_head`]: elasticface_core::model::init_head

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::Backend;
use crate::data::{Dataset, Loader, LoaderConfig, Position};

/// What an imprint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imprinted {
    /// Images embedded.
    pub images: usize,
    /// Classes whose centre was imprinted; the others (no readable image) kept their seeded centre.
    pub classes: usize,
    /// Unreadable samples left out (with `skip_bad_samples`).
    pub skipped: usize,
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

/// Imprints `head` `(E, C)` (one centre per column, seeded) with the embeddings `backend` makes of every sample of
/// `dataset`, read as `reading` says. `quiet` hides the progress bar.
pub fn imprint(
    backend: &mut dyn Backend,
    dataset: Arc<dyn Dataset>,
    reading: Reading,
    head: &mut [f32],
    quiet: bool,
) -> Result<Imprinted> {
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
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(dataset.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  imprinting class centres  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut loader = Loader::new(Arc::clone(&dataset), config, Position::epoch_start(0))?;
    // Sums of unit embeddings `(C, E)`.
    let mut sums = vec![0.0f32; classes * e];
    let (mut images, mut unit) = (0, vec![0.0f32; e]);
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
        bar.inc(b.len() as u64);
    }
    bar.finish_and_clear();
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
    Ok(Imprinted { images, classes: imprinted, skipped: loader.bad_samples().count })
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
        let done = imprint(&mut b, data.clone(), reading, &mut head, true).unwrap();
        assert_eq!(done, Imprinted { images: 12, classes: 8, skipped: 1 });
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
        let err = imprint(&mut b, data, reading, &mut head, true).unwrap_err();
        assert!(format!("{err:#}").contains("sample 4 is broken"), "{err:#}");
    }
}
