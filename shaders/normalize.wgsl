// L2 normalisation of a set of vectors and its backward pass.
// CPU twins: elasticface_core::nn::{l2_normalize_forward, l2_normalize_backward}.
// Params mirrors `NormalizeParams` in host/src/gpu/kernels/normalize.rs.
//
// Layout (as the core's `VectorLayout`): `count` vectors of `len` elements; element k of vector i is at
// `i * vector_stride + k * element_stride`. Rows of an (N, D) matrix: strides (D, 1); columns of a (D, C) matrix:
// strides (1, C). The GPU keeps the head's class centres as rows of (C, D), so the hot path is the row layout.
//
// One workgroup of WG threads per vector; vector i = wid.y * nwg.x + wid.x (the host folds more than 65,535 vectors
// into two grid dimensions). Thread t sums the elements k = t, t + WG, t + 2 WG, ... in that order, then the WG
// partial sums are added by a fixed binary tree in workgroup memory: the result does not depend on scheduling, so
// reruns are bit-identical. (The core sums k = 0..len in order: the two differ by rounding only.)
//
//   forward:   norms[i] = sqrt(sum_k x[i,k]^2);  y[i,k] = x[i,k] / norms[i]
//   backward:  dot = sum_k y[i,k] grad[i,k];     grad[i,k] = (grad[i,k] - y[i,k] dot) / norms[i]   (in place)
//
// A zero vector divides by zero (inf/NaN): the core reports it as an error, the GPU does not check (the trainer
// checks that the loss is finite).

struct Params {
    count: u32,
    len: u32,
    vector_stride: u32,
    element_stride: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> partial: array<f32, WG>;

fn at(i: u32, k: u32) -> u32 {
    return i * p.vector_stride + k * p.element_stride;
}

// Adds partial[0..WG] by a fixed tree and returns the sum to every thread. Workgroup-uniform control flow only.
fn tree_sum(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        if lid < width {
            partial[lid] = partial[lid] + partial[lid + width];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// l2_normalize_forward: bindings x (read) 1, y 2, norms 3.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;

@compute @workgroup_size(WG)
fn l2_normalize_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wid.y * nwg.x + wid.x;
    if i >= p.count {
        return;
    }
    var ss = 0.0;
    for (var k = lid; k < p.len; k += WG) {
        let v = x[at(i, k)];
        ss += v * v;
    }
    let norm = sqrt(tree_sum(lid, ss));
    if lid == 0u {
        norms[i] = norm;
    }
    for (var k = lid; k < p.len; k += WG) {
        let j = at(i, k);
        y[j] = x[j] / norm;
    }
}

// l2_normalize_backward, in place on grad: bindings y (read) 1, norms (read) 2, grad 3. Each thread rewrites only the
// elements it read, so no element is overwritten before every thread has used it.
@group(0) @binding(1) var<storage, read> unit: array<f32>;
@group(0) @binding(2) var<storage, read> unit_norms: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(WG)
fn l2_normalize_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wid.y * nwg.x + wid.x;
    if i >= p.count {
        return;
    }
    var d = 0.0;
    for (var k = lid; k < p.len; k += WG) {
        let j = at(i, k);
        d += unit[j] * grad[j];
    }
    let dot = tree_sum(lid, d);
    let norm = unit_norms[i];
    for (var k = lid; k < p.len; k += WG) {
        let j = at(i, k);
        grad[j] = (grad[j] - unit[j] * dot) / norm;
    }
}
