// Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms of the 3x3 stride-1 convolutions (Lavin & Gray 2016).
// CPU twins: elasticface_core::nn::{winograd_weight_transform, winograd_input_transform,
// winograd_normalized_input_transform, winograd_output_transform, winograd_output_grad_transform,
// winograd_weight_grad_transform}, which give the exact operation order repeated
// here (each parenthesis one f32 rounding). The kernel winograd_X is the twin of the core's winograd_X with
// WinogradTile::F2x2, winograd_f4_X with WinogradTile::F4x4. Params mirrors `WinogradParams` in
// host/src/gpu/kernels/winograd.rs.
//
// F(2x2, 3x3). A 3x3 stride-1 convolution with padding PAD (<= 2) of x (N, C, H, W) has output (HO, WO) =
// (H + 2*PAD - 2, W + 2*PAD - 2), cut into 2x2 tiles: TH = ceil(HO / 2), TW = ceil(WO / 2), T = N*TH*TW tiles
// numbered t = (n*TH + th)*TW + tw. Tile t reads the 4x4 input patch d[i][j] = x[n, c, 2*th - PAD + i,
// 2*tw - PAD + j] (zero outside the input) and gives y[n, co, 2*th + i, 2*tw + j], i, j < 2 (positions past HO,
// WO unwritten):
//   y_tile = A^T [ sum_c (G g G^T) (.) (B^T d B) ] A
// The sum over c is 16 matrix products (gemm_batched in conv2d.wgsl), one per element e = i*4 + j of the 4x4
// transforms; these kernels move between the tensors and the transformed operands:
//   U (16, R, S)  winograd_weight_transform: (R, S) = (C_OUT, C_IN), or flipped (C_IN, C_OUT) from the weight
//                 rotated by 180 degrees (backward_data is the forward convolution of dy with that weight and
//                 padding 2 - PAD)
//   V (16, C, T)  winograd_input_transform, or (16, T, C) transposed (the right operand of backward_weight)
//   M (16, C, T)  -> winograd_output_transform -> y (N, C, HO, WO)
//   W (16, C, T)  <- winograd_output_grad_transform <- dy (N, C, HO, WO): A dY A^T, the gradient of M
//   dU (16, C_OUT, C_IN) -> winograd_weight_grad_transform -> dweight (C_OUT, C_IN, 3, 3): G^T dU G
//
// F(4x4, 3x3) (the winograd_f4_* kernels, after the F(2x2) ones): the same layouts with 36 planes instead of 16,
// 4x4 output tiles from 6x6 input patches: TH = ceil(HO / 4), TW = ceil(WO / 4); tile t reads
// d[i][j] = x[n, c, 4*th - PAD + i, 4*tw - PAD + j] (i, j < 6) and gives y[n, co, 4*th + i, 4*tw + j] (i, j < 4),
// element e = i*6 + j of the 6x6 transforms in plane e. G g G^T = S (.) (G' g G'^T), G' integer, S the 36
// constants below (see the core's module docs for the matrices); the 1-D passes f4_g, f4_bt, f4_at, f4_a, f4_gt
// are the core's, with the same names and operation order.
//
// NORMALISED INPUT. winograd_normalized_input_transform and winograd_f4_normalized_input_transform (CPU twin
// elasticface_core::nn::winograd_normalized_input_transform) transform prelu(bn(x)) instead of x: each element
// of the patch is normalised as it is read, (x - mean[c]) * (gamma[c] * inverseSqrt(var[c] + eps)) + beta[c] as
// batchnorm.wgsl's `normalized` computes it, then, where p.prelu is 1, PReLU'd with alpha[c] as its `prelu`
// does; the padding stays zero. So a convolution whose input is a batch norm's output (and PReLU's) reads the
// batch norm's input, and that output is never stored. The same bits as batchnorm.wgsl's normalisation followed
// by the plain input transform, wherever the compiler rounds both alike.
//
// STORAGE. `src` is read as `Src` and `dst` written as `Dst`: f32 here; the host rewrites either alias to f16
// where the tensor is one of mixed precision's f16 activations or activation gradients (x of an input transform,
// y or dx of an output transform, dy of the output gradient transform), or a transformed operand the
// mixed-precision products read as f16 (see `Winograd` in host/src/gpu/kernels/winograd.rs). Values are
// converted to f32 as they are read and rounded to Dst as they are written; the products, weights and their
// gradients are f32.
//
// One invocation per (row, column) of the transformed operand, numbered so that neighbouring invocations write
// neighbouring addresses; an F(4x4) invocation keeps one 6x6 (or smaller) intermediate and computes the second
// pass row by row, storing each element as it comes. Every read and write checks its index against the sizes the
// host checked the tensors against: correct without runtime bounds checks.

