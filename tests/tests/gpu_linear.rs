//! `shaders/linear.wgsl` with the 1x1-convolution products of `shaders/conv2d.wgsl`, against the core's
//! `linear_forward` and `linear_backward`.
//!
//! Tolerance: as in `gpu_conv2d.rs`, the rigorous bound for two summations of the same K products in different
//! orders, `(K + S + 2) * f32::EPSILON * A_i * 1.01` with `A_i` the sum of absolute values of element i's
//! terms (the core run on `|inputs|`, the bias included), S the splits, and one more rounding for the bias
//! add (K = IN for `y`, OUT for `dx`, N for `dweight`). The bias gradient sums `dy` over the batch in the core's
//! order: bit-identical.

use elasticface::gpu::kernels::conv2d::{ConvOp as Op, ConvTiling, TileShape};
use elasticface::gpu::kernels::linear::{conv_shape, Linear};
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Gpu, Tensor};
use elasticface_core::nn::{self, Conv2dShape, LinearShape};
use elasticface_tests::{gpu, uniform};

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Checks `got` against `want` with the bound above; returns (max |error|, max error/bound).
fn check(what: &str, got: &[f32], want: &[f32], abs_sum: &[f32], terms: usize) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_err, mut max_ratio) = (0.0f32, 0.0f32);
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs_sum).enumerate() {
        let err = (g - w).abs();
        let bound = (terms + 2) as f32 * f32::EPSILON * a * 1.01;
        assert!(err <= bound, "{what}: element {i}: gpu {g}, core {w}, |error| {err:e} > bound {bound:e}");
        max_err = max_err.max(err);
        if bound > 0.0 {
            max_ratio = max_ratio.max(err / bound);
        }
    }
    (max_err, max_ratio)
}

fn run(gpu: &Gpu, dispatches: &[Dispatch]) {
    gpu.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
}

struct Case {
    s: LinearShape,
    x: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    dy: Vec<f32>,
}

impl Case {
    fn new(n: usize, inputs: usize, outputs: usize, seed: u64) -> Self {
        let s = LinearShape { n, inputs, outputs };
        Self {
            x: uniform(seed, s.input_len()),
            weight: uniform(seed + 1, s.weight_len()),
            bias: uniform(seed + 2, outputs),
            dy: uniform(seed + 3, s.output_len()),
            s,
        }
    }
}

/// The GPU tensors of a case and its outputs, and the dispatches of forward then backward.
struct Run {
    y: Tensor,
    dx: Tensor,
    dweight: Tensor,
    dbias: Tensor,
    dispatches: Vec<Dispatch>,
}

fn record(gpu: &Gpu, linear: &Linear, c: &Case) -> Run {
    let s = &c.s;
    let x = gpu.upload("x", &[s.n, s.inputs], &c.x);
    let weight = gpu.upload("weight", &[s.outputs, s.inputs], &c.weight);
    let bias = gpu.upload("bias", &[s.outputs], &c.bias);
    let dy = gpu.upload("dy", &[s.n, s.outputs], &c.dy);
    let (y, dx) = (gpu.zeros("y", &[s.n, s.outputs]), gpu.zeros("dx", &[s.n, s.inputs]));
    let (dweight, dbias) = (gpu.zeros("dweight", &[s.outputs, s.inputs]), gpu.zeros("dbias", &[s.outputs]));
    let scratch = gpu.zeros("scratch", &[linear.scratch_len(gpu, s).unwrap().max(1)]);
    let phased = gpu.zeros("phased", &[s.weight_len()]);
    let mut dispatches = linear.forward(gpu, s, &x, &weight, &bias, &y, &scratch).unwrap();
    dispatches.extend(linear.backward(gpu, s, &x, &weight, &dy, &dx, &dweight, &dbias, &phased, &scratch).unwrap());
    Run { y, dx, dweight, dbias, dispatches }
}

