//! Training checkpoints: everything needed to continue a run exactly, in one safetensors file.
//!
//! Tensors (all `F32` unless noted):
//! - the backbone under insightface's state-dict names and PyTorch layouts (`conv1.weight`,
//!   `layer2.0.downsample.1.running_var`, ..., `features.bias`), plus `<bn>.num_batches_tracked` (`I64`, 0-d) for
//!   every batch norm, so the backbone loads into insightface's `iresnet` with `load_state_dict`;
//! - `head.weight` `(D, C)`: the class centres, one per column (the ElasticFace head's layout);
//! - `optimizer.momentum.<name>` for every trainable backbone tensor and `optimizer.momentum.head.weight`.
//!
//! The manifest (`about` metadata) holds the network, the loss, the optimizer settings, the seed, the step and
//! the data position of the next batch (margins and the data order are pure functions of the seed, the step and
//! the epoch, so nothing else is needed to continue bit for bit), plus the run's own settings as free JSON.
//! Files are written atomically ([`TensorFile::save`]).
//!
//! A [`Backbone`] is the network alone (no head, no optimizer): what evaluation, embedding and export need. It
//! is read from a checkpoint, from a backbone file ([`BACKBONE_FORMAT`], e.g. written by `elasticface import`),
//! or from any safetensors state dict with insightface's names (the network then inferred from the shapes,
//! [`infer_network`]).

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::margin::MarginConfig;
use elasticface_core::model::{IResNetConfig, ModuleKind, StepConfig, TensorKind, Trainer};
use elasticface_core::nn::{BatchNorm, Sgd};
use serde_json::{json, Value};

use crate::data::Position;
use crate::tensorfile::TensorFile;
use crate::train::gpu::LossScale;

/// The format name in the manifest.
pub const FORMAT: &str = "elasticface-checkpoint";
/// The format version; readers refuse newer ones.
pub const VERSION: u64 = 1;
/// The format name in the manifest of a backbone-only file.
pub const BACKBONE_FORMAT: &str = "elasticface-backbone";

/// A complete training state.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The network.
    pub cfg: IResNetConfig,
    /// Classes of the head.
    pub classes: usize,
    /// Loss, SGD (with the learning rate of the next step), clipping and batch norm settings.
    pub step_cfg: StepConfig,
    /// The run's seed (margins, data order, flips).
    pub seed: u64,
    /// Training steps taken.
    pub step: u64,
    /// Where the next batch starts.
    pub position: Position,
    /// The backbone in the state layout of [`IResNetConfig::tensors`].
    pub state: Vec<f32>,
    /// The class centres `(D, C)`.
    pub head: Vec<f32>,
    /// SGD momentum of the backbone (state layout; entries of non-trainable tensors are zero).
    pub momentum: Vec<f32>,
    /// SGD momentum of the head `(D, C)`.
    pub head_momentum: Vec<f32>,
    /// The run's own settings (schedule, data, ...), kept verbatim.
    pub run: Value,
    /// Mixed precision's dynamic loss scale, where the run trains in mixed precision (so that a resumed run goes on
    /// with the scale it had, bit for bit).
    pub loss_scale: Option<LossScale>,
}

impl Checkpoint {
    /// The state of a CPU trainer, with the run's seed, data position and settings.
    pub fn from_trainer(trainer: &Trainer<'_>, seed: u64, position: Position, run: Value) -> Self {
        let layout = trainer.layout();
        let (momentum, head_momentum) = trainer.momentum();
        Self {
            cfg: layout.cfg,
            classes: layout.classes,
            step_cfg: *trainer.step_config(),
            seed,
            step: trainer.steps(),
            position,
            state: trainer.state().to_vec(),
            head: trainer.head().to_vec(),
            momentum: momentum.to_vec(),
            head_momentum: head_momentum.to_vec(),
            run,
            loss_scale: None,
        }
    }

