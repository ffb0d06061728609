//! A short `elasticface demo` (reduced data and steps, CPU reference): held-out verification must rise clearly
//! above where it started and above an absolute bar, and the picture must be written.

use elasticface::demo::{demo, DemoConfig};
use elasticface::train::run::Device;

#[test]
fn a_short_demo_learns_to_verify_unseen_identities() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        out: dir.path().join("run"),
        data: dir.path().join("data"),
        ids: 30,
        per_id: 10,
        val_ids: 20,
        size: 32,
        arch: "demo".into(),
        steps: 60,
        batch: 32,
        loss: "elastic-arc-plus".into(),
        device: Device::Cpu,
        threads: 0,
        seed: 0,
        quiet: true,
    };
    let r = demo(&cfg).unwrap();
    let (before, after) = (&r.run.val_before[0].report, &r.run.val_after[0].report);
    println!(
        "loss {:.2} -> {:.2}, held-out accuracy {:.3} -> {:.3}",
        r.run.first_loss, r.run.last_loss, before.accuracy, after.accuracy
    );
    assert!(r.run.last_loss < 0.8 * r.run.first_loss, "loss {} -> {}", r.run.first_loss, r.run.last_loss);
    assert!(after.accuracy >= before.accuracy + 0.08, "held-out accuracy {} -> {}", before.accuracy, after.accuracy);
    assert!(after.accuracy >= 0.72, "held-out accuracy after training {}", after.accuracy);
    let png = std::fs::read(&r.picture).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(r.losses.len(), 60);
    // The run's config.toml reads back, as settings and as a TOML table (`train --config` reads both, `report` the
    // table; a TOML integer is an i64).
    let text = std::fs::read_to_string(cfg.out.join("config.toml")).unwrap();
    let c: elasticface::train::run::TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!((c.max_steps, c.out), (60, cfg.out.clone()));
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table["max_steps"].as_integer(), Some(60));
}
