//! `shaders/conv2d.wgsl` against its core twins.
//!
//! Tolerance. The GPU and the core sum the same K products in different orders (the GPU by depth step, then
//! over splits). Each f32 result of a sum of `d` roundings is within `gamma_d * sum|terms|` of the exact value,
//! `gamma_d = d*u / (1 - d*u)`, `u = 2^-24` (Higham, recursive summation; any summation tree of depth `d`). So
//! element `i` of the two results differ by at most `2 * gamma_(K + S + 1) * A_i`, where `A_i` is the sum of the
//! absolute values of its K products (the same kernel run by the core on `|inputs|`) and S the number of splits
//! (the product rounding adds 1). We check each element against `(K + S + 1) * f32::EPSILON * A_i * 1.01`
//! (`EPSILON = 2u`; the 1.01 absorbs the rounding of `A_i` itself and the gamma denominator): a rigorous bound,
//! so no test can fail by bad luck. Measured errors (printed with `--nocapture`) are at most ~6% of it (and
//! 0 wherever the GPU happens to sum in the core's order: forward and backward_data without splits): typical
//! rounding errors grow like sqrt(K), the bound like K.

use elasticface::gpu::kernels::conv2d::{Conv2d, ConvOp, ConvPrecision, ConvTiling, FragmentSide, TileShape};
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Elem, Gpu, Tensor};
use elasticface_core::nn::{self, Conv2dShape};
use elasticface_tests::{gpu, uniform};

fn shape(
    n: usize,
    c_in: usize,
    hw: (usize, usize),
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> Conv2dShape {
    Conv2dShape { n, c_in, h: hw.0, w: hw.1, c_out, kh: k.0, kw: k.1, stride, pad }
}

/// Shapes that are multiples of no tile, the iResNet kinds (3x3 s1 p1, 3x3 s2 p1, 1x1 s2 p0, the 3-channel
/// stem), odd kernels and strides, and more than one tile along every GEMM dimension; forward passes whose K is a
/// multiple of 4, input gradients whose C_OUT is and weight gradients whose HO*WO is (the `_vec4` kernels), and
/// others.
fn shapes() -> Vec<Conv2dShape> {
    vec![
        shape(3, 5, (13, 13), 7, (3, 3), 1, 1), // 3x3 s1 p1, odd everything; 8 column tiles forward
        shape(3, 5, (13, 13), 7, (3, 3), 2, 1), // 3x3 s2 p1 on an odd size
        shape(2, 6, (9, 11), 9, (1, 1), 2, 0),  // 1x1 s2 p0 (downsample): unread dx positions stay 0
        shape(2, 3, (10, 8), 4, (1, 1), 3, 1),  // 1x1 s3 p1: stride > kernel, padding
        shape(2, 3, (12, 12), 16, (3, 3), 1, 1), // stem: C_IN = 3, K = 27
        shape(2, 4, (9, 11), 6, (5, 5), 3, 2),  // 5x5 s3 p2
        shape(1, 4, (9, 11), 6, (5, 3), 3, 2),  // non-square kernel
        shape(2, 3, (2, 2), 5, (4, 4), 1, 1),   // kernel as large as the padded input: one output
        shape(2, 70, (5, 5), 130, (3, 3), 1, 1), // M > 128 forward and backward_weight, > 64 backward_data
        shape(2, 12, (6, 6), 130, (3, 3), 1, 1), // the same with vec4 loads: K = 108, HO*WO = 36
        shape(2, 70, (9, 9), 12, (3, 3), 2, 1), // vec4 input gradient, 4 phases of K 48, 24, 24, 12; M = 70
    ]
}

/// The tilings under test: the adapter's, every single-buffered tile shape whose f32 tiles fit the adapter's
/// workgroup memory (the double-buffered ones give their bits: see
/// `double_buffered_tiles_give_the_single_buffered_bits`), tall tiles with short ones for short products, and
/// two that split every reduction they can, with the tile grid folded into two dimensions (the last one's plans
/// are checked below).
fn tilings(gpu: &Gpu) -> Vec<(String, ConvTiling)> {
    let base = ConvTiling {
        tile: TileShape::new(64, 64, 16),
        short_tiles: false,
        target_workgroups: 1,
        min_steps_per_split: 1,
        max_grid_x: u32::MAX,
    };
    let mut all = vec![("adapter".to_string(), ConvTiling::for_adapter(gpu))];
    for tile in TileShape::ALL.into_iter().filter(|t| t.buffers == 1 && t.f32_bytes() <= gpu.caps.max_workgroup_memory)
    {
        all.push((tile.to_string(), ConvTiling { tile, ..base }));
    }
    let split = ConvTiling { target_workgroups: 1 << 20, max_grid_x: 3, ..base };
    all.extend([
        (
            "128x64x16, 64 rows for M <= 64".into(),
            ConvTiling { tile: TileShape::new(128, 64, 16), short_tiles: true, ..base },
        ),
        ("split+fold, 64x128x32".into(), ConvTiling { tile: TileShape::new(64, 128, 32), ..split }),
        ("split+fold".into(), split),
    ]);
    all
}

/// Checks `got` against `want` element by element with the bound above; returns (max |error|, max error/bound).
/// `stored`: the rounding of the stored result, relative and absolute: none for f32; for f16 (mixed precision's
/// activations) half an ulp, `2^-11 |g|` for a normal value and `2^-25` below `2^-14` (subnormals). A sum `g`
/// within the bound `B` of `want` is stored within `2^-11 (|want| + B) + 2^-25` of itself, so the bound becomes
/// `B (1 + 2^-11) + 2^-11 |want| + 2^-25`: still rigorous.
fn check(
    what: &str,
    got: &[f32],
    want: &[f32],
    abs_sum: &[f32],
    terms: usize,
    slack: f32,
    stored: (f32, f32),
) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_err, mut max_ratio) = (0.0f32, 0.0f32);
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs_sum).enumerate() {
        let err = (g - w).abs();
        let sum_bound = slack * (terms + 1) as f32 * f32::EPSILON * a * 1.01;
        let (relative, absolute) = stored;
        let bound = sum_bound * (1.0 + relative) + relative * w.abs() + absolute;
        assert!(err <= bound, "{what}: element {i}: gpu {g}, core {w}, |error| {err:e} > bound {bound:e}");
        max_err = max_err.max(err);
        if bound > 0.0 {
            max_ratio = max_ratio.max(err / bound);
        }
    }
    (max_err, max_ratio)
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// A scratch large enough for `conv` on `s` (one element when none is needed).
fn scratch(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape) -> Tensor {
    gpu.zeros("scratch", &[conv.scratch_len(gpu, s).unwrap().max(1)])
}