    /// Loads the weights, momentum and step counter into a CPU trainer of the same network and class count.
    pub fn apply_to(&self, trainer: &mut Trainer<'_>) -> Result<()> {
        let layout = trainer.layout();
        if layout.cfg != self.cfg || layout.classes != self.classes {
            bail!(
                "the checkpoint is for {:?} with {} classes, the trainer for {:?} with {}",
                self.cfg,
                self.classes,
                layout.cfg,
                layout.classes
            );
        }
        trainer.state_mut().copy_from_slice(&self.state);
        trainer.head_mut().copy_from_slice(&self.head);
        let (m, hm) = trainer.momentum_mut();
        m.copy_from_slice(&self.momentum);
        hm.copy_from_slice(&self.head_momentum);
        trainer.set_steps(self.step);
        Ok(())
    }

    /// The checkpoint as named tensors and a manifest.
    pub fn to_file(&self) -> Result<TensorFile> {
        let c = &self.cfg;
        let s = &self.step_cfg;
        let m = &s.margin;
        json_numbers_finite(
            "checkpoint",
            &[
                ("loss s", m.s),
                ("loss m", m.m),
                ("loss sigma", m.sigma),
                ("optimizer.lr", s.sgd.lr),
                ("optimizer.momentum", s.sgd.momentum),
                ("optimizer.weight_decay", s.sgd.weight_decay),
                ("optimizer.backbone_clip_grad_norm", s.clip_norm),
                ("batchnorm.eps", s.bn.eps),
                ("batchnorm.momentum", s.bn.momentum),
            ],
        )?;
        let meta = json!({
            "format": FORMAT,
            "version": VERSION,
            "network": network_json(c),
            "classes": self.classes,
            "loss": s.margin.to_string(),
            "optimizer": {
                "lr": s.sgd.lr, "momentum": s.sgd.momentum, "weight_decay": s.sgd.weight_decay,
                "backbone_clip_grad_norm": s.clip_norm,
            },
            "batchnorm": {"eps": s.bn.eps, "momentum": s.bn.momentum},
            "seed": self.seed,
            "step": self.step,
            "position": self.position.to_json(),
            "run": self.run,
        });
        let mut meta = meta;
        if let Some(ls) = self.loss_scale {
            meta["loss_scale"] = json!({"scale": ls.scale, "good_steps": ls.good_steps});
        }
        let mut f = TensorFile::new("checkpoint", meta);
        for t in c.tensors() {
            let name = t.to_string();
            f.insert_f32(&name, t.dims(), self.state[t.range()].to_vec())?;
            if t.kind == TensorKind::Trainable {
                f.insert_f32(&format!("optimizer.momentum.{name}"), t.dims(), self.momentum[t.range()].to_vec())?;
            }
            if matches!(t.module.kind, ModuleKind::BatchNorm { .. }) && t.field == "weight" {
                let steps = i64::try_from(self.step).context("step count")?;
                f.insert_i64(&format!("{}.num_batches_tracked", t.module), &[], vec![steps])?;
            }
        }
        let head_shape = [c.embedding, self.classes];
        f.insert_f32("head.weight", &head_shape, self.head.clone())?;
        f.insert_f32("optimizer.momentum.head.weight", &head_shape, self.head_momentum.clone())?;
        Ok(f)
    }

