//! The fused batch norm forms of `shaders/batchnorm.wgsl` (a PReLU or a residual add after the forward; the
//! PReLU's gradient or an accumulation in the backward) against the unfused kernels and against their core twins.
//!
//! - Against the unfused kernels (batch norm, then `prelu_forward` / `residual_add_forward`; the recompute,
//!   `prelu_backward`, then the batch norm backward / `accumulate`) on the same inputs: bit for bit on a CPU
//!   adapter (lavapipe, CI), since the fused kernels run the same operations in the same order, with the same
//!   thread mapping and reduction trees. Elsewhere within 8 `EPSILON` of the tensor's scale
//!   ([`slack_allowed`]): a driver may contract `a * b + c` differently in the two kernels.
//! - Against the core's fused functions (`batchnorm_prelu_forward_train` and companions), with the tolerance and
//!   error measure of `gpu_batchnorm.rs` (1e-5; the reasons are there): the core sums in another order.

use elasticface::gpu::kernels::batchnorm::{BackwardFusion, BatchNormKernels, Epilogue};
use elasticface::gpu::kernels::prelu::Prelu;
use elasticface::gpu::kernels::residual::Residual;
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Elem, Gpu, Tensor};
use elasticface_core::nn::{self, BatchNorm, BatchNormShape};
use elasticface_tests::batchnorm::{channel_abs_sums, check, check_sums};
use elasticface_tests::{assert_within_scale, gpu, slack_allowed, uniform};

/// Tolerance against the core, as in `gpu_batchnorm.rs`.
const TOL: f32 = 1e-5;

/// Odd sizes; BatchNorm1d; a channel of several chunks with a short last one; the smallest trainable count; more
/// chunks per channel than the combine pass has threads.
fn shapes() -> Vec<BatchNormShape> {
    [(3, 5, 13 * 13), (7, 9, 1), (2, 3, 2500), (1, 2, 2), (2, 1, 300_000)]
        .map(|(n, c, hw)| BatchNormShape { n, c, hw })
        .to_vec()
}

/// `check` against the core: at most `TOL`, or 1e-4 for planes of over 10,000 values, where the core's sequential
/// sums are the less accurate side (see `gpu_batchnorm.rs`).
fn check_core(what: &str, s: &BatchNormShape, got: &[f32], want: &[f32]) {
    check(what, s, got, want, if s.hw > 10_000 { 1e-4 } else { TOL });
}

fn run(gpu: &Gpu, d: &[Dispatch]) {
    gpu.run(&d.iter().collect::<Vec<_>>()).unwrap();
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    gpu.read_f32(t).unwrap()
}

/// One layer's inputs: a batch norm, the PReLU slopes after it, a residual, and the gradients of the backward.
struct Case {
    s: BatchNormShape,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    alpha: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    residual: Vec<f32>,
    dz: Vec<f32>,
}

impl Case {
    fn new(s: BatchNormShape, seed: u64) -> Self {
        Self {
            s,
            x: uniform(seed, s.len()).iter().map(|v| 0.5 + 2.0 * v).collect(),
            gamma: uniform(seed + 1, s.c),
            beta: uniform(seed + 2, s.c),
            // Slopes of either sign, as PReLU allows.
            alpha: uniform(seed + 3, s.c),
            running_mean: uniform(seed + 4, s.c),
            running_var: uniform(seed + 5, s.c).iter().map(|v| 1.0 + 0.5 * v).collect(),
            residual: uniform(seed + 6, s.len()),
            dz: uniform(seed + 7, s.len()),
        }
    }
}

/// The case's tensors on the GPU, and zeroed outputs.
struct Tensors {
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    alpha: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    residual: Tensor,
    dz: Tensor,
    save_mean: Tensor,
    save_var: Tensor,
    scratch: Tensor,
    prelu_scratch: Tensor,
}

impl Tensors {
    fn new(gpu: &Gpu, c: &Case) -> Self {
        let s = &c.s;
        let (full, ch) = ([s.n, s.c, s.hw], [s.c]);
        Self {
            x: gpu.upload("x", &full, &c.x),
            gamma: gpu.upload("gamma", &ch, &c.gamma),
            beta: gpu.upload("beta", &ch, &c.beta),
            alpha: gpu.upload("alpha", &ch, &c.alpha),
            running_mean: gpu.upload("running_mean", &ch, &c.running_mean),
            running_var: gpu.upload("running_var", &ch, &c.running_var),
            residual: gpu.upload("residual", &full, &c.residual),
            dz: gpu.upload("dz", &full, &c.dz),
            save_mean: gpu.zeros("save_mean", &ch),
            save_var: gpu.zeros("save_var", &ch),
            scratch: gpu.zeros("scratch", &[BatchNormKernels::scratch_len(s)]),
            prelu_scratch: gpu.zeros("prelu scratch", &[Prelu::scratch_len(s)]),
        }
    }

