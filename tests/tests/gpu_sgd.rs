//! `shaders/sgd.wgsl` against its core twins `sgd_step`, `sum_of_squares`, `clip_coefficient`, `scale` and
//! `accumulate_gradient`.
//!
//! Tolerances. `sgd_step` and `scale` are the core's `f32` operations in the core's order: bit-identical where the
//! device rounds each operation correctly and does not fuse `a * b + c` into one rounding (lavapipe, CI: checked bit
//! for bit). A driver may contract to FMA (WGSL allows it; NVIDIA's does): each contracted operation then differs by
//! up to an ulp of its operands, and three steps of momentum carry a few; on such a device each element may differ by
//! 8 `f32::EPSILON` of the tensor's largest value ([`slack_allowed`]). The guarded step is `sgd_step` behind a flag:
//! the same when the step report's flags are 0, and no change to any bit otherwise (on every device). The sum of
//! squares is accumulated in `f32` in blocks and a fixed tree where the core accumulates in `f64`: about `(16 +
//! log2(n)) u` relative in the worst case (`u = 2^-24`); 2e-6 (~34 u) covers it; the norm (square root) and the clip
//! coefficient carry half and the same relative error. `accumulate_gradient` adds, then multiplies the sum (no
//! multiply-add to contract): bit-identical on every device that rounds `f32` operations correctly, as Vulkan, Metal
//! and DX12 require of addition and multiplication.

use elasticface::gpu::kernels::sgd::{
    sum_of_squares_partials, GradClip, SgdKernels, CLIP_LEN, NON_FINITE_BACKBONE, NON_FINITE_HEAD, NON_FINITE_LOSS,
    REPORT_LEN, SUM_BLOCK,
};
use elasticface::gpu::{Gpu, GpuOptions, Tensor};
use elasticface_core::nn::{accumulate_gradient, clip_coefficient, scale, sgd_step, sum_of_squares, MicroBatch, Sgd};
use elasticface_tests::{assert_within_scale, gpu, slack_allowed, uniform};

/// Slack of an SGD result on a device that contracts multiply-adds, in `f32::EPSILON` of the tensor's scale (see
/// the header; measured on an H200: below 0.1).
const SGD_SLACK: f32 = 8.0;

fn rel(a: f32, b: f32) -> f32 {
    ((a - b) / b).abs()
}

#[test]
fn sgd_steps_match_the_core_exactly() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let mut sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
    let hyper = SgdKernels::hyper(gpu, &sgd);
    for len in [1usize, 3, 255, 257, 1000] {
        let mut p = uniform(20, len);
        let mut buf = vec![0.0; len];
        let tp = gpu.upload("param", &[len], &p);
        let tg = gpu.zeros("grad", &[len]);
        let tb = gpu.zeros("momentum_buf", &[len]);
        let step = k.step(gpu, &hyper, &tp, &tg, &tb).unwrap();
        // Three steps with new gradients and a learning rate that changes between steps (one queue write).
        for (i, lr) in [0.1f32, 0.1, 0.01].into_iter().enumerate() {
            sgd.lr = lr;
            SgdKernels::write_hyper(gpu, &hyper, &sgd).unwrap();
            let g = uniform(30 + i as u64, len);
            gpu.write(&tg, &g).unwrap();
            gpu.run(&[&step]).unwrap();
            sgd_step(&sgd, &mut p, &g, &mut buf).unwrap();
            let slack = slack_allowed(gpu, SGD_SLACK);
            assert_within_scale(&format!("param, len {len}, step {i}"), &gpu.read::<f32>(&tp).unwrap(), &p, slack);
            assert_within_scale(
                &format!("momentum_buf, len {len}, step {i}"),
                &gpu.read::<f32>(&tb).unwrap(),
                &buf,
                slack,
            );
        }
    }
}