    /// Reads a checkpoint back, checking its format, version and every tensor's shape.
    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let m = &f.meta;
        let ctx = |what: &str| format!("{}: checkpoint manifest: {what}", f.name);
        if m["format"] != FORMAT {
            bail!("{}: not an elasticface checkpoint (no `format: {FORMAT}` in its manifest)", f.name);
        }
        check_version(f, "checkpoint")?;
        let u = |v: &Value, what: &str| v.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!(ctx(what)));
        let fl = |v: &Value, what: &str| v.as_f64().map(|x| x as f32).ok_or_else(|| anyhow!(ctx(what)));
        let cfg = network_from_json(f, &m["network"])?;
        let classes = u(&m["classes"], "classes")?;
        let loss = m["loss"].as_str().ok_or_else(|| anyhow!(ctx("no loss")))?;
        let margin: MarginConfig = loss.parse().map_err(|e| anyhow!("{}: loss `{loss}`: {e}", f.name))?;
        let o = &m["optimizer"];
        let step_cfg = StepConfig {
            margin,
            sgd: Sgd {
                lr: fl(&o["lr"], "optimizer.lr")?,
                momentum: fl(&o["momentum"], "optimizer.momentum")?,
                weight_decay: fl(&o["weight_decay"], "optimizer.weight_decay")?,
            },
            clip_norm: fl(&o["backbone_clip_grad_norm"], "optimizer.backbone_clip_grad_norm")?,
            bn: BatchNorm {
                eps: fl(&m["batchnorm"]["eps"], "batchnorm.eps")?,
                momentum: fl(&m["batchnorm"]["momentum"], "batchnorm.momentum")?,
            },
        };
        let position =
            Position::from_json(&m["position"]).map_err(|field| anyhow!(ctx(&format!("position.{field}"))))?;
        let state = read_state(f, &cfg)?;
        let mut momentum = vec![0.0; cfg.state_len()];
        for t in cfg.tensors().filter(|t| t.kind == TensorKind::Trainable) {
            momentum[t.range()].copy_from_slice(tensor(f, &format!("optimizer.momentum.{t}"), t.dims())?);
        }
        let head_shape = [cfg.embedding, classes];
        let loss_scale = match &m["loss_scale"] {
            Value::Null => None,
            ls => Some(LossScale {
                scale: fl(&ls["scale"], "loss_scale.scale")?,
                good_steps: u32::try_from(u(&ls["good_steps"], "loss_scale.good_steps")?)
                    .map_err(|_| anyhow!(ctx("loss_scale.good_steps")))?,
            }),
        };
        Ok(Self {
            cfg,
            classes,
            step_cfg,
            seed: m["seed"].as_u64().ok_or_else(|| anyhow!(ctx("seed")))?,
            step: m["step"].as_u64().ok_or_else(|| anyhow!(ctx("step")))?,
            position,
            head: tensor(f, "head.weight", &head_shape)?.to_vec(),
            head_momentum: tensor(f, "optimizer.momentum.head.weight", &head_shape)?.to_vec(),
            state,
            momentum,
            run: m["run"].clone(),
            loss_scale,
        })
    }

    /// Writes the checkpoint atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.to_file()?.save(path)
    }

    /// Reads a checkpoint from `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_file(&TensorFile::open(path)?)
    }

    /// The network alone (weights and running statistics), without the head and the optimizer state.
    pub fn backbone(&self) -> Backbone {
        Backbone { cfg: self.cfg, bn: self.step_cfg.bn, state: self.state.clone(), steps: self.step }
    }
}

/// A trained iResNet without its head or optimizer: what evaluation, embedding and export need.
#[derive(Clone, Debug, PartialEq)]
pub struct Backbone {
    /// The network.
    pub cfg: IResNetConfig,
    /// Batch norm eps (and momentum, unused in evaluation).
    pub bn: BatchNorm,
    /// Every float tensor, laid out as [`IResNetConfig::tensors`].
    pub state: Vec<f32>,
    /// Training steps taken, written as every batch norm's `num_batches_tracked`.
    pub steps: u64,
}

impl Backbone {
    /// The backbone as a state dict (insightface's names, `num_batches_tracked` included) with a manifest
    /// ([`BACKBONE_FORMAT`]: the network, batch norm settings, and `source`, free JSON saying where it came from).
    pub fn to_file(&self, source: Value) -> Result<TensorFile> {
        json_numbers_finite("backbone", &[("batchnorm.eps", self.bn.eps), ("batchnorm.momentum", self.bn.momentum)])?;
        let meta = json!({
            "format": BACKBONE_FORMAT,
            "version": VERSION,
            "network": network_json(&self.cfg),
            "batchnorm": {"eps": self.bn.eps, "momentum": self.bn.momentum},
            "source": source,
        });
        let mut f = TensorFile::new("backbone", meta);
        let steps = i64::try_from(self.steps).context("step count")?;
        for t in self.cfg.tensors() {
            f.insert_f32(&t.to_string(), t.dims(), self.state[t.range()].to_vec())?;
            if matches!(t.module.kind, ModuleKind::BatchNorm { .. }) && t.field == "weight" {
                f.insert_i64(&format!("{}.num_batches_tracked", t.module), &[], vec![steps])?;
            }
        }
        Ok(f)
    }

