//! `train` protects a run and refuses what would silently spoil one (tiny iResNet on the CPU reference, a few
//! steps): a fresh run into a folder holding a run, settings out of their domain, a resume with other settings
//! than the checkpoint's, an epoch whose samples were all unreadable; it saves the steps done before a sample it
//! cannot read stops it, reports the samples it skipped (each epoch's once, across resumes), replaces
//! final.safetensors rather than rewriting it, stops before an evaluation when asked to stop, and keeps a fine-tuning
//! run's imprint when stopped in it. Checkpoints refuse to write what they cannot read back, and a state dict with a
//! stage of 0 channels is an error.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use elasticface::checkpoint::{infer_network, Checkpoint};
use elasticface::data::decode::encode_png;
use elasticface::data::{RecordIoPaths, RecordIoWriter};
use elasticface::train::imprint;
use elasticface::train::run::{train, train_until, Device, InitHead, TrainConfig};
use elasticface_core::nn::ImageShape;
use elasticface_tests::{tiny_backbone, uniform};

const SIZE: usize = 16;

/// Runs share the process's stop flag (Ctrl-C): one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A RecordIO set of `ids` identities of `per_id` noisy 16x16 images each in `dir`; the samples `bad` picks (by
/// identity and number) are not images at all.
fn write_set(dir: &Path, ids: usize, per_id: usize, bad: impl Fn(usize, usize) -> bool) {
    let shape = ImageShape { h: SIZE, w: SIZE };
    let mut w = RecordIoWriter::create(&RecordIoPaths::in_dir(dir), ids, shape).unwrap();
    for i in 0..ids {
        for k in 0..per_id {
            let noise = uniform((i * 100 + k) as u64, SIZE * SIZE * 3);
            let rgb: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
            let bytes = if bad(i, k) { b"not an image".to_vec() } else { encode_png(&rgb, shape).unwrap() };
            w.add_image(i as u32, &bytes).unwrap();
        }
    }
    w.finish().unwrap();
}

/// The smallest network of the tests on 4 identities of 4 images (`root/train`), 4 steps of 4 an epoch.
fn config(root: &Path) -> TrainConfig {
    if !root.join("train").exists() {
        write_set(&root.join("train"), 4, 4, |_, _| false);
    }
    TrainConfig {
        data: root.join("train"),
        out: root.join("run"),
        arch: "custom".into(),
        layers: Some([1, 1, 1, 1]),
        widths: Some([4, 8, 8, 16]),
        embedding: 8,
        input_size: SIZE,
        batch: 4,
        epochs: 1,
        seed: 1,
        workers: 1,
        device: Device::Cpu,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_fresh_run_into_a_folder_holding_a_run_is_refused_before_anything_is_written() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 1, ..config(root.path()) };
    train(&cfg, None, true).unwrap();
    let files = ["checkpoint.safetensors", "final.safetensors", "metrics.jsonl", "config.toml"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(&cfg.out.join(f))).collect();

    // The same folder again without --resume (other settings, more steps): refused, every file as it was.
    let again = TrainConfig { max_steps: 2, lr: 0.05, ..cfg.clone() };
    let e = format!("{:#}", train(&again, None, true).unwrap_err());
    assert!(e.contains(&cfg.out.display().to_string()) && e.contains("--resume") && e.contains("--out"), "{e}");
    for (f, want) in files.iter().zip(&before) {
        assert!(read(&cfg.out.join(f)) == *want, "{f} changed by a refused run");
    }
    // A folder with only the final weights left is a run too.
    std::fs::remove_file(cfg.out.join("checkpoint.safetensors")).unwrap();
    assert!(format!("{:#}", train(&again, None, true).unwrap_err()).contains("final.safetensors"));
}

