//! `shaders/margin_loss.wgsl`: the margin-penalty softmax head (ArcFace, CosFace, ElasticFace-Arc/Cos and their
//! Plus forms), forward and backward, fused over the class dimension.
//! CPU twins: [`elasticface_core::margin::margin_loss_forward`], [`elasticface_core::margin::margin_loss_backward`].
//!
//! # Layout
//!
//! The core keeps the class centres as the columns of `w (D, C)`. The GPU keeps them as the ROWS of `(C, D)`: each
//! class is contiguous, so the head splits by class ranges into several bindings ([`SplitTensor`], parts of whole
//! multiples of [`CLASS_TILE`] classes within the binding limit), and the cosine tiles read both operands along
//! `D`. [`upload_head_weight`] and [`download_head_weight`] convert from and to the core's `(D, C)`; the gradient
//! `d_w` and the momentum buffer of the head share the GPU layout and the split, so SGD runs part by part with no
//! conversion. Only checkpoints convert.
//!
//! # One training step
//!
//! ```text
//! once:      let k = MarginLoss::new(gpu);
//!            let w = upload_head_weight(gpu, "head.weight", D, C, &w_dc)?;        // (C, D), split
//!            let d_w = gpu.zeros_split_like("head.weight.grad", &w, D)?;            // also the momentum
//!            let head = MarginHead::new(gpu, &k, &cfg, shape, &emb, &w, &d_emb, &d_w, &HeadOptions::default())?;
//! per step:  cfg.draw_margins_at(seed, step, &mut margins_raw);                    // B values, host
//!            head.write_step(gpu, &labels, &margins_raw)?;                          // two small queue writes
//!            record backbone forward (writes emb (B, D)), then head.forward(), head.backward()
//!            (writes d_emb (B, D) and d_w), then the backbone backward and the optimiser; submit.
//!            head.read_loss(gpu)? whenever the loss is wanted.
//! ```
//!
//! There is no host round trip inside the step, also for the Plus variants: the forward pass writes each sample's
//! `cos_y` (the clamped `f32` cosine to its own centre, `MarginHead::cos_y`), and a one-workgroup kernel ranks it and
//! hands out the raw margins exactly as the core's `assign_plus` does (a permutation decided by comparisons only, so
//! the same result bit for bit given the same `cos_y`; the ranking is left in `MarginHead::order`). The host
//! uploads the raw margins with their cosines and sines, computed in `f64` ([`margin_table`]), because WGSL's `sin`
//! and `cos` may be as coarse as `2^-11` absolute.
//!
//! # Passes
//!
//! See the comment atop the shader: (1) per part, per 64-class chunk: cosine tile, `cos_y`, partial log-sum-exp of
//! the non-target logits; (2) the Plus assignment; (3) per row: target logit `s cos(theta + m)` =
//! `s (c cos m - sin(theta) sin m)` (or `s (c - m)`), log-sum-exp, loss; then the mean loss. Backward, per "wave" of
//! classes: (4) `dcos` recomputed from the cosines, (5) `d_w_unit`, (6) partial sums of `d_emb_unit` over fixed
//! class ranges, then (7) their sum, and the normalisation backward of both. Every sum has a fixed order: reruns are
//! bit-identical, and so are runs with the head split at other class boundaries (parts hold multiples of 64
//! classes). Dispatches per step: `4 + 2 parts` forward (with the normalisations), `3 waves + 2 + parts` backward.
//!
//! Limits: a part or a wave holds at most 65,535 chunks of 64 classes (4.19 M classes; the grid's dimension limit);
//! the forward tile needs 25 KB of workgroup memory (lavapipe, Metal, DX12: 32 KiB; the H200: 48 KiB).
//!
//! # Precision
//!
//! The cosines are the core's operations in the core's order (products accumulated over `k = 0..D` from 0), but the
//! normalisation sums in another order, so the unit vectors differ by rounding. The target logit and its derivative
//! are `f32` formulas equivalent to the core's `f64` ones; the log-sum-exp and softmax are `f32` (the core: `f64`).
//! The tests state the tolerances.

