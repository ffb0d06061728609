//! The GPU trainer: the core's [`Trainer::step`](elasticface_core::model::Trainer::step) on wgpu, layer for layer
//! and in the same order, built from the kernels of [`crate::gpu::kernels`].
//!
//! # One step
//!
//! Everything is built once ([`GpuBackend::new`]): a tensor per state tensor (labelled with its insightface name),
//! a gradient and a momentum tensor per trainable one (packed into shared buffers; see Memory), the head
//! (`(C, D)`, split; see [`crate::gpu::kernels::margin`]), the activations, four rotating gradient buffers, shared
//! scratch, and the dispatches with their bind groups. A step then is:
//!
//! ```text
//! host:  write the packed u8 images (B, H, W, 3), the flip flags (B), the labels (B) and the margins (3, B)
//! GPU:   preprocess -> backbone forward (batch statistics; running statistics move) -> head forward
//!        -> head backward -> backbone backward -> clip the backbone gradient norm
//!        -> head gradient norm -> step report -> SGD of the backbone and the head (guarded)
//!        all in one compute pass of one encoder, one submission
//! host:  read the 16-byte step report [flags, loss, backbone norm, head norm]
//! ```
//!
//! The order and the arithmetic are the core's; only the summation orders of the reductions differ (the GPU sums in
//! fixed trees), and the 3x3 stride-1 convolutions of 128 channels and more (64 on a CPU adapter) run as Winograd
//! F(4x4, 3x3) or F(2x2, 3x3) (the core's `conv2d_winograd_*`, whose rounding differs from the direct loops'; see
//! [`WinogradTileChoice`]), so results agree with the CPU trainer to f32 rounding and two GPU runs agree bit for
//! bit. `features.weight` is frozen (no gradient, no
//! update); weight decay applies to the backbone and the head; the head is not clipped.
//!
//! # Gradient accumulation
//!
//! A step of `N > 1` micro-batches of `B` ([`Backend::step`] on `N B` images) is `N` submissions: each uploads its
//! micro-batch and runs the step above up to the backbone's gradients (and their unscaling in mixed precision), then
//! adds its backbone and head gradients and its loss into sums (the core's `accumulate_gradient`: the first copies,
//! the next add, the last leaves `(sum + g) / N` in the gradients); the last goes on with clipping, the report and the
//! update. Only the last is waited for: the next micro-batch's images are written (wgpu orders a queue write after
//! the submissions before it) and its commands recorded while one runs. The sums (as large as the gradients, and one
//! float for the loss) are allocated at the first such step. A mixed-precision retry runs every micro-batch again.
//!
//! # Non-finite steps
//!
//! The core checks the loss and the gradients before it updates anything. Waiting for the GPU halfway through a step
//! would cost a round trip, so the check runs on the GPU: the step report flags a non-finite loss, backbone gradient
//! (its sum of squares, which the clip computes anyway) or head gradient (a sum of squares of its own), and every
//! SGD dispatch skips its update when a flag is set ([`SgdKernels::step_guarded`]). The host then returns the core's
//! [`Error::NonFinite`](elasticface_core::Error::NonFinite) (with context) naming what was non-finite; the
//! parameters, the head and the momentum keep their bits, and the step counter does not advance. The batch norm
//! running statistics have moved in the forward pass, as they do in the core and in PyTorch.
//!
//! In a step of micro-batches the report comes after the last: every micro-batch has run (and moved the running
//! statistics) when a non-finite loss or gradient is found, where the core stops at the first micro-batch whose loss
//! is not finite; the weights, head and momentum are unchanged either way.
//!
//! A NaN that reaches the embeddings may leave the GPU's loss finite where the core's is NaN (WGSL's `clamp` of a
//! NaN cosine may return a bound), so the error can name the gradients where the core names the loss; nothing is
//! updated either way. Overflow counts as non-finite: a gradient whose sum of squares exceeds `f32::MAX` (entries
//! beyond ~1e19) is refused, where the core would clip it to a zero update.
//!
//! # Dispatches
//!
//! Per step: 1 (preprocess) + forward (stem 4, a block 11, a downsampling block 15, the tail 8) + head forward
//! (`4 + 2 parts`) + head backward (`3 waves + 2 + parts`) + backward (tail and stem 7, a block 14, a
//! downsampling block 25: a stride-2 `backward_data` is one product per phase, 4; each block recomputes bn1's
//! output, which conv1's weight gradient reads) + clipping (`2 G + 1`) + head norm (`parts + 1`) + report 1 + SGD
//! (`G + parts`), `G` the groups the trainable tensors are packed in (see Memory; 1 where a binding holds all of
//! them, 3 for r100 under lavapipe's 128 MiB), plus one reduction per convolution whose depth is split
//! (adapter-dependent). A convolution run as Winograd ([`GpuBackend::set_winograd`]) takes 4 dispatches in place
//! of 1 for each of its three passes (transforms around the batched product), plus a reduction where the product
//! is split. The PReLUs and the residual adds have no dispatches of their own: each runs inside the passes of the
//! batch norm next to it ([`Epilogue`], [`BackwardFusion`]), with the same results bit for bit. A Winograd
//! convolution whose input is a batch norm's output (conv1 after bn1; conv2 after bn2 and the PReLU, where it has
//! stride 1) reads the batch norm's input and normalises it in its input transform ([`InputNorm`]), forward and
//! for its weight gradient: the batch norm keeps only its 2 statistics dispatches, and conv1's backward recomputes
//! nothing; one dispatch fewer per such convolution forward, one per such conv1 backward, the same bits.
//! The tiny reference net at batch 6: 433 with a dispatch per tensor for clipping and SGD, 238 with its 66 trainable
//! tensors packed in one group.
//! iResNet-100 at batch 128 with 85,742 classes on an H200: 3,247 before the batch norm fusions, 298 fewer with them
//! (computed), and 1,383 fewer again with its 462 trainable tensors packed in one group (computed: `3 (T - G)`).
//! Evaluation ([`Backend::embed`]) records the forward pass alone, for the whole batch, built on first use: a chunk
//! of fewer images runs it on its first rows, so an image embeds to the same bits in any chunk.
//!
//! # Memory
//!
//! The backbone's trainable tensors are packed into shared buffers, as few as the binding limit allows
//! ([`Gpu::packed`](crate::gpu::Gpu::packed); one for r100 where a binding holds 2 GiB), and so are their gradients and
//! momentum, in the same layout; so are the running statistics. Each tensor starts at twice the adapter's storage
//! offset alignment (the gaps cost at most that per tensor), so that mixed precision's f16 copy of the trainable
//! values, refreshed at the start of every forward pass for the direct convolutions to read (half the bytes, the
//! rounding the tensor cores would do: `Net::weights16`), keeps the same element offsets. The rest has a buffer per
//! tensor. Any tensor larger than one storage binding ([`Capabilities::max_binding`]) is refused with an error naming
//! it, except the head, which is split by classes. Besides the state (three times the parameters with gradients and
//! momentum, and the f16 copy in mixed precision) and the head (weight, gradient, momentum, normalised copy), a step
//! keeps the activations the backward pass reads, [`activation_bytes`] for a batch of `B`:
//!
//! ```text
//! a * B * [ 3 H W                                      network input
//!         + 2 C0 H W                                   stem: conv1 and prelu outputs
//!         + sum over blocks ( (1 + k) Cout h w         conv1 output, and prelu output unless conv2 runs as
//!                                                      Winograd (k = 0 then, else 1)
//!                           + (2 + ds) Cout h' w' ) ]  conv2 output, block output, downsample conv output (ds = 1)
//! + 4 * B * [ C3 (H/16) (W/16) + 2 E ]                 bn2, fc and features outputs
//! + 4 * 2 * (channels of every batch norm)             saved batch mean and variance
//! ```
//!
//! `a` is the bytes of an activation: 4 in f32, 2 in mixed precision, whose convolutions read and write their
//! activations and the activations' gradients as f16 ([`ConvPrecision::activations`]; the batch norms read and
//! write them as the tensors hold them, and the tail from bn2's output on is f32, as are its gradients, the
//! statistics, the parameters and their gradients).
//!
//! (`h, w` a block's input size, `h', w'` its output size.) The outputs of the batch norms followed by a PReLU (a
//! block's bn2, the stem's bn1) or by the residual add (bn3) are never stored: each is computed inside the pass that
//! applies the next layer ([`Epilogue`]), and the backward pass of a batch norm and PReLU recomputes it from the batch
//! norm's input and saved statistics as it goes ([`BackwardFusion::Prelu`]). The downsample batch norm's output, read
//! by the add, lives in a gradient buffer, which the forward pass does not otherwise use; so does bn1's output, which
//! feeds conv1: the backward pass recomputes it from bn1's input and saved batch statistics, with the same kernel and
//! the same arithmetic as the forward pass (bit-identical), into a gradient buffer that is free at that point, just
//! before conv1's weight gradient reads it. Not keeping these outputs saves a third of the activations. Where conv1
//! runs as Winograd, bn1's output is not even recomputed: conv1 reads bn1's input through [`InputNorm`]; where conv2
//! does, it reads conv1's output the same way, and the PReLU's output is not kept at all (`k = 0` above). On top come
//! four gradient buffers of [`gradient_buffer_len`] activations each (the largest; f16 in mixed precision, which stores
//! the activations' gradients as their values, as autocast does) and scratch sized by the largest layer; where layers
//! run as Winograd, its workspace too (transformed weights `P C_OUT C_IN`, transformed inputs and products `P max(C_IN,
//! C_OUT) T` each, `T` the output tiles of the batch and `P` = 36 planes for F(4x4), 16 for F(2x2), for the largest
//! such layer; for r100 at batch 128 from 128 channels about 0.53 GB with F(4x4), which `auto` picks for every layer
//! there, and 0.87 GB with F(2x2)). iResNet-100 at batch 128 (112 x 112): 2.34 G floats of activations (9.35 GB) with
//! every convolution direct, 4.68 GB as f16 in mixed precision, 1.99 G (7.96 GB) with Winograd from 128 channels (the
//! GPU default), 1.94 G (7.75 GB) from 64; 4 x 0.103 G elements of gradient buffers (1.64 GB, 0.82 GB in mixed
//! precision), besides 0.78 GB of parameters, gradients and momentum (and 0.13 GB of their f16 copy in mixed
//! precision) and 0.7 GB of head (85,742 classes); gradient accumulation adds its sums (0.26 GB for r100's backbone,
//! 0.18 GB for that head). [`GpuBackend::memory`] reports what a backend allocated.
//!
//! The code: `settings` (what the convolutions run as, their kernels, the memory formulas above), `net` (every
//! tensor, allocated once), `builder` (the dispatches of the forward and backward passes); here, the step's plan
//! and [`GpuBackend`].
//!
//! [`Capabilities::max_binding`]: crate::gpu::Capabilities::max_binding

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::margin::HeadShape;
use elasticface_core::model::{
    init_head, init_state, BlockSpec, IResNetConfig, Mode, StepConfig, StepReport, TensorInfo, TensorKind,
    TrainerLayout,
};
use elasticface_core::nn::{BatchNorm, BatchNormShape, Conv2dShape, ImageShape, LinearShape, MicroBatch, WinogradTile};
use elasticface_core::rng::Philox4x32;

