//! `shaders/margin_loss.wgsl` (with `normalize.wgsl`) against the core's `margin_loss_forward` /
//! `margin_loss_backward`, on the core's data: the GPU keeps the class centres as rows of `(C, D)`, and
//! `upload_head_weight` / `download_head_weight` transpose from and to the core's `(D, C)`.
//!
//! Tolerances (`u = 2^-24 ~ 6e-8`; "measured" is the worst over every case of `every_loss_matches_the_core` on
//! lavapipe, which prints it):
//!
//! - The Plus assignment (`order`, assigned margins) is a permutation decided by comparisons: exact, given the same
//!   `cos_y`. Against the core's own run it is exact as long as no two samples' `cos_y` lie within rounding of each
//!   other (random data: they never do); `plus_assignment_is_the_cores` checks it on the GPU's `cos_y`, with ties.
//! - `cos_y`: the products are the core's operations in its order, but the unit vectors are rounded differently
//!   (the normalisation sums in another order), about `u` per component: 1e-6 absolute, as the core's reference
//!   tolerance for a D-term dot product of unit vectors. Measured 1.8e-7 (3 ulp below 1).
//! - The loss: logits are `s = 64` times the cosines, so a cosine error `e` moves the loss by up to `~2 s e`
//!   (1.5e-5 for `e = 1.2e-7`); the log-sum-exp and softmax are `f32` here (the core: `f64`), a few `u` of the loss
//!   (44..105 here). 1e-4 absolute plus 1e-5 relative. Measured 7.6e-6 (1 ulp of a loss in 64..128).
//! - `dcos`, `d_emb`, `d_w`: softmax probabilities (`f32` exp of `f32` logits) times `s`, summed over `C` or `B` in
//!   `f32`, then projected (`dy - y <y, dy>`), which cancels: the error scales with the tensor's largest entry, so
//!   it is stated relative to that. A logit error of `s e` moves a probability `p` by `s e p` (~1e-5 relative), and
//!   the sums add `log2(n)`..`n` ulps. 2e-5 of the largest entry; measured 3.7e-6 (`dcos`), 2.6e-6 (`d_emb`), 2.0e-6
//!   (`d_w`), i.e. 5..10x below.

use elasticface::gpu::kernels::margin::{
    download_head_weight, margin_table, transpose, upload_head_weight, HeadOptions, MarginHead, MarginLoss, CLASS_TILE,
    ROW_STATS,
};
use elasticface::gpu::{Gpu, GpuOptions};
use elasticface_core::margin::{
    assign_plus, margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig, MarginKind,
    PlusAssignment,
};
use elasticface_core::nn::{l2_normalize_forward, VectorLayout};
use elasticface_tests::{gpu, max_abs_diff, uniform};

/// Every loss of the family: the six presets, and the two Plus losses with the released code's assignment.
fn losses() -> Vec<(String, MarginConfig)> {
    let mut v: Vec<(String, MarginConfig)> =
        MarginConfig::PRESETS.iter().map(|(name, cfg)| (name.to_string(), *cfg)).collect();
    for (name, cfg) in
        [("elastic-arc-plus", MarginConfig::ELASTIC_ARC_PLUS), ("elastic-cos-plus", MarginConfig::ELASTIC_COS_PLUS)]
    {
        v.push((format!("{name} (released-code)"), cfg.with_plus(PlusAssignment::ReleasedCode)));
    }
    v
}

/// One head's inputs in the core's layout.
struct Case {
    cfg: MarginConfig,
    shape: HeadShape,
    emb: Vec<f32>,
    /// `(D, C)`.
    w: Vec<f32>,
    labels: Vec<u32>,
    margins: Vec<f32>,
}

impl Case {
    fn new(cfg: MarginConfig, b: usize, d: usize, c: usize, seed: u64) -> Self {
        let shape = HeadShape::new(b, d, c);
        let labels = (0..b).map(|i| ((i as u64 * 7919 + seed * 31) % c as u64) as u32).collect();
        let mut margins = vec![0.0; b];
        cfg.draw_margins_at(seed, 3, &mut margins);
        Case { cfg, shape, emb: uniform(seed, b * d), w: uniform(seed + 1000, d * c), labels, margins }
    }
}

