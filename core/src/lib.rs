//! # elasticface-core
//!
//! The truth every other part of ElasticFace is tested against, small enough to link into firmware.
//!
//! - [`margin`]: the margin-penalty softmax family (ArcFace, CosFace, ElasticFace-Arc/Cos and their Plus
//!   forms), forward and backward, on caller-provided buffers.
//! - [`rng`]: a counter-based generator (Philox4x32-10) and a normal sampler, so that the same seed gives
//!   the same margins, bit for bit, on every target but x86 without SSE2 (see [`rng`]).
//! - [`nn`]: the CPU reference of every layer the GPU runs (conv2d, batch norm, PReLU, linear, residual add,
//!   L2 normalise, SGD, gradient clipping, input preprocessing), forward and backward side by side, with
//!   PyTorch semantics.
//! - [`model`]: iResNet (r18 .. r200 and custom configs) with insightface's parameter names, a complete CPU
//!   training step on one caller-provided arena, and the forward pass alone ([`model::forward`]), whose
//!   evaluation mode reads the weights through a shared reference (read-only memory, several threads).
//! - [`parallel`]: who runs a layer's independent parts: the calling thread, or threads a host lends; the same
//!   bits either way.
//! - [`verify`], [`embedding`], [`gallery`]: what a device needs to check embeddings: the LFW 10-fold
//!   protocol, TAR at FAR, ROC points, normalise/compare/quantise, and fixed-capacity galleries (f32 or
//!   int8) for 1:1 verification and 1:N identification.
//! - [`align`]: faces aligned from five landmarks onto insightface's reference points (a least-squares
//!   similarity, a bilinear warp), as evaluation sets such as IJB-B/C give them.
//! - [`conformance`]: does a device compute the host's embeddings? Per probe cosine, largest difference and
//!   verification decision, streamed, with a pass/fail against the caller's tolerances.
//! - `ffi` (feature `ffi`): a C ABI over the galleries, the conformance check, face alignment and the margin
//!   math, for firmware written in C; the header is `ffi/include/elasticface.h`.
//!
//! `#![no_std]`, no allocator required. Every function that takes slices checks their lengths and returns
//! an [`Error`] instead of panicking.
//!
//! # Training a small iResNet on the CPU
//!
//! ```
//! use elasticface_core::margin::MarginConfig;
//! use elasticface_core::model::{IResNetConfig, StepConfig, Trainer, TrainerLayout};
//! use elasticface_core::rng::{standard_normal, Philox4x32};
//!
//! let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [8, 16, 16, 32], input_h: 32, input_w: 32, embedding: 16 };
//! let loss: MarginConfig = "elastic-arc-plus".parse()?;
//! let (batch, classes) = (4, 10);
//! let layout = TrainerLayout::new(&cfg, batch, classes)?;
//! // All memory is the caller's: one f32 arena and one u32 buffer for the Plus ranking.
//! let (mut arena, mut order) = (vec![0.0; layout.arena_len()], vec![0; batch]);
//! let mut trainer = Trainer::new(layout, StepConfig::recipe(loss), &mut arena, &mut order)?;
//! // Streams 0, 1, 2, ... of the seed are the margins of steps 0, 1, 2, ...: initialise from another one.
//! trainer.init(&mut Philox4x32::new(/* seed */ 1, /* stream */ u64::MAX))?;
//!
//! let mut rng = Philox4x32::new(2, 0);
//! let images: Vec<f32> = (0..batch * cfg.input_len()).map(|_| standard_normal(&mut rng) as f32).collect();
//! let labels = [0, 3, 3, 7];
//! let mut margins = [0.0; 4];
//! loss.draw_margins_at(/* seed */ 1, /* step */ 0, &mut margins); // per sample, per step
//! let report = trainer.step(&images, &labels, &margins)?;
//! assert!(report.loss.is_finite());
//! # Ok::<(), elasticface_core::Error>(())
//! ```
//!
//! Shape letters used throughout: `B` batch, `D` embedding size, `C` classes (in the head) or channels
//! (in `nn`), `N` batch (in `nn`), `H`/`W` height/width, `K` kernel size.
#![no_std]
// Safe Rust everywhere; the C ABI (feature `ffi`) is the one module that may use `unsafe`, to turn the
// caller's pointers into slices after checking them.
#![cfg_attr(not(feature = "ffi"), forbid(unsafe_code))]
#![cfg_attr(feature = "ffi", deny(unsafe_code))]
#![warn(missing_docs)]

pub mod align;
pub mod conformance;
pub mod embedding;
mod error;
#[cfg(feature = "ffi")]
#[allow(unsafe_code)]
pub mod ffi;
pub mod gallery;
pub mod margin;
pub mod model;
pub mod nn;
pub mod parallel;
pub mod rng;
pub mod verify;

pub use error::Error;
