// Batch normalisation over (N, C, HW): BatchNorm2d with HW = H*W, BatchNorm1d with HW = 1.
// CPU twins: elasticface_core::nn::{batchnorm_forward_train, batchnorm_forward_eval, batchnorm_backward}.
// Params mirrors `BatchNormParams` in host/src/gpu/kernels/batchnorm.rs.
//
// Index math. Element (n, c, k) of a (N, C, HW) tensor is at (n*C + c)*HW + k. Channel c's statistics run over
// its N*HW values, numbered j = n*HW + k (so j = 0.. walks the channel's planes in memory order);
// `channel_index(c, j)` maps j back to the flat index.
//
// Reductions: deterministic, two levels, no atomics. A channel's `count = N*HW` values are cut into
// `chunks = ceil(count / CHUNK)` chunks of CHUNK = WG * ITEMS consecutive j (the last one may be short).
//   1. `*_partials`, grid (chunks, C): workgroup (q, c) reduces chunk q of channel c. Thread t takes
//      j = q*CHUNK + i*WG + t for i = 0..ITEMS (consecutive threads read consecutive addresses), sums its values
//      in order of i, and a fixed binary tree over the WG threads (`workgroup_sum`) combines them. Thread 0 writes
//      the chunk's result to the scratch tensor at 2*(c*chunks + q) (two floats per chunk).
//   2. `*_combine`, grid (C): workgroup c folds channel c's chunk results. Thread t sums chunks t, t+WG, ... in
//      that order, then the same fixed tree. One thread writes the per-channel results.
// Every sum therefore has one fixed order that depends only on the shape: results are bit-identical run to run.
// The order differs from the core's (per-plane sequential sums), so results agree to rounding, not bitwise.
//
// Forward statistics (train): each chunk holds its values in registers and computes, two-pass, its sum S_q and
// M2_q = sum over the chunk of (x - S_q/n_q)^2. The combine pass takes mean = sum(S_q) / count and merges the
// chunks exactly as a two-pass variance over the whole channel would (Chan et al.'s pairwise update):
//   M2 = sum_q [ M2_q + n_q * (S_q/n_q - mean)^2 ],  var = M2 / count   (biased; running_var gets var * unbias).
// No E[x^2] - E[x]^2 cancellation: x is read twice in all (statistics, then normalisation), not three times.
//
// Backward: chunk partials of (sum dy, sum dy * (x - mean)); the combine pass writes dbeta, dgamma (unless
// frozen) and, in the scratch tensor's tail at 2*(C*chunks + c), (sum dy / count, sum dy*xhat / count), which the
// element-wise dx pass reads.
//
// Fused forms (CPU twins: batchnorm_{prelu,add}_forward_{train,eval}, batchnorm_prelu_backward,
// batchnorm_backward_accumulate). Each computes what the unfused kernels would, with the same operations in the
// same order (same thread mapping, same trees), so the results are the same bits; only the tensor between them is
// never stored:
//   - `batchnorm_prelu_forward_normalize`: y = prelu(bn(x)); `batchnorm_add_forward_normalize`: y = bn(x) + r.
//   - `batchnorm_prelu_backward_{partials,combine,dx}`: the backward of z = prelu(bn(x)) from dz, with bn(x)
//     recomputed from x and the saved statistics exactly as the forward normalisation computed it. The partials
//     pass also sums the PReLU slope's partials (as prelu.wgsl's `prelu_backward_partials`), the combine pass
//     folds them (as `prelu_backward_combine`) and copies alpha into the scratch tensor for the dx pass.
//   - `batchnorm_backward_accumulate_dx`: dx = (the dx above) + other, as `accumulate` in residual.wgsl adds.
//
// Scratch tensor: 3 * C * (chunks + 1) floats (`BatchNormKernels::scratch_len`):
//   [0, 2*C*chunks)                    the chunk pairs, at 2*(c*chunks + q);
//   [2*C*chunks, 2*C*(chunks+1))       the dx coefficients, at 2*(C*chunks + c);
//   then C*chunks PReLU slope partials at prelu_partial(c, q), and C slopes at alpha_copy(c) (fused backward).
//
// Each entry point has its own bindings, numbered 1.. in the order the host passes its tensors.
//
// Storage. The batch norm's input x (and a residual added to its output) is stored as `X`, its output as `Y`,
// the backward pass's dy as `DY` and its dx (and a gradient added to it) as `DX`: f32 here; the host rewrites any
// of the aliases to f16 for mixed precision's activations and their gradients (`BatchNormKernels` in
// host/src/gpu/kernels/batchnorm.rs). Values are converted to f32 as they are read and rounded to Y (or DX) as
// they are stored; statistics, parameters, parameter gradients and the scratch are f32.
alias X = f32;
alias Y = f32;
alias DY = f32;
alias DX = f32;

