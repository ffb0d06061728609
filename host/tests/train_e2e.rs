//! `elasticface train` end to end: a generated identity set written as insightface RecordIO, a small iResNet
//! trained with ElasticFace-Arc+ on the CPU reference and on the GPU (lavapipe where there is no GPU), the loss
//! falls clearly and verification on held-out identities rises far above chance. Then an interrupted-style run
//! resumes from its checkpoint.

use std::path::Path;

use elasticface::checkpoint::Checkpoint;
use elasticface::data::decode::encode_png;
use elasticface::data::{RecordIoPaths, RecordIoWriter};
use elasticface::train::run::{train, Device, InitHead, TrainConfig, WinogradLayers};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::{standard_normal, Philox4x32};
use rand_core::RngCore;

const SIZE: usize = 16;

/// An identity: a 4x4 grid of colours, bilinearly enlarged to 16x16. A sample of it is shifted by up to one
/// pixel, brightened or darkened, and noisy, so that pixels differ between samples of one identity.
fn sample(identity: u64, k: u64) -> Vec<u8> {
    let mut id_rng = Philox4x32::new(identity, 1);
    let grid: Vec<f64> = (0..48).map(|_| f64::from(id_rng.next_u32() % 200) + 28.0).collect();
    let mut rng = Philox4x32::new(identity, 1000 + k);
    let (dx, dy) = ((rng.next_u32() % 3) as f64 - 1.0, (rng.next_u32() % 3) as f64 - 1.0);
    let gain = 1.0 + 0.15 * standard_normal(&mut rng);
    let mut img = vec![0u8; SIZE * SIZE * 3];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let gx = ((x as f64 + dx).clamp(0.0, 15.0)) * 3.0 / 15.0;
            let gy = ((y as f64 + dy).clamp(0.0, 15.0)) * 3.0 / 15.0;
            let (x0, y0) = (gx.floor().min(2.0) as usize, gy.floor().min(2.0) as usize);
            let (fx, fy) = (gx - x0 as f64, gy - y0 as f64);
            for c in 0..3 {
                let g = |xx: usize, yy: usize| grid[(yy * 4 + xx) * 3 + c];
                let v = g(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + g(x0 + 1, y0) * fx * (1.0 - fy)
                    + g(x0, y0 + 1) * (1.0 - fx) * fy
                    + g(x0 + 1, y0 + 1) * fx * fy;
                let v = v * gain + 12.0 * standard_normal(&mut rng);
                img[(y * SIZE + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

fn write_set(dir: &Path, first_identity: u64, ids: usize, per_id: u64) {
    let shape = ImageShape { h: SIZE, w: SIZE };
    let mut w = RecordIoWriter::create(&RecordIoPaths::in_dir(dir), ids, shape).unwrap();
    for i in 0..ids {
        for k in 0..per_id {
            let png = encode_png(&sample(first_identity + i as u64, k), shape).unwrap();
            w.add_image(i as u32, &png).unwrap();
        }
    }
    w.finish().unwrap();
}

fn config(root: &Path) -> TrainConfig {
    TrainConfig {
        data: root.join("train"),
        val: Some(root.join("val")),
        val_pairs: 400,
        out: root.join("run"),
        arch: "custom".into(),
        layers: Some([1, 1, 1, 1]),
        widths: Some([8, 16, 16, 32]),
        embedding: 32,
        input_size: SIZE,
        batch: 32,
        epochs: 30,
        lr: 0.1 * 512.0 / 32.0, // lr 0.1 at batch 32
        decay_epochs: vec![25],
        seed: 3,
        workers: 2,
        device: Device::Cpu,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

#[test]
fn training_learns_identities_and_generalises_to_held_out_ones() {
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 24, 12);
    write_set(&root.path().join("val"), 1000, 12, 6);
    let cfg = config(root.path());
    let s = train(&cfg, None, true).unwrap();
    let (before, after) = (&s.val_before[0].report, &s.val_after[0].report);
    println!(
        "{} steps in {:.1} s: loss {:.3} -> {:.3}, held-out accuracy {:.3} -> {:.3}",
        s.steps, s.seconds, s.first_loss, s.last_loss, before.accuracy, after.accuracy
    );
    assert_eq!(s.steps, 30 * (24 * 12 / 32) as u64);
    assert!(s.last_loss < 0.5 * s.first_loss, "loss {} -> {}", s.first_loss, s.last_loss);
    assert!(after.accuracy > 0.85, "held-out accuracy after training: {}", after.accuracy);
    assert!(after.accuracy > before.accuracy + 0.1, "{} -> {}", before.accuracy, after.accuracy);
    assert!(root.path().join("run/final.safetensors").is_file());
    let lines = std::fs::read_to_string(root.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, s.steps + 2, "a line per step and per evaluation");
}

/// Trains `cfg` straight into `root/straight{tag}`, and again stopped after 7 steps (mid-epoch) and resumed from its
/// folder `root/resumed{tag}`; returns both final checkpoints and the straight run's metrics. The resumed run's
/// folder first holds what an attempt killed before its first checkpoint leaves: the run starts without it, so its
/// metrics are the straight run's, line for line.
fn straight_and_resumed(cfg: &TrainConfig, root: &Path, tag: &str) -> (Checkpoint, Checkpoint, String) {
    let straight_cfg = TrainConfig { out: root.join(format!("straight{tag}")), ..cfg.clone() };
    let s = train(&straight_cfg, None, true).unwrap();
    assert_eq!(s.steps, 18);
    let metrics = std::fs::read_to_string(straight_cfg.out.join("metrics.jsonl")).unwrap();
    let straight = Checkpoint::load(&straight_cfg.out.join("final.safetensors")).unwrap();

    let resumed_cfg = TrainConfig { out: root.join(format!("resumed{tag}")), ..cfg.clone() };
    std::fs::create_dir_all(&resumed_cfg.out).unwrap();
    std::fs::write(resumed_cfg.out.join("metrics.jsonl"), "{\"step\": 1, \"loss\": 9.0}\n{\"step\": 2, \"lo").unwrap();
    std::fs::write(resumed_cfg.out.join("best.safetensors"), b"an earlier attempt's").unwrap();
    let first = train(&TrainConfig { max_steps: 7, ..resumed_cfg.clone() }, None, true).unwrap();
    assert_eq!(first.steps, 7);
    let second = train(&resumed_cfg, Some(&resumed_cfg.out), true).unwrap();
    assert_eq!(second.steps, 18);
    // Without verification: no best model.
    assert!(!resumed_cfg.out.join("best.safetensors").exists());
    let without_speed = |text: &str| -> Vec<serde_json::Value> {
        let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        lines.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("images_per_second")));
        lines
    };
    let resumed_metrics = std::fs::read_to_string(resumed_cfg.out.join("metrics.jsonl")).unwrap();
    assert_eq!(without_speed(&resumed_metrics), without_speed(&metrics));
    (straight, Checkpoint::load(&resumed_cfg.out.join("final.safetensors")).unwrap(), metrics)
}

#[test]
fn a_stopped_run_resumes_to_the_same_weights() {
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 6, 8);
    // 48 images, 6 steps of 8 an epoch.
    let cfg = TrainConfig { val: None, epochs: 3, batch: 8, ..config(root.path()) };
    let (straight, resumed, _) = straight_and_resumed(&cfg, root.path(), "");
    assert_eq!(resumed.state, straight.state, "parameters differ after resuming");
    assert_eq!(resumed.head, straight.head);
    assert_eq!(resumed.momentum, straight.momentum);
}

/// Gradient accumulation through the run: steps of 2 micro-batches of 4 take the images of steps of 8 (6 steps an
/// epoch, the learning rate scaled by 8 / 512), resume to the same weights, and train otherwise than whole steps of
/// 8 (each micro-batch's batch norms normalise over its 4 images).
#[test]
fn a_run_of_micro_batches_steps_by_their_sum_and_resumes_to_the_same_weights() {
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 6, 8);
    let whole = TrainConfig { val: None, epochs: 3, batch: 8, lr: 0.2, ..config(root.path()) };
    let micro = TrainConfig { batch: 4, accumulate: 2, ..whole.clone() };
    let (straight, resumed, metrics) = straight_and_resumed(&micro, root.path(), "-micro");
    assert_eq!(resumed.state, straight.state, "parameters differ after resuming");
    assert_eq!(resumed.head, straight.head);
    assert_eq!(resumed.momentum, straight.momentum);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["lr"].as_f64().unwrap() as f32, 0.2 * 8.0 / 512.0, "{first}");

    let whole = train(&TrainConfig { out: root.path().join("whole"), ..whole }, None, true).unwrap();
    assert_eq!(whole.steps, 18);
    let whole = Checkpoint::load(&root.path().join("whole/final.safetensors")).unwrap();
    assert_ne!(whole.state, straight.state, "micro-batches of 4 normalise otherwise than batches of 8");
}

/// An insightface verification pack at `path` of `pairs` pairs of held-out identities (from `first_identity` on),
/// alternately the same identity and two different ones, as PNGs.
fn write_pack(path: &Path, first_identity: u64, pairs: usize) {
    let shape = ImageShape { h: SIZE, w: SIZE };
    let (mut images, mut issame) = (Vec::new(), Vec::new());
    for p in 0..pairs as u64 {
        let (a, b) = (first_identity + p / 2, first_identity + 100 + p / 2);
        let same = p % 2 == 0;
        images.push(encode_png(&sample(a, p), shape).unwrap());
        images.push(encode_png(&sample(if same { a } else { b }, p + 50), shape).unwrap());
        issame.push(same);
    }
    std::fs::write(path, elasticface::eval::bin::write_python2_pack(&images, &issame)).unwrap();
}

/// `--val` given insightface verification packs: a folder of them (other files ignored) is scored set by set at the
/// start, every `eval_every` steps and at the end, each exactly as `elasticface eval` scores the final weights; a
/// single `.bin` file is one set.
#[test]
fn verification_packs_are_scored_during_training() {
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 6, 8);
    let packs = root.path().join("packs");
    std::fs::create_dir_all(&packs).unwrap();
    write_pack(&packs.join("lfw.bin"), 2000, 40);
    write_pack(&packs.join("agedb_30.bin"), 3000, 30);
    std::fs::write(packs.join("README.txt"), "not a pack").unwrap();
    let cfg = TrainConfig { val: Some(packs.clone()), epochs: 1, batch: 8, eval_every: 3, ..config(root.path()) };
    let s = train(&cfg, None, true).unwrap();
    assert_eq!(s.steps, 6);
    let names = |r: &[elasticface::train::run::SetResult]| r.iter().map(|r| r.set.clone()).collect::<Vec<_>>();
    assert_eq!(
        (names(&s.val_before), names(&s.val_after)),
        (vec!["agedb_30".into(), "lfw".into()], names(&s.val_before))
    );
    assert_eq!((s.val_after[0].report.pairs, s.val_after[1].report.pairs), (30, 40));

    // Steps 0, 3 and 6 (every 3; the end, already measured, is not measured again): a line per set each time,
    // besides a line per step.
    let metrics = std::fs::read_to_string(cfg.out.join("metrics.jsonl")).unwrap();
    let evals: Vec<(u64, String)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("val").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["set"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(u64, String)> =
        [0, 3, 6].iter().flat_map(|&k| [(k, "agedb_30".to_string()), (k, "lfw".to_string())]).collect();
    assert_eq!(evals, want);

    // The end's figures are `eval`'s on the final weights.
    let backbone = elasticface::checkpoint::Backbone::open(&cfg.out.join("final.safetensors"), None, None).unwrap();
    let mut inference = elasticface::train::run::open_inference(&backbone, Device::Cpu, None, 0, 16).unwrap();
    for r in &s.val_after {
        let path = packs.join(format!("{}.bin", r.set));
        let shape = ImageShape { h: SIZE, w: SIZE };
        let e = elasticface::eval::suite::evaluate_pack(inference.as_mut(), &path, shape, true).unwrap().verify;
        assert_eq!((r.report.accuracy, r.report.best_threshold), (e.accuracy, e.best_threshold), "{}", r.set);
        assert_eq!(r.report.dist, e.dist, "{}: distances", r.set);
    }

    // best.safetensors: the backbone of the step whose mean accuracy over the sets was the highest (of equals, the
    // earliest), which `eval` scores as the run did at that step.
    let accuracies: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("val").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["val"]["accuracy"].as_f64().unwrap()))
        .collect();
    let means: Vec<(u64, f64)> = accuracies
        .chunk_by(|a, b| a.0 == b.0)
        .map(|g| (g[0].0, g.iter().map(|a| a.1).sum::<f64>() / g.len() as f64))
        .collect();
    let top = means.iter().fold(means[0], |b, &m| if m.1 > b.1 { m } else { b });
    let (path, best) = s.best.clone().expect("a best model with --val");
    assert_eq!((path.clone(), best.step, best.mean_accuracy), (cfg.out.join("best.safetensors"), top.0, top.1));
    let backbone = elasticface::checkpoint::Backbone::open(&path, None, None).unwrap();
    assert_eq!(backbone.steps, top.0);
    let mut inference = elasticface::train::run::open_inference(&backbone, Device::Cpu, None, 0, 16).unwrap();
    for (set, accuracy) in &best.sets {
        let path = packs.join(format!("{set}.bin"));
        let shape = ImageShape { h: SIZE, w: SIZE };
        let e = elasticface::eval::suite::evaluate_pack(inference.as_mut(), &path, shape, true).unwrap().verify;
        assert_eq!(e.accuracy, *accuracy, "{set} at step {}", top.0);
    }

    let one = TrainConfig { val: Some(packs.join("lfw.bin")), max_steps: 1, out: root.path().join("one"), ..cfg };
    let s = train(&one, None, true).unwrap();
    assert_eq!((names(&s.val_before), names(&s.val_after)), (vec!["lfw".into()], vec!["lfw".into()]));
}

