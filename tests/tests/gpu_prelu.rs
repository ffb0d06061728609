//! `shaders/prelu.wgsl` against its core twins.
//!
//! `y` and `dx` take one f32 multiplication (or none) per element on both sides, which WGSL requires to be
//! correctly rounded: they must be bit-identical. `dalpha` sums the same terms `x * dy` in another order (the core
//! per plane sequentially, then over the batch; the GPU 8 per thread, a 256-leaf tree, then the chunks), so it
//! agrees to rounding: the error is measured as `|gpu - core| / sum |x * dy|` over the channel's negative-x
//! terms, which either order keeps below about (chain length) * 2^-24 and random data below ~sqrt(chain length)
//! * 2^-24 (~3e-6 for the core's 2500-long chains). Tolerance 1e-5; measured worst cases are printed (~1e-7).

use elasticface::gpu::kernels::prelu::{Prelu, PRELU_CHUNK};
use elasticface::gpu::Gpu;
use elasticface_core::nn::{self, BatchNormShape};
use elasticface_tests::{gpu, uniform};

/// Tolerance of `dalpha`, relative to the channel's `sum |x * dy|`.
const TOL: f32 = 1e-5;

fn shape(n: usize, c: usize, hw: usize) -> BatchNormShape {
    BatchNormShape { n, c, hw }
}

/// Odd sizes; BatchNorm1d-like `(N, C)`; a channel of several chunks with a short last one; one element; more
/// chunks per channel than the combine pass has threads (256).
fn shapes() -> Vec<BatchNormShape> {
    vec![shape(3, 5, 13 * 13), shape(7, 9, 1), shape(2, 3, 2500), shape(1, 1, 1), shape(2, 1, 300_000)]
}

/// Test input with some exact zeros (which take the `alpha` branch, as in the core).
fn input(seed: u64, len: usize) -> Vec<f32> {
    uniform(seed, len).into_iter().enumerate().map(|(i, v)| if i % 7 == 3 { 0.0 } else { v }).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The error message of a refused call.
fn err<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.err().expect("refused").to_string()
}

#[test]
fn the_shapes_exercise_both_reduction_levels() {
    let chunks = |s: &BatchNormShape| s.count().div_ceil(PRELU_CHUNK);
    assert!(shapes().iter().any(|s| (2..256).contains(&chunks(s)) && s.count() % PRELU_CHUNK != 0));
    assert!(shapes().iter().any(|s| chunks(s) > 256));
}

#[test]
fn forward_matches_the_core_exactly() {
    let Some(gpu) = gpu() else { return };
    let k = Prelu::new(gpu);
    for (i, s) in shapes().into_iter().enumerate() {
        let (x, alpha) = (input(10 * i as u64, s.len()), uniform(10 * i as u64 + 1, s.c));
        let (tx, ta, ty) =
            (gpu.upload("x", &[s.len()], &x), gpu.upload("alpha", &[s.c], &alpha), gpu.zeros("y", &[s.len()]));
        gpu.run(&[&k.forward(gpu, &s, &tx, &ta, &ty).unwrap()]).unwrap();
        let mut want = vec![0.0; s.len()];
        nn::prelu_forward(&s, &x, &alpha, &mut want).unwrap();
        assert_eq!(bits(&gpu.read::<f32>(&ty).unwrap()), bits(&want), "{s:?}");
    }
}

/// Runs the backward pass on the GPU: (dx, dalpha). Runs the same dispatches twice and checks the two results
/// are bit-identical.
fn gpu_backward(
    gpu: &Gpu,
    k: &Prelu,
    s: &BatchNormShape,
    x: &[f32],
    alpha: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (full, c) = ([s.n, s.c, s.hw], [s.c]);
    let (tx, ta, tdy) = (gpu.upload("x", &full, x), gpu.upload("alpha", &c, alpha), gpu.upload("dy", &full, dy));
    let (tdx, tda) = (gpu.zeros("dx", &full), gpu.zeros("dalpha", &c));
    let scratch = gpu.zeros("scratch", &[Prelu::scratch_len(s)]);
    let d = k.backward(gpu, s, &tx, &ta, &tdy, &tdx, &tda, &scratch).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        gpu.write(&tdx, &vec![0.0f32; s.len()]).unwrap();
        gpu.write(&tda, &vec![0.0f32; s.c]).unwrap();
        gpu.run(&[&d[0], &d[1]]).unwrap();
        runs.push((gpu.read::<f32>(&tdx).unwrap(), gpu.read::<f32>(&tda).unwrap()));
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!((bits(&a.0), bits(&a.1)), (bits(&b.0), bits(&b.1)), "two runs differ, {s:?}");
    runs.pop().unwrap()
}

#[test]
fn backward_matches_the_core_and_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let k = Prelu::new(gpu);
    for (i, s) in shapes().into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let (x, alpha, dy) = (input(seed, s.len()), uniform(seed + 1, s.c), uniform(seed + 2, s.len()));
        let (dx, dalpha) = gpu_backward(gpu, &k, &s, &x, &alpha, &dy);
        let (mut want_dx, mut want_da) = (vec![0.0; s.len()], vec![0.0; s.c]);
        nn::prelu_backward(&s, &x, &alpha, &dy, &mut want_dx, &mut want_da).unwrap();
        assert_eq!(bits(&dx), bits(&want_dx), "dx {s:?}");
        let mut scale = vec![0.0f32; s.c];
        for (j, (&v, &g)) in x.iter().zip(&dy).enumerate() {
            if v <= 0.0 {
                scale[(j / s.hw) % s.c] += (v * g).abs();
            }
        }
        let e = dalpha.iter().zip(&want_da).zip(&scale).map(|((g, w), a)| (g - w).abs() / a.max(f32::MIN_POSITIVE));
        let e = e.fold(0.0, f32::max);
        println!("dalpha {s:?}: max error {e:.2e} of sum |x * dy|");
        assert!(e <= TOL, "dalpha {s:?}: error {e:e} > {TOL:e}");
    }
}

#[test]
fn bad_sizes_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = Prelu::new(gpu);
    let s = shape(2, 3, 4);
    let (x, alpha, bad) = (gpu.zeros("x", &[24]), gpu.zeros("alpha", &[3]), gpu.zeros("bad", &[5]));
    let scratch = gpu.zeros("scratch", &[Prelu::scratch_len(&s)]);
    let e = err(k.forward(gpu, &s, &x, &bad, &x));
    assert!(e.contains("bad has 5 elements") && e.contains("needs 3"), "{e}");
    let e = err(k.forward(gpu, &s, &x, &alpha, &bad));
    assert!(e.contains("bad has 5 elements") && e.contains("needs 24"), "{e}");
    let e = err(k.backward(gpu, &s, &x, &alpha, &bad, &x, &alpha, &scratch));
    assert!(e.contains("bad has 5 elements"), "{e}");
    let e = err(k.backward(gpu, &s, &x, &alpha, &x, &x, &bad, &scratch));
    assert!(e.contains("bad has 5 elements"), "{e}");
    let empty = gpu.zeros("empty scratch", &[0]);
    let e = err(k.backward(gpu, &s, &x, &alpha, &x, &x, &alpha, &empty));
    assert!(e.contains("empty scratch has 0 elements"), "{e}");
    let e = err(k.forward(gpu, &shape(2, 3, 0), &x, &alpha, &x));
    assert!(e.contains("zero"), "{e}");
}
