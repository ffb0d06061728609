//! `shaders/batchnorm.wgsl` against its core twins.
//!
//! Error measure: `|gpu - core| / (1 + |core|)`, absolute for values below 1 and relative above; for the
//! per-channel sums `dbeta` and `dgamma`, `|gpu - core| / sum |terms|`, the sum's natural scale.
//!
//! Why the results are not bit-identical, and the tolerances:
//! - Summation order. The core sums each plane sequentially, then the planes; the GPU sums 8 values per thread,
//!   a 256-leaf tree, then the chunks (`shaders/batchnorm.wgsl`). Either order's rounding error is at most about
//!   (longest addition chain) * 2^-24 of `sum |terms|`, and on random data grows like sqrt(chain) * 2^-24: ~3e-6
//!   for the core's 2500-long chains below, ~1e-6 for the GPU's (<= 8 + 8 + chunks/256 + 8 additions deep).
//!   The mean, the variance (merged by Chan's formula on the GPU, a plain second pass in the core) and the
//!   sums `dbeta`, `dgamma` inherit this.
//! - WGSL's `inverseSqrt` is 2 ULP, the core's `1 / sqrt` about 1 ULP: `1/std` may differ by ~3 ULP (2e-7).
//! - WGSL allows the compiler to fuse `a * b + c`.
//!
//! Outputs are O(1) functions of these quantities (`y = (x - mean) * gamma / std + beta` with |xhat| <= ~2).
//! Measured on lavapipe (printed by the tests): at most 2.7e-7 against the core and 1.1e-7 against an f64
//! evaluation; eval mode and the N*HW = 2 case are bit-identical. The tolerance is 1e-5: the random-walk estimate
//! with a margin, and still far below what an indexing or formula error makes (1e-2 or worse).
//!
//! One shape has planes of 300,000 values: there the core's sequential sums are the inaccurate side (measured
//! 1.9e-5 on `y` and 3.7e-5 on the variance against f64, the GPU 1.1e-7 and 5e-8), so the training forward is
//! also checked against f64 at 1e-5 and against the core at 1e-4 for that shape.

use elasticface::gpu::kernels::batchnorm::{BackwardFusion, BatchNormKernels, Epilogue, BATCHNORM_CHUNK};
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Gpu, Tensor};
use elasticface_core::nn::{self, BatchNorm, BatchNormShape};
use elasticface_tests::batchnorm::{channel_abs_sums, check, check_sums, mixed_error};
use elasticface_tests::{gpu, uniform};

/// Tolerance of every comparison with the core, in the error measure above.
const TOL: f32 = 1e-5;

fn shape(n: usize, c: usize, hw: usize) -> BatchNormShape {
    BatchNormShape { n, c, hw }
}

/// Shapes of the comparisons: odd sizes; BatchNorm1d; a channel of several chunks with a short last one; the
/// smallest trainable count (N*HW = 2); more chunks per channel than the combine pass has threads (256).
fn shapes() -> Vec<BatchNormShape> {
    vec![shape(3, 5, 13 * 13), shape(7, 9, 1), shape(2, 3, 2500), shape(1, 2, 2), shape(2, 1, 300_000)]
}

/// The inputs of one batch norm layer: `x` (offset so the mean is not ~0), `gamma`, `beta`, running statistics.
struct Layer {
    s: BatchNormShape,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

impl Layer {
    fn new(s: BatchNormShape, seed: u64) -> Self {
        let x = uniform(seed, s.len()).iter().map(|v| 0.5 + 2.0 * v).collect();
        let running_var = uniform(seed + 4, s.c).iter().map(|v| 1.0 + 0.5 * v).collect();
        Self {
            s,
            x,
            gamma: uniform(seed + 1, s.c),
            beta: uniform(seed + 2, s.c),
            running_mean: uniform(seed + 3, s.c),
            running_var,
        }
    }
}

/// GPU tensors of a training forward pass.
struct TrainTensors {
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    y: Tensor,
    save_mean: Tensor,
    save_var: Tensor,
    scratch: Tensor,
}

impl TrainTensors {
    fn new(gpu: &Gpu, l: &Layer) -> Self {
        let (s, c) = (&l.s, [l.s.c]);
        Self {
            x: gpu.upload("x", &[s.n, s.c, s.hw], &l.x),
            gamma: gpu.upload("gamma", &c, &l.gamma),
            beta: gpu.upload("beta", &c, &l.beta),
            running_mean: gpu.upload("running_mean", &c, &l.running_mean),
            running_var: gpu.upload("running_var", &c, &l.running_var),
            y: gpu.zeros("y", &[s.n, s.c, s.hw]),
            save_mean: gpu.zeros("save_mean", &c),
            save_var: gpu.zeros("save_var", &c),
            scratch: gpu.zeros("scratch", &[BatchNormKernels::scratch_len(s)]),
        }
    }

