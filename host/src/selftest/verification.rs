//! `verification.safetensors`: the LFW 10-fold protocol on synthetic pairs, computed by PyTorch (fused embeddings
//! and distances, in f32) and numpy (the protocol, in f64). We recompute everything with the core:
//! - `dist`: fused embeddings `l2normalize(emb + emb_flip)` and their squared distances
//!   ([`elasticface_core::verify::fused_distances`]);
//! - `fold_threshold`, `fold_accuracy`, `accuracy_mean`, `accuracy_std` from our distances
//!   ([`elasticface_core::verify::kfold_accuracy`]), exactly;
//! - the same four from the reference's own distances, which separates the protocol from distance rounding;
//! - how many protocol decisions (pair, threshold) our distances and the reference's decide differently, which
//!   must be 0 for the exact comparisons above to be meaningful rather than lucky.
//!
//! Every value of the file is f32; the protocol's values were f64 in numpy, rounded to f32 when saved. We round
//! ours the same way and compare exactly:
//! - thresholds are `i * 0.01`: two different candidates differ by 0.01, far more than f32 rounding, so equal
//!   f32 values mean the same candidate `i`, hence the same f64 threshold;
//! - fold accuracies are `correct / pairs_in_fold`; with at most 2^24 pairs per fold two different counts stay
//!   different in f32, so equal f32 values mean equal counts;
//! - mean and std: the core sums in numpy's pairwise order, so its f64 values are numpy's bit for bit, and so are
//!   their f32 roundings. (Had the f64 values differed by an ulp, the f32 roundings could still differ in the
//!   rare case that the two straddle an f32 rounding boundary; they do not.)
//!
//! Rounding and the thresholds, measured on the bundled file: our f32 distances differ from PyTorch's by up to
//! 7e-7 (3 ulp), and one pair (504) lies closer than that to a threshold: its distance is 0.64000005, 4.5e-8
//! above 0.64 (the next f32 above 0.64's f32 rounding). Its decision could have flipped; it does not (our value
//! is the reference's, bit for bit), and no other decision does: `decision_flips` is 0. No reference distance
//! equals a threshold rounded to f32 either: that is the only case where numpy 1.x (which compares an f32 array
//! with an f64 scalar in f32) and numpy 2 (in f64, as we do) would disagree, since no f32 value lies strictly
//! between a threshold and its f32 rounding. So the exact matches do not depend on which numpy made the file.

use anyhow::{bail, Result};
use elasticface_core::verify::{
    fused_distances, kfold_accuracy, protocol_threshold, FlipPairs, KFold, THRESHOLD_COUNT,
};

use crate::reference::{Check, Tolerance};
use crate::tensorfile::TensorFile;

/// Distances: both sides compute `sum_k (f1_k - f2_k)^2` of unit vectors in f32, PyTorch with its own reduction
/// order for the norms and the sum. Values lie in [0, 4]; each of the ~3 D roundings contributes at most
/// 2^-24 relative, so for D = 16 a bound of 1e-6 absolute plus 1e-6 relative covers the worst case with margin
/// (measured: a few 1e-7). A wrong formula (no flip, no normalisation, cosine instead of distance) errs by
/// O(1e-2..1).
const DIST: Tolerance = Tolerance::new(1e-6, 1e-6);

/// Runs the file through the core and compares every tensor.
pub fn check_cpu(file: &TensorFile) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Err(e) = run(file, &mut checks) {
        checks.push(Check::failed("verification", format!("{e:#}")));
    }
    checks
}