#[test]
fn settings_out_of_their_domain_are_refused_and_checkpoints_refuse_what_json_cannot_hold() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let cases: [(&str, TrainConfig); 11] = [
        ("--clip-norm (clip_norm in a --config file) is inf", TrainConfig { clip_norm: f32::INFINITY, ..cfg.clone() }),
        ("--clip-norm (clip_norm in a --config file) is 0", TrainConfig { clip_norm: 0.0, ..cfg.clone() }),
        ("--clip-norm (clip_norm in a --config file) is -1", TrainConfig { clip_norm: -1.0, ..cfg.clone() }),
        ("--clip-norm (clip_norm in a --config file) is NaN", TrainConfig { clip_norm: f32::NAN, ..cfg.clone() }),
        ("--momentum (momentum in a --config file) is NaN", TrainConfig { momentum: f32::NAN, ..cfg.clone() }),
        ("--momentum (momentum in a --config file) is -0.1", TrainConfig { momentum: -0.1, ..cfg.clone() }),
        ("--momentum (momentum in a --config file) is 1", TrainConfig { momentum: 1.0, ..cfg.clone() }),
        ("--weight-decay (weight_decay in a --config file) is -1", TrainConfig { weight_decay: -1.0, ..cfg.clone() }),
        (
            "--weight-decay (weight_decay in a --config file) is inf",
            TrainConfig { weight_decay: f32::INFINITY, ..cfg.clone() },
        ),
        ("--lr (lr in a --config file) is 0", TrainConfig { lr: 0.0, ..cfg.clone() }),
        ("--lr (lr in a --config file) is -inf", TrainConfig { lr: f32::NEG_INFINITY, ..cfg.clone() }),
    ];
    for (want, bad) in &cases {
        let e = format!("{:#}", train(bad, None, true).unwrap_err());
        assert!(e.contains(want), "{want}: {e}");
        assert!(!cfg.out.exists(), "{want}: the run folder was created");
    }
    // All at once, each named.
    let all = TrainConfig { clip_norm: 0.0, momentum: 2.0, ..cfg.clone() };
    let e = format!("{:#}", train(&all, None, true).unwrap_err());
    assert!(e.contains("--clip-norm") && e.contains("--momentum"), "{e}");

    // A checkpoint whose manifest would hold null for a number is not written.
    let mut ck = tiny_backbone(3).inference_checkpoint();
    ck.step_cfg.clip_norm = f32::INFINITY;
    let path = root.path().join("ck.safetensors");
    let e = format!("{:#}", ck.save(&path).unwrap_err());
    assert!(e.contains("optimizer.backbone_clip_grad_norm is inf"), "{e}");
    assert!(!path.exists());
    ck.step_cfg.clip_norm = 5.0;
    ck.step_cfg.sgd.momentum = f32::NAN;
    assert!(format!("{:#}", ck.save(&path).unwrap_err()).contains("optimizer.momentum is NaN"));
    let mut backbone = tiny_backbone(3);
    backbone.bn.eps = f32::NAN;
    assert!(format!("{:#}", backbone.save(&path, serde_json::Value::Null).unwrap_err()).contains("batchnorm.eps"));
}

#[test]
fn a_resume_with_other_settings_is_refused_listing_each_and_leaves_the_folder_as_it_was() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let arc = TrainConfig { loss: "arcface".into(), max_steps: 1, ..config(root.path()) };
    train(&arc, None, true).unwrap();
    let (config_toml, checkpoint) = (read(&arc.out.join("config.toml")), read(&arc.out.join("checkpoint.safetensors")));

    // Without --loss arcface the margins would be ElasticFace-Arc+'s in an ArcFace head.
    let other =
        TrainConfig { loss: "elastic-arc-plus".into(), momentum: 0.8, clip_norm: 4.0, max_steps: 2, ..arc.clone() };
    let e = format!("{:#}", train(&other, Some(&arc.out), true).unwrap_err());
    for want in [
        "--loss: arcface in the checkpoint, elastic-arc-plus given",
        "--momentum: 0.9 in the checkpoint, 0.8 given",
        "--clip-norm: 5 in the checkpoint, 4 given",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(!e.contains("--weight-decay") && !e.contains("--seed"), "{e}");
    assert!(read(&arc.out.join("config.toml")) == config_toml, "a refused resume rewrote config.toml");
    assert!(read(&arc.out.join("checkpoint.safetensors")) == checkpoint);
    let e = format!("{:#}", train(&TrainConfig { seed: 2, ..arc.clone() }, Some(&arc.out), true).unwrap_err());
    assert!(e.contains("--seed: 1 in the checkpoint, 2 given"), "{e}");

    // The same settings (more steps) resume.
    let s = train(&TrainConfig { max_steps: 2, ..arc.clone() }, Some(&arc.out), true).unwrap();
    assert_eq!(s.steps, 2);

    // Two Plus variants differ by their assignment alone.
    let plus = TrainConfig { out: root.path().join("plus"), max_steps: 1, ..config(root.path()) };
    train(&plus, None, true).unwrap();
    let released = TrainConfig { plus_assignment: "released-code".into(), max_steps: 2, ..plus.clone() };
    let e = format!("{:#}", train(&released, Some(&plus.out.join("checkpoint.safetensors")), true).unwrap_err());
    assert!(e.contains("--plus-assignment: paper in the checkpoint, released-code given"), "{e}");
    assert!(!e.contains("--loss"), "{e}");
}

