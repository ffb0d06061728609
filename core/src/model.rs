//! iResNet, as insightface's `arcface_torch/backbones/iresnet.py`, and a complete CPU training step.
//!
//! The network (FACTS §2): a stem `conv1 -> bn1 -> prelu`, four stages of `IBasicBlock`s
//! (`bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3`, plus the input or a `downsample` conv1x1+BN when the
//! shape changes; no activation after the add), then `bn2 -> flatten -> fc -> features` (a `BatchNorm1d` whose
//! weight is frozen at 1). Every stage starts with stride 2, so the input height and width must be divisible by 16.
//!
//! ## Memory
//! Nothing is allocated. All float state lives in caller-provided arenas whose sizes the config computes:
//! - the **state** (`IResNetConfig::state_len`): every float tensor of insightface's state dict, in state-dict
//!   order and PyTorch layouts (`conv [C_out, C_in, K, K]`, `linear [OUT, IN]`); BN running statistics included,
//!   `num_batches_tracked` not (it equals the number of training steps). [`IResNetConfig::tensors`] lists each
//!   tensor with its name (`layer2.0.downsample.1.running_var`), shape and offset. Gradients and momentum
//!   buffers use the same layout, so one offset addresses a tensor in all three.
//! - the **activations** (`IResNetConfig::activations_len`): every output the backward pass needs, plus the
//!   batch statistics of every batch norm.
//! - the **trainer arena** ([`TrainerLayout`]): state, gradients, momentum, head, activations and scratch in one
//!   `&mut [f32]`, split into named parts as llm.c does.
//!
//! Shape letters: `N` batch, `C` channels, `H`/`W` height/width, `E` embedding size, `K` classes of the head.

use core::fmt;
use core::ops::Range;

use rand_core::RngCore;

use crate::error::{check_finite, check_labels, check_len, Error};
use crate::margin::{margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig};
use crate::nn::{
    accumulate, accumulate_gradient, batchnorm_backward_on, batchnorm_forward_eval_on, batchnorm_forward_train_on,
    clip_coefficient, conv2d_backward_data_on, conv2d_backward_weight_on, conv2d_forward_on, linear_backward,
    linear_forward, prelu_backward_on, prelu_forward_on, residual_add_forward, scale, sgd_step, sum_of_squares,
    BatchNorm, BatchNormShape, Conv2dShape, LinearShape, MicroBatch, Sgd,
};
use crate::parallel::{Executor, Serial};
use crate::rng::standard_normal;

/// The shape of an iResNet: blocks per stage, widths, input size and embedding size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IResNetConfig {
    /// `IBasicBlock`s in each of the four stages.
    pub layers: [usize; 4],
    /// Output channels of each stage; the stem has `widths[0]`.
    pub widths: [usize; 4],
    /// Input height, divisible by 16.
    pub input_h: usize,
    /// Input width, divisible by 16.
    pub input_w: usize,
    /// Embedding size E (the `fc` outputs and the `features` batch norm).
    pub embedding: usize,
}

impl IResNetConfig {
    /// The insightface widths, 112x112 input, 512-d embedding, with the given blocks per stage.
    pub const fn insightface(layers: [usize; 4]) -> Self {
        Self { layers, widths: [64, 128, 256, 512], input_h: 112, input_w: 112, embedding: 512 }
    }
    /// iResNet-18: blocks `[2, 2, 2, 2]`.
    pub const R18: Self = Self::insightface([2, 2, 2, 2]);
    /// iResNet-34: blocks `[3, 4, 6, 3]`.
    pub const R34: Self = Self::insightface([3, 4, 6, 3]);
    /// iResNet-50: blocks `[3, 4, 14, 3]`.
    pub const R50: Self = Self::insightface([3, 4, 14, 3]);
    /// iResNet-100: blocks `[3, 13, 30, 3]`.
    pub const R100: Self = Self::insightface([3, 13, 30, 3]);
    /// iResNet-200: blocks `[6, 26, 60, 6]`.
    pub const R200: Self = Self::insightface([6, 26, 60, 6]);

    /// The presets by name: `r18`, `r34`, `r50`, `r100`, `r200`.
    pub const PRESETS: [(&'static str, Self); 5] =
        [("r18", Self::R18), ("r34", Self::R34), ("r50", Self::R50), ("r100", Self::R100), ("r200", Self::R200)];

    /// The preset called `name`, if there is one.
    pub fn preset(name: &str) -> Option<Self> {
        Self::PRESETS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    /// Checks that every size is non-zero, the input is divisible by 16, and the sizes of the state, of one input
    /// image and of one image's activations fit `usize`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.layers.contains(&0) {
            return Err(Error::Config { what: "every stage needs at least one block" });
        }
        if self.widths.contains(&0) || self.embedding == 0 {
            return Err(Error::Config { what: "widths and the embedding size must be non-zero" });
        }
        if self.input_h == 0
            || self.input_w == 0
            || !self.input_h.is_multiple_of(16)
            || !self.input_w.is_multiple_of(16)
        {
            return Err(Error::Config { what: "input height and width must be non-zero multiples of 16" });
        }
        // The sizes saturate at usize::MAX, which no slice can have: reaching it means the size overflowed.
        // Every other size (a tensor, a stage's share) is part of one of these sums.
        let sizes = [self.input_len(), self.fc_inputs(), self.state_len(), self.activations_len(1)];
        if sizes.contains(&usize::MAX) || self.largest_activation(1) == usize::MAX {
            return Err(Error::Config { what: "the network's sizes overflow usize" });
        }
        Ok(())
    }

    /// Elements of one input image, `3 * H * W` (saturating at `usize::MAX`, which no slice can match).
    pub const fn input_len(&self) -> usize {
        3usize.saturating_mul(self.input_h).saturating_mul(self.input_w)
    }

    /// Input features of `fc`: the last width times `(H/16) * (W/16)` (saturating at `usize::MAX`).
    pub const fn fc_inputs(&self) -> usize {
        self.widths[3].saturating_mul(self.input_h / 16).saturating_mul(self.input_w / 16)
    }

    /// Block `index` of stage `stage` (both from 0), or `None` where the network has no such block
    /// (`stage >= 4` or `index >= layers[stage]`).
    pub fn block(&self, stage: usize, index: usize) -> Option<BlockSpec> {
        self.layers.get(stage).is_some_and(|&blocks| index < blocks).then(|| self.block_spec(stage, index))
    }

    /// Block `index` of stage `stage < 4`.
    fn block_spec(&self, stage: usize, index: usize) -> BlockSpec {
        let c_out = self.widths[stage];
        let c_in = match (stage, index) {
            (_, i) if i > 0 => c_out,
            (0, _) => self.widths[0],
            (s, _) => self.widths[s - 1],
        };
        let stride = if index == 0 { 2 } else { 1 };
        // Stage s receives the input downsampled s times; its first block halves it once more.
        let shift = if index == 0 { stage } else { stage + 1 };
        let (h, w) = (self.input_h >> shift, self.input_w >> shift);
        BlockSpec { stage, index, c_in, c_out, stride, h, w, downsample: stride != 1 || c_in != c_out }
    }

    /// Every block, in order.
    pub fn blocks(&self) -> impl DoubleEndedIterator<Item = BlockSpec> + '_ {
        (0..4).flat_map(move |s| (0..self.layers[s]).map(move |i| self.block_spec(s, i)))
    }

