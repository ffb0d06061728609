//! Face verification on labelled pairs: the LFW 10-fold protocol, TAR at a fixed FAR, and ROC points.
//!
//! A pair is a squared L2 distance `dist` between the two faces' embeddings and a label `issame`.
//! Every function here predicts **"same" iff `dist < threshold`** (strictly), as insightface's
//! `verification.py` does, so that the three measures agree on what a threshold means.
//!
//! - [`fused_distances`]: the protocol's distances: each image is embedded with its horizontal flip,
//!   `fused = l2normalize(e + e_flip)` ([`crate::embedding::fuse_flip`]), `dist = ||fused_1 - fused_2||^2`.
//! - [`kfold_accuracy`]: the 10-fold protocol, bit for bit as the numpy reference (thresholds, fold
//!   accuracies, mean and population standard deviation).
//! - [`tar_at_far`]: the true-accept rate at the threshold that keeps the false-accept rate at or below a
//!   target.
//! - [`roc`], [`roc_evenly_spaced`]: (FAR, TAR) at given thresholds.
//! - [`mate_rank`], [`tpir_at_fpir`]: 1:N search, where a probe is compared with every entry of a gallery: the
//!   rank of its mate, and the identification rate at a false-positive identification rate.
//!
//! Nothing allocates: results are fixed-size or written into caller buffers. Every function checks its
//! lengths, rejects NaN and infinite distances with [`Error::NonFinite`], and never panics.

use crate::embedding::{fuse_flip, squared_l2};
use crate::error::{check_finite, check_len, Error};

/// Number of folds of the protocol.
pub const FOLDS: usize = 10;

/// Number of candidate thresholds of the protocol: `0.00, 0.01, ..., 3.99`.
pub const THRESHOLD_COUNT: usize = 400;

/// Spacing of the protocol's candidate thresholds.
pub const THRESHOLD_STEP: f64 = 0.01;

/// Candidate threshold `i` of the protocol: `i as f64 * 0.01`, the value `numpy.arange(0, 4, 0.01)[i]`
/// holds (numpy fills an arange as `start + i * step`, and `start` is 0).
pub fn protocol_threshold(i: usize) -> f64 {
    i as f64 * THRESHOLD_STEP
}

/// The four embeddings of `P` verification pairs, each `(P, dim)` row-major: both images of each pair and
/// their horizontal flips.
#[derive(Clone, Copy, Debug)]
pub struct FlipPairs<'a> {
    /// Embedding size `D`.
    pub dim: usize,
    /// First image of each pair, `(P, D)`.
    pub emb1: &'a [f32],
    /// Its horizontal flip, `(P, D)`.
    pub emb1_flip: &'a [f32],
    /// Second image of each pair, `(P, D)`.
    pub emb2: &'a [f32],
    /// Its horizontal flip, `(P, D)`.
    pub emb2_flip: &'a [f32],
}

/// The protocol's distance of every pair: `dist[p] = ||f1 - f2||^2` with `f1 = l2normalize(emb1[p] +
/// emb1_flip[p])` and `f2` likewise ([`fuse_flip`], [`squared_l2`], all f32).
///
/// Shapes: `dist`: `(P)`; the embeddings `(P, D)`; `scratch`: `(3 D)` (the sum and the two fused vectors of
/// one pair). Errors: `D = 0` or `P * D` overflowing ([`Error::Shape`]), a length mismatch, a non-finite
/// embedding, a sum that overflows (`NonFinite` named `"emb1 + emb1_flip"` or `"emb2 + emb2_flip"`, at the
/// element index), or a sum of norm zero (`ZeroNorm` with the same names, at the pair index).
pub fn fused_distances(pairs: &FlipPairs<'_>, scratch: &mut [f32], dist: &mut [f32]) -> Result<(), Error> {
    let d = pairs.dim;
    if d == 0 {
        return Err(Error::Shape { what: "the embedding size must be positive" });
    }
    let n = dist.len().checked_mul(d).ok_or(Error::Shape { what: "pairs * dim overflows usize" })?;
    let s = d.checked_mul(3).ok_or(Error::Shape { what: "3 * dim overflows usize" })?;
    check_len("emb1", pairs.emb1, n)?;
    check_len("emb1_flip", pairs.emb1_flip, n)?;
    check_len("emb2", pairs.emb2, n)?;
    check_len("emb2_flip", pairs.emb2_flip, n)?;
    check_len("scratch", scratch, s)?;
    check_finite("emb1", pairs.emb1)?;
    check_finite("emb1_flip", pairs.emb1_flip)?;
    check_finite("emb2", pairs.emb2)?;
    check_finite("emb2_flip", pairs.emb2_flip)?;

    let (sum, fused) = scratch.split_at_mut(d);
    let (f1, f2) = fused.split_at_mut(d);
    let rows = pairs
        .emb1
        .chunks_exact(d)
        .zip(pairs.emb1_flip.chunks_exact(d))
        .zip(pairs.emb2.chunks_exact(d).zip(pairs.emb2_flip.chunks_exact(d)));
    for (p, (out, ((e1, e1f), (e2, e2f)))) in dist.iter_mut().zip(rows).enumerate() {
        fuse_flip(e1, e1f, sum, f1).map_err(|e| at_pair(e, "emb1 + emb1_flip", p, d))?;
        fuse_flip(e2, e2f, sum, f2).map_err(|e| at_pair(e, "emb2 + emb2_flip", p, d))?;
        *out = squared_l2(f1, f2)?;
    }
    Ok(())
}