    /// The training forward with `then` into `y`, from the case's running statistics (restored first, since every
    /// training forward updates them): returns (y, save_mean, save_var, running_mean, running_var).
    fn train(&self, gpu: &Gpu, k: &BatchNormKernels, c: &Case, then: Epilogue<'_>, y: &Tensor) -> [Vec<f32>; 5] {
        gpu.write(&self.running_mean, &c.running_mean).unwrap();
        gpu.write(&self.running_var, &c.running_var).unwrap();
        let t = self;
        let bn = BatchNorm::default();
        let d = k.forward_train(
            gpu,
            &c.s,
            &bn,
            &t.x,
            &t.gamma,
            &t.beta,
            then,
            &t.running_mean,
            &t.running_var,
            y,
            &t.save_mean,
            &t.save_var,
            &t.scratch,
        );
        run(gpu, &d.unwrap());
        [y, &t.save_mean, &t.save_var, &t.running_mean, &t.running_var].map(|t| read(gpu, t))
    }

    /// The eval forward with `then` into `y`, with the case's running statistics (restored first).
    fn eval(&self, gpu: &Gpu, k: &BatchNormKernels, c: &Case, then: Epilogue<'_>, y: &Tensor) -> Vec<f32> {
        gpu.write(&self.running_mean, &c.running_mean).unwrap();
        gpu.write(&self.running_var, &c.running_var).unwrap();
        let t = self;
        let bn = BatchNorm::default();
        let d = k.forward_eval(gpu, &c.s, &bn, &t.x, &t.gamma, &t.beta, then, &t.running_mean, &t.running_var, y);
        run(gpu, &[d.unwrap()]);
        read(gpu, y)
    }

    /// The backward with `fusion` from `dy` (the saved statistics as the last `train` left them) into dx stored as
    /// `dx_elem`: (dx, dgamma, dbeta).
    fn backward(
        &self,
        gpu: &Gpu,
        k: &BatchNormKernels,
        c: &Case,
        fusion: BackwardFusion<'_>,
        dy: &Tensor,
        dx_elem: Elem,
    ) -> [Vec<f32>; 3] {
        let s = &c.s;
        let (dx, dgamma, dbeta) =
            (gpu.zeros_as("dx", &[s.len()], dx_elem), gpu.zeros("dgamma", &[s.c]), gpu.zeros("dbeta", &[s.c]));
        let t = self;
        let bn = BatchNorm::default();
        let d = k.backward(
            gpu,
            s,
            &bn,
            &t.x,
            &t.gamma,
            &t.save_mean,
            &t.save_var,
            fusion,
            dy,
            &dx,
            Some(&dgamma),
            &dbeta,
            &t.scratch,
        );
        run(gpu, &d.unwrap());
        [&dx, &dgamma, &dbeta].map(|t| read(gpu, t))
    }
}