fn run(gpu: &Gpu, dispatches: &[Dispatch]) {
    gpu.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
}

/// The f32 kernels on every tiling of [`tilings`]; each also checks its vec4 loads ([`check_vec4_loads`]).
#[test]
fn conv2d_matches_the_core_within_the_summation_bound() {
    let Some(gpu) = gpu() else { return };
    for (name, tiling) in tilings(gpu) {
        let conv = Conv2d::build(gpu, ConvPrecision::F32, tiling).unwrap();
        let worst = compare_with_core(gpu, &conv, &name, false);
        check_vec4_loads(gpu, &conv, &name);
        for (op, (err, ratio)) in ConvOp::ALL.iter().zip(worst) {
            eprintln!("{name:>10} {:<24} max |error| {err:.2e}, max error / bound {ratio:.3}", op.name());
        }
    }
}

/// A module the device rejects is an error naming it, not a panic of the device's error handler; the device
/// goes on working.
#[test]
fn a_module_the_device_rejects_is_an_error() {
    let Some(gpu) = gpu() else { return };
    let bad = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let Err(e) = gpu.capture_errors("broken.wgsl", || gpu.shader("broken.wgsl", bad)) else { panic!("rejected") };
    assert!(format!("{e:#}").starts_with("broken.wgsl: "), "{e:#}");
    assert!(gpu.capture_errors("conv2d", || Conv2d::new(gpu)).is_ok());
}

/// Every tile shape compiles where its tiles fit the adapter's workgroup memory, and is refused with the sizes
/// where they do not; a shape the kernels are not written for is refused by name.
#[test]
fn tiles_are_refused_where_they_do_not_fit() {
    let Some(gpu) = gpu() else { return };
    let limit = gpu.caps.max_workgroup_memory;
    let base = ConvTiling::for_adapter(gpu);
    for tile in TileShape::ALL {
        let result = Conv2d::build(gpu, ConvPrecision::F32, ConvTiling { tile, short_tiles: false, ..base });
        if tile.f32_bytes() <= limit {
            assert_eq!(result.unwrap().tiling().tile, tile);
        } else {
            let e = format!("{:#}", result.err().expect("refused"));
            assert!(e.contains(&format!("tiles of {tile} need {} bytes of workgroup memory", tile.f32_bytes())), "{e}");
        }
    }
    let e = format!(
        "{:#}",
        Conv2d::build(gpu, ConvPrecision::F32, ConvTiling { tile: TileShape::new(96, 64, 16), ..base })
            .err()
            .expect("refused")
    );
    assert!(
        e.contains("tile 96x64x16: rows and columns must be 64 or 128, the depth 16 or 32, the buffers 1 or 2"),
        "{e}"
    );
}

/// The mixed-precision kernels (f16 operands, f32 accumulation on cooperative matrices, or emulated where the
/// adapter has none: then on lavapipe, so in CI) against the core on operands rounded to f16 by
/// [`nn::round_to_f16`]: the products are then exact on both sides and only the additions differ, so the bound
/// above applies, doubled: NVIDIA's tensor cores are documented to accumulate in f32 but not to round to nearest
/// (measurements show truncation, which errs by up to 2u, not u).
#[test]
fn conv2d_mixed_matches_the_core_on_f16_operands() {
    let Some(gpu) = gpu() else { return };
    assert!(gpu.caps.mixed_precision(), "the test GPU emulates mixed precision where it has no tensor cores");
    // Every tile shape the adapter's workgroup memory holds (the cooperative-matrix code differs per shape).
    let (kind, bytes): (_, fn(&TileShape) -> u32) = if gpu.caps.cooperative_matrix.is_some() {
        ("mixed", TileShape::coop_bytes)
    } else {
        ("emulated", TileShape::f32_bytes)
    };
    let tiles = single_buffered();
    let tested = check_mixed_on_tiles(gpu, kind, &tiles, &shapes(), bytes, |tiling| {
        Conv2d::build(gpu, ConvPrecision::Mixed, tiling)
    });
    assert!(tested >= 7, "{tested} tile shapes fit");
    // Every reduction split: the f16 outputs (forward's y, backward_data's dx) then come from the reduction.
    let (name, split) = tilings(gpu).pop().unwrap();
    let conv = Conv2d::build(gpu, ConvPrecision::Mixed, split).unwrap();
    compare_with_core(gpu, &conv, &format!("{kind} {name}"), true);
}

