// 2-D convolution (NCHW, no bias, square stride and padding): forward and both gradients, as implicit GEMM.
// CPU twins: elasticface_core::nn::{conv2d_forward, conv2d_backward_data, conv2d_backward_weight, gemm_batched}.
// Params mirrors `Conv2dParams` in host/src/gpu/kernels/conv2d.rs.
//
// THE THREE PRODUCTS. Each kernel computes C (M x COLS) = A (M x K) * B (K x COLS) without ever storing A or
// B: their elements are read from the tensors through index maps ("implicit GEMM"). With
//   output position  j = (n*HO + oh)*WO + ow        input position  j = (n*H + ih)*W + iw
//   tap              t = (ci*KH + kh)*KW + kw       (the weight is (C_OUT, C_IN*KH*KW), row-major)
//   ih = oh*STRIDE + kh - PAD,  iw = ow*STRIDE + kw - PAD   (outside 0..H / 0..W: zero padding)
// the kernels are
//   conv2d_forward          M = C_OUT  COLS = N*HO*WO    K = C_IN*KH*KW   A[co, t] = weight[co, t]
//                           B[t, j] = x[n, ci, ih, iw] (im2col)          C[co, j] -> y[n, co, oh, ow]
//   conv2d_backward_data    M = C_IN   COLS = N*H*W      K = C_OUT*KH*KW  A[ci, (co, kh, kw)] = weight[co, ci, kh, kw]
//                           B[(co, kh, kw), j] = dy[n, co, oh, ow] where oh = (ih + PAD - kh) / STRIDE is an
//                           integer in 0..HO (likewise ow), else 0      C[ci, j] -> dx[n, ci, ih, iw]
//                           (run as STRIDE^2 products, one per stride phase, each without the zero taps, its A
//                           a row-major matrix of the weight as conv2d_phase_weights lays it out)
//   conv2d_backward_weight  M = C_OUT  COLS = C_IN*KH*KW K = N*HO*WO     A[co, j] = dy[n, co, oh, ow]
//                           B[j, t] = x[n, ci, ih, iw] (im2col, transposed) C[co, t] -> dweight[co, t]
// backward_data gathers (every dx element sums its own taps), so a stride > 1 needs no scattering; to spend no
// work on the taps whose output position is not an integer, it runs one product per stride phase.
// A fourth kernel, gemm_batched, is the plain product of row-major matrices, BATCH at a time: the 16 or 36
// products of a Winograd convolution (shaders/winograd.wgsl), tiled, pipelined and split as the three above.
// Each of the four has a `_vec4` twin that loads an operand contiguous along the depth 4 elements at a time where
// the sizes allow (see VEC4 LOADS).
//
// TILING. A workgroup of WG = 256 invocations computes one BM x BN tile of C (BM = 16*TM rows, BN = 16*TN
// columns; TM and TN 4 or 8). Invocation (tx, ty) = (lid % 16, lid / 16) owns TM x TN elements of it: rows
// ty*4 + 64*a + e and columns tx*4 + 64*b + e (a < TM/4, b < TN/4, e < 4), 4 x 4 blocks 64 apart (`tile_row`,
// `tile_col`), held in registers as TM*TN/4 vec4 accumulators. The depth is walked in steps of BK (16 or 32):
// the workgroup copies the A (BM x BK) and B (BK x BN) slices into workgroup memory, both depth-major
// (a_tile[k][m], b_tile[k][j], as vec4s), then each invocation reads per depth k TN/4 vec4s of B and TM/4 vec4s
// of A (neighbouring invocations read neighbouring vec4s) and does TM*TN FMAs. a_tile and b_tile rows are padded
// by one vec4 so that the stores of a tile copied in depth fastest (A always, B in the weight gradients) spread
// over the memory banks: 16 invocations writing one column at 16 depths hit 8 banks twice each instead of one
// bank 16 times.
//
// PIPELINE. Each depth step's elements are loaded from global memory into registers (next_a, next_b) while the
// previous step's tiles are multiplied: iteration s = 0..=steps of the depth loop stores step s - 1's registers
// into the workgroup tiles, issues the loads of step s (none at s = steps), then multiplies the tiles of step
// s - 1, so that the loads' latency overlaps the arithmetic. At s = 0 the registers hold their initial zeros:
// the first product adds +0 to accumulators that are +0, which changes no bit, and keeps every iteration the
// same (cooperative matrix operations must not sit under a branch). The sums and their order are otherwise
// those of the plain loop.
// With one copy of the tiles (BUFFERS = 1) an iteration needs two barriers: after the store (the tiles are
// complete before anyone reads them) and after the product (everyone has read them before the next store
// overwrites them). With two (BUFFERS = 2) iteration s stores into copy s % 2, whose last readers were the
// products of iteration s - 2, and every invocation finished those before it passed the first barrier of
// iteration s - 1: the second barrier goes. `buf_row` is the copy's first depth row (copy b holds the depth rows
// b*BK ..). The arithmetic is the same; only the waiting differs.
//
// LOADS. Copy-in assignments are fixed per invocation, so that neighbouring invocations read neighbouring addresses
// wherever the layout allows: A at depth lid % BK, rows lid / BK + (WG / BK)*i (the depth fastest: A is contiguous
// along the depth in all four products); B at depths lid / 16 + 16*r, columns lid % 16 + 16*i (the columns fastest:
// the output positions of conv2d_forward and the input positions of conv2d_backward_data are contiguous along a row
// of the image, gemm_batched's b is row-major), except in conv2d_backward_weight, whose B (x's im2col, transposed)
// is contiguous along the depth (the output positions) and scattered across its columns (the taps: runs of KW
// elements): there B is copied in depth fastest, at depths lid % 16 + 16*r, columns lid / 16 + 16*i
// (`store_b_by_depth`). Which invocation loads an element changes no sum. The column (or row) index maps are
// decomposed with divisions once, before the depth loop; the depth index is carried as a mixed-radix counter (e.g.
// (ci, kh, kw)) advanced by BK per step with carries: no integer division in the loop.
// VEC4 LOADS. Where an operand is contiguous along the depth in runs of whole vec4s (A of conv2d_forward, the
// weight, when K is a multiple of 4; A of conv2d_backward_data, the phase-major weight, when every phase's K is,
// i.e. C_OUT; A of conv2d_backward_weight, dy, when HO*WO is; a and b of gemm_batched when K and COLS are), the
// kernels' `_vec4` twins load it 4 elements at a time through a vec4 view of the same binding: a quarter of the load
// instructions, the same elements in the same tiles, so the same sums and bits (the host picks the twin when the
// sizes allow). A vec4 A copy-in takes the A_QUADS vec4s at depths 4*(lid % (BK/4)) .. + 3 of rows lid / (BK/4) +
// A_QUAD_ROWS*i (the BK/4 vec4s of a row are neighbours) and stores their elements one by one into the A tile
// (`store_a4`; depth-major in f32, row-major on tensor cores); a vec4 B copy-in the B_QUADS at columns 4*(lid % (BN/4))
// .. + 3 of depth rows lid / (BN/4) + B_QUAD_DEPTHS*r, each stored whole (`store_b4`). Bounds: a vec4 lies wholly
// inside the depth range (K, the chunk and the step are multiples of 4) and the columns, or wholly outside. A twin
// shares its kernel's copy-in functions and repeats only the short depth loop: an entry point may use one view of a
// binding (scalar or vec4), and the mixed-precision composition rewrites the tile calls in each loop.
//
// SPLIT-K. With few output tiles (e.g. backward_weight of a wide early layer: K = N*HO*WO is huge, M*COLS is
// small) the depth is cut into p.splits chunks of p.chunk (a multiple of BK): workgroup z sums depths
// z*chunk .. min((z+1)*chunk, K) in order and writes its partial tile to slice z of the output binding (the host
// binds a scratch tensor of splits * out_len elements; conv2d_forward and conv2d_backward_data have their own
// binding for it, as their outputs are Act); conv2d_reduce_splits (or conv2d_reduce_splits_act, into Act) then
// adds the slices in the fixed order z = 0, 1, ... Every sum has a fixed order: results are bit-identical from
// run to run. No atomics.
//
// GRID. Tiles are numbered t = tile_row + tiles_m * tile_col and folded into (x, y) as t = y * nwg.x + x, so
// that no dimension exceeds the adapter's limit; z is the split. Workgroups with t >= tiles return at once.
//
// BOUNDS. Every global read checks its row against M, its column against COLS, its depth against the chunk
// end, and the gathered spatial position against H, W (or HO, WO); every write checks row and column. So no
// access leaves the tensors whose sizes the host checked against the same shape: correct without runtime
// bounds checks.
//
// ACTIVATIONS. The forward values a network keeps (x of forward and backward_weight, y of forward), their
// gradients (dy of both backward kernels, dx of backward_data), the weight the forward and backward_data passes
// read (in mixed precision a copy rounded to f16, as the tensor cores would round it), and the operands of
// gemm_batched, are stored as `Act`: f32 here, f16 in the mixed-precision module (the host rewrites the alias
// and enables f16; see `ACT_LINE` in conv2d_compose.rs). Every tile operand is kept as stored from its load until
// it enters the workgroup tiles (`put_a`, `put_b`), which convert it: to f32 in the f32 tiles, to f16 (already f16:
// no conversion) in the tensor-core ones; every result is rounded to Act as it is stored. The weight gradient,
// gemm_batched's products and split partial sums stay f32.
//
// TM, TN (rows and columns per invocation, 4 or 8), BK (16 or 32) and BUFFERS (1 or 2) are rewritten by the host
// before compiling (see `TileShape` in conv2d_compose.rs); everything else derives from them.

