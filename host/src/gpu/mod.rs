//! The GPU layer: adapter and device ([`Gpu`]), tensors ([`Tensor`]) and the WGSL kernels ([`kernels`]).

mod device;
pub mod kernels;
mod profile;
mod split;
mod tensor;

pub use device::{adapters, AdapterLine, Capabilities, Gpu, GpuOptions};
pub use split::SplitTensor;
pub use tensor::Tensor;