/// Checks the mixed-precision kernels `build` compiles for each of `tiles` against the core on `shapes`; a tile
/// may be refused only where it (of `bytes` bytes) is beyond the adapter's workgroup memory. Returns the tiles
/// run.
fn check_mixed_on_tiles<E: std::fmt::Display>(
    gpu: &Gpu,
    kind: &str,
    tiles: &[TileShape],
    shapes: &[Conv2dShape],
    bytes: fn(&TileShape) -> u32,
    build: impl Fn(ConvTiling) -> Result<Conv2d, E>,
) -> usize {
    let mut tested = 0;
    for &tile in tiles {
        let conv = match build(ConvTiling { tile, short_tiles: false, ..ConvTiling::for_adapter(gpu) }) {
            Ok(conv) => conv,
            Err(e) if bytes(&tile) > gpu.caps.max_workgroup_memory => {
                assert!(format!("{e:#}").contains("workgroup memory"), "{e:#}");
                continue;
            }
            Err(e) => panic!("{kind} {tile}: {e:#}"),
        };
        let name = format!("{kind} {tile}");
        let worst = compare_shapes_with_core(gpu, &conv, &name, true, shapes);
        for (op, (err, ratio)) in ConvOp::ALL.iter().zip(worst) {
            eprintln!("{name:>10} {:<24} max |error| {err:.2e}, max error / bound {ratio:.3}", op.name());
        }
        tested += 1;
    }
    tested
}

/// Every single-buffered tile shape (the double-buffered ones give their bits: see
/// `double_buffered_tiles_give_the_single_buffered_bits`).
fn single_buffered() -> Vec<TileShape> {
    TileShape::ALL.into_iter().filter(|t| t.buffers == 1).collect()
}

/// The tile shapes the cooperative-matrix layout is checked on with its fragments as loops, for either fragment
/// side: 64x64x32 and 128x128x16. Between them they give every value of each number the generated layout
/// (`coop_sections`) is written for: one and two 64-row groups, two and four 32-column groups, and each of the
/// side's fragment steps per depth step (1 and 2 of 16, 2 and 4 of 8); each fits double-buffered in 32 KiB. Not
/// every tile shape: the loops are unrolled as the cooperative-matrix calls are, and a CPU adapter takes minutes
/// to compile them all (the 128x128x32 module of 8 x 8 fragments alone, a minute). Every tile shape is run on the
/// real cooperative matrices where the adapter has them (`conv2d_mixed_matches_the_core_on_f16_operands`), and
/// every composition, loops included, is translated for Vulkan, Metal and DX12 in every tile shape by the host
/// crate's `every_shader_module_translates_for_vulkan_metal_and_dx12`.
fn layout_tiles() -> [TileShape; 2] {
    [TileShape::new(64, 64, 32), TileShape::new(128, 128, 16)]
}

/// The cooperative-matrix layout generated for tile shapes and fragment sides (fragment offsets, the depth
/// sub-steps, the staged epilogue; 16 x 16 fragments as on NVIDIA's tensor cores, 8 x 8 as Apple's) on any adapter:
/// the mixed-precision module with its fragment operations done by plain loops
/// ([`Conv2d::mixed_fragments_as_loops`]), against the core with the mixed-precision bound above, on
/// [`layout_tiles`]. Where the adapter has cooperative matrices, the test above runs the real ones on every tile
/// shape as well. On shapes of two row tiles (M = 130) and of column tiles cut short, strided and not, with scalar
/// and vec4 loads: the loops are slow.
#[test]
fn cooperative_matrix_layout_matches_the_core_with_fragments_as_loops() {
    let Some(gpu) = gpu() else { return };
    let (tiles, shapes) = (layout_tiles(), few_shapes());
    for side in FragmentSide::ALL {
        let kind = format!("loops {side}");
        let tested = check_mixed_on_tiles(gpu, &kind, &tiles, &shapes, TileShape::coop_bytes, |tiling| {
            Conv2d::mixed_fragments_as_loops(gpu, tiling, side)
        });
        assert_eq!(tested, tiles.len(), "{kind}: the layout's tiles fit 32 KiB of workgroup memory");
    }
}

/// The single-buffered tile shapes a kind of [`mixed_builds`] is checked on: [`layout_tiles`] for the
/// cooperative-matrix layout as loops, every one for the adapter's own.
fn tiles_of(kind: &str) -> Vec<TileShape> {
    if kind.starts_with("loops") {
        layout_tiles().to_vec()
    } else {
        single_buffered()
    }
}

/// How a test compiles the kernels for a tiling, and the workgroup memory its tiles take.
type Build = fn(&Gpu, ConvTiling) -> Result<Conv2d, String>;
type Bytes = fn(&TileShape) -> u32;

