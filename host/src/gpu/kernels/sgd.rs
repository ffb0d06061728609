//! `shaders/sgd.wgsl`: SGD with momentum and weight decay, and global gradient-norm clipping.
//! CPU twins: [`elasticface_core::nn::sgd_step`], [`elasticface_core::nn::sum_of_squares`],
//! [`elasticface_core::nn::clip_coefficient`], [`elasticface_core::nn::scale`],
//! [`elasticface_core::nn::accumulate_gradient`].
//!
//! # One training step's optimiser work
//!
//! ```text
//! hyper  = SgdKernels::hyper(gpu, &sgd)               // once: [lr, momentum, weight_decay]
//! clip   = GradClip::new(gpu, &k, &backbone_grads, 5.0)  // once: partials, combine, scales
//! steps  = k.step(..) per tensor, k.step_split(..) for the head  // once
//! per step: SgdKernels::write_hyper(gpu, &hyper, &sgd_with_this_steps_lr)   // one queue write, only when lr changes
//!           record clip.dispatches(), then the steps, after the backward pass
//! ```
//!
//! Every kernel here is element-wise or a sum over all elements, so "a tensor" may be a whole group of tensors packed
//! in one buffer ([`Gpu::packed`](crate::gpu::Gpu::packed)): the trainer clips and steps its backbone group by group,
//! a few dispatches instead of three per tensor, with the same results element for element (the norm sums the same
//! values in another order).
//!
//! The learning rate lives in a storage tensor that every `sgd_step` dispatch reads (not in each dispatch's
//! uniform), so a schedule change is one `queue.write_buffer` of 12 bytes, ordered before the next submission.
//!
//! # The guard against non-finite steps
//!
//! A training step must not write NaN into the weights, and must not wait for the GPU halfway to find out. So the
//! check runs on the GPU: [`SgdKernels::step_report`] reads the loss and the totals of the gradients' sums of
//! squares (the backbone's [`GradClip`], the head's [`GradClip::norm_only`]) and writes the report
//! `[flags, loss, backbone norm, head norm]` ([`REPORT_LEN`]); [`SgdKernels::step_guarded`] updates only when the
//! flags are 0. The host reads the report after the step (16 bytes) and turns non-zero flags into an error.

use anyhow::{bail, Result};
use elasticface_core::nn::{MicroBatch, Sgd};

use super::{check_len, Dispatch, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Gpu, SplitTensor, Tensor};

/// Elements one workgroup of `sum_of_squares` reduces into one partial (`BLOCK` in the shader).
pub const SUM_BLOCK: usize = 256 * 16;

/// Elements of the clip tensor written by `clip_coefficient`: `[sum of squares, norm, coefficient, 0]`.
pub const CLIP_LEN: usize = 4;

/// Index of the coefficient in the clip tensor.
pub const CLIP_COEFFICIENT: usize = 2;

/// Elements of the step report written by [`SgdKernels::step_report`]: `[flags, loss, backbone norm, head norm]`.
pub const REPORT_LEN: usize = 4;
/// Index of the flags in the step report (an `f32` holding a small integer, the bits below; 0: all finite).
pub const REPORT_FLAGS: usize = 0;
/// Index of the loss in the step report.
pub const REPORT_LOSS: usize = 1;
/// Index of the backbone's gradient norm (before clipping) in the step report.
pub const REPORT_BACKBONE_NORM: usize = 2;
/// Index of the head's gradient norm in the step report.
pub const REPORT_HEAD_NORM: usize = 3;
/// Flag: the loss is NaN or infinite.
pub const NON_FINITE_LOSS: u32 = 1;
/// Flag: a backbone gradient holds NaN or an infinity (its sum of squares is not finite).
pub const NON_FINITE_BACKBONE: u32 = 2;
/// Flag: the head gradient holds NaN or an infinity.
pub const NON_FINITE_HEAD: u32 = 4;

/// Mirrors `Params` in `shaders/sgd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdParams {
    /// Elements of the tensor.
    pub len: u32,
    /// `sum_of_squares`: index of the tensor's first partial.
    pub offset: u32,
    /// `clip_coefficient`: number of partials.
    pub count: u32,
    /// `scale`: index of the factor in its tensor.
    pub factor_index: u32,
    /// `clip_coefficient`: the largest norm allowed.
    pub max_norm: f32,
    /// `accumulate_gradient`: 0 first, 1 next, 2 last ([`MicroBatch`]).
    pub stage: u32,
    /// Padding to 16-byte multiples.
    pub _pad: [u32; 2],
}