#[test]
fn fused_forwards_match_the_unfused_kernels_and_the_core() {
    let Some(gpu) = gpu() else { return };
    let (k, prelu, residual) = (BatchNormKernels::new(gpu), Prelu::new(gpu), Residual::new(gpu));
    let slack = slack_allowed(gpu, 8.0);
    let bn = BatchNorm::default();
    for (i, s) in shapes().into_iter().enumerate() {
        let c = Case::new(s, 500 + 10 * i as u64);
        let t = Tensors::new(gpu, &c);
        let full = [s.n, s.c, s.hw];
        let (z, y, unfused) = (gpu.zeros("z", &full), gpu.zeros("y", &full), gpu.zeros("unfused", &full));

        // Training mode: the batch norm alone, then each second kernel on its output; then each fused form.
        let plain = t.train(gpu, &k, &c, Epilogue::None, &z);
        run(gpu, &[prelu.forward(gpu, &s, &z, &t.alpha, &unfused).unwrap()]);
        let want_prelu = read(gpu, &unfused);
        run(gpu, &[residual.forward(gpu, &z, &t.residual, &unfused).unwrap()]);
        let want_add = read(gpu, &unfused);
        let fused_prelu = t.train(gpu, &k, &c, Epilogue::Prelu(&t.alpha), &y);
        assert_within_scale(&format!("prelu train {s:?}"), &fused_prelu[0], &want_prelu, slack);
        let fused_add = t.train(gpu, &k, &c, Epilogue::Add(&t.residual), &y);
        assert_within_scale(&format!("add train {s:?}"), &fused_add[0], &want_add, slack);
        // The statistics are the batch norm's own, bit for bit on every adapter (the same kernels compute them).
        for fused in [&fused_prelu, &fused_add] {
            assert_eq!(fused[1..], plain[1..], "statistics {s:?}");
        }

        // Against the core's fused forms.
        let (mut rm, mut rv) = (c.running_mean.clone(), c.running_var.clone());
        let (mut want, mut sm, mut sv) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        let (x, g, b) = (&c.x, &c.gamma, &c.beta);
        nn::batchnorm_prelu_forward_train(&s, &bn, x, g, b, &c.alpha, &mut rm, &mut rv, &mut want, &mut sm, &mut sv)
            .unwrap();
        check_core("prelu train y", &s, &fused_prelu[0], &want);
        for (j, name) in ["save_mean", "save_var", "running_mean", "running_var"].iter().enumerate() {
            check_core(name, &s, &fused_prelu[j + 1], [&sm, &sv, &rm, &rv][j]);
        }
        let (mut rm, mut rv) = (c.running_mean.clone(), c.running_var.clone());
        nn::batchnorm_add_forward_train(&s, &bn, x, g, b, &c.residual, &mut rm, &mut rv, &mut want, &mut sm, &mut sv)
            .unwrap();
        check_core("add train y", &s, &fused_add[0], &want);

        // Eval mode, with the running statistics.
        let (rm, rv) = (&c.running_mean, &c.running_var);
        t.eval(gpu, &k, &c, Epilogue::None, &z);
        run(gpu, &[prelu.forward(gpu, &s, &z, &t.alpha, &unfused).unwrap()]);
        let got = t.eval(gpu, &k, &c, Epilogue::Prelu(&t.alpha), &y);
        assert_within_scale(&format!("prelu eval {s:?}"), &got, &read(gpu, &unfused), slack);
        nn::batchnorm_prelu_forward_eval(&s, &bn, x, g, b, &c.alpha, rm, rv, &mut want).unwrap();
        check_core("prelu eval y", &s, &got, &want);
        run(gpu, &[residual.forward(gpu, &z, &t.residual, &unfused).unwrap()]);
        let got = t.eval(gpu, &k, &c, Epilogue::Add(&t.residual), &y);
        assert_within_scale(&format!("add eval {s:?}"), &got, &read(gpu, &unfused), slack);
        nn::batchnorm_add_forward_eval(&s, &bn, x, g, b, &c.residual, rm, rv, &mut want).unwrap();
        check_core("add eval y", &s, &got, &want);
    }
}

