//! Shared helpers of the cross-crate tests (the tests themselves are in `tests/tests/`).

use std::path::PathBuf;

/// The folder of the PyTorch reference vectors shipped with the repository (`tests/data/reference`).
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join("reference")
}