#[test]
fn linear_matches_the_core() {
    let Some(gpu) = gpu() else { return };
    let splitting = ConvTiling {
        tile: TileShape::new(64, 64, 16),
        short_tiles: false,
        target_workgroups: 1 << 20,
        min_steps_per_split: 1,
        max_grid_x: 2,
    };
    for (name, tiling) in [("adapter", ConvTiling::for_adapter(gpu)), ("split+fold", splitting)] {
        let linear = Linear::with_tiling(gpu, tiling).unwrap();
        let mut worst = [(0.0f32, 0.0f32); 3];
        // Tiny, tall, wide (several row tiles of OUT), and a long reduction over IN.
        for (i, &(n, inputs, outputs)) in
            [(1, 1, 1), (3, 37, 70), (67, 5, 3), (2, 1000, 3), (5, 130, 131)].iter().enumerate()
        {
            let c = Case::new(n, inputs, outputs, 100 * i as u64);
            let s = &c.s;
            let r = record(gpu, &linear, &c);
            run(gpu, &r.dispatches);
            let conv = conv_shape(s);
            let splits = |op| linear_conv_splits(gpu, tiling, op, &conv);

            let (mut want, mut sum) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
            nn::linear_forward(s, &c.x, &c.weight, &c.bias, &mut want).unwrap();
            nn::linear_forward(s, &abs(&c.x), &abs(&c.weight), &abs(&c.bias), &mut sum).unwrap();
            let terms = inputs + splits(Op::Forward);
            let e0 = check(&format!("{name} y {s:?}"), &gpu.read(&r.y).unwrap(), &want, &sum, terms);

            let (mut dx, mut dw, mut db) = (vec![0.0; s.input_len()], vec![0.0; s.weight_len()], vec![0.0; outputs]);
            nn::linear_backward(s, &c.x, &c.weight, &c.dy, &mut dx, &mut dw, &mut db).unwrap();
            let (mut adx, mut adw, mut adb) = (vec![0.0; s.input_len()], vec![0.0; s.weight_len()], vec![0.0; outputs]);
            nn::linear_backward(s, &abs(&c.x), &abs(&c.weight), &abs(&c.dy), &mut adx, &mut adw, &mut adb).unwrap();
            let e1 = check(
                &format!("{name} dx {s:?}"),
                &gpu.read(&r.dx).unwrap(),
                &dx,
                &adx,
                outputs + splits(Op::BackwardData),
            );
            let e2 = check(
                &format!("{name} dweight {s:?}"),
                &gpu.read(&r.dweight).unwrap(),
                &dw,
                &adw,
                n + splits(Op::BackwardWeight),
            );
            assert_eq!(gpu.read::<f32>(&r.dbias).unwrap(), db, "{name} dbias {s:?}");

            for (w, e) in worst.iter_mut().zip([e0, e1, e2]) {
                *w = (w.0.max(e.0), w.1.max(e.1));
            }
        }
        for (what, (err, ratio)) in ["y", "dx", "dweight"].iter().zip(worst) {
            eprintln!("{name:>10} {what:<8} max |error| {err:.2e}, max error / bound {ratio:.3}");
        }
    }
}

/// Splits of the reduction of the 1x1-convolution product `op`.
fn linear_conv_splits(gpu: &Gpu, tiling: ConvTiling, op: Op, conv: &Conv2dShape) -> usize {
    tiling.plan(op, conv, gpu.caps.max_workgroups_per_dim).unwrap().splits as usize
}

#[test]
fn linear_is_bit_identical_from_run_to_run() {
    let Some(gpu) = gpu() else { return };
    let tiling = ConvTiling {
        tile: TileShape::new(64, 64, 16),
        short_tiles: false,
        target_workgroups: 1 << 20,
        min_steps_per_split: 1,
        max_grid_x: 2,
    };
    let linear = Linear::with_tiling(gpu, tiling).unwrap();
    let c = Case::new(9, 300, 20, 7);
    let r = record(gpu, &linear, &c);
    let bits = |r: &Run| [&r.y, &r.dx, &r.dweight, &r.dbias].map(|t| gpu.read::<u32>(t).unwrap());
    run(gpu, &r.dispatches);
    let first = bits(&r);
    run(gpu, &r.dispatches);
    assert_eq!(first, bits(&r));
}

#[test]
fn wrong_tensors_are_refused_naming_them() {
    let Some(gpu) = gpu() else { return };
    let linear = Linear::new(gpu);
    let s = LinearShape { n: 2, inputs: 3, outputs: 4 };
    let t = |label: &str, len: usize| gpu.zeros(label, &[len]);
    let (x, w, b, y, dy) = (t("x", 6), t("weight", 12), t("bias", 4), t("y", 8), t("dy", 8));
    let (dx, dw, db, scratch, phased) =
        (t("dx", 6), t("dweight", 12), t("dbias", 4), t("scratch", 64), t("phased", 12));
    let message = |r: Result<Vec<Dispatch>, _>| -> String { format!("{:#}", r.err().expect("refused")) };
    let e = message(linear.forward(gpu, &s, &x, &w, &t("bias", 3), &y, &scratch));
    assert!(e.contains("linear_forward: bias has 3 elements, the shape needs 4"), "{e}");
    let e = message(linear.forward(gpu, &s, &t("x", 5), &w, &b, &y, &scratch));
    assert!(e.contains("linear_forward: x has 5"), "{e}");
    let e = message(linear.forward(gpu, &s, &x, &w, &b, &t("y", 9), &scratch));
    assert!(e.contains("y has 9"), "{e}");
    let e = message(linear.backward(gpu, &s, &x, &w, &dy, &dx, &dw, &t("dbias", 5), &phased, &scratch));
    assert!(e.contains("linear_backward: dbias has 5"), "{e}");
    let e = message(linear.backward(gpu, &s, &x, &t("weight", 11), &dy, &dx, &dw, &db, &phased, &scratch));
    assert!(e.contains("linear_backward: weight has 11"), "{e}");
    let e = message(linear.backward(gpu, &s, &x, &w, &dy, &dx, &t("dweight", 13), &db, &phased, &scratch));
    assert!(e.contains("dweight has 13"), "{e}");
    let e = message(linear.forward(gpu, &LinearShape { n: 0, ..s }, &x, &w, &b, &y, &scratch));
    assert!(e.contains("linear_forward: invalid shape"), "{e}");
}
