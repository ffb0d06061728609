//! # elasticface-core
//!
//! The truth every other part of ElasticFace is tested against, small enough to link into firmware.
//!
//! - [`margin`]: the margin-penalty softmax family (ArcFace, CosFace, ElasticFace-Arc/Cos and their Plus
//!   forms), forward and backward, on caller-provided buffers.
//! - [`rng`]: a counter-based generator (Philox4x32-10) and a normal sampler, so that the same seed gives
//!   the same margins, bit for bit, on every target.
//! - [`nn`]: the CPU reference of every layer the GPU runs (conv2d, batch norm, PReLU, linear, residual add,
//!   L2 normalise, SGD, gradient clipping, input preprocessing), forward and backward side by side, with
//!   PyTorch semantics.
//! - [`model`]: iResNet (r18 .. r200 and custom configs) with insightface's parameter names, and a complete
//!   CPU training step on one caller-provided arena.
//! - [`verify`], [`embedding`], [`gallery`]: what a device needs to check embeddings: the LFW 10-fold
//!   protocol, TAR at FAR, ROC points, normalise/compare/quantise, and a fixed-capacity gallery.
//!
//! `#![no_std]`, no allocator required. Every function that takes slices checks their lengths and returns
//! an [`Error`] instead of panicking.
//!
//! Shape letters used throughout: `B` batch, `D` embedding size, `C` classes (in the head) or channels
//! (in `nn`), `N` batch (in `nn`), `H`/`W` height/width, `K` kernel size.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod embedding;
mod error;
pub mod gallery;
pub mod margin;
pub mod model;
pub mod nn;
pub mod rng;
pub mod verify;

pub use error::Error;
