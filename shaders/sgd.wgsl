// SGD with momentum and weight decay, and global gradient-norm clipping.
// CPU twins: elasticface_core::nn::{sgd_step, sum_of_squares, clip_coefficient, scale, accumulate_gradient}.
// Params mirrors `SgdParams` in host/src/gpu/kernels/sgd.rs.
//
// sgd_step (element-wise, same operations in the same order as the core):
//   d = g + wd * p;  buf = momentum * buf + d;  p = p - lr * buf
// The hyper-parameters (lr, momentum, weight_decay) are read from a small storage tensor shared by every tensor's
// dispatch, so the host changes the learning rate of the whole model with one queue write.
//
// Clipping a set of tensors to a global norm, with no read-back (three kernels):
//   1. sum_of_squares, once per tensor: block b of BLOCK = WG * PER_THREAD elements is reduced by one workgroup
//      (thread t sums elements b BLOCK + t + WG j, j = 0..PER_THREAD, in order; then a fixed tree over the WG
//      threads) into partials[offset + b]. The host gives each tensor its own range of partials.
//   2. clip_coefficient, one workgroup: total = sum of partials[0..count] (thread t sums t, t + WG, ... in order, then
//      the fixed tree); norm = sqrt(total); coefficient = min(1, max_norm / (norm + 1e-6)), or 1 where the norm is
//      not finite (as the core: the step is refused, and a NaN factor would turn the zero gaps of packed gradient
//      buffers into NaN for good). Writes clip = [total, norm, coefficient].
//   3. scale, once per tensor: x *= factor[factor_index] (the coefficient).
//
// Gradient accumulation over N micro-batches (accumulate_gradient, element-wise, the core's arithmetic): stage 0
// (the first) sum = g; stage 1 (the next) sum = sum + g; stage 2 (the last) g = (sum + g) * factor[factor_index]
// (1 / N), the mean, where clipping and the update read it.
// Every sum runs in a fixed order: reruns are bit-identical. The sums are f32 (the core accumulates in f64): the
// relative error of the norm is of the order of 1e-6.
//
// The training step's guard against NaN and infinities, also without a read-back inside the step:
//   4. step_report, one thread: flags = 1 if the loss is not finite, | 2 if the backbone's sum of squares (the clip
//      tensor's total) is not, | 4 if the head gradient's is not; writes report = [flags, loss, backbone norm,
//      head norm]. A NaN or infinity anywhere in a gradient makes its sum of squares non-finite; so does a sum that
//      overflows f32 (gradients beyond ~1e19), which the guard also refuses.
//   5. sgd_step_guarded, per tensor: sgd_step where report[0] == 0, nothing otherwise: parameters and momentum
//      keep their bits. The host reads the 16-byte report once per step.

struct Params {
    // Elements of the tensor (sgd_step, sum_of_squares, scale).
    len: u32,
    // sum_of_squares: index of the tensor's first partial.
    offset: u32,
    // clip_coefficient: number of partials.
    count: u32,
    // scale: index of the factor in its tensor.
    factor_index: u32,
    // clip_coefficient: the largest norm allowed.
    max_norm: f32,
    // accumulate_gradient: 0 first, 1 next, 2 last.
    stage: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
const BLOCK: u32 = WG * PER_THREAD;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> partial: array<f32, WG>;

// Adds `value` of every thread by a fixed tree and returns the sum to every thread.
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

// sgd_step: bindings hyper (read: lr, momentum, weight_decay) 1, grad (read) 2, param 3, momentum_buf 4.
@group(0) @binding(1) var<storage, read> hyper: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> momentum_buf: array<f32>;

// The update of element i (i < p.len).
fn sgd_update(i: u32) {
    let lr = hyper[0];
    let momentum = hyper[1];
    let weight_decay = hyper[2];
    let w = param[i];
    let d = grad[i] + weight_decay * w;
    let b = momentum * momentum_buf[i] + d;
    momentum_buf[i] = b;
    param[i] = w - lr * b;
}

@compute @workgroup_size(WG)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        sgd_update(i);
    }
}

