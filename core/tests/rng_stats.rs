//! Statistical checks of the Philox words and the normal sampler.
//!
//! The seeds are fixed, so each test is deterministic: it either always passes or always fails. The bounds are
//! those a correct generator exceeds with probability about 1e-3 or less per statistic (stated at each bound), so
//! a failure means the generator or the sampler is broken, not bad luck.

use elasticface_core::rng::{standard_normal, Philox4x32};
use rand_core::RngCore;

/// Normals per test.
const N: usize = 1_000_000;

/// The standard normal CDF, `(1 + erf(x / sqrt 2)) / 2`.
fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
}

/// Mean, standard deviation and lag-1 autocorrelation, then the Kolmogorov–Smirnov test against N(0, 1).
fn check_standard_normal(mut z: Vec<f64>, what: &str) {
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    let sd = var.sqrt();
    let lag1 = z.windows(2).map(|w| (w[0] - mean) * (w[1] - mean)).sum::<f64>() / ((n - 1.0) * var);

    // Standard errors for N(0, 1) samples: mean 1/sqrt(n), standard deviation 1/sqrt(2n), lag-1 correlation
    // 1/sqrt(n). Six standard errors: a correct sampler exceeds them with probability ~2e-9.
    let (se_mean, se_sd, se_corr) = (1.0 / n.sqrt(), 1.0 / (2.0 * n).sqrt(), 1.0 / n.sqrt());
    assert!(mean.abs() < 6.0 * se_mean, "{what}: mean {mean} (bound {})", 6.0 * se_mean);
    assert!((sd - 1.0).abs() < 6.0 * se_sd, "{what}: standard deviation {sd} (bound 1 +- {})", 6.0 * se_sd);
    assert!(lag1.abs() < 6.0 * se_corr, "{what}: lag-1 autocorrelation {lag1} (bound {})", 6.0 * se_corr);

    // Kolmogorov–Smirnov: D = sup |F_n(x) - Phi(x)|. Asymptotically P(sqrt(n) D > K) = 2 sum_k (-1)^(k-1)
    // exp(-2 k^2 K^2); K = 1.9495 gives 1e-3, so the critical value is 1.9495 / sqrt(n) (0.00195 at n = 10^6).
    z.sort_unstable_by(f64::total_cmp);
    let mut d = 0.0f64;
    for (i, &x) in z.iter().enumerate() {
        let f = normal_cdf(x);
        d = d.max((i as f64 + 1.0) / n - f).max(f - i as f64 / n);
    }
    let critical = 1.9495 / n.sqrt();
    assert!(d < critical, "{what}: Kolmogorov–Smirnov D = {d}, critical value {critical} (alpha 1e-3)");
}

#[test]
fn sequential_normals_of_one_stream_are_standard_normal() {
    let mut rng = Philox4x32::new(20_261_128, 0);
    let z: Vec<f64> = (0..N).map(|_| standard_normal(&mut rng)).collect();
    check_standard_normal(z, "one stream");
}

#[test]
fn normals_across_streams_are_standard_normal() {
    // The margin pattern: stream = training step, index = sample. 1000 steps of 1000 samples, read step-major
    // so that the lag-1 correlation also compares neighbouring samples of one step.
    let z: Vec<f64> =
        (0..1000u64).flat_map(|step| (0..1000u64).map(move |i| Philox4x32::normal_at(7, step, i))).collect();
    check_standard_normal(z, "grid of streams");
    // ... and sample-major, comparing the same sample across neighbouring steps.
    let z: Vec<f64> =
        (0..1000u64).flat_map(|i| (0..1000u64).map(move |step| Philox4x32::normal_at(7, step, i))).collect();
    check_standard_normal(z, "grid of streams, transposed");
}

#[test]
fn raw_words_are_uniform() {
    // Pearson chi-square over 256 buckets, once for the top byte and once for the bottom byte of 2^22 words.
    // 255 degrees of freedom; the 1 - 1e-4 quantile is 347.7 (Wilson–Hilferty: k (1 - 2/(9k) + z sqrt(2/(9k)))^3
    // with z = 3.719). Also every bit of the word must be set in half the words within 6 standard errors.
    const WORDS: usize = 1 << 22;
    let mut rng = Philox4x32::new(0x5eed, 1);
    let (mut top, mut bottom, mut ones) = ([0u64; 256], [0u64; 256], [0u64; 32]);
    for _ in 0..WORDS {
        let w = rng.next_u32();
        top[(w >> 24) as usize] += 1;
        bottom[(w & 0xff) as usize] += 1;
        for (b, count) in ones.iter_mut().enumerate() {
            *count += u64::from((w >> b) & 1);
        }
    }
    let expected = WORDS as f64 / 256.0;
    let chi2 = |counts: &[u64; 256]| counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum::<f64>();
    let (ct, cb) = (chi2(&top), chi2(&bottom));
    assert!(ct < 347.7, "top byte: chi-square {ct} with 255 degrees of freedom (critical 347.7)");
    assert!(cb < 347.7, "bottom byte: chi-square {cb} with 255 degrees of freedom (critical 347.7)");
    let half = WORDS as f64 / 2.0;
    let se = (WORDS as f64 * 0.25).sqrt();
    for (b, &c) in ones.iter().enumerate() {
        assert!((c as f64 - half).abs() < 6.0 * se, "bit {b} set in {c} of {WORDS} words");
    }
}