#[test]
fn gradients_accumulate_as_in_the_core_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    for (len, n) in [(1usize, 2usize), (257, 3), (1000, 4)] {
        // 1 / N at index 1 of a factor tensor, as the trainer keeps it.
        let factor = gpu.upload("factor", &[2], &[7.0, 1.0 / n as f32]);
        let tsum = gpu.upload("sum", &[len], &vec![f32::NAN; len]);
        let tg = gpu.zeros("grad", &[len]);
        let mut sum = vec![f32::NAN; len];
        for i in 0..n {
            let stage = MicroBatch::of(i, n);
            let mut g = uniform(40 + i as u64, len);
            gpu.write(&tg, &g).unwrap();
            gpu.run(&[&k.accumulate_gradient(gpu, stage, &factor, 1, &tsum, &tg).unwrap()]).unwrap();
            accumulate_gradient(stage, &mut sum, &mut g).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("len {len}, micro-batch {i} of {n}");
            assert_eq!(bits(&gpu.read::<f32>(&tg).unwrap()), bits(&g), "grad, {what}");
            if i + 1 < n {
                assert_eq!(bits(&gpu.read::<f32>(&tsum).unwrap()), bits(&sum), "sum, {what}");
            }
        }
    }
    let (factor, t3, t4) = (gpu.zeros("factor", &[1]), gpu.zeros("sum", &[3]), gpu.zeros("grad", &[4]));
    let e = k.accumulate_gradient(gpu, MicroBatch::First, &factor, 0, &t3, &t4).err().unwrap().to_string();
    assert!(e.contains("sum has 3 elements, the shape needs 4"), "{e}");
    let e = k.accumulate_gradient(gpu, MicroBatch::First, &factor, 1, &t4, &t4).err().unwrap().to_string();
    assert!(e.contains("no index 1"), "{e}");
}

#[test]
fn split_step_updates_every_part() {
    let opts = GpuOptions { binding_limit: Some(256), checked: true, ..GpuOptions::from_env() };
    let Some(_) = gpu() else { return };
    let gpu = Gpu::new(&opts).unwrap();
    let k = SgdKernels::new(&gpu);
    let sgd = Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-3 };
    let hyper = SgdKernels::hyper(&gpu, &sgd);
    // (37, 5): 12 rows (240 bytes) per part, 4 parts.
    let (rows, cols) = (37, 5);
    let (mut p, g, mut buf) = (uniform(1, rows * cols), uniform(2, rows * cols), uniform(3, rows * cols));
    let tp = gpu.upload_split("param", rows, cols, 1, &p).unwrap();
    let tg = gpu.upload_split("grad", rows, cols, 1, &g).unwrap();
    let tb = gpu.upload_split("momentum_buf", rows, cols, 1, &buf).unwrap();
    assert_eq!(tp.parts.len(), 4);
    let steps = k.step_split(&gpu, &hyper, &tp, &tg, &tb).unwrap();
    gpu.run(&steps.iter().collect::<Vec<_>>()).unwrap();
    sgd_step(&sgd, &mut p, &g, &mut buf).unwrap();
    let slack = slack_allowed(&gpu, SGD_SLACK);
    assert_within_scale("split param", &gpu.read_split::<f32>(&tp).unwrap(), &p, slack);
    assert_within_scale("split momentum_buf", &gpu.read_split::<f32>(&tb).unwrap(), &buf, slack);

    let other = gpu.zeros_split("grad", rows, cols, 5).unwrap(); // parts of 10 rows
    let err = k.step_split(&gpu, &hyper, &tp, &other, &tb).err().expect("refused");
    assert!(err.to_string().contains("grad is not split like param"), "{err}");
}

/// Gradients of sizes around the block boundaries of `sum_of_squares` (4,096 elements).
fn gradients() -> Vec<Vec<f32>> {
    [1usize, 3, SUM_BLOCK - 1, SUM_BLOCK, SUM_BLOCK + 1, 10_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| uniform(40 + i as u64, n).into_iter().map(|v| v * (i as f32 + 0.5)).collect())
        .collect()
}

#[test]
fn clipping_matches_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let grads = gradients();
    // The core: per-tensor sums of squares (f64, rounded), their f32 sum, sqrt, coefficient, scale.
    let total: f32 = grads.iter().map(|g| sum_of_squares(g)).sum();
    let norm = total.sqrt();
    let (mut worst_norm, mut worst_coef) = (0.0f32, 0.0f32);
    for max_norm in [norm / 3.0, norm * 2.0] {
        let want_coef = clip_coefficient(norm, max_norm);
        let tensors: Vec<Tensor> = grads.iter().map(|g| gpu.upload("grad", &[g.len()], g)).collect();
        let clip = GradClip::new(gpu, &k, &tensors.iter().collect::<Vec<_>>(), max_norm).unwrap();
        assert_eq!(clip.partials.len, grads.iter().map(|g| sum_of_squares_partials(g.len())).sum::<usize>());
        gpu.run(&clip.dispatches().iter().collect::<Vec<_>>()).unwrap();
        let (gpu_norm, gpu_coef) = clip.read(gpu).unwrap();
        assert!(rel(gpu_norm, norm) <= 2e-6, "norm {gpu_norm} vs {norm}");
        assert!(rel(gpu_coef, want_coef) <= 2e-6, "coefficient {gpu_coef} vs {want_coef}");
        if want_coef == 1.0 {
            assert_eq!(gpu_coef, 1.0);
        }
        worst_norm = worst_norm.max(rel(gpu_norm, norm));
        worst_coef = worst_coef.max(rel(gpu_coef, want_coef));
        // The scale is the core's with the GPU's coefficient, bit for bit.
        for (g, t) in grads.iter().zip(&tensors) {
            let mut want = g.clone();
            scale(&mut want, gpu_coef);
            assert_eq!(gpu.read::<f32>(t).unwrap(), want, "scaled tensor of {}", g.len());
        }
    }
    eprintln!("clip: norm rel {worst_norm:e}, coefficient rel {worst_coef:e}");
}

