//! Finite-difference checks of `margin_loss_backward` against `margin_loss_forward`, for both kinds (Arc, Cos)
//! with and without Plus, on odd shapes.
//!
//! Each partial derivative is estimated with the five-point central stencil
//! `(-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / 12h` (truncation `O(h^4)`). The loss is an `f32` computation,
//! so its value carries rounding noise of about `s * 1e-7` (the cosines' rounding error times the scale), which the
//! difference quotient divides by `h`. To keep both noise and truncation small:
//! - the scale is moderate (`s = 12`), so the loss is smooth and its rounding noise small;
//! - the step is relative to the perturbed vector's norm (the loss depends only on the direction of each
//!   embedding and class centre, so that is the scale on which it varies): `h = STEP * ||vector||`;
//! - the inputs keep every cosine well inside `(-1, 1)` (asserted), away from the clamp and from the `acos`
//!   singularity.
//!
//! With Plus, the assignment of margins is piecewise constant in the inputs (a perturbation can reorder two
//! samples). As in the reference, the assigned margins are constants of the gradient: the analytic gradient comes
//! from the Plus loss, the finite differences from the same loss without Plus, given the assigned margins as the
//! raw ones. That also checks that the backward pass uses the assigned margins.

use elasticface_core::margin::{
    margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig, MarginKind, PlusAssignment,
};
use elasticface_core::rng::{standard_normal, Philox4x32};

/// Finite-difference step, relative to the norm of the perturbed embedding or class centre. Measured: at 5e-3 the
/// worst error doubles (rounding noise dominates), at 3e-2 the embeddings' error grows (truncation): 1e-2 is near
/// the optimum.
const STEP: f32 = 1e-2;

/// Allowed `|analytic - numeric|`: `ABS_TOL * max|gradient of that tensor| + REL_TOL * |numeric|`.
///
/// Noise: the loss's `f32` rounding error `e` is ~1e-6 at most (cosines rounded to ~1e-7, times s = 12); the
/// stencil turns it into a derivative error of about `1.5 e / h`, i.e. `1.5e-6 / 1e-2 ~ 1.5e-4` in units of
/// (gradient x vector norm), which is the scale of the largest entries. Truncation: `(s h)^4 / 30 ~ 7e-6`.
/// Measured worst case over the 24 runs below: 5.4e-5 of the tensor's largest entry; 5e-4 leaves ~9x. Wrong
/// calculus gives far larger errors: scaling the non-target `dcos` by 1.001, or the margin inside the Arc
/// derivative by 0.9, fails this check (tried while writing it).
const ABS_TOL: f64 = 5e-4;
/// See [`ABS_TOL`]: a relative part of the same size for the largest entries, whose noise is relative to them.
const REL_TOL: f64 = 5e-4;

/// A loss on random inputs.
struct Problem {
    cfg: MarginConfig,
    shape: HeadShape,
    emb: Vec<f32>,
    w: Vec<f32>,
    labels: Vec<u32>,
    margins_raw: Vec<f32>,
}

impl Problem {
    /// Random embeddings and centres (a few embeddings pulled towards their centre so that the target logits
    /// matter), random labels, margins drawn from the configuration.
    fn new(cfg: MarginConfig, (b, d, c): (usize, usize, usize), seed: u64) -> Self {
        let shape = HeadShape::new(b, d, c);
        let mut rng = Philox4x32::new(seed, 0);
        let mut normals =
            |n: usize, sd: f64| -> Vec<f32> { (0..n).map(|_| (sd * standard_normal(&mut rng)) as f32).collect() };
        let mut emb = normals(b * d, 1.0);
        let w = normals(d * c, 0.01);
        let labels: Vec<u32> = (0..b).map(|i| ((i * 7 + seed as usize) % c) as u32).collect();
        for i in 0..b.div_ceil(2) {
            let y = labels[i] as usize;
            for k in 0..d {
                emb[i * d + k] += 100.0 * w[k * c + y];
            }
        }
        let mut margins_raw = vec![0.0; b];
        cfg.draw_margins_at(seed, 1, &mut margins_raw);
        Problem { cfg, shape, emb, w, labels, margins_raw }
    }

    /// Loss, cosines and assigned margins of the forward pass, plus both gradients of the backward pass.
    fn run(&self, cfg: &MarginConfig, emb: &[f32], w: &[f32], margins: &[f32]) -> Run {
        let shape = &self.shape;
        let mut arena = vec![0.0; shape.scratch_len()];
        let mut order = vec![0; shape.batch];
        let mut s = HeadScratch::from_arena(shape, &mut arena, &mut order).unwrap();
        let loss = margin_loss_forward(cfg, shape, emb, w, &self.labels, margins, &mut s).unwrap();
        let (cos, assigned) = (s.cos.to_vec(), s.margins.to_vec());
        let mut d_emb = vec![0.0; shape.emb_len()];
        let mut d_w = vec![0.0; shape.weight_len()];
        margin_loss_backward(cfg, shape, &self.labels, &mut s, &mut d_emb, &mut d_w).unwrap();
        Run { loss, cos, assigned, d_emb, d_w }
    }
}

struct Run {
    loss: f32,
    cos: Vec<f32>,
    assigned: Vec<f32>,
    d_emb: Vec<f32>,
    d_w: Vec<f32>,
}