    /// Writes the backbone atomically to `path` (see [`Backbone::to_file`]).
    pub fn save(&self, path: &Path, source: Value) -> Result<()> {
        self.to_file(source)?.save(path)
    }

    /// Reads the backbone of any safetensors file with insightface's names:
    ///
    /// - a checkpoint ([`FORMAT`]): its backbone;
    /// - a backbone file ([`BACKBONE_FORMAT`]): the network from its manifest;
    /// - a file without a manifest (a state dict converted from PyTorch, [`crate::pth`]): the network is `cfg` when
    ///   given, else inferred from the shapes ([`infer_network`], `input_size` fixing the input when the shapes
    ///   cannot tell it). Then every tensor must be one of the network's (or a `num_batches_tracked`).
    ///
    /// Every tensor's shape is checked against the network.
    pub fn from_file(f: &TensorFile, cfg: Option<IResNetConfig>, input_size: Option<usize>) -> Result<Self> {
        let m = &f.meta;
        if m["format"] == FORMAT {
            return Ok(Checkpoint::from_file(f)?.backbone());
        }
        let (net, bn) = if m["format"] == BACKBONE_FORMAT {
            check_version(f, "backbone")?;
            let net = network_from_json(f, &m["network"])?;
            let b = &m["batchnorm"];
            let bn = match (b["eps"].as_f64(), b["momentum"].as_f64()) {
                (Some(eps), Some(momentum)) => BatchNorm { eps: eps as f32, momentum: momentum as f32 },
                _ => bail!("{}: backbone manifest: no batchnorm eps and momentum", f.name),
            };
            (net, bn)
        } else {
            let net = match cfg {
                Some(c) => c,
                None => infer_network(f, input_size)?,
            };
            check_only_backbone(f, &net)?;
            (net, BatchNorm::default())
        };
        if let Some(c) = cfg.filter(|c| *c != net) {
            bail!("{}: holds the network {net:?}, not the {c:?} asked for", f.name);
        }
        let steps = match f.i64("bn1.num_batches_tracked") {
            Ok([v]) => u64::try_from(*v).unwrap_or(0),
            _ => 0,
        };
        Ok(Self { cfg: net, bn, state: read_state(f, &net)?, steps })
    }

    /// Reads a model file: a checkpoint or backbone (`.safetensors`), a PyTorch state dict (`.pth`, any file that
    /// is a zip archive; [`crate::pth`]), or an ONNX file written by `elasticface export` (`.onnx`;
    /// [`crate::onnx::read_state_dict`]). `cfg` and `input_size` are as in [`Backbone::from_file`].
    pub fn open(path: &Path, cfg: Option<IResNetConfig>, input_size: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path.display().to_string();
        let is_onnx = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        let file = if is_onnx {
            crate::onnx::read_state_dict(&name, &bytes)?
        } else if crate::pth::is_zip(&bytes) || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pth")) {
            crate::pth::from_bytes(&name, &bytes)?
        } else {
            TensorFile::from_bytes(&name, &bytes)?
        };
        Self::from_file(&file, cfg, input_size)
    }

    /// The network in words: `iResNet [3, 13, 30, 3] x [64, 128, 256, 512], 112x112 input, 512-d embedding
    /// (65.16 M parameters)`.
    pub fn describe(&self) -> String {
        describe_network(&self.cfg)
    }

    /// A checkpoint that training backends load for inference: this backbone, a one-class head (a unit vector,
    /// never used by `embed`), zero momentum and the ElasticFace recipe's settings.
    pub fn inference_checkpoint(&self) -> Checkpoint {
        let e = self.cfg.embedding;
        Checkpoint {
            cfg: self.cfg,
            classes: 1,
            step_cfg: StepConfig { bn: self.bn, ..StepConfig::recipe(MarginConfig::ARCFACE) },
            seed: 0,
            step: self.steps,
            position: Position::epoch_start(0),
            state: self.state.clone(),
            head: vec![1.0 / (e as f32).sqrt(); e],
            momentum: vec![0.0; self.state.len()],
            head_momentum: vec![0.0; e],
            run: Value::Null,
            loss_scale: None,
        }
    }
}