/// The mixed-precision compilations under test, named: the adapter's (cooperative matrices, or emulated), and the
/// cooperative-matrix layout with its fragments as loops, 16 x 16 and 8 x 8.
fn mixed_builds(gpu: &Gpu) -> [(&'static str, Build, Bytes); 3] {
    let mixed_bytes: Bytes =
        if gpu.caps.cooperative_matrix.is_some() { TileShape::coop_bytes } else { TileShape::f32_bytes };
    let mixed: Build = |gpu, tiling| Conv2d::build(gpu, ConvPrecision::Mixed, tiling).map_err(|e| format!("{e:#}"));
    let loops: Build = |gpu, tiling| {
        Conv2d::mixed_fragments_as_loops(gpu, tiling, FragmentSide::Sixteen).map_err(|e| format!("{e:#}"))
    };
    let loops8: Build =
        |gpu, tiling| Conv2d::mixed_fragments_as_loops(gpu, tiling, FragmentSide::Eight).map_err(|e| format!("{e:#}"));
    [
        ("mixed", mixed, mixed_bytes),
        ("loops", loops, TileShape::coop_bytes),
        ("loops 8x8x8", loops8, TileShape::coop_bytes),
    ]
}

/// The batched products of mixed precision (the F(2x2) Winograd convolutions' products; emulated where the adapter
/// has no tensor cores, and the cooperative-matrix layout with its fragments as loops) on f16 operands against the
/// core on the same values: the products are exact on both sides, so the summation bound applies, doubled as for
/// the convolutions above. The single-buffered tile shapes of [`tiles_of`] that fit, split and not, on products
/// that are multiples of no tile. Each build also checks its vec4 loads ([`check_vec4_loads`]).
#[test]
fn gemm_batched_in_mixed_precision_matches_the_core_on_f16_operands() {
    let Some(gpu) = gpu() else { return };
    let builds = mixed_builds(gpu);
    let dims = [[3, 70, 45, 130], [2, 9, 300, 33]];
    let (mut worst, mut tested) = (0.0f32, 0);
    for (kind, build, bytes) in builds {
        for tile in tiles_of(kind).into_iter().filter(|t| bytes(t) <= gpu.caps.max_workgroup_memory) {
            let tiling =
                ConvTiling { tile, short_tiles: false, target_workgroups: 1, min_steps_per_split: 1, max_grid_x: 3 };
            let built = build(gpu, tiling).unwrap();
            for target_workgroups in [1, 1 << 20] {
                let conv = built.with_target_workgroups(target_workgroups);
                check_vec4_loads(gpu, &conv, &format!("{kind} {tile}, target workgroups {target_workgroups}"));
                // The loops are slow: one product.
                let dims = if kind == "loops" { &dims[..1] } else { &dims[..] };
                for (case, &[batch, m, k, cols]) in dims.iter().enumerate() {
                    let seed = 100 + 10 * case as u64;
                    let (av, bv) = (uniform(seed, batch * m * k), uniform(seed + 1, batch * k * cols));
                    // Stored as f16, as the Winograd transforms write them for these kernels.
                    let (a, b) = (gpu.upload_f16("a", &[av.len()], &av), gpu.upload_f16("b", &[bv.len()], &bv));
                    let c = gpu.zeros("c", &[batch * m * cols]);
                    let plan = conv.plan_batched(gpu, batch, m, k, cols).unwrap();
                    let scratch = gpu.zeros("scratch", &[plan.scratch_len().max(1)]);
                    run(gpu, &conv.gemm_batched(gpu, [batch, m, k, cols], &a, &b, &c, &scratch).unwrap());
                    let (mut ar, mut br) = (av.clone(), bv.clone());
                    nn::round_to_f16(&mut ar);
                    nn::round_to_f16(&mut br);
                    let (mut want, mut sum) = (vec![0.0; c.len], vec![0.0; c.len]);
                    nn::gemm_batched(batch, m, k, cols, &ar, &br, &mut want).unwrap();
                    nn::gemm_batched(batch, m, k, cols, &abs(&ar), &abs(&br), &mut sum).unwrap();
                    let what =
                        format!("{kind} {tile} gemm_batched {batch}x({m}x{k})*({k}x{cols}), {} splits", plan.splits);
                    let got = gpu.read(&c).unwrap();
                    let terms = k + plan.splits as usize;
                    worst = worst.max(check(&what, &got, &want, &sum, terms, 2.0, (0.0, 0.0)).1);
                    tested += 1;
                }
            }
        }
    }
    eprintln!("mixed gemm_batched: max error / bound {worst:.3}");
    // On lavapipe (32 KiB), split and not: 7 shapes emulated, two products each; the layout's 2 as loops, one
    // product with 16 x 16 fragments and two with 8 x 8.
    assert!(tested >= 2 * (7 * 2 + 2 + 2 * 2), "{tested} products");
}

/// `gemm_batched` on products whose depth and columns are multiples of 4 loads its operands as vec4s
/// (`gemm_batched_vec4`): the same sums in the same order, so the bits of the scalar loads. Checked on `conv`
/// against the same product with one more column of B (37: every row of B then starts off the vec4s, so the
/// scalar kernel runs, on the same tiles and splits), column by column. Called where the tests build their
/// tilings: every tile shape in f32 and mixed precision, the layout's as loops, split and not.
fn check_vec4_loads(gpu: &Gpu, conv: &Conv2d, what: &str) {
    // Two row tiles, a partial column tile, a depth that is no multiple of 16 (the last step partly past K).
    let [batch, m, k, cols] = [2, 70, 44, 36];
    let (av, bv) = (uniform(7, batch * m * k), uniform(8, batch * k * cols));
    let wide: Vec<f32> = bv.chunks(cols).flat_map(|row| row.iter().copied().chain([0.0])).collect();
    let product = |b: &[f32], cols: usize| {
        let a = stored_as(gpu, conv.activations(), "a", &[av.len()], &av);
        let b = stored_as(gpu, conv.activations(), "b", &[b.len()], b);
        let c = gpu.zeros("c", &[batch * m * cols]);
        let plan = conv.plan_batched(gpu, batch, m, k, cols).unwrap();
        let scratch = gpu.zeros("scratch", &[plan.scratch_len().max(1)]);
        run(gpu, &conv.gemm_batched(gpu, [batch, m, k, cols], &a, &b, &c, &scratch).unwrap());
        (gpu.read::<u32>(&c).unwrap(), plan.splits)
    };
    let ((vec4, splits), (scalar, wide_splits)) = (product(&bv, cols), product(&wide, cols + 1));
    assert_eq!(splits, wide_splits, "{what}: the two products split alike");
    let scalar: Vec<u32> = scalar.chunks(cols + 1).flat_map(|row| row[..cols].to_vec()).collect();
    assert_eq!(vec4, scalar, "{what}: gemm_batched_vec4 ({splits} splits) against the scalar loads");
}

/// `v` uploaded as a tensor of `shape` stored as `elem` (f16: rounded to nearest even).
fn stored_as(gpu: &Gpu, elem: Elem, label: &str, shape: &[usize], v: &[f32]) -> Tensor {
    match elem {
        Elem::F32 => gpu.upload(label, shape, v),
        Elem::F16 => gpu.upload_f16(label, shape, v),
    }
}

/// Few shapes for the slow loops: two row tiles (scalar loads throughout), a strided one (K = 36, C_OUT = 8 and
/// HO*WO = 24: the vec4 loads of all three passes), a 1x1 one.
fn few_shapes() -> [Conv2dShape; 3] {
    [
        shape(2, 70, (5, 5), 130, (3, 3), 1, 1),
        shape(2, 4, (11, 8), 8, (3, 3), 2, 1),
        shape(2, 6, (9, 11), 9, (1, 1), 2, 0),
    ]
}

/// Double-buffered tiles change when the workgroup waits, not what it adds: every kernel (the three convolutions
/// and `gemm_batched`) gives the bits of the same tile single-buffered, for every shape whose double buffers fit
/// the adapter's workgroup memory, in f32 and in mixed precision (emulated, or on the cooperative matrices where
/// the adapter has them), split and not. So the core comparisons of the single-buffered tiles above hold for them
/// too. A double buffer that does not fit is refused for its workgroup memory.
#[test]
fn double_buffered_tiles_give_the_single_buffered_bits() {
    let Some(gpu) = gpu() else { return };
    let f32_build: Build = |gpu, tiling| Conv2d::build(gpu, ConvPrecision::F32, tiling).map_err(|e| format!("{e:#}"));
    let [mixed, ..] = mixed_builds(gpu);
    let kinds = [("f32", f32_build, TileShape::f32_bytes as Bytes), mixed];
    let compared = compare_double_buffered(gpu, &kinds, &single_buffered(), &shapes());
    // On lavapipe (32 KiB): 3 f32 shapes (64x64x16, 64x128x16, 128x64x16) and as many emulated, split and not.
    assert!(compared >= 2 * (3 + 3), "{compared} comparisons");
}

/// The same in the cooperative-matrix layout with its fragments as loops, with either fragment side, on the
/// smallest tile (64x64x16: one fragment step per depth step of 16 x 16 fragments, two of 8 x 8): what double
/// buffering changes, which rows of the staged tiles a depth step multiplies, is the same code on every tile, and
/// the loops are slow to compile (so apart from the test above, to run beside it).
#[test]
fn double_buffered_tiles_give_the_single_buffered_bits_in_the_layout_as_loops() {
    let Some(gpu) = gpu() else { return };
    let [_, loops, loops8] = mixed_builds(gpu);
    let compared = compare_double_buffered(gpu, &[loops, loops8], &[TileShape::new(64, 64, 16)], &few_shapes());
    // Split and not, with either fragment side.
    assert_eq!(compared, 2 * 2, "{compared} comparisons");
}

/// The comparisons of the two tests above: for each kind of build and each of the single-buffered `tiles` whose
/// double buffers fit the adapter's workgroup memory, the convolutions on `shapes` and two batched products, split
/// and not; returns how many tilings were compared.
fn compare_double_buffered(
    gpu: &Gpu,
    kinds: &[(&str, Build, Bytes)],
    tiles: &[TileShape],
    shapes: &[Conv2dShape],
) -> usize {
    let limit = gpu.caps.max_workgroup_memory;
    let mut compared = 0;
    for &(kind, build, bytes) in kinds {
        for &single in tiles {
            let double = single.double_buffered();
            let tiling = |tile| ConvTiling {
                tile,
                short_tiles: false,
                target_workgroups: 1,
                min_steps_per_split: 1,
                max_grid_x: u32::MAX,
            };
            let two = match build(gpu, tiling(double)) {
                Ok(conv) => conv,
                Err(e) if bytes(&double) > limit => {
                    assert!(e.contains("workgroup memory"), "{kind} {double}: {e}");
                    continue;
                }
                Err(e) => panic!("{kind} {double}: {e}"),
            };
            let one = build(gpu, tiling(single)).unwrap();
            for splitting in [1, 1 << 20] {
                let (one, two) = (one.with_target_workgroups(splitting), two.with_target_workgroups(splitting));
                for s in shapes {
                    assert_eq!(
                        run_all_ops(gpu, &one, s),
                        run_all_ops(gpu, &two, s),
                        "{kind} {double} (target workgroups {splitting}) on {s:?}"
                    );
                }
                for dims in [[2, 70, 45, 33], [2, 70, 44, 36]] {
                    assert_eq!(run_gemm(gpu, &one, dims), run_gemm(gpu, &two, dims), "{kind} {double} {dims:?}");
                }
                compared += 1;
            }
        }
    }
    compared
}

/// The bits of `conv`'s `gemm_batched` of `[batch, m, k, cols]` (operands stored as `conv` reads them).
fn run_gemm(gpu: &Gpu, conv: &Conv2d, [batch, m, k, cols]: [usize; 4]) -> Vec<u32> {
    let operand = |seed: u64, len: usize| stored_as(gpu, conv.activations(), "operand", &[len], &uniform(seed, len));
    let (a, b) = (operand(5, batch * m * k), operand(6, batch * k * cols));
    let c = gpu.zeros("c", &[batch * m * cols]);
    let plan = conv.plan_batched(gpu, batch, m, k, cols).unwrap();
    let scratch = gpu.zeros("scratch", &[plan.scratch_len().max(1)]);
    run(gpu, &conv.gemm_batched(gpu, [batch, m, k, cols], &a, &b, &c, &scratch).unwrap());
    gpu.read::<u32>(&c).unwrap()
}

/// The bits of y, dx and dweight from `conv`'s three kernels on `s` (inputs seeded by the shape's sizes).
fn run_all_ops(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape) -> [Vec<u32>; 3] {
    let seed = (s.n * 1000 + s.c_in * 100 + s.c_out) as u64;
    let (xv, wv, dyv) =
        (uniform(seed, s.input_len()), uniform(seed + 1, s.weight_len()), uniform(seed + 2, s.output_len()));
    run_convolutions(gpu, conv, s, [&xv, &wv, &dyv]).map(|v| v.iter().map(|f| f.to_bits()).collect())
}

/// `conv`'s three kernels on `s` from x, the weight and dy (x, dy and the weight stored as `conv` stores and reads
/// them: f16 in mixed precision, rounded on upload): `[y, dx, dweight]`, y and dx as stored, read as f32.
fn run_convolutions(gpu: &Gpu, conv: &Conv2d, s: &Conv2dShape, [xv, wv, dyv]: [&[f32]; 3]) -> [Vec<f32>; 3] {
    let act = conv.activations();
    let stored = |label: &str, shape: &[usize], v: &[f32]| stored_as(gpu, act, label, shape, v);
    let x = stored("x", &[s.n, s.c_in, s.h, s.w], xv);
    let weight = stored("weight", &[s.c_out, s.c_in, s.kh, s.kw], wv);
    let dy = stored("dy", &[s.n, s.c_out, s.out_h(), s.out_w()], dyv);
    let (y, dx, dw) = (
        gpu.zeros_as("y", &[s.output_len()], act),
        gpu.zeros_as("dx", &[s.input_len()], act),
        gpu.zeros("dweight", &[s.weight_len()]),
    );
    let (scratch, phased) = (scratch(gpu, conv, s), gpu.zeros_as("phased", &[s.weight_len()], act));
    let mut all = conv.forward(gpu, s, &x, &weight, &y, &scratch).unwrap();
    all.extend(conv.backward_data(gpu, s, &dy, &weight, &phased, &dx, &scratch).unwrap());
    all.extend(conv.backward_weight(gpu, s, &dy, &x, &dw, &scratch).unwrap());
    run(gpu, &all);
    [gpu.read_f32(&y).unwrap(), gpu.read_f32(&dx).unwrap(), gpu.read(&dw).unwrap()]
}

/// Runs `conv`'s three kernels on every test shape and checks them against the core (on f16-rounded operands
/// when `f16`, with the bound doubled and the activations stored as f16); returns the worst (|error|,
/// error / bound) of each kernel.
fn compare_with_core(gpu: &Gpu, conv: &Conv2d, name: &str, f16: bool) -> [(f32, f32); 3] {
    compare_shapes_with_core(gpu, conv, name, f16, &shapes())
}

/// [`compare_with_core`] on `shapes`.
fn compare_shapes_with_core(
    gpu: &Gpu,
    conv: &Conv2d,
    name: &str,
    f16: bool,
    shapes: &[Conv2dShape],
) -> [(f32, f32); 3] {
    let slack = if f16 { 2.0 } else { 1.0 };
    let (act, stored) = if f16 { (Elem::F16, (2f32.powi(-11), 2f32.powi(-25))) } else { (Elem::F32, (0.0, 0.0)) };
    assert_eq!(conv.activations(), act, "{name}");
    let rounded = |mut v: Vec<f32>| {
        if f16 {
            nn::round_to_f16(&mut v);
        }
        v
    };
    let mut worst = [(0.0f32, 0.0f32); 3];
    for (case, s) in shapes.iter().enumerate() {
        let seed = 10 * case as u64;
        let (xv, wv, dyv) =
            (uniform(seed, s.input_len()), uniform(seed + 1, s.weight_len()), uniform(seed + 2, s.output_len()));
        // Stored as f16, x holds the rounded values the core is given below.
        let [y, dx, dw] = run_convolutions(gpu, conv, s, [&xv, &wv, &dyv]);
        let (xv, wv, dyv) = (rounded(xv), rounded(wv), rounded(dyv));

        let splits = |op| conv.plan(gpu, op, s).unwrap().splits as usize;
        let (mut want, mut sum) = (vec![0.0; s.output_len()], vec![0.0; s.output_len()]);
        nn::conv2d_forward(s, &xv, &wv, &mut want).unwrap();
        nn::conv2d_forward(s, &abs(&xv), &abs(&wv), &mut sum).unwrap();
        let terms = s.c_in * s.kh * s.kw + splits(ConvOp::Forward);
        let e0 = check(&format!("{name} forward {s:?}"), &y, &want, &sum, terms, slack, stored);

        let (mut want, mut sum) = (vec![0.0; s.input_len()], vec![0.0; s.input_len()]);
        nn::conv2d_backward_data(s, &dyv, &wv, &mut want).unwrap();
        nn::conv2d_backward_data(s, &abs(&dyv), &abs(&wv), &mut sum).unwrap();
        let terms = s.c_out * s.kh * s.kw + splits(ConvOp::BackwardData);
        let e1 = check(&format!("{name} backward_data {s:?}"), &dx, &want, &sum, terms, slack, stored);

        let (mut want, mut sum) = (vec![0.0; s.weight_len()], vec![0.0; s.weight_len()]);
        nn::conv2d_backward_weight(s, &dyv, &xv, &mut want).unwrap();
        nn::conv2d_backward_weight(s, &abs(&dyv), &abs(&xv), &mut sum).unwrap();
        let terms = s.n * s.out_h() * s.out_w() + splits(ConvOp::BackwardWeight);
        let e2 = check(&format!("{name} backward_weight {s:?}"), &dw, &want, &sum, terms, slack, (0.0, 0.0));

        for (w, e) in worst.iter_mut().zip([e0, e1, e2]) {
            *w = (w.0.max(e.0), w.1.max(e.1));
        }
    }
    worst
}

/// `conv2d_phase_weights` moves the weight's elements to the places its core twin puts them, bit for bit, stored as
/// the kernels store weights: f32, and f16 in mixed precision (emulated where the adapter has no tensor cores).
#[test]
fn phase_weights_match_the_core_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let tiling = ConvTiling::for_adapter(gpu);
    for precision in [ConvPrecision::F32, ConvPrecision::Mixed] {
        let conv = Conv2d::build(gpu, precision, tiling).unwrap();
        for (case, s) in shapes().iter().enumerate() {
            let mut wv = uniform(300 + case as u64, s.weight_len());
            if precision == ConvPrecision::Mixed {
                nn::round_to_f16(&mut wv);
            }
            let weight = stored_as(gpu, conv.activations(), "weight", &[wv.len()], &wv);
            let phased = gpu.zeros_as("phased", &[wv.len()], conv.activations());
            run(gpu, &[conv.phase_weights(gpu, s, &weight, &phased).unwrap()]);
            let mut want = vec![f32::NAN; wv.len()];
            nn::conv2d_phase_weights(s, &wv, &mut want).unwrap();
            let got = gpu.read_f32(&phased).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{precision:?} {s:?}");
        }
    }
}