struct Params {
    len: u32,      // N*C*HW
    c: u32,        // C
    hw: u32,       // HW
    count: u32,    // N*HW, values per channel
    chunks: u32,   // ceil(count / CHUNK)
    count_f: f32,  // count as f32, rounded on the host as the core rounds it
    eps: f32,
    momentum: f32,
    keep: f32,     // 1 - momentum, computed on the host as the core does
    unbias: f32,   // count_f / (count_f - 1), computed on the host as the core does
}

const WG: u32 = 256u;
const ITEMS: u32 = 8u;
const CHUNK: u32 = WG * ITEMS; // must match BATCHNORM_CHUNK in host/src/gpu/kernels/batchnorm.rs

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;
var<workgroup> red2: array<vec2<f32>, WG>;

// Flat index of value j (= n*HW + k) of channel c.
fn channel_index(c: u32, j: u32) -> u32 {
    let n = j / p.hw;
    return (n * p.c + c) * p.hw + (j - n * p.hw);
}

// Where the fused PReLU backward keeps its slope partials and its copy of the slopes (see the header).
fn prelu_partial(c: u32, q: u32) -> u32 {
    return 2u * p.c * (p.chunks + 1u) + c * p.chunks + q;
}

fn alpha_copy(c: u32) -> u32 {
    return 2u * p.c * (p.chunks + 1u) + p.c * p.chunks + c;
}

// The normalised value of x: (x - mean) * (gamma / sqrt(var + eps)) + beta, with (mean, var) the batch
// statistics (training mode and the backward recompute) or the running ones (eval mode). Every kernel that
// normalises calls this, so they all round alike.
fn normalized(x: f32, mean: f32, variance: f32, gamma: f32, beta: f32) -> f32 {
    return (x - mean) * (gamma * inverseSqrt(variance + p.eps)) + beta;
}

// PReLU with slope a, as prelu.wgsl's `prelu_forward` (a NaN takes the slope branch and stays NaN).
fn prelu(v: f32, a: f32) -> f32 {
    return select(a * v, v, v > 0.0);
}

// Values in chunk q: CHUNK, except for a short last chunk.
fn chunk_len(q: u32) -> u32 {
    return min(CHUNK, p.count - q * CHUNK);
}

// Sum of `v` over the workgroup's threads by a fixed binary tree; every thread gets the result. Call from uniform
// control flow.
fn workgroup_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if t < s {
            red[t] = red[t] + red[t + s];
        }
    }
    let total = workgroupUniformLoad(&red[0]);
    workgroupBarrier(); // nobody overwrites red[0] before everyone has read it
    return total;
}

// `workgroup_sum` of two values at once.
fn workgroup_sum2(t: u32, v: vec2<f32>) -> vec2<f32> {
    red2[t] = v;
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if t < s {
            red2[t] = red2[t] + red2[t + s];
        }
    }
    let total = workgroupUniformLoad(&red2[0]);
    workgroupBarrier();
    return total;
}

// ---- forward, training mode, step 1: per-chunk (S_q, M2_q). Grid (chunks, C). ----
@group(0) @binding(1) var<storage, read> stats_x: array<X>;
@group(0) @binding(2) var<storage, read_write> stats_scratch: array<f32>;

