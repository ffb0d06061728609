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
//! Evaluation ([`Backend::embed`]) records the forward pass alone, for each chunk size, built on first use.
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
//! precision) and 0.7 GB of head (85,742 classes);
//! [`GpuBackend::memory`] reports what a backend allocated.
//!
//! [`Capabilities::max_binding`]: crate::gpu::Capabilities::max_binding

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::margin::HeadShape;
use elasticface_core::model::{
    init_head, init_state, BlockSpec, IResNetConfig, Mode, StepConfig, StepReport, TensorInfo, TensorKind,
    TrainerLayout,
};
use elasticface_core::nn::{BatchNorm, BatchNormShape, Conv2dShape, ImageShape, LinearShape, WinogradTile};
use elasticface_core::rng::Philox4x32;

use super::cpu::INIT_STREAM;
use super::Backend;
use crate::checkpoint::Checkpoint;
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
use crate::gpu::{Elem, Gpu, Packed, SplitTensor, Tensor};

/// Bytes of the activations a training step keeps for the backward pass, for a batch of `batch` with the
/// convolutions in `precision`, with the 3x3 stride-1 convolutions of at least `winograd` input and output channels
/// run as Winograd (`None`: none): the formula in the [module documentation](self).
pub fn activation_bytes(cfg: &IResNetConfig, batch: usize, winograd: Option<usize>, precision: ConvPrecision) -> u64 {
    let (h, w, c0) = (cfg.input_h, cfg.input_w, cfg.widths[0]);
    let stem = 3 * h * w + 2 * c0 * h * w;
    let blocks: usize = cfg
        .blocks()
        .map(|b| {
            let out = b.c_out * b.out_h() * b.out_w();
            let prelu_kept = !conv2_is_winograd(&b, winograd);
            (1 + usize::from(prelu_kept)) * b.c_out * b.h * b.w + (2 + usize::from(b.downsample)) * out
        })
        .sum();
    let tail = cfg.fc_inputs() + 2 * cfg.embedding;
    let act = precision.activations().size();
    act * (batch * (stem + blocks)) as u64 + 4 * (batch * tail + 2 * batchnorm_channels(cfg)) as u64
}

/// The default choice of Winograd layers on `gpu`: those with at least 128 input and output channels on a
/// GPU, where a 64-channel layer's products (64 deep) may be too shallow to repay the transforms' memory passes
/// (an estimate: `bench --kernels` times both forms of every iResNet layer on the adapter at hand); from 64
/// channels on a CPU adapter, where arithmetic is all that counts (lavapipe, r18 at batch 8: 29.6 s a step
/// direct, 22.7 s from 128 channels, 18.4 s from 64).
pub fn default_winograd(gpu: &Gpu) -> Option<usize> {
    Some(if gpu.info.device_type == wgpu::DeviceType::Cpu { 64 } else { 128 })
}

/// Elements of each of the four rotating gradient buffers, stored as `elem` (as the activations' gradients are:
/// f16 in mixed precision): the largest activation, or the tail's f32 gradients (the embeddings', fc's input's)
/// where those take more bytes.
pub fn gradient_buffer_len(cfg: &IResNetConfig, batch: usize, elem: Elem) -> usize {
    let tail_f32 = batch * cfg.embedding.max(cfg.fc_inputs());
    cfg.largest_activation(batch).max(tail_f32 * Elem::F32.size() as usize / elem.size() as usize)
}

/// Channels of every batch norm of the network, summed.
fn batchnorm_channels(cfg: &IResNetConfig) -> usize {
    let blocks: usize = cfg.blocks().map(|b| b.c_in + 2 * b.c_out + if b.downsample { b.c_out } else { 0 }).sum();
    cfg.widths[0] + blocks + cfg.widths[3] + cfg.embedding
}

/// Bytes of GPU memory a [`GpuBackend`] allocated, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The backbone's state, and gradients and momentum of its trainable tensors.
    pub parameters: u64,
    /// The head: weight, gradient, momentum, and the margin head's tensors (normalised centres, scratch).
    pub head: u64,
    /// The activations kept for the backward pass: [`activation_bytes`].
    pub activations: u64,
    /// The four rotating gradient buffers.
    pub gradient_buffers: u64,
    /// The u8 images and flips of a batch, the shared scratch of the convolutions, batch norms and PReLUs, the
    /// clipping partial sums, the hyper-parameters and the step report.
    pub scratch: u64,
}

impl MemoryUse {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.parameters + self.head + self.activations + self.gradient_buffers + self.scratch
    }
}

/// How the GPU trainer runs its convolutions: what `train` and `bench` choose with `--precision`, `--winograd`,
/// `--winograd-tile` and `--conv-tile`, and what `bench --tune` compares. A trainer is built in its settings
/// ([`GpuBackend::with_settings`]), so that it allocates only what they need (mixed precision's f16 activations,
/// the Winograd workspace of the layers that run as Winograd), and can move to others
/// ([`GpuBackend::set_settings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConvSettings {
    /// Arithmetic of the convolutions.
    pub precision: ConvPrecision,
    /// The 3x3 stride-1 convolutions of at least this many input and output channels run as Winograd (`None`:
    /// none do); in mixed precision on its f16 activations, F(2x2)'s products on tensor cores, F(4x4)'s in f32.
    pub winograd: Option<usize>,
    /// The Winograd tile.
    pub winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the convolutions.
    pub conv_tile: ConvTileChoice,
}

impl ConvSettings {
    /// What `train` runs on `gpu` without flags: f32, Winograd from [`default_winograd`]'s width on, the `auto`
    /// tiles.
    pub fn for_adapter(gpu: &Gpu) -> Self {
        Self {
            precision: ConvPrecision::F32,
            winograd: default_winograd(gpu),
            winograd_tile: WinogradTileChoice::Auto,
            conv_tile: ConvTileChoice::Auto,
        }
    }

    /// The same settings with what they do not use cleared: without Winograd the tile does not matter.
    pub fn canonical(self) -> Self {
        match self.winograd {
            None => ConvSettings { winograd_tile: WinogradTileChoice::Auto, ..self },
            Some(_) => self,
        }
    }
}

impl std::fmt::Display for ConvSettings {
    /// The flags of `train` (and `bench`) that select them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.canonical();
        // `--winograd auto` is off in mixed precision.
        match (s.precision, s.winograd) {
            (ConvPrecision::Mixed, None) => write!(f, "--precision mixed")?,
            (ConvPrecision::F32, None) => write!(f, "--precision f32 --winograd off")?,
            (precision, Some(c)) => {
                let precision = if precision == ConvPrecision::Mixed { "mixed" } else { "f32" };
                write!(f, "--precision {precision} --winograd {c} --winograd-tile {}", s.winograd_tile)?
            }
        }
        match s.conv_tile {
            ConvTileChoice::Auto => Ok(()),
            tile => write!(f, " --conv-tile {tile}"),
        }
    }
}

/// The kernel families the trainer records, compiled once.
struct Kernels {
    preprocess: Preprocess,
    conv: Conv2d,
    /// Mixed precision: the f32 kernels the batched products of F(4x4) Winograd convolutions run on, compiled on
    /// first use (see [`Kernels::products`]).
    products: OnceLock<Conv2d>,
    winograd: Winograd,
    /// The 3x3 stride-1 convolutions with at least this many input and output channels run as Winograd (see
    /// [`GpuBackend::set_winograd`]); `None`: none do.
    winograd_min_channels: Option<usize>,
    /// The tile of each Winograd convolution (see [`GpuBackend::set_winograd_tile`]).
    winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the convolutions (see [`GpuBackend::set_conv_tile`]).
    conv_tile: ConvTileChoice,
    linear: Linear,
    bn: BatchNormKernels,
    margin: MarginLoss,
    sgd: SgdKernels,
    /// Mixed precision's copy of the weights in f16 (see [`Net::weights16`]).
    round: RoundToF16,
}

impl Kernels {
    /// The kernels, the convolutions compiled in `settings`. Errors as [`Conv2d::build`].
    fn new(gpu: &Gpu, settings: &ConvSettings) -> Result<Self> {
        Ok(Self {
            preprocess: Preprocess::new(gpu),
            conv: Conv2d::build(gpu, settings.precision, settings.conv_tile.tiling(gpu))?,
            products: OnceLock::new(),
            winograd: Winograd::new(gpu),
            winograd_min_channels: settings.winograd,
            winograd_tile: settings.winograd_tile,
            conv_tile: settings.conv_tile,
            linear: Linear::new(gpu),
            bn: BatchNormKernels::new(gpu),
            margin: MarginLoss::new(gpu),
            sgd: SgdKernels::new(gpu),
            round: RoundToF16::new(gpu),
        })
    }