    /// Every module with parameters, in state-dict order.
    pub fn modules(&self) -> impl Iterator<Item = Module> + '_ {
        let blocks = self.blocks().flat_map(|b| b.modules().into_iter().flatten());
        self.stem_modules().into_iter().chain(blocks).chain(self.tail_modules())
    }

    /// `conv1`, `bn1`, `prelu`.
    fn stem_modules(&self) -> [Module; 3] {
        [
            Module {
                scope: Scope::Stem,
                name: "conv1",
                kind: ModuleKind::Conv { c_in: 3, c_out: self.widths[0], k: 3 },
            },
            Module {
                scope: Scope::Stem,
                name: "bn1",
                kind: ModuleKind::BatchNorm { c: self.widths[0], frozen: false },
            },
            Module { scope: Scope::Stem, name: "prelu", kind: ModuleKind::PRelu { c: self.widths[0] } },
        ]
    }

    /// `bn2`, `fc`, `features`.
    fn tail_modules(&self) -> [Module; 3] {
        [
            Module {
                scope: Scope::Tail,
                name: "bn2",
                kind: ModuleKind::BatchNorm { c: self.widths[3], frozen: false },
            },
            Module {
                scope: Scope::Tail,
                name: "fc",
                kind: ModuleKind::Linear { inputs: self.fc_inputs(), outputs: self.embedding },
            },
            Module {
                scope: Scope::Tail,
                name: "features",
                kind: ModuleKind::BatchNorm { c: self.embedding, frozen: true },
            },
        ]
    }

    /// The sum of `size` over every block, in time independent of the block counts: the blocks of a stage after its
    /// first are all alike. Saturating at `usize::MAX`.
    fn sum_over_blocks(&self, size: impl Fn(&BlockSpec) -> usize) -> usize {
        (0..4).fold(0, |sum, s| match self.layers[s] {
            0 => sum,
            blocks => {
                let first = size(&self.block_spec(s, 0));
                let rest = if blocks > 1 { sat_mul(&[blocks - 1, size(&self.block_spec(s, 1))]) } else { 0 };
                sat_sum(&[sum, first, rest])
            }
        })
    }

    /// Every float tensor of the state dict, in order, with its offset in the state arena.
    pub fn tensors(&self) -> impl Iterator<Item = TensorInfo> + '_ {
        self.modules().flat_map(|m| (0..m.kind.tensor_count()).map(move |t| (m, t))).scan(
            0usize,
            |offset, (module, t)| {
                let (field, kind, shape, rank) = module.kind.tensor(t);
                let len = shape[..rank].iter().fold(1usize, |p, &d| p.saturating_mul(d));
                let info = TensorInfo { module, field, kind, shape, rank, offset: *offset, len };
                *offset = offset.saturating_add(len);
                Some(info)
            },
        )
    }

    /// The tensor called `name` (insightface's state-dict name), if the network has it.
    pub fn find(&self, name: &str) -> Option<TensorInfo> {
        self.tensors().find(|t| t.has_name(name))
    }

    /// Elements of the state arena: every float tensor of the state dict (saturating at `usize::MAX`, which no
    /// slice can match; [`IResNetConfig::validate`] refuses such a network).
    pub fn state_len(&self) -> usize {
        let ends = self.stem_modules().into_iter().chain(self.tail_modules());
        let ends = ends.fold(0, |sum: usize, m| sum.saturating_add(m.kind.state_len()));
        ends.saturating_add(self.sum_over_blocks(BlockSpec::state_len))
    }

    /// Number of parameters as PyTorch counts them (trainable and frozen; not the running statistics).
    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .filter(|t| matches!(t.kind, TensorKind::Trainable | TensorKind::Frozen))
            .fold(0, |sum, t| sum.saturating_add(t.len))
    }

    /// Elements of the activation arena for a batch of `n` (saturating at `usize::MAX`, which no slice can match).
    pub fn activations_len(&self, n: usize) -> usize {
        let stem =
            sat_mul(&[3, n, self.widths[0], self.input_h, self.input_w]).saturating_add(sat_mul(&[2, self.widths[0]]));
        let blocks = self.sum_over_blocks(|b| b.activations_len(n));
        stem.saturating_add(blocks).saturating_add(self.tail_activations_len(n))
    }

    fn tail_activations_len(&self, n: usize) -> usize {
        // bn2 output and stats, fc output, features output and stats.
        sat_sum(&[
            sat_mul(&[n, self.fc_inputs()]),
            sat_mul(&[2, self.widths[3]]),
            sat_mul(&[2, n, self.embedding]),
            sat_mul(&[2, self.embedding]),
        ])
    }

    /// The largest activation tensor for a batch of `n`: the size of each gradient scratch buffer (saturating at
    /// `usize::MAX`).
    pub fn largest_activation(&self, n: usize) -> usize {
        let stem = sat_mul(&[n, self.widths[0], self.input_h, self.input_w]);
        // The blocks of a stage after its first are all alike.
        let first_two = (0..4).flat_map(|s| (0..self.layers[s].min(2)).map(move |i| self.block_spec(s, i)));
        let blocks = first_two.map(|b| sat_mul(&[n, b.c_in.max(b.c_out), b.h, b.w])).max().unwrap_or(0);
        stem.max(blocks).max(sat_mul(&[n, self.fc_inputs()]))
    }
}

/// The product of `factors`, saturating at `usize::MAX` (exactly `min(product, usize::MAX)`).
fn sat_mul(factors: &[usize]) -> usize {
    factors.iter().fold(1usize, |p, &f| p.saturating_mul(f))
}

/// The sum of `terms`, saturating at `usize::MAX` (exactly `min(sum, usize::MAX)`).
fn sat_sum(terms: &[usize]) -> usize {
    terms.iter().fold(0usize, |s, &t| s.saturating_add(t))
}

/// One `IBasicBlock`: its place, channels, stride and input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Stage, from 0 (insightface's `layer1` is stage 0).
    pub stage: usize,
    /// Index within the stage, from 0.
    pub index: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Stride of `conv2` and of the downsample conv.
    pub stride: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Whether the shortcut is `downsample` (conv1x1 + BN) rather than the identity.
    pub downsample: bool,
}

impl BlockSpec {
    /// Output height.
    pub const fn out_h(&self) -> usize {
        self.h / self.stride
    }
    /// Output width.
    pub const fn out_w(&self) -> usize {
        self.w / self.stride
    }

    /// The block's modules in state-dict order (`downsample.*` only when it has them).
    pub fn modules(&self) -> [Option<Module>; 8] {
        let scope = Scope::Block { stage: self.stage, index: self.index };
        let m = |name, kind| Some(Module { scope, name, kind });
        let (ci, co) = (self.c_in, self.c_out);
        let bn = |c| ModuleKind::BatchNorm { c, frozen: false };
        let ds = self.downsample;
        [
            m("bn1", bn(ci)),
            m("conv1", ModuleKind::Conv { c_in: ci, c_out: co, k: 3 }),
            m("bn2", bn(co)),
            m("prelu", ModuleKind::PRelu { c: co }),
            m("conv2", ModuleKind::Conv { c_in: co, c_out: co, k: 3 }),
            m("bn3", bn(co)),
            if ds { m("downsample.0", ModuleKind::Conv { c_in: ci, c_out: co, k: 1 }) } else { None },
            if ds { m("downsample.1", bn(co)) } else { None },
        ]
    }

    /// Elements of the block's part of the state arena (saturating at `usize::MAX`).
    pub fn state_len(&self) -> usize {
        sat_sum(&self.modules().map(|m| m.map_or(0, |m| m.kind.state_len())))
    }

    /// Elements of the block's part of the activation arena for a batch of `n` (saturating at `usize::MAX`).
    pub fn activations_len(&self, n: usize) -> usize {
        let full = sat_mul(&[n, self.c_out, self.h, self.w]);
        let out = sat_mul(&[n, self.c_out, self.out_h(), self.out_w()]);
        let stats = sat_mul(&[2, sat_sum(&[self.c_in, sat_mul(&[2, self.c_out])])]);
        let shortcut = if self.downsample { sat_sum(&[sat_mul(&[2, out]), sat_mul(&[2, self.c_out])]) } else { 0 };
        // a1 (input-sized), c1, a2, p (full), c2, a3, y (output-sized).
        let input = sat_mul(&[n, self.c_in, self.h, self.w]);
        sat_sum(&[input, sat_mul(&[3, full]), sat_mul(&[3, out]), stats, shortcut])
    }
}

/// Where a module sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `conv1`, `bn1`, `prelu` before the stages.
    Stem,
    /// Inside `layer{stage+1}.{index}`.
    Block {
        /// Stage from 0.
        stage: usize,
        /// Block index within the stage.
        index: usize,
    },
    /// `bn2`, `fc`, `features` after the stages.
    Tail,
}

/// What a module is, with its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// Conv2d without bias, `weight (C_out, C_in, K, K)`.
    Conv {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size.
        k: usize,
    },
    /// Batch norm: `weight`, `bias`, `running_mean`, `running_var`, each `(C)`.
    BatchNorm {
        /// Channels.
        c: usize,
        /// The weight is frozen at 1 (insightface's `features`).
        frozen: bool,
    },
    /// PReLU, `weight (C)`.
    PRelu {
        /// Channels.
        c: usize,
    },
    /// Linear with bias, `weight (OUT, IN)`, `bias (OUT)`.
    Linear {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
}

impl ModuleKind {
    fn tensor_count(&self) -> usize {
        match self {
            ModuleKind::Conv { .. } | ModuleKind::PRelu { .. } => 1,
            ModuleKind::Linear { .. } => 2,
            ModuleKind::BatchNorm { .. } => 4,
        }
    }

    /// Tensor `t` of the module: (field, kind, shape padded to rank 4, rank).
    fn tensor(&self, t: usize) -> (&'static str, TensorKind, [usize; 4], usize) {
        match *self {
            ModuleKind::Conv { c_in, c_out, k } => ("weight", TensorKind::Trainable, [c_out, c_in, k, k], 4),
            ModuleKind::PRelu { c } => ("weight", TensorKind::Trainable, [c, 0, 0, 0], 1),
            ModuleKind::Linear { inputs, outputs } => match t {
                0 => ("weight", TensorKind::Trainable, [outputs, inputs, 0, 0], 2),
                _ => ("bias", TensorKind::Trainable, [outputs, 0, 0, 0], 1),
            },
            ModuleKind::BatchNorm { c, frozen } => {
                let weight = if frozen { TensorKind::Frozen } else { TensorKind::Trainable };
                let (field, kind) = [
                    ("weight", weight),
                    ("bias", TensorKind::Trainable),
                    ("running_mean", TensorKind::RunningStat),
                    ("running_var", TensorKind::RunningStat),
                ][t];
                (field, kind, [c, 0, 0, 0], 1)
            }
        }
    }

    /// Elements of the module's part of the state arena (saturating at `usize::MAX`).
    pub fn state_len(&self) -> usize {
        match *self {
            ModuleKind::Conv { c_in, c_out, k } => sat_mul(&[c_out, c_in, k, k]),
            ModuleKind::PRelu { c } => c,
            ModuleKind::Linear { inputs, outputs } => sat_mul(&[outputs, inputs]).saturating_add(outputs),
            ModuleKind::BatchNorm { c, .. } => sat_mul(&[4, c]),
        }
    }
}