@compute @workgroup_size(WG)
fn batchnorm_forward_train_partials(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    let c = wid.y;
    let n_q = chunk_len(q);
    var v: array<f32, ITEMS>;
    var sum = 0.0;
    for (var i = 0u; i < ITEMS; i++) {
        let off = i * WG + t;
        if off < n_q {
            v[i] = f32(stats_x[channel_index(c, q * CHUNK + off)]);
            sum += v[i];
        }
    }
    let s_q = workgroup_sum(t, sum);
    let mean_q = s_q / f32(n_q);
    var m2 = 0.0;
    for (var i = 0u; i < ITEMS; i++) {
        if i * WG + t < n_q {
            let d = v[i] - mean_q;
            m2 += d * d;
        }
    }
    let m2_q = workgroup_sum(t, m2);
    if t == 0u {
        let o = 2u * (c * p.chunks + q);
        stats_scratch[o] = s_q;
        stats_scratch[o + 1u] = m2_q;
    }
}

// ---- forward, training mode, step 2: mean, biased var, running statistics. Grid (C). ----
@group(0) @binding(1) var<storage, read> comb_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> comb_save_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> comb_save_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> comb_running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> comb_running_var: array<f32>;

@compute @workgroup_size(WG)
fn batchnorm_forward_train_combine(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = wid.x;
    let base = 2u * c * p.chunks;
    var sum = 0.0;
    for (var q = t; q < p.chunks; q += WG) {
        sum += comb_scratch[base + 2u * q];
    }
    let mean = workgroup_sum(t, sum) / p.count_f;
    var m2 = 0.0;
    for (var q = t; q < p.chunks; q += WG) {
        let n_q = f32(chunk_len(q));
        let d = comb_scratch[base + 2u * q] / n_q - mean;
        m2 += comb_scratch[base + 2u * q + 1u] + n_q * d * d;
    }
    let variance = workgroup_sum(t, m2) / p.count_f;
    if t == 0u {
        comb_save_mean[c] = mean;
        comb_save_var[c] = variance;
        comb_running_mean[c] = p.keep * comb_running_mean[c] + p.momentum * mean;
        comb_running_var[c] = p.keep * comb_running_var[c] + p.momentum * (variance * p.unbias);
    }
}

// ---- forward, last step of training mode and all of eval mode. Element-wise, grid_1d(len). ----
// y = `normalized(x)` with (mean, var) the batch statistics (save_mean, save_var) in training mode and the
// running statistics in eval mode. The fused forms bind one more operand at 6 (the PReLU slopes `(C)`, or the
// residual `(N, C, HW)`) and y at 7.
@group(0) @binding(1) var<storage, read> norm_x: array<X>;
@group(0) @binding(2) var<storage, read> norm_mean: array<f32>;
@group(0) @binding(3) var<storage, read> norm_var: array<f32>;
@group(0) @binding(4) var<storage, read> norm_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> norm_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> norm_y: array<Y>;
@group(0) @binding(6) var<storage, read> norm_alpha: array<f32>;
@group(0) @binding(6) var<storage, read> norm_residual: array<X>;
@group(0) @binding(7) var<storage, read_write> norm_then_y: array<Y>;

// The channel of flat index i.
fn channel(i: u32) -> u32 {
    return (i / p.hw) % p.c;
}

// Element i's normalised value (channel c).
fn normalized_at(i: u32, c: u32) -> f32 {
    return normalized(f32(norm_x[i]), norm_mean[c], norm_var[c], norm_gamma[c], norm_beta[c]);
}

@compute @workgroup_size(WG)
fn batchnorm_forward_normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        norm_y[i] = Y(normalized_at(i, channel(i)));
    }
}

@compute @workgroup_size(WG)
fn batchnorm_prelu_forward_normalize(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        let c = channel(i);
        norm_then_y[i] = Y(prelu(normalized_at(i, c), norm_alpha[c]));
    }
}

@compute @workgroup_size(WG)
fn batchnorm_add_forward_normalize(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        norm_then_y[i] = Y(normalized_at(i, channel(i)) + f32(norm_residual[i]));
    }
}