/// A network in words: `iResNet [3, 13, 30, 3] x [64, 128, 256, 512], 112x112 input, 512-d embedding (65.16 M
/// parameters)`.
pub fn describe_network(c: &IResNetConfig) -> String {
    format!(
        "iResNet {:?} x {:?}, {}x{} input, {}-d embedding ({:.2} M parameters)",
        c.layers,
        c.widths,
        c.input_h,
        c.input_w,
        c.embedding,
        c.parameter_count() as f64 / 1e6
    )
}

/// The network as the manifests store it.
fn network_json(c: &IResNetConfig) -> Value {
    json!({"layers": c.layers, "widths": c.widths, "input_hw": [c.input_h, c.input_w], "embedding": c.embedding})
}

/// The network of a manifest's `network` entry, validated.
fn network_from_json(f: &TensorFile, n: &Value) -> Result<IResNetConfig> {
    let ctx = |what: &str| anyhow!("{}: manifest: {what}", f.name);
    let u = |v: &Value, what: &str| v.as_u64().map(|x| x as usize).ok_or_else(|| ctx(what));
    let four = |v: &Value, what: &str| -> Result<[usize; 4]> {
        let a = v.as_array().filter(|a| a.len() == 4).ok_or_else(|| ctx(what))?;
        Ok([u(&a[0], what)?, u(&a[1], what)?, u(&a[2], what)?, u(&a[3], what)?])
    };
    let cfg = IResNetConfig {
        layers: four(&n["layers"], "network.layers")?,
        widths: four(&n["widths"], "network.widths")?,
        input_h: u(&n["input_hw"][0], "network.input_hw")?,
        input_w: u(&n["input_hw"][1], "network.input_hw")?,
        embedding: u(&n["embedding"], "network.embedding")?,
    };
    cfg.validate().map_err(|e| anyhow!("{}: manifest: invalid network: {e}", f.name))?;
    Ok(cfg)
}

/// Refuses to write a manifest holding a non-finite number: JSON has no infinity or NaN (serde_json writes them as
/// `null`), so the file would be written but never read back.
fn json_numbers_finite(what: &str, values: &[(&str, f32)]) -> Result<()> {
    for (name, v) in values {
        ensure!(v.is_finite(), "{what} manifest: {name} is {v}, which JSON cannot hold; the file would not load back");
    }
    Ok(())
}

/// Refuses files of a newer format version than this build reads.
fn check_version(f: &TensorFile, what: &str) -> Result<()> {
    let version = f.meta["version"].as_u64().ok_or_else(|| anyhow!("{}: {what} manifest: no version", f.name))?;
    if version > VERSION {
        bail!("{}: {what} version {version} is newer than this build reads ({VERSION})", f.name);
    }
    Ok(())
}

/// Every float tensor of `cfg` from `f`, in the state layout, each shape checked.
fn read_state(f: &TensorFile, cfg: &IResNetConfig) -> Result<Vec<f32>> {
    let mut state = vec![0.0; cfg.state_len()];
    for t in cfg.tensors() {
        state[t.range()].copy_from_slice(tensor(f, &t.to_string(), t.dims())?);
    }
    Ok(state)
}

