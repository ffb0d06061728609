//! Finite-difference checks of every backward function in `elasticface_core::nn`.
//!
//! Each op gets a random scalar objective `L = sum(r * y)` with a fixed random `r`, so `dL/dy = r` is what the
//! backward functions receive, and every analytic gradient element is compared with the central difference
//! `(L(x + h e_i) - L(x - h e_i)) / (2h)`. `L` is summed in f64 so that the only noise left is the f32 rounding
//! of the outputs that actually change. Run with `--nocapture` to see the measured errors.
//!
//! Tolerances: an element passes when `|fd - analytic| <= ATOL + RTOL * |analytic|`.
//! - Linear and piecewise-linear ops (conv2d, linear, residual add, PReLU with inputs kept at least 0.2 from
//!   its kink and steps of 0.05) have no truncation error: central differences are exact up to rounding, so
//!   a large step (0.1) is best. What is left is the f32 rounding of every output the element feeds (~1e-7
//!   relative each, up to N*HO*WO of them for a conv weight) divided by `2h`: measured at most 5.3e-5
//!   (a 3x3 weight of a 5->7 conv over 3 x 13 x 13). `LINEAR_TOL` = 3e-4 absolute + 3e-4 relative is ~10x that.
//! - Batch norm is nonlinear in `x`: the step is 1e-2 times the spread of the inputs, which keeps the truncation
//!   error `h^2 f''' / 6` near 1e-5 for unit-spread data, while the rounding noise grows with the channel size
//!   (every output of the channel moves): measured at most 4.1e-4 (N*HW = 105). `BN_TOL` = 2e-3 absolute + 2e-3
//!   relative is ~8x that. Batch norm's gamma and beta enter linearly and use `LINEAR_TOL`.
//! - The composed block (conv -> BN -> PReLU -> + x) uses `BN_TOL`; probes that straddle PReLU's kink are
//!   skipped (see [`fd_check_piecewise`]).

use elasticface_core::nn::*;
use elasticface_core::Error;

/// splitmix64: a tiny, deterministic source of test data (independent of the crate's own generator).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }

    /// Standard normal by Box-Muller.
    fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.normal()).collect()
    }

    fn uniforms(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `|fd - analytic| <= abs + rel * |analytic|`.
#[derive(Clone, Copy, Debug)]
struct Tol {
    abs: f64,
    rel: f64,
}

const LINEAR_TOL: Tol = Tol { abs: 3e-4, rel: 3e-4 };
const BN_TOL: Tol = Tol { abs: 2e-3, rel: 2e-3 };
/// Step for the (piecewise) linear ops: exact central differences, so large is best.
const LINEAR_STEP: f32 = 0.1;

/// `L = sum(r * y)`, in f64.
fn objective(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// Compares `analytic` with central differences of `loss` around `x0`, element by element.
/// Returns the largest absolute error; panics (naming the element) past the tolerance.
fn fd_check(name: &str, x0: &[f32], analytic: &[f32], h: f32, tol: Tol, mut loss: impl FnMut(&[f32]) -> f64) -> f64 {
    fd_check_piecewise(name, x0, analytic, h, tol, |x| (loss(x), 0))
}

/// [`fd_check`] for a piecewise-smooth objective: `loss` also returns an id of the smooth piece its input lies
/// in (e.g. a hash of the signs at a ReLU-like kink); elements whose two probes land in different pieces have
/// no meaningful difference quotient and are skipped (at most 10% of them may be).
fn fd_check_piecewise(
    name: &str,
    x0: &[f32],
    analytic: &[f32],
    h: f32,
    tol: Tol,
    mut loss: impl FnMut(&[f32]) -> (f64, u64),
) -> f64 {
    assert_eq!(x0.len(), analytic.len(), "{name}: gradient length");
    let mut x = x0.to_vec();
    let (mut max_abs, mut max_ratio, mut skipped) = (0.0f64, 0.0f64, 0usize);
    for i in 0..x0.len() {
        x[i] = x0[i] + h;
        let (up, (l_up, piece_up)) = (x[i], loss(&x));
        x[i] = x0[i] - h;
        let (down, (l_down, piece_down)) = (x[i], loss(&x));
        x[i] = x0[i];
        if piece_up != piece_down {
            skipped += 1;
            continue;
        }
        // The step actually taken, after rounding x +- h to f32.
        let fd = (l_up - l_down) / (f64::from(up) - f64::from(down));
        let an = f64::from(analytic[i]);
        let err = (fd - an).abs();
        let allowed = tol.abs + tol.rel * an.abs();
        assert!(err <= allowed, "{name}[{i}]: finite difference {fd}, analytic {an}, error {err} > {allowed}");
        max_abs = max_abs.max(err);
        max_ratio = max_ratio.max(err / allowed);
    }
    assert!(skipped * 10 <= x0.len(), "{name}: {skipped} of {} elements straddle a kink", x0.len());
    let skipped = if skipped > 0 { format!(", {skipped} at a kink skipped") } else { String::new() };
    println!("{name:<48} {:>5} elements  max |err| {max_abs:.2e}  (max err/tol {max_ratio:.3}){skipped}", x0.len());
    max_abs
}

// ---------------------------------------------------------------------------------------------------------
// conv2d

fn conv_case(seed: u64, s: Conv2dShape) {
    let mut rng = SplitMix64(seed);
    let x = rng.normals(s.input_len(), 1.0);
    let w = rng.normals(s.weight_len(), 0.3);
    let r = rng.normals(s.output_len(), 1.0);
    let forward = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; s.output_len()];
        conv2d_forward(&s, x, w, &mut y).unwrap();
        objective(&r, &y)
    };
    let mut dx = vec![f32::NAN; s.input_len()];
    let mut dw = vec![f32::NAN; s.weight_len()];
    conv2d_backward_data(&s, &r, &w, &mut dx).unwrap();
    conv2d_backward_weight(&s, &r, &x, &mut dw).unwrap();
    let tag =
        format!("conv N{} {}->{} {}x{} k{}x{} s{} p{}", s.n, s.c_in, s.c_out, s.h, s.w, s.kh, s.kw, s.stride, s.pad);
    fd_check(&format!("{tag} dx"), &x, &dx, LINEAR_STEP, LINEAR_TOL, |x| forward(x, &w));
    fd_check(&format!("{tag} dw"), &w, &dw, LINEAR_STEP, LINEAR_TOL, |w| forward(&x, w));
}

