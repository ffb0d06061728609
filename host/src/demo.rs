//! `elasticface demo`: generates the synthetic-faces set (or reuses it), trains a small iResNet with
//! ElasticFace-Arc+ on whatever device exists, measures verification on held-out identities before and after,
//! and writes a report, the checkpoint, the metrics and a picture of the loss and ROC curves.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use elasticface_core::nn::ImageShape;

use crate::eval::plot::{self, Curve};
use crate::eval::{roc_curve, VerifyReport};
use crate::synth::{synth, SynthConfig, GENERATOR_VERSION};
use crate::train::best;
use crate::train::run::{
    held_out_pairs, train, Device, RunSummary, TrainConfig, CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE,
    UNBOUNDED_EPOCHS,
};

/// The weights a demo's run folder holds, all replaced by each demo.
const WEIGHTS: [&str; 3] = [CHECKPOINT_FILE, "final.safetensors", best::FILE];

/// The demo's knobs: the flags of `elasticface demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoConfig {
    /// Run folder (report, checkpoint, metrics, picture).
    #[arg(long, value_name = "DIR", default_value = "runs/demo")]
    pub out: PathBuf,
    /// Where the generated data set is kept (and reused when the settings match).
    #[arg(long, value_name = "DIR", default_value = "runs/demo-data")]
    pub data: PathBuf,
    /// Training identities.
    #[arg(long, default_value_t = 100)]
    pub ids: usize,
    /// Images per training identity.
    #[arg(long, default_value_t = 20)]
    pub per_id: usize,
    /// Held-out identities (10 images each).
    #[arg(long, default_value_t = 40)]
    pub val_ids: usize,
    /// Image height and width (a multiple of 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Backbone: demo (1 block per stage, widths 16-128, 64-d) or r18, r34, r50, r100, r200.
    #[arg(long, default_value = "demo")]
    pub arch: String,
    /// Training steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Loss: arcface, cosface, elastic-arc, elastic-cos, elastic-arc-plus, elastic-cos-plus.
    #[arg(long, default_value = "elastic-arc-plus")]
    pub loss: String,
    /// auto (GPU if found, else CPU), gpu, or cpu.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Threads of the CPU reference; 0 is one a core the process may use (the results are the same bits).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Seed of the data, the weights, the margins and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// What the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The training run.
    pub run: RunSummary,
    /// The loss of every step.
    pub losses: Vec<f32>,
    /// The picture.
    pub picture: PathBuf,
    /// The held-out verification pack.
    pub val_bin: PathBuf,
}

/// Generates the data set unless `dir` already holds one made with the same settings.
fn ensure_data(cfg: &DemoConfig, quiet: bool) -> Result<()> {
    let synth_cfg = SynthConfig {
        out: cfg.data.clone(),
        ids: cfg.ids,
        per_id: cfg.per_id,
        val_ids: cfg.val_ids,
        val_per_id: 10,
        val_pairs: 1000,
        size: cfg.size,
        seed: cfg.seed,
        quality: 95,
    };
    let manifest = cfg.data.join("synth.json");
    let wanted = manifest_of(&synth_cfg)?;
    if std::fs::read_to_string(&manifest).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    // The manifest goes first and comes back last: a generation cut short leaves a folder that is made again.
    crate::files::remove_if_present(&manifest)?;
    synth(&synth_cfg, quiet)?;
    crate::files::write_atomically(&manifest, wanted.as_bytes())
}

/// The data folder's manifest: the generator's version and its settings.
fn manifest_of(synth_cfg: &SynthConfig) -> Result<String> {
    #[derive(Serialize)]
    struct Manifest<'a> {
        generator: u32,
        settings: &'a SynthConfig,
    }
    Ok(serde_json::to_string_pretty(&Manifest { generator: GENERATOR_VERSION, settings: synth_cfg })?)
}

/// Checks that `out`, where the demo replaces any weights, holds no run but a demo's (one trained on `data`): the
/// demo must not delete the checkpoint of a real run given as `--out` by mistake.
fn check_demo_folder(out: &Path, data: &Path) -> Result<()> {
    let weights = WEIGHTS.map(|n| out.join(n));
    if !weights.iter().any(|w| w.exists()) {
        return Ok(());
    }
    let settings = out.join(CONFIG_FILE);
    let trained_on = std::fs::read_to_string(&settings)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("data").and_then(|d| d.as_str()).map(PathBuf::from));
    ensure!(
        trained_on.as_deref() == Some(data),
        "{} holds a run that is not the demo's (trained on {}); the demo replaces the weights in its folder: give \
         it another --out",
        out.display(),
        trained_on.map_or_else(|| "unknown data".to_string(), |d| d.display().to_string())
    );
    Ok(())
}