/// Two epochs with `--skip-bad-samples` on a set of which two of 16 samples are unreadable: 14 left, 3 steps of 4
/// an epoch.
fn two_bad_samples(root: &Path) -> TrainConfig {
    write_set(&root.join("some"), 4, 4, |i, k| k == 1 && i < 2);
    TrainConfig { data: root.join("some"), skip_bad_samples: true, epochs: 2, ..config(root) }
}

/// The skipped-samples lines of a run folder's metrics.
fn skip_lines(out: &Path) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("skipped_samples").is_some())
        .collect()
}

#[test]
fn skipped_samples_are_reported_and_an_epoch_of_unreadable_samples_fails() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let cfg = two_bad_samples(root.path());
    let s = train(&cfg, None, true).unwrap();
    assert_eq!((s.steps, s.skipped_samples), (6, 4));
    let skips = skip_lines(&cfg.out);
    assert_eq!(skips.len(), 2, "a line per epoch that skipped samples: {skips:?}");
    for (epoch, v) in skips.iter().enumerate() {
        assert_eq!((v["epoch"].as_u64(), v["skipped_samples"].as_u64()), (Some(epoch as u64), Some(2)), "{v}");
        let first = v["first_skipped"].as_array().unwrap();
        assert_eq!(first.len(), 2, "{v}");
        assert!(first.iter().all(|m| m.as_str().unwrap().contains("record key")), "{v}");
    }

    // Every sample unreadable: no batch, an error with the reasons, no weights written as if trained.
    write_set(&root.path().join("none"), 4, 4, |_, _| true);
    let cfg = TrainConfig { data: root.path().join("none"), out: root.path().join("none-run"), ..cfg };
    let e = format!("{:#}", train(&cfg, None, true).unwrap_err());
    assert!(e.contains("epoch 0 delivered no batch") && e.contains("16 samples"), "{e}");
    assert!(e.contains("record key"), "the reasons: {e}");
    assert!(!cfg.out.join("final.safetensors").exists() && !cfg.out.join("checkpoint.safetensors").exists());
}

/// The skipped-samples lines of a run folder's metrics as `(step, epoch, count)`.
fn skip_counts(out: &Path) -> Vec<(u64, u64, u64)> {
    let count = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap();
    skip_lines(out).iter().map(|v| (count(v, "step"), count(v, "epoch"), count(v, "skipped_samples"))).collect()
}

/// A run stopped at any step and resumed, or one that crashed after any checkpoint having written the lines of
/// every later step, reports each epoch's skipped samples once, with the whole epoch's count: the checkpoint
/// carries the count of the samples skipped before its position, and the line of the epoch it stopped in is
/// written again by the resumed run.
#[test]
fn a_resumed_run_counts_each_epochs_skipped_samples_once() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let cfg = two_bad_samples(root.path());
    train(&cfg, None, true).unwrap();
    let whole = skip_counts(&cfg.out);
    assert_eq!(whole, [(3, 0, 2), (6, 1, 2)]);
    let whole_metrics = std::fs::read(cfg.out.join("metrics.jsonl")).unwrap();
    for stop in 1..=5 {
        for crashed in [false, true] {
            let out = root.path().join(format!("stop-{stop}-{crashed}"));
            let stopped = TrainConfig { out: out.clone(), max_steps: stop, ..cfg.clone() };
            train(&stopped, None, true).unwrap();
            if crashed {
                // What a run that went on past this checkpoint and crashed at the end leaves.
                std::fs::write(out.join("metrics.jsonl"), &whole_metrics).unwrap();
            }
            train(&TrainConfig { out: out.clone(), ..cfg.clone() }, Some(&out), true).unwrap();
            assert_eq!(skip_counts(&out), whole, "stopped at step {stop}, crashed after it: {crashed}");
        }
    }
}

