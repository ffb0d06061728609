//! `shaders/winograd.wgsl` (F(2x2, 3x3) and F(4x4, 3x3)) and `gemm_batched` against their
//! core twins, through the three Winograd passes, for both tiles.
//!
//! Each pass runs alone, so that its workspace afterwards holds what each of its kernels wrote: the transformed
//! weight (U), input (V) and product (M), or for the weight gradient the transformed output gradient (W), the
//! transposed input (V^T) and the product (dU). Each is compared with its core twin applied to the GPU's own
//! inputs of that kernel, so every kernel is checked on its own:
//!
//! - the transforms: bit for bit on a CPU adapter (lavapipe, CI), which rounds every operation in the written
//!   order; elsewhere within 8 `EPSILON` of the tensor's scale (a driver may contract `a * b + c` into a fused
//!   multiply-add; see `slack_allowed`);
//! - the products: within the summation bound of `gpu_conv2d.rs`, `(K + S + 1) * EPSILON * A_i * 1.01`, `A_i` the
//!   same product on absolute values, `S` the splits (the GPU sums by depth step and split, the core in order).
//!
//! Then each pass's result against the direct convolution of the core: a wiring check (a wrong index, flip or
//! padding gives differences of the order of the values), at 1e-4 of the result's scale; the arithmetic itself is
//! bounded by the checks above and, for Winograd against the direct convolution, by the core's tests.
//!
//! Mixed precision's F(2x2) passes likewise (tensor cores emulated where there are none): x and y are f16, and the
//! products' operands U, V and W are stored as f16, each the core's transform rounded by `round_to_f16`; the
//! products, of exact f16 products, within twice the summation bound (as the mixed convolutions in
//! `gpu_conv2d.rs`); the wiring check at 1e-2 of scale (f16 operands err by ~5e-4 of it).

use elasticface::gpu::kernels::batchnorm::{BatchNormKernels, Epilogue};
use elasticface::gpu::kernels::conv2d::{Conv2d, ConvOp, ConvPrecision, ConvTiling, TileShape};
use elasticface::gpu::kernels::winograd::{InputNorm, Winograd, WinogradWorkspace};
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Elem, Gpu, Tensor};
use elasticface_core::nn::{self, BatchNorm, BatchNormShape, Conv2dShape, WinogradTile, WinogradTiles};
use elasticface_tests::{assert_within_scale, gpu, slack_allowed, uniform};

fn shape(n: usize, c_in: usize, hw: (usize, usize), c_out: usize, pad: usize) -> Conv2dShape {
    Conv2dShape { n, c_in, h: hw.0, w: hw.1, c_out, kh: 3, kw: 3, stride: 1, pad }
}

/// Odd and even sizes (partial tiles of both sizes), every padding Winograd takes, a 1x1 input, and products of
/// more than one tile along every dimension (M > 128, K > 16).
fn shapes() -> Vec<Conv2dShape> {
    vec![
        shape(2, 5, (9, 9), 7, 1),
        shape(1, 4, (14, 11), 5, 1),
        shape(3, 16, (8, 8), 20, 1),
        shape(2, 4, (7, 6), 3, 0),
        shape(1, 3, (5, 5), 6, 2),
        shape(2, 6, (1, 1), 5, 1),
        shape(2, 70, (5, 5), 130, 1),
    ]
}

/// The adapter's tiling, and one that splits every product it can, folding the grid.
fn tilings(gpu: &Gpu) -> Vec<(&'static str, ConvTiling)> {
    let split = ConvTiling {
        tile: TileShape::new(64, 64, 16),
        short_tiles: false,
        target_workgroups: 1 << 20,
        min_steps_per_split: 1,
        max_grid_x: 3,
    };
    vec![("adapter", ConvTiling::for_adapter(gpu)), ("split+fold", split)]
}

fn run(gpu: &Gpu, dispatches: &[Dispatch]) {
    gpu.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
}