/// A bare state dict must hold the backbone and nothing else (as PyTorch's strict `load_state_dict`): a head, an
/// optimizer or another network's tensors mean the file is not what it seems.
fn check_only_backbone(f: &TensorFile, cfg: &IResNetConfig) -> Result<()> {
    let known: std::collections::HashSet<String> = cfg.tensors().map(|t| t.to_string()).collect();
    let extra: Vec<&str> =
        f.keys().into_iter().filter(|k| !known.contains(*k) && !k.ends_with(".num_batches_tracked")).collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(5).copied().collect();
        bail!(
            "{}: {} tensors are not part of the iResNet backbone ({}{})",
            f.name,
            extra.len(),
            shown.join(", "),
            if extra.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// The iResNet whose tensors `f` holds, from their shapes:
///
/// - blocks per stage: how many `layer{s}.{i}.bn1.weight` there are (`i = 0, 1, ...`);
/// - stem width from `conv1.weight (C0, 3, 3, 3)`, stage widths from `layer{s}.0.conv1.weight`;
/// - embedding from `fc.weight (E, F)`; the input size from `F = C3 * (H/16) * (W/16)`, taken square
///   (`H = W = 16 sqrt(F / C3)`), unless `input_size` is given (it must then agree).
///
/// The caller still checks every tensor's shape against the result.
pub fn infer_network(f: &TensorFile, input_size: Option<usize>) -> Result<IResNetConfig> {
    let shape = |key: &str| -> Result<&[usize]> { Ok(&f.get(key)?.shape) };
    let conv1 = shape("conv1.weight")?;
    ensure!(conv1.len() == 4 && conv1[1] == 3, "{}: conv1.weight has shape {conv1:?}, not (C, 3, 3, 3)", f.name);
    let mut layers = [0usize; 4];
    let mut widths = [0usize; 4];
    for s in 0..4 {
        while f.contains(&format!("layer{}.{}.bn1.weight", s + 1, layers[s])) {
            layers[s] += 1;
        }
        ensure!(layers[s] > 0, "{}: no block in layer{} (no layer{}.0.bn1.weight)", f.name, s + 1, s + 1);
        let key = format!("layer{}.0.conv1.weight", s + 1);
        widths[s] = *shape(&key)?.first().with_context(|| format!("{}: {key} has no dimensions", f.name))?;
        // A stage of no channels is no network, and the last width divides the fc layer's inputs below.
        ensure!(widths[s] > 0, "{}: {key} has shape {:?}: a stage of 0 channels", f.name, shape(&key)?);
    }
    ensure!(
        conv1[0] == widths[0],
        "{}: the stem has {} channels but layer1 {}: not an iResNet",
        f.name,
        conv1[0],
        widths[0]
    );
    let fc = shape("fc.weight")?;
    ensure!(fc.len() == 2, "{}: fc.weight has shape {fc:?}, not (E, F)", f.name);
    let (embedding, fc_in) = (fc[0], fc[1]);
    let side = match input_size {
        Some(size) => size,
        None => {
            ensure!(fc_in % widths[3] == 0, "{}: fc takes {fc_in} inputs, not a multiple of {}", f.name, widths[3]);
            let cells = fc_in / widths[3];
            let root = (cells as f64).sqrt().round() as usize;
            ensure!(
                root.checked_mul(root) == Some(cells),
                "{}: fc takes {cells} positions of the last stage, not a square; give the input size",
                f.name
            );
            16 * root
        }
    };
    let cfg = IResNetConfig { layers, widths, input_h: side, input_w: side, embedding };
    cfg.validate().map_err(|e| anyhow!("{}: inferred network {cfg:?}: {e}", f.name))?;
    ensure!(
        cfg.fc_inputs() == fc_in,
        "{}: fc takes {fc_in} inputs; a {side}x{side} input gives {}",
        f.name,
        cfg.fc_inputs()
    );
    Ok(cfg)
}

/// Tensor `key` of `f`, required to have shape `dims`.
fn tensor<'a>(f: &'a TensorFile, key: &str, dims: &[usize]) -> Result<&'a [f32]> {
    let t = f.get(key)?;
    if t.shape != dims {
        bail!("{}: `{key}` has shape {:?}, the network needs {dims:?}", f.name, t.shape);
    }
    f.f32(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensorfile::Data;
    use crate::train::cpu::CpuBackend;
    use crate::train::Backend;

    const NET: IResNetConfig =
        IResNetConfig { layers: [2, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 32, input_w: 32, embedding: 8 };

    fn checkpoint() -> Checkpoint {
        let b = CpuBackend::new(&NET, 2, 3, StepConfig::recipe(MarginConfig::ARCFACE), 5).unwrap();
        b.checkpoint(5, Position::epoch_start(0), Value::Null).unwrap()
    }

    /// A copy of `f` without its manifest, keeping the tensors `keep` accepts.
    fn bare(f: &TensorFile, keep: impl Fn(&str) -> bool) -> TensorFile {
        let mut out = TensorFile::new("bare", Value::Null);
        for k in f.keys().into_iter().filter(|k| keep(k)) {
            let t = f.get(k).unwrap();
            match &t.data {
                Data::F32(v) => out.insert_f32(k, &t.shape, v.clone()).unwrap(),
                Data::I64(v) => out.insert_i64(k, &t.shape, v.clone()).unwrap(),
            }
        }
        out
    }

    #[test]
    fn a_backbone_comes_from_checkpoints_backbone_files_and_bare_state_dicts() {
        let ck = checkpoint();
        let want = ck.backbone();
        let from_ck = Backbone::from_file(&ck.to_file().unwrap(), None, None).unwrap();
        assert_eq!(from_ck, want);
        let file = want.to_file(json!({"test": true})).unwrap();
        assert_eq!(file.meta["format"], BACKBONE_FORMAT);
        assert_eq!(Backbone::from_file(&file, None, None).unwrap(), want);
        // Without a manifest the network is inferred from the shapes.
        let sd = bare(&file, |_| true);
        assert_eq!(infer_network(&sd, None).unwrap(), NET);
        assert_eq!(Backbone::from_file(&sd, None, None).unwrap().state, want.state);
        assert_eq!(Backbone::from_file(&sd, Some(NET), None).unwrap().cfg, NET);
        // The inference checkpoint loads into a backend and embeds as the backbone does.
        let mut b = CpuBackend::new(&NET, 2, 1, StepConfig::recipe(MarginConfig::ARCFACE), 0).unwrap();
        b.load(&want.inference_checkpoint()).unwrap();
        let mut orig = CpuBackend::new(&NET, 2, 3, StepConfig::recipe(MarginConfig::ARCFACE), 0).unwrap();
        orig.load(&ck).unwrap();
        let images = vec![7u8; 2 * 32 * 32 * 3];
        assert_eq!(b.embed(&images, &[false, true]).unwrap(), orig.embed(&images, &[false, true]).unwrap());
    }

    #[test]
    fn state_dicts_that_are_not_the_backbone_are_refused() {
        let file = checkpoint().to_file().unwrap();
        let err = |f: &TensorFile, cfg: Option<IResNetConfig>, size: Option<usize>| {
            format!("{:#}", Backbone::from_file(f, cfg, size).unwrap_err())
        };
        // A checkpoint stripped of its manifest still holds the head and the optimizer state.
        let e = err(&bare(&file, |_| true), None, None);
        assert!(e.contains("are not part of the iResNet backbone") && e.contains("head.weight"), "{e}");
        let sd = bare(&file, |k| !k.starts_with("optimizer.") && k != "head.weight");
        let e = err(&bare(&sd, |k| k != "layer3.0.conv1.weight"), None, None);
        assert!(e.contains("layer3.0.conv1.weight"), "{e}");
        // Another network asked for, or an input size the fc layer contradicts.
        let other = IResNetConfig { embedding: 16, ..NET };
        assert!(err(&sd, Some(other), None).contains("fc.weight"));
        assert!(err(&sd, None, Some(48)).contains("a 48x48 input gives"));
        let mut wrong = bare(&sd, |_| true);
        wrong.insert_f32("fc.weight", &[8, 100], vec![0.0; 800]).unwrap();
        assert!(err(&wrong, None, None).contains("not a multiple of 16"));
    }
}