use anyhow::{bail, Result};
use elasticface_core::margin::{HeadShape, MarginConfig, MarginKind, PlusAssignment, ARC_SIN_THETA_FLOOR};
use elasticface_core::nn::VectorLayout;

use super::normalize::Normalize;
use super::{check_f32, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, SplitTensor, Tensor};

/// Classes per chunk of the forward pass (`TILE` in the shader). Every part of the head weight but the last holds a
/// multiple of it, so the chunks (and the loss, bit for bit) do not depend on the split.
pub const CLASS_TILE: usize = 64;

/// Elements per row of `MarginHead::row_stats`: `[lse, target logit, its derivative, loss]`.
pub const ROW_STATS: usize = 4;

/// Mirrors `Params` in `shaders/margin_loss.wgsl` (one struct for every entry point; each reads the fields it needs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MarginParams {
    /// `B`.
    pub batch: u32,
    /// `D`.
    pub dim: u32,
    /// Global class of the part's first row.
    pub part_begin: u32,
    /// Classes (rows) in the part.
    pub part_classes: u32,
    /// Global index of the part's first chunk.
    pub chunk_offset: u32,
    /// Chunks of the whole head.
    pub chunks: u32,
    /// Part-local first class of the wave.
    pub wave_begin: u32,
    /// Classes in the wave (the row stride of `dcos`).
    pub wave_len: u32,
    /// Classes per split of `d_emb_unit`'s partial sums.
    pub split: u32,
    /// Global index of the first split the dispatch touches.
    pub split_first: u32,
    /// Splits of the whole head.
    pub splits: u32,
    /// 0: Arc, 1: Cos.
    pub kind: u32,
    /// 0: none, 1: paper, 2: released code.
    pub plus: u32,
    /// Scale `s`.
    pub s: f32,
    /// `1 / B`.
    pub inv_batch: f32,
    /// [`ARC_SIN_THETA_FLOOR`].
    pub sin_floor: f32,
}

/// Memory bounds of the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadOptions {
    /// Bytes allowed for each of the two backward scratch tensors (also capped by the binding limit): `dcos (B,
    /// wave)`, which sets the classes per wave, and the partial sums of `d_emb_unit (splits, B, D)`.
    pub scratch_bytes: u64,
    /// Classes per partial sum of `d_emb_unit`; doubled until the partial sums fit `scratch_bytes`. Smaller splits
    /// give more parallel work, larger ones less scratch.
    pub split_classes: usize,
}

impl Default for HeadOptions {
    /// 64 MiB of scratch each (B = 128: one wave up to 131,072 classes), splits of 1,024 classes.
    fn default() -> Self {
        Self { scratch_bytes: 64 << 20, split_classes: 1024 }
    }
}

/// A range of classes of one part that the backward pass processes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wave {
    /// Part index.
    pub part: usize,
    /// First class, part-local.
    pub begin: usize,
    /// Classes.
    pub len: usize,
}