/// The first `len` elements of `t`.
fn read(gpu: &Gpu, t: &Tensor, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = gpu.read(t).unwrap();
    v.truncate(len);
    v
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// `gemm_batched` on the GPU (`got`) against the core on the same operands, within `slack` times the summation
/// bound.
fn check_product(what: &str, dims: [usize; 4], a: &[f32], b: &[f32], got: &[f32], splits: usize, slack: f32) -> f32 {
    let [batch, m, k, cols] = dims;
    let (mut want, mut sum) = (vec![0.0; batch * m * cols], vec![0.0; batch * m * cols]);
    nn::gemm_batched(batch, m, k, cols, a, b, &mut want).unwrap();
    nn::gemm_batched(batch, m, k, cols, &abs(a), &abs(b), &mut sum).unwrap();
    let mut worst = 0.0f32;
    for (i, ((&g, &w), &s)) in got.iter().zip(&want).zip(&sum).enumerate() {
        let bound = slack * (k + splits + 1) as f32 * f32::EPSILON * s * 1.01;
        let err = (g - w).abs();
        assert!(err <= bound, "{what}: element {i}: gpu {g}, core {w}, |error| {err:e} > bound {bound:e}");
        if bound > 0.0 {
            worst = worst.max(err / bound);
        }
    }
    worst
}

/// `got` against the direct convolution `want` at `tolerance` of its scale (the wiring check).
fn check_wiring(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tolerance * scale;
        assert!(ok, "{what}: element {i}: winograd {g}, direct {w} (scale {scale})");
    }
}

/// The first `len` elements of `t` viewed as `elem` (an f16 operand in an f32 workspace tensor), as f32.
fn read_as(gpu: &Gpu, t: &Tensor, len: usize, elem: Elem) -> Vec<f32> {
    gpu.read_f32(&t.view_as("read back", &[len], elem).unwrap()).unwrap()
}

/// `v` rounded to f16 by the core where `elem` is f16.
fn stored(mut v: Vec<f32>, elem: Elem) -> Vec<f32> {
    if elem == Elem::F16 {
        nn::round_to_f16(&mut v);
    }
    v
}

fn workspace(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape, tile: WinogradTile) -> WinogradWorkspace {
    let lens = Winograd::workspace_lens(gpu, conv, s, tile).unwrap();
    WinogradWorkspace::allocate(&lens, |label, len| Ok(gpu.zeros(label, &[len]))).unwrap()
}