    /// The settings these kernels run the convolutions in.
    fn settings(&self) -> ConvSettings {
        ConvSettings {
            precision: self.conv.precision(),
            winograd: self.winograd_min_channels,
            winograd_tile: self.winograd_tile,
            conv_tile: self.conv_tile,
        }
    }

    /// Whether the convolution `s` runs as Winograd.
    fn uses_winograd(&self, s: &Conv2dShape) -> bool {
        is_winograd(s, self.winograd_min_channels)
    }

    /// The kernels of the batched products of a Winograd convolution with `tile`: `conv`'s (in mixed precision
    /// f16 operands, f32 accumulation, on tensor cores), except in mixed precision with F(4x4), whose transforms
    /// amplify the f16 rounding of the transformed operands beyond mixed precision's tolerances (1.5x the
    /// largest on the PyTorch reference; on a 64-channel layer a relative error of 2.6e-3 against F(2x2)'s
    /// 5.5e-4 and the direct kernels' 3.0e-4, see the core's Winograd tests): those run on an f32 compilation
    /// with the same tiling. Errors as [`Conv2d::build`].
    fn products(&self, gpu: &Gpu, tile: WinogradTile) -> Result<&Conv2d> {
        if self.conv.precision() == ConvPrecision::F32 || tile == WinogradTile::F2x2 {
            return Ok(&self.conv);
        }
        if let Some(p) = self.products.get() {
            return Ok(p);
        }
        let built = Conv2d::build(gpu, ConvPrecision::F32, self.conv.tiling())?;
        Ok(self.products.get_or_init(|| built))
    }

    /// The tile the Winograd convolution `s` runs with in a trainer of `batch` images: chosen for the layer at
    /// the training batch, so that evaluation's chunks of fewer images (`s.n < batch`) run the same tile as the
    /// step, within the workspace sized for it.
    fn winograd_tile(&self, s: &Conv2dShape, batch: usize) -> WinogradTile {
        self.winograd_tile.tile_for(&Conv2dShape { n: batch, ..*s })
    }
}

/// Whether the convolution `s` runs as Winograd when those of at least `min_channels` input and output channels do.
fn is_winograd(s: &Conv2dShape, min_channels: Option<usize>) -> bool {
    min_channels.is_some_and(|c| s.c_in.min(s.c_out) >= c) && Winograd::applies(s)
}

/// Whether block `b`'s conv2 runs as Winograd (see [`is_winograd`]): then it applies bn2 and the PReLU as it reads
/// conv1's output, and the PReLU's output is not kept.
fn conv2_is_winograd(b: &BlockSpec, min_channels: Option<usize>) -> bool {
    is_winograd(&BlockShapes::new(b, 1).conv2, min_channels)
}

/// Which [`MemoryUse`] field an allocation counts towards.
#[derive(Clone, Copy)]
enum Purpose {
    Parameters,
    Head,
    Activations,
    GradientBuffers,
    Scratch,
}

/// Allocates the trainer's tensors, refusing any larger than one binding, and counts their bytes.
struct Alloc<'a> {
    gpu: &'a Gpu,
    used: MemoryUse,
}

impl Alloc<'_> {
    fn zeros(&mut self, purpose: Purpose, label: &str, shape: &[usize]) -> Result<Tensor> {
        self.zeros_as(purpose, label, shape, Elem::F32)
    }

    /// [`Self::zeros`] with elements of `elem`.
    fn zeros_as(&mut self, purpose: Purpose, label: &str, shape: &[usize], elem: Elem) -> Result<Tensor> {
        let bytes = elem.size() * shape.iter().product::<usize>() as u64;
        let limit = self.gpu.caps.max_binding.min(self.gpu.caps.max_buffer);
        if bytes > limit {
            bail!(
                "{label} {shape:?} needs {bytes} bytes, more than one storage binding of this adapter holds ({limit} \
                 bytes); train with a smaller batch or a smaller input"
            );
        }
        let t = self.gpu.zeros_as(label, shape, elem);
        self.count(purpose, t.bytes());
        Ok(t)
    }

    /// [`Gpu::packed`], counted.
    fn packed(&mut self, purpose: Purpose, label: &str, parts: &[(String, Vec<usize>)]) -> Result<Packed> {
        let packed = self.gpu.packed(label, parts)?;
        self.count(purpose, packed.groups.iter().map(Tensor::bytes).sum());
        Ok(packed)
    }

    fn count(&mut self, purpose: Purpose, bytes: u64) {
        let field = match purpose {
            Purpose::Parameters => &mut self.used.parameters,
            Purpose::Head => &mut self.used.head,
            Purpose::Activations => &mut self.used.activations,
            Purpose::GradientBuffers => &mut self.used.gradient_buffers,
            Purpose::Scratch => &mut self.used.scratch,
        };
        *field += bytes;
    }

    /// The saved batch statistics of a batch norm of `c` channels.
    fn stats(&mut self, label: &str, c: usize) -> Result<Stats> {
        Ok(Stats {
            mean: self.zeros(Purpose::Activations, &format!("{label}.batch_mean"), &[c])?,
            var: self.zeros(Purpose::Activations, &format!("{label}.batch_var"), &[c])?,
        })
    }
}

/// One tensor of the state dict, with its gradient and momentum when it trains.
struct Param {
    info: TensorInfo,
    value: Tensor,
    grad: Option<Tensor>,
    momentum: Option<Tensor>,
}

/// The groups of the packed state tensors ([`Gpu::packed`]): the trainable values, their gradients and their
/// momentum packed alike (group `i` of each holds the same tensors at the same offsets), so that clipping and SGD
/// take one dispatch per group instead of one per tensor; and the running statistics, saved and restored with one
/// copy per group. The frozen tensors have buffers of their own.
struct Packs {
    values: Vec<Tensor>,
    grads: Vec<Tensor>,
    momentum: Vec<Tensor>,
    running: Vec<Tensor>,
}

impl Packs {
    /// Every state tensor of `cfg` in state order, zero, with its gradient and momentum where it trains; and the
    /// groups that hold them.
    fn new(a: &mut Alloc, cfg: &IResNetConfig) -> Result<(Vec<Param>, Self)> {
        let infos: Vec<TensorInfo> = cfg.tensors().collect();
        let parts = |kind: TensorKind, prefix: &str| -> Vec<(String, Vec<usize>)> {
            infos.iter().filter(|i| i.kind == kind).map(|i| (format!("{prefix}{i}"), i.dims().to_vec())).collect()
        };
        let mut pack = |label: &str, kind: TensorKind, prefix: &str| -> Result<(Vec<Tensor>, _)> {
            let Packed { groups, parts } = a.packed(Purpose::Parameters, label, &parts(kind, prefix))?;
            Ok((groups, parts.into_iter()))
        };
        let (values, mut value_parts) = pack("parameters", TensorKind::Trainable, "")?;
        let (grads, mut grad_parts) = pack("gradients", TensorKind::Trainable, "grad.")?;
        let (momentum, mut momentum_parts) = pack("momentum", TensorKind::Trainable, "momentum.")?;
        let (running, mut running_parts) = pack("running statistics", TensorKind::RunningStat, "")?;
        let mut params = Vec::with_capacity(infos.len());
        for info in infos {
            let next =
                |parts: &mut std::vec::IntoIter<Tensor>| parts.next().with_context(|| format!("{info}: unpacked"));
            let param = match info.kind {
                TensorKind::Trainable => Param {
                    info,
                    value: next(&mut value_parts)?,
                    grad: Some(next(&mut grad_parts)?),
                    momentum: Some(next(&mut momentum_parts)?),
                },
                TensorKind::RunningStat => Param { info, value: next(&mut running_parts)?, grad: None, momentum: None },
                TensorKind::Frozen => {
                    let value = a.zeros(Purpose::Parameters, &info.to_string(), info.dims())?;
                    Param { info, value, grad: None, momentum: None }
                }
            };
            params.push(param);
        }
        let packs = Self { values, grads, momentum, running };
        Ok((params, packs))
    }
}

/// A batch norm's saved batch statistics, `(C)` each: the mean and the biased variance.
struct Stats {
    mean: Tensor,
    var: Tensor,
}

/// The stem: indices of its modules' first state tensors, and its activations `(B, C0, H, W)`.
struct Stem {
    conv: usize,
    bn: usize,
    prelu: usize,
    conv_out: Tensor,
    /// bn1's output is recomputed in the backward pass (see the module documentation).
    bn_stats: Stats,
    prelu_out: Tensor,
}

/// The downsample shortcut of a block: its modules and the conv output `(B, C_out, h', w')`.
struct Shortcut {
    conv: usize,
    bn: usize,
    conv_out: Tensor,
    bn_stats: Stats,
}