fn conv(
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> Conv2dShape {
    Conv2dShape { n, c_in, h: hw.0, w: hw.1, c_out, kh: k.0, kw: k.1, stride, pad }
}

#[test]
fn conv2d_3x3_stride1_pad1() {
    conv_case(1, conv(2, 3, 4, (8, 8), (3, 3), 1, 1));
    conv_case(2, conv(3, 5, 7, (13, 13), (3, 3), 1, 1));
}

#[test]
fn conv2d_3x3_stride2_pad1() {
    conv_case(3, conv(3, 5, 7, (13, 13), (3, 3), 2, 1));
    conv_case(4, conv(2, 3, 4, (9, 11), (3, 3), 2, 1));
    conv_case(5, conv(1, 2, 3, (8, 8), (3, 3), 2, 1));
}

#[test]
fn conv2d_1x1_stride2_pad0() {
    conv_case(6, conv(3, 5, 7, (13, 13), (1, 1), 2, 0));
    conv_case(7, conv(2, 4, 3, (9, 11), (1, 1), 2, 0));
}

#[test]
fn conv2d_general_kernels() {
    conv_case(8, conv(2, 3, 2, (9, 11), (5, 3), 3, 2)); // tall kernel, stride 3
    conv_case(9, conv(2, 2, 3, (7, 7), (2, 2), 2, 0)); // even kernel
    conv_case(10, conv(1, 2, 2, (7, 7), (1, 1), 3, 0)); // stride beyond the kernel: unread inputs
    conv_case(11, conv(2, 3, 2, (6, 5), (3, 3), 1, 0)); // no padding
    conv_case(12, conv(1, 1, 1, (2, 3), (4, 4), 1, 1)); // kernel as large as the padded input
}

// ---------------------------------------------------------------------------------------------------------
// batch norm

fn bn_case(seed: u64, s: BatchNormShape, x_scale: f32, x_offset: f32) {
    let bn = BatchNorm::default();
    let mut rng = SplitMix64(seed);
    let x: Vec<f32> = rng.normals(s.len(), x_scale).iter().map(|v| v + x_offset).collect();
    let gamma = rng.uniforms(s.c, 0.5, 1.5);
    let beta = rng.normals(s.c, 0.5);
    let r = rng.normals(s.len(), 1.0);
    let forward = |x: &[f32], gamma: &[f32], beta: &[f32]| {
        let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
        let (mut y, mut sm, mut sv) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        batchnorm_forward_train(&s, &bn, x, gamma, beta, &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
        objective(&r, &y)
    };
    let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
    let (mut y, mut sm, mut sv) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
    batchnorm_forward_train(&s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
    let (mut dx, mut dgamma, mut dbeta) = (vec![f32::NAN; s.len()], vec![f32::NAN; s.c], vec![f32::NAN; s.c]);
    batchnorm_backward(&s, &bn, &x, &gamma, &sm, &sv, &r, &mut dx, Some(&mut dgamma), &mut dbeta).unwrap();

    let tag = format!("bn N{} C{} HW{} (x ~ {x_offset} + {x_scale} N(0,1))", s.n, s.c, s.hw);
    fd_check(&format!("{tag} dx"), &x, &dx, 1e-2 * x_scale, BN_TOL, |x| forward(x, &gamma, &beta));
    fd_check(&format!("{tag} dgamma"), &gamma, &dgamma, LINEAR_STEP, LINEAR_TOL, |g| forward(&x, g, &beta));
    fd_check(&format!("{tag} dbeta"), &beta, &dbeta, LINEAR_STEP, LINEAR_TOL, |b| forward(&x, &gamma, b));

    // A frozen weight (insightface's `features`): the same dx and dbeta, dgamma untouched.
    let (mut dx2, mut dbeta2) = (vec![f32::NAN; s.len()], vec![f32::NAN; s.c]);
    batchnorm_backward(&s, &bn, &x, &gamma, &sm, &sv, &r, &mut dx2, None, &mut dbeta2).unwrap();
    assert_eq!(dx, dx2);
    assert_eq!(dbeta, dbeta2);
}

#[test]
fn batchnorm2d_training_backward() {
    bn_case(20, BatchNormShape { n: 3, c: 4, hw: 35 }, 1.0, 0.0);
    bn_case(21, BatchNormShape { n: 2, c: 3, hw: 9 }, 2.0, 3.0);
    bn_case(22, BatchNormShape { n: 1, c: 2, hw: 16 }, 1.0, 0.0); // N = 1 is enough when HW > 1
}

#[test]
fn batchnorm1d_training_backward() {
    bn_case(23, BatchNormShape { n: 6, c: 5, hw: 1 }, 1.0, 0.0);
    bn_case(24, BatchNormShape { n: 16, c: 3, hw: 1 }, 0.5, -1.0);
    bn_case(25, BatchNormShape { n: 3, c: 4, hw: 1 }, 1.0, 0.0);
}

/// The forward passes against a direct f64 computation of PyTorch's formulas, over three training steps
/// (running statistics start at PyTorch's 0 and 1), then eval mode with the resulting running statistics.
#[test]
fn batchnorm_running_stats_and_eval_match_a_direct_computation() {
    let bn = BatchNorm { eps: 1e-5, momentum: 0.1 };
    let s = BatchNormShape { n: 4, c: 3, hw: 10 };
    let mut rng = SplitMix64(30);
    let gamma = rng.uniforms(s.c, 0.5, 1.5);
    let beta = rng.normals(s.c, 0.5);
    let (mut rm, mut rv) = (vec![0.0f32; s.c], vec![1.0f32; s.c]);
    let (mut rm64, mut rv64) = (vec![0.0f64; s.c], vec![1.0f64; s.c]);
    let at = |n: usize, c: usize, k: usize| (n * s.c + c) * s.hw + k;
    let close = |a: f32, b: f64, what: &str| {
        assert!((f64::from(a) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    };
    for step in 0..3 {
        let x: Vec<f32> = rng.normals(s.len(), 2.0).iter().map(|v| v + step as f32).collect();
        let (mut y, mut sm, mut sv) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        batchnorm_forward_train(&s, &bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut sm, &mut sv).unwrap();
        let count = s.count() as f64;
        for c in 0..s.c {
            let values = || (0..s.n).flat_map(move |n| (0..s.hw).map(move |k| at(n, c, k)));
            let mean = values().map(|i| f64::from(x[i])).sum::<f64>() / count;
            let var = values().map(|i| (f64::from(x[i]) - mean).powi(2)).sum::<f64>() / count;
            close(sm[c], mean, "save_mean");
            close(sv[c], var, "save_var");
            rm64[c] = 0.9 * rm64[c] + 0.1 * mean;
            rv64[c] = 0.9 * rv64[c] + 0.1 * var * count / (count - 1.0);
            close(rm[c], rm64[c], "running_mean");
            close(rv[c], rv64[c], "running_var");
            for i in values() {
                let expected =
                    f64::from(gamma[c]) * (f64::from(x[i]) - mean) / (var + 1e-5).sqrt() + f64::from(beta[c]);
                close(y[i], expected, "y (train)");
            }
        }
    }
    // Eval mode, with a batch of one as well.
    for n in [1, 5] {
        let se = BatchNormShape { n, ..s };
        let x = rng.normals(se.len(), 2.0);
        let mut y = vec![0.0; se.len()];
        batchnorm_forward_eval(&se, &bn, &x, &gamma, &beta, &rm, &rv, &mut y).unwrap();
        for (i, (&yv, &xv)) in y.iter().zip(&x).enumerate() {
            let c = (i / s.hw) % s.c;
            let expected = f64::from(gamma[c]) * (f64::from(xv) - f64::from(rm[c])) / (f64::from(rv[c]) + 1e-5).sqrt()
                + f64::from(beta[c]);
            close(yv, expected, "y (eval)");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// PReLU, linear, residual add

#[test]
fn prelu_backward_matches_finite_differences() {
    let s = BatchNormShape { n: 3, c: 4, hw: 6 };
    let mut rng = SplitMix64(40);
    // |x| in [0.2, 2] with a random sign: a step of 0.05 never crosses the kink at 0.
    let x: Vec<f32> = (0..s.len())
        .map(|_| {
            let m = rng.uniform(0.2, 2.0);
            if rng.next_u64() & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect();
    let alpha = rng.uniforms(s.c, -0.5, 0.75);
    let r = rng.normals(s.len(), 1.0);
    let forward = |x: &[f32], alpha: &[f32]| {
        let mut y = vec![0.0; s.len()];
        prelu_forward(&s, x, alpha, &mut y).unwrap();
        objective(&r, &y)
    };
    let (mut dx, mut dalpha) = (vec![f32::NAN; s.len()], vec![f32::NAN; s.c]);
    prelu_backward(&s, &x, &alpha, &r, &mut dx, &mut dalpha).unwrap();
    fd_check("prelu dx", &x, &dx, 0.05, LINEAR_TOL, |x| forward(x, &alpha));
    fd_check("prelu dalpha", &alpha, &dalpha, LINEAR_STEP, LINEAR_TOL, |a| forward(&x, a));
}

#[test]
fn linear_backward_matches_finite_differences() {
    for (seed, s) in
        [(50, LinearShape { n: 3, inputs: 7, outputs: 5 }), (51, LinearShape { n: 1, inputs: 16, outputs: 3 })]
    {
        let mut rng = SplitMix64(seed);
        let x = rng.normals(s.n * s.inputs, 1.0);
        let w = rng.normals(s.outputs * s.inputs, 0.3);
        let b = rng.normals(s.outputs, 1.0);
        let r = rng.normals(s.n * s.outputs, 1.0);
        let forward = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.n * s.outputs];
            linear_forward(&s, x, w, b, &mut y).unwrap();
            objective(&r, &y)
        };
        let (mut dx, mut dw, mut db) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()], vec![f32::NAN; b.len()]);
        linear_backward(&s, &x, &w, &r, &mut dx, &mut dw, &mut db).unwrap();
        let tag = format!("linear N{} {}->{}", s.n, s.inputs, s.outputs);
        fd_check(&format!("{tag} dx"), &x, &dx, LINEAR_STEP, LINEAR_TOL, |x| forward(x, &w, &b));
        fd_check(&format!("{tag} dweight"), &w, &dw, LINEAR_STEP, LINEAR_TOL, |w| forward(&x, w, &b));
        fd_check(&format!("{tag} dbias"), &b, &db, LINEAR_STEP, LINEAR_TOL, |b| forward(&x, &w, b));
    }
}

#[test]
fn residual_add_backward_matches_finite_differences() {
    let mut rng = SplitMix64(60);
    let (a, b, r) = (rng.normals(20, 1.0), rng.normals(20, 1.0), rng.normals(20, 1.0));
    let forward = |a: &[f32], b: &[f32]| {
        let mut y = vec![0.0; 20];
        residual_add_forward(a, b, &mut y).unwrap();
        objective(&r, &y)
    };
    let (mut da, mut db) = (vec![f32::NAN; 20], vec![f32::NAN; 20]);
    residual_add_backward(&r, &mut da, &mut db).unwrap();
    fd_check("residual add da", &a, &da, LINEAR_STEP, LINEAR_TOL, |a| forward(a, &b));
    fd_check("residual add db", &b, &db, LINEAR_STEP, LINEAR_TOL, |b| forward(&a, b));
}

/// The layers chained as in an iResNet block with an identity shortcut,
/// `y = x + prelu(bn(conv3x3(x)))`: the shortcut's gradient reaches `x` through [`accumulate`].
#[test]
fn composed_block_backward_matches_finite_differences() {
    let bn = BatchNorm::default();
    let cs = conv(2, 3, 3, (6, 6), (3, 3), 1, 1);
    let bs = BatchNormShape { n: 2, c: 3, hw: 36 };
    let mut rng = SplitMix64(70);
    let x = rng.normals(cs.input_len(), 1.0);
    let w = rng.normals(cs.weight_len(), 0.3);
    let (gamma, beta, alpha) = (rng.uniforms(3, 0.5, 1.5), rng.normals(3, 0.5), vec![0.25f32; 3]);
    let r = rng.normals(cs.output_len(), 1.0);
    struct Saved {
        conv_out: Vec<f32>,
        bn_out: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        y: Vec<f32>,
    }
    let forward = |x: &[f32]| {
        let mut conv_out = vec![0.0; cs.output_len()];
        conv2d_forward(&cs, x, &w, &mut conv_out).unwrap();
        let (mut rm, mut rv) = (vec![0.0; 3], vec![1.0; 3]);
        let (mut bn_out, mut mean, mut var) = (vec![0.0; bs.len()], vec![0.0; 3], vec![0.0; 3]);
        batchnorm_forward_train(&bs, &bn, &conv_out, &gamma, &beta, &mut rm, &mut rv, &mut bn_out, &mut mean, &mut var)
            .unwrap();
        let mut act = vec![0.0; bs.len()];
        prelu_forward(&bs, &bn_out, &alpha, &mut act).unwrap();
        let mut y = vec![0.0; bs.len()];
        residual_add_forward(x, &act, &mut y).unwrap();
        Saved { conv_out, bn_out, mean, var, y }
    };
    let saved = forward(&x);
    let (mut d_skip, mut d_act) = (vec![0.0; bs.len()], vec![0.0; bs.len()]);
    residual_add_backward(&r, &mut d_skip, &mut d_act).unwrap();
    let (mut d_bn_out, mut dalpha) = (vec![0.0; bs.len()], vec![0.0; 3]);
    prelu_backward(&bs, &saved.bn_out, &alpha, &d_act, &mut d_bn_out, &mut dalpha).unwrap();
    let (mut d_conv_out, mut dbeta) = (vec![0.0; bs.len()], vec![0.0; 3]);
    batchnorm_backward(
        &bs,
        &bn,
        &saved.conv_out,
        &gamma,
        &saved.mean,
        &saved.var,
        &d_bn_out,
        &mut d_conv_out,
        None,
        &mut dbeta,
    )
    .unwrap();
    let mut dx = vec![0.0; cs.input_len()];
    conv2d_backward_data(&cs, &d_conv_out, &w, &mut dx).unwrap();
    accumulate(&mut dx, &d_skip).unwrap();
    // PReLU's kink makes the objective non-smooth where a BN output crosses 0: the piece is identified by the
    // signs of the BN outputs (FNV-1a over the sign bits), and probes on two sides of a kink are skipped.
    fd_check_piecewise("block x + prelu(bn(conv(x))) dx", &x, &dx, 1e-2, BN_TOL, |x| {
        let saved = forward(x);
        let piece = saved
            .bn_out
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h ^ u64::from(v > 0.0)).wrapping_mul(0x0100_0000_01b3));
        (objective(&r, &saved.y), piece)
    });
}

// ---------------------------------------------------------------------------------------------------------
// Bad input never panics

#[test]
fn mismatched_lengths_are_errors_not_panics() {
    let s = conv(1, 2, 2, (4, 4), (3, 3), 1, 1);
    let e = conv2d_forward(&s, &[0.0; 31], &[0.0; 36], &mut [0.0; 32]);
    assert_eq!(e, Err(Error::Length { what: "x", expected: 32, got: 31 }));
    let bs = BatchNormShape { n: 2, c: 2, hw: 1 };
    let e = batchnorm_backward(
        &bs,
        &BatchNorm::default(),
        &[0.0; 4],
        &[1.0; 2],
        &[0.0; 2],
        &[1.0; 2],
        &[0.0; 4],
        &mut [0.0; 4],
        Some(&mut [0.0; 3]),
        &mut [0.0; 2],
    );
    assert_eq!(e, Err(Error::Length { what: "dgamma", expected: 2, got: 3 }));
    let e =
        linear_forward(&LinearShape { n: 1, inputs: 2, outputs: 2 }, &[0.0; 2], &[0.0; 4], &[0.0; 2], &mut [0.0; 3]);
    assert_eq!(e, Err(Error::Length { what: "y", expected: 2, got: 3 }));
}

/// Every small convolution shape, valid or not: invalid ones are [`Error::Shape`] (never a panic), valid ones
/// match a naive f64 evaluation of the defining sums with explicit bounds tests, forward and both backwards.
#[test]
fn conv2d_matches_a_naive_reference_on_every_small_shape() {
    let mut rng = SplitMix64(80);
    let (mut valid, mut invalid) = (0, 0);
    for (n, c_in, c_out) in [(1, 1, 1), (2, 1, 2), (1, 2, 3)] {
        for h in 1..=5 {
            for w in [1, 2, 4, 5] {
                for kh in 1..=4 {
                    for kw in [1, 2, 3] {
                        for stride in 0..=3 {
                            for pad in 0..=2 {
                                let s = Conv2dShape { n, c_in, h, w, c_out, kh, kw, stride, pad };
                                if s.validate().is_err() {
                                    invalid += 1;
                                    let mut out = vec![0.0; 8];
                                    let e = conv2d_forward(&s, &[0.0; 8], &[0.0; 8], &mut out);
                                    assert!(matches!(e, Err(Error::Shape { .. })), "{s:?}");
                                    continue;
                                }
                                valid += 1;
                                naive_conv_case(&mut rng, s);
                            }
                        }
                    }
                }
            }
        }
    }
    println!("conv2d naive reference: {valid} valid shapes matched, {invalid} invalid shapes rejected");
}

fn naive_conv_case(rng: &mut SplitMix64, s: Conv2dShape) {
    let (ho, wo) = (s.out_h(), s.out_w());
    assert_eq!(ho, (s.h + 2 * s.pad - s.kh) / s.stride + 1);
    let x = rng.normals(s.input_len(), 1.0);
    let wt = rng.normals(s.weight_len(), 1.0);
    let dy = rng.normals(s.output_len(), 1.0);
    let xi = |n: usize, c: usize, i: usize, j: usize| ((n * s.c_in + c) * s.h + i) * s.w + j;
    let wi = |o: usize, c: usize, i: usize, j: usize| ((o * s.c_in + c) * s.kh + i) * s.kw + j;
    let yi = |n: usize, o: usize, i: usize, j: usize| ((n * s.c_out + o) * ho + i) * wo + j;
    let (mut y64, mut dx64, mut dw64) = (vec![0.0f64; dy.len()], vec![0.0f64; x.len()], vec![0.0f64; wt.len()]);
    for n in 0..s.n {
        for o in 0..s.c_out {
            for oh in 0..ho {
                for ow in 0..wo {
                    for c in 0..s.c_in {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let ih = (oh * s.stride + ki) as i64 - s.pad as i64;
                                let iw = (ow * s.stride + kj) as i64 - s.pad as i64;
                                if ih < 0 || iw < 0 || ih >= s.h as i64 || iw >= s.w as i64 {
                                    continue;
                                }
                                let (xa, wa, ya) =
                                    (xi(n, c, ih as usize, iw as usize), wi(o, c, ki, kj), yi(n, o, oh, ow));
                                y64[ya] += f64::from(x[xa]) * f64::from(wt[wa]);
                                dx64[xa] += f64::from(dy[ya]) * f64::from(wt[wa]);
                                dw64[wa] += f64::from(dy[ya]) * f64::from(x[xa]);
                            }
                        }
                    }
                }
            }
        }
    }
    let (mut y, mut dx, mut dw) = (vec![f32::NAN; dy.len()], vec![f32::NAN; x.len()], vec![f32::NAN; wt.len()]);
    conv2d_forward(&s, &x, &wt, &mut y).unwrap();
    conv2d_backward_data(&s, &dy, &wt, &mut dx).unwrap();
    conv2d_backward_weight(&s, &dy, &x, &mut dw).unwrap();
    for (what, got, want) in [("y", &y, &y64), ("dx", &dx, &dx64), ("dw", &dw, &dw64)] {
        for (i, (&g, &e)) in got.iter().zip(want.iter()).enumerate() {
            // At most 162 products of unit normals per sum: f32 accumulation stays well within 1e-5 of f64.
            assert!((f64::from(g) - e).abs() <= 1e-5 * (1.0 + e.abs()), "{s:?} {what}[{i}]: {g} vs {e}");
        }
    }
}