alias Act = f32;

struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    // The GEMM: rows, columns, depth (see the table above).
    m: u32,
    cols: u32,
    k: u32,
    // Split-K: depth per split (a multiple of BK) and the number of splits.
    chunk: u32,
    splits: u32,
    // Row tiles (ceil(M / BM)) and all tiles (row tiles * ceil(COLS / BN)).
    tiles_m: u32,
    tiles: u32,
    // Elements of the output tensor, the size of one split's slice of the scratch.
    out_len: u32,
    // conv2d_backward_data's stride phase (zero for the other kernels; see there): input rows
    // in_h0 + a*STRIDE (a < ah) and columns in_w0 + b*STRIDE (b < aw); taps tap_h0 + t*STRIDE (t < taps_h) and
    // tap_w0 + u*STRIDE (u < taps_w); output position (a + shift_h - t, b + shift_w - u).
    in_h0: u32,
    in_w0: u32,
    ah: u32,
    aw: u32,
    tap_h0: u32,
    tap_w0: u32,
    taps_h: u32,
    taps_w: u32,
    shift_h: u32,
    shift_w: u32,
    // The first element of A in the weight binding: conv2d_backward_data's phase's matrix in the weight laid out by
    // conv2d_phase_weights; zero for the other kernels.
    weight_offset: u32,
}

const TM: u32 = 4u;
const TN: u32 = 4u;
const BK: u32 = 16u;
const BUFFERS: u32 = 1u;
const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const WG: u32 = 256u;
// vec4s per depth row of a_tile: BM / 4, padded by one.
const A_ROW: u32 = BM / 4u + 1u;
// vec4s per depth row of b_tile: BN / 4, padded by one (see LOADS).
const B_ROW: u32 = BN / 4u + 1u;
// Copy-in (see LOADS): A elements per invocation and depth step, at rows lid / BK + A_STRIDE*i; B depth rows per
// invocation (16 apart), each with TN columns (16 apart).
const A_LOADS: u32 = BM * BK / WG;
const A_STRIDE: u32 = WG / BK;
const B_DEPTHS: u32 = BK / 16u;
// The vec4 copy-ins (see VEC4 LOADS): A vec4s per invocation and depth step, rows apart; B vec4s, depth rows apart.
const A_QUADS: u32 = BM * BK / (4u * WG);
const A_QUAD_ROWS: u32 = WG / (BK / 4u);
const B_QUADS: u32 = BK * BN / (4u * WG);
const B_QUAD_DEPTHS: u32 = WG / (BN / 4u);
// A column or row index that fails every bounds check: marks invocations whose B column is past COLS.
const OFF: i32 = -1073741824;