    /// The training forward's dispatches, or the error message.
    fn try_dispatches(
        &self,
        gpu: &Gpu,
        k: &BatchNormKernels,
        s: &BatchNormShape,
        bn: &BatchNorm,
    ) -> Result<[Dispatch; 3], String> {
        k.forward_train(
            gpu,
            s,
            bn,
            &self.x,
            &self.gamma,
            &self.beta,
            Epilogue::None,
            &self.running_mean,
            &self.running_var,
            &self.y,
            &self.save_mean,
            &self.save_var,
            &self.scratch,
        )
        .map_err(|e| e.to_string())
    }

    fn dispatches(&self, gpu: &Gpu, k: &BatchNormKernels, s: &BatchNormShape, bn: &BatchNorm) -> [Dispatch; 3] {
        self.try_dispatches(gpu, k, s, bn).unwrap()
    }

    /// The eval forward's dispatch over these tensors (the running statistics, into `y`), or the error message.
    fn eval_dispatch(
        &self,
        gpu: &Gpu,
        k: &BatchNormKernels,
        s: &BatchNormShape,
        bn: &BatchNorm,
    ) -> Result<Dispatch, String> {
        let t = self;
        k.forward_eval(gpu, s, bn, &t.x, &t.gamma, &t.beta, Epilogue::None, &t.running_mean, &t.running_var, &t.y)
            .map_err(|e| e.to_string())
    }

    /// Every tensor, to replace one.
    fn tensors_mut(&mut self) -> [&mut Tensor; 9] {
        let t = self;
        [
            &mut t.x,
            &mut t.gamma,
            &mut t.beta,
            &mut t.running_mean,
            &mut t.running_var,
            &mut t.y,
            &mut t.save_mean,
            &mut t.save_var,
            &mut t.scratch,
        ]
    }

