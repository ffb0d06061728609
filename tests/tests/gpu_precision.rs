//! `round_to_f16` (mixed precision's f16 copy of the weights) against its core twin, bit for bit.

use elasticface::gpu::kernels::precision::RoundToF16;
use elasticface::gpu::Elem;
use elasticface_core::nn;
use elasticface_tests::{gpu, uniform};

/// Every value rounded as the core rounds it: to nearest, ties to even (down, then up), just past the ties, the
/// largest finite value and the overflow beyond it (+-infinity from 65520 on), subnormals and their ties, the
/// smallest normal, signed zeros, infinities, a NaN (a NaN either way), and an odd count (the last word's high
/// half is zero).
#[test]
fn round_to_f16_matches_the_core_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let ulp = |v: f32| 2f32.powi(v.abs().log2().floor() as i32 - 10);
    let mut values = vec![0.0, -0.0, 1.0, -1.5, 0.1, 1.0 / 3.0, 65504.0, -65504.0, 65519.0, 65520.0, -70000.0, 1e30];
    for base in [1.0f32, 1.0 + 2.0 * 2f32.powi(-10), 3.0e-3, 700.0] {
        let half_ulp = ulp(base) / 2.0;
        values.extend([base + half_ulp, base + half_ulp * 1.0001, base + 3.0 * half_ulp, -(base + half_ulp)]);
    }
    let tiny = 2f32.powi(-24);
    values.extend([tiny, tiny / 2.0, tiny * 0.51, tiny * 1.5, tiny * 2.5, 2f32.powi(-14) - tiny / 2.0, -tiny * 3.5]);
    values.extend([2f32.powi(-14), -2f32.powi(-14), f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-30]);
    values.extend(uniform(77, 64).iter().map(|v| v * 3.0e-4));
    values.extend(uniform(78, 64).iter().map(|v| v * 40.0));
    if values.len() % 2 == 0 {
        values.push(0.25);
    }
    let src = gpu.upload("src", &[values.len()], &values);
    let dst = gpu.zeros_as("dst", &[values.len()], Elem::F16);
    let round = RoundToF16::new(gpu);
    gpu.run(&[&round.run(gpu, &src, &dst).unwrap()]).unwrap();
    let got = gpu.read_f32(&dst).unwrap();
    let mut want = values.clone();
    nn::round_to_f16(&mut want);
    for (i, ((g, w), v)) in got.iter().zip(&want).zip(&values).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "value {i}: {v:e} rounded to {g:e}, the core to {w:e}");
    }
    assert!(want[9].is_infinite() && want[8] == 65504.0, "the cases reach the overflow");
    // Refused: an f32 destination, or one of another length.
    let e = round.run(gpu, &src, &gpu.zeros("dst32", &[values.len()])).err().unwrap();
    assert!(format!("{e:#}").contains("dst32 holds f32 elements, the kernel takes f16"), "{e:#}");
    let e = round.run(gpu, &src, &gpu.zeros_as("short", &[values.len() - 1], Elem::F16)).err().unwrap();
    assert!(format!("{e:#}").contains("short has"), "{e:#}");
}