/// A sample that cannot be read (without --skip-bad-samples) stops the run with its error, after saving the steps
/// done: a resume after fixing the cause (here by skipping it) goes on from there instead of from the last periodic
/// checkpoint. Where the bad sample falls in the shuffled epoch depends on the seed: some seeds meet it in the first
/// batch (no step done, nothing saved), the others after steps that must be kept.
#[test]
fn a_failing_sample_stops_the_run_with_its_steps_saved() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("one-bad"), 4, 4, |i, k| (i, k) == (2, 3));
    let mut saved_after = Vec::new();
    for seed in 1..=8 {
        let out = root.path().join(format!("run-{seed}"));
        let cfg = TrainConfig { data: root.path().join("one-bad"), out, seed, epochs: 2, ..config(root.path()) };
        let e = format!("{:#}", train(&cfg, None, true).unwrap_err());
        assert!(e.contains("record key"), "the sample's own error: {e}");
        let ck = cfg.out.join("checkpoint.safetensors");
        if !e.contains("saved in") {
            assert!(!ck.exists(), "seed {seed}: {e}");
            continue;
        }
        let steps = Checkpoint::load(&ck).unwrap().step;
        assert!(steps > 0 && e.contains(&format!("the run stopped after step {steps}, saved in")), "{e}");
        saved_after.push(steps);
        let s = train(&TrainConfig { skip_bad_samples: true, ..cfg }, Some(&ck), true).unwrap();
        assert!(s.steps > steps && !s.interrupted, "seed {seed}: resumed at {steps}, ended at {}", s.steps);
    }
    assert!(!saved_after.is_empty(), "no seed met the bad sample after a step");
    eprintln!("steps saved before the bad sample, seeds 1..=8 where any: {saved_after:?}");
}

#[test]
fn final_weights_replace_the_file_instead_of_rewriting_it() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { max_steps: 1, ..config(root.path()) };
    train(&cfg, None, true).unwrap();
    // A copy kept by a hard link (as `ln` or a backup tool makes one) must keep the weights it had: a file written
    // in place (a copy) would change under it, and could be read half written.
    let final_path = cfg.out.join("final.safetensors");
    let kept = root.path().join("kept.safetensors");
    std::fs::hard_link(&final_path, &kept).unwrap();
    let old = read(&kept);
    let s = train(&TrainConfig { max_steps: 2, ..cfg.clone() }, Some(&cfg.out), true).unwrap();
    assert_eq!(s.steps, 2);
    assert!(read(&kept) == old, "final.safetensors was rewritten in place");
    let (fin, ck) =
        (Checkpoint::load(&final_path).unwrap(), Checkpoint::load(&cfg.out.join("checkpoint.safetensors")).unwrap());
    assert_eq!((fin.step, ck.step), (2, 2));
    assert_eq!(fin, ck);
}

#[test]
fn a_stop_asked_for_during_a_step_saves_the_checkpoint_before_any_evaluation() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("val"), 4, 4, |_, _| false);
    let cfg = TrainConfig { val: Some(root.path().join("val")), val_pairs: 20, eval_every: 1, ..config(root.path()) };
    // Set before the first step ends: the run stops after it, at an evaluation step, without evaluating.
    let stop = AtomicBool::new(true);
    let s = train_until(&cfg, None, true, &stop).unwrap();
    assert!(s.interrupted);
    assert_eq!(s.steps, 1);
    assert!(s.val_after.is_empty());
    let metrics = std::fs::read_to_string(cfg.out.join("metrics.jsonl")).unwrap();
    let evaluated: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("val").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [0], "only the evaluation before training:\n{metrics}");
    assert_eq!(Checkpoint::load(&cfg.out.join("checkpoint.safetensors")).unwrap().step, 1);
    assert!(!cfg.out.join("final.safetensors").exists());
}