/// A module with parameters: where it is, its state-dict name and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// Stem, block or tail.
    pub scope: Scope,
    /// Its name inside the scope, e.g. `bn1` or `downsample.0`.
    pub name: &'static str,
    /// Kind and sizes.
    pub kind: ModuleKind,
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Stem | Scope::Tail => write!(f, "{}", self.name),
            Scope::Block { stage, index } => write!(f, "layer{}.{}.{}", stage + 1, index, self.name),
        }
    }
}

/// How a state tensor takes part in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Updated by SGD; part of the clipped backbone gradient norm.
    Trainable,
    /// A parameter that never changes (`features.weight`, fixed at 1).
    Frozen,
    /// A batch norm running mean or variance, updated by the forward pass in training mode.
    RunningStat,
}

/// One float tensor of the state dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The module it belongs to.
    pub module: Module,
    /// `weight`, `bias`, `running_mean` or `running_var`.
    pub field: &'static str,
    /// Trainable, frozen or running statistic.
    pub kind: TensorKind,
    /// PyTorch shape; the first `rank` entries count.
    pub shape: [usize; 4],
    /// Number of dimensions.
    pub rank: usize,
    /// Offset in the state arena (and the gradient and momentum arenas).
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl TensorInfo {
    /// The PyTorch shape.
    pub fn dims(&self) -> &[usize] {
        &self.shape[..self.rank]
    }

    /// Its range in the state arena.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Whether `name` is this tensor's state-dict name, compared without allocating.
    pub fn has_name(&self, name: &str) -> bool {
        let mut w = NameMatcher { rest: name.as_bytes(), ok: true };
        let _ = fmt::write(&mut w, format_args!("{self}"));
        w.ok && w.rest.is_empty()
    }
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.field)
    }
}

/// Consumes formatted text against an expected string.
struct NameMatcher<'a> {
    rest: &'a [u8],
    ok: bool,
}

impl fmt::Write for NameMatcher<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.strip_prefix(s.as_bytes()) {
            Some(rest) if self.ok => self.rest = rest,
            _ => self.ok = false,
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- initialisation

/// Fills the state as insightface initialises an iResNet: conv weights `N(0, 0.1)`; batch norm weight 1, bias 0,
/// running mean 0, running variance 1; PReLU 0.25; `fc` as PyTorch's `nn.Linear` default (weight and bias
/// uniform in `±1/sqrt(IN)`); `features.weight` 1.
///
/// Draws come from `rng` in state-dict order: conv weights one normal each ([`standard_normal`]), `fc` one
/// `u32` each (`u / 2^32` mapped to the interval).
pub fn init_state(cfg: &IResNetConfig, rng: &mut impl RngCore, state: &mut [f32]) -> Result<(), Error> {
    cfg.validate()?;
    check_len("state", state, cfg.state_len())?;
    for t in cfg.tensors() {
        let dst = &mut state[t.range()];
        match (t.module.kind, t.field) {
            (ModuleKind::Conv { .. }, _) => dst.iter_mut().for_each(|v| *v = (0.1 * standard_normal(rng)) as f32),
            (ModuleKind::Linear { inputs, .. }, _) => {
                let bound = 1.0 / libm::sqrt(inputs as f64);
                for v in dst {
                    let u = f64::from(rng.next_u32()) / 4_294_967_296.0;
                    *v = ((2.0 * u - 1.0) * bound) as f32;
                }
            }
            (ModuleKind::PRelu { .. }, _) => dst.fill(0.25),
            (ModuleKind::BatchNorm { .. }, "weight" | "running_var") => dst.fill(1.0),
            (ModuleKind::BatchNorm { .. }, _) => dst.fill(0.0),
        }
    }
    Ok(())
}

/// Fills the head's class centres `(E, K)` from `N(0, 0.01)`, as the ElasticFace recipe.
pub fn init_head(rng: &mut impl RngCore, head: &mut [f32]) {
    head.iter_mut().for_each(|v| *v = (0.01 * standard_normal(rng)) as f32);
}

// ---------------------------------------------------------------- arena helpers

/// Hands out consecutive ranges of an arena.
#[derive(Clone, Copy, Debug, Default)]
struct Bump(usize);

impl Bump {
    fn take(&mut self, len: usize) -> Range<usize> {
        let r = self.0..self.0 + len;
        self.0 += len;
        r
    }
}

/// The batch norm tensors at `offset` of the state: `weight`, `bias`, `running_mean`, `running_var`, each `(C)`.
fn bn_ranges(offset: usize, c: usize) -> [Range<usize>; 4] {
    [offset..offset + c, offset + c..offset + 2 * c, offset + 2 * c..offset + 3 * c, offset + 3 * c..offset + 4 * c]
}

/// `(&buf[input], &mut buf[output])` for two ranges where the input lies before the output.
fn read_write(buf: &mut [f32], input: Range<usize>, output: Range<usize>) -> (&[f32], &mut [f32]) {
    debug_assert!(input.end <= output.start);
    let (lo, hi) = buf.split_at_mut(output.start);
    (&lo[input], &mut hi[..output.len()])
}

/// The ranges of one batch norm's learned tensors and its running statistics, split for simultaneous use.
struct BnState<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    running_mean: &'a mut [f32],
    running_var: &'a mut [f32],
}

fn bn_state(state: &mut [f32], offset: usize, c: usize) -> BnState<'_> {
    let (params, stats) = state[offset..offset + 4 * c].split_at_mut(2 * c);
    let (gamma, beta) = params.split_at(c);
    let (running_mean, running_var) = stats.split_at_mut(c);
    BnState { gamma, beta, running_mean, running_var }
}

/// Training or evaluation mode of the batch norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics; running statistics updated.
    Train,
    /// Running statistics.
    Eval,
}

/// The network state a forward pass runs with ([`forward`]): in training mode it reads the parameters and moves the
/// running statistics; in evaluation mode it only reads, so that one state can serve several passes at once (one a
/// thread) or lie in read-only memory.
#[derive(Debug)]
pub enum StateRef<'a> {
    /// [`Mode::Train`]: batch statistics; the running statistics move.
    Train(&'a mut [f32]),
    /// [`Mode::Eval`]: the running statistics.
    Eval(&'a [f32]),
}

impl StateRef<'_> {
    /// The batch norms' mode.
    pub fn mode(&self) -> Mode {
        match self {
            StateRef::Train(_) => Mode::Train,
            StateRef::Eval(_) => Mode::Eval,
        }
    }

    /// The state, to read.
    pub fn read(&self) -> &[f32] {
        match self {
            StateRef::Train(state) => state,
            StateRef::Eval(state) => state,
        }
    }
}

/// One batch norm in `state`'s mode: `x` at `input` of `acts`, output at `output`, batch stats at `stats` (mean then
/// variance, `2C`; training mode only), parameters at `offset` of `state`.
#[allow(clippy::too_many_arguments)]
fn bn_forward(
    exec: &dyn Executor,
    bn: &BatchNorm,
    s: &BatchNormShape,
    state: &mut StateRef<'_>,
    offset: usize,
    acts: &mut [f32],
    input: Range<usize>,
    output: Range<usize>,
    stats: Range<usize>,
) -> Result<(), Error> {
    let (x, rest) = read_write(acts, input, output.start..stats.end);
    let (y, st) = rest.split_at_mut(output.len());
    match state {
        StateRef::Train(state) => {
            let p = bn_state(state, offset, s.c);
            let (mean, var) = st[stats.start - output.end..].split_at_mut(s.c);
            batchnorm_forward_train_on(exec, s, bn, x, p.gamma, p.beta, p.running_mean, p.running_var, y, mean, var)
        }
        StateRef::Eval(state) => {
            let (params, stats) = state[offset..offset + 4 * s.c].split_at(2 * s.c);
            let ((gamma, beta), (running_mean, running_var)) = (params.split_at(s.c), stats.split_at(s.c));
            batchnorm_forward_eval_on(exec, s, bn, x, gamma, beta, running_mean, running_var, y)
        }
    }
}

// ---------------------------------------------------------------- activation layout

/// Ranges of the stem's activations.
struct StemActs {
    conv: Range<usize>,
    bn: Range<usize>,
    bn_stats: Range<usize>,
    prelu: Range<usize>,
}

impl StemActs {
    fn new(cfg: &IResNetConfig, n: usize, bump: &mut Bump) -> Self {
        let len = n * cfg.widths[0] * cfg.input_h * cfg.input_w;
        let conv = bump.take(len);
        let bn = bump.take(len);
        let bn_stats = bump.take(2 * cfg.widths[0]);
        let prelu = bump.take(len);
        Self { conv, bn, bn_stats, prelu }
    }
}

/// Ranges of one block's activations (`x` is the block input, elsewhere in the arena).
struct BlockActs {
    a1: Range<usize>,
    a1_stats: Range<usize>,
    c1: Range<usize>,
    a2: Range<usize>,
    a2_stats: Range<usize>,
    p: Range<usize>,
    c2: Range<usize>,
    a3: Range<usize>,
    a3_stats: Range<usize>,
    /// `downsample.0` output, `downsample.1` output and its stats.
    shortcut: Option<(Range<usize>, Range<usize>, Range<usize>)>,
    y: Range<usize>,
}