#[test]
fn fused_backwards_match_the_unfused_kernels_and_the_core() {
    let Some(gpu) = gpu() else { return };
    let (k, prelu, residual) = (BatchNormKernels::new(gpu), Prelu::new(gpu), Residual::new(gpu));
    let slack = slack_allowed(gpu, 8.0);
    let bn = BatchNorm::default();
    for (i, s) in shapes().into_iter().enumerate() {
        let c = Case::new(s, 700 + 10 * i as u64);
        let t = Tensors::new(gpu, &c);
        let full = [s.n, s.c, s.hw];
        let (z, dy, dalpha) = (gpu.zeros("z", &full), gpu.zeros("dy", &full), gpu.zeros("dalpha", &[s.c]));
        // The saved statistics, from the training forward.
        let [_, save_mean, save_var, ..] = t.train(gpu, &k, &c, Epilogue::None, &z);

        // Unfused, as the trainer ran it before: the batch norm's output recomputed (z holds it already), the
        // PReLU backward into dy, then the batch norm backward from dy.
        let d = prelu.backward(gpu, &s, &z, &t.alpha, &t.dz, &dy, &dalpha, &t.prelu_scratch).unwrap();
        run(gpu, &d);
        let want_dalpha = read(gpu, &dalpha);
        let want = t.backward(gpu, &k, &c, BackwardFusion::None, &dy, Elem::F32);
        let got_dalpha = gpu.zeros("fused dalpha", &[s.c]);
        let fusion = BackwardFusion::Prelu { beta: &t.beta, alpha: &t.alpha, dalpha: &got_dalpha };
        let got = t.backward(gpu, &k, &c, fusion, &t.dz, Elem::F32);
        for (name, g, w) in [("dx", &got[0], &want[0]), ("dgamma", &got[1], &want[1]), ("dbeta", &got[2], &want[2])] {
            assert_within_scale(&format!("prelu backward {name} {s:?}"), g, w, slack);
        }
        let got_dalpha = read(gpu, &got_dalpha);
        assert_within_scale(&format!("prelu backward dalpha {s:?}"), &got_dalpha, &want_dalpha, slack);

        // Against the core's fused backward, from the same saved statistics.
        let (mut dx, mut dg, mut db, mut da) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c], vec![0.0; s.c]);
        let (x, g, b, a) = (&c.x, &c.gamma, &c.beta, &c.alpha);
        nn::batchnorm_prelu_backward(
            &s,
            &bn,
            x,
            g,
            b,
            a,
            &save_mean,
            &save_var,
            &c.dz,
            &mut dx,
            Some(&mut dg),
            &mut db,
            &mut da,
        )
        .unwrap();
        check_core("prelu backward dx", &s, &got[0], &dx);
        // The sums' scales, from their terms: the PReLU's input gradient dy and the batch norm's output z.
        let z_gpu = read(gpu, &z);
        let dy_of = |i: usize, ch: usize| if z_gpu[i] > 0.0 { c.dz[i] } else { a[ch] * c.dz[i] };
        let invstd: Vec<f32> = save_var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect();
        check_sums("prelu backward dbeta", &s, &got[2], &db, &channel_abs_sums(&s, dy_of), TOL);
        let xhat = |i: usize, ch: usize| (x[i] - save_mean[ch]) * invstd[ch];
        check_sums(
            "prelu backward dgamma",
            &s,
            &got[1],
            &dg,
            &channel_abs_sums(&s, |i, ch| dy_of(i, ch) * xhat(i, ch)),
            TOL,
        );
        let slope_terms = channel_abs_sums(&s, |i, _| if z_gpu[i] > 0.0 { 0.0 } else { z_gpu[i] * c.dz[i] });
        check_sums("prelu backward dalpha", &s, &got_dalpha, &da, &slope_terms, TOL);

        // The accumulation: the batch norm backward from dz, then `accumulate` of the residual, against the fused.
        let plain = t.backward(gpu, &k, &c, BackwardFusion::None, &t.dz, Elem::F32);
        let plain_dx = gpu.upload("plain dx", &full, &plain[0]);
        run(gpu, &[residual.accumulate(gpu, &plain_dx, &t.residual).unwrap()]);
        let got = t.backward(gpu, &k, &c, BackwardFusion::Accumulate(&t.residual), &t.dz, Elem::F32);
        assert_within_scale(&format!("accumulate dx {s:?}"), &got[0], &read(gpu, &plain_dx), slack);
        assert_eq!(got[1..], plain[1..], "accumulate dgamma, dbeta {s:?}");
        nn::batchnorm_backward_accumulate(
            &s,
            &bn,
            x,
            g,
            &save_mean,
            &save_var,
            &c.dz,
            &c.residual,
            &mut dx,
            Some(&mut dg),
            &mut db,
        )
        .unwrap();
        check_core("accumulate dx", &s, &got[0], &dx);
    }
}

/// The error message of a refused call.
fn message<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.err().expect("refused").to_string()
}

/// The kernels, the default batch norm and a small case's tensors, for the tests of what is refused.
fn small_case(gpu: &Gpu, seed: u64) -> (BatchNormKernels, BatchNorm, BatchNormShape, Tensors) {
    let s = BatchNormShape { n: 2, c: 3, hw: 4 };
    (BatchNormKernels::new(gpu), BatchNorm::default(), s, Tensors::new(gpu, &Case::new(s, seed)))
}