/// Re-addresses an error of [`fuse_flip`] on pair `p` to the whole `(P, D)` input.
fn at_pair(e: Error, what: &'static str, p: usize, d: usize) -> Error {
    match e {
        Error::NonFinite { index, .. } => Error::NonFinite { what, index: p * d + index },
        Error::ZeroNorm { .. } => Error::ZeroNorm { what, index: p },
        other => other,
    }
}

/// The result of [`kfold_accuracy`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KFold {
    /// The threshold chosen for each fold (on the other nine).
    pub thresholds: [f64; FOLDS],
    /// The accuracy of each held-out fold at its threshold: correct decisions / pairs in the fold.
    pub accuracies: [f64; FOLDS],
    /// Mean of `accuracies`.
    pub mean: f64,
    /// Population standard deviation of `accuracies` (divisor 10, numpy's default `ddof = 0`).
    pub std: f64,
}

/// The LFW 10-fold verification protocol (insightface's `verification.py`).
///
/// 1. The `n` pairs are split into 10 consecutive folds; the first `n % 10` folds hold one pair more.
/// 2. For each fold `f`, every candidate threshold `t_i = i * 0.01`, `i = 0..400` ([`protocol_threshold`])
///    is scored on the other nine folds: `acc_i = #{p : (dist[p] < t_i) == issame[p]} / #pairs`, with `dist`
///    widened to f64 before the comparison. The first `i` that maximises `acc_i` (numpy's `argmax`) is fold
///    `f`'s threshold, and fold `f`'s accuracy is the same ratio on `f` itself at that threshold.
/// 3. `mean` and `std` (population) of the ten accuracies, summed in the order of numpy's pairwise
///    summation, so that all of [`KFold`] equals the numpy reference bit for bit.
///
/// Shapes: `dist`, `issame`: `(n)` with `n >= 10`. Errors: a length mismatch, `n < 10` ([`Error::Shape`]),
/// or a non-finite distance ([`Error::NonFinite`]). Cost: `400 n` comparisons, no allocation.
pub fn kfold_accuracy(dist: &[f32], issame: &[bool]) -> Result<KFold, Error> {
    check_len("issame", issame, dist.len())?;
    let n = dist.len();
    if n < FOLDS {
        return Err(Error::Shape { what: "the 10-fold protocol needs at least 10 pairs" });
    }
    check_finite("dist", dist)?;

    // Fold f holds pairs bounds[f]..bounds[f + 1].
    let mut bounds = [0usize; FOLDS + 1];
    for f in 0..FOLDS {
        bounds[f + 1] = bounds[f] + n / FOLDS + usize::from(f < n % FOLDS);
    }

    // Per fold, the best threshold index so far, its correct count on the other folds, and on the fold.
    let mut best = [0usize; FOLDS];
    let mut best_train = [0usize; FOLDS];
    let mut best_test = [0usize; FOLDS];
    for i in 0..THRESHOLD_COUNT {
        let t = protocol_threshold(i);
        let mut correct = [0usize; FOLDS];
        for (c, w) in correct.iter_mut().zip(bounds.windows(2)) {
            let (d, s) = (&dist[w[0]..w[1]], &issame[w[0]..w[1]]);
            *c = d.iter().zip(s).filter(|&(&d, &s)| (f64::from(d) < t) == s).count();
        }
        let total: usize = correct.iter().sum();
        for (f, &c) in correct.iter().enumerate() {
            // The training set has a fixed size per fold, so the best accuracy is the best count; only a
            // strictly better count replaces the earlier threshold (argmax keeps the first maximum).
            let train = total - c;
            if i == 0 || train > best_train[f] {
                best[f] = i;
                best_train[f] = train;
                best_test[f] = c;
            }
        }
    }

    let mut result = KFold { thresholds: [0.0; FOLDS], accuracies: [0.0; FOLDS], mean: 0.0, std: 0.0 };
    for f in 0..FOLDS {
        result.thresholds[f] = protocol_threshold(best[f]);
        result.accuracies[f] = best_test[f] as f64 / (bounds[f + 1] - bounds[f]) as f64;
    }
    let mean = numpy_sum(&result.accuracies) / FOLDS as f64;
    let mut sq = [0.0f64; FOLDS];
    for (s, &a) in sq.iter_mut().zip(&result.accuracies) {
        *s = (a - mean) * (a - mean);
    }
    result.mean = mean;
    result.std = libm::sqrt(numpy_sum(&sq) / FOLDS as f64);
    Ok(result)
}

/// `sum(x)` in the order numpy's `add.reduce` uses for a contiguous f64 array (its `pairwise_sum`):
/// fewer than 8 elements in sequence; up to 128 with eight interleaved partial sums combined as
/// `((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`, then the remainder in sequence; longer arrays split
/// in two halves (the first a multiple of 8 long) summed recursively.
fn numpy_sum(x: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&x[..8]);
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let head = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        x[whole..].iter().fold(head, |acc, &v| acc + v)
    } else {
        let half = n / 2 - (n / 2) % 8;
        numpy_sum(&x[..half]) + numpy_sum(&x[half..])
    }
}

