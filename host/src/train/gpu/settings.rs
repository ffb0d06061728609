//! What the trainer's convolutions run as (precision, Winograd layers, tiles), their kernels, and the memory
//! formulas of the [module documentation](super).

use super::*;

/// Bytes of the activations a training step keeps for the backward pass, for a batch of `batch` with the
/// convolutions in `precision`, with the 3x3 stride-1 convolutions of at least `winograd` input and output channels
/// run as Winograd (`None`: none): the formula in the [module documentation](super).
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
pub(super) fn batchnorm_channels(cfg: &IResNetConfig) -> usize {
    let blocks: usize = cfg.blocks().map(|b| b.c_in + 2 * b.c_out + if b.downsample { b.c_out } else { 0 }).sum();
    cfg.widths[0] + blocks + cfg.widths[3] + cfg.embedding
}

/// Bytes of GPU memory a [`GpuBackend`] allocated, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The backbone's state, and gradients and momentum of its trainable tensors (and their sum over micro-batches
    /// once a step of several ran).
    pub parameters: u64,
    /// The head: weight, gradient, momentum, and the margin head's tensors (normalised centres, scratch); the sum of
    /// its gradient over micro-batches once a step of several ran.
    pub head: u64,
    /// The activations kept for the backward pass: [`activation_bytes`].
    pub activations: u64,
    /// The four rotating gradient buffers.
    pub gradient_buffers: u64,
    /// The u8 images and flips of a batch, the shared scratch of the convolutions, batch norms and PReLUs, the
    /// clipping partial sums, the hyper-parameters and the step report (and the loss's sum over micro-batches).
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
pub(super) struct Kernels {
    pub(super) preprocess: Preprocess,
    pub(super) conv: Conv2d,
    /// Mixed precision: the f32 kernels the batched products of F(4x4) Winograd convolutions run on, compiled on
    /// first use (see [`Kernels::products`]).
    pub(super) products: OnceLock<Conv2d>,
    pub(super) winograd: Winograd,
    /// The 3x3 stride-1 convolutions with at least this many input and output channels run as Winograd (see
    /// [`GpuBackend::set_winograd`]); `None`: none do.
    pub(super) winograd_min_channels: Option<usize>,
    /// The tile of each Winograd convolution (see [`GpuBackend::set_winograd_tile`]).
    pub(super) winograd_tile: WinogradTileChoice,
    /// The workgroup tile of the convolutions (see [`GpuBackend::set_conv_tile`]).
    pub(super) conv_tile: ConvTileChoice,
    pub(super) linear: Linear,
    pub(super) bn: BatchNormKernels,
    pub(super) margin: MarginLoss,
    pub(super) sgd: SgdKernels,
    /// Mixed precision's copy of the weights in f16 (see [`Net::weights16`]).
    pub(super) round: RoundToF16,
}

impl Kernels {
    /// The kernels, the convolutions compiled in `settings`. Errors as [`Conv2d::build`].
    pub(super) fn new(gpu: &Gpu, settings: &ConvSettings) -> Result<Self> {
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
    pub(super) fn settings(&self) -> ConvSettings {
        ConvSettings {
            precision: self.conv.precision(),
            winograd: self.winograd_min_channels,
            winograd_tile: self.winograd_tile,
            conv_tile: self.conv_tile,
        }
    }

    /// Whether the convolution `s` runs as Winograd.
    pub(super) fn uses_winograd(&self, s: &Conv2dShape) -> bool {
        is_winograd(s, self.winograd_min_channels)
    }

    /// The kernels of the batched products of a Winograd convolution with `tile`: `conv`'s (in mixed precision
    /// f16 operands, f32 accumulation, on tensor cores), except in mixed precision with F(4x4), whose transforms
    /// amplify the f16 rounding of the transformed operands beyond mixed precision's tolerances (1.5x the
    /// largest on the PyTorch reference; on a 64-channel layer a relative error of 2.6e-3 against F(2x2)'s
    /// 5.5e-4 and the direct kernels' 3.0e-4, see the core's Winograd tests): those run on an f32 compilation
    /// with the same tiling. Errors as [`Conv2d::build`].
    pub(super) fn products(&self, gpu: &Gpu, tile: WinogradTile) -> Result<&Conv2d> {
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
    pub(super) fn winograd_tile(&self, s: &Conv2dShape, batch: usize) -> WinogradTile {
        self.winograd_tile.tile_for(&Conv2dShape { n: batch, ..*s })
    }
}

/// Whether the convolution `s` runs as Winograd when those of at least `min_channels` input and output channels do.
pub(super) fn is_winograd(s: &Conv2dShape, min_channels: Option<usize>) -> bool {
    min_channels.is_some_and(|c| s.c_in.min(s.c_out) >= c) && Winograd::applies(s)
}

/// Whether block `b`'s conv2 runs as Winograd (see [`is_winograd`]): then it applies bn2 and the PReLU as it reads
/// conv1's output, and the PReLU's output is not kept.
pub(super) fn conv2_is_winograd(b: &BlockSpec, min_channels: Option<usize>) -> bool {
    is_winograd(&BlockShapes::new(b, 1).conv2, min_channels)
}