#[test]
fn winograd_kernels_match_their_core_twins() {
    let Some(gpu) = gpu() else { return };
    let slack = slack_allowed(gpu, 8.0);
    let wino = Winograd::new(gpu);
    // f32 with both tiles; mixed precision with F(2x2), whose products run on its own kernels (F(4x4)'s run on the
    // f32 ones, checked here already).
    let mut runs = Vec::new();
    for (name, tiling) in tilings(gpu) {
        for tile in WinogradTile::ALL {
            runs.push((name, tiling, ConvPrecision::F32, tile));
        }
        runs.push((name, tiling, ConvPrecision::Mixed, WinogradTile::F2x2));
    }
    for (name, tiling, precision, tile) in runs {
        let conv = Conv2d::build(gpu, precision, tiling).unwrap();
        // How x, y and the products' operands are stored; the products' slack and the wiring tolerance.
        let act = conv.activations();
        let (product_slack, wiring) = if act == Elem::F16 { (2.0, 1e-2) } else { (1.0, 1e-4) };
        let mut worst = 0.0f32;
        let p = tile.planes();
        for (case, s) in shapes().iter().enumerate() {
            let what = |kernel: &str| format!("{name} {precision:?} {tile:?} {s:?}: {kernel}");
            let seed = 100 + 10 * case as u64;
            let xv = stored(uniform(seed, s.input_len()), act);
            let (wv, dyv) = (uniform(seed + 1, s.weight_len()), stored(uniform(seed + 2, s.output_len()), act));
            let upload = |label: &str, shape: &[usize], v: &[f32]| match act {
                Elem::F32 => gpu.upload(label, shape, v),
                Elem::F16 => gpu.upload_f16(label, shape, v),
            };
            let x = upload("x", &[s.n, s.c_in, s.h, s.w], &xv);
            let weight = gpu.upload("weight", &[s.c_out, s.c_in, 3, 3], &wv);
            let dy = upload("dy", &[s.n, s.c_out, s.out_h(), s.out_w()], &dyv);
            let (y, dx, dw) = (
                gpu.zeros_as("y", &[s.output_len()], act),
                gpu.zeros_as("dx", &[s.input_len()], act),
                gpu.zeros("dweight", &[s.weight_len()]),
            );
            let ws = workspace(gpu, &conv, s, tile);
            let fwd = WinogradTiles::forward_of(s, tile).unwrap();
            let bwd = WinogradTiles::backward_data_of(s, tile).unwrap();
            let (t, t_data) = (fwd.tiles(), bwd.tiles());
            let splits = |m, k, cols| conv.plan_batched(gpu, p, m, k, cols).unwrap().splits as usize;

            // Forward and backward_data: U, V, M, then the output (y and dx stored as the activations are).
            for (pass, tiles, [c, c_next], input, flip) in [
                ("forward", fwd, [s.c_in, s.c_out], &dyv, false),
                ("backward_data", bwd, [s.c_out, s.c_in], &dyv, true),
            ] {
                let (input, t) = if flip { (input, t_data) } else { (&xv, t) };
                let (out, out_len) = if flip { (&dx, s.input_len()) } else { (&y, s.output_len()) };
                let d = if flip {
                    wino.run(gpu, &conv, ConvOp::BackwardData, s, tile, [&dy, &weight], None, &dx, &ws).unwrap()
                } else {
                    wino.run(gpu, &conv, ConvOp::Forward, s, tile, [&x, &weight], None, &y, &ws).unwrap()
                };
                run(gpu, &d);
                let (u_len, v_len, m_len) = (p * c * c_next, p * c * t, p * c_next * t);
                let u = read_as(gpu, &ws.u, u_len, act);
                let mut want = vec![0.0; u_len];
                nn::winograd_weight_transform(tile, s.c_out, s.c_in, &wv, flip, &mut want).unwrap();
                let want = stored(want, act);
                assert_within_scale(&what(&format!("{pass}: winograd_weight_transform")), &u, &want, slack);
                let v = read_as(gpu, &ws.v, v_len, act);
                let mut want = vec![0.0; v_len];
                nn::winograd_input_transform(&tiles, c, input, false, &mut want).unwrap();
                let want = stored(want, act);
                assert_within_scale(&what(&format!("{pass}: winograd_input_transform")), &v, &want, slack);
                let m = read(gpu, &ws.m, m_len);
                let dims = [p, c_next, c, t];
                let product = what(&format!("{pass}: gemm_batched"));
                worst = worst.max(check_product(&product, dims, &u, &v, &m, splits(c_next, c, t), product_slack));
                let got = gpu.read_f32(out).unwrap();
                let mut want = vec![0.0; out_len];
                nn::winograd_output_transform(&tiles, c_next, &m, &mut want).unwrap();
                let want = stored(want, act);
                assert_within_scale(&what(&format!("{pass}: winograd_output_transform")), &got, &want, slack);
                let mut direct = vec![0.0; out_len];
                if flip {
                    nn::conv2d_backward_data(s, &dyv, &wv, &mut direct).unwrap();
                } else {
                    nn::conv2d_forward(s, &xv, &wv, &mut direct).unwrap();
                }
                check_wiring(&what(pass), &got, &direct, wiring);
            }

            // backward_weight: W (in M's tensor), V^T, dU (in U's tensor, f32), then dweight.
            run(gpu, &wino.run(gpu, &conv, ConvOp::BackwardWeight, s, tile, [&dy, &x], None, &dw, &ws).unwrap());
            let w = read_as(gpu, &ws.m, p * s.c_out * t, act);
            let mut want = vec![0.0; w.len()];
            nn::winograd_output_grad_transform(&fwd, s.c_out, &dyv, &mut want).unwrap();
            assert_within_scale(&what("winograd_output_grad_transform"), &w, &stored(want, act), slack);
            let vt = read_as(gpu, &ws.v, p * t * s.c_in, act);
            let mut want = vec![0.0; vt.len()];
            nn::winograd_input_transform(&fwd, s.c_in, &xv, true, &mut want).unwrap();
            assert_within_scale(&what("winograd_input_transform (transposed)"), &vt, &stored(want, act), slack);
            let du = read(gpu, &ws.u, p * s.c_out * s.c_in);
            let (dims, splits) = ([p, s.c_out, t, s.c_in], splits(s.c_out, t, s.c_in));
            let product = what("backward_weight: gemm_batched");
            worst = worst.max(check_product(&product, dims, &w, &vt, &du, splits, product_slack));
            let got = read(gpu, &dw, s.weight_len());
            let mut want = vec![0.0; s.weight_len()];
            nn::winograd_weight_grad_transform(tile, s.c_out, s.c_in, &du, &mut want).unwrap();
            assert_within_scale(&what("winograd_weight_grad_transform"), &got, &want, slack);
            let mut direct = vec![0.0; s.weight_len()];
            nn::conv2d_backward_weight(s, &dyv, &xv, &mut direct).unwrap();
            check_wiring(&what("backward_weight"), &got, &direct, wiring);
        }
        eprintln!("{name:>10} {precision:?} {tile:?}: gemm_batched max error / bound {worst:.3}");
    }
}