/// One `IBasicBlock`: indices of its modules' first state tensors and its activations (see the core's layout).
struct Block {
    spec: BlockSpec,
    bn1: usize,
    conv1: usize,
    bn2: usize,
    prelu: usize,
    conv2: usize,
    bn3: usize,
    shortcut: Option<Shortcut>,
    /// Saved statistics of bn1 (its output `(B, C_in, h, w)` is never kept: recomputed in the backward pass, or,
    /// where conv1 runs as Winograd, applied by conv1's input transform in both passes).
    a1_stats: Stats,
    /// `(B, C_out, h, w)` conv1 output.
    c1: Tensor,
    /// Saved statistics of bn2 (its output `(B, C_out, h, w)` is recomputed in the backward pass).
    a2_stats: Stats,
    /// `(B, C_out, h, w)` prelu output, kept where conv2 runs directly (a Winograd conv2 applies bn2 and the
    /// PReLU as it reads `c1`, forward and backward, so the output is never stored).
    p: Option<Tensor>,
    /// `(B, C_out, h', w')` conv2 output (bn3's output is a temporary) and the block output.
    c2: Tensor,
    a3_stats: Stats,
    y: Tensor,
}

/// The shapes of one block's layers and activations for a batch of `n`.
struct BlockShapes {
    input: BatchNormShape,
    full: BatchNormShape,
    out: BatchNormShape,
    conv1: Conv2dShape,
    conv2: Conv2dShape,
    downsample: Conv2dShape,
    /// `(n, C_in, h, w)`: the block input, bn1's output.
    in_dims: [usize; 4],
    /// `(n, C_out, h, w)`: conv1's, bn2's and prelu's outputs.
    full_dims: [usize; 4],
    /// `(n, C_out, h', w')`: conv2's, bn3's and the shortcut's outputs, the block output.
    out_dims: [usize; 4],
}

fn conv3(c_in: usize, c_out: usize, n: usize, h: usize, w: usize, stride: usize) -> Conv2dShape {
    Conv2dShape { n, c_in, h, w, c_out, kh: 3, kw: 3, stride, pad: 1 }
}

/// The workspace of the convolutions of `cfg` at batch `n` that `k` runs as Winograd (`None` if none).
fn winograd_workspace(
    gpu: &Gpu,
    k: &Kernels,
    cfg: &IResNetConfig,
    n: usize,
    a: &mut Alloc,
) -> Result<Option<WinogradWorkspace>> {
    let stem = conv3(3, cfg.widths[0], n, cfg.input_h, cfg.input_w, 1);
    let blocks = cfg.blocks().map(|b| BlockShapes::new(&b, n)).flat_map(|s| [s.conv1, s.conv2]);
    let mut lens: Option<WinogradLens> = None;
    for s in std::iter::once(stem).chain(blocks).filter(|s| k.uses_winograd(s)) {
        let tile = k.winograd_tile(&s, n);
        let l = Winograd::workspace_lens(gpu, k.products(gpu, tile)?, &s, tile)?;
        lens = Some(lens.map_or(l, |m| m.max(l)));
    }
    let Some(l) = lens else { return Ok(None) };
    let ws = WinogradWorkspace::allocate(&l, |label, len| a.zeros(Purpose::Scratch, label, &[len]))
        .context("the Winograd convolutions' workspace (`--winograd off` runs without it)")?;
    Ok(Some(ws))
}

impl BlockShapes {
    fn new(b: &BlockSpec, n: usize) -> Self {
        let (ho, wo) = (b.out_h(), b.out_w());
        Self {
            input: BatchNormShape { n, c: b.c_in, hw: b.h * b.w },
            full: BatchNormShape { n, c: b.c_out, hw: b.h * b.w },
            out: BatchNormShape { n, c: b.c_out, hw: ho * wo },
            conv1: conv3(b.c_in, b.c_out, n, b.h, b.w, 1),
            conv2: conv3(b.c_out, b.c_out, n, b.h, b.w, b.stride),
            downsample: Conv2dShape { kh: 1, kw: 1, pad: 0, ..conv3(b.c_in, b.c_out, n, b.h, b.w, b.stride) },
            in_dims: [n, b.c_in, b.h, b.w],
            full_dims: [n, b.c_out, b.h, b.w],
            out_dims: [n, b.c_out, ho, wo],
        }
    }
}

/// The tail: indices of its modules' first state tensors and its activations.
struct Tail {
    bn2: usize,
    fc: usize,
    features: usize,
    /// `(B, C3, H/16, W/16)`, read by `fc` as `(B, FC_IN)`.
    bn2_out: Tensor,
    bn2_stats: Stats,
    /// `(B, E)`.
    fc_out: Tensor,
    /// `(B, E)`: the embeddings.
    features_out: Tensor,
    features_stats: Stats,
}

/// Every tensor of the trainer.
struct Net {
    cfg: IResNetConfig,
    batch: usize,
    classes: usize,
    /// In state-dict order ([`IResNetConfig::tensors`]).
    params: Vec<Param>,
    /// The buffers that hold the trainable and running tensors of `params`.
    packs: Packs,
    /// Mixed precision: the trainable values' groups rounded to f16, the same element offsets as
    /// `packs.values` (see [`Gpu::packed`]), refreshed at the start of every forward pass; the direct convolutions
    /// read their weights there ([`Net::conv_weight`]), half the bytes of the f32 ones and the rounding the tensor
    /// cores would do. Empty in f32.
    weights16: Vec<Tensor>,
    stem: Stem,
    blocks: Vec<Block>,
    tail: Tail,
    /// `(words)` u32: the batch's `u8 (B, H, W, 3)` images, packed four to a word.
    images: Tensor,
    /// `(B)` u32 flip flags.
    flips: Tensor,
    /// `(B, 3, H, W)` the network input.
    input: Tensor,
    /// Four buffers of [`gradient_buffer_len`] elements, stored as the activations are: the backward pass's
    /// gradients, rotating as in the core (the tail's, from the embeddings to fc's input, seen as f32), and the
    /// forward pass's temporaries.
    grad_bufs: [Tensor; 4],
    conv_scratch: Tensor,
    /// The weight of a direct convolution's (or fc's) input gradient laid out as its products read it
    /// ([`Conv2d::phase_weights`]): f32, seen as the activations' type for the convolutions; sized by the largest.
    phased_weights: Tensor,
    /// The Winograd convolutions' workspace, where any layer runs as Winograd.
    winograd: Option<WinogradWorkspace>,
    bn_scratch: Tensor,
    /// `(C, D)` class centres, their gradient and momentum, split alike.
    head: SplitTensor,
    head_grad: SplitTensor,
    head_momentum: SplitTensor,
    /// `[lr, momentum, weight_decay]`.
    hyper: Tensor,
    /// `[flags, loss, backbone norm, head norm]`.
    report: Tensor,
    /// `[S, 1 / S]`: the loss scale of mixed precision (see [`LossScale`]).
    loss_scale: Tensor,
    /// Every batch norm running statistic as it was before the step (mixed precision saves them there, and a
    /// step that is tried again restores them).
    running_backup: Tensor,
    memory: MemoryUse,
}

/// The f16 copy of the trainable values' groups where the convolutions read `elem` weights (mixed precision),
/// else none (see [`Net::weights16`]).
fn weights16(a: &mut Alloc, packs: &Packs, elem: Elem) -> Result<Vec<Tensor>> {
    if elem == Elem::F32 {
        return Ok(Vec::new());
    }
    let copy = |g: &Tensor| a.zeros_as(Purpose::Parameters, &format!("{} (f16)", g.label), &[g.len], Elem::F16);
    packs.values.iter().map(copy).collect()
}

/// The four rotating gradient buffers for `cfg` at batch `n`, of elements `elem` (the activations' gradients').
fn gradient_buffers(a: &mut Alloc, cfg: &IResNetConfig, n: usize, elem: Elem) -> Result<[Tensor; 4]> {
    let len = gradient_buffer_len(cfg, n, elem);
    let [g0, g1, g2, g3] =
        [0, 1, 2, 3].map(|i| a.zeros_as(Purpose::GradientBuffers, &format!("gradient buffer {i}"), &[len], elem));
    Ok([g0?, g1?, g2?, g3?])
}

/// The first `n` samples of a batch-major tensor `(B, ...)`, as `(n, ...)` on the same buffer.
fn first(t: &Tensor, n: usize) -> Result<Tensor> {
    let mut shape = t.shape.clone();
    shape[0] = n;
    t.view(&format!("{}[..{n}]", t.label), &shape)
}