#[test]
fn fused_operands_are_checked() {
    let Some(gpu) = gpu() else { return };
    let (k, bn, s, t) = small_case(gpu, 900);
    let (short, y) = (gpu.zeros("short", &[5]), gpu.zeros("y", &[s.len()]));
    let (x, g, b, rm, rv, sm, sv) =
        (&t.x, &t.gamma, &t.beta, &t.running_mean, &t.running_var, &t.save_mean, &t.save_var);
    for then in [Epilogue::Prelu(&short), Epilogue::Add(&short)] {
        let e = message(k.forward_eval(gpu, &s, &bn, x, g, b, then, rm, rv, &y));
        assert!(e.contains("short has 5 elements"), "{e}");
        let e = message(k.forward_train(gpu, &s, &bn, x, g, b, then, rm, rv, &y, sm, sv, &t.scratch));
        assert!(e.contains("short has 5 elements"), "{e}");
    }
    let (dx, d) = (gpu.zeros("dx", &[s.len()]), gpu.zeros("d", &[s.c]));
    let backward =
        |fusion, dgamma| message(k.backward(gpu, &s, &bn, x, g, sm, sv, fusion, &t.dz, &dx, dgamma, &d, &t.scratch));
    for fusion in [
        BackwardFusion::Prelu { beta: &short, alpha: &t.alpha, dalpha: &d },
        BackwardFusion::Prelu { beta: b, alpha: &short, dalpha: &d },
        BackwardFusion::Prelu { beta: b, alpha: &t.alpha, dalpha: &short },
        BackwardFusion::Accumulate(&short),
    ] {
        let e = backward(fusion, Some(&d));
        assert!(e.contains("short has 5 elements"), "{e}");
    }
    let e = backward(BackwardFusion::Prelu { beta: b, alpha: &t.alpha, dalpha: &d }, None);
    assert!(e.contains("needs a trainable gamma"), "{e}");
    // The fused PReLU backward needs the larger scratch: one sized for the plain batch norm is refused.
    let small = gpu.zeros("small scratch", &[BatchNormKernels::scratch_len(&s) - 1]);
    let fusion = BackwardFusion::Prelu { beta: b, alpha: &t.alpha, dalpha: &d };
    let e = message(k.backward(gpu, &s, &bn, x, g, sm, sv, fusion, &t.dz, &dx, Some(&d), &d, &small));
    assert!(e.contains("small scratch has"), "{e}");
}

/// The epilogue numbered `then` (none, PReLU, residual add) with `t`'s operands.
fn epilogue(t: &Tensors, then: usize) -> Epilogue<'_> {
    match then {
        0 => Epilogue::None,
        1 => Epilogue::Prelu(&t.alpha),
        _ => Epilogue::Add(&t.residual),
    }
}