// sgd_step_guarded: bindings as sgd_step, plus the step report (read) 5, whose flags (element 0) must be 0.
@group(0) @binding(5) var<storage, read> step_flags: array<f32>;

@compute @workgroup_size(WG)
fn sgd_step_guarded(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len && step_flags[0] == 0.0 {
        sgd_update(i);
    }
}

// sum_of_squares: bindings x (read) 1, partials 2. Workgroup b (folded into two grid dimensions) reduces block b.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(WG)
fn sum_of_squares(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wid.y * nwg.x + wid.x;
    let blocks = max((p.len + BLOCK - 1u) / BLOCK, 1u);
    if block >= blocks {
        return;
    }
    var ss = 0.0;
    for (var j = 0u; j < PER_THREAD; j++) {
        let i = block * BLOCK + j * WG + lid;
        if i < p.len {
            let v = x[i];
            ss += v * v;
        }
    }
    let total = tree_sum(lid, ss);
    if lid == 0u {
        partials[p.offset + block] = total;
    }
}

// clip_coefficient: bindings partials (read) 1, clip 2 (written: total, norm, coefficient). One workgroup.
@group(0) @binding(1) var<storage, read> all_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> clip: array<f32>;

@compute @workgroup_size(WG)
fn clip_coefficient(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.count; i += WG) {
        s += all_partials[i];
    }
    let total = tree_sum(lid, s);
    if lid == 0u {
        let norm = sqrt(total);
        var coefficient = p.max_norm / (norm + 1e-6);
        // A non-finite total is what step_report refuses the step for (`non_finite` tests the bits).
        if coefficient > 1.0 || non_finite(total) {
            coefficient = 1.0;
        }
        clip[0] = total;
        clip[1] = norm;
        clip[2] = coefficient;
    }
}

// scale: bindings factor (read) 1, x 2: x *= factor[factor_index].
@group(0) @binding(1) var<storage, read> factor: array<f32>;
@group(0) @binding(2) var<storage, read_write> scaled: array<f32>;

@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        scaled[i] = scaled[i] * factor[p.factor_index];
    }
}

// accumulate_gradient: bindings factor (read) 1, sum 2, grad 3.
@group(0) @binding(2) var<storage, read_write> grad_sum: array<f32>;
@group(0) @binding(3) var<storage, read_write> micro_grad: array<f32>;

@compute @workgroup_size(WG)
fn accumulate_gradient(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        if p.stage == 0u {
            grad_sum[i] = micro_grad[i];
        } else if p.stage == 1u {
            grad_sum[i] = grad_sum[i] + micro_grad[i];
        } else {
            micro_grad[i] = (grad_sum[i] + micro_grad[i]) * factor[p.factor_index];
        }
    }
}

// step_report: bindings loss (read, element 0) 1, backbone clip (read) 2, head clip (read) 3, report 4. One thread.
@group(0) @binding(1) var<storage, read> step_loss: array<f32>;
@group(0) @binding(2) var<storage, read> backbone_clip: array<f32>;
@group(0) @binding(3) var<storage, read> head_clip: array<f32>;
@group(0) @binding(4) var<storage, read_write> report: array<f32>;

// Whether v is NaN or an infinity: all exponent bits set. (Tested on the bits: a compiler may assume that floats
// are finite and fold comparisons such as `v != v`.)
fn non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(1)
fn step_report() {
    _ = p.len; // binds the shared Params (unused here), as every dispatch has them at binding 0
    let loss = step_loss[0];
    var flags = 0u;
    if non_finite(loss) {
        flags = flags | 1u;
    }
    if non_finite(backbone_clip[0]) {
        flags = flags | 2u;
    }
    if non_finite(head_clip[0]) {
        flags = flags | 4u;
    }
    report[0] = f32(flags);
    report[1] = loss;
    report[2] = backbone_clip[1];
    report[3] = head_clip[1];
}