use super::Backend;
use crate::checkpoint::{Backbone, Checkpoint};
use crate::data::{Batch, Position};
use crate::gpu::kernels::batchnorm::{BackwardFusion, BatchNormKernels, Epilogue};
use crate::gpu::kernels::conv2d::{Conv2d, ConvOp, ConvPrecision, ConvTileChoice};
use crate::gpu::kernels::linear::{conv_shape, Linear};
use crate::gpu::kernels::margin::{
    download_head_weight, transpose, upload_head_weight, HeadOptions, MarginHead, MarginLoss,
};
use crate::gpu::kernels::precision::RoundToF16;
use crate::gpu::kernels::preprocess::Preprocess;
use crate::gpu::kernels::sgd::{
    GradClip, SgdKernels, NON_FINITE_BACKBONE, NON_FINITE_HEAD, NON_FINITE_LOSS, REPORT_BACKBONE_NORM, REPORT_FLAGS,
    REPORT_LEN, REPORT_LOSS,
};
use crate::gpu::kernels::winograd::{InputNorm, Winograd, WinogradLens, WinogradTileChoice, WinogradWorkspace};
use crate::gpu::kernels::{BufferCopy, Dispatch};
use crate::gpu::{Elem, Gpu, Packed, Recorded, SplitTensor, Tensor};
use crate::streams::INIT_STREAM;

mod builder;
mod net;
mod settings;

use builder::Builder;
use net::*;
use settings::*;
pub use settings::{activation_bytes, default_winograd, gradient_buffer_len, ConvSettings, MemoryUse};

/// The dispatches of a training step, built once per step configuration.
struct Plan {
    /// u8 images -> network input.
    preprocess: Dispatch,
    /// The backbone forward in training mode.
    forward: Vec<Dispatch>,
    /// The margin head; its forward and backward dispatches run between the backbone's.
    head: MarginHead,
    /// Mixed precision: `d embeddings *= S` before the backbone backward (see [`LossScale`]).
    scale_up: Option<Dispatch>,
    /// The backbone backward.
    backward: Vec<Dispatch>,
    /// Mixed precision: every backbone gradient `*= 1 / S` after the backward pass.
    unscale: Vec<Dispatch>,
    /// The backbone's gradient norm and clipping.
    clip: GradClip,
    /// The head gradient's norm (not clipped: it only guards the step).
    head_norm: GradClip,
    /// The step report, then the guarded SGD updates of the backbone and the head.
    update: Vec<Dispatch>,
    /// Gradient accumulation, where the net has its sums: each micro-batch's gradients and loss into them.
    accumulate: Option<Accumulate>,
    /// The next step's commands, recorded while the last one ran (see [`GpuBackend::run_step`]); they belong to
    /// this plan's dispatches and go with it.
    ahead: Option<Ahead>,
}

