// The residual connection and gradient accumulation.
// CPU twins: elasticface_core::nn::{residual_add_forward, accumulate}.
// Params mirrors `ResidualParams` in host/src/gpu/kernels/residual.rs.

struct Params {
    len: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// residual_add_forward: y = a + b, element-wise.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn residual_add_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        y[i] = a[i] + b[i];
    }
}

// accumulate: dst += src, element-wise. Its own bindings: src at 1, dst at 2.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        dst[i] = dst[i] + src[i];
    }
}