#[test]
fn plans_split_fold_and_cut_strided_gradients_into_phases() {
    let Some(gpu) = gpu() else { return };
    let (_, tiling) = tilings(gpu).pop().unwrap();
    let max = gpu.caps.max_workgroups_per_dim;
    let s = shape(3, 5, (13, 13), 7, (3, 3), 1, 1);
    let plan = tiling.plan(ConvOp::BackwardWeight, &s, max).unwrap();
    // K = 3*13*13 = 507: 32 steps of 16, one step per split.
    assert_eq!((plan.splits, plan.gemms[0].0.chunk), (32, 16), "{plan:?}");
    let plan = tiling.plan(ConvOp::Forward, &s, max).unwrap();
    // 507 columns: 8 tiles folded 3 wide; K = 45: 3 splits of one step.
    assert_eq!((plan.gemms[0].1, plan.gemms[0].0.tiles), ([3, 3, 3], 8), "{plan:?}");

    // 3x3 s2 p1 on 13x13: four phases; odd input rows (ih + 1 even) take kernel rows 0 and 2, even rows row 1.
    let plan = tiling.plan(ConvOp::BackwardData, &Conv2dShape { stride: 2, ..s }, max).unwrap();
    let phases: Vec<_> = plan.gemms.iter().map(|(p, _)| (p.in_h0, p.ah, p.taps_h, p.in_w0, p.aw, p.taps_w)).collect();
    assert_eq!(phases, [(1, 6, 2, 1, 6, 2), (1, 6, 2, 0, 7, 1), (0, 7, 1, 1, 6, 2), (0, 7, 1, 0, 7, 1)]);
    // Their matrices in the phase-major weight: C_IN * K each, one after another (5 * 7 * 4, 5 * 7 * 2, ..).
    let offsets: Vec<u32> = plan.gemms.iter().map(|(p, _)| p.weight_offset).collect();
    assert_eq!(offsets, [0, 140, 210, 280]);
    // Every input position in exactly one phase; K = C_OUT * taps.
    assert_eq!(plan.gemms.iter().map(|(p, _)| p.cols).sum::<u32>(), 3 * 13 * 13);
    assert!(plan.gemms.iter().all(|(p, _)| p.k == 7 * p.taps_h * p.taps_w));
    // The splitting tiling splits backward_data too (its output, stored as activations are, then comes from the
    // split binding and the reduction into Act): K = 7 * 9 = 63, 4 steps of 16.
    let plan = tiling.plan(ConvOp::BackwardData, &s, max).unwrap();
    assert_eq!(plan.splits, 4, "{plan:?}");
    // 1x1 s3: only the phase of rows and columns 0, 3, 6, .. has a tap; the others write zeros (K = 0).
    let plan = tiling.plan(ConvOp::BackwardData, &shape(1, 2, (7, 7), 3, (1, 1), 3, 0), max).unwrap();
    assert_eq!(plan.gemms.len(), 9);
    assert_eq!(plan.gemms.iter().filter(|(p, _)| p.k > 0).count(), 1);

    // The adapter's tiling never splits the depth below min_steps_per_split steps, nor beyond 64 splits.
    let adapter = ConvTiling::for_adapter(gpu);
    let big = shape(1, 64, (56, 56), 64, (3, 3), 1, 1);
    let plan = adapter.plan(ConvOp::BackwardWeight, &big, u32::MAX).unwrap();
    let min_chunk = adapter.tile.depth * adapter.min_steps_per_split;
    assert!(plan.splits <= 64 && plan.gemms[0].0.chunk >= min_chunk, "{plan:?}");
}