// ---- backward, step 1: per-chunk (sum dy, sum dy * (x - mean)). Grid (chunks, C). ----
@group(0) @binding(1) var<storage, read> bp_x: array<X>;
@group(0) @binding(2) var<storage, read> bp_dy: array<DY>;
@group(0) @binding(3) var<storage, read> bp_save_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> bp_scratch: array<f32>;

@compute @workgroup_size(WG)
fn batchnorm_backward_partials(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    let c = wid.y;
    let n_q = chunk_len(q);
    let mean = bp_save_mean[c];
    var sums = vec2<f32>(0.0, 0.0);
    for (var i = 0u; i < ITEMS; i++) {
        let off = i * WG + t;
        if off < n_q {
            let a = channel_index(c, q * CHUNK + off);
            let g = f32(bp_dy[a]);
            sums += vec2<f32>(g, g * (f32(bp_x[a]) - mean));
        }
    }
    let s = workgroup_sum2(t, sums);
    if t == 0u {
        let o = 2u * (c * p.chunks + q);
        bp_scratch[o] = s.x;
        bp_scratch[o + 1u] = s.y;
    }
}

// ---- fused PReLU backward, step 1: as above, with dy = the PReLU's input gradient from dz (bound as dy), and
// the slope's partials. Grid (chunks, C). ----
@group(0) @binding(5) var<storage, read> pp_save_var: array<f32>;
@group(0) @binding(6) var<storage, read> pp_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> pp_beta: array<f32>;
@group(0) @binding(8) var<storage, read> pp_alpha: array<f32>;

@compute @workgroup_size(WG)
fn batchnorm_prelu_backward_partials(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let q = wid.x;
    let c = wid.y;
    let n_q = chunk_len(q);
    let mean = bp_save_mean[c];
    let a = pp_alpha[c];
    var sums = vec2<f32>(0.0, 0.0);
    var slope = 0.0;
    for (var i = 0u; i < ITEMS; i++) {
        let off = i * WG + t;
        if off < n_q {
            let k = channel_index(c, q * CHUNK + off);
            let x = f32(bp_x[k]);
            let z = normalized(x, mean, pp_save_var[c], pp_gamma[c], pp_beta[c]);
            let dz = f32(bp_dy[k]);
            var g = dz;
            if !(z > 0.0) {
                g = a * dz;
                slope += z * dz;
            }
            sums += vec2<f32>(g, g * (x - mean));
        }
    }
    let s = workgroup_sum2(t, sums);
    let s_slope = workgroup_sum(t, slope);
    if t == 0u {
        let o = 2u * (c * p.chunks + q);
        bp_scratch[o] = s.x;
        bp_scratch[o + 1u] = s.y;
        bp_scratch[prelu_partial(c, q)] = s_slope;
    }
}

// ---- backward, step 2: dbeta, dgamma and the dx coefficients. Grid (C). ----
// Two entry points: `batchnorm_backward_combine` writes dgamma, `batchnorm_backward_combine_frozen` (a frozen
// gamma) does not bind it.
@group(0) @binding(1) var<storage, read_write> bc_scratch: array<f32>;
@group(0) @binding(2) var<storage, read> bc_save_var: array<f32>;
@group(0) @binding(3) var<storage, read_write> bc_dbeta: array<f32>;
@group(0) @binding(4) var<storage, read_write> bc_dgamma: array<f32>;