@group(0) @binding(0) var<uniform> p: Params;

// The tile this workgroup computes: (first row, first column).
fn tile_origin(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let t = wid.y * nwg.x + wid.x;
    return vec2<u32>((t % p.tiles_m) * BM, (t / p.tiles_m) * BN);
}

fn tile_exists(wid: vec3<u32>, nwg: vec3<u32>) -> bool {
    return wid.y * nwg.x + wid.x < p.tiles;
}

// This invocation's TM x TN elements of C, which the epilogue of every kernel writes out: row i, column c
// (`tile_row`, `tile_col`) at acc[i * TN/4 + c / 4][c % 4] (`acc_at`).
var<private> acc: array<vec4<f32>, TM * TN / 4u>;
// The A and B elements this invocation copies in at the next depth step, loaded from global memory one step
// ahead (see PIPELINE): A at depth lid % BK, rows lid / BK + A_STRIDE*i; B at depths lid / 16 + 16*r, columns
// lid % 16 + 16*i (the weight gradients: depths lid % 16 + 16*r, columns lid / 16 + 16*i), at next_b[r * TN + i].
var<private> next_a: array<Act, A_LOADS>;
var<private> next_b: array<Act, B_DEPTHS * TN>;
// The same with the vec4 copy-ins (see VEC4 LOADS). All held as stored (`Act`; see ACTIVATIONS).
var<private> next_a4: array<vec4<Act>, A_QUADS>;
var<private> next_b4: array<vec4<Act>, B_QUADS>;

// The tile row of this invocation's row i (< TM), and the tile column of its column c (< TN).
fn tile_row(lid: u32, i: u32) -> u32 {
    return (i / 4u) * 64u + (lid / 16u) * 4u + i % 4u;
}

fn tile_col(lid: u32, c: u32) -> u32 {
    return (c / 4u) * 64u + (lid % 16u) * 4u + c % 4u;
}

fn acc_at(i: u32, c: u32) -> f32 {
    return acc[i * (TN / 4u) + c / 4u][c % 4u];
}

// Write the prefetched A or B elements (or vec4s) into the copy of the workgroup tiles that begins at depth row
// `buf_row`.
fn store_a(lid: u32, buf_row: u32) {
    for (var i = 0u; i < A_LOADS; i++) {
        put_a(buf_row + lid % BK, lid / BK + A_STRIDE * i, next_a[i]);
    }
}

fn store_b(lid: u32, buf_row: u32) {
    for (var r = 0u; r < B_DEPTHS; r++) {
        for (var i = 0u; i < TN; i++) {
            put_b(buf_row + lid / 16u + 16u * r, lid % 16u + 16u * i, next_b[r * TN + i]);
        }
    }
}

// The same for a B copied in depth fastest (the weight-gradient kernels): depth rows lid % 16 + 16*r, columns
// lid / 16 + 16*i.
fn store_b_by_depth(lid: u32, buf_row: u32) {
    for (var r = 0u; r < B_DEPTHS; r++) {
        for (var i = 0u; i < TN; i++) {
            put_b(buf_row + lid % 16u + 16u * r, lid / 16u + 16u * i, next_b[r * TN + i]);
        }
    }
}

fn store_a4(lid: u32, buf_row: u32) {
    let k = buf_row + 4u * (lid % (BK / 4u));
    for (var i = 0u; i < A_QUADS; i++) {
        let m = lid / (BK / 4u) + A_QUAD_ROWS * i;
        let v = next_a4[i];
        put_a(k, m, v.x);
        put_a(k + 1u, m, v.y);
        put_a(k + 2u, m, v.z);
        put_a(k + 3u, m, v.w);
    }
}

fn store_b4(lid: u32, buf_row: u32) {
    for (var r = 0u; r < B_QUADS; r++) {
        put_b4(buf_row + lid / (BN / 4u) + B_QUAD_DEPTHS * r, 4u * (lid % (BN / 4u)), next_b4[r]);
    }
}

// The end of a depth step: with one copy of the tiles, wait until every invocation has read them (see PIPELINE).
fn release_tiles() {
    if BUFFERS == 1u {
        workgroupBarrier();
    }
}

// Depth steps of this workgroup's split: [k_begin, k_end) in steps of BK (none when the split is empty, as the
// splits of a shallow stride phase can be).
fn depth_steps(k_begin: u32, k_end: u32) -> u32 {
    return select(0u, (k_end - k_begin + BK - 1u) / BK, k_end > k_begin);
}

// @@ TILES BEGIN: the f32 tile arithmetic. The mixed-precision module replaces this section and the calls to
// clear_acc, multiply_tiles and finish_tiles (see conv2d_coop.wgsl.in).
var<workgroup> a_tile: array<vec4<f32>, BUFFERS * BK * A_ROW>;
var<workgroup> b_tile: array<vec4<f32>, BUFFERS * BK * B_ROW>;

// EMULATED MIXED PRECISION. Where the adapter has no cooperative matrices, the host may compose a module with
// F16_OPERANDS true (`compose_emulated`): every A and B element is then rounded to f16 as it enters the tiles, as
// the cooperative-matrix module rounds it (exact where the operands are stored as f16, as the mixed-precision
// module's all are), and the products (exact: two 11-bit significands) accumulate in f32 FMAs in depth order. The
// mixed-precision arithmetic without tensor cores: slow, for testing that path.
const F16_OPERANDS: bool = false;

