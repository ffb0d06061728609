//! `elasticface bench --peer` as a user runs it: our steps, then the peer's, and the ratio.

use std::process::Command;

fn elasticface() -> Command {
    Command::new(env!("CARGO_BIN_EXE_elasticface"))
}

/// A small network, so that the steps take seconds on a CPU adapter.
const SMALL: [&str; 14] = [
    "bench",
    "--arch",
    "r18",
    "--input-size",
    "32",
    "--batch",
    "4",
    "--classes",
    "10",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--no-profile",
];

/// Whether the command failed only for want of a GPU adapter (allowed unless `ELASTICFACE_REQUIRE_GPU=1`).
fn no_gpu(stderr: &str) -> bool {
    let required = std::env::var("ELASTICFACE_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let missing = stderr.contains("no Vulkan, Metal or DX12 adapter");
    if missing && !required {
        eprintln!("SKIPPED (no GPU adapter)");
    }
    missing && !required
}

#[test]
fn the_peer_runs_after_our_steps_and_is_compared() {
    let peer = r#"echo banner; echo '{"arch": "r18", "batch": 4, "mode": "fp32", "img_per_s": 0.5}'; echo '{"arch": "r50", "batch": 4, "img_per_s": 9}'"#;
    let out = elasticface().args(SMALL).args(["--json", "--peer", peer]).output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if no_gpu(&stderr) {
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let ours = v["ours"]["images_per_s"].as_f64().unwrap();
    assert!(ours > 0.0 && v["ours"]["arch"] == "r18", "{stdout}");
    let rows = v["peer"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the peer's r18 line is ours to compare: {stdout}");
    assert_eq!(rows[0]["label"], "fp32");
    // The ratio is ours / 0.5 exactly when computed; both figures went through JSON, and serde_json's default float
    // parser may land an ulp off the printed value (no `float_roundtrip`): 4 ulps of slack.
    let ratio = rows[0]["ratio"].as_f64().unwrap();
    assert!((ratio - ours / 0.5).abs() <= 4.0 * f64::EPSILON * ratio, "ratio {ratio}, ours {ours}");
    assert_eq!(v["peer"]["output"].as_array().unwrap().len(), 3);
    assert!(stderr.contains("running the peer: echo banner"), "{stderr}");
}

#[test]
fn a_failing_peer_fails_the_command_but_keeps_our_figures() {
    let out = elasticface().args(SMALL).args(["--json", "--peer", "echo half-way; exit 3"]).output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if no_gpu(&stderr) {
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("our figures as JSON");
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0, "{stdout}");
    assert!(stderr.contains("failed (exit status: 3)") && stderr.contains("half-way"), "{stderr}");
}

#[test]
fn the_peer_is_refused_with_kernels_and_data() {
    for other in [&["--kernels"][..], &["--data", "x.rec"]] {
        let out = elasticface().args(["bench", "--peer", "true"]).args(other).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
}

#[test]
fn a_tune_within_a_budget_measures_the_default_lists_the_rest_and_still_runs_the_peer() {
    // A budget of 0 s: the default runs (it is the baseline), every other setting is listed as not measured. The
    // steps are given twice: the later count wins.
    let peer = r#"echo '{"arch": "r18", "batch": 4, "mode": "fp32", "img_per_s": 0.5}'"#;
    let out = elasticface()
        .args(SMALL)
        .args(["--tune", "--budget", "0", "--steps", "2", "--json", "--peer", peer])
        .output()
        .expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if no_gpu(&stderr) {
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let ours = &v["ours"];
    assert_eq!(ours["steps"], 2, "{stdout}");
    assert_eq!(ours["rows"].as_array().unwrap().len(), 1, "{stdout}");
    assert_eq!(ours["rows"][0]["default"], true, "{stdout}");
    assert_eq!(ours["budget_s"], 0.0, "{stdout}");
    let not_measured = ours["not_measured"].as_array().unwrap();
    assert!(not_measured.iter().any(|f| f == "--precision f32 --winograd off"), "{stdout}");
    assert_eq!(v["peer"]["rows"].as_array().unwrap().len(), 1, "the peer ran: {stdout}");
    assert!(stderr.contains("the budget is spent"), "{stderr}");
}

#[test]
fn a_budget_needs_the_tune_and_a_number_of_seconds() {
    let out = elasticface().args(["bench", "--budget", "10"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tune"), "{stderr}");
    let out = elasticface().args(SMALL).args(["--tune", "--budget=-1"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if no_gpu(&stderr) {
        return;
    }
    assert!(!out.status.success());
    assert!(stderr.contains("--budget -1: not a number of seconds"), "{stderr}");
}

#[test]
fn the_cpu_references_convolutions_are_timed_on_the_threads_asked_for() {
    let args = ["bench", "--kernels", "--cpu", "--threads", "2", "--batch", "2", "--shrink", "8", "--reps", "1"];
    let out = elasticface().args(args).arg("--json").output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("CPU reference on 2 threads (shapes: batch 2, spatial / 8)"), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    // Seven convolutions, each forward and weight gradient, and the input gradient of all but the stem.
    assert_eq!(rows.len(), 7 * 3 - 1, "{stdout}");
    assert_eq!(rows[0]["kernel"], "conv2d_forward (cpu)");
    assert_eq!(rows[0]["shape"], "N=2 3->64 14x14 k3 s1");
    assert_eq!(rows[1]["kernel"], "conv2d_backward_weight (cpu)");
    assert!(rows.iter().all(|r| r["gflops"].as_f64().unwrap() > 0.0 && r["ms"].as_f64().unwrap() > 0.0), "{stdout}");
    // --cpu is a form of --kernels.
    let out = elasticface().args(["bench", "--cpu"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernels"));
}