/// What the core or the GPU computed for a case.
#[derive(Debug, PartialEq)]
struct Out {
    loss: f32,
    cos_y: Vec<f32>,
    margins: Vec<f32>,
    order: Vec<u32>,
    /// `(B, C)` `dL/d raw_cos`, when the GPU ran it in one wave.
    dcos: Option<Vec<f32>>,
    d_emb: Vec<f32>,
    /// `(D, C)`.
    d_w: Vec<f32>,
}

fn core_run(case: &Case) -> Out {
    let shape = case.shape;
    let (b, c) = (shape.batch, shape.classes);
    let mut arena = vec![0.0; shape.scratch_len()];
    let mut order = vec![0u32; b];
    let mut s = HeadScratch::from_arena(&shape, &mut arena, &mut order).unwrap();
    let loss = margin_loss_forward(&case.cfg, &shape, &case.emb, &case.w, &case.labels, &case.margins, &mut s).unwrap();
    let cos_y = (0..b).map(|i| s.cos[i * c + case.labels[i] as usize]).collect();
    let margins = s.margins.to_vec();
    let (mut d_emb, mut d_w) = (vec![0.0; shape.emb_len()], vec![0.0; shape.weight_len()]);
    margin_loss_backward(&case.cfg, &shape, &case.labels, &mut s, &mut d_emb, &mut d_w).unwrap();
    let dcos = Some(s.logits.to_vec());
    Out { loss, cos_y, margins, order: s.order.to_vec(), dcos, d_emb, d_w }
}