// v rounded to the nearest binary16 value, ties to even, as f32: +-inf beyond 65504 (from 65520 on, as IEEE
// rounds), subnormals in steps of 2^-24 below 2^-14. Integer arithmetic on the bits (the WGSL conversion to f16
// may round either way and leaves overflow indeterminate). CPU twin: elasticface_core::nn::round_to_f16, which
// keeps a NaN a NaN; here a NaN may become an infinity (either way non-finite, and the step's guard refuses it).
fn round_f16(v: f32) -> f32 {
    let a = abs(v);
    if a < 6.103515625e-5 {
        // Below 2^-14: a multiple of 2^-24; the scalings are exact and `round` ties to even.
        return round(v * 16777216.0) * 5.9604644775390625e-8;
    }
    // Keep 10 of the 23 significand bits, ties to even; a carry moves into the exponent as it should.
    let b = bitcast<u32>(v);
    let r = bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
    if abs(r) > 65504.0 {
        return bitcast<f32>((b & 0x80000000u) | 0x7f800000u);
    }
    return r;
}

// An operand as the tiles hold it: itself, or rounded to f16 (F16_OPERANDS).
fn operand(v: f32) -> f32 {
    if F16_OPERANDS {
        return round_f16(v);
    }
    return v;
}

fn put_a(k: u32, m: u32, v: Act) {
    a_tile[k * A_ROW + m / 4u][m % 4u] = operand(f32(v));
}

fn put_b(k: u32, j: u32, v: Act) {
    b_tile[k * B_ROW + j / 4u][j % 4u] = operand(f32(v));
}

// Columns j .. j + 3 of depth row k (j a multiple of 4).
fn put_b4(k: u32, j: u32, v4: vec4<Act>) {
    let v = vec4<f32>(v4);
    b_tile[k * B_ROW + j / 4u] = vec4<f32>(operand(v.x), operand(v.y), operand(v.z), operand(v.w));
}

// acc += a_tile^T b_tile for this invocation's elements: the 4 x 4 blocks at rows ty*4 + 64*a, columns
// tx*4 + 64*b, from the copy of the tiles that begins at depth row `buf_row`.
fn multiply_tiles(lid: u32, buf_row: u32) {
    let tx = lid % 16u;
    let ty = lid / 16u;
    let row_step = TN / 4u;
    for (var d = 0u; d < BK; d++) {
        let k = buf_row + d;
        for (var b = 0u; b < TN / 4u; b++) {
            let bv = b_tile[k * B_ROW + tx + 16u * b];
            for (var a = 0u; a < TM / 4u; a++) {
                let av = a_tile[k * A_ROW + ty + 16u * a];
                let i = 4u * a * row_step + b;
                acc[i] += av.x * bv;
                acc[i + row_step] += av.y * bv;
                acc[i + 2u * row_step] += av.z * bv;
                acc[i + 3u * row_step] += av.w * bv;
            }
        }
    }
}

