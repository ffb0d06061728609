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

/// The core's closed-form similarity against Umeyama's SVD solution (`gen_alignment.py`, numpy, f64): faces of
/// the template's shape turned, scaled (0.4-4x) and moved, with detection noise of 0.5 to 6 pixels, and one set
/// mirrored (the reflection Umeyama's correction rules out). Both are the least-squares similarity in f64, so
/// they agree to f64 rounding of sums over coordinates up to ~1,000: 1e-9 relative to the largest entry.
#[test]
fn alignment_matches_umeyama() {
    use elasticface_core::align::{estimate_similarity, ARCFACE_LANDMARKS};
    let text = std::fs::read_to_string(reference_dir().join("alignment.json")).expect("alignment.json");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let points = |v: &serde_json::Value| -> Vec<[f32; 2]> {
        v.as_array().unwrap().iter().map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32]).collect()
    };
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    let mut worst = 0.0f64;
    for (k, case) in cases.iter().enumerate() {
        let (from, to) = (points(&case["from"]), points(&case["to"]));
        assert_eq!(to, ARCFACE_LANDMARKS, "the template");
        let m = estimate_similarity(&from, &to).unwrap();
        let want: Vec<f64> = case["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = [m.a, -m.b, m.tx, m.b, m.a, m.ty];
        let scale = want.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            let e = (g - w).abs() / scale;
            assert!(e < 1e-9, "case {k}: {got:?} vs {want:?}");
            worst = worst.max(e);
        }
    }
    eprintln!("alignment vs Umeyama: largest relative difference {worst:e}");
}
