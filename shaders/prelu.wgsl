// PReLU with one slope per channel over (N, C, HW), as torch.nn.PReLU(C).
// CPU twins: elasticface_core::nn::{prelu_forward, prelu_backward}.
// Params mirrors `PreluParams` in host/src/gpu/kernels/prelu.rs.
//
// Index math. Element (n, c, k) of a (N, C, HW) tensor is at (n*C + c)*HW + k; its channel is (i / HW) % C.
// For the per-channel reduction the channel's N*HW values are numbered j = n*HW + k (memory order of its
// planes) and `channel_index(c, j)` maps j back to the flat index.
//
// dalpha[c] = sum over x <= 0 of x * dy: a deterministic two-level reduction, no atomics.
//   1. `prelu_backward_partials`, grid (chunks, C), chunks = ceil(N*HW / CHUNK): workgroup (q, c) takes the
//      CHUNK = WG * ITEMS consecutive values j = q*CHUNK .. of channel c. Thread t handles j = q*CHUNK + i*WG + t
//      for i = 0..ITEMS: it writes dx for each and sums its x * dy terms in order of i; a fixed binary tree over
//      the threads combines the sums, and thread 0 writes the chunk's partial to scratch[c*chunks + q].
//   2. `prelu_backward_combine`, grid (C): thread t sums partials t, t+WG, ... in that order, the same tree
//      combines them, thread 0 writes dalpha[c].
// The order depends only on the shape, so dalpha is bit-identical run to run; it differs from the core's
// (per-plane sequential sums), so dalpha agrees with the core to rounding. dx and y are exact.
//
// Scratch tensor: C * chunks floats (`Prelu::scratch_len`).
//
// Each entry point has its own bindings, numbered 1.. in the order the host passes its tensors.

struct Params {
    len: u32,     // N*C*HW
    c: u32,       // C
    hw: u32,      // HW
    count: u32,   // N*HW, values per channel
    chunks: u32,  // ceil(count / CHUNK)
}

const WG: u32 = 256u;
const ITEMS: u32 = 8u;
const CHUNK: u32 = WG * ITEMS; // must match PRELU_CHUNK in host/src/gpu/kernels/prelu.rs

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

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

// ---- forward: y = x where x > 0, else alpha[c] * x. Element-wise, grid_1d(len). ----
// (A NaN is not > 0: it takes the alpha branch and stays NaN, as in the core.)
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_alpha: array<f32>;
@group(0) @binding(3) var<storage, read_write> fwd_y: array<f32>;

@compute @workgroup_size(WG)
fn prelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        let v = fwd_x[i];
        let a = fwd_alpha[(i / p.hw) % p.c];
        fwd_y[i] = select(a * v, v, v > 0.0);
    }
}

// ---- backward, step 1: dx for every element, and per-chunk partials of dalpha. Grid (chunks, C). ----
@group(0) @binding(1) var<storage, read> bp_x: array<f32>;
@group(0) @binding(2) var<storage, read> bp_alpha: array<f32>;
@group(0) @binding(3) var<storage, read> bp_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> bp_dx: array<f32>;
@group(0) @binding(5) var<storage, read_write> bp_scratch: array<f32>;

// Flat index of value j (= n*HW + k) of channel c.
fn channel_index(c: u32, j: u32) -> u32 {
    let n = j / p.hw;
    return (n * p.c + c) * p.hw + (j - n * p.hw);
}

@compute @workgroup_size(WG)
fn prelu_backward_partials(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = wid.x;
    let c = wid.y;
    let n_q = min(CHUNK, p.count - q * CHUNK);
    let a = bp_alpha[c];
    var sum = 0.0;
    for (var i = 0u; i < ITEMS; i++) {
        let off = i * WG + t;
        if off < n_q {
            let k = channel_index(c, q * CHUNK + off);
            let v = bp_x[k];
            let g = bp_dy[k];
            if v > 0.0 {
                bp_dx[k] = g;
            } else {
                bp_dx[k] = a * g;
                sum += v * g;
            }
        }
    }
    let s = workgroup_sum(t, sum);
    if t == 0u {
        bp_scratch[c * p.chunks + q] = s;
    }
}

// ---- backward, step 2: dalpha[c] = sum of channel c's partials. Grid (C). ----
@group(0) @binding(1) var<storage, read> bc_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> bc_dalpha: array<f32>;

@compute @workgroup_size(WG)
fn prelu_backward_combine(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = wid.x;
    var sum = 0.0;
    for (var q = t; q < p.chunks; q += WG) {
        sum += bc_scratch[c * p.chunks + q];
    }
    let s = workgroup_sum(t, sum);
    if t == 0u {
        bc_dalpha[c] = s;
    }
}