fn gpu_run(gpu: &Gpu, k: &MarginLoss, case: &Case, opts: &HeadOptions) -> (Out, Vec<f32>) {
    let HeadShape { batch: b, dim: d, classes: c } = case.shape;
    let emb = gpu.upload("emb", &[b, d], &case.emb);
    let w = upload_head_weight(gpu, "head.weight", d, c, &case.w).unwrap();
    let d_emb = gpu.zeros("d_emb", &[b, d]);
    let d_w = gpu.zeros_split_like("head.weight.grad", &w, d).unwrap();
    let head = MarginHead::new(gpu, k, &case.cfg, case.shape, &emb, &w, &d_emb, &d_w, opts).unwrap();
    head.write_step(gpu, &case.labels, &case.margins).unwrap();
    let all: Vec<_> = head.forward().iter().chain(head.backward()).collect();
    gpu.run(&all).unwrap();
    let dcos = (head.waves.len() == 1).then(|| {
        let v = gpu.read::<f32>(&head.dcos).unwrap();
        assert_eq!(v.len(), b * c);
        v
    });
    let out = Out {
        loss: head.read_loss(gpu).unwrap(),
        cos_y: gpu.read(&head.cos_y).unwrap(),
        margins: gpu.read::<f32>(&head.margins).unwrap()[..b].to_vec(),
        order: gpu.read(&head.order).unwrap(),
        dcos,
        d_emb: gpu.read(&d_emb).unwrap(),
        d_w: download_head_weight(gpu, &d_w).unwrap(),
    };
    (out, gpu.read(&head.row_stats).unwrap())
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Errors of the GPU against the core: cos_y (abs), loss (abs), dcos, d_emb, d_w (abs / largest entry).
#[derive(Clone, Copy, Debug, Default)]
struct Errors {
    cos_y: f32,
    loss: f32,
    dcos: f32,
    d_emb: f32,
    d_w: f32,
}

impl Errors {
    fn max(self, o: Errors) -> Errors {
        Errors {
            cos_y: self.cos_y.max(o.cos_y),
            loss: self.loss.max(o.loss),
            dcos: self.dcos.max(o.dcos),
            d_emb: self.d_emb.max(o.d_emb),
            d_w: self.d_w.max(o.d_w),
        }
    }
}

fn compare(what: &str, got: &Out, want: &Out) -> Errors {
    assert_eq!(got.order, want.order, "{what}: order");
    assert_eq!(got.margins, want.margins, "{what}: assigned margins");
    let rel = |a: &[f32], b: &[f32]| max_abs_diff(a, b) / max_abs(b);
    let e = Errors {
        cos_y: max_abs_diff(&got.cos_y, &want.cos_y),
        loss: (got.loss - want.loss).abs(),
        dcos: got.dcos.as_ref().map_or(0.0, |g| rel(g, want.dcos.as_ref().unwrap())),
        d_emb: rel(&got.d_emb, &want.d_emb),
        d_w: rel(&got.d_w, &want.d_w),
    };
    assert!(e.cos_y <= 1e-6, "{what}: cos_y {e:?}");
    assert!(e.loss <= 1e-4 + 1e-5 * want.loss, "{what}: loss {} vs {}: {e:?}", got.loss, want.loss);
    assert!(e.dcos <= 2e-5, "{what}: dcos {e:?}");
    assert!(e.d_emb <= 2e-5, "{what}: d_emb {e:?}");
    assert!(e.d_w <= 2e-5, "{what}: d_w {e:?}");
    e
}

#[test]
fn every_loss_matches_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = MarginLoss::new(gpu);
    let opts = HeadOptions::default();
    let mut worst = Errors::default();
    let mut losses_seen = (f32::MAX, 0.0f32);
    // Odd shapes: C = 37 is below one chunk of 64 classes, 101 and 130 span two and three; D = 40 is three steps of
    // the 16-deep staging (the last partial); B = 70 and 300 are two and five row tiles, and 300 exceeds a
    // workgroup (the per-row kernels loop); C = 17,000 has 266 chunks, more than a workgroup's threads.
    let shapes = [(3, 5, 37), (7, 16, 101), (70, 40, 130), (300, 8, 70), (3, 4, 17_000)];
    for (i, (b, d, c)) in shapes.into_iter().enumerate() {
        for (j, (name, cfg)) in losses().into_iter().enumerate() {
            let case = Case::new(cfg, b, d, c, (10 * i + j) as u64);
            let want = core_run(&case);
            let (got, _) = gpu_run(gpu, &k, &case, &opts);
            worst = worst.max(compare(&format!("{name} ({b}, {d}, {c})"), &got, &want));
            losses_seen = (losses_seen.0.min(want.loss), losses_seen.1.max(want.loss));
        }
    }
    eprintln!("margin head vs core, worst: {worst:?}; losses {losses_seen:?}");
}

#[test]
fn reruns_are_bit_identical() {
    let Some(gpu) = gpu() else { return };
    let k = MarginLoss::new(gpu);
    let case = Case::new(MarginConfig::ELASTIC_ARC_PLUS, 7, 16, 101, 5);
    // Small splits: several partial sums of d_emb per wave.
    let opts = HeadOptions { split_classes: 32, ..HeadOptions::default() };
    let (first, stats) = gpu_run(gpu, &k, &case, &opts);
    let (second, stats2) = gpu_run(gpu, &k, &case, &opts);
    assert_eq!(first, second);
    assert_eq!(stats, stats2);
}

