//! `elasticface selftest` (on the GPU, and `--cpu`) as a user runs it: output, exit status, a corrupted reference.

use std::path::{Path, PathBuf};
use std::process::Command;

fn elasticface() -> Command {
    Command::new(env!("CARGO_BIN_EXE_elasticface"))
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference")
}

#[test]
fn selftest_cpu_passes_and_prints_every_check() {
    let out = elasticface().args(["selftest", "--cpu"]).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASS  elastic_arc_plus.margins_assigned"), "{stdout}");
    assert!(stdout.contains("PASS  step0.grad.layer1.0.conv1.weight"), "{stdout}");
    assert!(stdout.contains("PASS  verification.fold_threshold"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("all passed"), "{stdout}");
}

#[test]
fn selftest_fails_with_non_zero_status_on_a_wrong_reference() {
    // Copy the margin reference and change one value of its data: the check of that tensor must fail.
    let dir = std::env::temp_dir().join(format!("elasticface-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(reference_dir().join("margin_loss.safetensors")).unwrap();
    let last = bytes.len() - 4; // the last f32 of the last tensor in the file
    let v = f32::from_le_bytes(bytes[last..].try_into().unwrap());
    bytes[last..].copy_from_slice(&(v + 1.0).to_le_bytes());
    std::fs::write(dir.join("margin_loss.safetensors"), &bytes).unwrap();

    let out = elasticface().args(["selftest", "--cpu", "--reference"]).arg(&dir).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn selftest_reports_a_missing_directory_clearly() {
    let out = elasticface().args(["selftest", "--cpu", "--reference", "no/such/dir"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("no/such/dir"), "{stderr}");
}

#[test]
fn selftest_without_cpu_runs_on_the_gpu_or_says_what_to_run() {
    // No adapter of that name: the error names it and points to the CPU selftest.
    let out = elasticface().args(["selftest", "--adapter", "no-such-adapter-x"]).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-adapter-x") && stderr.contains("selftest --cpu"), "{stderr}");

    if elasticface::gpu::adapters().is_empty() && std::env::var("ELASTICFACE_REQUIRE_GPU").as_deref() != Ok("1") {
        eprintln!("SKIPPED the GPU selftest: no GPU adapter");
        return;
    }
    // The default: the GPU checks every reference file and passes.
    let out = elasticface().args(["selftest"]).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASS  elastic_arc_plus.grad_weight"), "{stdout}");
    assert!(stdout.contains("PASS  step0.grad.layer1.0.conv1.weight"), "{stdout}");
    assert!(stdout.contains("PASS  final.head.weight"), "{stdout}");
    assert!(stdout.contains("verification.safetensors (CPU"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("selftest (gpu: ") && stdout.contains("all passed"), "{stdout}");
}