/// Number of partials `sum_of_squares` writes for a tensor of `len` elements (at least one).
pub fn sum_of_squares_partials(len: usize) -> usize {
    len.div_ceil(SUM_BLOCK).max(1)
}

fn len_u32(kernel: &str, t: &Tensor) -> Result<u32> {
    u32::try_from(t.len)
        .or_else(|_| bail!("{kernel}: {} has {} elements, more than 32-bit indices reach", t.label, t.len))
}

/// The optimiser kernels' pipelines.
pub struct SgdKernels {
    step: wgpu::ComputePipeline,
    step_guarded: wgpu::ComputePipeline,
    sum_of_squares: wgpu::ComputePipeline,
    clip_coefficient: wgpu::ComputePipeline,
    scale: wgpu::ComputePipeline,
    accumulate_gradient: wgpu::ComputePipeline,
    step_report: wgpu::ComputePipeline,
}

impl SgdKernels {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("sgd.wgsl", include_str!("../../../../shaders/sgd.wgsl"));
        Self {
            step: gpu.pipeline("sgd_step", &m, "sgd_step"),
            step_guarded: gpu.pipeline("sgd_step_guarded", &m, "sgd_step_guarded"),
            sum_of_squares: gpu.pipeline("sum_of_squares", &m, "sum_of_squares"),
            clip_coefficient: gpu.pipeline("clip_coefficient", &m, "clip_coefficient"),
            scale: gpu.pipeline("scale", &m, "scale"),
            accumulate_gradient: gpu.pipeline("accumulate_gradient", &m, "accumulate_gradient"),
            step_report: gpu.pipeline("step_report", &m, "step_report"),
        }
    }

    /// The hyper-parameter tensor `[lr, momentum, weight_decay]` that [`SgdKernels::step`] dispatches read.
    pub fn hyper(gpu: &Gpu, sgd: &Sgd) -> Tensor {
        gpu.upload("sgd.hyper", &[3], &[sgd.lr, sgd.momentum, sgd.weight_decay])
    }

    /// Overwrites the hyper-parameters (e.g. the learning rate of a new epoch); takes effect for work submitted
    /// after this call.
    pub fn write_hyper(gpu: &Gpu, hyper: &Tensor, sgd: &Sgd) -> Result<()> {
        gpu.write(hyper, &[sgd.lr, sgd.momentum, sgd.weight_decay])
    }

    /// One update of one tensor with the hyper-parameters in `hyper`:
    /// `d = g + wd * p; buf = momentum * buf + d; p -= lr * buf`. `grad` and `momentum_buf` as long as `param`.
    pub fn step(
        &self,
        gpu: &Gpu,
        hyper: &Tensor,
        param: &Tensor,
        grad: &Tensor,
        momentum_buf: &Tensor,
    ) -> Result<Dispatch> {
        self.step_with(gpu, hyper, None, param, grad, momentum_buf)
    }

    /// [`SgdKernels::step`] that runs only when the step report's flags (`report[REPORT_FLAGS]`, written earlier in
    /// the same submission by [`SgdKernels::step_report`]) are 0; otherwise `param` and `momentum_buf` keep their
    /// bits.
    pub fn step_guarded(
        &self,
        gpu: &Gpu,
        hyper: &Tensor,
        report: &Tensor,
        param: &Tensor,
        grad: &Tensor,
        momentum_buf: &Tensor,
    ) -> Result<Dispatch> {
        self.step_with(gpu, hyper, Some(report), param, grad, momentum_buf)
    }

    fn step_with(
        &self,
        gpu: &Gpu,
        hyper: &Tensor,
        report: Option<&Tensor>,
        param: &Tensor,
        grad: &Tensor,
        momentum_buf: &Tensor,
    ) -> Result<Dispatch> {
        let name = if report.is_some() { "sgd_step_guarded" } else { "sgd_step" };
        check_len(name, hyper, 3)?;
        check_len(name, grad, param.len)?;
        check_len(name, momentum_buf, param.len)?;
        let params = SgdParams { len: len_u32(name, param)?, ..Default::default() };
        let grid = gpu.grid_1d(param.len, ELEMENTWISE_WORKGROUP);
        match report {
            None => gpu.dispatch(name, &self.step, &params, &[hyper, grad, param, momentum_buf], grid),
            Some(report) => {
                check_len(name, report, REPORT_LEN)?;
                let tensors = [hyper, grad, param, momentum_buf, report];
                gpu.dispatch(name, &self.step_guarded, &params, &tensors, grid)
            }
        }
    }

    /// [`SgdKernels::step`] of a split matrix (the head), one dispatch per part; all three split alike.
    pub fn step_split(
        &self,
        gpu: &Gpu,
        hyper: &Tensor,
        param: &SplitTensor,
        grad: &SplitTensor,
        momentum_buf: &SplitTensor,
    ) -> Result<Vec<Dispatch>> {
        split_parts("sgd_step", param, grad, momentum_buf)?.map(|(p, g, b)| self.step(gpu, hyper, p, g, b)).collect()
    }

    /// [`SgdKernels::step_guarded`] of a split matrix (the head), one dispatch per part; all three split alike.
    pub fn step_split_guarded(
        &self,
        gpu: &Gpu,
        hyper: &Tensor,
        report: &Tensor,
        param: &SplitTensor,
        grad: &SplitTensor,
        momentum_buf: &SplitTensor,
    ) -> Result<Vec<Dispatch>> {
        split_parts("sgd_step_guarded", param, grad, momentum_buf)?
            .map(|(p, g, b)| self.step_guarded(gpu, hyper, report, p, g, b))
            .collect()
    }

    /// The step report `[flags, loss, backbone norm, head norm]` into `report (REPORT_LEN)` from `loss (1)` and the
    /// clip tensors (`[total, norm, ..]`, [`CLIP_LEN`]) of the backbone's and the head's gradients: one thread.
    /// Flags: [`NON_FINITE_LOSS`] | [`NON_FINITE_BACKBONE`] | [`NON_FINITE_HEAD`], each set when that value is NaN or
    /// infinite.
    pub fn step_report(
        &self,
        gpu: &Gpu,
        loss: &Tensor,
        backbone_clip: &Tensor,
        head_clip: &Tensor,
        report: &Tensor,
    ) -> Result<Dispatch> {
        let name = "step_report";
        check_len(name, loss, 1)?;
        check_len(name, backbone_clip, CLIP_LEN)?;
        check_len(name, head_clip, CLIP_LEN)?;
        check_len(name, report, REPORT_LEN)?;
        let tensors = [loss, backbone_clip, head_clip, report];
        gpu.dispatch(name, &self.step_report, &SgdParams::default(), &tensors, [1, 1, 1])
    }

    /// Partial sums of squares of `x` into `partials[offset..offset + sum_of_squares_partials(x.len)]`.
    pub fn sum_of_squares(&self, gpu: &Gpu, x: &Tensor, partials: &Tensor, offset: usize) -> Result<Dispatch> {
        let name = "sum_of_squares";
        let count = sum_of_squares_partials(x.len);
        if offset + count > partials.len {
            bail!("{name}: {} has {} elements, {} needs {count} from {offset}", partials.label, partials.len, x.label);
        }
        let params = SgdParams { len: len_u32(name, x)?, offset: offset as u32, ..Default::default() };
        gpu.dispatch(name, &self.sum_of_squares, &params, &[x, partials], gpu.grid_1d(count, 1))
    }

    /// `clip = [total, norm, min(1, max_norm / (norm + 1e-6))]` from `total = sum of partials[0..count]`.
    pub fn clip_coefficient(
        &self,
        gpu: &Gpu,
        partials: &Tensor,
        count: usize,
        max_norm: f32,
        clip: &Tensor,
    ) -> Result<Dispatch> {
        let name = "clip_coefficient";
        if count > partials.len {
            bail!("{name}: {} has {} elements, fewer than the {count} partials", partials.label, partials.len);
        }
        check_len(name, clip, CLIP_LEN)?;
        let params = SgdParams { count: count as u32, max_norm, ..Default::default() };
        gpu.dispatch(name, &self.clip_coefficient, &params, &[partials, clip], [1, 1, 1])
    }

    /// `x *= factor[index]`, the factor read on the GPU (e.g. the clip coefficient, [`CLIP_COEFFICIENT`]).
    pub fn scale(&self, gpu: &Gpu, x: &Tensor, factor: &Tensor, index: usize) -> Result<Dispatch> {
        let name = "scale";
        if index >= factor.len {
            bail!("{name}: {} has {} elements, no index {index}", factor.label, factor.len);
        }
        let params = SgdParams { len: len_u32(name, x)?, factor_index: index as u32, ..Default::default() };
        let grid = gpu.grid_1d(x.len, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(name, &self.scale, &params, &[factor, x], grid)
    }

    /// A micro-batch's gradient `grad` into the running `sum` of a step's micro-batches, as `stage` says: `sum = g`,
    /// `sum += g`, or the mean `g = (sum + g) * factor[index]` (`1 / N`, read on the GPU, so one recording serves any
    /// `N`); the `inv_n` of [`MicroBatch::Last`] is not read. `sum` as long as `grad`.
    pub fn accumulate_gradient(
        &self,
        gpu: &Gpu,
        stage: MicroBatch,
        factor: &Tensor,
        index: usize,
        sum: &Tensor,
        grad: &Tensor,
    ) -> Result<Dispatch> {
        let name = "accumulate_gradient";
        if index >= factor.len {
            bail!("{name}: {} has {} elements, no index {index}", factor.label, factor.len);
        }
        check_len(name, sum, grad.len)?;
        let stage = match stage {
            MicroBatch::First => 0,
            MicroBatch::Next => 1,
            MicroBatch::Last { .. } => 2,
        };
        let params = SgdParams { len: len_u32(name, grad)?, factor_index: index as u32, stage, ..Default::default() };
        let grid = gpu.grid_1d(grad.len, ELEMENTWISE_WORKGROUP);
        gpu.dispatch(name, &self.accumulate_gradient, &params, &[factor, sum, grad], grid)
    }
}