struct Params {
    n: u32,
    // Channels of the tensor transformed (input, output or output gradient).
    channels: u32,
    h: u32,
    w: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    tiles_h: u32,
    tiles_w: u32,
    // T = N * TH * TW.
    tiles: u32,
    // The weight transforms' C_OUT and C_IN.
    c_out: u32,
    c_in: u32,
    // winograd_weight_transform: 1 = flipped; winograd_input_transform: 1 = transposed.
    flag: u32,
    // Invocations with work: channels * tiles, or c_out * c_in.
    count: u32,
    // The normalised input transforms: the batch norm's eps, and 1 where a PReLU follows it.
    eps: f32,
    prelu: u32,
}

const WG: u32 = 256u;

alias Src = f32;
alias Dst = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<Src>;
@group(0) @binding(2) var<storage, read_write> dst: array<Dst>;

// The normalised input transforms' batch norm (and PReLU) per channel. Without a PReLU (p.prelu 0) the host binds
// beta again as alpha, which is then never read.
@group(0) @binding(3) var<storage, read> norm_mean: array<f32>;
@group(0) @binding(4) var<storage, read> norm_var: array<f32>;
@group(0) @binding(5) var<storage, read> norm_gamma: array<f32>;
@group(0) @binding(6) var<storage, read> norm_beta: array<f32>;
@group(0) @binding(7) var<storage, read> norm_alpha: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

// Writes element e of `v` to dst[e * plane + i] for e < 16: invocation i's column of a (16, plane) operand.
fn store_planes(i: u32, plane: u32, v: array<f32, 16>) {
    for (var e = 0u; e < 16u; e++) {
        dst[e * plane + i] = Dst(v[e]);
    }
}

// Invocation i's 3x3 kernel g (row-major) of a weight transform: weight[co, ci] with U's (r, s) = (i / S, i % S)
// = (co, ci), or flipped (ci, co) and rotated by 180 degrees.
fn weight_kernel(i: u32) -> array<f32, 9> {
    let flip = p.flag == 1u;
    var co = i / p.c_in;
    var ci = i % p.c_in;
    if flip {
        ci = i / p.c_out;
        co = i % p.c_out;
    }
    let base = (co * p.c_in + ci) * 9u;
    var g: array<f32, 9>;
    for (var k = 0u; k < 9u; k++) {
        g[k] = f32(src[base + select(k, 8u - k, flip)]);
    }
    return g;
}

// The tile of invocation (c, t): (n, th, tw).
fn tile_of(t: u32) -> vec3<u32> {
    let per_sample = p.tiles_h * p.tiles_w;
    let r = t % per_sample;
    return vec3<u32>(t / per_sample, r / p.tiles_w, r % p.tiles_w);
}

// Where a tile's values lie in an (N, C, rows, cols) tensor: the plane's first index and the tile's first row and
// column (negative where the input transform's patch starts in the padding).
struct Window {
    plane: u32,
    row0: i32,
    col0: i32,
    rows: u32,
    cols: u32,
}

// The channel of an input transform's invocation i: (c, t) = (i / T, i % T), or transposed (t, c) =
// (i / C, i % C).
fn input_channel(i: u32) -> u32 {
    return select(i / p.tiles, i % p.channels, p.flag == 1u);
}

// The input patch of an input transform's invocation i (see `input_channel`) with output tiles of m x m; rows
// from m * th - PAD in x (N, C, H, W).
fn input_window(i: u32, m: u32) -> Window {
    let c = input_channel(i);
    let t = select(i % p.tiles, i / p.channels, p.flag == 1u);
    let tile = tile_of(t);
    let plane = (tile.x * p.channels + c) * p.h * p.w;
    return Window(plane, i32(m * tile.y) - i32(p.pad), i32(m * tile.z) - i32(p.pad), p.h, p.w);
}