/// The result of [`tar_at_far`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TarAtFar {
    /// The threshold: pairs with `dist < threshold` are accepted. `+inf` when `far = 1`.
    pub threshold: f32,
    /// True-accept rate: accepted same pairs / same pairs.
    pub tar: f64,
    /// The false-accept rate actually reached: accepted different pairs / different pairs (at most the
    /// target; below it when several different pairs share the distance at the threshold).
    pub far: f64,
}

/// True-accept rate at a target false-accept rate `far`.
///
/// With `M` different ("impostor") pairs, at most `k = floor(far * M)` of them may be accepted (`far * M`
/// computed in f64 from the exact value of `far`). The threshold is the **largest** value whose false-accept
/// rate `#{different p : dist[p] < threshold} / M` does not exceed `far`: the `(k + 1)`-th smallest
/// impostor distance (any larger threshold would also accept that pair), or `+inf` when `k = M`. TAR is
/// `#{same p : dist[p] < threshold} / #same`.
///
/// Returns `Ok(None)` when the pairs cannot resolve `far`: fewer than `1 / far` impostor pairs (`k = 0`),
/// where the only admissible FAR is 0.
///
/// Shapes: `dist`, `issame`: `(n)`; `scratch`: at least `M` elements (`n` always suffices), overwritten
/// with the impostor distances in selection order. Errors: a length mismatch or a too short `scratch`
/// ([`Error::Length`]), a non-finite distance, `far` outside `(0, 1]` ([`Error::Config`]), or no same pair
/// ([`Error::Shape`]). Cost: `O(n)` (a selection, no sort).
pub fn tar_at_far(dist: &[f32], issame: &[bool], far: f64, scratch: &mut [f32]) -> Result<Option<TarAtFar>, Error> {
    check_len("issame", issame, dist.len())?;
    check_finite("dist", dist)?;
    if !(far > 0.0 && far <= 1.0) {
        return Err(Error::Config { what: "the target FAR must lie in (0, 1]" });
    }
    let (same, different) = class_counts(issame);
    if same == 0 {
        return Err(Error::Shape { what: "TAR needs at least one same pair" });
    }
    if scratch.len() < different {
        return Err(Error::Length { what: "scratch", expected: different, got: scratch.len() });
    }
    let impostors = dist.iter().zip(issame).filter(|&(_, &s)| !s).map(|(&d, _)| d);
    let Some(threshold) = threshold_admitting(far, different, impostors, scratch) else {
        return Ok(None);
    };
    let accepted = |want: bool| dist.iter().zip(issame).filter(|&(&d, &s)| s == want && d < threshold).count();
    Ok(Some(TarAtFar {
        threshold,
        tar: accepted(true) as f64 / same as f64,
        far: accepted(false) as f64 / different as f64,
    }))
}

/// One point of a ROC curve.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RocPoint {
    /// Pairs with `dist < threshold` are accepted.
    pub threshold: f64,
    /// False-accept rate: accepted different pairs / different pairs.
    pub far: f64,
    /// True-accept rate: accepted same pairs / same pairs.
    pub tar: f64,
}

/// ROC points at the given thresholds: `out[i]` is (FAR, TAR) at `thresholds[i]`, comparing `dist` widened
/// to f64 as [`kfold_accuracy`] does. Thresholds may be in any order and may be infinite.
///
/// Shapes: `dist`, `issame`: `(n)`; `thresholds`, `out`: `(T)`. Errors: a length mismatch, a non-finite
/// distance, a NaN threshold ([`Error::NonFinite`]), or no same or no different pair ([`Error::Shape`]).
/// Cost: `T n` comparisons.
pub fn roc(dist: &[f32], issame: &[bool], thresholds: &[f64], out: &mut [RocPoint]) -> Result<(), Error> {
    check_len("out", out, thresholds.len())?;
    if let Some(index) = thresholds.iter().position(|t| t.is_nan()) {
        return Err(Error::NonFinite { what: "thresholds", index });
    }
    let counts = roc_counts(dist, issame)?;
    for (point, &t) in out.iter_mut().zip(thresholds) {
        *point = roc_point(dist, issame, counts, t);
    }
    Ok(())
}

/// ROC points at `out.len()` evenly spaced thresholds from `from` to `to`, both included (as
/// `numpy.linspace`): `t_i = from + (to - from) * i / (T - 1)`, the last one exactly `to`; a single point
/// is at `from`.
///
/// Errors: as [`roc`], and `from`, `to` or `to - from` not finite ([`Error::Config`]).
pub fn roc_evenly_spaced(dist: &[f32], issame: &[bool], from: f64, to: f64, out: &mut [RocPoint]) -> Result<(), Error> {
    if !(to - from).is_finite() {
        return Err(Error::Config { what: "ROC threshold range must be finite" });
    }
    let counts = roc_counts(dist, issame)?;
    let last = out.len().saturating_sub(1);
    for (i, point) in out.iter_mut().enumerate() {
        let t = if i == 0 {
            from
        } else if i == last {
            to
        } else {
            from + (to - from) * i as f64 / last as f64
        };
        *point = roc_point(dist, issame, counts, t);
    }
    Ok(())
}