/// Whether a GPU adapter (lavapipe counts) is there; without one, a GPU test is skipped unless CI requires it.
fn gpu_found() -> bool {
    if elasticface::gpu::Gpu::new(&elasticface::gpu::GpuOptions::from_env()).is_ok() {
        return true;
    }
    assert!(
        std::env::var("ELASTICFACE_REQUIRE_GPU").map_or(true, |v| v != "1"),
        "ELASTICFACE_REQUIRE_GPU=1 but no adapter"
    );
    eprintln!("SKIPPED (no GPU adapter)");
    false
}

/// `init` (fine-tuning) on `device`: a run from a model trained on the CPU scores at its start exactly what `eval`
/// scores the model at on that device (on the CPU, what the model's run scored at its end), with a seeded head or
/// with imprinted centres (which start at a lower loss); a model of other widths is refused before anything is
/// written.
fn fine_tuning_starts_from_the_trained_model_on(device: Device) {
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 6, 8);
    write_set(&root.path().join("new"), 500, 4, 8);
    let pack = root.path().join("lfw.bin");
    write_pack(&pack, 2000, 40);
    let cfg = TrainConfig { val: Some(pack.clone()), epochs: 3, batch: 8, ..config(root.path()) };
    let trained = train(&cfg, None, true).unwrap();
    assert_eq!(trained.steps, 18);
    let model = cfg.out.join("final.safetensors");

    let tune = |name: &str, init_head| {
        let c = TrainConfig {
            data: root.path().join("new"),
            out: root.path().join(name),
            init: Some(model.clone()),
            init_head,
            max_steps: 1,
            lr: 0.01 * 512.0 / 8.0,
            device,
            ..cfg.clone()
        };
        train(&c, None, true).unwrap()
    };
    let (random, imprinted) = (tune("random", InitHead::Random), tune("imprint", InitHead::Imprint));
    let backbone = elasticface::checkpoint::Backbone::open(&model, None, None).unwrap();
    let mut inference = elasticface::train::run::open_inference(&backbone, device, None, 0, 16).unwrap();
    let shape = ImageShape { h: SIZE, w: SIZE };
    let e = elasticface::eval::suite::evaluate_pack(inference.as_mut(), &pack, shape, true).unwrap().verify;
    if device == Device::Cpu {
        let end = &trained.val_after[0].report;
        assert_eq!((end.accuracy, end.best_threshold, &end.dist), (e.accuracy, e.best_threshold, &e.dist));
    }
    for s in [&random, &imprinted] {
        assert_eq!(s.steps, 1);
        let start = &s.val_before[0].report;
        assert_eq!((start.accuracy, start.best_threshold, &start.dist), (e.accuracy, e.best_threshold, &e.dist));
    }
    assert!(imprinted.first_loss < random.first_loss, "{} against {}", imprinted.first_loss, random.first_loss);
    let metrics = std::fs::read_to_string(root.path().join("imprint/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!((first["imprint"]["classes"].as_u64(), first["imprint"]["images"].as_u64()), (Some(4), Some(32)));

    let other =
        TrainConfig { widths: Some([8, 16, 16, 16]), out: root.path().join("other"), init: Some(model), device, ..cfg };
    let err = format!("{:#}", train(&other, None, true).unwrap_err());
    assert!(err.contains("--widths 8,16,16,32 --embedding 32"), "{err}");
    assert!(!other.out.exists());
}

#[test]
fn fine_tuning_starts_from_the_trained_model() {
    fine_tuning_starts_from_the_trained_model_on(Device::Cpu);
}

#[test]
fn fine_tuning_on_the_gpu_starts_from_the_trained_model_too() {
    if gpu_found() {
        fine_tuning_starts_from_the_trained_model_on(Device::Gpu);
    }
}

#[test]
fn training_on_the_gpu_learns_identities_too() {
    if !gpu_found() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    write_set(&root.path().join("train"), 0, 24, 12);
    write_set(&root.path().join("val"), 1000, 12, 6);
    // Fewer epochs than on the CPU: a CPU adapter emulating a GPU is slow. Every 3x3 stride-1 convolution runs as
    // Winograd, as a GPU runs its wide layers (the `auto` tile: F(4x4) where the batch has at least 64 tiles of 4x4,
    // here the 16x16 and 8x8 layers, F(2x2) on the smaller ones), so the Winograd path is shown to learn, not only
    // to match the CPU for 3 steps; the held-out evaluation embeds in chunks of other sizes.
    let cfg = TrainConfig {
        device: Device::Gpu,
        epochs: 10,
        decay_epochs: vec![8],
        winograd: WinogradLayers::MinChannels(1),
        ..config(root.path())
    };
    let s = train(&cfg, None, true).unwrap();
    let (before, after) = (&s.val_before[0].report, &s.val_after[0].report);
    println!(
        "gpu: {} steps in {:.1} s: loss {:.3} -> {:.3}, held-out accuracy {:.3} -> {:.3}",
        s.steps, s.seconds, s.first_loss, s.last_loss, before.accuracy, after.accuracy
    );
    assert!(s.last_loss < 0.5 * s.first_loss, "loss {} -> {}", s.first_loss, s.last_loss);
    assert!(after.accuracy > 0.8, "held-out accuracy after training: {}", after.accuracy);
    assert!(after.accuracy > before.accuracy + 0.05, "{} -> {}", before.accuracy, after.accuracy);
    // The best model is the GPU backbone of the best measurement (read without the head).
    let (path, best) = s.best.expect("a run with --val keeps its best model");
    let kept = elasticface::checkpoint::Backbone::open(&path, None, None).unwrap();
    assert_eq!(kept.steps, best.step);
    assert!(best.mean_accuracy >= after.accuracy && best.mean_accuracy >= before.accuracy, "{best:?}");
}
