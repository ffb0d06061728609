//! The rounding of the mixed-precision convolutions.
//!
//! The GPU's mixed-precision convolution kernels (`shaders/conv2d_coop.wgsl.in`) multiply operands rounded to IEEE
//! binary16 (stored as f16 by the kernels that write them; the weights' f16 copy by `shaders/precision.wgsl`, the
//! twin of [`round_to_f16`]) and accumulate in f32. A product of two binary16 values is exact in f32 (11 + 11
//! significant bits), so their result is the f32 sum of the exact products of the rounded operands: the core's
//! [`conv2d_forward`](super::conv2d_forward) (and the gradients) applied to operands passed through
//! [`round_to_f16`], up to the order of the additions.

/// Rounds every element to the nearest IEEE binary16 value (ties to even; beyond ±65504 to ±infinity; NaN stays
/// NaN), kept as f32: what the mixed-precision kernels multiply.
pub fn round_to_f16(values: &mut [f32]) {
    for v in values {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_overflows_to_infinity() {
        let mut v = [1.0, 1.0 + 1.0 / 4096.0, 1.0 + 3.0 / 4096.0, 65504.0, 65520.0, -1e6, 1e-8, 6.0e-8, f32::NAN];
        round_to_f16(&mut v);
        // 1 + 2^-12 is a tie between 1 and 1 + 2^-10 (even: 1); 1 + 3 * 2^-12 rounds up to 1 + 2^-10.
        assert_eq!(v[0], 1.0);
        assert_eq!(v[1], 1.0);
        assert_eq!(v[2], 1.0 + 1.0 / 1024.0);
        assert_eq!(v[3], 65504.0);
        // 65520 is the midpoint between 65504 and the next step (65536, out of range): rounds to infinity.
        assert_eq!(v[4], f32::INFINITY);
        assert_eq!(v[5], f32::NEG_INFINITY);
        // Below half the smallest subnormal (2^-24 ~ 5.96e-8): zero; near it: the subnormal.
        assert_eq!(v[6], 0.0);
        assert_eq!(v[7], 2f32.powi(-24));
        assert!(v[8].is_nan());
    }
}