    /// (y, save_mean, save_var, running_mean, running_var).
    fn read(&self, gpu: &Gpu) -> [Vec<f32>; 5] {
        [&self.y, &self.save_mean, &self.save_var, &self.running_mean, &self.running_var]
            .map(|t| gpu.read::<f32>(t).unwrap())
    }
}

/// The core's training forward: (y, save_mean, save_var, running_mean, running_var).
fn core_train(l: &Layer, bn: &BatchNorm) -> [Vec<f32>; 5] {
    let s = &l.s;
    let (mut rm, mut rv) = (l.running_mean.clone(), l.running_var.clone());
    let (mut y, mut sm, mut sv) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    nn::batchnorm_forward_train(s, bn, &l.x, &l.gamma, &l.beta, &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
    [y, sm, sv, rm, rv]
}

/// Runs the dispatches in order.
fn run_all(gpu: &Gpu, d: &[Dispatch]) {
    gpu.run(&d.iter().collect::<Vec<_>>()).unwrap();
}

#[test]
fn the_shapes_exercise_both_reduction_levels() {
    // Guards the intent of `shapes()`: one channel spans several chunks, one spans more chunks than threads.
    let chunks = |s: &BatchNormShape| s.count().div_ceil(BATCHNORM_CHUNK);
    assert!(shapes().iter().any(|s| (2..256).contains(&chunks(s)) && s.count() % BATCHNORM_CHUNK != 0));
    assert!(shapes().iter().any(|s| chunks(s) > 256));
}

/// The training forward in f64 from the same f32 inputs, rounded to f32 at the end: (y, save_mean, save_var).
fn f64_train(l: &Layer, bn: &BatchNorm) -> [Vec<f32>; 3] {
    let s = &l.s;
    let count = s.count() as f64;
    let (mut mean, mut var) = (vec![0.0f64; s.c], vec![0.0f64; s.c]);
    for (i, &v) in l.x.iter().enumerate() {
        mean[(i / s.hw) % s.c] += f64::from(v) / count;
    }
    for (i, &v) in l.x.iter().enumerate() {
        let c = (i / s.hw) % s.c;
        var[c] += (f64::from(v) - mean[c]).powi(2) / count;
    }
    let y = (l.x.iter().enumerate())
        .map(|(i, &v)| {
            let c = (i / s.hw) % s.c;
            let xhat = (f64::from(v) - mean[c]) / (var[c] + f64::from(bn.eps)).sqrt();
            (f64::from(l.gamma[c]) * xhat + f64::from(l.beta[c])) as f32
        })
        .collect();
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    [y, f32s(mean), f32s(var)]
}

#[test]
fn forward_train_matches_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let bn = BatchNorm::default();
    for (i, s) in shapes().into_iter().enumerate() {
        let l = Layer::new(s, 10 * i as u64);
        let t = TrainTensors::new(gpu, &l);
        run_all(gpu, &t.dispatches(gpu, &k, &s, &bn));
        let got = t.read(gpu);
        let want = core_train(&l, &bn);
        let exact = f64_train(&l, &bn);
        // The core sums each plane sequentially: its error grows like sqrt(HW) * 2^-24 (~3e-5 relative at
        // HW = 300,000, where the GPU's longest chain is ~30 additions). There the core, not the GPU, is the less
        // accurate side: compare both with an f64 evaluation, and the GPU with the core at the core's accuracy.
        let core_tol = if s.hw > 10_000 { 1e-4 } else { TOL };
        for (j, name) in ["y", "save_mean", "save_var", "running_mean", "running_var"].iter().enumerate() {
            check(name, &s, &got[j], &want[j], core_tol);
            if let Some(exact) = exact.get(j) {
                let (gpu_err, core_err) = (mixed_error(&got[j], exact), mixed_error(&want[j], exact));
                println!("{name:<14} {s:?}: against f64: gpu {gpu_err:.2e}, core {core_err:.2e}");
                assert!(gpu_err <= TOL, "{name} {s:?}: error {gpu_err:e} against f64 > {TOL:e}");
            }
        }
    }
}

#[test]
fn forward_train_variance_is_exact_with_a_large_offset() {
    // The core's own case: 1e4 +- 1 has mean 1e4 and variance 1 exactly; E[x^2] - E[x]^2 would lose every digit.
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let s = shape(4, 1, 1);
    let mut l = Layer::new(s, 99);
    l.x = vec![9999.0, 10001.0, 9999.0, 10001.0];
    let t = TrainTensors::new(gpu, &l);
    run_all(gpu, &t.dispatches(gpu, &k, &s, &BatchNorm::default()));
    let [_, sm, sv, ..] = t.read(gpu);
    assert_eq!((sm[0], sv[0]), (10000.0, 1.0));
}

#[test]
fn forward_eval_matches_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let bn = BatchNorm::default();
    // N = 1 is fine in eval mode.
    for (i, s) in [shape(1, 3, 5), shape(3, 5, 13 * 13), shape(7, 9, 1)].into_iter().enumerate() {
        let l = Layer::new(s, 100 + 10 * i as u64);
        let t = TrainTensors::new(gpu, &l);
        let d = t.eval_dispatch(gpu, &k, &s, &bn).unwrap();
        gpu.run(&[&d]).unwrap();
        let mut want = vec![0.0; s.len()];
        nn::batchnorm_forward_eval(&s, &bn, &l.x, &l.gamma, &l.beta, &l.running_mean, &l.running_var, &mut want)
            .unwrap();
        check("eval y", &s, &gpu.read::<f32>(&t.y).unwrap(), &want, TOL);
    }
}

/// Inputs of a backward pass: the layer, its saved statistics (from the core's forward) and `dy`.
struct Backward {
    l: Layer,
    save_mean: Vec<f32>,
    save_var: Vec<f32>,
    dy: Vec<f32>,
}

impl Backward {
    fn new(s: BatchNormShape, seed: u64) -> Self {
        let l = Layer::new(s, seed);
        let [_, save_mean, save_var, ..] = core_train(&l, &BatchNorm::default());
        Self { dy: uniform(seed + 7, s.len()), l, save_mean, save_var }
    }

    /// The core's (dx, dgamma, dbeta).
    fn core(&self, bn: &BatchNorm) -> [Vec<f32>; 3] {
        let s = &self.l.s;
        let (mut dx, mut dg, mut db) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        nn::batchnorm_backward(
            s,
            bn,
            &self.l.x,
            &self.l.gamma,
            &self.save_mean,
            &self.save_var,
            &self.dy,
            &mut dx,
            Some(&mut dg),
            &mut db,
        )
        .unwrap();
        [dx, dg, db]
    }
}

