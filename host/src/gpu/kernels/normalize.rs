//! `shaders/normalize.wgsl`: L2 normalisation of vectors and its backward pass.
//! CPU twins: [`elasticface_core::nn::l2_normalize_forward`], [`elasticface_core::nn::l2_normalize_backward`].
//!
//! Vectors are described by the core's [`VectorLayout`]: rows of `(N, D)` (embeddings; the GPU head's class
//! centres, which it keeps as rows of `(C, D)`) or columns of `(D, C)` (the core's head layout). One workgroup per
//! vector sums in a fixed order, so results are deterministic; they differ from the core's sequential sums by
//! rounding only.

use anyhow::{bail, Result};
use elasticface_core::nn::VectorLayout;

use super::{check_f32, Dispatch};
use crate::gpu::{Gpu, SplitTensor, Tensor};

/// Mirrors `Params` in `shaders/normalize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormalizeParams {
    /// Number of vectors.
    pub count: u32,
    /// Elements per vector.
    pub len: u32,
    /// Distance between consecutive vectors.
    pub vector_stride: u32,
    /// Distance between consecutive elements of one vector.
    pub element_stride: u32,
}

impl NormalizeParams {
    fn new(kernel: &str, layout: VectorLayout) -> Result<Self> {
        let u = |v: usize| u32::try_from(v);
        match (
            u(layout.count),
            u(layout.len),
            u(layout.vector_stride),
            u(layout.element_stride),
            u(layout.buffer_len()),
        ) {
            (Ok(count), Ok(len), Ok(vector_stride), Ok(element_stride), Ok(_)) => {
                Ok(Self { count, len, vector_stride, element_stride })
            }
            _ => bail!("{kernel}: layout {layout:?} does not fit 32-bit indices"),
        }
    }
}

/// The normalisation kernels' pipelines.
pub struct Normalize {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
}

impl Normalize {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Self {
        let m = gpu.shader("normalize.wgsl", include_str!("../../../../shaders/normalize.wgsl"));
        Self {
            forward: gpu.pipeline("l2_normalize_forward", &m, "l2_normalize_forward"),
            backward: gpu.pipeline("l2_normalize_backward", &m, "l2_normalize_backward"),
        }
    }

    /// `y = x / ||x||` per vector of `layout`, `norms[i] = ||x_i||`.
    /// Shapes: `x`, `y`: `layout.buffer_len()`; `norms`: `(layout.count)`.
    pub fn forward(&self, gpu: &Gpu, layout: VectorLayout, x: &Tensor, y: &Tensor, norms: &Tensor) -> Result<Dispatch> {
        let name = "l2_normalize_forward";
        check_f32(name, x, layout.buffer_len())?;
        check_f32(name, y, layout.buffer_len())?;
        check_f32(name, norms, layout.count)?;
        let params = NormalizeParams::new(name, layout)?;
        gpu.dispatch(name, &self.forward, &params, &[x, y, norms], gpu.grid_1d(layout.count, 1))
    }

    /// Backward of [`Normalize::forward`], in place: `grad` holds `dL/dy` and receives `dL/dx`,
    /// `dx = (dy - y <y, dy>) / ||x||` per vector. Shapes as in [`Normalize::forward`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        layout: VectorLayout,
        y: &Tensor,
        norms: &Tensor,
        grad: &Tensor,
    ) -> Result<Dispatch> {
        let name = "l2_normalize_backward";
        check_f32(name, y, layout.buffer_len())?;
        check_f32(name, grad, layout.buffer_len())?;
        check_f32(name, norms, layout.count)?;
        let params = NormalizeParams::new(name, layout)?;
        gpu.dispatch(name, &self.backward, &params, &[y, norms, grad], gpu.grid_1d(layout.count, 1))
    }

    /// [`Normalize::forward`] of the rows of a split `(R, D)` matrix, one dispatch per part.
    /// `y` has the same split and columns; `norms` the same split with one column.
    pub fn forward_rows_split(
        &self,
        gpu: &Gpu,
        x: &SplitTensor,
        y: &SplitTensor,
        norms: &SplitTensor,
    ) -> Result<Vec<Dispatch>> {
        check_pairing("l2_normalize_forward", x, y, norms)?;
        let parts = x.parts.iter().zip(&y.parts).zip(&norms.parts);
        parts.map(|((xp, yp), np)| self.forward(gpu, VectorLayout::rows(np.len, x.cols), xp, yp, np)).collect()
    }

    /// [`Normalize::backward`] of the rows of a split `(R, D)` matrix, one dispatch per part, in place on `grad`.
    pub fn backward_rows_split(
        &self,
        gpu: &Gpu,
        y: &SplitTensor,
        norms: &SplitTensor,
        grad: &SplitTensor,
    ) -> Result<Vec<Dispatch>> {
        check_pairing("l2_normalize_backward", y, grad, norms)?;
        let parts = y.parts.iter().zip(&norms.parts).zip(&grad.parts);
        parts.map(|((yp, np), gp)| self.backward(gpu, VectorLayout::rows(np.len, y.cols), yp, np, gp)).collect()
    }
}

/// Checks that `b` is split like `a` with as many columns, and `norms` like `a` with one column.
fn check_pairing(kernel: &str, a: &SplitTensor, b: &SplitTensor, norms: &SplitTensor) -> Result<()> {
    for (t, cols) in [(b, a.cols), (norms, 1)] {
        if !t.same_split(a) || t.cols != cols {
            bail!(
                "{kernel}: {} ({} rows split at {:?}, {} columns) does not pair with {} (split at {:?}, {} columns)",
                t.label,
                t.rows,
                t.offsets,
                t.cols,
                a.label,
                a.offsets,
                cols
            );
        }
    }
    Ok(())
}