/// Fills `checks`; an error ends the run (the checks so far are kept).
fn run(file: &TensorFile, checks: &mut Vec<Check>) -> Result<()> {
    let issame: Vec<bool> = file
        .i64("issame")?
        .iter()
        .map(|&s| match s {
            0 => Ok(false),
            1 => Ok(true),
            other => bail!("`issame` holds {other}, expected 0 or 1"),
        })
        .collect::<Result<_>>()?;
    let pairs = issame.len();
    let shape = &file.get("emb1")?.shape;
    let [p, dim] = shape[..] else { bail!("`emb1` has shape {shape:?}, expected [pairs, dim]") };
    if p != pairs {
        bail!("`emb1` holds {p} pairs but `issame` {pairs}");
    }

    // Distances of the fused embeddings.
    let flips = FlipPairs {
        dim,
        emb1: file.f32("emb1")?,
        emb1_flip: file.f32("emb1_flip")?,
        emb2: file.f32("emb2")?,
        emb2_flip: file.f32("emb2_flip")?,
    };
    let mut dist = vec![0.0f32; pairs];
    let mut scratch = vec![0.0f32; 3 * dim];
    if let Err(e) = fused_distances(&flips, &mut scratch, &mut dist) {
        checks.push(Check::failed("verification.dist", format!("core: {e}")));
        return Ok(());
    }
    let want_dist = file.f32("dist")?;
    checks.push(Check::compare("verification.dist", &dist, want_dist, DIST));

    // The protocol on our distances, then on the reference's.
    let want = Protocol {
        thresholds: file.f32("fold_threshold")?,
        accuracies: file.f32("fold_accuracy")?,
        mean: file.scalar("accuracy_mean")?,
        std: file.scalar("accuracy_std")?,
    };
    match kfold_accuracy(&dist, &issame) {
        Ok(got) => want.compare("verification", &got, checks),
        Err(e) => checks.push(Check::failed("verification.fold_threshold", format!("core: {e}"))),
    }
    match kfold_accuracy(want_dist, &issame) {
        Ok(got) => want.compare("verification.from_reference_dist", &got, checks),
        Err(e) => checks.push(Check::failed("verification.from_reference_dist", format!("core: {e}"))),
    }

    // Decisions that f32 rounding could flip.
    let flips = decision_flips(&dist, want_dist);
    checks.push(Check::exact("verification.decision_flips", flips as f64, 0.0));
    let ties = f32_threshold_ties(want_dist);
    checks.push(Check::exact("verification.reference_dist_on_f32_threshold", ties as f64, 0.0));
    Ok(())
}

/// The protocol's results as stored in the file (f32).
struct Protocol<'a> {
    thresholds: &'a [f32],
    accuracies: &'a [f32],
    mean: f32,
    std: f32,
}

impl Protocol<'_> {
    /// Compares our f64 results, rounded to f32 as the reference's were when saved, exactly.
    fn compare(&self, prefix: &str, got: &KFold, checks: &mut Vec<Check>) {
        let thresholds = got.thresholds.map(|t| t as f32);
        let accuracies = got.accuracies.map(|a| a as f32);
        let exact = Tolerance::EXACT;
        checks.push(Check::compare(format!("{prefix}.fold_threshold"), &thresholds, self.thresholds, exact));
        checks.push(Check::compare(format!("{prefix}.fold_accuracy"), &accuracies, self.accuracies, exact));
        checks.push(Check::compare(format!("{prefix}.accuracy_mean"), &[got.mean as f32], &[self.mean], exact));
        checks.push(Check::compare(format!("{prefix}.accuracy_std"), &[got.std as f32], &[self.std], exact));
    }
}

/// Number of (pair, threshold) decisions `dist < t` that our distances and the reference's decide differently.
fn decision_flips(ours: &[f32], reference: &[f32]) -> usize {
    (0..THRESHOLD_COUNT)
        .map(protocol_threshold)
        .map(|t| ours.iter().zip(reference).filter(|&(&a, &b)| (f64::from(a) < t) != (f64::from(b) < t)).count())
        .sum()
}

/// Number of (pair, threshold) where the reference distance equals the threshold rounded to f32 while the
/// threshold itself is larger: there an f32 comparison (numpy 1.x) rejects and an f64 one (numpy 2, ours) accepts.
fn f32_threshold_ties(reference: &[f32]) -> usize {
    (0..THRESHOLD_COUNT)
        .map(protocol_threshold)
        .filter(|&t| f64::from(t as f32) < t)
        .map(|t| reference.iter().filter(|&&d| d == t as f32).count())
        .sum()
}