// The m x m output tile of invocation i = (c, t) in an (N, C, HO, WO) tensor (the output transform's y, the
// output-gradient transform's dy).
fn output_window(i: u32, m: u32) -> Window {
    let c = i / p.tiles;
    let tile = tile_of(i % p.tiles);
    let plane = (tile.x * p.channels + c) * p.ho * p.wo;
    return Window(plane, i32(m * tile.y), i32(m * tile.z), p.ho, p.wo);
}

// Element (a, b) of the window in src, zero outside the tensor.
fn read_window(q: Window, a: u32, b: u32) -> f32 {
    let r = q.row0 + i32(a);
    let c = q.col0 + i32(b);
    if r >= 0 && r < i32(q.rows) && c >= 0 && c < i32(q.cols) {
        return f32(src[q.plane + u32(r) * q.cols + u32(c)]);
    }
    return 0.0;
}

// Channel c's batch norm as (mean, scale, shift, slope): `normalized` below is (x - mean) * scale + shift, with
// scale = gamma * inverseSqrt(var + eps) as batchnorm.wgsl's `normalized` computes it.
fn channel_norm(c: u32) -> vec4<f32> {
    let scale = norm_gamma[c] * inverseSqrt(norm_var[c] + p.eps);
    return vec4<f32>(norm_mean[c], scale, norm_beta[c], select(0.0, norm_alpha[c], p.prelu == 1u));
}

// Element (a, b) of the window in src normalised with k = channel_norm(c) (and PReLU'd where p.prelu is 1),
// zero outside the tensor.
fn read_normalized(q: Window, a: u32, b: u32, k: vec4<f32>) -> f32 {
    let r = q.row0 + i32(a);
    let c = q.col0 + i32(b);
    if r >= 0 && r < i32(q.rows) && c >= 0 && c < i32(q.cols) {
        let z = (f32(src[q.plane + u32(r) * q.cols + u32(c)]) - k.x) * k.y + k.z;
        if p.prelu == 1u {
            return select(k.w * z, z, z > 0.0);
        }
        return z;
    }
    return 0.0;
}

// Writes element (a, b) of the window to dst, unless it lies past the tensor's rows or columns.
fn write_window(q: Window, a: u32, b: u32, v: f32) {
    let r = u32(q.row0) + a;
    let c = u32(q.col0) + b;
    if r < q.rows && c < q.cols {
        dst[q.plane + r * q.cols + c] = Dst(v);
    }
}

// U = G g G^T of one 3x3 kernel g (row-major), as 16 elements e = i*4 + j.
fn weight_tile(g: array<f32, 9>) -> array<f32, 16> {
    var t: array<f32, 12>;
    for (var j = 0u; j < 3u; j++) {
        let g0 = g[j];
        let g1 = g[3u + j];
        let g2 = g[6u + j];
        t[j] = g0;
        t[3u + j] = 0.5 * ((g0 + g1) + g2);
        t[6u + j] = 0.5 * ((g0 - g1) + g2);
        t[9u + j] = g2;
    }
    var u: array<f32, 16>;
    for (var i = 0u; i < 4u; i++) {
        let t0 = t[3u * i];
        let t1 = t[3u * i + 1u];
        let t2 = t[3u * i + 2u];
        u[4u * i] = t0;
        u[4u * i + 1u] = 0.5 * ((t0 + t1) + t2);
        u[4u * i + 2u] = 0.5 * ((t0 - t1) + t2);
        u[4u * i + 3u] = t2;
    }
    return u;
}

// weight (C_OUT, C_IN, 3, 3) -> U (16, C_OUT, C_IN), or flipped: U (16, C_IN, C_OUT) of weight[co, ci, 2-a, 2-b].
@compute @workgroup_size(WG)
fn winograd_weight_transform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    store_planes(i, p.c_out * p.c_in, weight_tile(weight_kernel(i)));
}

