//! # elasticface
//!
//! The host side of ElasticFace: the `elasticface` command and the library behind it.
//!
//! - [`gpu`]: adapter choice and capabilities, tensors, and the WGSL kernels, each the twin of a core function.
//! - [`data`]: training data: insightface RecordIO, image folders, synthetic images, and a deterministic,
//!   multi-threaded batch loader.
//! - [`train`]: the training step on the GPU or the CPU reference (one `Backend` trait), schedules and the
//!   `elasticface train` loop; [`checkpoint`]: complete training states under insightface's names.
//! - [`synth`]: writes the synthetic-faces set as RecordIO, a verification pack and an IJB set; [`demo`]:
//!   `elasticface demo`.
//! - [`bench`](mod@bench): measured throughput: whole training steps on the GPU (images/s, GPU time per kernel,
//!   memory), each kernel (`--kernels`), and the input pipeline on the CPU (`--data`).
//! - [`tensorfile`]: named tensors in safetensors files (reference vectors, checkpoints), written atomically.
//! - [`reference`](mod@reference): comparing results with reference tensors under written tolerances.
//! - [`report`]: how training runs went, from their folders: summaries and loss and accuracy curves.
//! - [`selftest`]: runs the PyTorch reference vectors through the GPU trainer or the core and reports each
//!   tensor's error.
//! - [`eval`]: verification (LFW protocol) on insightface `.bin` packs and held-out pairs, IJB-B/C, reports and
//!   ROC plots;
//!   [`embed`]: embeddings of image files; [`align`](mod@align): face photos with landmarks to aligned crops;
//!   [`identify`]: galleries of people and 1:N search (`enroll`, `identify`, `gallery`) through the core's gallery;
//!   [`onnx`]: ONNX export; [`pth`]: PyTorch checkpoints (through the strict [`pickle`] reader); [`commands`]: the
//!   `eval`, `embed`, `compare`, `enroll`, `identify`, `gallery`, `align`, `export` and `import` commands;
//!   [`fingerprint`]: FNV-1a, which tells whether a file was made from the same inputs; [`features`]: features kept
//!   on disk as they are computed, so that long runs resume after a crash.

/// Serde through the type's text form: `TryFrom<String>` by `FromStr` (error `String`) and `From<T> for String`
/// by `Display`, for a type marked `#[serde(try_from = "String", into = "String")]` (the choices a config file
/// and the command line both spell, e.g. `auto`).
macro_rules! serde_as_text {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;

            fn try_from(s: String) -> std::result::Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

pub mod align;
pub mod bench;
pub mod checkpoint;
pub mod commands;
pub mod data;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod features;
pub mod files;
pub mod fingerprint;
pub mod gpu;
pub mod identify;
pub mod onnx;
pub mod pickle;
pub mod pth;
pub mod reference;
pub mod report;
pub mod selftest;
pub mod streams;
pub mod synth;
pub mod tensorfile;
pub mod train;