/// A step (or a part of one) recorded ahead: with or without the preprocessing of u8 images
/// ([`Plan::dispatches`]), and its commands.
struct Ahead {
    preprocess: bool,
    part: Part,
    step: Recorded,
}

/// What one submission of a training step runs: a whole step, or one micro-batch of a step of several (gradient
/// accumulation): each runs forward and backward and adds its gradients and loss into the sums; the last turns
/// them into means, then clips, reports and updates as a whole step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Whole,
    First,
    Next,
    Last,
}

impl Part {
    /// Micro-batch `i` of a step of `n` (`Whole` where `n` is 1).
    fn of(i: usize, n: usize) -> Self {
        match (n, MicroBatch::of(i, n)) {
            (1, _) => Part::Whole,
            (_, MicroBatch::First) => Part::First,
            (_, MicroBatch::Next) => Part::Next,
            (_, MicroBatch::Last { .. }) => Part::Last,
        }
    }

    /// Whether the part ends the step (clips, reports and updates).
    fn ends_the_step(self) -> bool {
        matches!(self, Part::Whole | Part::Last)
    }
}

/// The dispatches that add a micro-batch's gradients and loss into the sums ([`Sums`]), per stage.
struct Accumulate {
    first: Vec<Dispatch>,
    next: Vec<Dispatch>,
    last: Vec<Dispatch>,
}

impl Accumulate {
    fn new(gpu: &Gpu, k: &Kernels, net: &Net, sums: &Sums, loss: &Tensor) -> Result<Self> {
        ensure!(sums.head_grad.same_split(&net.head_grad), "the head's gradient sum is not split as its gradient");
        let pairs: Vec<(&Tensor, &Tensor)> = sums
            .grads
            .iter()
            .zip(&net.packs.grads)
            .chain(sums.head_grad.parts.iter().zip(&net.head_grad.parts))
            .chain([(&sums.loss, loss)])
            .collect();
        let stage = |stage: MicroBatch| -> Result<Vec<Dispatch>> {
            let factor = &sums.micro_batches;
            pairs.iter().map(|(sum, g)| k.sgd.accumulate_gradient(gpu, stage, factor, 1, sum, g)).collect()
        };
        Ok(Self {
            first: stage(MicroBatch::First)?,
            next: stage(MicroBatch::Next)?,
            // The GPU reads 1 / N from `sums.micro_batches`, written before each step: the stage's own is unused.
            last: stage(MicroBatch::Last { inv_n: f32::NAN })?,
        })
    }
}

impl Plan {
    fn new(gpu: &Gpu, k: &Kernels, net: &Net, step_cfg: &StepConfig) -> Result<Self> {
        let (n, e) = (net.batch, net.cfg.embedding);
        let b = Builder { gpu, k, net, bn: step_cfg.bn };
        let shape = HeadShape::new(n, e, net.classes);
        let d_emb = net.buf_f32(0, "d embeddings", &[n, e])?;
        let opts = HeadOptions::default();
        let head = MarginHead::new(
            gpu,
            &k.margin,
            &step_cfg.margin,
            shape,
            &net.tail.features_out,
            &net.head,
            &d_emb,
            &net.head_grad,
            &opts,
        )?;
        // The backbone's trainable tensors, their gradients and momentum are updated group by group (the gaps
        // between tensors hold zeros, which neither the norm nor an SGD step changes).
        let packs = &net.packs;
        let grads: Vec<&Tensor> = packs.grads.iter().collect();
        let clip = GradClip::new(gpu, &k.sgd, &grads, step_cfg.clip_norm)?;
        let head_grads: Vec<&Tensor> = net.head_grad.parts.iter().collect();
        let head_norm = GradClip::norm_only(gpu, &k.sgd, &head_grads)?;

        let mut update = vec![k.sgd.step_report(gpu, &head.loss, &clip.clip, &head_norm.clip, &net.report)?];
        for ((p, g), m) in packs.values.iter().zip(&packs.grads).zip(&packs.momentum) {
            update.push(k.sgd.step_guarded(gpu, &net.hyper, &net.report, p, g, m)?);
        }
        let (w, dw, mw) = (&net.head, &net.head_grad, &net.head_momentum);
        update.extend(k.sgd.step_split_guarded(gpu, &net.hyper, &net.report, w, dw, mw)?);

        let (scale_up, unscale) = match k.conv.precision() {
            ConvPrecision::F32 => (None, Vec::new()),
            ConvPrecision::Mixed => (
                Some(k.sgd.scale(gpu, &d_emb, &net.loss_scale, 0)?),
                grads.iter().map(|g| k.sgd.scale(gpu, g, &net.loss_scale, 1)).collect::<Result<_>>()?,
            ),
        };
        let image = ImageShape { h: net.cfg.input_h, w: net.cfg.input_w };
        let accumulate = net.sums.as_ref().map(|sums| Accumulate::new(gpu, k, net, sums, &head.loss)).transpose()?;
        Ok(Self {
            preprocess: k.preprocess.forward(gpu, n, &image, &net.images, &net.flips, &net.input)?,
            forward: b.forward(Mode::Train)?,
            scale_up,
            backward: b.backward()?,
            unscale,
            head,
            clip,
            head_norm,
            update,
            accumulate,
            ahead: None,
        })
    }

    /// Every dispatch of a step's `part` in recording order, with or without the preprocessing of u8 images.
    fn dispatches(&self, preprocess: bool, part: Part) -> Result<Vec<&Dispatch>> {
        let accumulate: &[Dispatch] = match (part, &self.accumulate) {
            (Part::Whole, _) => &[],
            (Part::First, Some(a)) => &a.first,
            (Part::Next, Some(a)) => &a.next,
            (Part::Last, Some(a)) => &a.last,
            (_, None) => bail!("a micro-batch of a step on a trainer without gradient sums"),
        };
        let end: Vec<&Dispatch> = match part.ends_the_step() {
            true => self.clip.dispatches().iter().chain(self.head_norm.dispatches()).chain(&self.update).collect(),
            false => Vec::new(),
        };
        let pre = preprocess.then_some(&self.preprocess);
        Ok(pre
            .into_iter()
            .chain(&self.forward)
            .chain(self.head.forward())
            .chain(self.head.backward())
            .chain(&self.scale_up)
            .chain(&self.backward)
            .chain(&self.unscale)
            .chain(accumulate)
            .chain(end)
            .collect())
    }
}