#[test]
fn splitting_the_head_changes_no_bit() {
    let Some(shared) = gpu() else { return };
    // C = 300, D = 16: 19,200 bytes of class centres. With 8 KiB bindings: parts of 128, 128 and 44 classes.
    let limited = Gpu::new(&GpuOptions { binding_limit: Some(8192), checked: true, ..GpuOptions::from_env() }).unwrap();
    let (ks, kl) = (MarginLoss::new(shared), MarginLoss::new(&limited));
    for (name, cfg) in [("elastic-arc-plus", MarginConfig::ELASTIC_ARC_PLUS), ("cosface", MarginConfig::COSFACE)] {
        let case = Case::new(cfg, 7, 16, 300, 77);
        let want = core_run(&case);
        for split_classes in [64, 256] {
            let opts = HeadOptions { split_classes, ..HeadOptions::default() };
            let (whole, whole_stats) = gpu_run(shared, &ks, &case, &opts);
            compare(name, &whole, &want);
            // Split into parts (a split of 256 classes then continues across the part boundary at 128 and 256).
            let (parts, parts_stats) = gpu_run(&limited, &kl, &case, &opts);
            // And into waves of 80 classes inside the parts: 7 * 80 * 4 = 2,240 bytes of dcos (and room for the
            // five partial sums of d_emb of the splits of 64, 5 * 7 * 16 * 4 = 2,240 bytes).
            let small = HeadOptions { scratch_bytes: 7 * 80 * 4, split_classes };
            let (waves, waves_stats) = gpu_run(&limited, &kl, &case, &small);
            for (what, out, stats) in [("parts", &parts, &parts_stats), ("waves", &waves, &waves_stats)] {
                assert_eq!(out.loss, whole.loss, "{name}, {what}, splits of {split_classes}: loss");
                assert_eq!(out.cos_y, whole.cos_y, "{name}, {what}: cos_y");
                assert_eq!(out.margins, whole.margins, "{name}, {what}: margins");
                assert_eq!(stats, &whole_stats, "{name}, {what}: row stats");
                assert_eq!(out.d_emb, whole.d_emb, "{name}, {what}, splits of {split_classes}: d_emb");
                assert_eq!(out.d_w, whole.d_w, "{name}, {what}: d_w");
            }
        }
    }
    // The plan: three parts, and the waves of 80 classes inside them.
    let case = Case::new(MarginConfig::ARCFACE, 7, 16, 300, 1);
    let w = upload_head_weight(&limited, "head.weight", 16, 300, &case.w).unwrap();
    assert_eq!(w.offsets, [0, 128, 256, 300]);
    let (emb, d_emb) = (limited.zeros("emb", &[7, 16]), limited.zeros("d_emb", &[7, 16]));
    let d_w = limited.zeros_split_like("d_w", &w, 16).unwrap();
    let opts = HeadOptions { scratch_bytes: 7 * 80 * 4, split_classes: 64 };
    let head = MarginHead::new(&limited, &kl, &case.cfg, case.shape, &emb, &w, &d_emb, &d_w, &opts).unwrap();
    let lens: Vec<usize> = head.waves.iter().map(|w| w.len).collect();
    assert_eq!(lens, [80, 48, 80, 48, 44]);
    assert_eq!(head.split_classes, 64);
}

#[test]
fn plus_assignment_is_the_cores() {
    let Some(gpu) = gpu() else { return };
    let k = MarginLoss::new(gpu);
    for (b, d, c) in [(9, 4, 20), (300, 4, 50)] {
        for plus in [PlusAssignment::Paper, PlusAssignment::ReleasedCode] {
            let cfg = MarginConfig::ELASTIC_COS_PLUS.with_plus(plus);
            let mut case = Case::new(cfg, b, d, c, 9);
            // Ties: samples 1, 4 and 7 are copies of sample 0 (same embedding and label: the same cos_y, bit for
            // bit); the margins repeat in pairs (equal keys) and include -0.0 and 0.0.
            for i in [1, 4, 7] {
                case.labels[i] = case.labels[0];
                let row = case.emb[..d].to_vec();
                case.emb[i * d..(i + 1) * d].copy_from_slice(&row);
            }
            for i in (1..b).step_by(2) {
                case.margins[i] = case.margins[i - 1];
            }
            case.margins[2] = -0.0;
            case.margins[3] = 0.0;
            let (got, _) = gpu_run(gpu, &k, &case, &HeadOptions::default());
            assert_eq!(got.cos_y[1], got.cos_y[0]);
            let (mut margins, mut order) = (case.margins.clone(), vec![0u32; b]);
            assign_plus(plus, &got.cos_y, &mut margins, &mut order).unwrap();
            assert_eq!(got.order, order, "{plus}, B = {b}");
            assert_eq!(
                got.margins.iter().map(|m| m.to_bits()).collect::<Vec<_>>(),
                margins.iter().map(|m| m.to_bits()).collect::<Vec<_>>()
            );
            // And the core's whole head agrees (no near-ties in cos_y across different samples here).
            compare(&format!("{plus}, B = {b}"), &got, &core_run(&case));
        }
    }
}

