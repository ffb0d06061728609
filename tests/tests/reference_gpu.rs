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
    run_in(file, ConvPrecision::F32)
}

fn run_in(file: &str, precision: ConvPrecision) -> Option<Report> {
    let gpu = gpu()?;
    let f = TensorFile::open(&reference_dir().join(file)).expect("reference file loads");
    Some(selftest::run_gpu(&[f], gpu, precision))
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

/// Mixed precision (emulated where the adapter has no tensor cores, as on lavapipe in CI): f16 operands and
/// activations, with every convolution direct and with the 3x3 ones as Winograd of either tile, against PyTorch's
/// f32 run with mixed precision's tolerances.
#[test]
fn gpu_trainer_in_mixed_precision_matches_pytorch_within_its_tolerances() {
    let Some(report) = run_in("iresnet_tiny.safetensors", ConvPrecision::Mixed) else { return };
    assert_eq!(report.sections.len(), 3);
    assert_report_passed(&report, 3 * 150);
}

#[test]
fn the_gpu_selftest_checks_verification_on_the_cpu_and_says_so() {
    let Some(report) = run("verification.safetensors") else { return };
    assert_report_passed(&report, 5);
    assert!(report.sections[0].file.contains("CPU"), "{}", report.sections[0].file);
}