/// The evaluation-mode forward of a whole batch on the training tensors. A chunk of fewer images runs it too, on
/// the first rows (the others hold what they last held and are not read): every convolution is then planned for the
/// batch, so an image's embedding is the same bits wherever it lies in whichever chunk (a convolution planned for
/// fewer images splits its depth otherwise, summing in another order).
struct EvalPlan {
    preprocess: Dispatch,
    forward: Vec<Dispatch>,
}

/// The iResNet trainer on a GPU, behind the same [`Backend`] interface as the CPU reference.
///
/// `G` owns or borrows the device: `GpuBackend<Arc<Gpu>>` (the default, `'static`, e.g. for a
/// `Box<dyn Backend>`) or `GpuBackend<&Gpu>`.
pub struct GpuBackend<G: Deref<Target = Gpu> = Arc<Gpu>> {
    gpu: G,
    k: Kernels,
    net: Net,
    step_cfg: StepConfig,
    plan: Plan,
    /// The evaluation plan, built on first use.
    eval: Option<EvalPlan>,
    steps: u64,
    /// Mixed precision's loss scale; `None` in f32.
    loss_scale: Option<LossScale>,
}

/// Dynamic loss scaling of mixed precision: the backward pass's gradients are multiplied by `S` (a power of two)
/// before they are stored as f16 (from bn2's input gradient on) and multiplied on tensor cores, so that small
/// gradients keep their digits instead of flushing to zero, and the parameters' gradients are divided by `S` again
/// (exactly) before clipping. A step whose backbone gradient overflows (a value beyond 65504 becomes infinite as it
/// is stored or rounded to f16; the step's guard skips the update) is run again with `S / 2`; after
/// [`LossScale::GROWTH_INTERVAL`] steps in a row without overflow, `S` doubles. As PyTorch's `GradScaler`, except
/// that an overflowing batch is retried rather than dropped: the batch norm running statistics are saved before each
/// step (one copy of each, in the step's submission) and restored before a retry, so that the batch moves them once.
/// The scale and its count of good steps are part of a checkpoint: a resumed run goes on with them, bit for bit as a
/// run never stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScale {
    /// The current `S`.
    pub scale: f32,
    /// Steps since the last change.
    pub good_steps: u32,
}

impl LossScale {
    /// The first `S`: 2^16, as PyTorch's.
    pub const INITIAL: f32 = 65536.0;
    /// The largest `S`.
    pub const MAX: f32 = 16_777_216.0;
    /// Overflow-free steps after which `S` doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;
}

impl<G: Deref<Target = Gpu>> GpuBackend<G> {
    /// A trainer for `cfg` at batch `batch` with `classes` classes, initialised from `seed` exactly as
    /// [`CpuBackend::new`](super::cpu::CpuBackend::new) (on the CPU, by the core, then uploaded): both backends
    /// start from the same bits. The convolutions run in the adapter's default settings
    /// ([`ConvSettings::for_adapter`]).
    pub fn new(
        gpu: G,
        cfg: &IResNetConfig,
        batch: usize,
        classes: usize,
        step_cfg: StepConfig,
        seed: u64,
    ) -> Result<Self> {
        let settings = ConvSettings::for_adapter(&gpu);
        Self::with_settings(gpu, cfg, batch, classes, step_cfg, seed, settings)
    }

    /// [`Self::new`] with the convolutions in `settings`: only what they need is allocated (a trainer built in
    /// f32 and then switched to mixed precision would hold f32 activations first). Errors as [`Conv2d::build`].
    pub fn with_settings(
        gpu: G,
        cfg: &IResNetConfig,
        batch: usize,
        classes: usize,
        step_cfg: StepConfig,
        seed: u64,
        settings: ConvSettings,
    ) -> Result<Self> {
        TrainerLayout::new(cfg, batch, classes)?;
        let mut state = vec![0.0; cfg.state_len()];
        let mut head = vec![0.0; cfg.embedding * classes];
        let mut rng = Philox4x32::new(seed, INIT_STREAM);
        init_state(cfg, &mut rng, &mut state)?;
        init_head(&mut rng, &mut head);
        Self::with_weights(gpu, cfg, batch, classes, step_cfg, &state, &head, settings)
    }

