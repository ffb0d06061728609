//! Random labelled images from a seed: a [`Dataset`] for benchmarks and tests that need no files.
//!
//! Sample `i` has label `i % num_classes` (every class equally often) and uniformly random pixels. The pixels
//! are a SplitMix64 sequence started from Philox block `i` of stream [`SYNTHETIC_STREAM`] of the seed: a pure
//! function of `(seed, i)`, cheap (about one multiply-xorshift per 8 bytes) and the same on every machine.
//! The content is noise, meant to cost nothing to make; it is not face-like.

use anyhow::{bail, ensure, Result};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::Philox4x32;

use super::{Dataset, Sample};
use crate::streams::SYNTHETIC_STREAM;

/// A synthetic training set (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct SyntheticDataset {
    seed: u64,
    len: usize,
    num_classes: usize,
    shape: ImageShape,
}

impl SyntheticDataset {
    /// `len` images of `shape` in `num_classes` classes, drawn from `seed`.
    pub fn new(seed: u64, len: usize, num_classes: usize, shape: ImageShape) -> Result<Self> {
        ensure!(
            num_classes > 0 && u32::try_from(num_classes).is_ok(),
            "number of classes {num_classes} is not in 1..2^32"
        );
        shape.validate().map_err(|e| anyhow::anyhow!("image shape {}x{}: {e}", shape.h, shape.w))?;
        Ok(Self { seed, len, num_classes, shape })
    }

    /// Fills `rgb` with sample `index`'s pixels.
    pub fn fill(&self, index: usize, rgb: &mut [u8]) {
        let w = Philox4x32::block(self.seed, SYNTHETIC_STREAM, index as u64);
        let mut state = u64::from(w[0]) | (u64::from(w[1]) << 32);
        let mut chunks = rgb.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = splitmix64(&mut state).to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

/// One step of SplitMix64 (Steele, Lea, Flood 2014).
#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image_shape(&self) -> ImageShape {
        self.shape
    }

    fn load(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            bail!("synthetic sample {index} is past the end ({} samples)", self.len);
        }
        let mut rgb = vec![0u8; self.shape.len()];
        self.fill(index, &mut rgb);
        Ok(Sample { rgb, label: (index % self.num_classes) as u32 })
    }

    fn describe(&self, index: usize) -> String {
        format!("synthetic sample {index} (seed {})", self.seed)
    }
}
