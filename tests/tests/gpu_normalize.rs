//! `shaders/normalize.wgsl` against its core twins `l2_normalize_forward` / `l2_normalize_backward`.
//!
//! Tolerances. The GPU sums each vector's squares (and `<y, dy>`) in another order than the core (strided per
//! thread, then a fixed tree, instead of k = 0..len), so the two differ by rounding only (`u = 2^-24 = 6e-8`): a
//! few `u` relative on the sum of squares, half that on the norm, plus an ulp from the square root and the
//! division. Norms: 6e-7 relative (10 u), measured 2.1e-7. Unit vectors (entries up to 1): 4e-7 absolute, measured
//! 6.0e-8 (1 ulp below 1). The backward pass subtracts the projection `y <y, dy>` from `dy`, which cancels, so its
//! error is absolute, relative to the largest gradient: 1e-6, measured 3.8e-7. Every run is also checked to be
//! bit-identical on a rerun, and a split matrix bit-identical to the whole.

use elasticface::gpu::kernels::normalize::Normalize;
use elasticface::gpu::{Elem, Gpu, GpuOptions};
use elasticface_core::nn::{l2_normalize_backward, l2_normalize_forward, VectorLayout};
use elasticface_tests::{gpu, max_abs_diff, uniform};

/// Largest `|a - b| / |b|` (for values of one sign and magnitude, like norms).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f32::max)
}

/// Largest magnitude (a vector of one element has a zero gradient: then the smallest normal, to divide by).
fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Runs forward and backward of `layout` on the GPU and the core; returns (norm rel, y abs, grad abs / max).
fn compare(gpu: &Gpu, k: &Normalize, layout: VectorLayout, seed: u64) -> (f32, f32, f32) {
    let n = layout.buffer_len();
    let x = uniform(seed, n);
    let dy = uniform(seed + 1, n);
    let (mut y, mut norms, mut grad) = (vec![0.0; n], vec![0.0; layout.count], dy.clone());
    l2_normalize_forward(layout, &x, &mut y, &mut norms).unwrap();
    l2_normalize_backward(layout, &y, &norms, &mut grad).unwrap();

    let tx = gpu.upload("x", &[n], &x);
    let (ty, tn) = (gpu.zeros("y", &[n]), gpu.zeros("norms", &[layout.count]));
    let tg = gpu.upload("grad", &[n], &dy);
    let fwd = k.forward(gpu, layout, &tx, &ty, &tn).unwrap();
    let bwd = k.backward(gpu, layout, &ty, &tn, &tg).unwrap();
    gpu.run(&[&fwd, &bwd]).unwrap();
    let (gy, gn, gg) = (gpu.read::<f32>(&ty).unwrap(), gpu.read::<f32>(&tn).unwrap(), gpu.read::<f32>(&tg).unwrap());

    // Determinism: a rerun (the backward pass is in place, so restore dy first) gives the same bits.
    gpu.write(&tg, &dy).unwrap();
    gpu.run(&[&fwd, &bwd]).unwrap();
    assert_eq!(gpu.read::<f32>(&ty).unwrap(), gy, "{layout:?}: y not bit-identical on rerun");
    assert_eq!(gpu.read::<f32>(&tg).unwrap(), gg, "{layout:?}: grad not bit-identical on rerun");

    (max_rel_diff(&gn, &norms), max_abs_diff(&gy, &y), max_abs_diff(&gg, &grad) / max_abs(&grad).max(f32::MIN_POSITIVE))
}

#[test]
fn rows_and_columns_match_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = Normalize::new(gpu);
    let mut worst = (0.0f32, 0.0f32, 0.0f32);
    // Odd sizes; vectors shorter and longer than a workgroup (64), one of 600 elements (10 per thread).
    for (i, (count, len)) in [(1, 1), (3, 5), (7, 16), (37, 5), (5, 130), (2, 600), (101, 16)].into_iter().enumerate() {
        for layout in [VectorLayout::rows(count, len), VectorLayout::columns(len, count)] {
            let (n, y, g) = compare(gpu, &k, layout, 10 + i as u64);
            assert!(n <= 6e-7, "{layout:?}: norms rel {n:e}");
            assert!(y <= 4e-7, "{layout:?}: y abs {y:e}");
            assert!(g <= 1e-6, "{layout:?}: grad {g:e} of the largest");
            worst = (worst.0.max(n), worst.1.max(y), worst.2.max(g));
        }
    }
    eprintln!("normalize: worst norm rel {:e}, y abs {:e}, grad abs/max {:e}", worst.0, worst.1, worst.2);
}

