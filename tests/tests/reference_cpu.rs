//! The core against the PyTorch reference vectors (`tests/data/reference`), one test per reference file.
//!
//! Each check carries its own tolerance and the reason for it (see `host/src/selftest/*.rs`); these tests fail
//! when any check fails and print every check, so a failure shows which tensor and by how much.

use elasticface::selftest::{self, Report};
use elasticface::tensorfile::TensorFile;
use elasticface_tests::{assert_report_passed, reference_dir};

fn run(file: &str) -> Report {
    let f = TensorFile::open(&reference_dir().join(file)).expect("reference file loads");
    selftest::run_cpu(&[f])
}

#[test]
fn margin_loss_all_eight_losses_match_pytorch() {
    // 8 cases x (assigned margins, cos, logits, loss, grad wrt embeddings, grad wrt weight).
    assert_report_passed(&run("margin_loss.safetensors"), 8 * 6);
}

#[test]
fn iresnet_tiny_three_sgd_steps_match_pytorch() {
    // The tiny net has 50+ state tensors; step-0 gradients, step-0 state, final state and the rest.
    assert_report_passed(&run("iresnet_tiny.safetensors"), 150);
}

#[test]
fn verification_protocol_matches_numpy() {
    // Distances, 10 thresholds, 10 accuracies, mean, std.
    assert_report_passed(&run("verification.safetensors"), 5);
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