#[test]
fn clamp_and_the_arc_floor_match_the_core() {
    let Some(gpu) = gpu() else { return };
    let k = MarginLoss::new(gpu);
    let (b, d, c) = (4, 3, 9);
    // A vector whose unit vector's dot product with itself rounds above 1 in f32 (found with the core; integer
    // components make the squared norm exact in any summation order, so the GPU normalises to the same bits).
    let mut above = None;
    'search: for x in 1..8 {
        for y in 1..8 {
            for z in 1..8 {
                let v = [x as f32, y as f32, z as f32];
                let (mut u, mut n) = ([0.0; 3], [0.0; 1]);
                l2_normalize_forward(VectorLayout::rows(1, 3), &v, &mut u, &mut n).unwrap();
                // The core's cosine_forward order: from 0.0, k = 0..D.
                let raw = u.iter().fold(0.0f32, |acc, &e| acc + e * e);
                if raw > 1.0 {
                    above = Some(v);
                    break 'search;
                }
            }
        }
    }
    let above = above.expect("a vector whose unit self-product exceeds 1");
    // That vector normalises on the GPU to the core's bits only where division and square root are correctly
    // rounded, as on lavapipe (CI). WGSL does not require it, and NVIDIA's driver does not (its raw product then
    // comes out at exactly 1, unclamped): there sample 1 keeps its random values and only the floor is checked.
    let exact = gpu.info.device_type == wgpu::DeviceType::Cpu;
    if !exact {
        eprintln!("note: {}: the clamp above 1 is checked on CPU adapters only (see the comment)", gpu.info.name);
    }
    for kind in [MarginKind::Arc, MarginKind::Cos] {
        // s = 4: the softmax is not saturated, so the target's gradient is not zero.
        let cfg = MarginConfig { kind, s: 4.0, m: 0.5, sigma: 0.0, plus: PlusAssignment::None };
        let mut case = Case::new(cfg, b, d, c, 4);
        case.labels = vec![2, 5, 0, 7];
        // Sample 0 lies exactly on its centre's axis: cos_y = 1 exactly (sin(theta) = 0: the floor acts). Unit
        // components, so that normalising is exact on any device (a GPU's division or square root need not be
        // correctly rounded: 3 / sqrt(9) is 0.99999994 on NVIDIA's driver).
        case.emb[..3].copy_from_slice(&[0.0, 1.0, 0.0]);
        for (k, v) in [0.0, 1.0, 0.0].into_iter().enumerate() {
            case.w[k * c + 2] = v;
        }
        // Sample 1 is twice its centre: the raw product exceeds 1 and is clamped (zero gradient through it).
        if exact {
            case.emb[3..6].copy_from_slice(&above.map(|v| 2.0 * v));
            for (k, v) in above.into_iter().enumerate() {
                case.w[k * c + 5] = v;
            }
        }
        let want = core_run(&case);
        let (got, _) = gpu_run(gpu, &k, &case, &HeadOptions::default());
        assert_eq!(got.cos_y[0], 1.0);
        let dcos = got.dcos.as_ref().unwrap();
        if exact {
            assert_eq!(got.cos_y[1], 1.0);
            assert_eq!(dcos[c + 5], 0.0, "{kind}: the clamped entry passes no gradient");
            assert_eq!(want.dcos.as_ref().unwrap()[c + 5], 0.0);
        }
        assert!(dcos[2] != 0.0 && dcos[2].is_finite(), "{kind}: the floored target passes a finite gradient");
        compare(&format!("{kind} at cos_y = 1"), &got, &want);
    }
}

