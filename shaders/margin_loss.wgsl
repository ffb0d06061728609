// The margin-penalty softmax head (ArcFace, CosFace, ElasticFace-Arc/Cos and their Plus forms), forward and
// backward, fused over the class dimension so that the (B, C) cosines and logits are never stored whole.
// CPU twins: elasticface_core::margin::{margin_loss_forward, margin_loss_backward} and the functions they call
// (cosine_forward, assign_plus, margin_logits_forward, cross_entropy_forward/backward, margin_logits_backward,
// clamp_backward, cosine_backward). Params mirrors `MarginParams` in host/src/gpu/kernels/margin.rs.
//
// Layouts (row-major): x = the normalised embeddings (B, D); w = the normalised class centres as ROWS, (C, D), split
// by class ranges into parts ("part-local" class = row of a part, global class = part_begin + part-local); labels
// (B) u32; margins (3, B) = [m_b; cos m_b; sin m_b].
//
// Forward (no host round trip, also for the Plus variants):
//   1. margin_loss_forward_partials, per part, workgroup (chunk q, row tile r): the 64 x 64 tile of
//      cos[b, c] = clamp(x[b] . w[c], -1, 1) for rows b = 64 r.., classes c = 64 q.. of the part. Each product is
//      accumulated over k = 0..D in order from 0.0 (the core's cosine_forward order). Writes cos_y[b] where the
//      target class lies in the tile, and for each row the partial log-sum-exp of the NON-target logits s * cos
//      of the chunk: partials[b, chunk] = (max, sum exp(l - max)) (sum = 0 marks an empty chunk). Global chunk index
//      = chunk_offset (of the part) + q; parts hold multiples of 64 classes, so the chunks and hence the partial
//      sums do not depend on how the head is split.
//   2. assign_plus, one workgroup: hands the raw margins to the samples by the rank of cos_y (the core's assign_plus:
//      ranks by cos_y descending, ties by sample index; margins sorted ascending by total order), writes the
//      assigned margins (3, B) and the ranking `order` (B).
//   3. margin_loss_forward_combine, one workgroup per row: the target logit t (Arc: s cos(theta + m) =
//      s (c cos m - sin(theta) sin m) with sin(theta) = sqrt((1 - c)(1 + c)); Cos: s (c - m)) and its derivative dt
//      (Arc: s (sin(theta) cos m + c sin m) / max(sin(theta), sin_floor); Cos: s), the log-sum-exp
//      lse = M + log(sum_q sum_q exp(max_q - M) + exp(t - M)) over the chunks (fixed-order trees), loss_b = lse - t.
//      Writes rows (B, 4) = [lse, t, dt, loss_b]. Then margin_loss_mean, one workgroup: loss[0] = sum_b loss_b / B.
// Backward, per part and per "wave" of at most `wave_len` classes of the part (the host bounds the (B, wave) scratch):
//   4. margin_loss_backward_dcos: recomputes the raw products exactly as pass 1 (same code, same order) and writes
//      dcos[b, c - wave_begin] = dL/d raw_cos: (softmax - onehot) / B, times s (or dt at the target), zero where the
//      raw product was outside [-1, 1] (the clamp's gradient).
//   5. cosine_backward_weight: d_w_unit[c] = sum_b dcos[b, c] x[b] (over b in order), written into the gradient part.
//   6. cosine_backward_emb_partials: d_x_unit partial sums over fixed global class ranges ("splits" of `split`
//      classes): partial[s][b, :] = sum_{c in split s} dcos[b, c] w[c] (over c in order). A split cut by a part or
//      wave boundary is continued by the next dispatch from the stored value, so every split is one sequential
//      sum however the head is split.
//   7. cosine_backward_emb_combine: d_x_unit[b, d] = sum_s partial[s][b, d] (over s in order).
// The L2 normalisation backward of both (shaders/normalize.wgsl) completes the gradients. No atomics; every
// reduction has a fixed order, so reruns are bit-identical, and so are runs with the head split differently.
//
// Tiles (passes 1, 4, 5, 6): 256 threads as 16 x 16 (tx = lid % 16, ty = lid / 16) compute a 64 x 64 output tile,
// thread (tx, ty) the 4 x 4 elements (ty + 16 i, tx + 16 j). The reduction dimension is staged KT = 16 at a time in
// workgroup memory, [KT][65] (one column of padding against bank conflicts).

