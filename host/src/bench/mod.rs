//! `elasticface bench`: measured throughput, never assumed.
//!
//! - [`network`]: whole training steps of an iResNet on the GPU trainer, on synthetic data: images/s, the time per
//!   kernel family from GPU timestamps, and the GPU memory the trainer holds.
//! - [`kernels`]: each kernel family on the shapes an iResNet trains with (GFLOP/s, GB/s).
//! - [`data`]: the input pipeline alone on the CPU (decode, augment, batch): images/s in all and per thread.

pub mod data;
pub mod kernels;
pub mod network;
