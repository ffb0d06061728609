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

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use elasticface_core::margin::MarginConfig;
use elasticface_core::model::{IResNetConfig, ModuleKind, StepConfig, TensorKind, Trainer};
use elasticface_core::nn::{BatchNorm, Sgd};
use serde_json::{json, Value};

use crate::data::Position;
use crate::tensorfile::TensorFile;

/// The format name in the manifest.
pub const FORMAT: &str = "elasticface-checkpoint";
/// The format version; readers refuse newer ones.
pub const VERSION: u64 = 1;

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
        let meta = json!({
            "format": FORMAT,
            "version": VERSION,
            "network": {
                "layers": c.layers, "widths": c.widths, "input_hw": [c.input_h, c.input_w], "embedding": c.embedding,
            },
            "classes": self.classes,
            "loss": s.margin.to_string(),
            "optimizer": {
                "lr": s.sgd.lr, "momentum": s.sgd.momentum, "weight_decay": s.sgd.weight_decay,
                "backbone_clip_grad_norm": s.clip_norm,
            },
            "batchnorm": {"eps": s.bn.eps, "momentum": s.bn.momentum},
            "seed": self.seed,
            "step": self.step,
            "position": {"epoch": self.position.epoch, "batch": self.position.batch, "sample": self.position.sample},
            "run": self.run,
        });
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
        let version = m["version"].as_u64().ok_or_else(|| anyhow!(ctx("no version")))?;
        if version > VERSION {
            bail!("{}: checkpoint version {version} is newer than this build reads ({VERSION})", f.name);
        }
        let u = |v: &Value, what: &str| v.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!(ctx(what)));
        let fl = |v: &Value, what: &str| v.as_f64().map(|x| x as f32).ok_or_else(|| anyhow!(ctx(what)));
        let four = |v: &Value, what: &str| -> Result<[usize; 4]> {
            let a = v.as_array().filter(|a| a.len() == 4).ok_or_else(|| anyhow!(ctx(what)))?;
            Ok([u(&a[0], what)?, u(&a[1], what)?, u(&a[2], what)?, u(&a[3], what)?])
        };
        let n = &m["network"];
        let cfg = IResNetConfig {
            layers: four(&n["layers"], "network.layers")?,
            widths: four(&n["widths"], "network.widths")?,
            input_h: u(&n["input_hw"][0], "network.input_hw")?,
            input_w: u(&n["input_hw"][1], "network.input_hw")?,
            embedding: u(&n["embedding"], "network.embedding")?,
        };
        cfg.validate().with_context(|| ctx("invalid network"))?;
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
        let p = &m["position"];
        let position = Position {
            epoch: p["epoch"].as_u64().ok_or_else(|| anyhow!(ctx("position.epoch")))?,
            batch: u(&p["batch"], "position.batch")?,
            sample: u(&p["sample"], "position.sample")?,
        };
        let mut state = vec![0.0; cfg.state_len()];
        let mut momentum = vec![0.0; cfg.state_len()];
        for t in cfg.tensors() {
            let name = t.to_string();
            state[t.range()].copy_from_slice(tensor(f, &name, t.dims())?);
            if t.kind == TensorKind::Trainable {
                momentum[t.range()].copy_from_slice(tensor(f, &format!("optimizer.momentum.{name}"), t.dims())?);
            }
        }
        let head_shape = [cfg.embedding, classes];
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
}

/// Tensor `key` of `f`, required to have shape `dims`.
fn tensor<'a>(f: &'a TensorFile, key: &str, dims: &[usize]) -> Result<&'a [f32]> {
    let t = f.get(key)?;
    if t.shape != dims {
        bail!("{}: `{key}` has shape {:?}, the network needs {dims:?}", f.name, t.shape);
    }
    f.f32(key)
}