// V = B^T d B of one 4x4 patch d (row-major), as 16 elements e = i*4 + j.
fn input_tile(d: array<f32, 16>) -> array<f32, 16> {
    // tmp = B^T d, then V = tmp B.
    var r: array<f32, 16>;
    for (var j = 0u; j < 4u; j++) {
        let d0 = d[j];
        let d1 = d[4u + j];
        let d2 = d[8u + j];
        let d3 = d[12u + j];
        r[j] = d0 - d2;
        r[4u + j] = d1 + d2;
        r[8u + j] = d2 - d1;
        r[12u + j] = d1 - d3;
    }
    var v: array<f32, 16>;
    for (var a = 0u; a < 4u; a++) {
        let r0 = r[4u * a];
        let r1 = r[4u * a + 1u];
        let r2 = r[4u * a + 2u];
        let r3 = r[4u * a + 3u];
        v[4u * a] = r0 - r2;
        v[4u * a + 1u] = r1 + r2;
        v[4u * a + 2u] = r2 - r1;
        v[4u * a + 3u] = r1 - r3;
    }
    return v;
}

// x (N, C, H, W) -> V (16, C, T), or transposed V (16, T, C): V = B^T d B.
@compute @workgroup_size(WG)
fn winograd_input_transform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let x = input_window(i, 2u);
    var d: array<f32, 16>;
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            d[4u * a + b] = read_window(x, a, b);
        }
    }
    store_planes(i, p.channels * p.tiles, input_tile(d));
}

// winograd_input_transform of prelu(bn(x)) (see NORMALISED INPUT).
@compute @workgroup_size(WG)
fn winograd_normalized_input_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let x = input_window(i, 2u);
    let k = channel_norm(input_channel(i));
    var d: array<f32, 16>;
    for (var a = 0u; a < 4u; a++) {
        for (var b = 0u; b < 4u; b++) {
            d[4u * a + b] = read_normalized(x, a, b, k);
        }
    }
    store_planes(i, p.channels * p.tiles, input_tile(d));
}

// M (16, C, T) -> y (N, C, HO, WO): Y = A^T M A, the 2x2 tile clipped to HO, WO.
@compute @workgroup_size(WG)
fn winograd_output_transform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let plane_size = p.channels * p.tiles;
    // tmp = A^T M (2 x 4).
    var t: array<f32, 8>;
    for (var j = 0u; j < 4u; j++) {
        let m0 = f32(src[j * plane_size + i]);
        let m1 = f32(src[(4u + j) * plane_size + i]);
        let m2 = f32(src[(8u + j) * plane_size + i]);
        let m3 = f32(src[(12u + j) * plane_size + i]);
        t[j] = (m0 + m1) + m2;
        t[4u + j] = (m1 - m2) - m3;
    }
    let y = output_window(i, 2u);
    for (var a = 0u; a < 2u; a++) {
        let t0 = t[4u * a];
        let t1 = t[4u * a + 1u];
        let t2 = t[4u * a + 2u];
        let t3 = t[4u * a + 3u];
        write_window(y, a, 0u, (t0 + t1) + t2);
        write_window(y, a, 1u, (t1 - t2) - t3);
    }
}

// dy (N, C, HO, WO) -> W (16, C, T): W = A dY A^T, dY the 2x2 tile (zero past HO, WO).
@compute @workgroup_size(WG)
fn winograd_output_grad_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let dy = output_window(i, 2u);
    var g: array<f32, 4>;
    for (var a = 0u; a < 2u; a++) {
        for (var b = 0u; b < 2u; b++) {
            g[2u * a + b] = read_window(dy, a, b);
        }
    }
    // tmp = A dY (4 x 2), then W = tmp A^T.
    var t: array<f32, 8>;
    for (var j = 0u; j < 2u; j++) {
        let g0 = g[j];
        let g1 = g[2u + j];
        t[j] = g0;
        t[2u + j] = g0 + g1;
        t[4u + j] = g0 - g1;
        t[6u + j] = -g1;
    }
    var w: array<f32, 16>;
    for (var a = 0u; a < 4u; a++) {
        let t0 = t[2u * a];
        let t1 = t[2u * a + 1u];
        w[4u * a] = t0;
        w[4u * a + 1u] = t0 + t1;
        w[4u * a + 2u] = t0 - t1;
        w[4u * a + 3u] = -t1;
    }
    store_planes(i, p.channels * p.tiles, w);
}