// Folds channel c's chunks into (dbeta, dgamma) = (sum dy, sum dy * xhat), and stores the dx coefficients
// (sum dy / count, sum dy * xhat / count) in the scratch tail. Returns (dbeta, dgamma) to every thread.
fn backward_combine(t: u32, c: u32) -> vec2<f32> {
    let base = 2u * c * p.chunks;
    var sums = vec2<f32>(0.0, 0.0);
    for (var q = t; q < p.chunks; q += WG) {
        sums += vec2<f32>(bc_scratch[base + 2u * q], bc_scratch[base + 2u * q + 1u]);
    }
    let s = workgroup_sum2(t, sums);
    let sum_dy_xhat = s.y * inverseSqrt(bc_save_var[c] + p.eps);
    if t == 0u {
        let tail = 2u * (p.c * p.chunks + c);
        bc_scratch[tail] = s.x / p.count_f;
        bc_scratch[tail + 1u] = sum_dy_xhat / p.count_f;
    }
    return vec2<f32>(s.x, sum_dy_xhat);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_combine(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = wid.x;
    let d = backward_combine(t, c);
    if t == 0u {
        bc_dbeta[c] = d.x;
        bc_dgamma[c] = d.y;
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_combine_frozen(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = wid.x;
    let d = backward_combine(t, c);
    if t == 0u {
        bc_dbeta[c] = d.x;
    }
}

// ---- fused PReLU backward, step 2: as `batchnorm_backward_combine`, then dalpha (as prelu.wgsl's
// `prelu_backward_combine` sums it) and the copy of alpha the dx pass reads. Grid (C). ----
@group(0) @binding(5) var<storage, read_write> pc_dalpha: array<f32>;
@group(0) @binding(6) var<storage, read> pc_alpha: array<f32>;

@compute @workgroup_size(WG)
fn batchnorm_prelu_backward_combine(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let c = wid.x;
    let d = backward_combine(t, c);
    var sum = 0.0;
    for (var q = t; q < p.chunks; q += WG) {
        sum += bc_scratch[prelu_partial(c, q)];
    }
    let dalpha = workgroup_sum(t, sum);
    if t == 0u {
        bc_dbeta[c] = d.x;
        bc_dgamma[c] = d.y;
        pc_dalpha[c] = dalpha;
        bc_scratch[alpha_copy(c)] = pc_alpha[c];
    }
}

// ---- backward, step 3: dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)). Element-wise. ----
@group(0) @binding(1) var<storage, read> bx_x: array<X>;
@group(0) @binding(2) var<storage, read> bx_dy: array<DY>;
@group(0) @binding(3) var<storage, read> bx_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> bx_save_mean: array<f32>;
@group(0) @binding(5) var<storage, read> bx_save_var: array<f32>;
@group(0) @binding(6) var<storage, read> bx_scratch: array<f32>;
@group(0) @binding(7) var<storage, read_write> bx_dx: array<DX>;

// The fused forms bind one more operand at 7 (beta for the PReLU backward; `other`, a gradient, for the
// accumulation) and dx at 8. The PReLU backward binds dz as dy and reads alpha from the scratch tensor.
@group(0) @binding(7) var<storage, read> bx_beta: array<f32>;
@group(0) @binding(7) var<storage, read> bx_other: array<DX>;
@group(0) @binding(8) var<storage, read_write> bx_then_dx: array<DX>;

// dx of element i (channel c) from its dy.
fn dx_of(i: u32, c: u32, dy: f32) -> f32 {
    let invstd = inverseSqrt(bx_save_var[c] + p.eps);
    let tail = 2u * (p.c * p.chunks + c);
    let mean_dy = bx_scratch[tail];
    let mean_dy_xhat = bx_scratch[tail + 1u];
    let xhat = (f32(bx_x[i]) - bx_save_mean[c]) * invstd;
    return bx_gamma[c] * invstd * (dy - mean_dy - xhat * mean_dy_xhat);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        bx_dx[i] = DX(dx_of(i, channel(i), f32(bx_dy[i])));
    }
}

@compute @workgroup_size(WG)
fn batchnorm_prelu_backward_dx(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        let c = channel(i);
        let z = normalized(f32(bx_x[i]), bx_save_mean[c], bx_save_var[c], bx_gamma[c], bx_beta[c]);
        let dz = f32(bx_dy[i]);
        bx_then_dx[i] = DX(dx_of(i, c, select(bx_scratch[alpha_copy(c)] * dz, dz, z > 0.0)));
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_accumulate_dx(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        bx_then_dx[i] = DX(dx_of(i, channel(i), f32(bx_dy[i])) + f32(bx_other[i]));
    }
}