/// A convolution reading `prelu(bn(x))` through the normalised input transforms (`InputNorm`): the same bits as
/// the batch norm kernel's output convolved (on a CPU adapter; elsewhere within 8 `EPSILON` of scale, as a driver
/// may contract the two kernels' `a * b + c` differently), forward and backward_weight, with and without the
/// PReLU, both tiles; its transformed input against the core twin `winograd_normalized_input_transform`, whose
/// `1 / sqrt` may differ from WGSL's `inverseSqrt` in the last bit: within 64 `EPSILON` of V's scale (an ulp
/// of the scale factor, times the transform's growth: at most 10 x 10 per unit of input for F(4x4)'s `B^T`,
/// relative to V's largest value, which is at least the input's).
#[test]
fn normalized_input_convolutions_match_the_batch_norm_then_the_convolution() {
    let Some(gpu) = gpu() else { return };
    let slack = slack_allowed(gpu, 8.0);
    let (wino, conv, bnk) = (Winograd::new(gpu), Conv2d::new(gpu), BatchNormKernels::new(gpu));
    let bn = BatchNorm { eps: 1e-3, momentum: 0.1 };
    for (case, s) in
        [shape(2, 5, (9, 7), 6, 1), shape(1, 3, (5, 5), 4, 2), shape(2, 70, (5, 5), 9, 1)].iter().enumerate()
    {
        let c = s.c_in;
        let seed = 300 + 10 * case as u64;
        let xv: Vec<f32> = uniform(seed, s.input_len()).iter().map(|v| 3.0 * v + 0.5).collect();
        let (wv, dyv) = (uniform(seed + 1, s.weight_len()), uniform(seed + 2, s.output_len()));
        let mean = uniform(seed + 3, c);
        let var: Vec<f32> = uniform(seed + 4, c).iter().map(|v| v.abs() + 0.2).collect();
        let (gamma, beta, alpha) = (uniform(seed + 5, c), uniform(seed + 6, c), uniform(seed + 7, c));
        let x = gpu.upload("x", &[s.n, c, s.h, s.w], &xv);
        let weight = gpu.upload("weight", &[s.c_out, c, 3, 3], &wv);
        let dy = gpu.upload("dy", &[s.n, s.c_out, s.out_h(), s.out_w()], &dyv);
        let per_channel = |label: &str, v: &[f32]| gpu.upload(label, &[c], v);
        let (mean_t, var_t) = (per_channel("mean", &mean), per_channel("var", &var));
        let (gamma_t, beta_t, alpha_t) =
            (per_channel("gamma", &gamma), per_channel("beta", &beta), per_channel("alpha", &alpha));
        let z = gpu.zeros("bn output", &[s.n, c, s.h, s.w]);
        let bs = BatchNormShape { n: s.n, c, hw: s.h * s.w };
        for tile in WinogradTile::ALL {
            let ws = workspace(gpu, &conv, s, tile);
            let fwd = WinogradTiles::forward_of(s, tile).unwrap();
            let (t, p) = (fwd.tiles(), tile.planes());
            for prelu in [false, true] {
                let what = |part: &str| format!("{tile:?} {s:?} prelu {prelu}: {part}");
                let then = if prelu { Epilogue::Prelu(&alpha_t) } else { Epilogue::None };
                let norm = InputNorm {
                    eps: bn.eps,
                    mean: &mean_t,
                    var: &var_t,
                    gamma: &gamma_t,
                    beta: &beta_t,
                    alpha: prelu.then_some(&alpha_t),
                };
                let outputs = |fused: bool| {
                    let (y, dw) = (gpu.zeros("y", &[s.output_len()]), gpu.zeros("dweight", &[s.weight_len()]));
                    let input = if fused { &x } else { &z };
                    let norm = fused.then_some(norm);
                    let mut d = Vec::new();
                    if !fused {
                        let bnd = bnk.forward_eval(gpu, &bs, &bn, &x, &gamma_t, &beta_t, then, &mean_t, &var_t, &z);
                        d.push(bnd.unwrap());
                    }
                    d.extend(wino.run(gpu, &conv, ConvOp::Forward, s, tile, [input, &weight], norm, &y, &ws).unwrap());
                    run(gpu, &d);
                    // The transformed input of the forward pass, still in the workspace.
                    let v = read(gpu, &ws.v, p * c * t);
                    run(
                        gpu,
                        &wino.run(gpu, &conv, ConvOp::BackwardWeight, s, tile, [&dy, input], norm, &dw, &ws).unwrap(),
                    );
                    (v, read(gpu, &y, s.output_len()), read(gpu, &dw, s.weight_len()))
                };
                let (v_plain, y_plain, dw_plain) = outputs(false);
                let (v, y, dw) = outputs(true);
                assert_within_scale(&what("transformed input, fused vs unfused"), &v, &v_plain, slack);
                assert_within_scale(&what("forward, fused vs unfused"), &y, &y_plain, slack);
                assert_within_scale(&what("backward_weight, fused vs unfused"), &dw, &dw_plain, slack);
                let core_norm = nn::NormalizedInput {
                    bn,
                    mean: &mean,
                    var: &var,
                    gamma: &gamma,
                    beta: &beta,
                    alpha: prelu.then_some(&alpha[..]),
                };
                let mut want = vec![0.0; v.len()];
                nn::winograd_normalized_input_transform(&fwd, c, &xv, &core_norm, false, &mut want).unwrap();
                assert_within_scale(&what("winograd_normalized_input_transform vs core"), &v, &want, 64.0);
            }
        }
        // backward_data has no batch norm to apply; a per-channel tensor of the wrong size is named.
        let ws = workspace(gpu, &conv, s, WinogradTile::F2x2);
        let norm = InputNorm { eps: bn.eps, mean: &mean_t, var: &var_t, gamma: &gamma_t, beta: &beta_t, alpha: None };
        let dx = gpu.zeros("dx", &[s.input_len()]);
        let run_with =
            |op, inputs, norm, out| wino.run(gpu, &conv, op, s, WinogradTile::F2x2, inputs, Some(norm), out, &ws);
        let err = run_with(ConvOp::BackwardData, [&dy, &weight], norm, &dx).err().unwrap().to_string();
        assert!(err.contains("output gradient"), "{err}");
        let short = gpu.zeros("short", &[c + 1]);
        let y = gpu.zeros("y", &[s.output_len()]);
        let err = run_with(ConvOp::Forward, [&x, &weight], InputNorm { var: &short, ..norm }, &y).err().unwrap();
        assert!(format!("{err:#}").contains("var"), "{err:#}");
    }
}