impl Net {
    /// Allocates every tensor for `cfg` at batch `batch` with `classes` classes and uploads `state` and the head
    /// `head (D, C)`; gradients and momentum start at zero.
    fn new(
        gpu: &Gpu,
        k: &Kernels,
        cfg: &IResNetConfig,
        batch: usize,
        classes: usize,
        state: &[f32],
        head: &[f32],
    ) -> Result<Self> {
        let mut a = Alloc { gpu, used: MemoryUse::default() };
        let (n, h, w, e) = (batch, cfg.input_h, cfg.input_w, cfg.embedding);
        ensure!(state.len() == cfg.state_len(), "state: {} floats, the network has {}", state.len(), cfg.state_len());

        let (params, packs) = Packs::new(&mut a, cfg)?;
        for p in &params {
            gpu.write(&p.value, &state[p.info.range()])?;
        }
        let weights16 = weights16(&mut a, &packs, k.conv.activations())?;
        let mut cursor = Cursor { params: &params, next: 0 };

        let act = Purpose::Activations;
        // The activations the convolutions read and write, stored as they store them (f16 in mixed precision).
        let elem = k.conv.activations();
        let c0 = cfg.widths[0];
        let stem = Stem {
            conv: cursor.module("conv1")?,
            bn: cursor.module("bn1")?,
            prelu: cursor.module("prelu")?,
            conv_out: a.zeros_as(act, "conv1.out", &[n, c0, h, w], elem)?,
            bn_stats: a.stats("bn1", c0)?,
            prelu_out: a.zeros_as(act, "prelu.out", &[n, c0, h, w], elem)?,
        };
        let mut blocks = Vec::new();
        for spec in cfg.blocks() {
            let name = format!("layer{}.{}", spec.stage + 1, spec.index);
            let sh = BlockShapes::new(&spec, n);
            let mut zeros = |what: &str, dims: &[usize]| a.zeros_as(act, &format!("{name}.{what}"), dims, elem);
            let c1 = zeros("conv1.out", &sh.full_dims)?;
            let p = if k.uses_winograd(&sh.conv2) { None } else { Some(zeros("prelu.out", &sh.full_dims)?) };
            let (c2, y) = (zeros("conv2.out", &sh.out_dims)?, zeros("out", &sh.out_dims)?);
            let ds_out = if spec.downsample { Some(zeros("downsample.0.out", &sh.out_dims)?) } else { None };
            let (bn1, conv1, bn2) = (cursor.module("bn1")?, cursor.module("conv1")?, cursor.module("bn2")?);
            let (prelu, conv2, bn3) = (cursor.module("prelu")?, cursor.module("conv2")?, cursor.module("bn3")?);
            let shortcut = match ds_out {
                Some(conv_out) => Some(Shortcut {
                    conv: cursor.module("downsample.0")?,
                    bn: cursor.module("downsample.1")?,
                    conv_out,
                    bn_stats: a.stats(&format!("{name}.downsample.1"), spec.c_out)?,
                }),
                None => None,
            };
            blocks.push(Block {
                spec,
                bn1,
                conv1,
                bn2,
                prelu,
                conv2,
                bn3,
                shortcut,
                a1_stats: a.stats(&format!("{name}.bn1"), spec.c_in)?,
                c1,
                a2_stats: a.stats(&format!("{name}.bn2"), spec.c_out)?,
                p,
                c2,
                a3_stats: a.stats(&format!("{name}.bn3"), spec.c_out)?,
                y,
            });
        }
        let c3 = cfg.widths[3];
        let tail = Tail {
            bn2: cursor.module("bn2")?,
            fc: cursor.module("fc")?,
            features: cursor.module("features")?,
            bn2_out: a.zeros(act, "bn2.out", &[n, c3, h / 16, w / 16])?,
            bn2_stats: a.stats("bn2", c3)?,
            fc_out: a.zeros(act, "fc.out", &[n, e])?,
            features_out: a.zeros(act, "features.out", &[n, e])?,
            features_stats: a.stats("features", e)?,
        };
        ensure!(cursor.next == params.len(), "the state has tensors no module claims");
        let input = a.zeros_as(act, "input", &[n, 3, h, w], elem)?;

        let shape = ImageShape { h, w };
        let scratch = Purpose::Scratch;
        let images = a.zeros(scratch, "images (u8, packed)", &[Preprocess::words(n, &shape)])?;
        let flips = a.zeros(scratch, "flips", &[n])?;
        let grad_bufs = gradient_buffers(&mut a, cfg, n, elem)?;

        // Scratch, sized by the largest layer.
        let k_conv = &k.conv;
        let mut conv_len = k_conv.scratch_len(gpu, &conv3(3, c0, n, h, w, 1))?;
        let mut bn_len = BatchNormKernels::scratch_len(&BatchNormShape { n, c: c0, hw: h * w });
        let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
        // The stem needs no input gradient.
        let mut phased_len = fc.weight_len();
        for b in &blocks {
            let s = BlockShapes::new(&b.spec, n);
            for conv in [s.conv1, s.conv2, s.downsample] {
                conv_len = conv_len.max(k_conv.scratch_len(gpu, &conv)?);
                phased_len = phased_len.max(conv.weight_len());
            }
            for bn in [s.input, s.full, s.out] {
                bn_len = bn_len.max(BatchNormKernels::scratch_len(&bn));
            }
        }
        conv_len = conv_len.max(k_conv.scratch_len(gpu, &conv_shape(&fc))?);
        for c in [c3, e] {
            bn_len = bn_len.max(BatchNormKernels::scratch_len(&BatchNormShape { n, c, hw: 1 }));
        }
        bn_len = bn_len.max(BatchNormKernels::scratch_len(&BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) }));
        let conv_scratch = a.zeros(scratch, "conv2d scratch", &[conv_len.max(1)])?;
        let phased_weights = a.zeros(scratch, "weights laid out for the input gradients", &[phased_len])?;
        let winograd = winograd_workspace(gpu, k, cfg, n, &mut a)?;
        let bn_scratch = a.zeros(scratch, "batchnorm scratch", &[bn_len])?;

        // The head, (C, D) on the GPU, split by classes where one binding cannot hold it.
        ensure!(
            head.len() == e * classes,
            "head: {} floats, (D, C) = ({e}, {classes}) needs {}",
            head.len(),
            e * classes
        );
        let head = upload_head_weight(gpu, "head.weight", e, classes, head)?;
        let head_grad = gpu.zeros_split_like("grad.head.weight", &head, e)?;
        let head_momentum = gpu.zeros_split_like("momentum.head.weight", &head, e)?;
        a.count(Purpose::Head, 3 * 4 * (e * classes) as u64);

        let hyper = a.zeros(scratch, "sgd.hyper", &[3])?;
        let report = a.zeros(scratch, "step report", &[REPORT_LEN])?;
        let loss_scale = a.zeros(scratch, "loss scale", &[2])?;
        let running_len = packs.running.iter().map(|g| g.len).sum::<usize>();
        let running_backup = a.zeros(scratch, "running statistics before the step", &[running_len])?;
        gpu.write(&loss_scale, &[1.0f32, 1.0])?;
        Ok(Self {
            cfg: *cfg,
            batch,
            classes,
            params,
            packs,
            weights16,
            stem,
            blocks,
            tail,
            images,
            flips,
            input,
            grad_bufs,
            conv_scratch,
            phased_weights,
            winograd,
            bn_scratch,
            head,
            head_grad,
            head_momentum,
            hyper,
            report,
            loss_scale,
            running_backup,
            memory: a.used,
        })
    }

    fn value(&self, i: usize) -> &Tensor {
        &self.params[i].value
    }

    /// Replaces the Winograd workspace with one for `k`'s choice of layers, and keeps the PReLU outputs of the
    /// blocks whose conv2 now runs directly (only those).
    fn reallocate_winograd(&mut self, gpu: &Gpu, k: &Kernels) -> Result<()> {
        if let Some(old) = self.winograd.take() {
            self.memory.scratch -= [old.u, old.v, old.m, old.scratch].iter().map(Tensor::bytes).sum::<u64>();
        }
        let mut a = Alloc { gpu, used: MemoryUse::default() };
        self.winograd = winograd_workspace(gpu, k, &self.cfg, self.batch, &mut a)?;
        for b in &mut self.blocks {
            let sh = BlockShapes::new(&b.spec, self.batch);
            let keep = !k.uses_winograd(&sh.conv2);
            if keep && b.p.is_none() {
                let label = format!("layer{}.{}.prelu.out", b.spec.stage + 1, b.spec.index);
                b.p = Some(a.zeros_as(Purpose::Activations, &label, &sh.full_dims, k.conv.activations())?);
            } else if !keep {
                if let Some(p) = b.p.take() {
                    self.memory.activations -= p.bytes();
                }
            }
        }
        self.memory.scratch += a.used.scratch;
        self.memory.activations += a.used.activations;
        Ok(())
    }

    /// Reallocates what the convolutions store in their precision's elements where it is not stored as `elem` (on
    /// a change of precision): the activations they read and write and the gradient buffers, zero, with the same
    /// labels and shapes, and the f16 copy of the weights (made in mixed precision, dropped in f32).
    fn reallocate_storage(&mut self, gpu: &Gpu, elem: Elem) -> Result<()> {
        if self.input.elem == elem {
            return Ok(());
        }
        let mut a = Alloc { gpu, used: MemoryUse::default() };
        self.grad_bufs = gradient_buffers(&mut a, &self.cfg, self.batch, elem)?;
        self.memory.gradient_buffers = a.used.gradient_buffers;
        self.memory.parameters -= self.weights16.iter().map(Tensor::bytes).sum::<u64>();
        self.weights16 = weights16(&mut a, &self.packs, elem)?;
        self.memory.parameters += a.used.parameters;
        let mut freed = 0;
        let mut tensors = vec![&mut self.input, &mut self.stem.conv_out, &mut self.stem.prelu_out];
        for b in &mut self.blocks {
            tensors.extend([&mut b.c1, &mut b.c2, &mut b.y]);
            tensors.extend(b.p.as_mut());
            tensors.extend(b.shortcut.as_mut().map(|s| &mut s.conv_out));
        }
        for t in tensors {
            freed += t.bytes();
            *t = a.zeros_as(Purpose::Activations, &t.label, &t.shape, elem)?;
        }
        self.memory.activations = self.memory.activations - freed + a.used.activations;
        Ok(())
    }

    /// What the direct convolutions read as the weight `weight` (a trainable value): itself, or in mixed
    /// precision its f16 copy in [`Net::weights16`].
    fn conv_weight(&self, weight: &Tensor) -> Result<Tensor> {
        if self.weights16.is_empty() {
            return weight.view(&weight.label, &weight.shape);
        }
        let g = self.packs.values.iter().position(|g| g.buffer == weight.buffer);
        let g = g.with_context(|| format!("{} is not a trainable value", weight.label))?;
        weight.same_part_of(&self.packs.values[g], &self.weights16[g])
    }

    /// Mixed precision: the dispatches that refresh [`Net::weights16`] from the trainable values, one per group.
    fn round_weights(&self, gpu: &Gpu, k: &Kernels) -> Result<Vec<Dispatch>> {
        self.packs.values.iter().zip(&self.weights16).map(|(g, g16)| k.round.run(gpu, g, g16)).collect()
    }

    /// Gradient buffer `i` seen as a tensor of `shape` holding values stored as `elem` (the forward pass's
    /// temporaries).
    fn value_buf(&self, i: usize, what: &str, shape: &[usize], elem: Elem) -> Result<Tensor> {
        self.grad_bufs[i].view_as(&format!("gradient buffer {i} ({what})"), shape, elem)
    }

    fn grad(&self, i: usize) -> Result<&Tensor> {
        self.params[i].grad.as_ref().with_context(|| format!("{} has no gradient", self.params[i].info))
    }

    /// Gradient buffer `i` seen as a tensor of `shape`, holding an activation's gradient as the buffer stores it.
    fn buf(&self, i: usize, what: &str, shape: &[usize]) -> Result<Tensor> {
        self.grad_bufs[i].view(&format!("gradient buffer {i} ({what})"), shape)
    }

    /// Gradient buffer `i` seen as an f32 tensor of `shape`: the tail's gradients, from the embeddings to fc's
    /// input, which the head and fc's kernels read and write in f32.
    fn buf_f32(&self, i: usize, what: &str, shape: &[usize]) -> Result<Tensor> {
        self.value_buf(i, what, shape, Elem::F32)
    }

    /// Copies of every running statistic into (`save`) or back from the backup: one per group.
    fn running_copies(&self, save: bool) -> Vec<BufferCopy<'_>> {
        let mut offset = 0;
        let mut copies = Vec::new();
        for group in &self.packs.running {
            let len = group.len;
            copies.push(if save {
                BufferCopy { src: group, src_offset: 0, dst: &self.running_backup, dst_offset: offset, len }
            } else {
                BufferCopy { src: &self.running_backup, src_offset: offset, dst: group, dst_offset: 0, len }
            });
            offset += len;
        }
        copies
    }
}