    /// A trainer holding the given backbone `state` (the layout of [`IResNetConfig::tensors`]) and head
    /// `head (D, C)`, with zero momentum and no steps taken, its convolutions in `settings`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_weights(
        gpu: G,
        cfg: &IResNetConfig,
        batch: usize,
        classes: usize,
        step_cfg: StepConfig,
        state: &[f32],
        head: &[f32],
        settings: ConvSettings,
    ) -> Result<Self> {
        TrainerLayout::new(cfg, batch, classes)?;
        step_cfg.margin.validate()?;
        // An adapter below a kernel's needs (storage buffers per stage, workgroup memory or size) rejects its
        // pipeline: reported as an error naming the adapter's complaint, not a panic.
        let k = gpu.capture_errors("compiling the kernels", || Kernels::new(&gpu, &settings))??;
        // A card too small for the buffers reports it as an error here, not as a panic of wgpu's default handler.
        let buffers = format!("the trainer's buffers (batch {batch}, {classes} classes)");
        let net = gpu.capture_errors(&buffers, || Net::new(&gpu, &k, cfg, batch, classes, state, head))??;
        SgdKernels::write_hyper(&gpu, &net.hyper, &step_cfg.sgd)?;
        let plan = Plan::new(&gpu, &k, &net, &step_cfg)?;
        let mut me = Self { gpu, k, net, step_cfg, plan, eval: None, steps: 0, loss_scale: None };
        if settings.precision == ConvPrecision::Mixed {
            me.loss_scale = Some(LossScale { scale: LossScale::INITIAL, good_steps: 0 });
            me.write_loss_scale()?;
        }
        Ok(me)
    }

    /// The settings the convolutions run in.
    pub fn settings(&self) -> ConvSettings {
        self.k.settings()
    }

    /// Moves the convolutions to `settings` (rebuilding the step where anything changes): [`Self::set_convolutions`],
    /// [`Self::set_winograd`] and [`Self::set_winograd_tile`]. Errors as they do.
    pub fn set_settings(&mut self, settings: &ConvSettings) -> Result<()> {
        self.set_convolutions(settings.precision, settings.conv_tile)?;
        self.set_winograd(settings.winograd)?;
        self.set_winograd_tile(settings.winograd_tile)
    }

    /// A trainer continuing `checkpoint` at batch `batch`: its weights, momentum, step count and settings.
    pub fn from_checkpoint(gpu: G, checkpoint: &Checkpoint, batch: usize) -> Result<Self> {
        let c = checkpoint;
        let settings = ConvSettings::for_adapter(&gpu);
        let mut me = Self::with_weights(gpu, &c.cfg, batch, c.classes, c.step_cfg, &c.state, &c.head, settings)?;
        me.load(checkpoint)?;
        Ok(me)
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The network.
    pub fn config(&self) -> &IResNetConfig {
        &self.net.cfg
    }

    /// The step configuration (with the current learning rate).
    pub fn step_config(&self) -> &StepConfig {
        &self.step_cfg
    }

    /// The training batch size B.
    pub fn batch(&self) -> usize {
        self.net.batch
    }

    /// GPU memory allocated, by purpose.
    pub fn memory(&self) -> MemoryUse {
        let h = &self.plan.head;
        let scratch = [&h.emb_unit, &h.partials, &h.dcos, &h.emb_partials].iter().map(|t| t.bytes()).sum::<u64>();
        let w_unit = 4 * (h.w_unit.len() + h.w_norm.len()) as u64;
        let clip = self.plan.clip.partials.bytes() + self.plan.head_norm.partials.bytes();
        let mut m = self.net.memory;
        m.head += scratch + w_unit;
        m.scratch += clip;
        m
    }

    /// The arithmetic of the convolutions.
    pub fn precision(&self) -> ConvPrecision {
        self.k.conv.precision()
    }

    /// Mixed precision's current loss scale (`None` in f32).
    pub fn loss_scale(&self) -> Option<LossScale> {
        self.loss_scale
    }

    /// Sets mixed precision's loss scale `S` (a power of two from 1 to [`LossScale::MAX`]) and restarts its growth
    /// count, e.g. to resume a run at the scale it had reached. Errors in f32.
    pub fn set_loss_scale(&mut self, scale: f32) -> Result<()> {
        let Some(ls) = &mut self.loss_scale else { bail!("the loss scale applies to mixed precision only") };
        ensure!(
            (1.0..=LossScale::MAX).contains(&scale) && scale.log2().fract() == 0.0,
            "loss scale {scale}: not a power of two from 1 to {}",
            LossScale::MAX
        );
        *ls = LossScale { scale, good_steps: 0 };
        self.write_loss_scale()
    }

    /// Switches the convolutions to `precision` (f32 is the default): recompiles them and rebuilds the step.
    /// Mixed precision starts with the loss scale [`LossScale::INITIAL`]. Errors as [`Conv2d::mixed`] where the
    /// adapter cannot.
    pub fn set_precision(&mut self, precision: ConvPrecision) -> Result<()> {
        self.set_convolutions(precision, self.k.conv_tile)
    }

    /// [`Self::set_precision`] and [`Self::set_conv_tile`] at once (one compilation; a tile that fits the adapter
    /// in one precision only is reached without passing through the other). Errors as [`Conv2d::build`], or where
    /// the step cannot be rebuilt with the new kernels, and then leaves the trainer as it was.
    pub fn set_convolutions(&mut self, precision: ConvPrecision, tile: ConvTileChoice) -> Result<()> {
        let new_precision = precision != self.precision();
        if !new_precision && tile == self.k.conv_tile {
            return Ok(());
        }
        let conv = Conv2d::build(&self.gpu, precision, tile.tiling(&self.gpu))?;
        let old = (
            std::mem::replace(&mut self.k.conv, conv),
            std::mem::replace(&mut self.k.conv_tile, tile),
            std::mem::take(&mut self.k.products),
        );
        // E.g. a tile whose splits need more scratch than the device gives: back to the kernels that ran.
        self.rebuild_or_restore(|k| (k.conv, k.conv_tile, k.products) = old)?;
        if new_precision {
            self.loss_scale = match precision {
                ConvPrecision::F32 => None,
                ConvPrecision::Mixed => Some(LossScale { scale: LossScale::INITIAL, good_steps: 0 }),
            };
            self.write_loss_scale()?;
        }
        Ok(())
    }

    /// Which 3x3 stride-1 convolutions run as Winograd (in mixed precision the transforms read and write its f16
    /// activations, F(2x2)'s products run on tensor cores and F(4x4)'s in f32; see `Kernels::products`): those
    /// with at least `min_channels` input and output channels, or none for `None`. Reallocates the Winograd workspace
    /// and rebuilds the step. The default is [`default_winograd`] ([`ConvSettings::for_adapter`]). Errors where the
    /// step cannot be rebuilt (e.g. a workspace larger than a binding of the adapter), and then leaves the trainer as
    /// it was.
    pub fn set_winograd(&mut self, min_channels: Option<usize>) -> Result<()> {
        if min_channels == self.k.winograd_min_channels {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.k.winograd_min_channels, min_channels);
        self.rebuild_or_restore(|k| k.winograd_min_channels = old)
    }

    /// Rebuilds the step after a change of `self.k`'s settings; where that fails, `restore` puts the settings back,
    /// the step is rebuilt as it was, and the error is returned: the trainer never holds settings its step does not
    /// run.
    fn rebuild_or_restore(&mut self, restore: impl FnOnce(&mut Kernels)) -> Result<()> {
        let Err(e) = self.rebuild_step() else { return Ok(()) };
        restore(&mut self.k);
        self.rebuild_step().context("rebuilding the step as it was")?;
        Err(e)
    }

    /// The Winograd workspace and the step, rebuilt for the current convolutions and choice of Winograd layers and
    /// tile.
    fn rebuild_step(&mut self) -> Result<()> {
        self.net.reallocate_storage(&self.gpu, self.k.conv.activations())?;
        self.net.reallocate_winograd(&self.gpu, &self.k)?;
        self.plan = Plan::new(&self.gpu, &self.k, &self.net, &self.step_cfg)?;
        self.eval = None;
        Ok(())
    }

    /// The current choice of Winograd layers (see [`Self::set_winograd`]).
    pub fn winograd(&self) -> Option<usize> {
        self.k.winograd_min_channels
    }

    /// Which tile the Winograd convolutions run with: F(4x4, 3x3), F(2x2, 3x3), or each layer the one
    /// [`WinogradTileChoice::Auto`] picks (the default). Reallocates the Winograd workspace and rebuilds the step;
    /// errors as [`Self::set_winograd`] does, and then leaves the trainer as it was.
    pub fn set_winograd_tile(&mut self, tile: WinogradTileChoice) -> Result<()> {
        if tile == self.k.winograd_tile {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.k.winograd_tile, tile);
        self.rebuild_or_restore(|k| k.winograd_tile = old)
    }

    /// The workgroup tile of the convolutions (and of Winograd's batched products): the adapter's (the default) or
    /// a given shape. Recompiles them and rebuilds the step; errors as [`Conv2d::build`] where the adapter cannot
    /// run that tile, and then leaves the trainer as it was.
    pub fn set_conv_tile(&mut self, tile: ConvTileChoice) -> Result<()> {
        self.set_convolutions(self.precision(), tile)
    }

    /// The current choice of convolution tile (see [`Self::set_conv_tile`]).
    pub fn conv_tile(&self) -> ConvTileChoice {
        self.k.conv_tile
    }

    /// The current choice of Winograd tile (see [`Self::set_winograd_tile`]).
    pub fn winograd_tile(&self) -> WinogradTileChoice {
        self.k.winograd_tile
    }

    fn write_loss_scale(&self) -> Result<()> {
        let s = self.loss_scale.map_or(1.0, |l| l.scale);
        self.gpu.write(&self.net.loss_scale, &[s, 1.0 / s])
    }

    /// Dispatches recorded per training step (from u8 images).
    pub fn dispatches_per_step(&self) -> usize {
        self.plan.dispatches(true, Part::Whole).map_or(0, |d| d.len())
    }

    /// One training step on the network input `input (B, 3, H, W)` given as floats (skipping the u8
    /// preprocessing: e.g. reference vectors), `labels (B)` and `margins_raw (B)`. Otherwise as
    /// [`Backend::step`].
    pub fn step_input(&mut self, input: &[f32], labels: &[u32], margins_raw: &[f32]) -> Result<StepReport> {
        let net = &self.net;
        ensure!(input.len() == net.input.len, "input: {} floats, a batch needs {}", input.len(), net.input.len);
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(elasticface_core::Error::NonFinite { what: "input", index: i }.into());
        }
        self.run_step(false, 1, &|me, _| {
            me.gpu.write_f32_as(&me.net.input, input)?;
            me.plan.head.write_step(&me.gpu, labels, margins_raw)
        })
    }

    /// One training step like [`Backend::step`] (the weights move), run with a GPU timestamp around every dispatch
    /// ([`Gpu::profile`]): each dispatch's label (its kernel) and GPU seconds, in recording order. The step's report
    /// is not checked and the step counter does not advance; profile after the timed steps.
    pub fn profile_step(&mut self, batch: &Batch, margins_raw: &[f32]) -> Result<Vec<(String, f64)>> {
        let n = self.check_batch(batch, margins_raw)?;
        ensure!(n == 1, "profiling takes one batch of {}, not {}", self.net.batch, batch.len());
        self.write_micro_batch(batch, margins_raw, 0)?;
        let dispatches = self.plan.dispatches(true, Part::Whole)?;
        let times = self.gpu.profile(&dispatches)?;
        Ok(dispatches.iter().zip(times).map(|(d, t)| (d.label.clone(), t)).collect())
    }

    /// Checks a step's batch and margins before anything runs: `N B` images (`N >= 1`) of the network's size with
    /// their flips, labels below the class count and finite margins. Returns `N`.
    fn check_batch(&self, batch: &Batch, margins_raw: &[f32]) -> Result<usize> {
        let (b, cfg) = (self.net.batch, &self.net.cfg);
        let n = batch.len() / b;
        ensure!(
            n > 0 && batch.len() == n * b,
            "a batch of {} images: the GPU trainer was built for {b} (or a step of several micro-batches of {b})",
            batch.len()
        );
        ensure!(
            batch.images.len() == batch.len() * cfg.input_len() && batch.flips.len() == batch.len(),
            "batch images are not {} x {}x{}x3 bytes with as many flips",
            batch.len(),
            cfg.input_h,
            cfg.input_w
        );
        ensure!(margins_raw.len() == batch.len(), "{} margins for {} images", margins_raw.len(), batch.len());
        for i in 0..n {
            let samples = i * b..(i + 1) * b;
            let checked = self.plan.head.check_step(&batch.labels[samples.clone()], &margins_raw[samples]);
            match n {
                1 => checked?,
                _ => checked.with_context(|| format!("micro-batch {i} of {n}"))?,
            }
        }
        Ok(n)
    }

    /// Uploads micro-batch `i` of `batch` (its images `i B..(i + 1) B`, their flips, labels and margins).
    fn write_micro_batch(&self, batch: &Batch, margins_raw: &[f32], i: usize) -> Result<()> {
        let net = &self.net;
        let (b, per) = (net.batch, net.cfg.input_len());
        let samples = i * b..(i + 1) * b;
        self.gpu.write_bytes(&net.images, &batch.images[samples.start * per..samples.end * per])?;
        let flips: Vec<u32> = batch.flips[samples.clone()].iter().map(|&f| u32::from(f)).collect();
        self.gpu.write(&net.flips, &flips)?;
        self.plan.head.write_step(&self.gpu, &batch.labels[samples.clone()], &margins_raw[samples])
    }

    /// The commands of one step's `part` and, where it ends the step, the read-back of its report. Mixed
    /// precision saves the running statistics first, in the same submission, at the start of a step (see
    /// [`LossScale`]).
    fn record_step(&self, preprocess: bool, part: Part) -> Result<Recorded> {
        let copies = match (self.loss_scale, part) {
            (Some(_), Part::Whole | Part::First) => self.net.running_copies(true),
            _ => Vec::new(),
        };
        let report: &[&Tensor] = if part.ends_the_step() { &[&self.net.report] } else { &[] };
        self.gpu.record_and_read(&copies, &self.plan.dispatches(preprocess, part)?, report)
    }

    /// Runs a step of `n` micro-batches (`n = 1`: a whole step of B) and reads its report: for each micro-batch
    /// `write(self, i)` uploads its inputs, labels and margins, then it is submitted; only the last is waited for.
    /// With mixed precision, a step whose backbone gradient overflowed runs again (every micro-batch) at half the
    /// loss scale.
    ///
    /// A step's commands are the same every time (its inputs, labels, margins and loss scale are written to buffers
    /// before it is submitted), so the next step's (or micro-batch's) are recorded while this one runs: recording
    /// and finishing r100's 2,060 dispatches takes the host a few milliseconds, which the GPU would otherwise wait
    /// for. Writes to a buffer queued after a submission take effect after it (wgpu orders them on the queue), so
    /// the next micro-batch's images are uploaded while the last one still runs.
    fn run_step(
        &mut self,
        preprocess: bool,
        n: usize,
        write: &dyn Fn(&Self, usize) -> Result<()>,
    ) -> Result<StepReport> {
        if n > 1 {
            self.add_sums()?;
            let sums = self.net.sums.as_ref().context("gradient sums")?;
            self.gpu.write(&sums.micro_batches, &[n as f32, 1.0 / n as f32])?;
        }
        loop {
            let mut report: Vec<f32> = Vec::new();
            for i in 0..n {
                let part = Part::of(i, n);
                write(self, i)?;
                let step = match self.plan.ahead.take() {
                    Some(ahead) if ahead.preprocess == preprocess && ahead.part == part => ahead.step,
                    _ => self.record_step(preprocess, part)?,
                };
                let submitted = self.gpu.submit(step);
                let next = Part::of((i + 1) % n, n);
                self.plan.ahead = Some(Ahead { preprocess, part: next, step: self.record_step(preprocess, next)? });
                if part.ends_the_step() {
                    report = self.gpu.receive(submitted)?;
                }
            }
            let flags = report[REPORT_FLAGS] as u32;
            match &mut self.loss_scale {
                Some(ls) if flags == NON_FINITE_BACKBONE && ls.scale > 1.0 => {
                    ls.scale /= 2.0;
                    ls.good_steps = 0;
                    // The retry starts from the running statistics of before this try.
                    self.gpu.copy(&self.net.running_copies(false))?;
                    self.write_loss_scale()?;
                    continue;
                }
                _ if flags != 0 => return Err(non_finite(flags, report[REPORT_LOSS], self.steps)),
                Some(ls) => {
                    ls.good_steps += 1;
                    if ls.good_steps >= LossScale::GROWTH_INTERVAL && ls.scale < LossScale::MAX {
                        ls.scale *= 2.0;
                        ls.good_steps = 0;
                        self.write_loss_scale()?;
                    }
                }
                None => {}
            }
            self.steps += 1;
            return Ok(StepReport { loss: report[REPORT_LOSS], grad_norm: report[REPORT_BACKBONE_NORM] });
        }
    }

    /// Allocates the sums of gradient accumulation and rebuilds the step with them, unless it has them already.
    fn add_sums(&mut self) -> Result<()> {
        if self.plan.accumulate.is_none() {
            self.net.add_sums(&self.gpu)?;
            self.plan = Plan::new(&self.gpu, &self.k, &self.net, &self.step_cfg)?;
        }
        Ok(())
    }

    /// Embeddings `(N, E)` in evaluation mode of `N` network inputs `input (N, 3, H, W)` given as floats, in
    /// chunks of up to B. (Overwrites the activations of the last training step.)
    pub fn embed_input(&mut self, input: &[f32]) -> Result<Vec<f32>> {
        let per = self.net.cfg.input_len();
        ensure!(
            input.len().is_multiple_of(per),
            "embed: {} floats is not a whole number of {per}-float inputs",
            input.len()
        );
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(elasticface_core::Error::NonFinite { what: "input", index: i }.into());
        }
        let mut out = Vec::with_capacity(input.len() / per * self.net.cfg.embedding);
        for chunk in input.chunks(self.net.batch * per) {
            let n = chunk.len() / per;
            self.gpu.write_f32_as(&first(&self.net.input, n)?, chunk)?;
            out.extend(self.run_eval(n, false)?);
        }
        Ok(out)
    }

    /// Runs the evaluation forward of the batch (preprocessing it first or not) and reads the embeddings `(n, E)`
    /// of its first `n` samples (see [`EvalPlan`]).
    fn run_eval(&mut self, n: usize, preprocess: bool) -> Result<Vec<f32>> {
        ensure!(n <= self.net.batch, "embed: a chunk of {n} images on a trainer of batch {}", self.net.batch);
        if self.eval.is_none() {
            let (gpu, net) = (&*self.gpu, &self.net);
            let b = Builder { gpu, k: &self.k, net, bn: self.step_cfg.bn };
            let image = ImageShape { h: net.cfg.input_h, w: net.cfg.input_w };
            self.eval = Some(EvalPlan {
                preprocess: self.k.preprocess.forward(gpu, net.batch, &image, &net.images, &net.flips, &net.input)?,
                forward: b.forward(Mode::Eval)?,
            });
        }
        let plan = self.eval.as_ref().context("the evaluation plan was just built")?;
        let pre = preprocess.then_some(&plan.preprocess);
        let list: Vec<&Dispatch> = pre.into_iter().chain(&plan.forward).collect();
        self.gpu.run_and_read(&list, &first(&self.net.tail.features_out, n)?)
    }

    /// Reads tensors back, concatenated, in groups that fit one staging buffer.
    fn read_all(&self, tensors: &[&Tensor]) -> Result<Vec<f32>> {
        let limit = self.gpu.caps.max_buffer.min(256 << 20);
        let mut out = Vec::new();
        let mut group: Vec<&Tensor> = Vec::new();
        let mut bytes = 0;
        for &t in tensors {
            if !group.is_empty() && bytes + t.bytes() > limit {
                out.extend(self.gpu.read_concat::<f32>(&group)?);
                group.clear();
                bytes = 0;
            }
            group.push(t);
            bytes += t.bytes();
        }
        out.extend(self.gpu.read_concat::<f32>(&group)?);
        Ok(out)
    }

    /// The backbone state, in the layout of [`IResNetConfig::tensors`] (waits for the GPU).
    pub fn state(&self) -> Result<Vec<f32>> {
        let tensors: Vec<&Tensor> = self.net.params.iter().map(|p| &p.value).collect();
        self.read_all(&tensors)
    }

    /// A state-layout vector of the trainable tensors' `pick` (gradient or momentum), zero elsewhere.
    fn read_trainable(&self, pick: impl Fn(&Param) -> Option<&Tensor>) -> Result<Vec<f32>> {
        let infos: Vec<TensorInfo> = self.net.params.iter().filter(|p| pick(p).is_some()).map(|p| p.info).collect();
        let tensors: Vec<&Tensor> = self.net.params.iter().filter_map(&pick).collect();
        let values = self.read_all(&tensors)?;
        let mut out = vec![0.0; self.net.cfg.state_len()];
        let mut at = 0;
        for info in infos {
            out[info.range()].copy_from_slice(&values[at..at + info.len]);
            at += info.len;
        }
        Ok(out)
    }

    /// The backbone gradients of the last step after clipping (the mean over its micro-batches where it had
    /// several), state layout (zero for running statistics and frozen tensors). After a refused (non-finite) step
    /// they hold that step's gradients.
    pub fn grads(&self) -> Result<Vec<f32>> {
        self.read_trainable(|p| p.grad.as_ref())
    }

    /// The class centres `(D, C)`, the core's layout.
    pub fn head(&self) -> Result<Vec<f32>> {
        download_head_weight(&self.gpu, &self.net.head)
    }

    /// The head gradient of the last step `(D, C)` (not clipped; the mean over its micro-batches where it had
    /// several).
    pub fn head_grad(&self) -> Result<Vec<f32>> {
        download_head_weight(&self.gpu, &self.net.head_grad)
    }

    /// The momentum buffers of the backbone (state layout, zero for non-trainable tensors) and of the head `(D, C)`.
    pub fn momentum(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read_trainable(|p| p.momentum.as_ref())?, download_head_weight(&self.gpu, &self.net.head_momentum)?))
    }

    /// The embeddings `(B, E)` of the last training step's forward pass (batch statistics; its last micro-batch's
    /// where it had several), unless an evaluation ran since.
    pub fn embeddings(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.net.tail.features_out)
    }

    /// Rebuilds the step's dispatches for a new step configuration (loss, clip norm, batch norm settings are part
    /// of the dispatches' parameters; the SGD settings live in a tensor).
    fn reconfigure(&mut self, step_cfg: StepConfig) -> Result<()> {
        let same_dispatches = StepConfig { sgd: self.step_cfg.sgd, ..step_cfg } == self.step_cfg;
        if !same_dispatches {
            step_cfg.margin.validate()?;
            self.plan = Plan::new(&self.gpu, &self.k, &self.net, &step_cfg)?;
            self.eval = None;
        }
        self.step_cfg = step_cfg;
        SgdKernels::write_hyper(&self.gpu, &self.net.hyper, &self.step_cfg.sgd)
    }
}