impl BlockActs {
    fn new(b: &BlockSpec, n: usize, bump: &mut Bump) -> Self {
        let input = n * b.c_in * b.h * b.w;
        let full = n * b.c_out * b.h * b.w;
        let out = n * b.c_out * b.out_h() * b.out_w();
        let a1 = bump.take(input);
        let a1_stats = bump.take(2 * b.c_in);
        let c1 = bump.take(full);
        let a2 = bump.take(full);
        let a2_stats = bump.take(2 * b.c_out);
        let p = bump.take(full);
        let c2 = bump.take(out);
        let a3 = bump.take(out);
        let a3_stats = bump.take(2 * b.c_out);
        let shortcut = b.downsample.then(|| (bump.take(out), bump.take(out), bump.take(2 * b.c_out)));
        let y = bump.take(out);
        Self { a1, a1_stats, c1, a2, a2_stats, p, c2, a3, a3_stats, shortcut, y }
    }
}

/// Ranges of the tail's activations.
struct TailActs {
    bn2: Range<usize>,
    bn2_stats: Range<usize>,
    fc: Range<usize>,
    features: Range<usize>,
    features_stats: Range<usize>,
}

impl TailActs {
    fn new(cfg: &IResNetConfig, n: usize, bump: &mut Bump) -> Self {
        let bn2 = bump.take(n * cfg.fc_inputs());
        let bn2_stats = bump.take(2 * cfg.widths[3]);
        let fc = bump.take(n * cfg.embedding);
        let features = bump.take(n * cfg.embedding);
        let features_stats = bump.take(2 * cfg.embedding);
        Self { bn2, bn2_stats, fc, features, features_stats }
    }
}

/// Offsets of one block's modules in the state arena.
struct BlockParams {
    bn1: usize,
    conv1: usize,
    bn2: usize,
    prelu: usize,
    conv2: usize,
    bn3: usize,
    ds_conv: usize,
    ds_bn: usize,
}

impl BlockParams {
    fn new(b: &BlockSpec, offset: usize) -> Self {
        let mut at = [0usize; 8];
        let mut o = offset;
        for (slot, m) in at.iter_mut().zip(b.modules()) {
            *slot = o;
            o += m.map_or(0, |m| m.kind.state_len());
        }
        let [bn1, conv1, bn2, prelu, conv2, bn3, ds_conv, ds_bn] = at;
        Self { bn1, conv1, bn2, prelu, conv2, bn3, ds_conv, ds_bn }
    }
}

// ---------------------------------------------------------------- forward

fn conv3(c_in: usize, c_out: usize, n: usize, h: usize, w: usize, stride: usize) -> Conv2dShape {
    Conv2dShape { n, c_in, h, w, c_out, kh: 3, kw: 3, stride, pad: 1 }
}

/// Runs the backbone on `n` images stored at the start of `acts`' input region... see [`forward`].
///
/// Returns the range of the embeddings `(N, E)` in `acts`.
fn forward_in_arena(
    exec: &dyn Executor,
    cfg: &IResNetConfig,
    bn: &BatchNorm,
    state: &mut StateRef<'_>,
    n: usize,
    input: &[f32],
    acts: &mut [f32],
) -> Result<Range<usize>, Error> {
    // Checked before the first layer runs: the `features` batch norm (one value per sample and channel) would
    // refuse a single image only after every 2-D batch norm had moved its running statistics.
    if state.mode() == Mode::Train && n < 2 {
        return Err(Error::Shape { what: "training mode needs a batch of at least 2 (batch norm of the features)" });
    }
    let mut bump = Bump::default();
    let (h, w, c0) = (cfg.input_h, cfg.input_w, cfg.widths[0]);
    let mut params = 0usize;

    // Stem: conv1 (N, 3, H, W) -> (N, C0, H, W), bn1, prelu.
    let stem = StemActs::new(cfg, n, &mut bump);
    conv2d_forward_on(
        exec,
        &conv3(3, c0, n, h, w, 1),
        input,
        &state.read()[params..params + c0 * 27],
        &mut acts[stem.conv.clone()],
    )?;
    params += c0 * 27;
    let s0 = BatchNormShape { n, c: c0, hw: h * w };
    bn_forward(exec, bn, &s0, state, params, acts, stem.conv.clone(), stem.bn.clone(), stem.bn_stats.clone())?;
    params += 4 * c0;
    let (x, y) = read_write(acts, stem.bn.clone(), stem.prelu.clone());
    prelu_forward_on(exec, &s0, x, &state.read()[params..params + c0], y)?;
    params += c0;

    // Blocks: x (N, C_in, H, W) -> y (N, C_out, H/stride, W/stride).
    let mut x_range = stem.prelu;
    for b in cfg.blocks() {
        let p = BlockParams::new(&b, params);
        let a = BlockActs::new(&b, n, &mut bump);
        let in_shape = BatchNormShape { n, c: b.c_in, hw: b.h * b.w };
        let full = BatchNormShape { n, c: b.c_out, hw: b.h * b.w };
        let out = BatchNormShape { n, c: b.c_out, hw: b.out_h() * b.out_w() };
        bn_forward(exec, bn, &in_shape, state, p.bn1, acts, x_range.clone(), a.a1.clone(), a.a1_stats.clone())?;
        let c1 = conv3(b.c_in, b.c_out, n, b.h, b.w, 1);
        let (x, y) = read_write(acts, a.a1.clone(), a.c1.clone());
        conv2d_forward_on(exec, &c1, x, &state.read()[p.conv1..p.conv1 + c1.weight_len()], y)?;
        bn_forward(exec, bn, &full, state, p.bn2, acts, a.c1.clone(), a.a2.clone(), a.a2_stats.clone())?;
        let (x, y) = read_write(acts, a.a2.clone(), a.p.clone());
        prelu_forward_on(exec, &full, x, &state.read()[p.prelu..p.prelu + b.c_out], y)?;
        let c2 = conv3(b.c_out, b.c_out, n, b.h, b.w, b.stride);
        let (x, y) = read_write(acts, a.p.clone(), a.c2.clone());
        conv2d_forward_on(exec, &c2, x, &state.read()[p.conv2..p.conv2 + c2.weight_len()], y)?;
        bn_forward(exec, bn, &out, state, p.bn3, acts, a.c2.clone(), a.a3.clone(), a.a3_stats.clone())?;
        let shortcut = match &a.shortcut {
            Some((dc, db, db_stats)) => {
                let ds = Conv2dShape { kh: 1, kw: 1, pad: 0, ..conv3(b.c_in, b.c_out, n, b.h, b.w, b.stride) };
                let (x, y) = read_write(acts, x_range.clone(), dc.clone());
                conv2d_forward_on(exec, &ds, x, &state.read()[p.ds_conv..p.ds_conv + ds.weight_len()], y)?;
                bn_forward(exec, bn, &out, state, p.ds_bn, acts, dc.clone(), db.clone(), db_stats.clone())?;
                db.clone()
            }
            None => x_range.clone(),
        };
        let (lo, hi) = acts.split_at_mut(a.y.start);
        residual_add_forward(&lo[a.a3.clone()], &lo[shortcut], &mut hi[..a.y.len()])?;
        params += b.state_len();
        x_range = a.y;
    }

    // Tail: bn2 (N, C3, H/16, W/16), flatten to (N, FC_IN), fc -> (N, E), features -> (N, E).
    let t = TailActs::new(cfg, n, &mut bump);
    let c3 = cfg.widths[3];
    let s2 = BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) };
    bn_forward(exec, bn, &s2, state, params, acts, x_range, t.bn2.clone(), t.bn2_stats.clone())?;
    params += 4 * c3;
    let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: cfg.embedding };
    let wlen = fc.inputs * fc.outputs;
    let (x, y) = read_write(acts, t.bn2.clone(), t.fc.clone());
    linear_forward(
        &fc,
        x,
        &state.read()[params..params + wlen],
        &state.read()[params + wlen..params + wlen + fc.outputs],
        y,
    )?;
    params += wlen + fc.outputs;
    let sf = BatchNormShape { n, c: cfg.embedding, hw: 1 };
    bn_forward(exec, bn, &sf, state, params, acts, t.fc, t.features.clone(), t.features_stats)?;
    debug_assert_eq!(params + 4 * cfg.embedding, cfg.state_len());
    debug_assert_eq!(bump.0, cfg.activations_len(n));
    Ok(t.features)
}

/// Runs the backbone on `n` images `input (N, 3, H, W)` and writes the embeddings `out (N, E)`.
///
/// [`StateRef::Train`] normalises with batch statistics and updates the running statistics in the state (as
/// PyTorch's `train()` mode); [`StateRef::Eval`] uses them, reading the state only. `acts` needs
/// `cfg.activations_len(n)` elements. An image's embedding in evaluation mode does not depend on the other images
/// of the batch, nor on `n`: the same bits in any batch. The convolutions, batch norms and PReLUs run on `exec`
/// ([`Serial`]: the calling thread), the same bits on any executor.
///
/// Errors: [`Error::Config`] for a network [`IResNetConfig::validate`] refuses; [`Error::Shape`] for `n < 2` in
/// `Mode::Train` (refused before any running statistic moves), `n = 0`, or a batch whose sizes overflow `usize`;
/// [`Error::Length`] naming a slice; [`Error::NonFinite`] for a non-finite `input`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    exec: &dyn Executor,
    cfg: &IResNetConfig,
    bn: &BatchNorm,
    mut state: StateRef<'_>,
    n: usize,
    input: &[f32],
    acts: &mut [f32],
    out: &mut [f32],
) -> Result<(), Error> {
    cfg.validate()?;
    let overflow = Error::Shape { what: "the batch's sizes overflow usize" };
    let (input_len, out_len) = (n.checked_mul(cfg.input_len()), n.checked_mul(cfg.embedding));
    let acts_len = Some(cfg.activations_len(n)).filter(|&l| l != usize::MAX);
    let (Some(input_len), Some(out_len), Some(acts_len)) = (input_len, out_len, acts_len) else {
        return Err(overflow);
    };
    check_len("state", state.read(), cfg.state_len())?;
    check_len("input", input, input_len)?;
    check_len("acts", acts, acts_len)?;
    check_len("out", out, out_len)?;
    check_finite("input", input)?;
    let e = forward_in_arena(exec, cfg, bn, &mut state, n, input, acts)?;
    out.copy_from_slice(&acts[e]);
    Ok(())
}