/// Checks the pairs for a ROC and returns the numbers of same and different pairs (both non-zero).
fn roc_counts(dist: &[f32], issame: &[bool]) -> Result<(usize, usize), Error> {
    check_len("issame", issame, dist.len())?;
    check_finite("dist", dist)?;
    let (same, different) = class_counts(issame);
    if same == 0 || different == 0 {
        return Err(Error::Shape { what: "a ROC needs at least one same and one different pair" });
    }
    Ok((same, different))
}

/// FAR and TAR at threshold `t` (`counts` from [`roc_counts`]).
fn roc_point(dist: &[f32], issame: &[bool], (same, different): (usize, usize), t: f64) -> RocPoint {
    let (mut true_accepts, mut false_accepts) = (0usize, 0usize);
    for (&d, &s) in dist.iter().zip(issame) {
        if f64::from(d) < t {
            if s {
                true_accepts += 1;
            } else {
                false_accepts += 1;
            }
        }
    }
    RocPoint { threshold: t, far: false_accepts as f64 / different as f64, tar: true_accepts as f64 / same as f64 }
}

/// Where a probe's mate ranks when the probe searches a gallery: `1 + #{j != mate : dist[j] <= dist[mate]}`,
/// with `dist` the probe's distance to each gallery entry. Ties count against the mate (a search that cannot tell
/// two entries apart does not name the mate first), so rank 1 means the mate is strictly the nearest.
///
/// Shapes: `dist`: `(G)`. Errors: `mate >= G` ([`Error::Shape`]), a non-finite distance ([`Error::NonFinite`]).
/// Cost: `O(G)`.
pub fn mate_rank(dist: &[f32], mate: usize) -> Result<usize, Error> {
    check_finite("dist", dist)?;
    let Some(&d) = dist.get(mate) else {
        return Err(Error::Shape { what: "the mate's index lies outside the gallery" });
    };
    Ok(1 + dist.iter().enumerate().filter(|&(j, &x)| j != mate && x <= d).count())
}

/// The result of [`tpir_at_fpir`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TpirAtFpir {
    /// The threshold: a search answers only when its nearest entry has `dist < threshold`. `+inf` when `fpir = 1`.
    pub threshold: f32,
    /// True-positive identification rate: mated probes whose mate ranks first at a distance below the
    /// threshold / mated probes.
    pub tpir: f64,
    /// The false-positive identification rate reached: non-mated probes answered / non-mated probes (at most the
    /// target; below it when several share the distance at the threshold).
    pub fpir: f64,
}

/// Open-set identification (1:N search): the true-positive identification rate at a target false-positive
/// identification rate `fpir`, as NIST defines them for IJB-B/C.
///
/// Each probe searches the gallery. A mated probe (its subject is enrolled) is identified when its mate is the
/// nearest entry ([`mate_rank`] 1) and nearer than the threshold; a non-mated probe (its subject is not enrolled)
/// is falsely answered when its nearest entry is nearer than the threshold. With `M` non-mated probes, at most
/// `k = floor(fpir * M)` may be answered: the threshold is the largest value that keeps to that, the `(k + 1)`-th
/// smallest non-mated distance, or `+inf` when `k = M` (as [`tar_at_far`] chooses its threshold).
///
/// Shapes: `mated`: `(P)` the mated probes' distances to their mates; `first`: `(P)` whether each mate ranks first;
/// `non_mated`: `(M)` the non-mated probes' distances to their nearest entries; `scratch`: at least `M` elements,
/// overwritten. Returns `Ok(None)` when the probes cannot resolve `fpir` (fewer than `1 / fpir` non-mated
/// probes). Errors: a length mismatch or a too short `scratch` ([`Error::Length`]), a non-finite distance
/// ([`Error::NonFinite`]), `fpir` outside `(0, 1]` ([`Error::Config`]), or no mated probe ([`Error::Shape`]).
/// Cost: `O(P + M)` (a selection, no sort).
pub fn tpir_at_fpir(
    mated: &[f32],
    first: &[bool],
    non_mated: &[f32],
    fpir: f64,
    scratch: &mut [f32],
) -> Result<Option<TpirAtFpir>, Error> {
    check_len("first", first, mated.len())?;
    check_finite("mated", mated)?;
    check_finite("non_mated", non_mated)?;
    if !(fpir > 0.0 && fpir <= 1.0) {
        return Err(Error::Config { what: "the target FPIR must lie in (0, 1]" });
    }
    if mated.is_empty() {
        return Err(Error::Shape { what: "TPIR needs at least one mated probe" });
    }
    let m = non_mated.len();
    if scratch.len() < m {
        return Err(Error::Length { what: "scratch", expected: m, got: scratch.len() });
    }
    let Some(threshold) = threshold_admitting(fpir, m, non_mated.iter().copied(), scratch) else {
        return Ok(None);
    };
    let identified = mated.iter().zip(first).filter(|&(&d, &f)| f && d < threshold).count();
    let answered = non_mated.iter().filter(|&&d| d < threshold).count();
    Ok(Some(TpirAtFpir { threshold, tpir: identified as f64 / mated.len() as f64, fpir: answered as f64 / m as f64 }))
}

