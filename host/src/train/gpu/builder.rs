//! The dispatches of the forward and backward passes, recorded over a [`Net`] by [`Builder`].

use super::*;

/// Builds dispatch lists over a [`Net`].
pub(super) struct Builder<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) k: &'a Kernels,
    pub(super) net: &'a Net,
    pub(super) bn: BatchNorm,
}

impl Builder<'_> {
    /// A batch norm forward in `mode` with its state tensors from index `bn`, then `then` in the same pass:
    /// `x -> y`, batch statistics into `stats` (training mode).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_forward(
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
    pub(super) fn bn_recompute(
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
    pub(super) fn input_norm<'a>(
        &'a self,
        mode: Mode,
        bn: usize,
        stats: &'a Stats,
        prelu: Option<usize>,
    ) -> InputNorm<'a> {
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
    pub(super) fn bn_statistics(
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
    pub(super) fn bn_backward(
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
    pub(super) fn winograd(&self, s: &Conv2dShape) -> Option<&WinogradWorkspace> {
        self.net.winograd.as_ref().filter(|_| self.k.uses_winograd(s))
    }

    /// The convolution `op` on `s` (tensors in the order [`ConvOp::lens`] lists them), as Winograd or directly.
    pub(super) fn conv(
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
    /// it (see [`InputNorm`]); `inputs` in the order [`ConvOp::lens`] lists them, with the batch norm's input in
    /// place of the convolution's. Only for a shape that runs as Winograd ([`Self::winograd`]).
    pub(super) fn conv_normalized(
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

    /// The backbone forward of the batch in `input` in `mode`, writing the embeddings into `features.out`.
    /// Training mode keeps what the backward pass reads.
    pub(super) fn forward(&self, mode: Mode) -> Result<Vec<Dispatch>> {
        let (gpu, k, net, n) = (self.gpu, self.k, self.net, self.net.batch);
        let cfg = &net.cfg;
        let (h, w, c0, c3, e) = (cfg.input_h, cfg.input_w, cfg.widths[0], cfg.widths[3], cfg.embedding);
        // Mixed precision: the weights as the direct convolutions read them, rounded to f16.
        let mut d = net.round_weights(gpu, k)?;

        // Stem: conv1 (n, 3, H, W) -> (n, C0, H, W), bn1, prelu.
        let s = &net.stem;
        let stem_conv = conv3(3, c0, n, h, w, 1);
        self.conv(&mut d, ConvOp::Forward, &stem_conv, [&net.input, net.value(s.conv)], &s.conv_out)?;
        let s0 = BatchNormShape { n, c: c0, hw: h * w };
        // bn1 and the PReLU in one pass.
        let mut x = &s.prelu_out;
        let alpha = Epilogue::Prelu(net.value(s.prelu));
        self.bn_forward(&mut d, mode, &s0, s.bn, &s.conv_out, alpha, x, &s.bn_stats)?;

        // Blocks: x (n, C_in, h, w) -> y (n, C_out, h', w').
        for b in &net.blocks {
            let sh = BlockShapes::new(&b.spec, n);
            if self.winograd(&sh.conv1).is_some() {
                // conv1 normalises x as its input transform reads it: bn1's output is never stored.
                self.bn_statistics(&mut d, mode, &sh.input, b.bn1, x, &b.a1_stats)?;
                let norm = self.input_norm(mode, b.bn1, &b.a1_stats, None);
                self.conv_normalized(&mut d, ConvOp::Forward, &sh.conv1, [x, net.value(b.conv1)], norm, &b.c1)?;
            } else {
                // bn1's output is a temporary in a gradient buffer, recomputed in the backward pass.
                let a1 = net.value_buf(0, "bn1 output", &sh.in_dims, k.conv.activations())?;
                self.bn_forward(&mut d, mode, &sh.input, b.bn1, x, Epilogue::None, &a1, &b.a1_stats)?;
                self.conv(&mut d, ConvOp::Forward, &sh.conv1, [&a1, net.value(b.conv1)], &b.c1)?;
            }
            if self.winograd(&sh.conv2).is_some() {
                // conv2 applies bn2 and the PReLU as its input transform reads conv1's output.
                self.bn_statistics(&mut d, mode, &sh.full, b.bn2, &b.c1, &b.a2_stats)?;
                let norm = self.input_norm(mode, b.bn2, &b.a2_stats, Some(b.prelu));
                self.conv_normalized(&mut d, ConvOp::Forward, &sh.conv2, [&b.c1, net.value(b.conv2)], norm, &b.c2)?;
            } else {
                // bn2 and the PReLU in one pass.
                let p = b.p.as_ref().context("a block's PReLU output (conv2 runs directly)")?;
                let alpha = Epilogue::Prelu(net.value(b.prelu));
                self.bn_forward(&mut d, mode, &sh.full, b.bn2, &b.c1, alpha, p, &b.a2_stats)?;
                self.conv(&mut d, ConvOp::Forward, &sh.conv2, [p, net.value(b.conv2)], &b.c2)?;
            }
            // The shortcut: x, or the downsample batch norm's output, a temporary in a gradient buffer (free in
            // the forward pass).
            let downsampled;
            let shortcut = match &b.shortcut {
                Some(ds) => {
                    self.conv(&mut d, ConvOp::Forward, &sh.downsample, [x, net.value(ds.conv)], &ds.conv_out)?;
                    downsampled = net.value_buf(1, "downsample.1 output", &sh.out_dims, k.conv.activations())?;
                    let (db, stats) = (&downsampled, &ds.bn_stats);
                    self.bn_forward(&mut d, mode, &sh.out, ds.bn, &ds.conv_out, Epilogue::None, db, stats)?;
                    db
                }
                None => x,
            };
            // bn3 and the residual add in one pass.
            self.bn_forward(&mut d, mode, &sh.out, b.bn3, &b.c2, Epilogue::Add(shortcut), &b.y, &b.a3_stats)?;
            x = &b.y;
        }

        // Tail: bn2 (n, C3, H/16, W/16), flattened to (n, FC_IN), fc -> (n, E), features -> (n, E).
        let t = &net.tail;
        let s2 = BatchNormShape { n, c: c3, hw: (h / 16) * (w / 16) };
        self.bn_forward(&mut d, mode, &s2, t.bn2, x, Epilogue::None, &t.bn2_out, &t.bn2_stats)?;
        let fc = LinearShape { n, inputs: cfg.fc_inputs(), outputs: e };
        let (weight, bias) = (net.value(t.fc), net.value(t.fc + 1));
        d.extend(k.linear.forward(gpu, &fc, &t.bn2_out, weight, bias, &t.fc_out, &net.conv_scratch)?);
        let sf = BatchNormShape { n, c: e, hw: 1 };
        self.bn_forward(&mut d, mode, &sf, t.features, &t.fc_out, Epilogue::None, &t.features_out, &t.features_stats)?;
        Ok(d)
    }

    /// The backbone backward after the training forward and the head's backward (which leaves `d embeddings (B, E)`
    /// in gradient buffer 0): every trainable tensor's gradient, overwritten.
    pub(super) fn backward(&self) -> Result<Vec<Dispatch>> {
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
    pub(super) fn block_backward(&self, d: &mut Vec<Dispatch>, b: &Block, x: &Tensor, roles: [usize; 4]) -> Result<()> {
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
    pub(super) fn prelu_fusion(&self, bn: usize, prelu: usize) -> Result<BackwardFusion<'_>> {
        let net = self.net;
        Ok(BackwardFusion::Prelu { beta: net.value(bn + 1), alpha: net.value(prelu), dalpha: net.grad(prelu)? })
    }
}