// dU (16, C_OUT, C_IN) -> dweight (C_OUT, C_IN, 3, 3): dg = G^T dU G.
@compute @workgroup_size(WG)
fn winograd_weight_grad_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let plane = p.c_out * p.c_in;
    // tmp = G^T dU (3 x 4).
    var t: array<f32, 12>;
    for (var j = 0u; j < 4u; j++) {
        let u0 = f32(src[j * plane + i]);
        let u1 = f32(src[(4u + j) * plane + i]);
        let u2 = f32(src[(8u + j) * plane + i]);
        let u3 = f32(src[(12u + j) * plane + i]);
        t[j] = u0 + 0.5 * (u1 + u2);
        t[4u + j] = 0.5 * (u1 - u2);
        t[8u + j] = 0.5 * (u1 + u2) + u3;
    }
    for (var a = 0u; a < 3u; a++) {
        let t0 = t[4u * a];
        let t1 = t[4u * a + 1u];
        let t2 = t[4u * a + 2u];
        let t3 = t[4u * a + 3u];
        dst[i * 9u + 3u * a] = Dst(t0 + 0.5 * (t1 + t2));
        dst[i * 9u + 3u * a + 1u] = Dst(0.5 * (t1 - t2));
        dst[i * 9u + 3u * a + 2u] = Dst(0.5 * (t1 + t2) + t3);
    }
}

// ---- F(4x4, 3x3) ----

// S[i][j] = D_i D_j, D = (1/4, -1/6, -1/6, 1/24, 1/24, 1), each the correctly rounded f32 (the core's F4_SCALE,
// whose bits its test f4_scale_constants pins): 1/16, 1/24, 1/96, 1/4, 1/36, 1/144, 1/6, 1/576, 1 with signs.
const S = array<f32, 36>(
    0x1p-4f, -0x1.555556p-5f, -0x1.555556p-5f, 0x1.555556p-7f, 0x1.555556p-7f, 0x1p-2f,
    -0x1.555556p-5f, 0x1.c71c72p-6f, 0x1.c71c72p-6f, -0x1.c71c72p-8f, -0x1.c71c72p-8f, -0x1.555556p-3f,
    -0x1.555556p-5f, 0x1.c71c72p-6f, 0x1.c71c72p-6f, -0x1.c71c72p-8f, -0x1.c71c72p-8f, -0x1.555556p-3f,
    0x1.555556p-7f, -0x1.c71c72p-8f, -0x1.c71c72p-8f, 0x1.c71c72p-10f, 0x1.c71c72p-10f, 0x1.555556p-5f,
    0x1.555556p-7f, -0x1.c71c72p-8f, -0x1.c71c72p-8f, 0x1.c71c72p-10f, 0x1.c71c72p-10f, 0x1.555556p-5f,
    0x1p-2f, -0x1.555556p-3f, -0x1.555556p-3f, 0x1.555556p-5f, 0x1.555556p-5f, 0x1p0f,
);

// The 1-D passes, as the core's f4_g, f4_bt, f4_at, f4_a, f4_gt (same names, same operation order).

// G' (g0, g1, g2): (g0, (g0 + g2) + g1, (g0 + g2) - g1, (g0 + 4 g2) + 2 g1, (g0 + 4 g2) - 2 g1, g2).
fn f4_g(g0: f32, g1: f32, g2: f32) -> array<f32, 6> {
    let q = g0 + g2;
    let r = g0 + 4.0 * g2;
    let s = 2.0 * g1;
    return array<f32, 6>(g0, q + g1, q - g1, r + s, r - s, g2);
}

// B^T (d0, ..., d5).
fn f4_bt(d0: f32, d1: f32, d2: f32, d3: f32, d4: f32, d5: f32) -> array<f32, 6> {
    let c = d4 - d2;
    let a = d4 - 4.0 * d2;
    let b = d3 - 4.0 * d1;
    let e = 2.0 * (d3 - d1);
    return array<f32, 6>(c + 4.0 * (d0 - d2), a + b, a - b, c + e, c - e, (d5 - d3) + 4.0 * (d1 - d3));
}

