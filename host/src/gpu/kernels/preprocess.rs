//! `shaders/preprocess.wgsl`: a batch of u8 `(H, W, 3)` RGB images to the network's `(N, 3, H, W)` input, f32 or
//! (mixed precision's activations) f16.
//! CPU twin: [`elasticface_core::nn::preprocess_image`] (one image).
//!
//! The bytes travel four to a `u32` ([`Preprocess::pack`]; [`Gpu::write_bytes`] uploads them so). Their values
//! come from a 256-entry table made by the core function itself, so the output is bit-identical to the core on
//! every GPU (WGSL's `x / y` may be off by 2.5 ULP, so recomputing `(x / 255 - 0.5) / 0.5` in the shader would not
//! guarantee that).

use anyhow::{anyhow, bail, Result};
use elasticface_core::nn::{preprocess_image, round_to_f16, ImageShape};

use super::{check_len, Dispatch, StorageVariants, ELEMENTWISE_WORKGROUP};
use crate::gpu::{Elem, Gpu, Tensor};

const SOURCE: &str = include_str!("../../../../shaders/preprocess.wgsl");

/// Mirrors `Params` in `shaders/preprocess.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PreprocessParams {
    /// Output elements, `N*3*H*W`.
    pub len: u32,
    /// Image height H.
    pub h: u32,
    /// Image width W.
    pub w: u32,
}

/// The preprocessing pipelines and their byte-to-value table.
pub struct Preprocess {
    /// By the output's storage (alias `Out`): the f32 one compiled when made, the other on first use.
    pipelines: StorageVariants<wgpu::ComputePipeline>,
    /// `lut[b]`: what [`preprocess_image`] makes of byte `b` (256 elements).
    lut: Tensor,
    /// The same rounded to f16 by the core ([`elasticface_core::nn::round_to_f16`]), kept in f32, for the f16
    /// output: its conversion is then exact, where WGSL lets a GPU round an inexact f32 -> f16 either way.
    lut_f16: Tensor,
}

/// The value of every byte, taken from the core: a 1 x 256 image whose pixel `x` is `[x, x, x]`.
fn byte_values() -> Vec<f32> {
    let s = ImageShape { h: 1, w: 256 };
    let hwc: Vec<u8> = (0..=255u8).flat_map(|b| [b; 3]).collect();
    let mut chw = vec![0.0f32; s.len()];
    preprocess_image(&s, &hwc, false, &mut chw).expect("a 1 x 256 image is valid");
    chw.truncate(256); // the red plane; green and blue are equal
    chw
}

impl Preprocess {
    /// Compiles the kernel and uploads its table.
    pub fn new(gpu: &Gpu) -> Self {
        let values = byte_values();
        let lut = gpu.upload("preprocess_image byte values", &[256], &values);
        let mut rounded = values.clone();
        round_to_f16(&mut rounded);
        let lut_f16 = gpu.upload("preprocess_image byte values (f16)", &[256], &rounded);
        let pipelines = StorageVariants::new("preprocess.wgsl", SOURCE, &["Out"]);
        let kernels = Self { pipelines, lut, lut_f16 };
        kernels.pipeline(gpu, Elem::F32).expect("f32 needs no feature");
        kernels
    }

    /// The pipeline writing `out` elements, compiled on first use. Errors where f16 is asked of an adapter
    /// without it.
    fn pipeline(&self, gpu: &Gpu, out: Elem) -> Result<&wgpu::ComputePipeline> {
        self.pipelines.get(gpu, &[out], |m| gpu.pipeline("preprocess_image", m, "preprocess_image"))
    }

    /// Packs bytes four to a `u32`, little-endian (byte `b` in bits `8 * (b % 4)..` of word `b / 4`), the last
    /// word zero-padded: the layout of the `images` tensor.
    pub fn pack(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect()
    }

    /// Words of the `images` tensor for `n` images of shape `s`: `ceil(n * H * W * 3 / 4)`.
    pub fn words(n: usize, s: &ImageShape) -> usize {
        n.saturating_mul(s.len()).div_ceil(4)
    }

    /// `out[i] = preprocess_image(image i, flip[i] != 0)` for the `n` images, bit-identical to the core.
    ///
    /// Shapes: `images` `(words(n, s))` u32, the `n` images' `(H, W, 3)` bytes back to back, packed by
    /// [`pack`](Self::pack); `flip` `(n)` u32; `out` `(n, 3, H, W)` f32 or f16 (then each value rounded to f16:
    /// the core's values rounded by [`elasticface_core::nn::round_to_f16`]). One element-wise dispatch.
    /// Errors: `n = 0`, a zero height or width, more than 2^32 bytes, a tensor of the wrong size (named).
    pub fn forward(
        &self,
        gpu: &Gpu,
        n: usize,
        s: &ImageShape,
        images: &Tensor,
        flip: &Tensor,
        out: &Tensor,
    ) -> Result<Dispatch> {
        const K: &str = "preprocess_image";
        s.validate().map_err(|e| anyhow!("{K}: {e}"))?;
        if n == 0 {
            bail!("{K}: no images (n = 0)");
        }
        if n.checked_mul(s.len()).is_none_or(|bytes| bytes > u32::MAX as usize) {
            bail!("{K}: {n} images of {s:?} hold more than 2^32 bytes; the kernel indexes with u32");
        }
        check_len(K, images, Self::words(n, s))?;
        check_len(K, flip, n)?;
        check_len(K, out, n * s.len())?;
        let params = PreprocessParams { len: (n * s.len()) as u32, h: s.h as u32, w: s.w as u32 };
        let grid = gpu.grid_1d(n * s.len(), ELEMENTWISE_WORKGROUP);
        let pipeline = self.pipeline(gpu, out.elem)?;
        let lut = match out.elem {
            Elem::F32 => &self.lut,
            Elem::F16 => &self.lut_f16,
        };
        gpu.dispatch(K, pipeline, &params, &[lut, images, flip, out], grid)
    }
}
