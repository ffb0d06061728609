//! Face verification: embed pairs of images with their mirror images on a [`Backend`], fuse, and score with the
//! core's LFW protocol ([`elasticface_core::verify`]).
//!
//! - [`FlipEmbeddings`]: embeddings of images and of their horizontal flips, gathered batch by batch;
//! - [`score`]: the protocol's figures for interleaved pairs (10-fold accuracy, TAR at FAR, the best threshold);
//! - [`verify`]: both at once for [`Pairs`] held in memory (held-out identities during training,
//!   [`pairs_from_dataset`]);
//! - [`bin`]: insightface verification packs; [`ijb`]: IJB-B and IJB-C, 1:1 verification of templates;
//!   [`suite`]: `elasticface eval` over several packs and IJB sets, with a table, a JSON report and ROC plots
//!   ([`plot`]).

pub mod bin;
pub mod ijb;
pub mod plot;
pub mod suite;

use anyhow::{anyhow, ensure, Result};
use elasticface_core::embedding::fuse_flip;
use elasticface_core::rng::Philox4x32;
use elasticface_core::verify::{
    fused_distances, kfold_accuracy, protocol_threshold, roc, tar_at_far, FlipPairs, RocPoint, THRESHOLD_COUNT,
};
use rand_core::RngCore;
use serde::Serialize;

use crate::data::Dataset;
use crate::streams::HELD_OUT_PAIRS_STREAM;
use crate::train::Backend;

/// Verification pairs held in memory: `2P` images (pair `p` is images `2p` and `2p + 1`) and whether each pair is
/// one person. Meant for small sets (thousands of images); packs are streamed instead ([`suite`]).
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
    let mut rng = Philox4x32::new(seed, HELD_OUT_PAIRS_STREAM);
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

/// The false-accept rates at which every report gives the true-accept rate.
pub const REPORTED_FARS: [f64; 3] = [1e-2, 1e-3, 1e-4];

/// TAR at one target FAR ([`tar_at_far`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TarReport {
    /// The target false-accept rate.
    pub far: f64,
    /// The true-accept rate, `None` when the pairs cannot resolve `far` (fewer than `1 / far` different pairs).
    pub tar: Option<f64>,
    /// The squared-distance threshold reached (pairs with `dist < threshold` are accepted).
    pub threshold: Option<f32>,
    /// The false-accept rate actually reached at that threshold (at most `far`).
    pub far_reached: Option<f64>,
}

impl TarReport {
    /// The TAR at `far` among `reports`, when it was measured and could be resolved.
    pub fn find(reports: &[TarReport], far: f64) -> Option<f64> {
        reports.iter().find(|t| t.far == far).and_then(|t| t.tar)
    }
}

/// TAR at each of `fars` ([`tar_at_far`]) of pairs at squared distances `dist`.
pub fn tar_reports(dist: &[f32], issame: &[bool], fars: &[f64]) -> Result<Vec<TarReport>> {
    let mut scratch = vec![0.0; dist.len()];
    fars.iter()
        .map(|&far| {
            let t = tar_at_far(dist, issame, far, &mut scratch).map_err(|e| anyhow!("TAR at FAR {far}: {e}"))?;
            Ok(TarReport {
                far,
                tar: t.map(|t| t.tar),
                threshold: t.map(|t| t.threshold),
                far_reached: t.map(|t| t.far),
            })
        })
        .collect()
}

/// What a verification run measured.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Pairs scored.
    pub pairs: usize,
    /// Pairs of one person (the others are of two).
    pub same_pairs: usize,
    /// 10-fold accuracy, mean.
    pub accuracy: f64,
    /// 10-fold accuracy, population standard deviation.
    pub accuracy_std: f64,
    /// Accuracy of each held-out fold.
    pub fold_accuracies: Vec<f64>,
    /// The threshold each fold chose on the other nine (squared distance of fused embeddings).
    pub fold_thresholds: Vec<f64>,
    /// Mean of the per-fold thresholds.
    pub threshold: f64,
    /// The protocol's candidate threshold (`0.00 .. 3.99`) with the best accuracy over all pairs (the first of
    /// equals): the one to deploy. Squared distance; the cosine threshold is `1 - best_threshold / 2`.
    pub best_threshold: f64,
    /// Accuracy over all pairs at `best_threshold`.
    pub best_threshold_accuracy: f64,
    /// TAR at each of [`REPORTED_FARS`].
    pub tar_at_far: Vec<TarReport>,
    /// The squared distance of each pair, `(P)` (for ROC curves).
    #[serde(skip)]
    pub dist: Vec<f32>,
}