/// The batch norm on mixed precision's f16 activations and gradients (input and residual stored as f16, the
/// output as f16 or f32; the backward's dy, and dx with a gradient added to it, each as f16 or f32) against the
/// f32 kernels on the same values: reading f16 is exact, so statistics, parameter gradients and f32 outputs are
/// the f32 kernels' bits on the f16-rounded inputs, and an f16 output is their output rounded by the core's
/// `round_to_f16` (WGSL's conversion to f16 rounds to nearest even on the adapters we test; this checks it). The
/// f32 kernels are checked against the core above.
#[test]
fn f16_activations_give_the_f32_kernels_results_on_the_rounded_values() {
    let Some(gpu) = gpu() else { return };
    assert!(gpu.caps.f16, "the test GPU has f16 in shaders");
    let k = BatchNormKernels::new(gpu);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let rounded = |v: &[f32]| {
        let mut v = v.to_vec();
        nn::round_to_f16(&mut v);
        v
    };
    for (i, s) in shapes().into_iter().take(4).enumerate() {
        let mut c = Case::new(s, 1100 + 10 * i as u64);
        // The values as f16 holds them: the f32 kernels' input.
        c.x = rounded(&c.x);
        c.residual = rounded(&c.residual);
        c.dz = rounded(&c.dz);
        let t = Tensors::new(gpu, &c);
        let full = [s.n, s.c, s.hw];
        let (x16, residual16) = (gpu.upload_f16("x16", &full, &c.x), gpu.upload_f16("residual16", &full, &c.residual));
        let half = Tensors { x: x16, residual: residual16, ..Tensors::new(gpu, &c) };
        let y32 = gpu.zeros("y", &full);
        for then in 0..3 {
            let want = t.train(gpu, &k, &c, epilogue(&t, then), &y32);
            let want_eval = t.eval(gpu, &k, &c, epilogue(&t, then), &y32);
            for y_elem in [Elem::F32, Elem::F16] {
                let y = gpu.zeros_as("y", &full, y_elem);
                let got = half.train(gpu, &k, &c, epilogue(&half, then), &y);
                let got_eval = half.eval(gpu, &k, &c, epilogue(&half, then), &y);
                let what = format!("{s:?}, epilogue {then}, f16 -> {y_elem}");
                let (want_y, want_eval_y) = match y_elem {
                    Elem::F32 => (want[0].clone(), want_eval.clone()),
                    Elem::F16 => (rounded(&want[0]), rounded(&want_eval)),
                };
                assert_eq!(bits(&got[0]), bits(&want_y), "train y, {what}");
                assert_eq!(bits(&got_eval), bits(&want_eval_y), "eval y, {what}");
                for j in 1..5 {
                    assert_eq!(bits(&got[j]), bits(&want[j]), "statistic {j}, {what}");
                }
            }
        }
        // f32 in, f16 out (a combination the trainer does not use): the output rounded.
        let y = gpu.zeros_as("y", &full, Elem::F16);
        let got = t.train(gpu, &k, &c, Epilogue::None, &y);
        let want = t.train(gpu, &k, &c, Epilogue::None, &y32);
        assert_eq!(bits(&got[0]), bits(&rounded(&want[0])), "train y, {s:?}, f32 -> f16");
        // The backward passes read x (and recompute the PReLU's input) from f16, and dy and dx (and a gradient
        // accumulated into dx) either way: the f32 kernels' bits on the rounded values, dx rounded where stored
        // as f16.
        t.train(gpu, &k, &c, Epilogue::None, &y32);
        half.train(gpu, &k, &c, Epilogue::None, &y32);
        let dz16 = gpu.upload_f16("dz16", &full, &c.dz);
        let dalpha = [gpu.zeros("dalpha", &[s.c]), gpu.zeros("dalpha16", &[s.c])];
        fn fusion<'a>(t: &'a Tensors, which: usize, dalpha: &'a Tensor, other: &'a Tensor) -> BackwardFusion<'a> {
            match which {
                0 => BackwardFusion::None,
                1 => BackwardFusion::Prelu { beta: &t.beta, alpha: &t.alpha, dalpha },
                _ => BackwardFusion::Accumulate(other),
            }
        }
        for which in 0..3 {
            let want = t.backward(gpu, &k, &c, fusion(&t, which, &dalpha[0], &t.residual), &t.dz, Elem::F32);
            for (dy, dx_elem) in [(&t.dz, Elem::F32), (&t.dz, Elem::F16), (&dz16, Elem::F32), (&dz16, Elem::F16)] {
                let other = if dx_elem == Elem::F16 { &half.residual } else { &t.residual };
                let got = half.backward(gpu, &k, &c, fusion(&half, which, &dalpha[1], other), dy, dx_elem);
                let what = format!("backward {which}, dy {}, dx {dx_elem}, {s:?}", dy.elem);
                let want_dx = if dx_elem == Elem::F16 { rounded(&want[0]) } else { want[0].clone() };
                assert_eq!(bits(&got[0]), bits(&want_dx), "dx, {what}");
                for j in 1..3 {
                    assert_eq!(bits(&got[j]), bits(&want[j]), "{j}, {what}");
                }
                assert_eq!(bits(&read(gpu, &dalpha[1])), bits(&read(gpu, &dalpha[0])), "dalpha, {what}");
            }
        }
    }
}

#[test]
fn activations_stored_otherwise_are_refused() {
    let Some(gpu) = gpu() else { return };
    let (k, bn, s, t) = small_case(gpu, 950);
    let full = [s.n, s.c, s.hw];
    let (x16, y) = (gpu.zeros_as("x16", &full, Elem::F16), gpu.zeros("y", &full));
    let (g, b, rm, rv, sm, sv) = (&t.gamma, &t.beta, &t.running_mean, &t.running_var, &t.save_mean, &t.save_var);
    // A residual stored otherwise than the input.
    let e = message(k.forward_eval(gpu, &s, &bn, &x16, g, b, Epilogue::Add(&t.residual), rm, rv, &y));
    assert!(e.contains("residual holds f32 elements, the kernel takes f16"), "{e}");
    // A gradient accumulated into dx stored otherwise than dx.
    let (dx16, d) = (gpu.zeros_as("dx16", &full, Elem::F16), gpu.zeros("d", &[s.c]));
    let e = message(k.backward(
        gpu,
        &s,
        &bn,
        &t.x,
        g,
        sm,
        sv,
        BackwardFusion::Accumulate(&t.residual),
        &t.dz,
        &dx16,
        Some(&d),
        &d,
        &t.scratch,
    ));
    assert!(e.contains("residual holds f32 elements, the kernel takes f16"), "{e}");
}