/// The training configuration of the demo.
pub fn train_config(cfg: &DemoConfig) -> TrainConfig {
    let (arch, layers, widths, embedding) = if cfg.arch == "demo" {
        ("custom".to_string(), Some([1, 1, 1, 1]), Some([16, 32, 64, 128]), 64)
    } else {
        (cfg.arch.clone(), None, None, 512)
    };
    TrainConfig {
        data: cfg.data.join("train"),
        val: Some(cfg.data.join("val")),
        val_pairs: 600,
        out: cfg.out.clone(),
        arch,
        layers,
        widths,
        embedding,
        input_size: cfg.size,
        loss: cfg.loss.clone(),
        batch: cfg.batch,
        epochs: UNBOUNDED_EPOCHS,
        max_steps: cfg.steps,
        // lr 0.1 for a batch of 512 taken as is at the demo's batch (no warmup), decayed to 0 at the last step.
        lr: 0.1 * 512.0 / cfg.batch as f32,
        schedule: "poly".into(),
        warmup_epochs: 0,
        seed: cfg.seed,
        workers: 2,
        device: cfg.device,
        threads: cfg.threads,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

/// Runs the demo.
pub fn demo(cfg: &DemoConfig) -> Result<DemoReport> {
    ensure_data(cfg, cfg.quiet)?;
    let tc = train_config(cfg);
    let metrics = cfg.out.join(METRICS_FILE);
    check_demo_folder(&cfg.out, &tc.data)?;
    // A fresh curve and fresh weights for a fresh run (`train` refuses a folder that holds a run unless resumed).
    let _ = std::fs::remove_file(&metrics);
    for name in WEIGHTS {
        let _ = std::fs::remove_file(cfg.out.join(name));
    }
    let run = train(&tc, None, cfg.quiet)?;
    let losses = read_losses(&metrics)?;
    let picture = cfg.out.join("demo.png");
    if let (Some(b), Some(a)) = (run.val_before.first().map(|r| &r.report), run.val_after.first().map(|r| &r.report)) {
        // The same pairs the run scored (drawn from the same seed) give the labels of the distances.
        let shape = ImageShape { h: cfg.size, w: cfg.size };
        let issame = held_out_pairs(&tc, shape)?.map(|p| p.issame).unwrap_or_default();
        let curve = |label: &str, r: &VerifyReport| -> Result<Curve> {
            Ok(Curve {
                label: format!("{label} ({:.1}%)", 100.0 * r.accuracy),
                points: roc_curve(&r.dist, &issame, 400)?,
            })
        };
        plot::write_demo(&losses, &curve("before training", b)?, &curve("after training", a)?, &picture)?;
    }
    Ok(DemoReport { run, losses, picture, val_bin: cfg.data.join("val.bin") })
}

fn read_losses(metrics: &Path) -> Result<Vec<f32>> {
    let text = std::fs::read_to_string(metrics).with_context(|| format!("cannot read {}", metrics.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(serde_json::Value::as_f64))
        .map(|l| l as f32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_made_by_another_generator_is_made_again() {
        let cfg = SynthConfig {
            out: "runs/demo-data".into(),
            ids: 100,
            per_id: 20,
            val_ids: 40,
            val_per_id: 10,
            val_pairs: 1000,
            size: 32,
            seed: 0,
            quality: 95,
        };
        let manifest = manifest_of(&cfg).unwrap();
        // What versions before the generator's version kept: the settings alone. Such a folder is not reused.
        assert_ne!(manifest, serde_json::to_string_pretty(&cfg).unwrap());
        let read: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(read["generator"], GENERATOR_VERSION);
        assert_eq!(read["settings"], serde_json::to_value(&cfg).unwrap());
    }

    #[test]
    fn the_demo_replaces_only_its_own_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (out, data) = (dir.path().join("run"), Path::new("runs/demo-data/train"));
        std::fs::create_dir_all(&out).unwrap();
        // No weights: nothing to protect.
        check_demo_folder(&out, data).unwrap();
        // Weights of a run on other data, or of unknown settings: refused.
        std::fs::write(out.join("final.safetensors"), b"weights").unwrap();
        let e = check_demo_folder(&out, data).unwrap_err().to_string();
        assert!(e.contains("not the demo's (trained on unknown data)"), "{e}");
        std::fs::write(out.join("config.toml"), "data = \"faces_emore\"\nbatch = 128\n").unwrap();
        let e = check_demo_folder(&out, data).unwrap_err().to_string();
        assert!(e.contains("trained on faces_emore") && e.contains("another --out"), "{e}");
        // A demo's run: replaced.
        let settings = toml::to_string(&TrainConfig { data: data.to_path_buf(), ..TrainConfig::default() }).unwrap();
        std::fs::write(out.join("config.toml"), settings).unwrap();
        check_demo_folder(&out, data).unwrap();
    }
}
