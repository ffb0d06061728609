//! Every tensor of the GPU trainer, allocated once by [`Net::new`], and the views its passes take of them.

use super::*;

/// Which [`MemoryUse`] field an allocation counts towards.
#[derive(Clone, Copy)]
pub(super) enum Purpose {
    Parameters,
    Head,
    Activations,
    GradientBuffers,
    Scratch,
}

/// Allocates the trainer's tensors, refusing any larger than one binding, and counts their bytes.
pub(super) struct Alloc<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) used: MemoryUse,
}

impl Alloc<'_> {
    pub(super) fn zeros(&mut self, purpose: Purpose, label: &str, shape: &[usize]) -> Result<Tensor> {
        self.zeros_as(purpose, label, shape, Elem::F32)
    }

    /// [`Self::zeros`] with elements of `elem`.
    pub(super) fn zeros_as(&mut self, purpose: Purpose, label: &str, shape: &[usize], elem: Elem) -> Result<Tensor> {
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
    pub(super) fn packed(&mut self, purpose: Purpose, label: &str, parts: &[(String, Vec<usize>)]) -> Result<Packed> {
        let packed = self.gpu.packed(label, parts)?;
        self.count(purpose, packed.groups.iter().map(Tensor::bytes).sum());
        Ok(packed)
    }

    pub(super) fn count(&mut self, purpose: Purpose, bytes: u64) {
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
    pub(super) fn stats(&mut self, label: &str, c: usize) -> Result<Stats> {
        Ok(Stats {
            mean: self.zeros(Purpose::Activations, &format!("{label}.batch_mean"), &[c])?,
            var: self.zeros(Purpose::Activations, &format!("{label}.batch_var"), &[c])?,
        })
    }
}

/// One tensor of the state dict, with its gradient and momentum when it trains.
pub(super) struct Param {
    pub(super) info: TensorInfo,
    pub(super) value: Tensor,
    pub(super) grad: Option<Tensor>,
    pub(super) momentum: Option<Tensor>,
}

/// The groups of the packed state tensors ([`Gpu::packed`]): the trainable values, their gradients and their
/// momentum packed alike (group `i` of each holds the same tensors at the same offsets), so that clipping and SGD
/// take one dispatch per group instead of one per tensor; and the running statistics, saved and restored with one
/// copy per group. The frozen tensors have buffers of their own.
pub(super) struct Packs {
    pub(super) values: Vec<Tensor>,
    pub(super) grads: Vec<Tensor>,
    pub(super) momentum: Vec<Tensor>,
    pub(super) running: Vec<Tensor>,
}

impl Packs {
    /// Every state tensor of `cfg` in state order, zero, with its gradient and momentum where it trains; and the
    /// groups that hold them.
    pub(super) fn new(a: &mut Alloc, cfg: &IResNetConfig) -> Result<(Vec<Param>, Self)> {
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
pub(super) struct Stats {
    pub(super) mean: Tensor,
    pub(super) var: Tensor,
}

/// The stem: indices of its modules' first state tensors, and its activations `(B, C0, H, W)`.
pub(super) struct Stem {
    pub(super) conv: usize,
    pub(super) bn: usize,
    pub(super) prelu: usize,
    pub(super) conv_out: Tensor,
    /// bn1's output is recomputed in the backward pass (see the module documentation).
    pub(super) bn_stats: Stats,
    pub(super) prelu_out: Tensor,
}

/// The downsample shortcut of a block: its modules and the conv output `(B, C_out, h', w')`.
pub(super) struct Shortcut {
    pub(super) conv: usize,
    pub(super) bn: usize,
    pub(super) conv_out: Tensor,
    pub(super) bn_stats: Stats,
}

/// One `IBasicBlock`: indices of its modules' first state tensors and its activations (see the core's layout).
pub(super) struct Block {
    pub(super) spec: BlockSpec,
    pub(super) bn1: usize,
    pub(super) conv1: usize,
    pub(super) bn2: usize,
    pub(super) prelu: usize,
    pub(super) conv2: usize,
    pub(super) bn3: usize,
    pub(super) shortcut: Option<Shortcut>,
    /// Saved statistics of bn1 (its output `(B, C_in, h, w)` is never kept: recomputed in the backward pass, or,
    /// where conv1 runs as Winograd, applied by conv1's input transform in both passes).
    pub(super) a1_stats: Stats,
    /// `(B, C_out, h, w)` conv1 output.
    pub(super) c1: Tensor,
    /// Saved statistics of bn2 (its output `(B, C_out, h, w)` is recomputed in the backward pass).
    pub(super) a2_stats: Stats,
    /// `(B, C_out, h, w)` prelu output, kept where conv2 runs directly (a Winograd conv2 applies bn2 and the
    /// PReLU as it reads `c1`, forward and backward, so the output is never stored).
    pub(super) p: Option<Tensor>,
    /// `(B, C_out, h', w')` conv2 output (bn3's output is a temporary) and the block output.
    pub(super) c2: Tensor,
    pub(super) a3_stats: Stats,
    pub(super) y: Tensor,
}

/// The shapes of one block's layers and activations for a batch of `n`.
pub(super) struct BlockShapes {
    pub(super) input: BatchNormShape,
    pub(super) full: BatchNormShape,
    pub(super) out: BatchNormShape,
    pub(super) conv1: Conv2dShape,
    pub(super) conv2: Conv2dShape,
    pub(super) downsample: Conv2dShape,
    /// `(n, C_in, h, w)`: the block input, bn1's output.
    pub(super) in_dims: [usize; 4],
    /// `(n, C_out, h, w)`: conv1's, bn2's and prelu's outputs.
    pub(super) full_dims: [usize; 4],
    /// `(n, C_out, h', w')`: conv2's, bn3's and the shortcut's outputs, the block output.
    pub(super) out_dims: [usize; 4],
}

pub(super) fn conv3(c_in: usize, c_out: usize, n: usize, h: usize, w: usize, stride: usize) -> Conv2dShape {
    Conv2dShape { n, c_in, h, w, c_out, kh: 3, kw: 3, stride, pad: 1 }
}

/// The workspace of the convolutions of `cfg` that `k` runs as Winograd (`None` if none), at batch `n`.
pub(super) fn winograd_workspace(
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
    pub(super) fn new(b: &BlockSpec, n: usize) -> Self {
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
pub(super) struct Tail {
    pub(super) bn2: usize,
    pub(super) fc: usize,
    pub(super) features: usize,
    /// `(B, C3, H/16, W/16)`, read by `fc` as `(B, FC_IN)`.
    pub(super) bn2_out: Tensor,
    pub(super) bn2_stats: Stats,
    /// `(B, E)`.
    pub(super) fc_out: Tensor,
    /// `(B, E)`: the embeddings.
    pub(super) features_out: Tensor,
    pub(super) features_stats: Stats,
}

/// Every tensor of the trainer.
pub(super) struct Net {
    pub(super) cfg: IResNetConfig,
    pub(super) batch: usize,
    pub(super) classes: usize,
    /// In state-dict order ([`IResNetConfig::tensors`]).
    pub(super) params: Vec<Param>,
    /// The buffers that hold the trainable and running tensors of `params`.
    pub(super) packs: Packs,
    /// Mixed precision: the trainable values' groups rounded to f16, the same element offsets as
    /// `packs.values` (see [`Gpu::packed`]), refreshed at the start of every forward pass; the direct convolutions
    /// read their weights there ([`Net::conv_weight`]), half the bytes of the f32 ones and the rounding the tensor
    /// cores would do. Empty in f32.
    pub(super) weights16: Vec<Tensor>,
    pub(super) stem: Stem,
    pub(super) blocks: Vec<Block>,
    pub(super) tail: Tail,
    /// `(words)` u32: the batch's `u8 (B, H, W, 3)` images, packed four to a word.
    pub(super) images: Tensor,
    /// `(B)` u32 flip flags.
    pub(super) flips: Tensor,
    /// `(B, 3, H, W)` the network input.
    pub(super) input: Tensor,
    /// Four buffers of [`gradient_buffer_len`] elements, stored as the activations are: the backward pass's
    /// gradients, rotating as in the core (the tail's, from the embeddings to fc's input, seen as f32), and the
    /// forward pass's temporaries.
    pub(super) grad_bufs: [Tensor; 4],
    pub(super) conv_scratch: Tensor,
    /// The weight of a direct convolution's (or fc's) input gradient laid out as its products read it
    /// ([`Conv2d::phase_weights`]): f32, seen as the activations' type for the convolutions; sized by the largest.
    pub(super) phased_weights: Tensor,
    /// The Winograd convolutions' workspace, where any layer runs as Winograd.
    pub(super) winograd: Option<WinogradWorkspace>,
    pub(super) bn_scratch: Tensor,
    /// `(C, D)` class centres, their gradient and momentum, split alike.
    pub(super) head: SplitTensor,
    pub(super) head_grad: SplitTensor,
    pub(super) head_momentum: SplitTensor,
    /// `[lr, momentum, weight_decay]`.
    pub(super) hyper: Tensor,
    /// `[flags, loss, backbone norm, head norm]`.
    pub(super) report: Tensor,
    /// `[S, 1 / S]`: the loss scale of mixed precision (see [`LossScale`]).
    pub(super) loss_scale: Tensor,
    /// Every batch norm running statistic as it was before the step (mixed precision saves them there, and a
    /// step that is tried again restores them).
    pub(super) running_backup: Tensor,
    /// Gradient accumulation's sums, from the first step of several micro-batches on ([`Net::add_sums`]).
    pub(super) sums: Option<Sums>,
    pub(super) memory: MemoryUse,
}

/// The running sums of a step's micro-batches (gradient accumulation, the core's `accumulate_gradient`): of the
/// backbone's gradients (packed as `packs.grads`), of the head's (split as it is) and of the loss; and `[N, 1 / N]`.
pub(super) struct Sums {
    pub(super) grads: Vec<Tensor>,
    pub(super) head_grad: SplitTensor,
    pub(super) loss: Tensor,
    pub(super) micro_batches: Tensor,
}

/// The f16 copy of the trainable values' groups where the convolutions read `elem` weights (mixed precision),
/// else none (see [`Net::weights16`]).
pub(super) fn weights16(a: &mut Alloc, packs: &Packs, elem: Elem) -> Result<Vec<Tensor>> {
    if elem == Elem::F32 {
        return Ok(Vec::new());
    }
    let copy = |g: &Tensor| a.zeros_as(Purpose::Parameters, &format!("{} (f16)", g.label), &[g.len], Elem::F16);
    packs.values.iter().map(copy).collect()
}

/// The four rotating gradient buffers for `cfg` at batch `n`, of elements `elem` (the activations' gradients').
pub(super) fn gradient_buffers(a: &mut Alloc, cfg: &IResNetConfig, n: usize, elem: Elem) -> Result<[Tensor; 4]> {
    let len = gradient_buffer_len(cfg, n, elem);
    let [g0, g1, g2, g3] =
        [0, 1, 2, 3].map(|i| a.zeros_as(Purpose::GradientBuffers, &format!("gradient buffer {i}"), &[len], elem));
    Ok([g0?, g1?, g2?, g3?])
}

/// The first `n` samples of a batch-major tensor `(B, ...)`, as `(n, ...)` on the same buffer.
pub(super) fn first(t: &Tensor, n: usize) -> Result<Tensor> {
    let mut shape = t.shape.clone();
    shape[0] = n;
    t.view(&format!("{}[..{n}]", t.label), &shape)
}

impl Net {
    /// Allocates every tensor for `cfg` at batch `batch` with `classes` classes and uploads `state` and the head
    /// `head (D, C)`; gradients and momentum start at zero.
    pub(super) fn new(
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
        let mut bn_len = BatchNormKernels::scratch_len(&BatchNormShape { n, c: c0, hw: h * w });
        let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
        let mut convs = vec![conv3(3, c0, n, h, w, 1), conv_shape(&fc)];
        // The stem needs no input gradient.
        let mut phased_len = fc.weight_len();
        for b in &blocks {
            let s = BlockShapes::new(&b.spec, n);
            for conv in [s.conv1, s.conv2, s.downsample] {
                convs.push(conv);
                phased_len = phased_len.max(conv.weight_len());
            }
            for bn in [s.input, s.full, s.out] {
                bn_len = bn_len.max(BatchNormKernels::scratch_len(&bn));
            }
        }
        let mut conv_len = 0;
        for conv in &convs {
            conv_len = conv_len.max(k.conv.scratch_len(gpu, conv)?);
        }
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
            sums: None,
            memory: a.used,
        })
    }

    /// Allocates the sums of gradient accumulation ([`Sums`]), unless there are some already.
    pub(super) fn add_sums(&mut self, gpu: &Gpu) -> Result<()> {
        if self.sums.is_some() {
            return Ok(());
        }
        let mut a = Alloc { gpu, used: MemoryUse::default() };
        let grads = self
            .packs
            .grads
            .iter()
            .map(|g| a.zeros(Purpose::Parameters, &format!("{} (sum of micro-batches)", g.label), &[g.len]))
            .collect::<Result<_>>()?;
        let head_grad =
            gpu.zeros_split_like("grad.head.weight (sum of micro-batches)", &self.head, self.cfg.embedding)?;
        a.count(Purpose::Head, 4 * (self.cfg.embedding * self.classes) as u64);
        let loss = a.zeros(Purpose::Scratch, "loss (sum of micro-batches)", &[1])?;
        let micro_batches = a.zeros(Purpose::Scratch, "micro-batches [N, 1 / N]", &[2])?;
        self.memory.parameters += a.used.parameters;
        self.memory.head += a.used.head;
        self.memory.scratch += a.used.scratch;
        self.sums = Some(Sums { grads, head_grad, loss, micro_batches });
        Ok(())
    }

    pub(super) fn value(&self, i: usize) -> &Tensor {
        &self.params[i].value
    }

    /// Replaces the Winograd workspace with one for `k`'s choice of layers, and keeps the PReLU outputs of the
    /// blocks whose conv2 now runs directly (only those).
    pub(super) fn reallocate_winograd(&mut self, gpu: &Gpu, k: &Kernels) -> Result<()> {
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
    pub(super) fn reallocate_storage(&mut self, gpu: &Gpu, elem: Elem) -> Result<()> {
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
    pub(super) fn conv_weight(&self, weight: &Tensor) -> Result<Tensor> {
        if self.weights16.is_empty() {
            return weight.view(&weight.label, &weight.shape);
        }
        let g = self.packs.values.iter().position(|g| g.buffer == weight.buffer);
        let g = g.with_context(|| format!("{} is not a trainable value", weight.label))?;
        weight.same_part_of(&self.packs.values[g], &self.weights16[g])
    }

    /// Mixed precision: the dispatches that refresh [`Net::weights16`] from the trainable values, one per group.
    pub(super) fn round_weights(&self, gpu: &Gpu, k: &Kernels) -> Result<Vec<Dispatch>> {
        self.packs.values.iter().zip(&self.weights16).map(|(g, g16)| k.round.run(gpu, g, g16)).collect()
    }

    /// Gradient buffer `i` seen as a tensor of `shape` holding values stored as `elem` (the forward pass's
    /// temporaries).
    pub(super) fn value_buf(&self, i: usize, what: &str, shape: &[usize], elem: Elem) -> Result<Tensor> {
        self.grad_bufs[i].view_as(&format!("gradient buffer {i} ({what})"), shape, elem)
    }

    pub(super) fn grad(&self, i: usize) -> Result<&Tensor> {
        self.params[i].grad.as_ref().with_context(|| format!("{} has no gradient", self.params[i].info))
    }

    /// Gradient buffer `i` seen as a tensor of `shape`, holding an activation's gradient as the buffer stores it.
    pub(super) fn buf(&self, i: usize, what: &str, shape: &[usize]) -> Result<Tensor> {
        self.grad_bufs[i].view(&format!("gradient buffer {i} ({what})"), shape)
    }

    /// Gradient buffer `i` seen as an f32 tensor of `shape`: the tail's gradients, from the embeddings to fc's
    /// input, which the head and fc's kernels read and write in f32.
    pub(super) fn buf_f32(&self, i: usize, what: &str, shape: &[usize]) -> Result<Tensor> {
        self.value_buf(i, what, shape, Elem::F32)
    }

    /// Copies of every running statistic into (`save`) or back from the backup: one per group.
    pub(super) fn running_copies(&self, save: bool) -> Vec<BufferCopy<'_>> {
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
pub(super) struct Cursor<'a> {
    pub(super) params: &'a [Param],
    pub(super) next: usize,
}

impl Cursor<'_> {
    /// Index of the first state tensor of the next module, which must be called `name` (`bn1`, `downsample.0`).
    pub(super) fn module(&mut self, name: &str) -> Result<usize> {
        let first = self.next;
        let module = self.params.get(first).map(|p| p.info.module).context("the state ended before the network")?;
        ensure!(module.name == name, "state order: expected `{name}`, found `{module}`");
        while self.params.get(self.next).is_some_and(|p| p.info.module == module) {
            self.next += 1;
        }
        Ok(first)
    }
}