/// Hands out the state tensors module by module in state-dict order, checking each module's name.
struct Cursor<'a> {
    params: &'a [Param],
    next: usize,
}

impl Cursor<'_> {
    /// Index of the first state tensor of the next module, which must be called `name` (`bn1`, `downsample.0`).
    fn module(&mut self, name: &str) -> Result<usize> {
        let first = self.next;
        let module = self.params.get(first).map(|p| p.info.module).context("the state ended before the network")?;
        ensure!(module.name == name, "state order: expected `{name}`, found `{module}`");
        while self.params.get(self.next).is_some_and(|p| p.info.module == module) {
            self.next += 1;
        }
        Ok(first)
    }
}

/// Builds dispatch lists over a [`Net`].
struct Builder<'a> {
    gpu: &'a Gpu,
    k: &'a Kernels,
    net: &'a Net,
    bn: BatchNorm,
}

impl Builder<'_> {
    /// A batch norm forward in `mode` with its state tensors from index `bn`, then `then` in the same pass:
    /// `x -> y`, batch statistics into `stats` (training mode).
    #[allow(clippy::too_many_arguments)]
    fn bn_forward(
        &self,
        d: &mut Vec<Dispatch>,
        mode: Mode,
        s: &BatchNormShape,
        bn: usize,
        x: &Tensor,
        then: Epilogue<'_>,
        y: &Tensor,
        stats: &Stats,
    ) -> Result<()> {
        let (gpu, k, net) = (self.gpu, self.k, self.net);
        let [gamma, beta, mean, var] = [bn, bn + 1, bn + 2, bn + 3].map(|i| net.value(i));
        match mode {
            Mode::Train => d.extend(k.bn.forward_train(
                gpu,
                s,
                &self.bn,
                x,
                gamma,
                beta,
                then,
                mean,
                var,
                y,
                &stats.mean,
                &stats.var,
                &net.bn_scratch,
            )?),
            Mode::Eval => d.push(k.bn.forward_eval(gpu, s, &self.bn, x, gamma, beta, then, mean, var, y)?),
        }
        Ok(())
    }

    /// A training-mode batch norm's output recomputed from its input `x` and its saved batch statistics: the
    /// normalisation of the forward pass (the same kernel and arithmetic, so the same bits), without the statistics.
    fn bn_recompute(
        &self,
        d: &mut Vec<Dispatch>,
        s: &BatchNormShape,
        bn: usize,
        x: &Tensor,
        stats: &Stats,
        y: &Tensor,
    ) -> Result<()> {
        let net = self.net;
        let (gamma, beta) = (net.value(bn), net.value(bn + 1));
        let none = Epilogue::None;
        d.push(self.k.bn.forward_eval(self.gpu, s, &self.bn, x, gamma, beta, none, &stats.mean, &stats.var, y)?);
        Ok(())
    }

    /// The batch norm at `bn` (and the PReLU at `prelu`) as what a Winograd convolution's input transform applies
    /// as it reads the batch norm's input: with the batch statistics `stats` in training mode (those the forward
    /// pass computes, or saved for the backward pass), the running statistics in eval mode.
    fn input_norm<'a>(&'a self, mode: Mode, bn: usize, stats: &'a Stats, prelu: Option<usize>) -> InputNorm<'a> {
        let net = self.net;
        let (mean, var) = match mode {
            Mode::Train => (&stats.mean, &stats.var),
            Mode::Eval => (net.value(bn + 2), net.value(bn + 3)),
        };
        InputNorm {
            eps: self.bn.eps,
            mean,
            var,
            gamma: net.value(bn),
            beta: net.value(bn + 1),
            alpha: prelu.map(|i| net.value(i)),
        }
    }

    /// A batch norm whose output only a Winograd convolution reads (through [`Self::input_norm`]): its batch
    /// statistics of `x` in training mode (into `stats`; the running statistics move), nothing in eval mode.
    fn bn_statistics(
        &self,
        d: &mut Vec<Dispatch>,
        mode: Mode,
        s: &BatchNormShape,
        bn: usize,
        x: &Tensor,
        stats: &Stats,
    ) -> Result<()> {
        if mode == Mode::Train {
            let net = self.net;
            let (mean, var) = (net.value(bn + 2), net.value(bn + 3));
            d.extend(self.k.bn.statistics(
                self.gpu,
                s,
                &self.bn,
                x,
                mean,
                var,
                &stats.mean,
                &stats.var,
                &net.bn_scratch,
            )?);
        }
        Ok(())
    }

    /// A batch norm backward with its state tensors from index `bn`, taking in `fusion`: `dy -> dx` and the
    /// gradients of its weight (unless frozen) and bias. `x` is the batch norm's input.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &self,
        d: &mut Vec<Dispatch>,
        s: &BatchNormShape,
        bn: usize,
        x: &Tensor,
        stats: &Stats,
        fusion: BackwardFusion<'_>,
        dy: &Tensor,
        dx: &Tensor,
    ) -> Result<()> {
        let net = self.net;
        let dgamma = net.params[bn].grad.as_ref();
        let dbeta = net.grad(bn + 1)?;
        let gamma = net.value(bn);
        d.extend(self.k.bn.backward(
            self.gpu,
            s,
            &self.bn,
            x,
            gamma,
            &stats.mean,
            &stats.var,
            fusion,
            dy,
            dx,
            dgamma,
            dbeta,
            &net.bn_scratch,
        )?);
        Ok(())
    }

    /// The Winograd workspace if `s` runs as Winograd.
    fn winograd(&self, s: &Conv2dShape) -> Option<&WinogradWorkspace> {
        self.net.winograd.as_ref().filter(|_| self.k.uses_winograd(s))
    }

    /// The convolution `op` on `s` (tensors as [`Conv2d::run`] takes them), as Winograd or directly.
    fn conv(
        &self,
        d: &mut Vec<Dispatch>,
        op: ConvOp,
        s: &Conv2dShape,
        inputs: [&Tensor; 2],
        out: &Tensor,
    ) -> Result<()> {
        let (gpu, k) = (self.gpu, self.k);
        d.extend(match self.winograd(s) {
            Some(ws) => {
                let tile = k.winograd_tile(s, self.net.batch);
                k.winograd.run(gpu, k.products(gpu, tile)?, op, s, tile, inputs, None, out, ws)?
            }
            None => {
                // The forward and backward_data passes read the weight (the second input) as the kernels store it.
                let [a, b] = inputs;
                let scratch = &self.net.conv_scratch;
                match op {
                    ConvOp::Forward => k.conv.forward(gpu, s, a, &self.net.conv_weight(b)?, out, scratch)?,
                    ConvOp::BackwardData => {
                        let phased = self.net.phased_weights.view_as(
                            "weight laid out for the input gradient",
                            &[s.weight_len()],
                            k.conv.activations(),
                        )?;
                        k.conv.backward_data(gpu, s, a, &self.net.conv_weight(b)?, &phased, out, scratch)?
                    }
                    ConvOp::BackwardWeight => k.conv.backward_weight(gpu, s, a, b, out, scratch)?,
                }
            }
        });
        Ok(())
    }

    /// The Winograd convolution `op` (forward or backward_weight) on `s` reading its input as `norm` normalises
    /// it (see [`InputNorm`]); `inputs` as [`Conv2d::run`] takes them, with the batch norm's input in place of
    /// the convolution's. Only for a shape that runs as Winograd ([`Self::winograd`]).
    fn conv_normalized(
        &self,
        d: &mut Vec<Dispatch>,
        op: ConvOp,
        s: &Conv2dShape,
        inputs: [&Tensor; 2],
        norm: InputNorm<'_>,
        out: &Tensor,
    ) -> Result<()> {
        let (gpu, k) = (self.gpu, self.k);
        let ws = self.winograd(s).context("a normalised input needs a Winograd convolution")?;
        let tile = k.winograd_tile(s, self.net.batch);
        d.extend(k.winograd.run(gpu, k.products(gpu, tile)?, op, s, tile, inputs, Some(norm), out, ws)?);
        Ok(())
    }

    /// The backbone forward of the first `n` images of `input` in `mode`, writing the embeddings into the first
    /// `n` rows of `features.out`. Training mode (`n = B`) keeps what the backward pass reads.
    fn forward(&self, mode: Mode, n: usize) -> Result<Vec<Dispatch>> {
        let (gpu, k, net) = (self.gpu, self.k, self.net);
        let cfg = &net.cfg;
        let (h, w, c0, c3, e) = (cfg.input_h, cfg.input_w, cfg.widths[0], cfg.widths[3], cfg.embedding);
        // Mixed precision: the weights as the direct convolutions read them, rounded to f16.
        let mut d = net.round_weights(gpu, k)?;

        // Stem: conv1 (n, 3, H, W) -> (n, C0, H, W), bn1, prelu.
        let s = &net.stem;
        let input = first(&net.input, n)?;
        let conv_out = first(&s.conv_out, n)?;
        let stem_conv = conv3(3, c0, n, h, w, 1);
        self.conv(&mut d, ConvOp::Forward, &stem_conv, [&input, net.value(s.conv)], &conv_out)?;
        let s0 = BatchNormShape { n, c: c0, hw: h * w };
        // bn1 and the PReLU in one pass.
        let mut x = first(&s.prelu_out, n)?;
        let alpha = Epilogue::Prelu(net.value(s.prelu));
        self.bn_forward(&mut d, mode, &s0, s.bn, &conv_out, alpha, &x, &s.bn_stats)?;

        // Blocks: x (n, C_in, h, w) -> y (n, C_out, h', w').
        for b in &net.blocks {
            let sh = BlockShapes::new(&b.spec, n);
            let c1 = first(&b.c1, n)?;
            if self.winograd(&sh.conv1).is_some() {
                // conv1 normalises x as its input transform reads it: bn1's output is never stored.
                self.bn_statistics(&mut d, mode, &sh.input, b.bn1, &x, &b.a1_stats)?;
                let norm = self.input_norm(mode, b.bn1, &b.a1_stats, None);
                self.conv_normalized(&mut d, ConvOp::Forward, &sh.conv1, [&x, net.value(b.conv1)], norm, &c1)?;
            } else {
                // bn1's output is a temporary in a gradient buffer, recomputed in the backward pass.
                let a1 = net.value_buf(0, "bn1 output", &sh.in_dims, k.conv.activations())?;
                self.bn_forward(&mut d, mode, &sh.input, b.bn1, &x, Epilogue::None, &a1, &b.a1_stats)?;
                self.conv(&mut d, ConvOp::Forward, &sh.conv1, [&a1, net.value(b.conv1)], &c1)?;
            }
            let c2 = first(&b.c2, n)?;
            if self.winograd(&sh.conv2).is_some() {
                // conv2 applies bn2 and the PReLU as its input transform reads conv1's output.
                self.bn_statistics(&mut d, mode, &sh.full, b.bn2, &c1, &b.a2_stats)?;
                let norm = self.input_norm(mode, b.bn2, &b.a2_stats, Some(b.prelu));
                self.conv_normalized(&mut d, ConvOp::Forward, &sh.conv2, [&c1, net.value(b.conv2)], norm, &c2)?;
            } else {
                // bn2 and the PReLU in one pass.
                let p = first(b.p.as_ref().context("a block's PReLU output (conv2 runs directly)")?, n)?;
                let alpha = Epilogue::Prelu(net.value(b.prelu));
                self.bn_forward(&mut d, mode, &sh.full, b.bn2, &c1, alpha, &p, &b.a2_stats)?;
                self.conv(&mut d, ConvOp::Forward, &sh.conv2, [&p, net.value(b.conv2)], &c2)?;
            }
            // The shortcut: x, or the downsample batch norm's output, a temporary in a gradient buffer (free in
            // the forward pass).
            let shortcut = match &b.shortcut {
                Some(ds) => {
                    let dc = first(&ds.conv_out, n)?;
                    self.conv(&mut d, ConvOp::Forward, &sh.downsample, [&x, net.value(ds.conv)], &dc)?;
                    let db = net.value_buf(1, "downsample.1 output", &sh.out_dims, k.conv.activations())?;
                    self.bn_forward(&mut d, mode, &sh.out, ds.bn, &dc, Epilogue::None, &db, &ds.bn_stats)?;
                    db
                }
                None => x,
            };
            // bn3 and the residual add in one pass.
            let y = first(&b.y, n)?;
            self.bn_forward(&mut d, mode, &sh.out, b.bn3, &c2, Epilogue::Add(&shortcut), &y, &b.a3_stats)?;
            x = y;
        }

        // Tail: bn2 (n, C3, H/16, W/16), flattened to (n, FC_IN), fc -> (n, E), features -> (n, E).
        let t = &net.tail;
        let s2 = BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) };
        let bn2_out = first(&t.bn2_out, n)?;
        self.bn_forward(&mut d, mode, &s2, t.bn2, &x, Epilogue::None, &bn2_out, &t.bn2_stats)?;
        let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
        let fc_out = first(&t.fc_out, n)?;
        let (weight, bias) = (net.value(t.fc), net.value(t.fc + 1));
        d.extend(k.linear.forward(gpu, &fc, &bn2_out, weight, bias, &fc_out, &net.conv_scratch)?);
        let features = first(&t.features_out, n)?;
        let sf = BatchNormShape { n, c: e, hw: 1 };
        self.bn_forward(&mut d, mode, &sf, t.features, &fc_out, Epilogue::None, &features, &t.features_stats)?;
        Ok(d)
    }

    /// The backbone backward after the training forward and the head's backward (which leaves `d embeddings (B, E)`
    /// in gradient buffer 0): every trainable tensor's gradient, overwritten.
    fn backward(&self) -> Result<Vec<Dispatch>> {
        let (gpu, k, net) = (self.gpu, self.k, self.net);
        let cfg = &net.cfg;
        let n = net.batch;
        let (h, w, c0, c3, e) = (cfg.input_h, cfg.input_w, cfg.widths[0], cfg.widths[3], cfg.embedding);
        let mut d = Vec::new();

        // features (weight frozen): d embeddings in buffer 0 -> d fc output in buffer 1.
        let t = &net.tail;
        let sf = BatchNormShape { n, c: e, hw: 1 };
        let d_emb = net.buf_f32(0, "d embeddings", &[n, e])?;
        let d_fc = net.buf_f32(1, "d fc.out", &[n, e])?;
        let none = BackwardFusion::None;
        self.bn_backward(&mut d, &sf, t.features, &t.fc_out, &t.features_stats, none, &d_emb, &d_fc)?;

        // fc: -> d bn2 output (flattened) in buffer 2.
        let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
        let tail_dims = [n, c3, h / 16, w / 16];
        let d_bn2 = net.buf_f32(2, "d bn2.out", &tail_dims)?;
        let (dw, db) = (net.grad(t.fc)?, net.grad(t.fc + 1)?);
        let phased = net.phased_weights.view("fc.weight laid out for the input gradient", &[fc.weight_len()])?;
        let scratch = &net.conv_scratch;
        d.extend(k.linear.backward(gpu, &fc, &t.bn2_out, net.value(t.fc), &d_fc, &d_bn2, dw, db, &phased, scratch)?);

        // bn2: -> d last block output in buffer 0.
        let s2 = BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) };
        let last_y = &net.blocks.last().context("a network without blocks")?.y;
        let dy = net.buf(0, "d last block output", &tail_dims)?;
        self.bn_backward(&mut d, &s2, t.bn2, last_y, &t.bn2_stats, none, &d_bn2, &dy)?;

        // Blocks in reverse: dy in buffer roles[0] -> dx in roles[1], which becomes the next roles[0].
        let mut roles = [0, 1, 2, 3];
        for (i, b) in net.blocks.iter().enumerate().rev() {
            let x = if i == 0 { &net.stem.prelu_out } else { &net.blocks[i - 1].y };
            self.block_backward(&mut d, b, x, roles)?;
            roles.swap(0, 1);
        }

        // Stem: d prelu output -> prelu and bn1 (one fused backward) -> conv1 weight (no input gradient).
        let s = &net.stem;
        let dims = [n, c0, h, w];
        let s0 = BatchNormShape { n, c: c0, hw: h * w };
        let [g0, g1, ..] = roles;
        let (dy, d_conv) = (net.buf(g0, "d prelu.out", &dims)?, net.buf(g1, "d conv1.out", &dims)?);
        let prelu = self.prelu_fusion(s.bn, s.prelu)?;
        self.bn_backward(&mut d, &s0, s.bn, &s.conv_out, &s.bn_stats, prelu, &dy, &d_conv)?;
        let stem_conv = conv3(3, c0, n, h, w, 1);
        self.conv(&mut d, ConvOp::BackwardWeight, &stem_conv, [&d_conv, &net.input], net.grad(s.conv)?)?;
        Ok(d)
    }

    /// One block backward, as the core's `block_backward`: `dy (B, C_out, h', w')` in buffer `roles[0]`, the result
    /// `dx (B, C_in, h, w)` in `roles[1]`; `roles[2]` and `roles[3]` are scratch. `x` is the block's input.
    fn block_backward(&self, d: &mut Vec<Dispatch>, b: &Block, x: &Tensor, roles: [usize; 4]) -> Result<()> {
        let (k, net) = (self.k, self.net);
        let n = net.batch;
        let sh = BlockShapes::new(&b.spec, n);
        let [r_dy, r1, r2, r3] = roles;
        let (in_dims, full_dims, out_dims) = (sh.in_dims, sh.full_dims, sh.out_dims);
        let dy = net.buf(r_dy, "d block output", &out_dims)?;

        // Shortcut: dy -> downsample.1 -> downsample.0 -> d x (shortcut part) in buffer r2.
        let d_x_shortcut = match &b.shortcut {
            Some(ds) => {
                let d_dc = net.buf(r1, "d downsample.0.out", &out_dims)?;
                self.bn_backward(d, &sh.out, ds.bn, &ds.conv_out, &ds.bn_stats, BackwardFusion::None, &dy, &d_dc)?;
                let d_x = net.buf(r2, "d block input (shortcut)", &in_dims)?;
                self.conv(d, ConvOp::BackwardData, &sh.downsample, [&d_dc, net.value(ds.conv)], &d_x)?;
                self.conv(d, ConvOp::BackwardWeight, &sh.downsample, [&d_dc, x], net.grad(ds.conv)?)?;
                Some(d_x)
            }
            None => None,
        };

        // Main path: bn3 -> conv2 -> prelu and bn2 (one fused backward) -> conv1 -> bn1, ending in buffer r1.
        let d_c2 = net.buf(r1, "d conv2.out", &out_dims)?;
        self.bn_backward(d, &sh.out, b.bn3, &b.c2, &b.a3_stats, BackwardFusion::None, &dy, &d_c2)?;
        let d_p = net.buf(r3, "d prelu.out", &full_dims)?;
        self.conv(d, ConvOp::BackwardData, &sh.conv2, [&d_c2, net.value(b.conv2)], &d_p)?;
        if self.winograd(&sh.conv2).is_some() {
            // conv2's input, prelu(bn2(c1)), applied again as its input transform reads c1.
            let norm = self.input_norm(Mode::Train, b.bn2, &b.a2_stats, Some(b.prelu));
            self.conv_normalized(d, ConvOp::BackwardWeight, &sh.conv2, [&d_c2, &b.c1], norm, net.grad(b.conv2)?)?;
        } else {
            let p = b.p.as_ref().context("a block's PReLU output (conv2 runs directly)")?;
            self.conv(d, ConvOp::BackwardWeight, &sh.conv2, [&d_c2, p], net.grad(b.conv2)?)?;
        }
        let d_c1 = net.buf(r1, "d conv1.out", &full_dims)?;
        let prelu = self.prelu_fusion(b.bn2, b.prelu)?;
        self.bn_backward(d, &sh.full, b.bn2, &b.c1, &b.a2_stats, prelu, &d_p, &d_c1)?;
        let d_a1 = net.buf(r3, "d bn1.out", &in_dims)?;
        self.conv(d, ConvOp::BackwardData, &sh.conv1, [&d_c1, net.value(b.conv1)], &d_a1)?;
        if self.winograd(&sh.conv1).is_some() {
            // conv1's input, bn1(x), applied again as its input transform reads x.
            let norm = self.input_norm(Mode::Train, b.bn1, &b.a1_stats, None);
            self.conv_normalized(d, ConvOp::BackwardWeight, &sh.conv1, [&d_c1, x], norm, net.grad(b.conv1)?)?;
        } else {
            // bn1's output, recomputed where it is read: into the free buffer r2, or with a shortcut (whose input
            // gradient holds r2) into r_dy, whose dy nothing reads any more.
            let r_free = if b.shortcut.is_some() { r_dy } else { r2 };
            let a1 = net.value_buf(r_free, "bn1 output (recomputed)", &in_dims, k.conv.activations())?;
            self.bn_recompute(d, &sh.input, b.bn1, x, &b.a1_stats, &a1)?;
            self.conv(d, ConvOp::BackwardWeight, &sh.conv1, [&d_c1, &a1], net.grad(b.conv1)?)?;
        }
        // The input's gradient is the sum of both paths: bn1's backward adds the shortcut's as it writes.
        let d_x = net.buf(r1, "d block input", &in_dims)?;
        let other = BackwardFusion::Accumulate(d_x_shortcut.as_ref().unwrap_or(&dy));
        self.bn_backward(d, &sh.input, b.bn1, x, &b.a1_stats, other, &d_a1, &d_x)?;
        Ok(())
    }

    /// The backward of the PReLU (state index `prelu`) after the batch norm at `bn`, to fuse into the latter's.
    fn prelu_fusion(&self, bn: usize, prelu: usize) -> Result<BackwardFusion<'_>> {
        let net = self.net;
        Ok(BackwardFusion::Prelu { beta: net.value(bn + 1), alpha: net.value(prelu), dalpha: net.grad(prelu)? })
    }
}

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
        Ok(Self {
            preprocess: k.preprocess.forward(gpu, n, &image, &net.images, &net.flips, &net.input)?,
            forward: b.forward(Mode::Train, n)?,
            scale_up,
            backward: b.backward()?,
            unscale,
            head,
            clip,
            head_norm,
            update,
        })
    }

    /// Every dispatch of a step in recording order, with or without the preprocessing of u8 images.
    fn dispatches(&self, preprocess: bool) -> Vec<&Dispatch> {
        let pre = preprocess.then_some(&self.preprocess);
        pre.into_iter()
            .chain(&self.forward)
            .chain(self.head.forward())
            .chain(self.head.backward())
            .chain(&self.scale_up)
            .chain(&self.backward)
            .chain(&self.unscale)
            .chain(self.clip.dispatches())
            .chain(self.head_norm.dispatches())
            .chain(&self.update)
            .collect()
    }
}