impl VerifyReport {
    /// The TAR at `far`, when it was measured and could be resolved.
    pub fn tar(&self, far: f64) -> Option<f64> {
        TarReport::find(&self.tar_at_far, far)
    }
}

/// Embeddings `(N, D)` of `N` images and `(N, D)` of their horizontal flips, as a backend returns them (before
/// any normalisation).
#[derive(Clone, Debug, Default)]
pub struct FlipEmbeddings {
    /// Embedding size `D` (0 until the first batch).
    pub dim: usize,
    /// The images as they are, `(N, D)`.
    pub plain: Vec<f32>,
    /// Their mirror images, `(N, D)`.
    pub flipped: Vec<f32>,
}

impl FlipEmbeddings {
    /// Embeds `count` images `u8 (N, H, W, 3)` of the backend's input size and their mirror images.
    pub fn embed(backend: &mut dyn Backend, images: &[u8], count: usize) -> Result<Self> {
        let mut e = Self::default();
        e.extend(backend, images, count)?;
        Ok(e)
    }

    /// Embeds `count` images `u8 (N, H, W, 3)` and their mirror images, and appends them.
    pub fn extend(&mut self, backend: &mut dyn Backend, images: &[u8], count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let plain = backend.embed(images, &vec![false; count])?;
        let flipped = backend.embed(images, &vec![true; count])?;
        ensure!(
            plain.len() == flipped.len() && plain.len() % count == 0 && !plain.is_empty(),
            "the backend returned {} and {} values for {count} images",
            plain.len(),
            flipped.len()
        );
        let dim = plain.len() / count;
        ensure!(self.dim == 0 || self.dim == dim, "the embedding size changed from {} to {dim}", self.dim);
        self.dim = dim;
        self.plain.extend_from_slice(&plain);
        self.flipped.extend_from_slice(&flipped);
        Ok(())
    }