#[test]
fn winograd_refuses_what_it_cannot_run() {
    let Some(gpu) = gpu() else { return };
    let conv = Conv2d::new(gpu);
    for s in [
        Conv2dShape { stride: 2, ..shape(1, 2, (8, 8), 2, 1) },
        Conv2dShape { kh: 1, kw: 1, pad: 0, ..shape(1, 2, (8, 8), 2, 1) },
        shape(1, 2, (8, 8), 2, 3),
    ] {
        assert!(!Winograd::applies(&s), "{s:?}");
        for tile in WinogradTile::ALL {
            let err = Winograd::workspace_lens(gpu, &conv, &s, tile).unwrap_err().to_string();
            assert!(err.contains("not a 3x3 stride-1"), "{err}");
        }
    }
    let wino = Winograd::new(gpu);
    let s = shape(1, 2, (4, 4), 3, 1);
    for tile in WinogradTile::ALL {
        // A tensor of the wrong length is named.
        let ws = workspace(gpu, &conv, &s, tile);
        let (x, w, y) = (
            gpu.zeros("x", &[s.input_len() + 1]),
            gpu.zeros("w", &[s.weight_len()]),
            gpu.zeros("y", &[s.output_len()]),
        );
        let err = wino.run(gpu, &conv, ConvOp::Forward, &s, tile, [&x, &w], None, &y, &ws).err().unwrap().to_string();
        assert!(err.contains("x has"), "{err}");
    }
    // F(4x4) needs 36 planes: an F(2x2) workspace is refused, not overrun (its U holds 16 * 3 * 2 elements).
    let ws = workspace(gpu, &conv, &s, WinogradTile::F2x2);
    let (x, w, y) =
        (gpu.zeros("x", &[s.input_len()]), gpu.zeros("w", &[s.weight_len()]), gpu.zeros("y", &[s.output_len()]));
    let err = wino.run(gpu, &conv, ConvOp::Forward, &s, WinogradTile::F4x4, [&x, &w], None, &y, &ws).err().unwrap();
    assert!(format!("{err:#}").contains("winograd U"), "{err:#}");
}