/// GPU tensors of a backward pass; `dgamma` starts as NaN so that a frozen pass can be seen not to write it.
struct BackwardTensors {
    x: Tensor,
    gamma: Tensor,
    save_mean: Tensor,
    save_var: Tensor,
    dy: Tensor,
    dx: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    scratch: Tensor,
}

impl BackwardTensors {
    fn new(gpu: &Gpu, b: &Backward) -> Self {
        let s = &b.l.s;
        let (full, c) = ([s.n, s.c, s.hw], [s.c]);
        Self {
            x: gpu.upload("x", &full, &b.l.x),
            gamma: gpu.upload("gamma", &c, &b.l.gamma),
            save_mean: gpu.upload("save_mean", &c, &b.save_mean),
            save_var: gpu.upload("save_var", &c, &b.save_var),
            dy: gpu.upload("dy", &full, &b.dy),
            dx: gpu.zeros("dx", &full),
            dgamma: gpu.upload("dgamma", &c, &vec![f32::NAN; s.c]),
            dbeta: gpu.zeros("dbeta", &c),
            scratch: gpu.zeros("scratch", &[BatchNormKernels::scratch_len(s)]),
        }
    }

    /// The backward pass's dispatches (without `dgamma` if `frozen`), or the error message.
    fn try_dispatches(
        &self,
        gpu: &Gpu,
        k: &BatchNormKernels,
        s: &BatchNormShape,
        bn: &BatchNorm,
        frozen: bool,
    ) -> Result<[Dispatch; 3], String> {
        let dgamma = (!frozen).then_some(&self.dgamma);
        k.backward(
            gpu,
            s,
            bn,
            &self.x,
            &self.gamma,
            &self.save_mean,
            &self.save_var,
            BackwardFusion::None,
            &self.dy,
            &self.dx,
            dgamma,
            &self.dbeta,
            &self.scratch,
        )
        .map_err(|e| e.to_string())
    }

    fn dispatches(
        &self,
        gpu: &Gpu,
        k: &BatchNormKernels,
        s: &BatchNormShape,
        bn: &BatchNorm,
        frozen: bool,
    ) -> [Dispatch; 3] {
        self.try_dispatches(gpu, k, s, bn, frozen).unwrap()
    }

    /// Every tensor, to replace one.
    fn tensors_mut(&mut self) -> [&mut Tensor; 9] {
        let t = self;
        [
            &mut t.x,
            &mut t.gamma,
            &mut t.save_mean,
            &mut t.save_var,
            &mut t.dy,
            &mut t.dx,
            &mut t.dgamma,
            &mut t.dbeta,
            &mut t.scratch,
        ]
    }

    /// (dx, dgamma, dbeta).
    fn read(&self, gpu: &Gpu) -> [Vec<f32>; 3] {
        [&self.dx, &self.dgamma, &self.dbeta].map(|t| gpu.read::<f32>(t).unwrap())
    }
}

#[test]
fn backward_matches_the_core_and_a_frozen_gamma_is_not_written() {
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let bn = BatchNorm::default();
    for (i, s) in shapes().into_iter().enumerate() {
        let b = Backward::new(s, 200 + 10 * i as u64);
        let [want_dx, want_dg, want_db] = b.core(&bn);

        let frozen = BackwardTensors::new(gpu, &b);
        run_all(gpu, &frozen.dispatches(gpu, &k, &s, &bn, true));
        let [fdx, fdg, fdb] = frozen.read(gpu);
        assert!(fdg.iter().all(|v| v.is_nan()), "frozen dgamma was written");

        let t = BackwardTensors::new(gpu, &b);
        run_all(gpu, &t.dispatches(gpu, &k, &s, &bn, false));
        let [dx, dg, db] = t.read(gpu);
        check("dx", &s, &dx, &want_dx, TOL);
        let invstd: Vec<f32> = b.save_var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect();
        let dy_abs = channel_abs_sums(&s, |i, _| b.dy[i]);
        let dy_xhat_abs = channel_abs_sums(&s, |i, c| b.dy[i] * (b.l.x[i] - b.save_mean[c]) * invstd[c]);
        check_sums("dbeta", &s, &db, &want_db, &dy_abs, TOL);
        check_sums("dgamma", &s, &dg, &want_dg, &dy_xhat_abs, TOL);
        // Freezing gamma changes nothing else, bit for bit.
        assert_eq!((fdx.as_slice(), fdb.as_slice()), (dx.as_slice(), db.as_slice()), "frozen {s:?}");
    }
}

