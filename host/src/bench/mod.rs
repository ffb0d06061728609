//! `elasticface bench`: measured throughput, never assumed.
//!
//! - [`network`]: whole training steps of an iResNet on the GPU trainer, on synthetic data: images/s, the time per
//!   kernel family from GPU timestamps, and the GPU memory the trainer holds; and ([`network::tune`]) the same
//!   steps in every setting of the convolutions, to find the fastest on the adapter at hand.
//! - [`kernels`]: each kernel family on the shapes an iResNet trains with (GFLOP/s, GB/s).
//! - [`data`]: the input pipeline alone on the CPU (decode, augment, batch): images/s in all and per thread.
//! - [`peer`]: another trainer's benchmark (PyTorch's) run right after ours by the same command, and the ratios.

pub mod data;
pub mod kernels;
pub mod network;
pub mod peer;