#[test]
fn sums_of_squares_are_deterministic_and_match_per_tensor() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let mut worst = 0.0f32;
    for g in gradients() {
        let t = gpu.upload("x", &[g.len()], &g);
        let count = sum_of_squares_partials(g.len());
        let partials = gpu.zeros("partials", &[count + 2]);
        let clip = gpu.zeros("clip", &[4]);
        // From offset 2, then the combine over all (two leading zeros change nothing).
        let sos = k.sum_of_squares(gpu, &t, &partials, 2).unwrap();
        let combine = k.clip_coefficient(gpu, &partials, count + 2, 1.0, &clip).unwrap();
        gpu.run(&[&sos, &combine]).unwrap();
        let first = gpu.read::<f32>(&clip).unwrap();
        gpu.run(&[&sos, &combine]).unwrap();
        assert_eq!(gpu.read::<f32>(&clip).unwrap(), first, "rerun of {}", g.len());
        let want = sum_of_squares(&g);
        assert!(rel(first[0], want) <= 2e-6, "{} elements: {} vs {want}", g.len(), first[0]);
        worst = worst.max(rel(first[0], want));
    }
    eprintln!("sum_of_squares: worst rel {worst:e}");
}

#[test]
fn bad_sizes_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let hyper = SgdKernels::hyper(gpu, &Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 });
    let (p, g, b) = (gpu.zeros("param", &[4]), gpu.zeros("grad", &[3]), gpu.zeros("momentum_buf", &[4]));
    let err = k.step(gpu, &hyper, &p, &g, &b).err().expect("refused");
    assert!(err.to_string().contains("grad has 3 elements"), "{err}");
    let err = k.step(gpu, &hyper, &p, &p, &g).err().expect("refused");
    assert!(err.to_string().contains("grad has 3 elements"), "{err}");
    let big = gpu.zeros("big", &[2 * SUM_BLOCK + 1]);
    let partials = gpu.zeros("partials", &[3]);
    let err = k.sum_of_squares(gpu, &big, &partials, 1).err().expect("refused");
    assert!(err.to_string().contains("partials has 3 elements, big needs 3 from 1"), "{err}");
    let err = k.scale(gpu, &p, &partials, 3).err().expect("refused");
    assert!(err.to_string().contains("partials has 3 elements, no index 3"), "{err}");
    let err = k.clip_coefficient(gpu, &partials, 3, 1.0, &g).err().expect("refused");
    assert!(err.to_string().contains("grad has 3 elements, the shape needs 4"), "{err}");
    let err = k.clip_coefficient(gpu, &partials, 4, 1.0, &p).err().expect("refused");
    assert!(err.to_string().contains("partials has 3 elements, fewer than the 4 partials"), "{err}");
}