#[test]
fn more_vectors_than_one_grid_dimension() {
    let Some(gpu) = gpu() else { return };
    let k = Normalize::new(gpu);
    // 70,000 vectors: more workgroups than one dimension holds (65,535), so the grid is folded.
    let count = 70_000;
    let layout = VectorLayout::rows(count, 2);
    let (n, y, g) = compare(gpu, &k, layout, 3);
    assert!(n <= 6e-7 && y <= 4e-7 && g <= 1e-6, "{n:e} {y:e} {g:e}");
}

#[test]
fn split_rows_match_the_whole() {
    let Some(shared) = gpu() else { return };
    // Parts of at most 1 KiB: 300 rows of 16 (19,200 bytes) become 19 parts of 16 rows and one of 12.
    let opts = GpuOptions { binding_limit: Some(1024), checked: true, ..GpuOptions::from_env() };
    let gpu = Gpu::new(&opts).unwrap();
    let k = Normalize::new(&gpu);
    let (rows, cols) = (300, 16);
    let x = uniform(5, rows * cols);
    let dy = uniform(6, rows * cols);
    let tx = gpu.upload_split("x", rows, cols, 1, &x).unwrap();
    assert_eq!(tx.parts.len(), 19);
    let ty = gpu.zeros_split_like("y", &tx, cols).unwrap();
    let tn = gpu.zeros_split_like("norms", &tx, 1).unwrap();
    let tg = gpu.upload_split("grad", rows, cols, 1, &dy).unwrap();
    let mut all = k.forward_rows_split(&gpu, &tx, &ty, &tn).unwrap();
    all.extend(k.backward_rows_split(&gpu, &ty, &tn, &tg).unwrap());
    gpu.run(&all.iter().collect::<Vec<_>>()).unwrap();

    // The same on the shared (unsplit) GPU: bit-identical, as every vector is reduced the same way.
    let kw = Normalize::new(shared);
    let layout = VectorLayout::rows(rows, cols);
    let (wx, wy, wn, wg) = (
        shared.upload("x", &[rows, cols], &x),
        shared.zeros("y", &[rows, cols]),
        shared.zeros("norms", &[rows]),
        shared.upload("grad", &[rows, cols], &dy),
    );
    let fwd = kw.forward(shared, layout, &wx, &wy, &wn).unwrap();
    let bwd = kw.backward(shared, layout, &wy, &wn, &wg).unwrap();
    shared.run(&[&fwd, &bwd]).unwrap();
    assert_eq!(gpu.read_split::<f32>(&ty).unwrap(), shared.read::<f32>(&wy).unwrap());
    assert_eq!(gpu.read_split::<f32>(&tn).unwrap(), shared.read::<f32>(&wn).unwrap());
    assert_eq!(gpu.read_split::<f32>(&tg).unwrap(), shared.read::<f32>(&wg).unwrap());

    // The whole matrix is too large for one binding there: refused, naming it.
    let whole = gpu.zeros("whole", &[rows, cols]);
    let (y1, n1) = (gpu.zeros("y1", &[rows, cols]), gpu.zeros("n1", &[rows]));
    let err = k.forward(&gpu, layout, &whole, &y1, &n1).err().expect("refused");
    assert!(err.to_string().contains("whole is 19200 bytes"), "{err}");
}

#[test]
fn mismatched_tensors_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = Normalize::new(gpu);
    let layout = VectorLayout::rows(3, 5);
    let (x, y, norms) = (gpu.zeros("x", &[15]), gpu.zeros("y", &[14]), gpu.zeros("norms", &[3]));
    let err = k.forward(gpu, layout, &x, &y, &norms).err().expect("refused");
    assert!(err.to_string().contains("y has 14 elements"), "{err}");
    let short = gpu.zeros("norms", &[2]);
    let err = k.backward(gpu, layout, &x, &short, &x).err().expect("refused");
    assert!(err.to_string().contains("norms has 2 elements"), "{err}");
    let err = k.backward(gpu, layout, &x, &norms, &y).err().expect("refused");
    assert!(err.to_string().contains("y has 14 elements"), "{err}");
    // The kernels take f32: an f16 tensor of the right length (half the bytes) would be read past its end.
    let half = gpu.zeros_as("half", &[15], Elem::F16);
    let err = k.forward(gpu, layout, &half, &x, &norms).err().expect("refused");
    assert!(err.to_string().contains("half holds f16 elements, the kernel takes f32"), "{err}");
}
