//! The GPU layer: adapter and device ([`Gpu`]), tensors ([`Tensor`], alone or packed into shared buffers:
//! [`Packed`]; matrices split by rows: [`SplitTensor`]), the WGSL kernels ([`kernels`]), and the GPU time of each
//! dispatch from timestamp queries (`Gpu::profile`, in `profile.rs`).

mod device;
pub mod kernels;
mod profile;
mod split;
mod tensor;

pub use device::{adapters, AdapterLine, Capabilities, Gpu, GpuOptions};
pub use split::SplitTensor;
pub(crate) use tensor::Recorded;
pub use tensor::{Elem, Packed, Tensor};
