//! The core against the PyTorch reference vectors (`tests/data/reference`), one test per reference file.
//!
//! Each check carries its own tolerance and the reason for it (see `host/src/selftest/*.rs`); these tests fail
//! when any check fails and print every check, so a failure shows which tensor and by how much.

use elasticface::selftest::{self, Report};
use elasticface::tensorfile::TensorFile;
use elasticface_tests::reference_dir;

fn run(file: &str) -> Report {
    let f = TensorFile::open(&reference_dir().join(file)).expect("reference file loads");
    let report = selftest::run_cpu(&[f]);
    for c in report.sections.iter().flat_map(|s| &s.checks) {
        println!("{c}");
    }
    report
}

fn assert_passed(report: &Report, min_checks: usize) {
    let (all, failed) = report.counts();
    let failures: Vec<String> =
        report.sections.iter().flat_map(|s| &s.checks).filter(|c| !c.pass).map(|c| c.to_string()).collect();
    assert!(failed == 0, "{failed} of {all} checks failed:\n{}", failures.join("\n"));
    assert!(all >= min_checks, "only {all} checks ran, expected at least {min_checks}");
}

#[test]
fn margin_loss_all_eight_losses_match_pytorch() {
    // 8 cases x (assigned margins, cos, logits, loss, grad wrt embeddings, grad wrt weight).
    assert_passed(&run("margin_loss.safetensors"), 8 * 6);
}

#[test]
fn iresnet_tiny_three_sgd_steps_match_pytorch() {
    // The tiny net has 50+ state tensors; step-0 gradients, step-0 state, final state and the rest.
    assert_passed(&run("iresnet_tiny.safetensors"), 150);
}

#[test]
fn verification_protocol_matches_numpy() {
    // Distances, 10 thresholds, 10 accuracies, mean, std.
    assert_passed(&run("verification.safetensors"), 5);
}

#[test]
fn bundled_files_are_the_repository_files() {
    // `elasticface selftest --cpu` checks the bundled copies; they must be the same bytes as the test data.
    let bundled = selftest::load(None).expect("bundled files parse");
    let on_disk = selftest::load(Some(&reference_dir())).expect("test data parses");
    assert_eq!(bundled.len(), 3);
    for (a, b) in bundled.iter().zip(&on_disk) {
        assert_eq!(a.keys(), b.keys(), "{} vs {}", a.name, b.name);
        for k in a.keys() {
            assert_eq!(format!("{:?}", a.get(k).unwrap().data), format!("{:?}", b.get(k).unwrap().data), "{k}");
        }
    }
}