/// The error of a step whose report has non-zero `flags`: the core's `NonFinite` (the first of loss, head
/// gradient, backbone gradient, in the core's order of checks) with what else was non-finite.
fn non_finite(flags: u32, loss: f32, step: u64) -> anyhow::Error {
    let names =
        [(NON_FINITE_LOSS, "loss"), (NON_FINITE_HEAD, "head gradient"), (NON_FINITE_BACKBONE, "backbone gradient")];
    let found: Vec<&str> = names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| *n).collect();
    let what = found.first().copied().unwrap_or("step report");
    anyhow::Error::new(elasticface_core::Error::NonFinite { what, index: 0 }).context(format!(
        "training step {step}: non-finite {} (loss {loss}); the update was skipped: parameters, head and momentum \
         are unchanged (the batch norm running statistics moved in the forward pass, as on the CPU)",
        found.join(", ")
    ))
}

impl<G: Deref<Target = Gpu>> Backend for GpuBackend<G> {
    fn step(&mut self, batch: &Batch, margins_raw: &[f32]) -> Result<StepReport> {
        let n = self.check_batch(batch, margins_raw)?;
        self.run_step(true, n, &|me, i| me.write_micro_batch(batch, margins_raw, i))
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.step_cfg.sgd.lr = lr;
        SgdKernels::write_hyper(&self.gpu, &self.net.hyper, &self.step_cfg.sgd)
    }