#[test]
fn a_run_stopped_in_its_imprint_carries_on_from_it_to_the_same_weights() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model.safetensors");
    tiny_backbone(5).save(&model, serde_json::Value::Null).unwrap();
    let cfg = TrainConfig { init: Some(model), init_head: InitHead::Imprint, max_steps: 2, ..config(root.path()) };
    let whole = TrainConfig { out: root.path().join("whole"), ..cfg.clone() };
    train(&whole, None, true).unwrap();

    // Stopped after the imprint's first batch: no step, no checkpoint, the imprint's progress kept.
    let stop = AtomicBool::new(true);
    let s = train_until(&TrainConfig { threads: 1, ..cfg.clone() }, None, true, &stop).unwrap();
    assert!(s.interrupted);
    assert_eq!((s.steps, s.stopped_imprinting), (0, Some((4, 16))));
    assert!(!cfg.out.join("checkpoint.safetensors").exists());
    assert!(cfg.out.join(imprint::FILE).exists());

    // The same command again (on other threads: the same bits): a fresh run that carries on from the imprint's 4
    // images, to the same weights as the run never stopped; its checkpoint makes the progress unneeded.
    let s = train(&TrainConfig { threads: 2, ..cfg.clone() }, None, true).unwrap();
    assert_eq!((s.steps, s.stopped_imprinting), (2, None));
    let line = std::fs::read_to_string(cfg.out.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(line["imprint"]["carried_on_from"].as_u64(), Some(4));
    assert_eq!(line["imprint"]["images"].as_u64(), Some(16));
    assert!(!cfg.out.join(imprint::FILE).exists());
    let [a, b] = [&cfg.out, &whole.out].map(|d| Checkpoint::load(&d.join("final.safetensors")).unwrap());
    assert!(a.state == b.state && a.head == b.head, "the weights of the run stopped and of the run never stopped");
    assert!(a.momentum == b.momentum && a.head_momentum == b.head_momentum);
}

#[test]
fn a_state_dict_with_a_stage_of_no_channels_is_an_error() {
    let mut f = tiny_backbone(5).to_file(serde_json::Value::Null).unwrap();
    assert!(infer_network(&f, None).is_ok());
    f.insert_f32("layer4.0.conv1.weight", &[0, 8, 3, 3], Vec::new()).unwrap();
    let e = format!("{:#}", infer_network(&f, None).unwrap_err());
    assert!(e.contains("layer4.0.conv1.weight") && e.contains("0 channels"), "{e}");
}

/// Step and loss of each step line of a run's metrics.jsonl.
fn step_losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// A run resumed from a checkpoint older than its last steps (a crash after step 4, the checkpoint of step 2) does
/// not log steps 3 and 4 twice, nor keep a line the crash cut short: its metrics are an unstopped run's.
#[test]
fn a_resume_drops_the_metrics_it_writes_again() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let straight = TrainConfig { max_steps: 4, out: root.path().join("straight"), ..config(root.path()) };
    train(&straight, None, true).unwrap();
    let want = step_losses(&straight.out.join("metrics.jsonl"));
    assert_eq!(want.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3, 4]);

    let cfg = TrainConfig { max_steps: 2, ..config(root.path()) };
    train(&cfg, None, true).unwrap();
    let step2 = read(&cfg.out.join("checkpoint.safetensors"));
    let four = TrainConfig { max_steps: 4, ..cfg.clone() };
    train(&four, Some(&cfg.out), true).unwrap();
    // The crash: the checkpoint of step 2 is the last one saved, and the metrics end with half a line.
    std::fs::write(cfg.out.join("checkpoint.safetensors"), step2).unwrap();
    let metrics = cfg.out.join("metrics.jsonl");
    let mut torn = read(&metrics);
    torn.extend(b"{\"step\": 5, \"epo");
    std::fs::write(&metrics, torn).unwrap();
    train(&four, Some(&cfg.out), true).unwrap();
    assert_eq!(step_losses(&metrics), want);
}