/// The parts of three matrices split alike, as `(param, grad, momentum)` triples; errors (naming `kernel`) when
/// `grad` or `momentum_buf` is not split like `param`.
fn split_parts<'a>(
    kernel: &str,
    param: &'a SplitTensor,
    grad: &'a SplitTensor,
    momentum_buf: &'a SplitTensor,
) -> Result<impl Iterator<Item = (&'a Tensor, &'a Tensor, &'a Tensor)>> {
    for t in [grad, momentum_buf] {
        if !t.same_split(param) || t.cols != param.cols {
            bail!("{kernel}: {} is not split like {}", t.label, param.label);
        }
    }
    Ok(param.parts.iter().zip(&grad.parts).zip(&momentum_buf.parts).map(|((p, g), b)| (p, g, b)))
}

/// Global gradient-norm clipping of a set of tensors (`torch.nn.utils.clip_grad_norm_`), built once and recorded
/// every step: one `sum_of_squares` per tensor into its range of `partials`, one `clip_coefficient`, one `scale`
/// per tensor. Nothing is read back; [`GradClip::read`] fetches the norm for logging.
pub struct GradClip {
    /// Partial sums of squares of every tensor.
    pub partials: Tensor,
    /// `[sum of squares, norm, coefficient, 0]`.
    pub clip: Tensor,
    dispatches: Vec<Dispatch>,
}