/// The largest threshold that accepts (`dist < threshold`) at most `k = floor(rate * M)` of `M` negatives (the
/// impostor pairs of [`tar_at_far`], the non-mated probes of [`tpir_at_fpir`]): the `(k + 1)`-th smallest negative
/// distance, `+inf` when `k = M`, `None` when `k = 0` (the rate cannot be resolved). `negatives` yields the `M`
/// distances, copied into `scratch` (at least `M` elements, checked by the caller) for the selection. `rate` lies in
/// `(0, 1]`, so `k <= M`: the cast saturates and floors.
fn threshold_admitting(rate: f64, m: usize, negatives: impl Iterator<Item = f32>, scratch: &mut [f32]) -> Option<f32> {
    let k = (rate * m as f64) as usize;
    if k == 0 {
        return None;
    }
    if k >= m {
        return Some(f32::INFINITY);
    }
    let s = &mut scratch[..m];
    for (slot, d) in s.iter_mut().zip(negatives) {
        *slot = d;
    }
    Some(*s.select_nth_unstable_by(k, f32::total_cmp).1)
}

/// Numbers of same and of different pairs.
fn class_counts(issame: &[bool]) -> (usize, usize) {
    let same = issame.iter().filter(|&&s| s).count();
    (same, issame.len() - same)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpy_arange_values() {
        assert_eq!(protocol_threshold(0), 0.0);
        assert_eq!(protocol_threshold(1), 0.01);
        // arange holds 35 * 0.01 = 0.35000000000000003, not the f64 nearest to 0.35 (51 of the 400 differ).
        assert_eq!(protocol_threshold(35), 0.35000000000000003);
        assert_ne!(protocol_threshold(35), 0.35);
        assert_eq!(protocol_threshold(399), 3.99);
    }

    #[test]
    fn numpy_sum_order() {
        // In sequence, 1 + 2^-53 rounds back to 1 every time; numpy's pairwise order adds the small
        // terms to each other first and keeps them.
        let e = f64::EPSILON / 2.0;
        let x = [1.0, e, e, e, e, e, e, e, 0.0, 0.0];
        assert_eq!(x.iter().fold(0.0, |a, &v| a + v), 1.0);
        assert_eq!(numpy_sum(&x), 1.0 + 6.0 * e);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(numpy_sum(&[0.5f64; 300]), 150.0);
        assert_eq!(numpy_sum(&[]), 0.0);
    }

    /// A direct transcription of the numpy reference: every fold, every threshold, train accuracy as a
    /// ratio, first maximum.
    fn kfold_naive(dist: &[f32], issame: &[bool]) -> ([f64; FOLDS], [f64; FOLDS]) {
        let n = dist.len();
        let mut sizes = [n / FOLDS; FOLDS];
        for s in sizes.iter_mut().take(n % FOLDS) {
            *s += 1;
        }
        let (mut th, mut acc) = ([0.0; FOLDS], [0.0; FOLDS]);
        let mut start = 0;
        for f in 0..FOLDS {
            let test = start..start + sizes[f];
            let (mut best_acc, mut best_t) = (-1.0f64, 0.0);
            for i in 0..THRESHOLD_COUNT {
                let t = protocol_threshold(i);
                let (mut ok, mut cnt) = (0usize, 0usize);
                for p in (0..n).filter(|p| !test.contains(p)) {
                    ok += usize::from((f64::from(dist[p]) < t) == issame[p]);
                    cnt += 1;
                }
                let a = ok as f64 / cnt as f64;
                if a > best_acc {
                    best_acc = a;
                    best_t = t;
                }
            }
            let ok = test.clone().filter(|&p| (f64::from(dist[p]) < best_t) == issame[p]).count();
            th[f] = best_t;
            acc[f] = ok as f64 / sizes[f] as f64;
            start += sizes[f];
        }
        (th, acc)
    }

    /// Deterministic pseudo-random pairs: same pairs near distance 0.8, different near 1.6, overlapping.
    fn synthetic(n: usize, dist: &mut [f32], issame: &mut [bool]) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for p in 0..n {
            issame[p] = next() < 0.5;
            let centre = if issame[p] { 0.8 } else { 1.6 };
            dist[p] = centre + (next() - 0.5) * 1.4;
        }
    }

    #[test]
    fn kfold_matches_a_direct_transcription() {
        for n in [10, 13, 57, 600] {
            let (mut dist, mut issame) = ([0.0f32; 600], [false; 600]);
            synthetic(n, &mut dist[..n], &mut issame[..n]);
            let r = kfold_accuracy(&dist[..n], &issame[..n]).unwrap();
            let (th, acc) = kfold_naive(&dist[..n], &issame[..n]);
            assert_eq!(r.thresholds, th, "n = {n}");
            assert_eq!(r.accuracies, acc, "n = {n}");
            let mean = numpy_sum(&acc) / 10.0;
            assert_eq!(r.mean, mean);
            let var = acc.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / 10.0;
            assert!((r.std - libm::sqrt(var)).abs() < 1e-12, "n = {n}: {} vs {}", r.std, libm::sqrt(var));
        }
    }

    #[test]
    fn kfold_on_separable_pairs() {
        // Same pairs at 0.5, different at 1.5: every threshold in (0.5, 1.5] separates them; the first is
        // 0.51, and every fold is perfect.
        let mut dist = [0.0f32; 20];
        let mut issame = [false; 20];
        for p in 0..20 {
            issame[p] = p % 2 == 0;
            dist[p] = if issame[p] { 0.5 } else { 1.5 };
        }
        let r = kfold_accuracy(&dist, &issame).unwrap();
        assert_eq!(r.thresholds, [protocol_threshold(51); FOLDS]);
        assert_eq!(r.accuracies, [1.0; FOLDS]);
        assert_eq!((r.mean, r.std), (1.0, 0.0));
    }

    #[test]
    fn kfold_fold_sizes_and_strict_comparison() {
        // 11 pairs: fold 0 holds pairs 0 and 1, the others one pair each. A same pair exactly at a
        // threshold is rejected (strict <).
        let mut dist = [2.0f32; 11];
        let mut issame = [false; 11];
        dist[0] = 0.0;
        issame[0] = true;
        let r = kfold_accuracy(&dist, &issame).unwrap();
        // Fold 0 holds the only same pair: trained on all-different folds, threshold 0 (rejects all)
        // is already perfect; pair 0 (dist 0, not < 0) is then misjudged: 1 of 2 correct.
        assert_eq!(r.thresholds[0], 0.0);
        assert_eq!(r.accuracies[0], 0.5);
        // Other folds: 0.01 is the first threshold accepting pair 0.
        assert_eq!(r.thresholds[1..], [0.01; 9]);
        assert_eq!(r.accuracies[1..], [1.0; 9]);
        assert_eq!(r.mean, 0.95);
        assert!((r.std - 0.15).abs() < 1e-15, "{}", r.std);
    }

    #[test]
    fn kfold_rejects_bad_input() {
        let (dist, issame) = ([1.0f32; 12], [true; 12]);
        assert!(matches!(kfold_accuracy(&dist[..9], &issame[..9]), Err(Error::Shape { .. })));
        assert_eq!(
            kfold_accuracy(&dist, &issame[..11]).map(|_| ()),
            Err(Error::Length { what: "issame", expected: 12, got: 11 })
        );
        let mut bad = dist;
        bad[4] = f32::NAN;
        assert_eq!(kfold_accuracy(&bad, &issame).map(|_| ()), Err(Error::NonFinite { what: "dist", index: 4 }));
        bad[4] = f32::INFINITY;
        assert!(kfold_accuracy(&bad, &issame).is_err());
    }

    #[test]
    fn fused_distances_of_hand_made_pairs() {
        // Pair 0: e + e_flip point the same way on both sides -> distance 0.
        // Pair 1: fused vectors (1, 0) and (0, 1) -> distance 2.
        let emb1 = [1.0, 1.0, 2.0, 0.0];
        let emb1_flip = [1.0, 1.0, 1.0, 0.0];
        let emb2 = [3.0, 3.0, 0.0, 0.5];
        let emb2_flip = [0.0, 0.0, 0.0, 0.5];
        let pairs = FlipPairs { dim: 2, emb1: &emb1, emb1_flip: &emb1_flip, emb2: &emb2, emb2_flip: &emb2_flip };
        let (mut scratch, mut dist) = ([0.0; 6], [9.0; 2]);
        fused_distances(&pairs, &mut scratch, &mut dist).unwrap();
        assert!(dist[0].abs() < 1e-7, "{dist:?}");
        assert_eq!(dist[1], 2.0);
    }

    #[test]
    fn fused_distances_rejects_bad_input() {
        let ok = [1.0f32; 4];
        let zero_sum = [1.0, 1.0, -1.0, -1.0];
        let mut nan = ok;
        nan[3] = f32::NAN;
        let (mut scratch, mut dist) = ([0.0; 6], [0.0; 2]);
        let p = FlipPairs { dim: 2, emb1: &ok, emb1_flip: &ok, emb2: &ok, emb2_flip: &ok };
        assert!(matches!(
            fused_distances(&FlipPairs { dim: 0, ..p }, &mut scratch, &mut dist),
            Err(Error::Shape { .. })
        ));
        assert_eq!(
            fused_distances(&p, &mut [0.0; 5], &mut dist),
            Err(Error::Length { what: "scratch", expected: 6, got: 5 })
        );
        assert_eq!(
            fused_distances(&p, &mut scratch, &mut [0.0; 3]),
            Err(Error::Length { what: "emb1", expected: 6, got: 4 })
        );
        let e = fused_distances(&FlipPairs { emb2_flip: &nan, ..p }, &mut scratch, &mut dist);
        assert_eq!(e, Err(Error::NonFinite { what: "emb2_flip", index: 3 }));
        let e = fused_distances(&FlipPairs { emb2_flip: &[1.0, 1.0, -1.0, -1.0], ..p }, &mut scratch, &mut dist);
        assert_eq!(e, Err(Error::ZeroNorm { what: "emb2 + emb2_flip", index: 1 }));
        let e = fused_distances(&FlipPairs { emb1: &zero_sum, emb1_flip: &ok, ..p }, &mut scratch, &mut dist);
        assert_eq!(e, Err(Error::ZeroNorm { what: "emb1 + emb1_flip", index: 1 }));
        let big = [f32::MAX; 4];
        let e = fused_distances(&FlipPairs { emb1: &big, emb1_flip: &big, ..p }, &mut scratch, &mut dist);
        assert_eq!(e, Err(Error::NonFinite { what: "emb1 + emb1_flip", index: 0 }));
    }

    #[test]
    fn tar_at_far_picks_the_largest_admissible_threshold() {
        // 10 impostors at 0.1 .. 1.0, 4 genuine pairs at 0.05, 0.35, 0.55, 2.0.
        let mut dist: [f32; 14] = core::array::from_fn(|i| (i + 1) as f32 * 0.1);
        let mut issame = [false; 14];
        dist[10..].copy_from_slice(&[0.05, 0.35, 0.55, 2.0]);
        issame[10..].fill(true);
        let mut scratch = [0.0f32; 14];
        // FAR 0.3: k = 3 impostors may pass; threshold = 4th smallest impostor = 0.4 (accepts 0.1, 0.2, 0.3).
        let r = tar_at_far(&dist, &issame, 0.3, &mut scratch).unwrap().unwrap();
        assert_eq!(r.threshold, dist[3]);
        assert_eq!((r.far, r.tar), (0.3, 0.5));
        // FAR 0.25 gives k = 2: threshold 0.3, only 0.05 genuine accepted.
        let r = tar_at_far(&dist, &issame, 0.25, &mut scratch).unwrap().unwrap();
        assert_eq!((r.threshold, r.far, r.tar), (dist[2], 0.2, 0.25));
        // FAR 1: everything accepted.
        let r = tar_at_far(&dist, &issame, 1.0, &mut scratch).unwrap().unwrap();
        assert_eq!((r.threshold, r.far, r.tar), (f32::INFINITY, 1.0, 1.0));
        // FAR 0.05 < 1/10 cannot be resolved with 10 impostors.
        assert_eq!(tar_at_far(&dist, &issame, 0.05, &mut scratch), Ok(None));
        // A scratch of exactly M elements is enough.
        assert!(tar_at_far(&dist, &issame, 0.3, &mut scratch[..10]).unwrap().is_some());
    }

    #[test]
    fn tar_at_far_with_tied_impostors_stays_below_the_target() {
        // Impostors 0.2, 0.2, 0.2, 0.9: FAR 0.5 allows 2, but a threshold above 0.2 would accept three;
        // the threshold is 0.2 and the FAR reached is 0.
        let dist = [0.2, 0.2, 0.2, 0.9, 0.1];
        let issame = [false, false, false, false, true];
        let r = tar_at_far(&dist, &issame, 0.5, &mut [0.0; 5]).unwrap().unwrap();
        assert_eq!((r.threshold, r.far, r.tar), (0.2, 0.0, 1.0));
    }

    #[test]
    fn tar_at_far_rejects_bad_input() {
        let dist = [0.1, 0.5, 0.9];
        let issame = [true, false, false];
        let mut s = [0.0; 3];
        for far in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(matches!(tar_at_far(&dist, &issame, far, &mut s), Err(Error::Config { .. })), "{far}");
        }
        assert_eq!(
            tar_at_far(&dist, &issame, 0.5, &mut s[..1]),
            Err(Error::Length { what: "scratch", expected: 2, got: 1 })
        );
        assert!(matches!(tar_at_far(&dist, &[false; 3], 0.5, &mut s), Err(Error::Shape { .. })));
        assert!(matches!(tar_at_far(&dist, &issame[..2], 0.5, &mut s), Err(Error::Length { .. })));
        assert_eq!(
            tar_at_far(&[0.1, f32::NAN, 0.9], &issame, 0.5, &mut s),
            Err(Error::NonFinite { what: "dist", index: 1 })
        );
        // Only same pairs: no impostor, FAR unresolvable.
        assert_eq!(tar_at_far(&dist, &[true; 3], 0.5, &mut s), Ok(None));
    }

    #[test]
    fn roc_points() {
        let dist = [0.1, 0.5, 0.9, 0.3, 1.2];
        let issame = [true, true, false, false, false];
        let mut out = [RocPoint::default(); 4];
        roc(&dist, &issame, &[0.0, 0.4, f64::INFINITY, 1.0], &mut out).unwrap();
        let got: [(f64, f64); 4] = core::array::from_fn(|i| (out[i].far, out[i].tar));
        assert_eq!(got, [(0.0, 0.0), (1.0 / 3.0, 0.5), (1.0, 1.0), (2.0 / 3.0, 1.0)]);
        assert_eq!(out[1].threshold, 0.4);

        let mut even = [RocPoint::default(); 5];
        roc_evenly_spaced(&dist, &issame, 0.0, 2.0, &mut even).unwrap();
        let t: [f64; 5] = core::array::from_fn(|i| even[i].threshold);
        assert_eq!(t, [0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!((even[1].far, even[1].tar), (1.0 / 3.0, 0.5)); // 0.5 itself is not < 0.5
        assert_eq!((even[4].far, even[4].tar), (1.0, 1.0));
        let mut one = [RocPoint::default(); 1];
        roc_evenly_spaced(&dist, &issame, 0.7, 2.0, &mut one).unwrap();
        assert_eq!(one[0].threshold, 0.7);
        roc_evenly_spaced(&dist, &issame, 0.7, 2.0, &mut []).unwrap();
    }

    #[test]
    fn roc_rejects_bad_input() {
        let dist = [0.1, 0.5];
        let issame = [true, false];
        let mut out = [RocPoint::default(); 2];
        assert_eq!(
            roc(&dist, &issame, &[0.1, f64::NAN], &mut out),
            Err(Error::NonFinite { what: "thresholds", index: 1 })
        );
        assert_eq!(roc(&dist, &issame, &[0.1], &mut out), Err(Error::Length { what: "out", expected: 1, got: 2 }));
        assert!(matches!(roc(&dist, &[true, true], &[0.1, 0.2], &mut out), Err(Error::Shape { .. })));
        assert!(matches!(roc(&dist, &[false, false], &[0.1, 0.2], &mut out), Err(Error::Shape { .. })));
        assert_eq!(
            roc(&[f32::NAN, 0.1], &issame, &[0.1, 0.2], &mut out),
            Err(Error::NonFinite { what: "dist", index: 0 })
        );
        assert!(matches!(roc_evenly_spaced(&dist, &issame, 0.0, f64::INFINITY, &mut out), Err(Error::Config { .. })));
        assert!(matches!(roc_evenly_spaced(&dist, &issame, f64::NAN, 1.0, &mut out), Err(Error::Config { .. })));
        assert!(matches!(roc_evenly_spaced(&dist, &issame, -f64::MAX, f64::MAX, &mut out), Err(Error::Config { .. })));
    }

    #[test]
    fn mate_rank_counts_ties_against_the_mate() {
        let dist = [0.9, 0.3, 0.5, 0.3, 1.2];
        assert_eq!(mate_rank(&dist, 1), Ok(2)); // entry 3 ties with the mate
        assert_eq!(mate_rank(&dist, 2), Ok(3));
        assert_eq!(mate_rank(&dist, 4), Ok(5));
        assert_eq!(mate_rank(&[0.2, 0.7], 0), Ok(1));
        assert_eq!(mate_rank(&[0.2], 0), Ok(1));
        assert!(matches!(mate_rank(&dist, 5), Err(Error::Shape { .. })));
        assert_eq!(mate_rank(&[0.1, f32::NAN], 0), Err(Error::NonFinite { what: "dist", index: 1 }));
    }

    #[test]
    fn tpir_at_fpir_keeps_to_the_allowed_false_answers() {
        // Ten non-mated probes: FPIR 0.2 allows two answered, so the threshold is the third smallest (0.3).
        let non_mated = [0.9, 0.1, 0.7, 0.3, 0.2, 1.5, 0.8, 0.6, 1.1, 0.5];
        let mated = [0.05, 0.25, 0.29, 0.3, 0.15];
        let first = [true, true, true, true, false];
        let mut scratch = [0.0f32; 10];
        let t = tpir_at_fpir(&mated, &first, &non_mated, 0.2, &mut scratch).unwrap().unwrap();
        assert_eq!(t.threshold, 0.3);
        assert_eq!(t.fpir, 0.2);
        // 0.3 is not below the threshold; 0.15 is, but its mate does not rank first.
        assert_eq!(t.tpir, 3.0 / 5.0);
        let t = tpir_at_fpir(&mated, &first, &non_mated, 0.1, &mut scratch).unwrap().unwrap();
        assert_eq!((t.threshold, t.fpir, t.tpir), (0.2, 0.1, 1.0 / 5.0));
        // FPIR 1: every search answers; only mates ranked first count.
        let t = tpir_at_fpir(&mated, &first, &non_mated, 1.0, &mut scratch).unwrap().unwrap();
        assert_eq!((t.threshold, t.fpir, t.tpir), (f32::INFINITY, 1.0, 4.0 / 5.0));
        // Fewer than 1 / FPIR non-mated probes: unresolved; none at all likewise.
        assert_eq!(tpir_at_fpir(&mated, &first, &non_mated, 0.05, &mut scratch), Ok(None));
        assert_eq!(tpir_at_fpir(&mated, &first, &[], 0.5, &mut []), Ok(None));
        // Ties at the threshold: fewer answered than allowed, never more.
        let tied = [0.4, 0.4, 0.4, 0.9];
        let t = tpir_at_fpir(&[0.39], &[true], &tied, 0.5, &mut scratch).unwrap().unwrap();
        assert_eq!((t.threshold, t.fpir, t.tpir), (0.4, 0.0, 1.0));
    }

    #[test]
    fn tpir_at_fpir_rejects_bad_input() {
        let mut scratch = [0.0f32; 4];
        let non_mated = [0.5, 0.6];
        assert_eq!(
            tpir_at_fpir(&[0.1], &[true, false], &non_mated, 0.5, &mut scratch),
            Err(Error::Length { what: "first", expected: 1, got: 2 })
        );
        assert!(matches!(tpir_at_fpir(&[], &[], &non_mated, 0.5, &mut scratch), Err(Error::Shape { .. })));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(matches!(tpir_at_fpir(&[0.1], &[true], &non_mated, bad, &mut scratch), Err(Error::Config { .. })));
        }
        assert_eq!(
            tpir_at_fpir(&[f32::INFINITY], &[false], &non_mated, 0.5, &mut scratch),
            Err(Error::NonFinite { what: "mated", index: 0 })
        );
        assert_eq!(
            tpir_at_fpir(&[0.1], &[true], &[0.2, f32::NAN], 0.5, &mut scratch),
            Err(Error::NonFinite { what: "non_mated", index: 1 })
        );
        assert_eq!(
            tpir_at_fpir(&[0.1], &[true], &non_mated, 0.5, &mut scratch[..1]),
            Err(Error::Length { what: "scratch", expected: 2, got: 1 })
        );
    }
}
