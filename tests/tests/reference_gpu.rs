//! The GPU against the PyTorch reference vectors (`tests/data/reference`): what `elasticface selftest` runs, on the
//! test adapter (lavapipe in CI) with runtime bounds checks on.
//!
//! Each check carries its tolerance and the reason for it (`host/src/selftest/*.rs`); these tests print every check
//! and fail when any fails.

use elasticface::gpu::kernels::conv2d::ConvPrecision;
use elasticface::selftest::{self, Report};
use elasticface::tensorfile::TensorFile;
use elasticface_tests::{assert_report_passed, gpu, reference_dir};

fn run(file: &str) -> Option<Report> {
    let gpu = gpu()?;
    let f = TensorFile::open(&reference_dir().join(file)).expect("reference file loads");
    Some(selftest::run_gpu(&[f], gpu, ConvPrecision::F32))
}

#[test]
fn margin_head_on_the_gpu_matches_pytorch_for_all_eight_losses() {
    let Some(report) = run("margin_loss.safetensors") else { return };
    // 8 cases x (assigned margins, target cosines, target logits, loss, both gradients).
    assert_report_passed(&report, 8 * 6);
}

#[test]
fn gpu_trainer_matches_pytorch_on_three_sgd_steps_of_the_tiny_iresnet() {
    let Some(report) = run("iresnet_tiny.safetensors") else { return };
    assert_report_passed(&report, 150);
}

#[test]
fn the_gpu_selftest_checks_verification_on_the_cpu_and_says_so() {
    let Some(report) = run("verification.safetensors") else { return };
    assert_report_passed(&report, 5);
    assert!(report.sections[0].file.contains("CPU"), "{}", report.sections[0].file);
}