#[test]
fn results_are_bit_identical_from_run_to_run() {
    let Some(gpu) = gpu() else { return };
    for (name, tiling) in tilings(gpu) {
        let conv = Conv2d::build(gpu, ConvPrecision::F32, tiling).unwrap();
        let s = shape(2, 5, (11, 9), 7, (3, 3), 2, 1);
        let x = gpu.upload("x", &[s.input_len()], &uniform(1, s.input_len()));
        let weight = gpu.upload("weight", &[s.weight_len()], &uniform(2, s.weight_len()));
        let dy = gpu.upload("dy", &[s.output_len()], &uniform(3, s.output_len()));
        let (y, dx, dw) = (
            gpu.zeros("y", &[s.output_len()]),
            gpu.zeros("dx", &[s.input_len()]),
            gpu.zeros("dweight", &[s.weight_len()]),
        );
        let (scratch, phased) = (scratch(gpu, &conv, &s), gpu.zeros("phased", &[s.weight_len()]));
        let mut all = conv.forward(gpu, &s, &x, &weight, &y, &scratch).unwrap();
        all.extend(conv.backward_data(gpu, &s, &dy, &weight, &phased, &dx, &scratch).unwrap());
        all.extend(conv.backward_weight(gpu, &s, &dy, &x, &dw, &scratch).unwrap());
        let bits = |t: &Tensor| gpu.read::<u32>(t).unwrap();
        run(gpu, &all);
        let first = [bits(&y), bits(&dx), bits(&dw)];
        // Dirty the scratch and the phased weight, run again: same bits.
        gpu.write(&scratch, &uniform(4, scratch.len)).unwrap();
        gpu.write(&phased, &uniform(5, phased.len)).unwrap();
        run(gpu, &all);
        assert_eq!(first, [bits(&y), bits(&dx), bits(&dw)], "{name}");
    }
}