struct Params {
    batch: u32,        // B
    dim: u32,          // D
    part_begin: u32,   // global class of the part's first row
    part_classes: u32, // classes (rows) in the part
    chunk_offset: u32, // global chunk index of the part's first chunk
    chunks: u32,       // chunks of the whole head (partials per row)
    wave_begin: u32,   // part-local first class of the wave
    wave_len: u32,     // classes in the wave; also the row stride of dcos
    split: u32,        // classes per split of d_x_unit's partial sums
    split_first: u32,  // global index of the first split the dispatch touches (z = 0)
    splits: u32,       // splits of the whole head
    kind: u32,         // 0: Arc, 1: Cos
    plus: u32,         // 0: none, 1: paper, 2: released code
    s: f32,            // scale
    inv_batch: f32,    // 1 / B
    sin_floor: f32,    // ARC_SIN_THETA_FLOOR
}

const TILE: u32 = 64u;
const KT: u32 = 16u;
const STRIDE: u32 = 65u; // TILE + 1
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> a_tile: array<f32, 1040>; // [KT][STRIDE]
var<workgroup> b_tile: array<f32, 1040>; // [KT][STRIDE]
var<workgroup> logit_tile: array<f32, 4160>; // [TILE][STRIDE]
var<workgroup> partial: array<f32, WG>;

// Shared by passes 1 and 4 (bindings 1, 2, 3), and x/w by passes 5 and 6.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;

// Raw products x[row0 + ty + 16 i] . w[class0 + tx + 16 j] (part-local classes), i, j < 4, accumulated over
// k = 0..D in order from 0.0. Rows and classes outside the shape give 0. Element (i, j) is at 4 i + j.
fn cos_tile(row0: u32, class0: u32, lid: u32) -> array<f32, 16> {
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.dim; k0 += KT) {
        // Stage x[row0.., k0..] and w[class0.., k0..]: 64 x 16 each, 4 per thread, k fastest (coalesced).
        for (var e = lid; e < TILE * KT; e += WG) {
            let m = e / KT;
            let kk = e % KT;
            let k = k0 + kk;
            var xv = 0.0;
            if row0 + m < p.batch && k < p.dim {
                xv = x[(row0 + m) * p.dim + k];
            }
            a_tile[kk * STRIDE + m] = xv;
            var wv = 0.0;
            if class0 + m < p.part_classes && k < p.dim {
                wv = w[(class0 + m) * p.dim + k];
            }
            b_tile[kk * STRIDE + m] = wv;
        }
        workgroupBarrier();
        let kn = min(KT, p.dim - k0);
        for (var kk = 0u; kk < kn; kk++) {
            for (var i = 0u; i < 4u; i++) {
                let a = a_tile[kk * STRIDE + ty + 16u * i];
                for (var j = 0u; j < 4u; j++) {
                    acc[4u * i + j] = acc[4u * i + j] + a * b_tile[kk * STRIDE + tx + 16u * j];
                }
            }
        }
        workgroupBarrier();
    }
    return acc;
}

// Fixed-tree sum of every thread's `value`, returned to every thread.
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

// ---- 1. margin_loss_forward_partials: bindings x 1, w 2, labels 3, cos_y 4, partials 5 (B, chunks, 2).
// Grid: (chunks of the part, row tiles).
@group(0) @binding(4) var<storage, read_write> cos_y: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(WG)
fn margin_loss_forward_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let class0 = wid.x * TILE;
    let row0 = wid.y * TILE;
    let raw = cos_tile(row0, class0, lid);
    let tx = lid % 16u;
    let ty = lid / 16u;
    for (var i = 0u; i < 4u; i++) {
        let r = ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let c = tx + 16u * j;
            let cosine = clamp(raw[4u * i + j], -1.0, 1.0);
            logit_tile[r * STRIDE + c] = p.s * cosine;
            if row0 + r < p.batch && class0 + c < p.part_classes {
                if p.part_begin + class0 + c == labels[row0 + r] {
                    cos_y[row0 + r] = cosine;
                }
            }
        }
    }
    workgroupBarrier();
    // One thread per row: max, then sum of exp over the chunk's valid non-target classes, in class order.
    let row = row0 + lid;
    if lid < TILE && row < p.batch {
        let label = labels[row];
        let n = min(TILE, p.part_classes - class0);
        var found = false;
        var mx = 0.0;
        for (var c = 0u; c < n; c++) {
            let l = logit_tile[lid * STRIDE + c];
            if p.part_begin + class0 + c != label && (!found || l > mx) {
                mx = l;
                found = true;
            }
        }
        var sum = 0.0;
        for (var c = 0u; c < n; c++) {
            if p.part_begin + class0 + c != label {
                sum += exp(logit_tile[lid * STRIDE + c] - mx);
            }
        }
        let at = (row * p.chunks + p.chunk_offset + wid.x) * 2u;
        partials[at] = mx;
        partials[at + 1u] = sum;
    }
}