// A^T (m0, ..., m5).
fn f4_at(m0: f32, m1: f32, m2: f32, m3: f32, m4: f32, m5: f32) -> array<f32, 4> {
    let a = m1 + m2;
    let b = m1 - m2;
    let c = m3 + m4;
    let e = m3 - m4;
    return array<f32, 4>((m0 + a) + c, b + 2.0 * e, a + 4.0 * c, (b + 8.0 * e) + m5);
}

// A (y0, ..., y3).
fn f4_a(y0: f32, y1: f32, y2: f32, y3: f32) -> array<f32, 6> {
    let q = y0 + y2;
    let r = y1 + y3;
    let s = y0 + 4.0 * y2;
    let t = 2.0 * (y1 + 4.0 * y3);
    return array<f32, 6>(y0, q + r, q - r, s + t, s - t, y3);
}

// G'^T (u0, ..., u5).
fn f4_gt(u0: f32, u1: f32, u2: f32, u3: f32, u4: f32, u5: f32) -> array<f32, 3> {
    let a = u1 + u2;
    let b = u1 - u2;
    let c = u3 + u4;
    let e = u3 - u4;
    return array<f32, 3>((u0 + a) + c, b + 2.0 * e, (a + 4.0 * c) + u5);
}

// weight (C_OUT, C_IN, 3, 3) -> U (36, C_OUT, C_IN), or flipped: U (36, C_IN, C_OUT) of weight[co, ci, 2-a, 2-b].
// U = S (.) (G' g G'^T).
@compute @workgroup_size(WG)
fn winograd_f4_weight_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let g = weight_kernel(i);
    // tmp = G' g (6 x 3), column by column.
    var t: array<f32, 18>;
    for (var j = 0u; j < 3u; j++) {
        let col = f4_g(g[j], g[3u + j], g[6u + j]);
        for (var r = 0u; r < 6u; r++) {
            t[3u * r + j] = col[r];
        }
    }
    // U = S (.) (tmp G'^T), row by row.
    let plane = p.c_out * p.c_in;
    for (var r = 0u; r < 6u; r++) {
        let row = f4_g(t[3u * r], t[3u * r + 1u], t[3u * r + 2u]);
        for (var b = 0u; b < 6u; b++) {
            dst[(6u * r + b) * plane + i] = Dst(S[6u * r + b] * row[b]);
        }
    }
}

// Column j of tmp = B^T d, the first pass of an F(4x4) input transform, from column j of the patch d.
fn f4_input_column(t: ptr<function, array<f32, 36>>, j: u32, d: array<f32, 6>) {
    let col = f4_bt(d[0], d[1], d[2], d[3], d[4], d[5]);
    for (var r = 0u; r < 6u; r++) {
        (*t)[6u * r + j] = col[r];
    }
}

// Writes V = tmp B row by row, tmp = B^T d the first pass of an F(4x4) input transform: invocation i's column of
// V (36, plane).
fn f4_input_rows(i: u32, t: array<f32, 36>) {
    let plane_size = p.channels * p.tiles;
    for (var r = 0u; r < 6u; r++) {
        let row = f4_bt(t[6u * r], t[6u * r + 1u], t[6u * r + 2u], t[6u * r + 3u], t[6u * r + 4u], t[6u * r + 5u]);
        for (var b = 0u; b < 6u; b++) {
            dst[(6u * r + b) * plane_size + i] = Dst(row[b]);
        }
    }
}

// x (N, C, H, W) -> V (36, C, T), or transposed V (36, T, C): V = B^T d B.
@compute @workgroup_size(WG)
fn winograd_f4_input_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let x = input_window(i, 4u);
    // tmp = B^T d, column by column, each column of the patch read as it is needed.
    var t: array<f32, 36>;
    for (var j = 0u; j < 6u; j++) {
        var d: array<f32, 6>;
        for (var a = 0u; a < 6u; a++) {
            d[a] = read_window(x, a, j);
        }
        f4_input_column(&t, j, d);
    }
    f4_input_rows(i, t);
}