/// The error message of a refused call.
fn err<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.err().expect("refused").to_string()
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn the_same_dispatches_twice_give_bit_identical_results() {
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let bn = BatchNorm::default();
    for s in [shape(2, 3, 2500), shape(3, 5, 13 * 13)] {
        let l = Layer::new(s, 300);
        let t = TrainTensors::new(gpu, &l);
        let d = t.dispatches(gpu, &k, &s, &bn);
        run_all(gpu, &d);
        let first = t.read(gpu);
        // Reset the running statistics, which every run updates, and run the same dispatches again.
        gpu.write(&t.running_mean, &l.running_mean).unwrap();
        gpu.write(&t.running_var, &l.running_var).unwrap();
        gpu.write(&t.y, &vec![0.0f32; s.len()]).unwrap();
        run_all(gpu, &d);
        assert_eq!(bits(&first), bits(&t.read(gpu)), "forward {s:?}");

        let b = Backward::new(s, 301);
        let t = BackwardTensors::new(gpu, &b);
        let d = t.dispatches(gpu, &k, &s, &bn, false);
        run_all(gpu, &d);
        let first = t.read(gpu);
        gpu.write(&t.dx, &vec![0.0f32; s.len()]).unwrap();
        run_all(gpu, &d);
        assert_eq!(bits(&first), bits(&t.read(gpu)), "backward {s:?}");
    }
}

/// A tensor labelled as `t` but of 5 elements, which no tensor of the shapes below has.
fn wrong_size(gpu: &Gpu, t: &Tensor) -> Tensor {
    gpu.zeros(&t.label, &[5])
}

#[test]
fn bad_sizes_and_too_few_values_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = BatchNormKernels::new(gpu);
    let bn = BatchNorm::default();
    let s = shape(2, 3, 4);
    assert!(BatchNormKernels::scratch_len(&s) > 5);

    // Each tensor in turn has the wrong size: the error names it.
    let l = Layer::new(s, 400);
    for i in 0..9 {
        let mut t = TrainTensors::new(gpu, &l);
        let slot = &mut t.tensors_mut()[i];
        **slot = wrong_size(gpu, slot);
        let name = slot.label.clone();
        let e = t.try_dispatches(gpu, &k, &s, &bn).err().expect("refused");
        assert!(e.starts_with("batchnorm_forward_train: ") && e.contains(&format!("{name} has 5 elements")), "{e}");
        if name != "scratch" && name != "save_mean" && name != "save_var" {
            let e = err(t.eval_dispatch(gpu, &k, &s, &bn));
            assert!(e.contains(&format!("{name} has 5 elements")), "{e}");
        }
    }
    let b = Backward::new(s, 401);
    for i in 0..9 {
        let mut t = BackwardTensors::new(gpu, &b);
        let slot = &mut t.tensors_mut()[i];
        **slot = wrong_size(gpu, slot);
        let name = slot.label.clone();
        let e = t.try_dispatches(gpu, &k, &s, &bn, false).err().expect("refused");
        assert!(e.starts_with("batchnorm_backward: ") && e.contains(&format!("{name} has 5 elements")), "{e}");
    }

    // N*HW < 2: no unbiased variance, refused in training (forward and backward) as the core refuses it ...
    let one = shape(1, 3, 1);
    let t = TrainTensors::new(gpu, &Layer::new(one, 402));
    let e = t.try_dispatches(gpu, &k, &one, &bn).err().expect("refused");
    assert!(e.contains("N*HW >= 2"), "{e}");
    // (The tensors are those of a trainable shape; the shape is refused before any size is looked at.)
    let b = BackwardTensors::new(gpu, &Backward::new(shape(1, 3, 2), 403));
    let e = b.try_dispatches(gpu, &k, &one, &bn, false).err().expect("refused");
    assert!(e.contains("N*HW >= 2"), "{e}");
    // ... but eval mode takes N = 1.
    t.eval_dispatch(gpu, &k, &one, &bn).unwrap();
    // A zero size is refused everywhere.
    let zero = shape(0, 3, 1);
    let e = err(t.eval_dispatch(gpu, &k, &zero, &bn));
    assert!(e.contains("zero"), "{e}");
}