// ---- 2. assign_plus: bindings cos_y (read) 1, margins_raw (read, (3, B)) 2, margins 3 ((3, B)), order 4 (B),
// sorted 5 (B, scratch: sorted[k] = the sample whose raw margin is the k-th smallest). One workgroup.
@group(0) @binding(1) var<storage, read> plus_cos_y: array<f32>;
@group(0) @binding(2) var<storage, read> margins_raw: array<f32>;
@group(0) @binding(3) var<storage, read_write> margins_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> order: array<u32>;
@group(0) @binding(5) var<storage, read_write> sorted: array<u32>;

// The key of f32::total_cmp: integers ordered as the floats' total order.
fn total_key(v: f32) -> i32 {
    let b = bitcast<i32>(v);
    return b ^ i32(u32(b >> 31u) >> 1u);
}

fn copy_margin(dst: u32, src: u32) {
    let n = p.batch;
    margins_out[dst] = margins_raw[src];
    margins_out[n + dst] = margins_raw[n + src];
    margins_out[2u * n + dst] = margins_raw[2u * n + src];
}

@compute @workgroup_size(WG)
fn assign_plus(@builtin(local_invocation_index) lid: u32) {
    let n = p.batch;
    if p.plus == 0u {
        for (var i = lid; i < n; i += WG) {
            order[i] = i;
            copy_margin(i, i);
        }
        return;
    }
    for (var i = lid; i < n; i += WG) {
        // Position of sample i in the ranking: samples with a larger cos_y, or an equal one and a smaller index,
        // come first (-0.0 and 0.0 are equal, as in the core).
        let ci = plus_cos_y[i];
        var rank = 0u;
        for (var j = 0u; j < n; j++) {
            let cj = plus_cos_y[j];
            if cj > ci || (cj == ci && j < i) {
                rank++;
            }
        }
        order[rank] = i;
        // Position of margin i in ascending total order (equal keys are equal values: their order is immaterial).
        let ki = total_key(margins_raw[i]);
        var pos = 0u;
        for (var j = 0u; j < n; j++) {
            let kj = total_key(margins_raw[j]);
            if kj < ki || (kj == ki && j < i) {
                pos++;
            }
        }
        sorted[pos] = i;
    }
    storageBarrier();
    for (var i = lid; i < n; i += WG) {
        if p.plus == 1u {
            // Paper: sample order[k] gets the k-th smallest margin.
            copy_margin(order[i], sorted[i]);
        } else {
            // Released code: sample i gets the order[i]-th smallest margin.
            copy_margin(i, sorted[order[i]]);
        }
    }
}

// ---- 3a. margin_loss_forward_combine: bindings cos_y (read) 1, margins (read, assigned) 2, partials (read) 3,
// rows 4 ((B, 4): lse, target logit, its derivative, loss). One workgroup per row b = wid.y * nwg.x + wid.x: thread
// t takes the chunks t, t + WG, ... (max, then sum of sum_q exp(max_q - M)), and fixed trees combine the threads.
@group(0) @binding(1) var<storage, read> combine_cos_y: array<f32>;
@group(0) @binding(2) var<storage, read> margins: array<f32>;
@group(0) @binding(3) var<storage, read> all_partials: array<f32>;
@group(0) @binding(4) var<storage, read_write> rows: array<f32>;

// Fixed-tree maximum of every thread's `value`, returned to every thread.
fn tree_max(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        if lid < width {
            partial[lid] = max(partial[lid], partial[lid + width]);
        }
        workgroupBarrier();
    }
    let m = partial[0];
    workgroupBarrier(); // every thread has read the result before `partial` is reused
    return m;
}