/// Mixed precision's f16 activations and gradients (x read by the input transforms, plain and normalised, dy by the
/// output gradient and input transforms, y and dx written by the output transform) against the same kernels on f32
/// tensors holding the same values: reading f16 is exact and every transform computes in f32, so the weight gradient
/// is the same bits and y and dx are the f32 ones rounded by the core's `round_to_f16` (WGSL's conversion to f16
/// rounds to nearest even on the adapters we test; this checks it). The f32 kernels are checked against the core
/// above.
#[test]
fn f16_activations_give_the_f32_results_on_the_rounded_values() {
    let Some(gpu) = gpu() else { return };
    assert!(gpu.caps.f16, "the test GPU has f16 in shaders");
    let (conv, wino) = (Conv2d::new(gpu), Winograd::new(gpu));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let rounded = |v: &[f32]| {
        let mut v = v.to_vec();
        nn::round_to_f16(&mut v);
        v
    };
    let bn = BatchNorm::default();
    for (i, s) in shapes().into_iter().take(5).enumerate() {
        let seed = 900 + 10 * i as u64;
        let xv = rounded(&uniform(seed, s.input_len()));
        let (x32, x16) = (gpu.upload("x", &[s.input_len()], &xv), gpu.upload_f16("x16", &[s.input_len()], &xv));
        let weight = gpu.upload("weight", &[s.weight_len()], &uniform(seed + 1, s.weight_len()));
        let dyv = rounded(&uniform(seed + 2, s.output_len()));
        let (dy32, dy16) = (gpu.upload("dy", &[s.output_len()], &dyv), gpu.upload_f16("dy16", &[s.output_len()], &dyv));
        let c = s.c_in;
        let per_channel = |k: u64, lo: f32| {
            gpu.upload("bn", &[c], &uniform(seed + k, c).iter().map(|v| lo + v.abs()).collect::<Vec<_>>())
        };
        let (mean, var, gamma, beta) =
            (per_channel(3, -0.5), per_channel(4, 0.5), per_channel(5, 0.5), per_channel(6, -0.5));
        let norm = InputNorm { eps: bn.eps, mean: &mean, var: &var, gamma: &gamma, beta: &beta, alpha: Some(&beta) };
        for tile in WinogradTile::ALL {
            let ws = workspace(gpu, &conv, &s, tile);
            for norm in [None, Some(norm)] {
                let what = format!("{tile:?} {s:?} normalised {}", norm.is_some());
                let outputs = |x: &Tensor, dy: &Tensor, elem: Elem| {
                    let (y, dx) =
                        (gpu.zeros_as("y", &[s.output_len()], elem), gpu.zeros_as("dx", &[s.input_len()], elem));
                    let dw = gpu.zeros("dweight", &[s.weight_len()]);
                    let mut d = wino.run(gpu, &conv, ConvOp::Forward, &s, tile, [x, &weight], norm, &y, &ws).unwrap();
                    d.extend(wino.run(gpu, &conv, ConvOp::BackwardWeight, &s, tile, [dy, x], norm, &dw, &ws).unwrap());
                    d.extend(
                        wino.run(gpu, &conv, ConvOp::BackwardData, &s, tile, [dy, &weight], None, &dx, &ws).unwrap(),
                    );
                    run(gpu, &d);
                    [&y, &dw, &dx].map(|t| gpu.read_f32(t).unwrap())
                };
                let [y32, dw32, dx32] = outputs(&x32, &dy32, Elem::F32);
                let [y16, dw16, dx16] = outputs(&x16, &dy16, Elem::F16);
                assert_eq!(bits(&y16), bits(&rounded(&y32)), "forward, {what}");
                assert_eq!(bits(&dw16), bits(&dw32), "backward_weight, {what}");
                assert_eq!(bits(&dx16), bits(&rounded(&dx32)), "backward_data, {what}");
            }
        }
    }
    // The weight and its gradient stay f32: an f16 one is refused, naming it.
    let s = shapes()[0];
    let ws = workspace(gpu, &conv, &s, WinogradTile::F2x2);
    let (dy, w16, dx) = (
        gpu.zeros("dy", &[s.output_len()]),
        gpu.zeros_as("w16", &[s.weight_len()], Elem::F16),
        gpu.zeros("dx", &[s.input_len()]),
    );
    let err = wino.run(gpu, &conv, ConvOp::BackwardData, &s, WinogradTile::F2x2, [&dy, &w16], None, &dx, &ws);
    assert!(format!("{:#}", err.err().unwrap()).contains("w16 holds f16 elements"));
}