/// `data (rows, cols)` row-major, transposed to `(cols, rows)`.
pub fn transpose(rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    assert_eq!(data.len(), rows * cols, "transpose: {} elements for ({rows}, {cols})", data.len());
    let mut out = vec![0.0; data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Uploads class centres given in the core's layout `w (D, C)` (one centre per column) as the GPU's `(C, D)` rows,
/// split into parts of multiples of [`CLASS_TILE`] classes within the binding limit.
pub fn upload_head_weight(gpu: &Gpu, label: &str, dim: usize, classes: usize, w: &[f32]) -> Result<SplitTensor> {
    if w.len() != dim * classes {
        bail!("{label}: {} elements for (D, C) = ({dim}, {classes})", w.len());
    }
    gpu.upload_split(label, classes, dim, CLASS_TILE, &transpose(dim, classes, w))
}

/// Reads GPU class centres `(C, D)` back in the core's layout `(D, C)` (waits for the GPU). Also for the head's
/// gradient and momentum, which share the layout.
pub fn download_head_weight(gpu: &Gpu, w: &SplitTensor) -> Result<Vec<f32>> {
    Ok(transpose(w.rows, w.cols, &gpu.read_split::<f32>(w)?))
}

/// The `(3, B)` margin table the GPU reads: the margins, their cosines and their sines, computed in `f64` and
/// rounded once.
pub fn margin_table(margins: &[f32]) -> Vec<f32> {
    let mut t = margins.to_vec();
    t.extend(margins.iter().map(|&m| f64::from(m).cos() as f32));
    t.extend(margins.iter().map(|&m| f64::from(m).sin() as f32));
    t
}

/// The margin head's pipelines (and the normalisation's).
pub struct MarginLoss {
    forward_partials: wgpu::ComputePipeline,
    assign_plus: wgpu::ComputePipeline,
    forward_combine: wgpu::ComputePipeline,
    mean: wgpu::ComputePipeline,
    backward_dcos: wgpu::ComputePipeline,
    backward_weight: wgpu::ComputePipeline,
    backward_emb_partials: wgpu::ComputePipeline,
    backward_emb_combine: wgpu::ComputePipeline,
    normalize: Normalize,
}

impl MarginLoss {
    /// Compiles the kernels. The cosine tiles use 25 KB of workgroup memory (lavapipe: 32 KiB).
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("margin_loss.wgsl", include_str!("../../../../shaders/margin_loss.wgsl"));
        let p = |entry: &str| gpu.pipeline(entry, &m, entry);
        Self {
            forward_partials: p("margin_loss_forward_partials"),
            assign_plus: p("assign_plus"),
            forward_combine: p("margin_loss_forward_combine"),
            mean: p("margin_loss_mean"),
            backward_dcos: p("margin_loss_backward_dcos"),
            backward_weight: p("cosine_backward_weight"),
            backward_emb_partials: p("cosine_backward_emb_partials"),
            backward_emb_combine: p("cosine_backward_emb_combine"),
            normalize: Normalize::new(gpu),
        }
    }
}

/// `a / b` rounded up, as a workgroup count.
fn groups(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

/// The margin head of one configuration and shape: its scratch tensors and every dispatch of its forward and
/// backward pass, built once. Inputs and outputs are the caller's tensors, bound at construction:
///
/// - `emb (B, D)`: the raw embeddings (read by [`MarginHead::forward`]);
/// - `w (C, D)`: the raw class centres as rows, split (see [`upload_head_weight`]);
/// - `d_emb (B, D)`, `d_w (C, D)` split like `w`: overwritten by [`MarginHead::backward`] with the gradients of the
///   mean loss.
///
/// Per step the host writes the labels and the drawn margins ([`MarginHead::write_step`]).
pub struct MarginHead {
    /// The loss.
    pub cfg: MarginConfig,
    /// `B`, `D`, `C`.
    pub shape: HeadShape,
    /// `(B)` u32 labels, written by [`MarginHead::write_step`].
    pub labels: Tensor,
    /// `(3, B)` raw margins with cosines and sines ([`margin_table`]), written by [`MarginHead::write_step`].
    pub margins_raw: Tensor,
    /// `(3, B)` the margins as assigned to the samples (after the Plus assignment), with cosines and sines.
    pub margins: Tensor,
    /// `(B)` u32 ranking of the Plus assignment, as the core's `HeadScratch::order` (the identity without Plus).
    pub order: Tensor,
    /// `(B, D)` normalised embeddings.
    pub emb_unit: Tensor,
    /// `(B)` embedding norms.
    pub emb_norm: Tensor,
    /// `(C, D)` normalised class centres, split like `w`.
    pub w_unit: SplitTensor,
    /// `(C, 1)` class-centre norms, split like `w`.
    pub w_norm: SplitTensor,
    /// `(B)` clamped cosine of each sample to its own class centre.
    pub cos_y: Tensor,
    /// `(B, chunks, 2)` per-chunk `(max, sum exp)` of the non-target logits.
    pub partials: Tensor,
    /// `(B, 4)`: log-sum-exp, target logit, its derivative, loss of the row.
    pub row_stats: Tensor,
    /// `(1)` the mean loss.
    pub loss: Tensor,
    /// `(B, largest wave)` `dL/d raw_cos` of the current wave (for one wave: the core's `scratch.logits` after the
    /// backward pass).
    pub dcos: Tensor,
    /// `(splits, B, D)` partial sums of `d_emb_unit`.
    pub emb_partials: Tensor,
    /// The backward pass's waves, in order.
    pub waves: Vec<Wave>,
    /// Classes per split of `emb_partials`.
    pub split_classes: usize,
    sorted: Tensor,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
}

impl MarginHead {
    /// Allocates the scratch and builds the dispatches; see the type's documentation for the tensors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        k: &MarginLoss,
        cfg: &MarginConfig,
        shape: HeadShape,
        emb: &Tensor,
        w: &SplitTensor,
        d_emb: &Tensor,
        d_w: &SplitTensor,
        opts: &HeadOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        shape.validate()?;
        let HeadShape { batch: b, dim: d, classes: c } = shape;
        let name = "margin head";
        check_f32(name, emb, b * d)?;
        check_f32(name, d_emb, b * d)?;
        for part in w.parts.iter().chain(&d_w.parts) {
            part.expect_elem(name, Elem::F32)?;
        }
        if w.rows != c || w.cols != d {
            bail!("{name}: {} is ({}, {}), the head needs (C, D) = ({c}, {d})", w.label, w.rows, w.cols);
        }
        if !d_w.same_split(w) || d_w.cols != d {
            bail!("{name}: {} is not split like {} ({:?})", d_w.label, w.label, w.offsets);
        }
        let inner = &w.offsets[1..w.offsets.len() - 1];
        if inner.iter().any(|o| o % CLASS_TILE != 0) {
            bail!(
                "{name}: {} is split at {:?}; parts must hold multiples of {CLASS_TILE} classes (upload it with \
                 upload_head_weight)",
                w.label,
                w.offsets
            );
        }
        if b * c > u32::MAX as usize || b * d > u32::MAX as usize {
            bail!("{name}: shape {shape:?} exceeds 32-bit indices");
        }

        // Scratch budgets: dcos (B, wave) and the partial sums of d_emb_unit (splits, B, D).
        let budget = opts.scratch_bytes.min(gpu.caps.max_binding);
        let wave_cap = (budget / (4 * b as u64)) as usize;
        if wave_cap == 0 {
            bail!("{name}: dcos for one class of {b} samples exceeds the scratch budget of {budget} bytes");
        }
        let mut waves = Vec::new();
        for (part, rows) in w.offsets.windows(2).enumerate() {
            let n = rows[1] - rows[0];
            waves.extend((0..n).step_by(wave_cap).map(|begin| Wave { part, begin, len: wave_cap.min(n - begin) }));
        }
        let widest = waves.iter().map(|v| v.len).max().unwrap_or(1);
        let mut split = opts.split_classes.max(1);
        while c.div_ceil(split) as u64 * (4 * b * d) as u64 > budget {
            if split >= c {
                bail!("{name}: d_emb partial sums of (B, D) = ({b}, {d}) exceed the scratch budget of {budget} bytes");
            }
            split *= 2;
        }
        let splits = c.div_ceil(split);
        let part_chunks: Vec<usize> = w.offsets.windows(2).map(|r| (r[1] - r[0]).div_ceil(CLASS_TILE)).collect();
        let chunks: usize = part_chunks.iter().sum();

        let head = Self {
            cfg: *cfg,
            shape,
            labels: gpu.zeros("head.labels", &[b]),
            margins_raw: gpu.zeros("head.margins_raw", &[3, b]),
            margins: gpu.zeros("head.margins", &[3, b]),
            order: gpu.zeros("head.order", &[b]),
            emb_unit: gpu.zeros("head.emb_unit", &[b, d]),
            emb_norm: gpu.zeros("head.emb_norm", &[b]),
            w_unit: gpu.zeros_split_like("head.w_unit", w, d)?,
            w_norm: gpu.zeros_split_like("head.w_norm", w, 1)?,
            cos_y: gpu.zeros("head.cos_y", &[b]),
            partials: gpu.zeros("head.partials", &[b, chunks, 2]),
            row_stats: gpu.zeros("head.row_stats", &[b, ROW_STATS]),
            loss: gpu.zeros("head.loss", &[1]),
            dcos: gpu.zeros("head.dcos", &[b, widest]),
            emb_partials: gpu.zeros("head.emb_partials", &[splits, b, d]),
            waves,
            split_classes: split,
            sorted: gpu.zeros("head.plus_sorted", &[b]),
            forward: Vec::new(),
            backward: Vec::new(),
        };

        let base = MarginParams {
            batch: b as u32,
            dim: d as u32,
            chunks: chunks as u32,
            split: split as u32,
            splits: splits as u32,
            kind: match cfg.kind {
                MarginKind::Arc => 0,
                MarginKind::Cos => 1,
            },
            plus: match cfg.plus {
                PlusAssignment::None => 0,
                PlusAssignment::Paper => 1,
                PlusAssignment::ReleasedCode => 2,
            },
            s: cfg.s,
            inv_batch: 1.0 / b as f32,
            sin_floor: ARC_SIN_THETA_FLOOR,
            ..Default::default()
        };
        let row_tiles = groups(b, CLASS_TILE);
        let dim_tiles = groups(d, CLASS_TILE);
        let h = &head;

        let mut forward = vec![k.normalize.forward(gpu, VectorLayout::rows(b, d), emb, &h.emb_unit, &h.emb_norm)?];
        forward.extend(k.normalize.forward_rows_split(gpu, w, &h.w_unit, &h.w_norm)?);
        let mut chunk_offset = 0;
        for (i, part) in h.w_unit.parts.iter().enumerate() {
            let params = MarginParams {
                part_begin: w.offsets[i] as u32,
                part_classes: part.shape[0] as u32,
                chunk_offset: chunk_offset as u32,
                ..base
            };
            let tensors = [&h.emb_unit, part, &h.labels, &h.cos_y, &h.partials];
            let grid = [part_chunks[i] as u32, row_tiles, 1];
            forward.push(gpu.dispatch("margin_loss_forward_partials", &k.forward_partials, &params, &tensors, grid)?);
            chunk_offset += part_chunks[i];
        }
        let tensors = [&h.cos_y, &h.margins_raw, &h.margins, &h.order, &h.sorted];
        forward.push(gpu.dispatch("assign_plus", &k.assign_plus, &base, &tensors, [1, 1, 1])?);
        let tensors = [&h.cos_y, &h.margins, &h.partials, &h.row_stats];
        let grid = gpu.grid_1d(b, 1);
        forward.push(gpu.dispatch("margin_loss_forward_combine", &k.forward_combine, &base, &tensors, grid)?);
        let tensors = [&h.row_stats, &h.loss];
        forward.push(gpu.dispatch("margin_loss_mean", &k.mean, &base, &tensors, [1, 1, 1])?);

        let mut backward = Vec::new();
        for wave in &h.waves {
            let (wu, dw) = (&h.w_unit.parts[wave.part], &d_w.parts[wave.part]);
            let global = w.offsets[wave.part] + wave.begin;
            let split_first = global / split;
            let split_last = (global + wave.len - 1) / split;
            let params = MarginParams {
                part_begin: w.offsets[wave.part] as u32,
                part_classes: wu.shape[0] as u32,
                wave_begin: wave.begin as u32,
                wave_len: wave.len as u32,
                split_first: split_first as u32,
                ..base
            };
            let tensors = [&h.emb_unit, wu, &h.labels, &h.row_stats, &h.dcos];
            let grid = [groups(wave.len, CLASS_TILE), row_tiles, 1];
            backward.push(gpu.dispatch("margin_loss_backward_dcos", &k.backward_dcos, &params, &tensors, grid)?);
            let grid = [dim_tiles, groups(wave.len, CLASS_TILE), 1];
            let tensors = [&h.emb_unit, &h.dcos, dw];
            backward.push(gpu.dispatch("cosine_backward_weight", &k.backward_weight, &params, &tensors, grid)?);
            let grid = [dim_tiles, row_tiles, (split_last - split_first + 1) as u32];
            let tensors = [&h.dcos, wu, &h.emb_partials];
            let label = "cosine_backward_emb_partials";
            backward.push(gpu.dispatch(label, &k.backward_emb_partials, &params, &tensors, grid)?);
        }
        let grid = gpu.grid_1d(b * d, ELEMENTWISE_WORKGROUP);
        let label = "cosine_backward_emb_combine";
        backward.push(gpu.dispatch(label, &k.backward_emb_combine, &base, &[&h.emb_partials, d_emb], grid)?);
        backward.push(k.normalize.backward(gpu, VectorLayout::rows(b, d), &h.emb_unit, &h.emb_norm, d_emb)?);
        backward.extend(k.normalize.backward_rows_split(gpu, &h.w_unit, &h.w_norm, d_w)?);

        Ok(Self { forward, backward, ..head })
    }

    /// Writes one step's labels `(B)` (each below `C`) and drawn margins `(B)` (finite; see
    /// [`MarginConfig::draw_margins_at`]) for the next submission: `B` u32 and `3 B` f32 through the queue.
    pub fn write_step(&self, gpu: &Gpu, labels: &[u32], margins_raw: &[f32]) -> Result<()> {
        self.check_step(labels, margins_raw)?;
        gpu.write(&self.labels, labels)?;
        gpu.write(&self.margins_raw, &margin_table(margins_raw))
    }

    /// What [`MarginHead::write_step`] checks before it writes anything: `B` labels below the class count and `B`
    /// finite margins.
    pub fn check_step(&self, labels: &[u32], margins_raw: &[f32]) -> Result<()> {
        let (b, c) = (self.shape.batch, self.shape.classes);
        if labels.len() != b || margins_raw.len() != b {
            bail!("margin head: {} labels and {} margins for a batch of {b}", labels.len(), margins_raw.len());
        }
        if let Some(i) = labels.iter().position(|&y| y as usize >= c) {
            bail!("margin head: labels[{i}] = {} is not below the class count {c}", labels[i]);
        }
        if let Some(i) = margins_raw.iter().position(|m| !m.is_finite()) {
            bail!("margin head: margins_raw[{i}] = {} is not finite", margins_raw[i]);
        }
        Ok(())
    }

    /// The forward pass, in recording order: normalise, cosine partials per part, Plus assignment, loss.
    pub fn forward(&self) -> &[Dispatch] {
        &self.forward
    }

    /// The backward pass, in recording order (after [`MarginHead::forward`] of the same step): writes `d_emb` and
    /// `d_w`.
    pub fn backward(&self) -> &[Dispatch] {
        &self.backward
    }

    /// Reads the mean loss of the last completed forward pass (waits for the GPU).
    pub fn read_loss(&self, gpu: &Gpu) -> Result<f32> {
        Ok(gpu.read::<f32>(&self.loss)?[0])
    }
}