/// Offset of the embeddings `(N, E)` (the `features` output) in the activation arena.
fn embedding_offset(cfg: &IResNetConfig, n: usize) -> usize {
    let mut bump = Bump::default();
    StemActs::new(cfg, n, &mut bump);
    bump.0 += cfg.blocks().map(|b| b.activations_len(n)).sum::<usize>();
    TailActs::new(cfg, n, &mut bump).features.start
}

// ---------------------------------------------------------------- backward

/// Backward pass of the backbone after `forward_in_arena(Mode::Train)`: `d_emb (N, E)` in `bufs[0]`;
/// writes every parameter gradient into `grads` (same layout as the state). The four buffers are each as large
/// as the largest activation and rotate as the pass walks back through the blocks.
#[allow(clippy::too_many_arguments)]
fn backward_in_arena(
    exec: &dyn Executor,
    cfg: &IResNetConfig,
    bn: &BatchNorm,
    state: &[f32],
    n: usize,
    input: &[f32],
    acts: &[f32],
    grads: &mut [f32],
    bufs: [&mut [f32]; 4],
) -> Result<(), Error> {
    let (h, w, c0, c3, e) = (cfg.input_h, cfg.input_w, cfg.widths[0], cfg.widths[3], cfg.embedding);
    // Recompute the layout (same walk as the forward pass).
    let mut bump = Bump::default();
    let stem = StemActs::new(cfg, n, &mut bump);
    let blocks_start = bump.0;
    let blocks_len: usize = cfg.blocks().map(|b| b.activations_len(n)).sum();
    bump.0 += blocks_len;
    let t = TailActs::new(cfg, n, &mut bump);

    let mut params = cfg.state_len();
    let stats = |r: &Range<usize>, c: usize| (&acts[r.start..r.start + c], &acts[r.start + c..r.start + 2 * c]);

    // features (BatchNorm1d, weight frozen): d_emb in g0 -> d fc output in g1.
    params -= 4 * e;
    let sf = BatchNormShape { n, c: e, hw: 1 };
    let (mean, var) = stats(&t.features_stats, e);
    let [g0, g1, g2, g3] = bufs;
    let (ne, nf) = (n * e, n * cfg.fc_inputs());
    let gamma = &state[params..params + e];
    let [_, beta_r, _, _] = bn_ranges(params, e);
    batchnorm_backward_on(
        exec,
        &sf,
        bn,
        &acts[t.fc.clone()],
        gamma,
        mean,
        var,
        &g0[..ne],
        &mut g1[..ne],
        None,
        &mut grads[beta_r],
    )?;

    // fc: d fc output in g1 -> d bn2 output (flattened) in g2.
    let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
    let wlen = fc.inputs * fc.outputs;
    params -= wlen + e;
    let (dw, db) = grads[params..params + wlen + e].split_at_mut(wlen);
    linear_backward(&fc, &acts[t.bn2.clone()], &state[params..params + wlen], &g1[..ne], &mut g2[..nf], dw, db)?;

    // bn2: -> d last block output in g0.
    params -= 4 * c3;
    let s2 = BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) };
    let last_y = t.bn2.start - nf..t.bn2.start; // the last block's output ends right before the tail
    bn_backward(exec, bn, &s2, state, grads, params, &acts[last_y], stats(&t.bn2_stats, c3), &g2[..nf], &mut g0[..nf])?;

    // Blocks in reverse: dy in g0 -> dx in g0 (buffers rotate).
    let mut act_end = blocks_start + blocks_len;
    let mut bufs: [&mut [f32]; 4] = [g0, g1, g2, g3];
    for b in cfg.blocks().rev() {
        params -= b.state_len();
        act_end -= b.activations_len(n);
        let a = BlockActs::new(&b, n, &mut Bump(act_end));
        // The block input (the stem's or the previous block's output) ends where this block's activations start.
        let x = act_end - n * b.c_in * b.h * b.w..act_end;
        block_backward(exec, bn, &b, n, state, grads, params, acts, x, &a, &mut bufs)?;
    }

    // Stem: d prelu output in g0 -> prelu -> bn1 -> conv1 weight.
    let s0 = BatchNormShape { n, c: c0, hw: h * w };
    let len = n * c0 * h * w;
    let [g0, g1, g2, _] = bufs;
    params -= c0;
    prelu_backward_on(
        exec,
        &s0,
        &acts[stem.bn.clone()],
        &state[params..params + c0],
        &g0[..len],
        &mut g1[..len],
        &mut grads[params..params + c0],
    )?;
    params -= 4 * c0;
    bn_backward(
        exec,
        bn,
        &s0,
        state,
        grads,
        params,
        &acts[stem.conv.clone()],
        stats(&stem.bn_stats, c0),
        &g1[..len],
        &mut g2[..len],
    )?;
    params -= 27 * c0;
    debug_assert_eq!(params, 0);
    conv2d_backward_weight_on(exec, &conv3(3, c0, n, h, w, 1), &g2[..len], input, &mut grads[..27 * c0])
}

/// Batch norm backward with its parameters at `offset` (gradients of weight and bias into `grads`).
#[allow(clippy::too_many_arguments)]
fn bn_backward(
    exec: &dyn Executor,
    bn: &BatchNorm,
    s: &BatchNormShape,
    state: &[f32],
    grads: &mut [f32],
    offset: usize,
    x: &[f32],
    (mean, var): (&[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
) -> Result<(), Error> {
    let [gamma, _, _, _] = bn_ranges(offset, s.c);
    let (dgamma, rest) = grads[offset..offset + 2 * s.c].split_at_mut(s.c);
    batchnorm_backward_on(exec, s, bn, x, &state[gamma], mean, var, dy, dx, Some(dgamma), rest)
}

/// One block backward: `bufs[0]` holds `dy (N, C_out, HO, WO)` on entry and `dx (N, C_in, H, W)` on return.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    exec: &dyn Executor,
    bn: &BatchNorm,
    b: &BlockSpec,
    n: usize,
    state: &[f32],
    grads: &mut [f32],
    offset: usize,
    acts: &[f32],
    x: Range<usize>,
    a: &BlockActs,
    bufs: &mut [&mut [f32]; 4],
) -> Result<(), Error> {
    let p = BlockParams::new(b, offset);
    let in_len = n * b.c_in * b.h * b.w;
    let full_len = n * b.c_out * b.h * b.w;
    let out_len = n * b.c_out * b.out_h() * b.out_w();
    let in_shape = BatchNormShape { n, c: b.c_in, hw: b.h * b.w };
    let full = BatchNormShape { n, c: b.c_out, hw: b.h * b.w };
    let out = BatchNormShape { n, c: b.c_out, hw: b.out_h() * b.out_w() };
    let stats = |r: &Range<usize>, c: usize| (&acts[r.start..r.start + c], &acts[r.start + c..r.start + 2 * c]);
    let [dy, t1, t2, t3] = bufs;
    let dy = &dy[..out_len];

    // Shortcut: dy -> downsample.1 -> downsample.0 -> d x (shortcut part) in t2.
    if let Some((dc, _, db_stats)) = &a.shortcut {
        bn_backward(
            exec,
            bn,
            &out,
            state,
            grads,
            p.ds_bn,
            &acts[dc.clone()],
            stats(db_stats, b.c_out),
            dy,
            &mut t1[..out_len],
        )?;
        let ds = Conv2dShape { kh: 1, kw: 1, pad: 0, ..conv3(b.c_in, b.c_out, n, b.h, b.w, b.stride) };
        let wl = ds.weight_len();
        conv2d_backward_data_on(exec, &ds, &t1[..out_len], &state[p.ds_conv..p.ds_conv + wl], &mut t2[..in_len])?;
        conv2d_backward_weight_on(exec, &ds, &t1[..out_len], &acts[x.clone()], &mut grads[p.ds_conv..p.ds_conv + wl])?;
    }

    // Main path: bn3 -> conv2 -> prelu -> bn2 -> conv1 -> bn1, ending in t3.
    bn_backward(
        exec,
        bn,
        &out,
        state,
        grads,
        p.bn3,
        &acts[a.c2.clone()],
        stats(&a.a3_stats, b.c_out),
        dy,
        &mut t1[..out_len],
    )?;
    let c2 = conv3(b.c_out, b.c_out, n, b.h, b.w, b.stride);
    let wl = c2.weight_len();
    conv2d_backward_data_on(exec, &c2, &t1[..out_len], &state[p.conv2..p.conv2 + wl], &mut t3[..full_len])?;
    conv2d_backward_weight_on(exec, &c2, &t1[..out_len], &acts[a.p.clone()], &mut grads[p.conv2..p.conv2 + wl])?;
    let alpha = p.prelu..p.prelu + b.c_out;
    prelu_backward_on(
        exec,
        &full,
        &acts[a.a2.clone()],
        &state[alpha.clone()],
        &t3[..full_len],
        &mut t1[..full_len],
        &mut grads[alpha],
    )?;
    bn_backward(
        exec,
        bn,
        &full,
        state,
        grads,
        p.bn2,
        &acts[a.c1.clone()],
        stats(&a.a2_stats, b.c_out),
        &t1[..full_len],
        &mut t3[..full_len],
    )?;
    let c1 = conv3(b.c_in, b.c_out, n, b.h, b.w, 1);
    let wl = c1.weight_len();
    conv2d_backward_data_on(exec, &c1, &t3[..full_len], &state[p.conv1..p.conv1 + wl], &mut t1[..in_len])?;
    conv2d_backward_weight_on(exec, &c1, &t3[..full_len], &acts[a.a1.clone()], &mut grads[p.conv1..p.conv1 + wl])?;
    bn_backward(
        exec,
        bn,
        &in_shape,
        state,
        grads,
        p.bn1,
        &acts[x],
        stats(&a.a1_stats, b.c_in),
        &t1[..in_len],
        &mut t3[..in_len],
    )?;

    // The input's gradient is the sum of both paths.
    if a.shortcut.is_some() {
        accumulate(&mut t3[..in_len], &t2[..in_len])?;
    } else {
        accumulate(&mut t3[..in_len], dy)?;
    }
    bufs.swap(0, 3);
    Ok(())
}

// ---------------------------------------------------------------- the training step

/// Hyper-parameters of a training step. [`StepConfig::recipe`] gives the ElasticFace recipe's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    /// The loss.
    pub margin: MarginConfig,
    /// SGD of the backbone and the head (the same learning rate, momentum and weight decay for both).
    pub sgd: Sgd,
    /// Global gradient-norm clip of the backbone (the head is not clipped).
    pub clip_norm: f32,
    /// Batch norm eps and momentum.
    pub bn: BatchNorm,
}