/// The evaluation-mode forward of `n` images (`n <= B`), on the first `n` samples of the training tensors.
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
    /// Evaluation plans by chunk size, built on first use.
    eval: HashMap<usize, EvalPlan>,
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
/// The scale is not part of a checkpoint: a resumed run starts again at [`LossScale::INITIAL`] (it changes results
/// only where a gradient is too small for f16 at one scale and not at the other).
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
        let k = Kernels::new(&gpu, &settings)?;
        let net = Net::new(&gpu, &k, cfg, batch, classes, state, head)?;
        SgdKernels::write_hyper(&gpu, &net.hyper, &step_cfg.sgd)?;
        let plan = Plan::new(&gpu, &k, &net, &step_cfg)?;
        let mut me = Self { gpu, k, net, step_cfg, plan, eval: HashMap::new(), steps: 0, loss_scale: None };
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
        if let Err(e) = self.rebuild_step() {
            // E.g. a tile whose splits need more scratch than the device gives: back to the kernels that ran.
            (self.k.conv, self.k.conv_tile, self.k.products) = old;
            self.rebuild_step()?;
            return Err(e);
        }
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
    /// with at least `min_channels` input and output channels, or none for `None`. Reallocates the Winograd workspace and
    /// rebuilds the step. The default is [`default_winograd`] ([`ConvSettings::for_adapter`]).
    pub fn set_winograd(&mut self, min_channels: Option<usize>) -> Result<()> {
        if min_channels == self.k.winograd_min_channels {
            return Ok(());
        }
        self.k.winograd_min_channels = min_channels;
        self.rebuild_step()
    }

    /// The Winograd workspace and the step, rebuilt for the current convolutions and choice of Winograd layers and
    /// tile.
    fn rebuild_step(&mut self) -> Result<()> {
        self.net.reallocate_storage(&self.gpu, self.k.conv.activations())?;
        self.net.reallocate_winograd(&self.gpu, &self.k)?;
        self.plan = Plan::new(&self.gpu, &self.k, &self.net, &self.step_cfg)?;
        self.eval.clear();
        Ok(())
    }

    /// The current choice of Winograd layers (see [`Self::set_winograd`]).
    pub fn winograd(&self) -> Option<usize> {
        self.k.winograd_min_channels
    }

    /// Which tile the Winograd convolutions run with: F(4x4, 3x3), F(2x2, 3x3), or each layer the one
    /// [`WinogradTileChoice::Auto`] picks (the default). Reallocates the Winograd workspace and rebuilds the step.
    pub fn set_winograd_tile(&mut self, tile: WinogradTileChoice) -> Result<()> {
        if tile == self.k.winograd_tile {
            return Ok(());
        }
        self.k.winograd_tile = tile;
        self.rebuild_step()
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
        self.plan.dispatches(true).len()
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
        self.gpu.write_f32_as(&net.input, input)?;
        self.run_step(false, labels, margins_raw)
    }

    /// One training step like [`Backend::step`] (the weights move), run with a GPU timestamp around every dispatch
    /// ([`Gpu::profile`]): each dispatch's label (its kernel) and GPU seconds, in recording order. The step's report
    /// is not checked and the step counter does not advance; profile after the timed steps.
    pub fn profile_step(&mut self, batch: &Batch, margins_raw: &[f32]) -> Result<Vec<(String, f64)>> {
        self.write_batch(batch)?;
        self.plan.head.write_step(&self.gpu, &batch.labels, margins_raw)?;
        let dispatches = self.plan.dispatches(true);
        let times = self.gpu.profile(&dispatches)?;
        Ok(dispatches.iter().zip(times).map(|(d, t)| (d.label.clone(), t)).collect())
    }

    /// Uploads a batch's u8 images and flips.
    fn write_batch(&self, batch: &Batch) -> Result<()> {
        let net = &self.net;
        let (b, cfg) = (net.batch, &net.cfg);
        ensure!(batch.len() == b, "a batch of {} images, the GPU trainer was built for {b}", batch.len());
        ensure!(
            batch.images.len() == b * cfg.input_len() && batch.flips.len() == b,
            "batch images are not {b} x {}x{}x3 bytes with {b} flips",
            cfg.input_h,
            cfg.input_w
        );
        self.gpu.write(&net.images, &Preprocess::pack(&batch.images))?;
        self.gpu.write(&net.flips, &batch.flips.iter().map(|&f| u32::from(f)).collect::<Vec<u32>>())
    }

    /// Writes the labels and margins, runs the step and reads its report.
    /// With mixed precision, a step whose backbone gradient overflowed runs again at half the loss scale.
    fn run_step(&mut self, preprocess: bool, labels: &[u32], margins_raw: &[f32]) -> Result<StepReport> {
        self.plan.head.write_step(&self.gpu, labels, margins_raw)?;
        loop {
            let dispatches = self.plan.dispatches(preprocess);
            let report: Vec<f32> = match self.loss_scale {
                None => self.gpu.run_and_read(&dispatches, &self.net.report)?,
                // Mixed precision saves the running statistics first, in the same submission.
                Some(_) => self.gpu.copy_run_and_read(&self.net.running_copies(true), &dispatches, &self.net.report)?,
            };
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

    /// Runs the evaluation forward of the first `n` samples (preprocessing them first or not) and reads the
    /// embeddings `(n, E)`.
    fn run_eval(&mut self, n: usize, preprocess: bool) -> Result<Vec<f32>> {
        if !self.eval.contains_key(&n) {
            let (gpu, net) = (&*self.gpu, &self.net);
            let b = Builder { gpu, k: &self.k, net, bn: self.step_cfg.bn };
            let image = ImageShape { h: net.cfg.input_h, w: net.cfg.input_w };
            let images =
                net.images.view(&format!("{}[..{n} images]", net.images.label), &[Preprocess::words(n, &image)])?;
            let flips = first(&net.flips, n)?;
            let plan = EvalPlan {
                preprocess: self.k.preprocess.forward(gpu, n, &image, &images, &flips, &first(&net.input, n)?)?,
                forward: b.forward(Mode::Eval, n)?,
            };
            self.eval.insert(n, plan);
        }
        let plan = &self.eval[&n];
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

    /// The backbone gradients of the last step after clipping, state layout (zero for running statistics and
    /// frozen tensors). After a refused (non-finite) step they hold that step's gradients.
    pub fn grads(&self) -> Result<Vec<f32>> {
        self.read_trainable(|p| p.grad.as_ref())
    }

    /// The class centres `(D, C)`, the core's layout.
    pub fn head(&self) -> Result<Vec<f32>> {
        download_head_weight(&self.gpu, &self.net.head)
    }

    /// The head gradient of the last step `(D, C)` (not clipped).
    pub fn head_grad(&self) -> Result<Vec<f32>> {
        download_head_weight(&self.gpu, &self.net.head_grad)
    }

    /// The momentum buffers of the backbone (state layout, zero for non-trainable tensors) and of the head `(D, C)`.
    pub fn momentum(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read_trainable(|p| p.momentum.as_ref())?, download_head_weight(&self.gpu, &self.net.head_momentum)?))
    }

    /// The embeddings `(B, E)` of the last training step's forward pass (batch statistics), unless an evaluation
    /// ran since.
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
            self.eval.clear();
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
        self.write_batch(batch)?;
        self.run_step(true, &batch.labels, margins_raw)
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
            let words = Preprocess::pack(imgs);
            self.gpu.write(&self.net.images.view(&self.net.images.label, &[words.len()])?, &words)?;
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
        Ok(())
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
