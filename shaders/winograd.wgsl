// Winograd F(2x2, 3x3) transforms of the 3x3 stride-1 convolutions (Lavin & Gray 2016).
// CPU twins: elasticface_core::nn::{winograd_weight_transform, winograd_input_transform, winograd_output_transform,
// winograd_output_grad_transform, winograd_weight_grad_transform}, which give the exact operation order repeated
// here (each parenthesis one f32 rounding). Params mirrors `WinogradParams` in host/src/gpu/kernels/winograd.rs.
//
// A 3x3 stride-1 convolution with padding PAD (<= 2) of x (N, C, H, W) has output (HO, WO) = (H + 2*PAD - 2,
// W + 2*PAD - 2), cut into 2x2 tiles: TH = ceil(HO / 2), TW = ceil(WO / 2), T = N*TH*TW tiles numbered
// t = (n*TH + th)*TW + tw. Tile t reads the 4x4 input patch d[i][j] = x[n, c, 2*th - PAD + i, 2*tw - PAD + j]
// (zero outside the input) and gives y[n, co, 2*th + i, 2*tw + j], i, j < 2 (positions past HO, WO unwritten):
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
// One invocation per (row, column) of the transformed operand, numbered so that neighbouring invocations write
// neighbouring addresses. Every read and write checks its index against the sizes the host checked the tensors
// against: correct without runtime bounds checks.

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
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

// Writes element e of `v` to dst[e * plane + i] for e < 16: invocation i's column of a (16, plane) operand.
fn store_planes(i: u32, plane: u32, v: array<f32, 16>) {
    for (var e = 0u; e < 16u; e++) {
        dst[e * plane + i] = v[e];
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
    let flip = p.flag == 1u;
    // Invocation i is U's (r, s) = (i / S, i % S).
    var co = i / p.c_in;
    var ci = i % p.c_in;
    if flip {
        ci = i / p.c_out;
        co = i % p.c_out;
    }
    let base = (co * p.c_in + ci) * 9u;
    var g: array<f32, 9>;
    for (var k = 0u; k < 9u; k++) {
        g[k] = src[base + select(k, 8u - k, flip)];
    }
    store_planes(i, p.c_out * p.c_in, weight_tile(g));
}

// The tile of invocation (c, t): (n, th, tw).
fn tile_of(t: u32) -> vec3<u32> {
    let per_sample = p.tiles_h * p.tiles_w;
    let r = t % per_sample;
    return vec3<u32>(t / per_sample, r / p.tiles_w, r % p.tiles_w);
}

// x (N, C, H, W) -> V (16, C, T), or transposed V (16, T, C): V = B^T d B.
@compute @workgroup_size(WG)
fn winograd_input_transform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let transposed = p.flag == 1u;
    // Invocation i is (c, t) = (i / T, i % T), or transposed (t, c) = (i / C, i % C).
    var c = i / p.tiles;
    var t = i % p.tiles;
    if transposed {
        t = i / p.channels;
        c = i % p.channels;
    }
    let tile = tile_of(t);
    let plane = (tile.x * p.channels + c) * p.h * p.w;
    let ih0 = i32(2u * tile.y) - i32(p.pad);
    let iw0 = i32(2u * tile.z) - i32(p.pad);
    var d: array<f32, 16>;
    for (var a = 0u; a < 4u; a++) {
        let ih = ih0 + i32(a);
        for (var b = 0u; b < 4u; b++) {
            let iw = iw0 + i32(b);
            var v = 0.0;
            if ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w) {
                v = src[plane + u32(ih) * p.w + u32(iw)];
            }
            d[4u * a + b] = v;
        }
    }
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
    store_planes(i, p.channels * p.tiles, v);
}

// M (16, C, T) -> y (N, C, HO, WO): Y = A^T M A, the 2x2 tile clipped to HO, WO.
@compute @workgroup_size(WG)
fn winograd_output_transform(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= p.count {
        return;
    }
    let c = i / p.tiles;
    let tile = tile_of(i % p.tiles);
    let plane_size = p.channels * p.tiles;
    // tmp = A^T M (2 x 4).
    var t: array<f32, 8>;
    for (var j = 0u; j < 4u; j++) {
        let m0 = src[j * plane_size + i];
        let m1 = src[(4u + j) * plane_size + i];
        let m2 = src[(8u + j) * plane_size + i];
        let m3 = src[(12u + j) * plane_size + i];
        t[j] = (m0 + m1) + m2;
        t[4u + j] = (m1 - m2) - m3;
    }
    let plane = (tile.x * p.channels + c) * p.ho * p.wo;
    for (var a = 0u; a < 2u; a++) {
        let oh = 2u * tile.y + a;
        let t0 = t[4u * a];
        let t1 = t[4u * a + 1u];
        let t2 = t[4u * a + 2u];
        let t3 = t[4u * a + 3u];
        let ow = 2u * tile.z;
        if oh < p.ho {
            dst[plane + oh * p.wo + ow] = (t0 + t1) + t2;
            if ow + 1u < p.wo {
                dst[plane + oh * p.wo + ow + 1u] = (t1 - t2) - t3;
            }
        }
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
    let c = i / p.tiles;
    let tile = tile_of(i % p.tiles);
    let plane = (tile.x * p.channels + c) * p.ho * p.wo;
    var g: array<f32, 4>;
    for (var a = 0u; a < 2u; a++) {
        for (var b = 0u; b < 2u; b++) {
            let oh = 2u * tile.y + a;
            let ow = 2u * tile.z + b;
            var v = 0.0;
            if oh < p.ho && ow < p.wo {
                v = src[plane + oh * p.wo + ow];
            }
            g[2u * a + b] = v;
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
        let u0 = src[j * plane + i];
        let u1 = src[(4u + j) * plane + i];
        let u2 = src[(8u + j) * plane + i];
        let u3 = src[(12u + j) * plane + i];
        t[j] = u0 + 0.5 * (u1 + u2);
        t[4u + j] = 0.5 * (u1 - u2);
        t[8u + j] = 0.5 * (u1 + u2) + u3;
    }
    for (var a = 0u; a < 3u; a++) {
        let t0 = t[4u * a];
        let t1 = t[4u * a + 1u];
        let t2 = t[4u * a + 2u];
        let t3 = t[4u * a + 3u];
        dst[i * 9u + 3u * a] = t0 + 0.5 * (t1 + t2);
        dst[i * 9u + 3u * a + 1u] = 0.5 * (t1 - t2);
        dst[i * 9u + 3u * a + 2u] = 0.5 * (t1 + t2) + t3;
    }
}