impl StepConfig {
    /// The released ElasticFace recipe: lr 0.1, momentum 0.9, weight decay 5e-4, backbone clip 5, PyTorch's
    /// batch norm defaults.
    pub fn recipe(margin: MarginConfig) -> Self {
        Self {
            margin,
            sgd: Sgd { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 },
            clip_norm: 5.0,
            bn: BatchNorm::default(),
        }
    }
}

/// How one `&mut [f32]` arena is split for a [`Trainer`] of a given network, batch and class count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainerLayout {
    /// The network.
    pub cfg: IResNetConfig,
    /// Batch size B.
    pub batch: usize,
    /// Classes K of the head.
    pub classes: usize,
    state: Range<usize>,
    grads: Range<usize>,
    momentum: Range<usize>,
    head: Range<usize>,
    head_grad: Range<usize>,
    head_momentum: Range<usize>,
    acts: Range<usize>,
    bufs: [Range<usize>; 4],
    // Head scratch (see `HeadScratch`).
    emb_unit: Range<usize>,
    emb_norm: Range<usize>,
    w_unit: Range<usize>,
    w_norm: Range<usize>,
    cos: Range<usize>,
    logits: Range<usize>,
    margins: Range<usize>,
    // Gradient accumulation (see `with_accumulation`; empty without): the running sums of the backbone's and the
    // head's gradients over a step's micro-batches.
    grad_sum: Range<usize>,
    head_grad_sum: Range<usize>,
}

impl TrainerLayout {
    /// The layout for `cfg` at batch `batch` with `classes` classes (`batch >= 2`: batch norm needs two samples).
    pub fn new(cfg: &IResNetConfig, batch: usize, classes: usize) -> Result<Self, Error> {
        cfg.validate()?;
        if batch < 2 || classes == 0 {
            return Err(Error::Config { what: "training needs a batch of at least 2 and at least one class" });
        }
        let (s, e, k) = (cfg.state_len(), cfg.embedding, classes);
        // Every part's size, and the arena's with the accumulation sums that `with_accumulation` may append, must
        // fit `usize` (the activation sizes saturate at usize::MAX, which no slice can have).
        let overflow = Error::Config { what: "the trainer arena's size overflows usize" };
        let (acts, largest) = (cfg.activations_len(batch), cfg.largest_activation(batch));
        let (Some(ek), Some(be), Some(bk)) = (e.checked_mul(k), batch.checked_mul(e), batch.checked_mul(k)) else {
            return Err(overflow);
        };
        let big = largest.max(be);
        let parts = [s, s, s, ek, ek, ek, acts, big, big, big, big, be, batch, ek, k, bk, bk, batch, s, ek];
        if acts == usize::MAX
            || largest == usize::MAX
            || parts.iter().try_fold(0usize, |a, &p| a.checked_add(p)).is_none()
        {
            return Err(overflow);
        }
        let mut b = Bump::default();
        Ok(Self {
            cfg: *cfg,
            batch,
            classes,
            state: b.take(s),
            grads: b.take(s),
            momentum: b.take(s),
            head: b.take(ek),
            head_grad: b.take(ek),
            head_momentum: b.take(ek),
            acts: b.take(acts),
            bufs: [b.take(big), b.take(big), b.take(big), b.take(big)],
            emb_unit: b.take(be),
            emb_norm: b.take(batch),
            w_unit: b.take(ek),
            w_norm: b.take(k),
            cos: b.take(bk),
            logits: b.take(bk),
            margins: b.take(batch),
            grad_sum: b.0..b.0,
            head_grad_sum: b.0..b.0,
        })
    }

    /// This layout with room for gradient accumulation ([`Trainer::step`] over several micro-batches of `batch`
    /// samples): a sum of the backbone's gradients and one of the head's, appended after everything else, so an
    /// arena laid out without them keeps its contents where they were when it grows to [`TrainerLayout::arena_len`].
    pub fn with_accumulation(mut self) -> Self {
        if !self.accumulates() {
            let mut b = Bump(self.margins.end);
            self.grad_sum = b.take(self.state.len());
            self.head_grad_sum = b.take(self.head.len());
        }
        self
    }

    /// Whether the layout has room for gradient accumulation ([`TrainerLayout::with_accumulation`]).
    pub fn accumulates(&self) -> bool {
        !self.grad_sum.is_empty()
    }

    /// Elements of the arena.
    pub fn arena_len(&self) -> usize {
        self.head_grad_sum.end
    }
}

/// Checks that every trainable tensor's gradient in `grads` (state layout) is finite: [`Error::NonFinite`] named
/// `backbone gradient` otherwise, at the index in `grads` of the first non-finite element.
fn check_backbone_grads(cfg: &IResNetConfig, grads: &[f32]) -> Result<(), Error> {
    for t in cfg.tensors().filter(|t| t.kind == TensorKind::Trainable) {
        check_finite("backbone gradient", &grads[t.range()]).map_err(|e| match e {
            Error::NonFinite { what, index } => Error::NonFinite { what, index: t.offset + index },
            other => other,
        })?;
    }
    Ok(())
}

/// What a training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The mean margin loss of the batch, before the update.
    pub loss: f32,
    /// The backbone's global gradient norm before clipping (as `clip_grad_norm_` returns it).
    pub grad_norm: f32,
}

/// A complete, slow, readable iResNet trainer on the CPU: forward, margin head, backward, clip, SGD.
///
/// It is the oracle for the GPU trainer. Its convolutions (nearly all of its time), batch norms and PReLUs run on the
/// calling thread, or on threads a host lends through [`Trainer::with_executor`], with the same bits. All memory is the caller's: one f32
/// arena of [`TrainerLayout::arena_len`] elements and `batch` u32s for the Plus ranking.
pub struct Trainer<'a> {
    layout: TrainerLayout,
    step_cfg: StepConfig,
    arena: &'a mut [f32],
    order: &'a mut [u32],
    steps: u64,
    exec: &'a dyn Executor,
}

impl<'a> Trainer<'a> {
    /// A trainer on `arena` (zeroed here: momentum starts at zero). Load or initialise the state and head next.
    pub fn new(
        layout: TrainerLayout,
        step_cfg: StepConfig,
        arena: &'a mut [f32],
        order: &'a mut [u32],
    ) -> Result<Self, Error> {
        let t = Self::attach(layout, step_cfg, arena, order)?;
        t.arena.fill(0.0);
        Ok(t)
    }

    /// A trainer on an arena that already holds a training state (laid out by the same `layout`), e.g. one
    /// kept between calls by its owner. The step counter starts at 0: set it with [`Trainer::set_steps`].
    ///
    /// Errors: [`Error::Config`] for an invalid margin, or a layout that is not what [`TrainerLayout::new`] (and
    /// [`TrainerLayout::with_accumulation`]) make from its `cfg`, `batch` and `classes` (fields edited since);
    /// [`Error::Length`] naming `arena` or `order`.
    pub fn attach(
        layout: TrainerLayout,
        step_cfg: StepConfig,
        arena: &'a mut [f32],
        order: &'a mut [u32],
    ) -> Result<Self, Error> {
        step_cfg.margin.validate()?;
        // The public fields may have been edited since `TrainerLayout::new` laid out the (private) ranges from them.
        let mut made = TrainerLayout::new(&layout.cfg, layout.batch, layout.classes)?;
        if layout.accumulates() {
            made = made.with_accumulation();
        }
        if made != layout {
            return Err(Error::Config { what: "the layout's cfg, batch or classes changed after TrainerLayout::new" });
        }
        check_len("arena", arena, layout.arena_len())?;
        check_len("order", order, layout.batch)?;
        Ok(Self { layout, step_cfg, arena, order, steps: 0, exec: &Serial })
    }

