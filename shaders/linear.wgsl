// The bias parts of the fully connected layer; its matrix products are conv2d.wgsl's kernels run as a 1x1
// convolution on (N, IN, 1, 1) (host/src/gpu/kernels/linear.rs).
// CPU twins: elasticface_core::nn::{linear_forward, linear_backward} (their bias terms).
// Params mirrors `LinearParams` in host/src/gpu/kernels/linear.rs.

struct Params {
    // Batch size N.
    n: u32,
    // Output features OUT.
    outputs: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// linear_forward_bias: y[n, o] += bias[o], after y = x weight^T. bias (OUT), y (N, OUT).
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn linear_forward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.n * p.outputs {
        y[i] = y[i] + bias[i % p.outputs];
    }
}

// linear_backward_bias: dbias[o] = sum over n = 0, 1, ... of dy[n, o], in that order (the core's order, so the
// result is bit-identical to it). dy (N, OUT), dbias (OUT). One invocation per output feature; neighbouring
// invocations read neighbouring elements of each row.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbias: array<f32>;

@compute @workgroup_size(WG)
fn linear_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.y * nwg.x * WG + gid.x;
    if o < p.outputs {
        var s = 0.0;
        for (var n = 0u; n < p.n; n++) {
            s += dy[n * p.outputs + o];
        }
        dbias[o] = s;
    }
}
