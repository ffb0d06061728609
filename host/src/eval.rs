//! Verification on held-out identities: pairs drawn from a labelled dataset, embedded with flip fusion and
//! scored with the core's LFW protocol.
//!
//! The images of a pair set live in memory (`u8`), so held-out sets are meant to be small (thousands of images).

use anyhow::{ensure, Result};
use elasticface_core::rng::Philox4x32;
use elasticface_core::verify::{fused_distances, kfold_accuracy, tar_at_far, FlipPairs};
use rand_core::RngCore;
use serde::Serialize;

use crate::data::Dataset;
use crate::train::Backend;

/// Verification pairs: `2P` images (pair `p` is images `2p` and `2p + 1`) and whether each pair is one person.
#[derive(Clone, Debug)]
pub struct Pairs {
    /// `u8 (2P, H, W, 3)`.
    pub images: Vec<u8>,
    /// `(P)`.
    pub issame: Vec<bool>,
}

impl Pairs {
    /// Number of pairs `P`.
    pub fn len(&self) -> usize {
        self.issame.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.issame.is_empty()
    }
}

/// `pairs` pairs from `ds`, alternately the same identity (two different images) and two different identities,
/// drawn deterministically from `seed`. Needs an identity with two images and at least two identities.
pub fn pairs_from_dataset(ds: &dyn Dataset, pairs: usize, seed: u64) -> Result<Pairs> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ds.num_classes()];
    let mut samples = Vec::with_capacity(ds.len());
    for i in 0..ds.len() {
        let s = ds.load(i)?;
        by_class[s.label as usize].push(i);
        samples.push(s.rgb);
    }
    let multi: Vec<usize> = (0..by_class.len()).filter(|&c| by_class[c].len() >= 2).collect();
    let present: Vec<usize> = (0..by_class.len()).filter(|&c| !by_class[c].is_empty()).collect();
    ensure!(
        !multi.is_empty() && present.len() >= 2,
        "verification pairs need an identity with two images and two identities"
    );
    let mut rng = Philox4x32::new(seed, 0);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let (mut images, mut issame) = (Vec::new(), Vec::with_capacity(pairs));
    for p in 0..pairs {
        let same = p % 2 == 0;
        let (a, b) = if same {
            let c = &by_class[multi[pick(multi.len())]];
            let i = pick(c.len());
            let j = (i + 1 + pick(c.len() - 1)) % c.len();
            (c[i], c[j])
        } else {
            let ca = pick(present.len());
            let cb = (ca + 1 + pick(present.len() - 1)) % present.len();
            let (ca, cb) = (&by_class[present[ca]], &by_class[present[cb]]);
            (ca[pick(ca.len())], cb[pick(cb.len())])
        };
        images.extend_from_slice(&samples[a]);
        images.extend_from_slice(&samples[b]);
        issame.push(same);
    }
    Ok(Pairs { images, issame })
}

/// What a verification run measured.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Pairs scored.
    pub pairs: usize,
    /// 10-fold accuracy, mean.
    pub accuracy: f64,
    /// 10-fold accuracy, population standard deviation.
    pub accuracy_std: f64,
    /// Mean of the per-fold thresholds (squared distance of fused embeddings).
    pub threshold: f64,
    /// TAR at FAR 1e-2, when there are enough different-identity pairs to resolve it.
    pub tar_at_far_1e2: Option<f64>,
    /// The squared distance of each pair, `(P)` (for ROC curves).
    #[serde(skip)]
    pub dist: Vec<f32>,
}

/// Embeds both images of every pair and their mirror images on `backend`, fuses (`l2normalize(e + e_flip)`)
/// and scores with the LFW protocol.
pub fn verify(backend: &mut dyn Backend, pairs: &Pairs) -> Result<VerifyReport> {
    let n = 2 * pairs.len();
    let plain = backend.embed(&pairs.images, &vec![false; n])?;
    let flipped = backend.embed(&pairs.images, &vec![true; n])?;
    let d = plain.len() / n.max(1);
    // Split the interleaved (2P, D) embeddings into first and second images of each pair.
    let split = |e: &[f32]| {
        let (mut a, mut b) = (Vec::with_capacity(n / 2 * d), Vec::with_capacity(n / 2 * d));
        for (k, row) in e.chunks_exact(d).enumerate() {
            if k % 2 == 0 {
                a.extend_from_slice(row)
            } else {
                b.extend_from_slice(row)
            }
        }
        (a, b)
    };
    let ((e1, e2), (f1, f2)) = (split(&plain), split(&flipped));
    let fp = FlipPairs { dim: d, emb1: &e1, emb1_flip: &f1, emb2: &e2, emb2_flip: &f2 };
    let mut dist = vec![0.0; pairs.len()];
    fused_distances(&fp, &mut vec![0.0; 3 * d], &mut dist)?;
    let k = kfold_accuracy(&dist, &pairs.issame)?;
    let tar = tar_at_far(&dist, &pairs.issame, 1e-2, &mut vec![0.0; pairs.len()])?.map(|t| t.tar);
    Ok(VerifyReport {
        pairs: pairs.len(),
        accuracy: k.mean,
        accuracy_std: k.std,
        threshold: k.thresholds.iter().sum::<f64>() / k.thresholds.len() as f64,
        tar_at_far_1e2: tar,
        dist,
    })
}