    /// Runs the convolutions, batch norms and PReLUs of the following steps on `exec` (threads a host lends;
    /// [`Serial`] by default): the same bits on any executor.
    pub fn with_executor(mut self, exec: &'a dyn Executor) -> Self {
        self.exec = exec;
        self
    }

    /// Sets the learning rate of the following steps.
    pub fn set_lr(&mut self, lr: f32) {
        self.step_cfg.sgd.lr = lr;
    }

    /// The layout.
    pub fn layout(&self) -> &TrainerLayout {
        &self.layout
    }
    /// The step configuration.
    pub fn step_config(&self) -> &StepConfig {
        &self.step_cfg
    }
    /// Training steps taken (each batch norm's `num_batches_tracked`).
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Sets the step counter (when loading a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
    /// The backbone state, laid out as [`IResNetConfig::tensors`].
    pub fn state(&self) -> &[f32] {
        &self.arena[self.layout.state.clone()]
    }
    /// The backbone state, to load weights.
    pub fn state_mut(&mut self) -> &mut [f32] {
        &mut self.arena[self.layout.state.clone()]
    }
    /// The head's class centres `(E, K)`.
    pub fn head(&self) -> &[f32] {
        &self.arena[self.layout.head.clone()]
    }
    /// The head's class centres, to load weights.
    pub fn head_mut(&mut self) -> &mut [f32] {
        &mut self.arena[self.layout.head.clone()]
    }
    /// The backbone gradients of the last step (after clipping; the mean over its micro-batches where it had
    /// several), laid out as the state; entries of running statistics and frozen tensors are unused.
    pub fn grads(&self) -> &[f32] {
        &self.arena[self.layout.grads.clone()]
    }
    /// The head gradient of the last step `(E, K)` (not clipped; the mean over its micro-batches where it had
    /// several).
    pub fn head_grad(&self) -> &[f32] {
        &self.arena[self.layout.head_grad.clone()]
    }
    /// The momentum buffers of the backbone (state layout) and of the head.
    pub fn momentum(&self) -> (&[f32], &[f32]) {
        (&self.arena[self.layout.momentum.clone()], &self.arena[self.layout.head_momentum.clone()])
    }
    /// The momentum buffers, to load an optimizer state.
    pub fn momentum_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        let l = &self.layout;
        let (lo, hi) = self.arena.split_at_mut(l.head_momentum.start);
        (&mut lo[l.momentum.clone()], &mut hi[..l.head_momentum.len()])
    }

    /// Initialises the backbone as insightface ([`init_state`]) and the head `N(0, 0.01)`, from `rng`.
    pub fn init(&mut self, rng: &mut impl RngCore) -> Result<(), Error> {
        let cfg = self.layout.cfg;
        init_state(&cfg, rng, self.state_mut())?;
        init_head(rng, self.head_mut());
        Ok(())
    }

    /// One training step on `input (N B, 3, H, W)` with `labels (N B)` and the sampled margins `margins_raw (N B)`
    /// (the Plus variants assign them by rank inside the head): `N` micro-batches of the layout's `B` samples, `N`
    /// at least 1 (more needs a layout [`TrainerLayout::with_accumulation`]).
    ///
    /// Each micro-batch runs forward (its own batch statistics; the running statistics move once per micro-batch)
    /// and backward as a step of `B` would; the update then follows the mean of their gradients and reports the mean
    /// of their losses, both summed in micro-batch order ([`accumulate_gradient`]): what `N` data-parallel replicas
    /// of `B` samples each compute, one after the other. With `N = 1` no sum is taken.
    ///
    /// A non-finite loss stops the step before its micro-batch's backward pass, and a non-finite (mean) gradient
    /// before the update, with [`Error::NonFinite`] naming it; the parameters, head and momentum are then unchanged
    /// (the running statistics have already moved, as they do in PyTorch's forward pass).
    pub fn step(&mut self, input: &[f32], labels: &[u32], margins_raw: &[f32]) -> Result<StepReport, Error> {
        let l = self.layout.clone();
        let (cfg, b, k, e) = (l.cfg, l.batch, l.classes, l.cfg.embedding);
        // A whole number of micro-batches of the layout's batch (at least one).
        let micro = (labels.len() / b).max(1);
        check_len("labels", labels, micro * b)?;
        if micro > 1 && !l.accumulates() {
            return Err(Error::Config { what: "several micro-batches need a layout with accumulation" });
        }
        let input_len = labels.len().checked_mul(cfg.input_len());
        check_len("input", input, input_len.ok_or(Error::Shape { what: "the step's input size overflows usize" })?)?;
        check_len("margins_raw", margins_raw, labels.len())?;
        check_labels(labels, k)?;
        check_finite("input", input)?;
        let sc = &self.step_cfg;

        // Split the arena into its named parts (in arena order).
        let (state, rest) = self.arena.split_at_mut(l.grads.start);
        let (grads, rest) = rest.split_at_mut(l.grads.len());
        let (momentum, rest) = rest.split_at_mut(l.momentum.len());
        let (head, rest) = rest.split_at_mut(l.head.len());
        let (head_grad, rest) = rest.split_at_mut(l.head_grad.len());
        let (head_momentum, rest) = rest.split_at_mut(l.head_momentum.len());
        let (acts, rest) = rest.split_at_mut(l.acts.len());
        let big = l.bufs[0].len();
        let (g0, rest) = rest.split_at_mut(big);
        let (g1, rest) = rest.split_at_mut(big);
        let (g2, rest) = rest.split_at_mut(big);
        let (g3, rest) = rest.split_at_mut(big);
        let (emb_unit, rest) = rest.split_at_mut(l.emb_unit.len());
        let (emb_norm, rest) = rest.split_at_mut(l.emb_norm.len());
        let (w_unit, rest) = rest.split_at_mut(l.w_unit.len());
        let (w_norm, rest) = rest.split_at_mut(l.w_norm.len());
        let (cos, rest) = rest.split_at_mut(l.cos.len());
        let (logits, rest) = rest.split_at_mut(l.logits.len());
        let (margins, rest) = rest.split_at_mut(l.margins.len());
        let (grad_sum, head_grad_sum) = rest.split_at_mut(l.grad_sum.len());
        let state = &mut state[..l.state.len()];
        let mut scratch = HeadScratch { emb_unit, emb_norm, w_unit, w_norm, cos, logits, margins, order: self.order };
        let shape = HeadShape { batch: b, dim: e, classes: k };
        let trainable = || cfg.tensors().filter(|t| t.kind == TensorKind::Trainable);

        let per = b * cfg.input_len();
        let mut loss_sum = [0.0f32];
        let mut loss = [0.0f32];
        for (i, ((input, labels), margins_raw)) in
            input.chunks_exact(per).zip(labels.chunks_exact(b)).zip(margins_raw.chunks_exact(b)).enumerate()
        {
            // Forward: backbone (batch statistics), then the margin head.
            let emb = forward_in_arena(self.exec, &cfg, &sc.bn, &mut StateRef::Train(&mut *state), b, input, acts)?;
            loss[0] = margin_loss_forward(&sc.margin, &shape, &acts[emb], head, labels, margins_raw, &mut scratch)?;
            if !loss[0].is_finite() {
                return Err(Error::NonFinite { what: "loss", index: 0 });
            }

            // Backward: head, then backbone.
            margin_loss_backward(&sc.margin, &shape, labels, &mut scratch, &mut g0[..b * e], head_grad)?;
            let bufs = [&mut *g0, &mut *g1, &mut *g2, &mut *g3];
            backward_in_arena(self.exec, &cfg, &sc.bn, state, b, input, acts, grads, bufs)?;
            if micro > 1 {
                let stage = MicroBatch::of(i, micro);
                accumulate_gradient(stage, &mut loss_sum, &mut loss)?;
                accumulate_gradient(stage, head_grad_sum, head_grad)?;
                for t in trainable() {
                    accumulate_gradient(stage, &mut grad_sum[t.range()], &mut grads[t.range()])?;
                }
            }
        }
        check_finite("head gradient", head_grad)?;
        check_backbone_grads(&cfg, grads)?;

        // Clip the backbone's global gradient norm, then SGD on the backbone and the head.
        let grad_norm = libm::sqrtf(trainable().map(|t| sum_of_squares(&grads[t.range()])).sum());
        let coef = clip_coefficient(grad_norm, sc.clip_norm);
        for t in trainable() {
            scale(&mut grads[t.range()], coef);
            sgd_step(&sc.sgd, &mut state[t.range()], &grads[t.range()], &mut momentum[t.range()])?;
        }
        sgd_step(&sc.sgd, head, head_grad, head_momentum)?;
        self.steps += 1;
        Ok(StepReport { loss: loss[0], grad_norm })
    }

    /// The embeddings `(B, E)` of the last training step's forward pass (batch statistics; its last micro-batch's
    /// where it had several).
    pub fn embeddings(&self) -> &[f32] {
        let l = &self.layout;
        let start = l.acts.start + embedding_offset(&l.cfg, l.batch);
        &self.arena[start..start + l.batch * l.cfg.embedding]
    }