#[test]
fn head_weight_round_trips_through_the_gpu_layout() {
    let Some(gpu) = gpu() else { return };
    let (d, c) = (5, 37);
    let w = uniform(3, d * c);
    let t = upload_head_weight(gpu, "head.weight", d, c, &w).unwrap();
    assert_eq!((t.rows, t.cols), (c, d));
    assert_eq!(gpu.read_split::<f32>(&t).unwrap(), transpose(d, c, &w));
    assert_eq!(download_head_weight(gpu, &t).unwrap(), w);
    assert_eq!(margin_table(&[0.5]), [0.5, 0.5f64.cos() as f32, 0.5f64.sin() as f32]);
    assert_eq!(ROW_STATS, 4);
}

/// The error of a refused call.
fn refused<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = MarginLoss::new(gpu);
    let cfg = MarginConfig::ARCFACE;
    let shape = HeadShape::new(3, 5, 37);
    let w = upload_head_weight(gpu, "head.weight", 5, 37, &uniform(1, 5 * 37)).unwrap();
    let d_w = gpu.zeros_split_like("head.weight.grad", &w, 5).unwrap();
    let (emb, d_emb) = (gpu.zeros("emb", &[3, 5]), gpu.zeros("d_emb", &[3, 5]));
    let opts = HeadOptions::default();

    let short = gpu.zeros("emb", &[14]);
    let e = refused(MarginHead::new(gpu, &k, &cfg, shape, &short, &w, &d_emb, &d_w, &opts));
    assert!(e.contains("emb has 14 elements, the shape needs 15"), "{e}");
    let e = refused(MarginHead::new(gpu, &k, &cfg, shape, &emb, &w, &short, &d_w, &opts));
    assert!(e.contains("emb has 14 elements"), "{e}");
    let e = refused(MarginHead::new(gpu, &k, &cfg, HeadShape::new(3, 5, 36), &emb, &w, &d_emb, &d_w, &opts));
    assert!(e.contains("head.weight is (37, 5), the head needs (C, D) = (36, 5)"), "{e}");
    let e = refused(MarginHead::new(gpu, &k, &MarginConfig { s: -1.0, ..cfg }, shape, &emb, &w, &d_emb, &d_w, &opts));
    assert!(e.contains("scale"), "{e}");

    let head = MarginHead::new(gpu, &k, &cfg, shape, &emb, &w, &d_emb, &d_w, &opts).unwrap();
    let e = head.write_step(gpu, &[0, 37, 1], &[0.5; 3]).unwrap_err().to_string();
    assert!(e.contains("labels[1] = 37 is not below the class count 37"), "{e}");
    let e = head.write_step(gpu, &[0, 1, 2], &[0.5, f32::NAN, 0.5]).unwrap_err().to_string();
    assert!(e.contains("margins_raw[1] = NaN is not finite"), "{e}");
    let e = head.write_step(gpu, &[0, 1], &[0.5; 3]).unwrap_err().to_string();
    assert!(e.contains("2 labels and 3 margins for a batch of 3"), "{e}");

    // Splits: a gradient split elsewhere; a weight whose parts are not whole chunks of classes.
    let limited = Gpu::new(&GpuOptions { binding_limit: Some(8192), checked: true, ..GpuOptions::from_env() }).unwrap();
    let k = MarginLoss::new(&limited);
    let shape = HeadShape::new(3, 16, 300);
    let (emb, d_emb) = (limited.zeros("emb", &[3, 16]), limited.zeros("d_emb", &[3, 16]));
    let w = limited.zeros_split("head.weight", 300, 16, 1).unwrap();
    assert_eq!(w.offsets, [0, 128, 256, 300]);
    let odd = limited.zeros_split("head.weight.grad", 300, 16, 100).unwrap();
    let e = refused(MarginHead::new(&limited, &k, &cfg, shape, &emb, &w, &d_emb, &odd, &opts));
    assert!(e.contains("head.weight.grad is not split like head.weight"), "{e}");
    let w = limited.zeros_split("head.weight", 300, 16, 100).unwrap();
    let e = refused(MarginHead::new(&limited, &k, &cfg, shape, &emb, &w, &d_emb, &odd, &opts));
    assert!(e.contains(&format!("parts must hold multiples of {CLASS_TILE} classes")), "{e}");
}