#[test]
fn the_step_report_flags_non_finite_values_and_the_guard_skips_the_update() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
    let hyper = SgdKernels::hyper(gpu, &sgd);
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    // (loss, backbone sum of squares, head sum of squares, expected flags)
    let cases = [
        (1.5, 4.0, 9.0, 0),
        (nan, 4.0, 9.0, NON_FINITE_LOSS),
        (-inf, 4.0, 9.0, NON_FINITE_LOSS),
        (1.5, inf, 9.0, NON_FINITE_BACKBONE),
        (1.5, 4.0, nan, NON_FINITE_HEAD),
        (inf, nan, -inf, NON_FINITE_LOSS | NON_FINITE_BACKBONE | NON_FINITE_HEAD),
        (f32::MAX, f32::MAX, 0.0, 0), // large is not infinite
    ];
    let len = 300; // two workgroups
    for (loss, backbone, head, flags) in cases {
        let (p0, g, b0) = (uniform(5, len), uniform(6, len), uniform(7, len));
        let tp = gpu.upload("param", &[len], &p0);
        let tg = gpu.upload("grad", &[len], &g);
        let tb = gpu.upload("momentum_buf", &[len], &b0);
        let (hp, hg, hb) = (uniform(8, 12), uniform(9, 12), uniform(10, 12));
        let split = |label: &str, v: &[f32]| gpu.upload_split(label, 4, 3, 1, v).unwrap();
        let (shp, shg, shb) = (split("head", &hp), split("head.grad", &hg), split("head.momentum", &hb));
        let loss_t = gpu.upload("loss", &[1], &[loss]);
        let clip = |sum: f32| [sum, sum.sqrt(), 1.0, 0.0];
        let backbone_t = gpu.upload("backbone clip", &[CLIP_LEN], &clip(backbone));
        let head_t = gpu.upload("head clip", &[CLIP_LEN], &clip(head));
        let report = gpu.zeros("report", &[REPORT_LEN]);
        let mut d = vec![k.step_report(gpu, &loss_t, &backbone_t, &head_t, &report).unwrap()];
        d.push(k.step_guarded(gpu, &hyper, &report, &tp, &tg, &tb).unwrap());
        d.extend(k.step_split_guarded(gpu, &hyper, &report, &shp, &shg, &shb).unwrap());
        gpu.run(&d.iter().collect::<Vec<_>>()).unwrap();

        let r = gpu.read::<f32>(&report).unwrap();
        assert_eq!(r[0], flags as f32, "flags of ({loss}, {backbone}, {head})");
        assert_eq!(r[1].to_bits(), loss.to_bits(), "the report carries the loss");
        assert_eq!(r[2].to_bits(), backbone.sqrt().to_bits(), "and the backbone norm");
        assert_eq!(r[3].to_bits(), head.sqrt().to_bits(), "and the head norm");
        let (mut p, mut b, mut q, mut c) = (p0.clone(), b0.clone(), hp.clone(), hb.clone());
        if flags == 0 {
            sgd_step(&sgd, &mut p, &g, &mut b).unwrap();
            sgd_step(&sgd, &mut q, &hg, &mut c).unwrap();
        }
        // Skipped updates leave every bit; applied ones agree as the plain steps above do.
        let slack = if flags == 0 { slack_allowed(gpu, SGD_SLACK) } else { 0.0 };
        assert_within_scale(&format!("param, flags {flags}"), &gpu.read::<f32>(&tp).unwrap(), &p, slack);
        assert_within_scale(&format!("momentum_buf, flags {flags}"), &gpu.read::<f32>(&tb).unwrap(), &b, slack);
        assert_within_scale(&format!("split param, flags {flags}"), &gpu.read_split::<f32>(&shp).unwrap(), &q, slack);
        assert_within_scale(
            &format!("split momentum_buf, flags {flags}"),
            &gpu.read_split::<f32>(&shb).unwrap(),
            &c,
            slack,
        );
    }
}

#[test]
fn a_nan_gradient_reaches_the_report_through_the_clip() {
    let Some(gpu) = gpu() else { return };
    let k = SgdKernels::new(gpu);
    let mut g = uniform(11, 5000);
    g[4321] = f32::NAN;
    let grad = gpu.upload("grad", &[5000], &g);
    let head_grad = gpu.upload("head grad", &[7], &uniform(12, 7));
    let clip = GradClip::new(gpu, &k, &[&grad], 5.0).unwrap();
    let head = GradClip::norm_only(gpu, &k, &[&head_grad]).unwrap();
    assert_eq!(head.dispatches().len(), 2, "sum of squares and combine, no scale");
    let (loss, report) = (gpu.upload("loss", &[1], &[2.0f32]), gpu.zeros("report", &[REPORT_LEN]));
    let mut d: Vec<_> = clip.dispatches().iter().chain(head.dispatches()).collect();
    let step_report = k.step_report(gpu, &loss, &clip.clip, &head.clip, &report).unwrap();
    d.push(&step_report);
    gpu.run(&d).unwrap();
    let r = gpu.read::<f32>(&report).unwrap();
    assert_eq!(r[0], NON_FINITE_BACKBONE as f32);
    assert_eq!(gpu.read::<f32>(&head_grad).unwrap(), uniform(12, 7), "norm_only does not scale");
    assert!((r[3] - sum_of_squares(&uniform(12, 7)).sqrt()).abs() <= 1e-6);
}