    /// Number of images `N`.
    pub fn len(&self) -> usize {
        self.plain.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether no image was embedded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The protocol's fused embeddings `(N, D)`: `l2normalize(e + e_flip)` of every image
    /// ([`elasticface_core::embedding::fuse_flip`]).
    pub fn fused(&self) -> Result<Vec<f32>> {
        let d = self.dim;
        let mut out = vec![0.0; self.plain.len()];
        let mut sum = vec![0.0; d];
        for (i, ((e, f), o)) in
            self.plain.chunks_exact(d).zip(self.flipped.chunks_exact(d)).zip(out.chunks_exact_mut(d)).enumerate()
        {
            fuse_flip(e, f, &mut sum, o).map_err(|err| anyhow!("image {i}: {err}"))?;
        }
        Ok(out)
    }
}

/// Scores interleaved pairs (image `2p` against `2p + 1`, `issame[p]`) with the LFW protocol: fused distances,
/// 10-fold accuracy, TAR at [`REPORTED_FARS`] and the best threshold over all pairs.
pub fn score(emb: &FlipEmbeddings, issame: &[bool]) -> Result<VerifyReport> {
    let (n, d) = (emb.len(), emb.dim);
    ensure!(n == 2 * issame.len(), "{n} embedded images for {} pairs", issame.len());
    // Split the interleaved (2P, D) embeddings into the first and the second image of each pair.
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
    let ((e1, e2), (f1, f2)) = (split(&emb.plain), split(&emb.flipped));
    let fp = FlipPairs { dim: d, emb1: &e1, emb1_flip: &f1, emb2: &e2, emb2_flip: &f2 };
    let mut dist = vec![0.0; issame.len()];
    fused_distances(&fp, &mut vec![0.0; 3 * d], &mut dist)?;
    let k = kfold_accuracy(&dist, issame)?;
    let tar_at_far = tar_reports(&dist, issame, &REPORTED_FARS)?;
    let (best_threshold, best_threshold_accuracy) = best_threshold(&dist, issame)?;
    Ok(VerifyReport {
        pairs: issame.len(),
        same_pairs: issame.iter().filter(|&&s| s).count(),
        accuracy: k.mean,
        accuracy_std: k.std,
        fold_accuracies: k.accuracies.to_vec(),
        fold_thresholds: k.thresholds.to_vec(),
        threshold: k.thresholds.iter().sum::<f64>() / k.thresholds.len() as f64,
        best_threshold,
        best_threshold_accuracy,
        tar_at_far,
        dist,
    })
}

/// The protocol's candidate threshold with the most correct decisions over all pairs (the first of equals) and
/// its accuracy, from the core's ROC points at the 400 candidates.
fn best_threshold(dist: &[f32], issame: &[bool]) -> Result<(f64, f64)> {
    let same = issame.iter().filter(|&&s| s).count();
    let different = issame.len() - same;
    if same == 0 || different == 0 {
        // A ROC needs both kinds; with one kind, accepting all (or none) is always right.
        let t = if same > 0 { protocol_threshold(THRESHOLD_COUNT - 1) } else { 0.0 };
        let correct = dist.iter().zip(issame).filter(|&(&d, &s)| (f64::from(d) < t) == s).count();
        return Ok((t, correct as f64 / issame.len().max(1) as f64));
    }
    let thresholds: Vec<f64> = (0..THRESHOLD_COUNT).map(protocol_threshold).collect();
    let mut points = vec![RocPoint::default(); THRESHOLD_COUNT];
    roc(dist, issame, &thresholds, &mut points)?;
    // Rates are exact ratios of counts below 2^52, so the counts come back exactly.
    let correct =
        |p: &RocPoint| (p.tar * same as f64).round() as usize + different - (p.far * different as f64).round() as usize;
    let mut best = 0;
    for (i, p) in points.iter().enumerate() {
        if correct(p) > correct(&points[best]) {
            best = i;
        }
    }
    Ok((thresholds[best], correct(&points[best]) as f64 / issame.len() as f64))
}

/// ROC points for a plot on a logarithmic FAR axis, from (0, 0) to (1, 1): the exact curve (a threshold just above
/// each distinct distance) when there are at most `max_points` distinct distances; else at most `max_points`
/// thresholds at impostor distances whose ranks are spaced evenly on a logarithmic scale, from the first impostor
/// to the last (the threshold at the `k`-th smallest impostor distance accepts the `k - 1` below it: the top of
/// the curve's step at FAR `(k - 1) / M`, the point TAR at FAR reads), so that FAR 1e-6 .. 1e-3 of IJB-C's 15.6
/// million impostor pairs get as many points as 1e-3 .. 1. The points are those the core's [`roc`] gives at these
/// thresholds (and its errors), counted over the distances sorted once: `O(n log n)`.
pub fn roc_curve(dist: &[f32], issame: &[bool], max_points: usize) -> Result<Vec<RocPoint>> {
    // Checks the lengths, the distances and that both kinds of pair are present.
    roc(dist, issame, &[], &mut [])?;
    let mut sorted: Vec<(f32, bool)> = dist.iter().copied().zip(issame.iter().copied()).collect();
    sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // same_before[k]: same pairs among the k smallest distances.
    let mut same_before = Vec::with_capacity(sorted.len() + 1);
    same_before.push(0usize);
    for &(_, s) in &sorted {
        same_before.push(same_before.last().copied().unwrap_or(0) + usize::from(s));
    }
    let same = same_before[sorted.len()];
    let different = sorted.len() - same;
    let mut cuts: Vec<f64> = sorted.iter().map(|&(d, _)| f64::from(d).next_up()).collect();
    cuts.dedup();
    let keep = max_points.max(3);
    if cuts.len() > keep {
        let impostors: Vec<f32> = sorted.iter().filter(|&&(_, s)| !s).map(|&(d, _)| d).collect();
        // Ranks 1 ..= M, evenly spaced in log; the last point accepts everything.
        let (steps, log_m) = (keep - 2, (different as f64).ln());
        cuts = (0..steps)
            .map(|i| {
                let rank = (log_m * i as f64 / (steps - 1).max(1) as f64).exp().round() as usize;
                f64::from(impostors[rank.clamp(1, different) - 1])
            })
            .collect();
        cuts.dedup();
        cuts.push(f64::INFINITY);
    }
    let point = |threshold: f64| {
        let accepted = sorted.partition_point(|&(d, _)| f64::from(d) < threshold);
        let true_accepts = same_before[accepted];
        RocPoint {
            threshold,
            far: (accepted - true_accepts) as f64 / different as f64,
            tar: true_accepts as f64 / same as f64,
        }
    };
    let mut thresholds: Vec<f64> = std::iter::once(0.0).chain(cuts).collect();
    // An impostor at distance 0 gives the first threshold again.
    thresholds.dedup();
    Ok(thresholds.into_iter().map(point).collect())
}

/// Embeds both images of every pair and their mirror images on `backend`, fuses (`l2normalize(e + e_flip)`)
/// and scores with the LFW protocol ([`score`]).
pub fn verify(backend: &mut dyn Backend, pairs: &Pairs) -> Result<VerifyReport> {
    let emb = FlipEmbeddings::embed(backend, &pairs.images, 2 * pairs.len())?;
    score(&emb, &pairs.issame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep gives exactly the core's ROC points at the thresholds it chose: ties within and across kinds, a
    /// zero, thinned and not.
    #[test]
    fn roc_curve_is_the_cores_roc() {
        let mut rng = Philox4x32::new(3, 0);
        let n = 3000;
        // Distances on a coarse grid, so many pairs tie.
        let dist: Vec<f32> = (0..n).map(|_| (rng.next_u32() % 700) as f32 / 200.0).collect();
        let issame: Vec<bool> = dist.iter().map(|&d| (d < 1.2) != rng.next_u32().is_multiple_of(5)).collect();
        for max_points in [3, 100, 5000] {
            let curve = roc_curve(&dist, &issame, max_points).unwrap();
            let thresholds: Vec<f64> = curve.iter().map(|p| p.threshold).collect();
            assert_eq!(thresholds[0], 0.0);
            assert!(thresholds.windows(2).all(|w| w[0] < w[1]), "ascending");
            let distinct = {
                let mut d = dist.clone();
                d.sort_by(f32::total_cmp);
                d.dedup();
                d.len()
            };
            if distinct <= max_points {
                assert_eq!(curve.len(), 1 + distinct, "the exact curve");
            } else {
                assert!(curve.len() <= max_points && curve.len() > max_points.min(40) / 2, "{}", curve.len());
                // Thinned on impostor ranks spaced in log: the curve reaches down to its first steps (distances
                // tie in threes here).
                let lowest = curve.iter().map(|p| p.far).filter(|&f| f > 0.0).fold(1.0, f64::min);
                let different = issame.iter().filter(|&&s| !s).count() as f64;
                assert!(max_points < 100 || lowest <= 10.0 / different, "lowest FAR {lowest}");
            }
            let mut want = vec![RocPoint::default(); thresholds.len()];
            roc(&dist, &issame, &thresholds, &mut want).unwrap();
            assert_eq!(curve, want);
            let last = curve.last().unwrap();
            assert_eq!((last.far, last.tar), (1.0, 1.0));
        }
        assert!(roc_curve(&dist, &vec![true; n], 10).is_err(), "no different pair");
        assert!(roc_curve(&[f32::NAN, 1.0], &[true, false], 10).is_err());
    }
}
