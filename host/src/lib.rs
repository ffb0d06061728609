//! # elasticface
//!
//! The host side of ElasticFace: the `elasticface` command and the library behind it.
//!
//! - [`gpu`]: adapter choice and capabilities, tensors, and the WGSL kernels, each the twin of a core function.
//! - [`data`]: training data: insightface RecordIO, image folders, synthetic images, and a deterministic,
//!   multi-threaded batch loader.
//! - [`bench`]: kernel throughput (`elasticface bench --kernels`).
//! - [`tensorfile`]: named tensors in safetensors files (reference vectors, checkpoints), written atomically.
//! - [`reference`]: comparing results with reference tensors under written tolerances.
//! - [`selftest`]: runs the PyTorch reference vectors through the core (and, later, the GPU trainer) and
//!   reports each tensor's error.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod gpu;
pub mod reference;
pub mod selftest;
pub mod tensorfile;
pub mod train;