@compute @workgroup_size(WG)
fn margin_loss_forward_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = p.batch;
    let b = wid.y * nwg.x + wid.x;
    if b >= n {
        return;
    }
    let c = combine_cos_y[b];
    var t: f32;
    var dt: f32;
    if p.kind == 0u {
        let cos_m = margins[n + b];
        let sin_m = margins[2u * n + b];
        let sin_theta = sqrt((1.0 - c) * (1.0 + c));
        t = p.s * (c * cos_m - sin_theta * sin_m);
        dt = p.s * (sin_theta * cos_m + c * sin_m) / max(sin_theta, p.sin_floor);
    } else {
        t = p.s * (c - margins[b]);
        dt = p.s;
    }
    // Chunks with sum = 0 hold no class (only the target): skipped.
    var mx = t;
    for (var q = lid; q < p.chunks; q += WG) {
        let at = (b * p.chunks + q) * 2u;
        if all_partials[at + 1u] > 0.0 {
            mx = max(mx, all_partials[at]);
        }
    }
    let top = tree_max(lid, mx);
    var sum = 0.0;
    for (var q = lid; q < p.chunks; q += WG) {
        let at = (b * p.chunks + q) * 2u;
        let part_sum = all_partials[at + 1u];
        if part_sum > 0.0 {
            sum += part_sum * exp(all_partials[at] - top);
        }
    }
    let lse = top + log(tree_sum(lid, sum) + exp(t - top));
    if lid == 0u {
        rows[4u * b] = lse;
        rows[4u * b + 1u] = t;
        rows[4u * b + 2u] = dt;
        rows[4u * b + 3u] = lse - t;
    }
}

// ---- 3b. margin_loss_mean: bindings rows (read) 1, loss 2 (1). One workgroup: loss = sum_b loss_b / B (thread t
// sums rows t, t + WG, ... in order, then the fixed tree).
@group(0) @binding(1) var<storage, read> mean_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;

@compute @workgroup_size(WG)
fn margin_loss_mean(@builtin(local_invocation_index) lid: u32) {
    var local_loss = 0.0;
    for (var b = lid; b < p.batch; b += WG) {
        local_loss += mean_rows[4u * b + 3u];
    }
    let total = tree_sum(lid, local_loss);
    if lid == 0u {
        loss[0] = total * p.inv_batch;
    }
}

// ---- 4. margin_loss_backward_dcos: bindings x 1, w 2, labels 3, rows (read) 4, dcos 5 ((B, wave_len)).
// Grid: (class tiles of the wave, row tiles).
@group(0) @binding(4) var<storage, read> row_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> dcos: array<f32>;

@compute @workgroup_size(WG)
fn margin_loss_backward_dcos(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let class0 = p.wave_begin + wid.x * TILE;
    let row0 = wid.y * TILE;
    let raw = cos_tile(row0, class0, lid);
    let tx = lid % 16u;
    let ty = lid / 16u;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let wl = wid.x * TILE + tx + 16u * j; // wave-local class
            if row < p.batch && wl < p.wave_len {
                let r = raw[4u * i + j];
                let lse = row_stats[4u * row];
                var g: f32;
                if p.part_begin + class0 + tx + 16u * j == labels[row] {
                    let dlogit = (exp(row_stats[4u * row + 1u] - lse) - 1.0) * p.inv_batch;
                    g = dlogit * row_stats[4u * row + 2u];
                } else {
                    let dlogit = exp(p.s * clamp(r, -1.0, 1.0) - lse) * p.inv_batch;
                    g = p.s * dlogit;
                }
                if r > 1.0 || r < -1.0 {
                    g = 0.0;
                }
                dcos[row * p.wave_len + wl] = g;
            }
        }
    }
}

// ---- 5. cosine_backward_weight: bindings x 1, dcos (read) 2, d_w 3 (the gradient part, (part_classes, D)).
// d_w[wave_begin + m, n] = sum_{b < B} dcos[b, m] x[b, n]. Grid: (D / 64, wave_len / 64).
@group(0) @binding(2) var<storage, read> dcos_by_class: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_w: array<f32>;

