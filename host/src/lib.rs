//! # elasticface
//!
//! The host side of ElasticFace: the `elasticface` command and the library behind it.
//!
//! - [`reference`]: reading reference tensors (safetensors) and comparing results with written tolerances.
//! - [`selftest`]: runs the PyTorch reference vectors through the core (and, later, the GPU trainer) and
//!   reports each tensor's error.

pub mod bench;
pub mod data;
pub mod gpu;
pub mod reference;
pub mod selftest;