/// Largest `|analytic - numeric| / max|analytic|` over the tensor, after asserting the tolerance per element.
fn compare(what: &str, analytic: &[f32], numeric: &[f64]) -> f64 {
    let scale = analytic.iter().fold(0.0f64, |a, &g| a.max(f64::from(g).abs()));
    assert!(scale > 0.0, "{what}: the gradient is all zero");
    let mut worst = 0.0f64;
    for (i, (&g, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (f64::from(g) - n).abs();
        assert!(
            err <= ABS_TOL * scale + REL_TOL * n.abs(),
            "{what}[{i}]: analytic {g}, numeric {n} (error {err:.3e}, tensor scale {scale:.3e})"
        );
        worst = worst.max(err / scale);
    }
    worst
}

/// Checks both gradients of `p` element by element; returns the worst relative errors (embeddings, centres).
fn gradcheck(p: &Problem) -> (f64, f64) {
    let (b, d, c) = (p.shape.batch, p.shape.dim, p.shape.classes);
    let base = p.run(&p.cfg, &p.emb, &p.w, &p.margins_raw);
    let max_cos = base.cos.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    assert!(max_cos < 0.95, "inputs too close to the clamp: |cos| = {max_cos}");

    // The margins as assigned are constants of the gradient: finite differences run without Plus on them.
    let fixed = p.cfg.with_plus(PlusAssignment::None);
    let loss = |emb: &[f32], w: &[f32]| -> f64 {
        let shape = &p.shape;
        let mut arena = vec![0.0; shape.scratch_len()];
        let mut order = vec![0; shape.batch];
        let mut s = HeadScratch::from_arena(shape, &mut arena, &mut order).unwrap();
        f64::from(margin_loss_forward(&fixed, shape, emb, w, &p.labels, &base.assigned, &mut s).unwrap())
    };
    assert_eq!(loss(&p.emb, &p.w), f64::from(base.loss));

    // One partial derivative by the five-point stencil, perturbing element `i` of `x` by multiples of `h`.
    let stencil = |x: &[f32], i: usize, h: f32, eval: &dyn Fn(&[f32]) -> f64| -> f64 {
        let mut xp = x.to_vec();
        let mut at = |k: f32| {
            xp[i] = x[i] + k * h;
            eval(&xp)
        };
        let (p2, p1, m1, m2) = (at(2.0), at(1.0), at(-1.0), at(-2.0));
        // The actual steps taken in f32 (x + h may round): use the realised step, symmetric to first order.
        let hr = f64::from((x[i] + h) - x[i]);
        (-p2 + 8.0 * p1 - 8.0 * m1 + m2) / (12.0 * hr)
    };

    let mut num_emb = vec![0.0f64; b * d];
    for row in 0..b {
        let norm = p.emb[row * d..(row + 1) * d].iter().map(|v| v * v).sum::<f32>().sqrt();
        for k in 0..d {
            let i = row * d + k;
            num_emb[i] = stencil(&p.emb, i, STEP * norm, &|e: &[f32]| loss(e, &p.w));
        }
    }
    let mut num_w = vec![0.0f64; d * c];
    for col in 0..c {
        let norm = (0..d).map(|k| p.w[k * c + col] * p.w[k * c + col]).sum::<f32>().sqrt();
        for k in 0..d {
            let i = k * c + col;
            num_w[i] = stencil(&p.w, i, STEP * norm, &|w: &[f32]| loss(&p.emb, w));
        }
    }
    (compare("d_emb", &base.d_emb, &num_emb), compare("d_w", &base.d_w, &num_w))
}

const SHAPES: [(usize, usize, usize); 4] = [(3, 5, 7), (7, 13, 37), (1, 4, 3), (6, 16, 9)];

fn check_kind(kind: MarginKind) {
    let m = match kind {
        MarginKind::Arc => 0.5,
        MarginKind::Cos => 0.35,
    };
    for plus in [PlusAssignment::None, PlusAssignment::Paper, PlusAssignment::ReleasedCode] {
        let cfg = MarginConfig { kind, s: 12.0, m, sigma: 0.05, plus };
        for (n, &shape) in SHAPES.iter().enumerate() {
            let p = Problem::new(cfg, shape, 100 + n as u64);
            let (we, ww) = gradcheck(&p);
            eprintln!("{cfg} {shape:?}: worst error / scale: d_emb {we:.2e}, d_w {ww:.2e}");
        }
    }
}

#[test]
fn arc_gradients_match_finite_differences() {
    check_kind(MarginKind::Arc);
}

#[test]
fn cos_gradients_match_finite_differences() {
    check_kind(MarginKind::Cos);
}

#[test]
fn plus_assignment_feeds_the_backward_pass() {
    // With sigma large enough that the assignment matters, the Plus and non-Plus gradients differ, and each
    // passes its own finite-difference check (done above); here: the analytic gradient of the Plus loss equals
    // that of the plain loss run on the assigned margins, bit for bit.
    let cfg = MarginConfig { kind: MarginKind::Arc, s: 12.0, m: 0.5, sigma: 0.2, plus: PlusAssignment::Paper };
    let p = Problem::new(cfg, (7, 13, 37), 5);
    let plus = p.run(&cfg, &p.emb, &p.w, &p.margins_raw);
    assert_ne!(plus.assigned, p.margins_raw);
    let plain = p.run(&cfg.with_plus(PlusAssignment::None), &p.emb, &p.w, &plus.assigned);
    assert_eq!(plus.loss, plain.loss);
    assert_eq!(plus.d_emb, plain.d_emb);
    assert_eq!(plus.d_w, plain.d_w);
    let unassigned = p.run(&cfg.with_plus(PlusAssignment::None), &p.emb, &p.w, &p.margins_raw);
    assert_ne!(plus.d_emb, unassigned.d_emb);
}