impl GradClip {
    /// Plans clipping of `grads` to a global norm of at most `max_norm`.
    pub fn new(gpu: &Gpu, k: &SgdKernels, grads: &[&Tensor], max_norm: f32) -> Result<Self> {
        Self::build(gpu, k, grads, max_norm, true)
    }

    fn build(gpu: &Gpu, k: &SgdKernels, grads: &[&Tensor], max_norm: f32, scale: bool) -> Result<Self> {
        let count: usize = grads.iter().map(|g| sum_of_squares_partials(g.len)).sum();
        let partials = gpu.zeros("grad_clip.partials", &[count]);
        let clip = gpu.zeros("grad_clip.clip", &[CLIP_LEN]);
        let mut dispatches = Vec::with_capacity(2 * grads.len() + 1);
        let mut offset = 0;
        for g in grads {
            dispatches.push(k.sum_of_squares(gpu, g, &partials, offset)?);
            offset += sum_of_squares_partials(g.len);
        }
        dispatches.push(k.clip_coefficient(gpu, &partials, count, max_norm, &clip)?);
        if scale {
            for g in grads {
                dispatches.push(k.scale(gpu, g, &clip, CLIP_COEFFICIENT)?);
            }
        }
        Ok(Self { partials, clip, dispatches })
    }

    /// Measures the global norm of `grads` without scaling them (the dispatches hold no `scale`): for the head,
    /// which is not clipped but whose gradient's finiteness guards the step ([`SgdKernels::step_report`]).
    pub fn norm_only(gpu: &Gpu, k: &SgdKernels, grads: &[&Tensor]) -> Result<Self> {
        Self::build(gpu, k, grads, f32::MAX, false)
    }

    /// The dispatches, in recording order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Reads `(norm, coefficient)` of the last recorded clip (waits for the GPU).
    pub fn read(&self, gpu: &Gpu) -> Result<(f32, f32)> {
        let v = gpu.read::<f32>(&self.clip)?;
        Ok((v[1], v[CLIP_COEFFICIENT]))
    }
}