fn clear_acc() {
    for (var i = 0u; i < TM * TN / 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
}

// After the depth loop: the block is in `acc` already.
fn finish_tiles(lid: u32) {}
// @@ TILES END

// `value` as a mixed-radix number (hi, mid, lo) with radices (-, mid_radix, lo_radix), e.g. a tap t as
// (ci, kh, kw) with radices (-, KH, KW).
fn digits(value: u32, mid_radix: u32, lo_radix: u32) -> vec3<u32> {
    let lo = value % lo_radix;
    let rest = value / lo_radix;
    return vec3<u32>(rest / mid_radix, rest % mid_radix, lo);
}

// The counter `v` plus `step` (both as `digits` gives them, same radices): each digit carries at most once
// because both digits are below their radix.
fn advance(v: vec3<u32>, step: vec3<u32>, mid_radix: u32, lo_radix: u32) -> vec3<u32> {
    var lo = v.z + step.z;
    let c0 = select(0u, 1u, lo >= lo_radix);
    lo -= c0 * lo_radix;
    var mid = v.y + step.y + c0;
    let c1 = select(0u, 1u, mid >= mid_radix);
    mid -= c1 * mid_radix;
    return vec3<u32>(v.x + step.x + c1, mid, lo);
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_forward: y = conv(x, weight). x (N, C_IN, H, W), weight (C_OUT, C_IN, KH, KW), y (N, C_OUT, HO, WO);
// with splits, y_split instead: slices of a scratch (SPLITS, N, C_OUT, HO, WO) (bound in every dispatch, at
// least one element). conv2d_forward_vec4: the same where K = C_IN*KH*KW is a multiple of 4, the weight loaded as
// vec4s (`weight4`, the same binding; see VEC4 LOADS).
@group(0) @binding(1) var<storage, read> x: array<Act>;
@group(0) @binding(2) var<storage, read> weight: array<Act>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<Act>>;
@group(0) @binding(3) var<storage, read_write> y: array<Act>;
@group(0) @binding(4) var<storage, read_write> y_split: array<f32>;

// The B copy-in of the forward kernels: depth rows lid / 16 + 16*r, columns lid % 16 + 16*i. Per column: the
// sample's offset in x and the input position of tap (0, 0) (OFF for columns past COLS, so that every tap is out
// of bounds); per depth row its tap (ci, kh, kw), advanced by `fwd_tap_step` (BK) per depth step.
var<private> fwd_x_base: array<u32, TN>;
var<private> fwd_ih0: array<i32, TN>;
var<private> fwd_iw0: array<i32, TN>;
var<private> fwd_tap: array<vec3<u32>, B_DEPTHS>;
var<private> fwd_tap_step: vec3<u32>;

fn forward_begin(origin: vec2<u32>, k_begin: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    for (var i = 0u; i < TN; i++) {
        let j = origin.y + lid % 16u + 16u * i;
        let q = j % hw_out;
        fwd_x_base[i] = (j / hw_out) * p.c_in * p.h * p.w;
        fwd_ih0[i] = select(OFF, i32((q / p.wo) * p.stride) - i32(p.pad), j < p.cols);
        fwd_iw0[i] = i32((q % p.wo) * p.stride) - i32(p.pad);
    }
    for (var r = 0u; r < B_DEPTHS; r++) {
        fwd_tap[r] = digits(k_begin + lid / 16u + 16u * r, p.kh, p.kw);
    }
    fwd_tap_step = digits(BK, p.kh, p.kw);
}

// A of the depth step from k0, for conv2d_forward and conv2d_backward_data: the row-major M x K matrix that
// begins at element p.weight_offset of the weight binding, contiguous along k; one element or one vec4 at a time
// (the offset a multiple of 4 then).
fn load_weight_a(origin: vec2<u32>, k0: u32, k_end: u32, lid: u32) {
    let k = k0 + lid % BK;
    for (var i = 0u; i < A_LOADS; i++) {
        let m = origin.x + lid / BK + A_STRIDE * i;
        var v = Act(0.0);
        if m < p.m && k < k_end {
            v = weight[p.weight_offset + m * p.k + k];
        }
        next_a[i] = v;
    }
}

fn load_weight_a4(origin: vec2<u32>, k0: u32, k_end: u32, lid: u32) {
    let k = k0 + 4u * (lid % (BK / 4u));
    for (var i = 0u; i < A_QUADS; i++) {
        let m = origin.x + lid / (BK / 4u) + A_QUAD_ROWS * i;
        var v = vec4<Act>(0.0);
        if m < p.m && k < k_end {
            v = weight4[(p.weight_offset + m * p.k + k) / 4u];
        }
        next_a4[i] = v;
    }
}

// B of the depth step from k0: the im2col of x.
fn forward_load_b(k0: u32, k_end: u32, lid: u32) {
    let hw_in = p.h * p.w;
    for (var r = 0u; r < B_DEPTHS; r++) {
        let k_ok = k0 + lid / 16u + 16u * r < k_end;
        let t = fwd_tap[r];
        for (var i = 0u; i < TN; i++) {
            let ih = fwd_ih0[i] + i32(t.y);
            let iw = fwd_iw0[i] + i32(t.z);
            var v = Act(0.0);
            if k_ok && ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w) {
                v = x[fwd_x_base[i] + t.x * hw_in + u32(ih) * p.w + u32(iw)];
            }
            next_b[r * TN + i] = v;
        }
        fwd_tap[r] = advance(t, fwd_tap_step, p.kh, p.kw);
    }
}

// C[m, j] -> y[n, m, oh, ow], or y_split[slice z][n, m, oh, ow].
fn forward_end(origin: vec2<u32>, z: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    let split = p.splits > 1u;
    let slice = z * p.out_len;
    for (var c = 0u; c < TN; c++) {
        let j = origin.y + tile_col(lid, c);
        if j < p.cols {
            let base = (j / hw_out) * p.c_out * hw_out + j % hw_out;
            for (var i = 0u; i < TM; i++) {
                let m = origin.x + tile_row(lid, i);
                if m < p.m {
                    if split {
                        y_split[slice + base + m * hw_out] = acc_at(i, c);
                    } else {
                        y[base + m * hw_out] = Act(acc_at(i, c));
                    }
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn conv2d_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    forward_begin(origin, k_begin, lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a(lid, buf_row);
        store_b(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            load_weight_a(origin, k_begin + s * BK, k_end, lid);
            forward_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    forward_end(origin, wid.z, lid);
}

@compute @workgroup_size(WG)
fn conv2d_forward_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    forward_begin(origin, k_begin, lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a4(lid, buf_row);
        store_b(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            load_weight_a4(origin, k_begin + s * BK, k_end, lid);
            forward_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    forward_end(origin, wid.z, lid);
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_backward_data: dx from dy and the weight, one stride phase per dispatch. dy (N, C_OUT, HO, WO), the
// weight laid out by conv2d_phase_weights (binding 2, shared with conv2d_forward; see below), dx (N, C_IN, H, W);
// with splits, dx_split instead: slices of a scratch (SPLITS, N, C_IN, H, W) (bound in every dispatch, at least
// one element). conv2d_backward_data_vec4: the same where every phase's K is a multiple of 4 (C_OUT is), the
// weight loaded as vec4s (`weight4`; see VEC4 LOADS).
//
// dx[n, ci, ih, iw] sums weight[co, ci, kh, kw] * dy[n, co, oh, ow] over the taps with oh*STRIDE = ih + PAD - kh
// (likewise ow), i.e. over kh = ih + PAD (mod STRIDE). The input rows with (ih + PAD) % STRIDE = rh form a
// phase: ih = in_h0 + a*STRIDE (a < ah), and they all use the taps kh = tap_h0 + t*STRIDE (tap_h0 = rh,
// t < taps_h), with oh = a + shift_h - t (shift_h = (in_h0 + PAD - rh) / STRIDE, exact); likewise columns.
// One phase is a dense stride-1 product, GEMM M = C_IN, COLS = N*ah*aw, K = C_OUT*taps_h*taps_w: no work
// on taps that stride over, no divisions. Stride 1 is the single phase (0, 0). A phase without taps
// (stride > kernel) has K = 0 and writes zeros, as the core does. Its A, A[ci, (co, t, u)] =
// weight[co, ci, tap_h0 + t*STRIDE, tap_w0 + u*STRIDE], is a row-major matrix of the phase-major weight that
// conv2d_phase_weights writes before (from p.weight_offset on): loaded as the forward pass loads its weight,
// contiguous along the depth.
@group(0) @binding(1) var<storage, read> dy: array<Act>;
@group(0) @binding(3) var<storage, read_write> dx: array<Act>;
@group(0) @binding(4) var<storage, read_write> dx_split: array<f32>;

// The B copy-in of the backward_data kernels: depth rows lid / 16 + 16*r as (co, t, u), advanced by
// `data_tap_step` (BK) per depth step; columns lid % 16 + 16*i, each an input position (n, a, b) of the phase:
// the sample's offset in dy and (a + shift_h, b + shift_w), the output position of tap (0, 0) (OFF past COLS).
var<private> data_dy_base: array<u32, TN>;
var<private> data_oh0: array<i32, TN>;
var<private> data_ow0: array<i32, TN>;
var<private> data_tap: array<vec3<u32>, B_DEPTHS>;
var<private> data_tap_step: vec3<u32>;

// Radices of the phase's taps (t, u); at least 1, so that `digits` never divides by zero when K = 0.
fn data_radices() -> vec2<u32> {
    return vec2<u32>(max(p.taps_h, 1u), max(p.taps_w, 1u));
}

fn data_begin(origin: vec2<u32>, k_begin: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    let phase_hw = p.ah * p.aw;
    let radix = data_radices();
    for (var r = 0u; r < B_DEPTHS; r++) {
        data_tap[r] = digits(k_begin + lid / 16u + 16u * r, radix.x, radix.y);
    }
    data_tap_step = digits(BK, radix.x, radix.y);
    for (var i = 0u; i < TN; i++) {
        let j = origin.y + lid % 16u + 16u * i;
        let q = j % phase_hw;
        data_dy_base[i] = (j / phase_hw) * p.c_out * hw_out;
        data_oh0[i] = select(OFF, i32(q / p.aw + p.shift_h), j < p.cols);
        data_ow0[i] = i32(q % p.aw + p.shift_w);
    }
}

// B of the depth step from k0: dy[n, co, a + shift_h - t, b + shift_w - u], zero outside 0..HO, 0..WO.
fn data_load_b(k0: u32, k_end: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    let radix = data_radices();
    for (var r = 0u; r < B_DEPTHS; r++) {
        let k_ok = k0 + lid / 16u + 16u * r < k_end;
        let t = data_tap[r];
        for (var i = 0u; i < TN; i++) {
            let oh = data_oh0[i] - i32(t.y);
            let ow = data_ow0[i] - i32(t.z);
            var v = Act(0.0);
            if k_ok && oh >= 0 && oh < i32(p.ho) && ow >= 0 && ow < i32(p.wo) {
                v = dy[data_dy_base[i] + t.x * hw_out + u32(oh) * p.wo + u32(ow)];
            }
            next_b[r * TN + i] = v;
        }
        data_tap[r] = advance(t, data_tap_step, radix.x, radix.y);
    }
}

// C[m, j] -> dx[n, m, in_h0 + a*STRIDE, in_w0 + b*STRIDE], or dx_split[slice z][...].
fn data_end(origin: vec2<u32>, z: u32, lid: u32) {
    let hw_in = p.h * p.w;
    let phase_hw = p.ah * p.aw;
    let split = p.splits > 1u;
    let slice = z * p.out_len;
    for (var c = 0u; c < TN; c++) {
        let j = origin.y + tile_col(lid, c);
        if j < p.cols {
            let q = j % phase_hw;
            let ih = p.in_h0 + (q / p.aw) * p.stride;
            let iw = p.in_w0 + (q % p.aw) * p.stride;
            let base = (j / phase_hw) * p.c_in * hw_in + ih * p.w + iw;
            for (var i = 0u; i < TM; i++) {
                let m = origin.x + tile_row(lid, i);
                if m < p.m {
                    if split {
                        dx_split[slice + base + m * hw_in] = acc_at(i, c);
                    } else {
                        dx[base + m * hw_in] = Act(acc_at(i, c));
                    }
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn conv2d_backward_data(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    data_begin(origin, k_begin, lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a(lid, buf_row);
        store_b(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            load_weight_a(origin, k_begin + s * BK, k_end, lid);
            data_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    data_end(origin, wid.z, lid);
}

@compute @workgroup_size(WG)
fn conv2d_backward_data_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    data_begin(origin, k_begin, lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a4(lid, buf_row);
        store_b(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            load_weight_a4(origin, k_begin + s * BK, k_end, lid);
            data_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    data_end(origin, wid.z, lid);
}

// conv2d_phase_weights: the weight (C_OUT, C_IN, KH, KW) (binding 1) laid out as conv2d_backward_data reads it
// (binding 2): for each stride phase (rh, rw), row-major over STRIDE x STRIDE, the row-major matrix
// A[ci, (co, t, u)] = weight[co, ci, rh + t*STRIDE, rw + u*STRIDE] (t < TH(rh), u < TW(rw), the phase's taps),
// one after another; every tap is in one phase, so a permutation of the weight. One invocation per (ci, co), co
// fastest (so that neighbours write neighbouring places of a phase's matrix), which copies the KH x KW taps of
// weight[co, ci] to their places: the phases before (rh, rw) hold C_IN*C_OUT*(TH(< rh)*KW + TH(rh)*TW(< rw))
// elements (TH(< rh), the kernel rows of the phases above, carried as a sum). Element-wise: no tiles.
@group(0) @binding(1) var<storage, read> phase_src: array<Act>;
@group(0) @binding(2) var<storage, read_write> phase_dst: array<Act>;

// Taps of a kernel of `k` in stride phase `r` along one dimension.
fn phase_taps(r: u32, k: u32) -> u32 {
    return select(0u, (k - r + p.stride - 1u) / p.stride, r < k);
}

@compute @workgroup_size(WG)
fn conv2d_phase_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.y * nwg.x * WG + gid.x;
    if j >= p.c_out * p.c_in {
        return;
    }
    let ci = j / p.c_out;
    let co = j - ci * p.c_out;
    let src = (co * p.c_in + ci) * p.kh * p.kw;
    var above = 0u;
    for (var rh = 0u; rh < min(p.stride, p.kh); rh++) {
        let th = phase_taps(rh, p.kh);
        var left = 0u;
        for (var rw = 0u; rw < min(p.stride, p.kw); rw++) {
            let tw = phase_taps(rw, p.kw);
            let depth = p.c_out * th * tw;
            let dst = p.c_in * p.c_out * (above * p.kw + th * left) + ci * depth + co * th * tw;
            for (var t = 0u; t < th; t++) {
                for (var u = 0u; u < tw; u++) {
                    phase_dst[dst + t * tw + u] = phase_src[src + (rh + t * p.stride) * p.kw + rw + u * p.stride];
                }
            }
            left += tw;
        }
        above += th;
    }
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_backward_weight: dweight from dy and x. dy (N, C_OUT, HO, WO) (binding 1, shared with
// conv2d_backward_data), x (N, C_IN, H, W) at binding 2 (named `saved_x`: binding 1 is taken by dy),
// dweight (C_OUT, C_IN, KH, KW) (or slices of a scratch). conv2d_backward_weight_vec4: the same where HO*WO is a
// multiple of 4, dy loaded as vec4s (`dy4`, the same binding; see VEC4 LOADS).
@group(0) @binding(1) var<storage, read> dy4: array<vec4<Act>>;
@group(0) @binding(2) var<storage, read> saved_x: array<Act>;
@group(0) @binding(3) var<storage, read_write> dweight: array<f32>;

// The copy-ins of the weight-gradient kernels. A: this invocation's first depth of a step as the output position
// (n, 0, oh*WO + ow), advanced by `bw_a_step` (BK) per step. B, depth fastest (see LOADS): depth rows
// lid % 16 + 16*r as output positions (n, oh, ow), advanced by `bw_b_step` (BK); columns lid / 16 + 16*i, each a
// tap: its channel's offset in a sample of x, and (kh - PAD, kw - PAD) (OFF past COLS).
var<private> bw_a_pos: vec3<u32>;
var<private> bw_a_step: vec3<u32>;
var<private> bw_b_pos: array<vec3<u32>, B_DEPTHS>;
var<private> bw_b_step: vec3<u32>;
var<private> bw_ci_base: array<u32, TN>;
var<private> bw_dh: array<i32, TN>;
var<private> bw_dw: array<i32, TN>;

// `a_depth`: the depth of this invocation's first A element in a step, relative to the step's first depth.
fn weight_begin(origin: vec2<u32>, k_begin: u32, a_depth: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    bw_a_pos = digits(k_begin + a_depth, 1u, hw_out);
    bw_a_step = digits(BK, 1u, hw_out);
    for (var r = 0u; r < B_DEPTHS; r++) {
        bw_b_pos[r] = digits(k_begin + lid % 16u + 16u * r, p.ho, p.wo);
    }
    bw_b_step = digits(BK, p.ho, p.wo);
    for (var i = 0u; i < TN; i++) {
        let j = origin.y + lid / 16u + 16u * i;
        let t = digits(j, p.kh, p.kw);
        bw_ci_base[i] = t.x * p.h * p.w;
        bw_dh[i] = select(OFF, i32(t.y) - i32(p.pad), j < p.cols);
        bw_dw[i] = i32(t.z) - i32(p.pad);
    }
}

// A of the depth step from k0: dy[n, m, oh, ow], contiguous along the output positions of one sample; one element
// (depth k0 + lid % BK) or one vec4 (depths k0 + 4*(lid % (BK/4)) ..; HO*WO a multiple of 4) at a time.
fn weight_load_a(origin: vec2<u32>, k0: u32, k_end: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    let ka_ok = k0 + lid % BK < k_end;
    for (var i = 0u; i < A_LOADS; i++) {
        let m = origin.x + lid / BK + A_STRIDE * i;
        var v = Act(0.0);
        if m < p.m && ka_ok {
            v = dy[(bw_a_pos.x * p.c_out + m) * hw_out + bw_a_pos.z];
        }
        next_a[i] = v;
    }
    bw_a_pos = advance(bw_a_pos, bw_a_step, 1u, hw_out);
}

fn weight_load_a4(origin: vec2<u32>, k0: u32, k_end: u32, lid: u32) {
    let hw_out = p.ho * p.wo;
    let ka_ok = k0 + 4u * (lid % (BK / 4u)) < k_end;
    for (var i = 0u; i < A_QUADS; i++) {
        let m = origin.x + lid / (BK / 4u) + A_QUAD_ROWS * i;
        var v = vec4<Act>(0.0);
        if m < p.m && ka_ok {
            v = dy4[((bw_a_pos.x * p.c_out + m) * hw_out + bw_a_pos.z) / 4u];
        }
        next_a4[i] = v;
    }
    bw_a_pos = advance(bw_a_pos, bw_a_step, 1u, hw_out);
}

// B of the depth step from k0: x[n, ci, oh*STRIDE + kh - PAD, ow*STRIDE + kw - PAD].
fn weight_load_b(k0: u32, k_end: u32, lid: u32) {
    for (var r = 0u; r < B_DEPTHS; r++) {
        let kb_ok = k0 + lid % 16u + 16u * r < k_end;
        let pos = bw_b_pos[r];
        let x_base = pos.x * p.c_in * p.h * p.w;
        let ih0 = i32(pos.y * p.stride);
        let iw0 = i32(pos.z * p.stride);
        for (var i = 0u; i < TN; i++) {
            let ih = ih0 + bw_dh[i];
            let iw = iw0 + bw_dw[i];
            var v = Act(0.0);
            if kb_ok && ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w) {
                v = saved_x[x_base + bw_ci_base[i] + u32(ih) * p.w + u32(iw)];
            }
            next_b[r * TN + i] = v;
        }
        bw_b_pos[r] = advance(pos, bw_b_step, p.ho, p.wo);
    }
}

// C[m, t] -> dweight[slice z][m, t].
fn weight_end(origin: vec2<u32>, z: u32, lid: u32) {
    let slice = z * p.out_len;
    for (var c = 0u; c < TN; c++) {
        let j = origin.y + tile_col(lid, c);
        if j < p.cols {
            for (var i = 0u; i < TM; i++) {
                let m = origin.x + tile_row(lid, i);
                if m < p.m {
                    dweight[slice + m * p.cols + j] = acc_at(i, c);
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn conv2d_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    weight_begin(origin, k_begin, lid % BK, lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a(lid, buf_row);
        store_b_by_depth(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            weight_load_a(origin, k_begin + s * BK, k_end, lid);
            weight_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    weight_end(origin, wid.z, lid);
}

@compute @workgroup_size(WG)
fn conv2d_backward_weight_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    weight_begin(origin, k_begin, 4u * (lid % (BK / 4u)), lid);

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a4(lid, buf_row);
        store_b_by_depth(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            weight_load_a4(origin, k_begin + s * BK, k_end, lid);
            weight_load_b(k_begin + s * BK, k_end, lid);
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    weight_end(origin, wid.z, lid);
}

// ---------------------------------------------------------------------------------------------------------
// gemm_batched: c[b] = a[b] * b[b] for b < BATCH, the products of a Winograd convolution (see
// shaders/winograd.wgsl). a (BATCH, M, K), b (BATCH, K, COLS), c (BATCH, M, COLS), all row-major (or, with
// splits, slices of a scratch (SPLITS, BATCH, M, COLS)). BATCH is p.n; workgroup z is batch * SPLITS + split.
// Sums run over k in order, as in the convolutions: without splits exactly the core twin's order. The operands
// are stored as `Act` (f32 here; f16 in the mixed-precision modules, where the Winograd transforms write them
// rounded as the tiles would round them), the result in f32.
@group(0) @binding(1) var<storage, read> gemm_a: array<Act>;
@group(0) @binding(2) var<storage, read> gemm_b: array<Act>;
@group(0) @binding(3) var<storage, read_write> gemm_c: array<f32>;

@compute @workgroup_size(WG)
fn gemm_batched(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let batch = wid.z / p.splits;
    let split = wid.z % p.splits;
    let k_begin = split * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    let a_base = batch * p.m * p.k;
    let b_base = batch * p.k * p.cols;
    let kb = lid / 16u;

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a(lid, buf_row);
        store_b(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            let k0 = k_begin + s * BK;
            // A: a[batch, m, k], contiguous along k.
            let ka = k0 + lid % BK;
            for (var i = 0u; i < A_LOADS; i++) {
                let m = origin.x + lid / BK + A_STRIDE * i;
                var v = Act(0.0);
                if m < p.m && ka < k_end {
                    v = gemm_a[a_base + m * p.k + ka];
                }
                next_a[i] = v;
            }
            // B: b[batch, k, j], contiguous along j.
            for (var r = 0u; r < B_DEPTHS; r++) {
                let k = k0 + kb + 16u * r;
                for (var i = 0u; i < TN; i++) {
                    let j = origin.y + lid % 16u + 16u * i;
                    var v = Act(0.0);
                    if k < k_end && j < p.cols {
                        v = gemm_b[b_base + k * p.cols + j];
                    }
                    next_b[r * TN + i] = v;
                }
            }
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    write_gemm_c(lid, origin, split * p.out_len + batch * p.m * p.cols);
}

// C[m, j] -> gemm_c[base + m * COLS + j]: the epilogue of gemm_batched and gemm_batched_vec4 (`base` the slice's
// and the batch's offset).
fn write_gemm_c(lid: u32, origin: vec2<u32>, base: u32) {
    for (var c = 0u; c < TN; c++) {
        let j = origin.y + tile_col(lid, c);
        if j < p.cols {
            for (var i = 0u; i < TM; i++) {
                let m = origin.x + tile_row(lid, i);
                if m < p.m {
                    gemm_c[base + m * p.cols + j] = acc_at(i, c);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// gemm_batched_vec4: gemm_batched where K and COLS are multiples of 4, so that every row of a and of b starts on a
// vec4: both operands loaded as vec4s (`gemm_a4`, `gemm_b4`, the same bindings; see VEC4 LOADS).
@group(0) @binding(1) var<storage, read> gemm_a4: array<vec4<Act>>;
@group(0) @binding(2) var<storage, read> gemm_b4: array<vec4<Act>>;

@compute @workgroup_size(WG)
fn gemm_batched_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if !tile_exists(wid, nwg) {
        return;
    }
    let origin = tile_origin(wid, nwg);
    let batch = wid.z / p.splits;
    let split = wid.z % p.splits;
    let k_begin = split * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k);
    // In vec4s: a[batch] and b[batch] start on one, and so does every row.
    let a_base = batch * p.m * (p.k / 4u);
    let b_base = batch * p.k * (p.cols / 4u);
    let j = origin.y + 4u * (lid % (BN / 4u));

    clear_acc();
    let steps = depth_steps(k_begin, k_end);
    for (var s = 0u; s <= steps; s++) {
        let buf_row = (s % BUFFERS) * BK;
        store_a4(lid, buf_row);
        store_b4(lid, buf_row);
        workgroupBarrier();
        if s < steps {
            let k0 = k_begin + s * BK;
            // A: a[batch, m, ka .. ka + 3].
            let ka = k0 + 4u * (lid % (BK / 4u));
            for (var i = 0u; i < A_QUADS; i++) {
                let m = origin.x + lid / (BK / 4u) + A_QUAD_ROWS * i;
                var v = vec4<Act>(0.0);
                if m < p.m && ka < k_end {
                    v = gemm_a4[a_base + m * (p.k / 4u) + ka / 4u];
                }
                next_a4[i] = v;
            }
            // B: b[batch, k, j .. j + 3].
            for (var r = 0u; r < B_QUADS; r++) {
                let k = k0 + lid / (BN / 4u) + B_QUAD_DEPTHS * r;
                var v = vec4<Act>(0.0);
                if k < k_end && j < p.cols {
                    v = gemm_b4[b_base + k * (p.cols / 4u) + j / 4u];
                }
                next_b4[r] = v;
            }
        }
        multiply_tiles(lid, buf_row);
        release_tiles();
    }

    finish_tiles(lid);
    write_gemm_c(lid, origin, split * p.out_len + batch * p.m * p.cols);
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_reduce_splits: result[i] = sum over z = 0, 1, ... of partial[z * out_len + i], in that order.
// partial (SPLITS, out_len), result (out_len): the output tensor of the split kernel. conv2d_reduce_splits_act
// likewise into result_act, the Act output of conv2d_forward or conv2d_backward_data.
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<f32>;
@group(0) @binding(2) var<storage, read_write> result_act: array<Act>;

fn split_sum(i: u32) -> f32 {
    var s = partial[i];
    for (var z = 1u; z < p.splits; z++) {
        s += partial[z * p.out_len + i];
    }
    return s;
}

@compute @workgroup_size(WG)
fn conv2d_reduce_splits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.out_len {
        result[i] = split_sum(i);
    }
}

@compute @workgroup_size(WG)
fn conv2d_reduce_splits_act(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.out_len {
        result_act[i] = Act(split_sum(i));
    }
}