    /// Embeddings `out (N, E)` of `n <= B` images `input (N, 3, H, W)` in evaluation mode (running statistics), on
    /// the trainer's executor.
    pub fn embed(&mut self, n: usize, input: &[f32], out: &mut [f32]) -> Result<(), Error> {
        let l = &self.layout;
        if n > l.batch {
            return Err(Error::Config { what: "cannot embed more images at once than the training batch" });
        }
        let (lo, hi) = self.arena.split_at_mut(l.acts.start);
        let acts = &mut hi[..l.cfg.activations_len(n)];
        forward(self.exec, &l.cfg, &self.step_cfg.bn, StateRef::Eval(&lo[l.state.clone()]), n, input, acts, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_pytorch() {
        // FACTS §2, measured with PyTorch: r100 65.16 M, r50 43.59 M parameters.
        assert_eq!((IResNetConfig::R100.parameter_count() as f64 / 1e4).round() / 100.0, 65.16);
        assert_eq!((IResNetConfig::R50.parameter_count() as f64 / 1e4).round() / 100.0, 43.59);
    }

    #[test]
    fn tensor_names_follow_insightface() {
        let cfg = IResNetConfig::R18;
        let names: [&str; 4] = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean"];
        for (t, want) in cfg.tensors().zip(names) {
            assert!(t.has_name(want), "{t} != {want}");
        }
        let t = cfg.find("layer2.0.downsample.1.running_var").expect("present");
        assert_eq!((t.dims(), t.kind), (&[128][..], TensorKind::RunningStat));
        assert!(cfg.find("layer2.1.downsample.0.weight").is_none(), "only the first block downsamples");
        let fc = cfg.find("fc.weight").unwrap();
        assert_eq!(fc.dims(), &[512, 512 * 7 * 7]);
        assert_eq!(cfg.find("features.weight").unwrap().kind, TensorKind::Frozen);
        assert!(cfg.find("layer2.0.downsample.1.running_va").is_none());
        assert!(cfg.find("layer2.0.downsample.1.running_varx").is_none());
        let last = cfg.tensors().last().unwrap();
        assert_eq!(last.offset + last.len, cfg.state_len());
    }

    #[test]
    fn blocks_have_the_insightface_shapes() {
        let cfg = IResNetConfig::R18;
        let b = cfg.block(1, 0).unwrap();
        assert_eq!((b.c_in, b.c_out, b.stride, b.h, b.out_h(), b.downsample), (64, 128, 2, 56, 28, true));
        let b = cfg.block(3, 1).unwrap();
        assert_eq!((b.c_in, b.c_out, b.stride, b.h, b.out_h(), b.downsample), (512, 512, 1, 7, 7, false));
        let b = cfg.block(0, 0).unwrap();
        assert_eq!((b.c_in, b.c_out, b.h, b.out_h(), b.downsample), (64, 64, 112, 56, true));
        // Blocks the network does not have.
        assert_eq!(cfg.block(4, 0), None);
        assert_eq!(cfg.block(usize::MAX, 0), None);
        assert_eq!(cfg.block(0, 2), None);
        assert_eq!(cfg.blocks().count(), 8);
    }

    extern crate std;
    use std::vec;

    use crate::margin::MarginConfig;
    use crate::rng::Philox4x32;

    const TINY: IResNetConfig =
        IResNetConfig { layers: [1, 1, 1, 1], widths: [2, 2, 2, 2], input_h: 16, input_w: 16, embedding: 4 };

    #[test]
    fn a_layout_edited_after_new_is_refused() {
        let step = StepConfig::recipe(MarginConfig::ARCFACE);
        let layout = TrainerLayout::new(&TINY, 2, 3).unwrap();
        let (mut arena, mut order) = (vec![0.0; layout.arena_len()], vec![0u32; 4]);
        assert!(Trainer::new(layout.clone(), step, &mut arena, &mut order[..2]).is_ok());
        let wider = IResNetConfig { widths: [4, 4, 4, 4], ..TINY };
        let edits: [&dyn Fn(&mut TrainerLayout); 3] = [&|l| l.batch = 4, &|l| l.classes = 1000, &|l| l.cfg = wider];
        for edit in edits {
            let mut edited = layout.clone();
            edit(&mut edited);
            let order = &mut order[..edited.batch];
            let e = Trainer::new(edited.clone(), step, &mut arena, order).map(|_| ());
            assert!(matches!(e, Err(Error::Config { .. })), "{edited:?}: {e:?}");
        }
        // With accumulation: accepted as made, refused once edited.
        let acc = layout.with_accumulation();
        let mut arena = vec![0.0; acc.arena_len()];
        assert!(Trainer::new(acc.clone(), step, &mut arena, &mut order[..2]).is_ok());
        let edited = TrainerLayout { classes: 2, ..acc };
        let e = Trainer::attach(edited, step, &mut arena, &mut order[..2]).map(|_| ());
        assert!(matches!(e, Err(Error::Config { .. })), "{e:?}");
    }

    #[test]
    fn train_mode_refuses_one_image_before_the_running_statistics_move() {
        let bn = BatchNorm::default();
        let mut state = vec![0.0; TINY.state_len()];
        init_state(&TINY, &mut Philox4x32::new(1, u64::MAX), &mut state).unwrap();
        let before = state.clone();
        let input: std::vec::Vec<f32> = (0..TINY.input_len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let (mut acts, mut out) = (vec![0.0; TINY.activations_len(1)], vec![0.0; TINY.embedding]);
        let e = forward(&Serial, &TINY, &bn, StateRef::Train(&mut state), 1, &input, &mut acts, &mut out);
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
        assert_eq!(state, before, "the running statistics moved");
        forward(&Serial, &TINY, &bn, StateRef::Eval(&state), 1, &input, &mut acts, &mut out).unwrap();
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let big = 1usize << (usize::BITS / 2);
        let wide = IResNetConfig { widths: [big; 4], ..TINY };
        assert!(matches!(wide.validate(), Err(Error::Config { .. })));
        assert_eq!(wide.state_len(), usize::MAX);
        let large = IResNetConfig { input_h: big, input_w: big, ..TINY };
        assert!(matches!(large.validate(), Err(Error::Config { .. })));
        assert_eq!(large.input_len(), usize::MAX);
        assert!(matches!(TrainerLayout::new(&TINY, 2, usize::MAX / 2), Err(Error::Config { .. })));
        assert!(matches!(TrainerLayout::new(&TINY, usize::MAX / 2, 3), Err(Error::Config { .. })));
        let bn = BatchNorm::default();
        let state = vec![0.0; TINY.state_len()];
        for n in [usize::MAX / 2, usize::MAX / 4096] {
            let e = forward(&Serial, &TINY, &bn, StateRef::Eval(&state), n, &[], &mut [], &mut []);
            assert!(matches!(e, Err(Error::Shape { .. })), "{n}: {e:?}");
        }
    }

    #[test]
    fn sizes_are_the_sums_over_every_block() {
        let odd = IResNetConfig { layers: [1, 3, 2, 5], widths: [3, 5, 5, 7], input_h: 32, input_w: 48, embedding: 6 };
        for cfg in [IResNetConfig::R100, IResNetConfig::R18, TINY, odd] {
            let tensors: usize = cfg.tensors().map(|t| t.len).sum();
            assert_eq!(cfg.state_len(), tensors);
            assert_eq!(cfg.state_len(), cfg.modules().map(|m| m.kind.state_len()).sum::<usize>());
            for n in [1, 2, 5] {
                let blocks: usize = cfg.blocks().map(|b| b.activations_len(n)).sum();
                let mut bump = Bump::default();
                StemActs::new(&cfg, n, &mut bump);
                bump.0 += blocks;
                TailActs::new(&cfg, n, &mut bump);
                assert_eq!(cfg.activations_len(n), bump.0);
                let largest = cfg.blocks().map(|b| n * b.c_in.max(b.c_out) * b.h * b.w).max().unwrap();
                let stem = n * cfg.widths[0] * cfg.input_h * cfg.input_w;
                assert_eq!(cfg.largest_activation(n), largest.max(stem).max(n * cfg.fc_inputs()));
            }
        }
        // Block counts far beyond anything iterable are sized (and refused) at once.
        let deep = IResNetConfig { layers: [usize::MAX / 2; 4], ..TINY };
        assert_eq!(deep.state_len(), usize::MAX);
        assert!(matches!(deep.validate(), Err(Error::Config { .. })));
    }

    #[test]
    fn a_non_finite_gradient_is_reported_at_its_element() {
        let mut grads = vec![0.0; TINY.state_len()];
        check_backbone_grads(&TINY, &grads).unwrap();
        let t = TINY.find("layer1.0.conv1.weight").unwrap();
        grads[t.offset + 5] = f32::NAN;
        let e = check_backbone_grads(&TINY, &grads);
        assert_eq!(e, Err(Error::NonFinite { what: "backbone gradient", index: t.offset + 5 }));
        // Running statistics are not gradients.
        grads[t.offset + 5] = 0.0;
        grads[TINY.find("bn1.running_var").unwrap().offset] = f32::INFINITY;
        check_backbone_grads(&TINY, &grads).unwrap();
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut cfg = IResNetConfig::R18;
        cfg.input_h = 100;
        assert!(matches!(cfg.validate(), Err(Error::Config { .. })));
        assert!(TrainerLayout::new(&IResNetConfig::R18, 1, 10).is_err());
        assert_eq!(IResNetConfig::preset("r100"), Some(IResNetConfig::R100));
        assert_eq!(IResNetConfig::preset("r101"), None);
    }
}