// winograd_f4_input_transform of prelu(bn(x)) (see NORMALISED INPUT).
@compute @workgroup_size(WG)
fn winograd_f4_normalized_input_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let x = input_window(i, 4u);
    let k = channel_norm(input_channel(i));
    var t: array<f32, 36>;
    for (var j = 0u; j < 6u; j++) {
        var d: array<f32, 6>;
        for (var a = 0u; a < 6u; a++) {
            d[a] = read_normalized(x, a, j, k);
        }
        f4_input_column(&t, j, d);
    }
    f4_input_rows(i, t);
}

// M (36, C, T) -> y (N, C, HO, WO): Y = A^T M A, the 4x4 tile clipped to HO, WO.
@compute @workgroup_size(WG)
fn winograd_f4_output_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let plane_size = p.channels * p.tiles;
    // tmp = A^T M (4 x 6), column by column.
    var t: array<f32, 24>;
    for (var j = 0u; j < 6u; j++) {
        let col = f4_at(
            f32(src[j * plane_size + i]),
            f32(src[(6u + j) * plane_size + i]),
            f32(src[(12u + j) * plane_size + i]),
            f32(src[(18u + j) * plane_size + i]),
            f32(src[(24u + j) * plane_size + i]),
            f32(src[(30u + j) * plane_size + i]),
        );
        for (var r = 0u; r < 4u; r++) {
            t[6u * r + j] = col[r];
        }
    }
    // Y = tmp A, row by row.
    let y = output_window(i, 4u);
    for (var r = 0u; r < 4u; r++) {
        let row = f4_at(t[6u * r], t[6u * r + 1u], t[6u * r + 2u], t[6u * r + 3u], t[6u * r + 4u], t[6u * r + 5u]);
        for (var b = 0u; b < 4u; b++) {
            write_window(y, r, b, row[b]);
        }
    }
}

// dy (N, C, HO, WO) -> W (36, C, T): W = A dY A^T, dY the 4x4 tile (zero past HO, WO).
@compute @workgroup_size(WG)
fn winograd_f4_output_grad_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let dy = output_window(i, 4u);
    // tmp = A dY (6 x 4), column by column, each column of the tile read as it is needed.
    var t: array<f32, 24>;
    for (var j = 0u; j < 4u; j++) {
        var g: array<f32, 4>;
        for (var a = 0u; a < 4u; a++) {
            g[a] = read_window(dy, a, j);
        }
        let col = f4_a(g[0], g[1], g[2], g[3]);
        for (var r = 0u; r < 6u; r++) {
            t[4u * r + j] = col[r];
        }
    }
    // W = tmp A^T, row by row.
    let plane_size = p.channels * p.tiles;
    for (var r = 0u; r < 6u; r++) {
        let row = f4_a(t[4u * r], t[4u * r + 1u], t[4u * r + 2u], t[4u * r + 3u]);
        for (var b = 0u; b < 6u; b++) {
            dst[(6u * r + b) * plane_size + i] = Dst(row[b]);
        }
    }
}

// dU (36, C_OUT, C_IN) -> dweight (C_OUT, C_IN, 3, 3): dg = G^T dU G = G'^T (S (.) dU) G'.
@compute @workgroup_size(WG)
fn winograd_f4_weight_grad_transform(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let plane = p.c_out * p.c_in;
    // tmp = G'^T (S (.) dU) (3 x 6), column by column.
    var t: array<f32, 18>;
    for (var j = 0u; j < 6u; j++) {
        var u: array<f32, 6>;
        for (var a = 0u; a < 6u; a++) {
            u[a] = S[6u * a + j] * f32(src[(6u * a + j) * plane + i]);
        }
        let col = f4_gt(u[0], u[1], u[2], u[3], u[4], u[5]);
        for (var r = 0u; r < 3u; r++) {
            t[6u * r + j] = col[r];
        }
    }
    // dg = tmp G', row by row.
    for (var r = 0u; r < 3u; r++) {
        let row = f4_gt(t[6u * r], t[6u * r + 1u], t[6u * r + 2u], t[6u * r + 3u], t[6u * r + 4u], t[6u * r + 5u]);
        for (var b = 0u; b < 3u; b++) {
            dst[i * 9u + 3u * r + b] = Dst(row[b]);
        }
    }
}