#[test]
fn wrong_tensors_are_refused_naming_them() {
    let Some(gpu) = gpu() else { return };
    let conv = Conv2d::build(gpu, ConvPrecision::F32, tilings(gpu).pop().unwrap().1).unwrap();
    let s = shape(2, 3, (5, 5), 4, (3, 3), 1, 1);
    let t = |label: &str, len: usize| gpu.zeros(label, &[len]);
    let (x, weight, y) = (t("x", s.input_len()), t("weight", s.weight_len()), t("y", s.output_len()));
    let (dx, dy, dw, scratch) =
        (t("dx", s.input_len()), t("dy", s.output_len()), t("dweight", s.weight_len()), scratch(gpu, &conv, &s));
    let phased = t("phased", s.weight_len());
    let short = |label: &str, len: usize| t(label, len - 1);
    let message = |r: Result<Vec<Dispatch>, _>| -> String { format!("{:#}", r.err().expect("refused")) };

    let e = message(conv.forward(gpu, &s, &short("x", s.input_len()), &weight, &y, &scratch));
    assert!(e.contains("conv2d_forward: x has 149 elements, the shape needs 150"), "{e}");
    let e = message(conv.forward(gpu, &s, &x, &short("weight", s.weight_len()), &y, &scratch));
    assert!(e.contains("weight has 107"), "{e}");
    let e = message(conv.forward(gpu, &s, &x, &weight, &short("y", s.output_len()), &scratch));
    assert!(e.contains("y has 199"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &short("dy", s.output_len()), &weight, &phased, &dx, &scratch));
    assert!(e.contains("conv2d_backward_data: dy has 199"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &dy, &weight, &phased, &short("dx", s.input_len()), &scratch));
    assert!(e.contains("dx has 149"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &dy, &short("weight", s.weight_len()), &phased, &dx, &scratch));
    assert!(e.contains("conv2d_phase_weights: weight has 107"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &dy, &weight, &short("phased", s.weight_len()), &dx, &scratch));
    assert!(e.contains("conv2d_phase_weights: phased has 107"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &dy, &weight, &weight, &dx, &scratch));
    assert!(e.contains("conv2d_phase_weights: weight and weight share a buffer"), "{e}");
    let e = message(conv.backward_weight(gpu, &s, &dy, &short("x", s.input_len()), &dw, &scratch));
    assert!(e.contains("conv2d_backward_weight: x has 149"), "{e}");
    let e = message(conv.backward_weight(gpu, &s, &dy, &x, &short("dweight", s.weight_len()), &scratch));
    assert!(e.contains("dweight has 107"), "{e}");
    // This tiling splits: a scratch too small, or one that is an operand, is refused.
    let e = message(conv.forward(gpu, &s, &x, &weight, &y, &t("scratch", 1)));
    assert!(e.contains("scratch has 1 elements"), "{e}");
    let e = message(conv.backward_weight(gpu, &s, &dy, &x, &dw, &dw));
    assert!(e.contains("dweight is the scratch"), "{e}");
    // Activations, gradients or a weight stored otherwise than the kernels read them (f16 for the f32 kernels).
    let half = |label: &str, len: usize| gpu.zeros_as(label, &[len], Elem::F16);
    let e = message(conv.forward(gpu, &s, &half("x", s.input_len()), &weight, &y, &scratch));
    assert!(e.contains("conv2d_forward: x holds f16 elements, the kernel takes f32"), "{e}");
    let e = message(conv.forward(gpu, &s, &x, &half("weight", s.weight_len()), &y, &scratch));
    assert!(e.contains("conv2d_forward: weight holds f16 elements, the kernel takes f32"), "{e}");
    let e = message(conv.backward_data(gpu, &s, &half("dy", s.output_len()), &weight, &phased, &dx, &scratch));
    assert!(e.contains("conv2d_backward_data: dy holds f16 elements"), "{e}");
    // An impossible shape.
    let e = message(conv.forward(gpu, &Conv2dShape { stride: 0, ..s }, &x, &weight, &y, &scratch));
    assert!(e.contains("conv2d_forward: invalid shape"), "{e}");
}