@compute @workgroup_size(WG)
fn cosine_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n0 = wid.x * TILE; // dimension
    let m0 = wid.y * TILE; // wave-local class
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.batch; k0 += KT) {
        // Stage dcos[k0.., m0..] and x[k0.., n0..]: 16 x 64 each, the 64 fastest (coalesced).
        for (var e = lid; e < TILE * KT; e += WG) {
            let m = e % TILE;
            let kk = e / TILE;
            let k = k0 + kk;
            var av = 0.0;
            if k < p.batch && m0 + m < p.wave_len {
                av = dcos_by_class[k * p.wave_len + m0 + m];
            }
            a_tile[kk * STRIDE + m] = av;
            var bv = 0.0;
            if k < p.batch && n0 + m < p.dim {
                bv = x[k * p.dim + n0 + m];
            }
            b_tile[kk * STRIDE + m] = bv;
        }
        workgroupBarrier();
        let kn = min(KT, p.batch - k0);
        for (var kk = 0u; kk < kn; kk++) {
            for (var i = 0u; i < 4u; i++) {
                let a = a_tile[kk * STRIDE + ty + 16u * i];
                for (var j = 0u; j < 4u; j++) {
                    acc[4u * i + j] = acc[4u * i + j] + a * b_tile[kk * STRIDE + tx + 16u * j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if m < p.wave_len && n < p.dim {
                d_w[(p.wave_begin + m) * p.dim + n] = acc[4u * i + j];
            }
        }
    }
}

// ---- 6. cosine_backward_emb_partials: bindings dcos (read) 1, w 2, emb_partials 3 ((splits, B, D)).
// For split s = split_first + z: the wave-local classes [lo, hi) of s in this wave;
// emb_partials[s, m, n] (+)= sum_{c in [lo, hi)} dcos[m, c] w[wave_begin + c, n], continuing the stored value when
// the split began in an earlier wave. Grid: (D / 64, B / 64, splits touched).
@group(0) @binding(1) var<storage, read> dcos_by_row: array<f32>;
@group(0) @binding(3) var<storage, read_write> emb_partials: array<f32>;

@compute @workgroup_size(WG)
fn cosine_backward_emb_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n0 = wid.x * TILE; // dimension
    let m0 = wid.y * TILE; // row
    let tx = lid % 16u;
    let ty = lid / 16u;
    let wave_global = p.part_begin + p.wave_begin;
    let split = p.split_first + wid.z;
    let lo = max(split * p.split, wave_global) - wave_global;
    let hi = min((split + 1u) * p.split, wave_global + p.wave_len) - wave_global;
    let continued = split * p.split < wave_global;
    let base = split * p.batch * p.dim;
    var acc: array<f32, 16>;
    if continued {
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                let m = m0 + ty + 16u * i;
                let n = n0 + tx + 16u * j;
                if m < p.batch && n < p.dim {
                    acc[4u * i + j] = emb_partials[base + m * p.dim + n];
                }
            }
        }
    }
    for (var k0 = lo; k0 < hi; k0 += KT) {
        // Stage dcos[m0.., k0..] (k fastest) and w[wave_begin + k0.., n0..] (n fastest).
        for (var e = lid; e < TILE * KT; e += WG) {
            let am = e / KT;
            let ak = e % KT;
            var av = 0.0;
            if m0 + am < p.batch && k0 + ak < hi {
                av = dcos_by_row[(m0 + am) * p.wave_len + k0 + ak];
            }
            a_tile[ak * STRIDE + am] = av;
            let bn = e % TILE;
            let bk = e / TILE;
            var bv = 0.0;
            if k0 + bk < hi && n0 + bn < p.dim {
                bv = w[(p.wave_begin + k0 + bk) * p.dim + n0 + bn];
            }
            b_tile[bk * STRIDE + bn] = bv;
        }
        workgroupBarrier();
        let kn = min(KT, hi - k0);
        for (var kk = 0u; kk < kn; kk++) {
            for (var i = 0u; i < 4u; i++) {
                let a = a_tile[kk * STRIDE + ty + 16u * i];
                for (var j = 0u; j < 4u; j++) {
                    acc[4u * i + j] = acc[4u * i + j] + a * b_tile[kk * STRIDE + tx + 16u * j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if m < p.batch && n < p.dim {
                emb_partials[base + m * p.dim + n] = acc[4u * i + j];
            }
        }
    }
}

// ---- 7. cosine_backward_emb_combine: bindings emb_partials (read) 1, d_x 2 ((B, D)).
// d_x[i] = sum_{s < splits} emb_partials[s, i], in order.
@group(0) @binding(1) var<storage, read> partial_sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> d_x: array<f32>;

@compute @workgroup_size(WG)
fn cosine_backward_emb_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    let len = p.batch * p.dim;
    if i < len {
        var acc = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            acc += partial_sums[s * len + i];
        }
        d_x[i] = acc;
    }
}