    fn embed(&mut self, images: &[u8], flips: &[bool]) -> Result<Vec<f32>> {
        let (b, per) = (self.net.batch, self.net.cfg.input_len());
        ensure!(images.len() == flips.len() * per, "embed: {} bytes for {} images", images.len(), flips.len());
        let mut out = Vec::with_capacity(flips.len() * self.net.cfg.embedding);
        for (imgs, fl) in images.chunks(b * per).zip(flips.chunks(b)) {
            let n = fl.len();
            let words = imgs.len().div_ceil(4);
            self.gpu.write_bytes(&self.net.images.view(&self.net.images.label, &[words])?, imgs)?;
            let flip_words: Vec<u32> = fl.iter().map(|&f| u32::from(f)).collect();
            self.gpu.write(&first(&self.net.flips, n)?, &flip_words)?;
            out.extend(self.run_eval(n, true)?);
        }
        Ok(out)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn checkpoint(&self, seed: u64, position: Position, run: serde_json::Value) -> Result<Checkpoint> {
        let (momentum, head_momentum) = self.momentum()?;
        Ok(Checkpoint {
            cfg: self.net.cfg,
            classes: self.net.classes,
            step_cfg: self.step_cfg,
            seed,
            step: self.steps,
            position,
            state: self.state()?,
            head: self.head()?,
            momentum,
            head_momentum,
            run,
            loss_scale: self.loss_scale,
        })
    }

    fn load(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let (c, net) = (checkpoint, &self.net);
        if c.cfg != net.cfg || c.classes != net.classes {
            bail!(
                "the checkpoint is for {:?} with {} classes, the trainer for {:?} with {}",
                c.cfg,
                c.classes,
                net.cfg,
                net.classes
            );
        }
        let (e, k) = (net.cfg.embedding, net.classes);
        ensure!(c.state.len() == net.cfg.state_len() && c.momentum.len() == c.state.len(), "checkpoint: state sizes");
        ensure!(c.head.len() == e * k && c.head_momentum.len() == e * k, "checkpoint: head sizes");
        for p in &net.params {
            self.gpu.write(&p.value, &c.state[p.info.range()])?;
            if let Some(m) = &p.momentum {
                self.gpu.write(m, &c.momentum[p.info.range()])?;
            }
        }
        self.gpu.write_split(&net.head, &transpose(e, k, &c.head))?;
        self.gpu.write_split(&net.head_momentum, &transpose(e, k, &c.head_momentum))?;
        self.reconfigure(c.step_cfg)?;
        self.steps = c.step;
        // A mixed-precision run's scale goes on; an f32 checkpoint leaves mixed precision's where it is.
        if let (Some(ls), Some(saved)) = (&mut self.loss_scale, c.loss_scale) {
            ensure!(
                (1.0..=LossScale::MAX).contains(&saved.scale) && saved.scale.log2().fract() == 0.0,
                "checkpoint: a loss scale of {} (a power of two from 1 to {} expected)",
                saved.scale,
                LossScale::MAX
            );
            *ls = saved;
            self.write_loss_scale()?;
        }
        Ok(())
    }

    /// Reads the backbone alone: the head and the momentum (most of a checkpoint at 85,742 classes) stay on the GPU.
    fn backbone(&self) -> Result<Backbone> {
        Ok(Backbone { cfg: self.net.cfg, bn: self.step_cfg.bn, state: self.state()?, steps: self.steps })
    }

    fn device(&self) -> String {
        let mut how = Vec::new();
        if self.precision() == ConvPrecision::Mixed {
            how.push(
                if self.gpu.caps.cooperative_matrix.is_some() {
                    "mixed precision"
                } else {
                    "mixed precision, emulated"
                }
                .into(),
            );
        }
        if let (Some(c), Some(_)) = (self.k.winograd_min_channels, &self.net.winograd) {
            let tile = match self.k.winograd_tile {
                WinogradTileChoice::Auto => "F(4x4) or F(2x2) by width",
                WinogradTileChoice::F2x2 => "F(2x2)",
                WinogradTileChoice::F4x4 => "F(4x4)",
            };
            how.push(format!("Winograd {tile} from {c} channels"));
        }
        if let ConvTileChoice::Shape(tile) = self.k.conv_tile {
            how.push(format!("{tile} convolution tiles"));
        }
        if how.is_empty() {
            self.gpu.info.name.clone()
        } else {
            format!("{} ({})", self.gpu.info.name, how.join(", "))
        }
    }
}
