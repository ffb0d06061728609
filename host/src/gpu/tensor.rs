//! Tensors on the GPU: labelled storage buffers with a shape, and their upload and read-back.

use anyhow::{bail, Context, Result};
use wgpu::util::DeviceExt;

use super::Gpu;

/// A buffer of `f32` or `u32` elements on the GPU, with its shape and a label that names it in errors.
pub struct Tensor {
    /// The storage buffer (`STORAGE | COPY_SRC | COPY_DST`).
    pub buffer: wgpu::Buffer,
    /// Shape, outermost first; `len` is their product.
    pub shape: Vec<usize>,
    /// Number of 4-byte elements.
    pub len: usize,
    /// What it is, e.g. `layer2.0.conv1.weight`.
    pub label: String,
}

impl Tensor {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        4 * self.len as u64
    }

    /// The first `shape.iter().product()` elements of this tensor seen as a tensor of `shape`, on the same buffer
    /// (nothing is copied or allocated). Writes through either are seen by both.
    ///
    /// Used to give one buffer several roles: the first `n` samples of a batch-sized activation, or a scratch
    /// gradient buffer holding a smaller layer's gradient. A dispatch binds the whole buffer; the kernels index
    /// only as far as the shape they are built with, which [`Gpu::dispatch`](super::Gpu::dispatch)'s callers check
    /// against the view's length. Errors when the view is longer than the tensor.
    pub fn view(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        let len = shape.iter().product::<usize>();
        if len > self.len {
            bail!("{label}: a view of {len} elements {shape:?} of {}, which has {}", self.label, self.len);
        }
        Ok(Tensor { buffer: self.buffer.clone(), shape: shape.to_vec(), len, label: label.to_string() })
    }
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// A zero-filled tensor of `shape`.
    pub fn zeros(&self, label: &str, shape: &[usize]) -> Tensor {
        let len = shape.iter().product::<usize>();
        // wgpu rejects empty bindings: an empty tensor still gets one element.
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * len.max(1) as u64,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Tensor { buffer, shape: shape.to_vec(), len, label: label.to_string() }
    }

    /// A tensor of `shape` holding `data` (4-byte elements: `f32`, `u32` or `i32`).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, shape: &[usize], data: &[T]) -> Tensor {
        assert_eq!(std::mem::size_of::<T>(), 4, "tensors hold 4-byte elements");
        let len = shape.iter().product::<usize>();
        assert_eq!(data.len(), len, "{label}: {} elements for shape {shape:?}", data.len());
        if len == 0 {
            return self.zeros(label, shape);
        }
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: USAGE,
        });
        Tensor { buffer, shape: shape.to_vec(), len, label: label.to_string() }
    }

    /// Overwrites a tensor's contents.
    pub fn write<T: bytemuck::Pod>(&self, t: &Tensor, data: &[T]) -> Result<()> {
        if data.len() != t.len || std::mem::size_of::<T>() != 4 {
            bail!("{}: writing {} elements into a tensor of {}", t.label, data.len(), t.len);
        }
        self.queue.write_buffer(&t.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Reads a tensor back (waits for the GPU).
    pub fn read<T: bytemuck::Pod>(&self, t: &Tensor) -> Result<Vec<T>> {
        let enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        self.submit_and_read(enc, t)
    }

    /// Reads several tensors back with one copy each into one staging buffer and one wait, concatenated in order.
    /// Their bytes together must fit one buffer ([`Capabilities::max_buffer`](super::Capabilities::max_buffer)).
    pub fn read_concat<T: bytemuck::Pod>(&self, ts: &[&Tensor]) -> Result<Vec<T>> {
        let enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        self.submit_and_read_all(enc, ts)
    }

    /// Appends a copy of `t` to `enc`, submits it, waits and returns `t`'s contents: whatever `enc` recorded
    /// before runs first, in the same submission.
    pub(crate) fn submit_and_read<T: bytemuck::Pod>(&self, enc: wgpu::CommandEncoder, t: &Tensor) -> Result<Vec<T>> {
        self.submit_and_read_all(enc, &[t])
    }

    fn submit_and_read_all<T: bytemuck::Pod>(&self, mut enc: wgpu::CommandEncoder, ts: &[&Tensor]) -> Result<Vec<T>> {
        assert_eq!(std::mem::size_of::<T>(), 4, "tensors hold 4-byte elements");
        let total: u64 = ts.iter().map(|t| t.bytes()).sum();
        let names = || ts.iter().map(|t| t.label.as_str()).collect::<Vec<_>>().join(", ");
        if total == 0 {
            self.queue.submit([enc.finish()]);
            self.wait()?;
            return Ok(Vec::new());
        }
        if total > self.caps.max_buffer {
            bail!("reading back {}: {total} bytes exceed the largest buffer ({})", names(), self.caps.max_buffer);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut offset = 0;
        for t in ts.iter().filter(|t| t.len > 0) {
            enc.copy_buffer_to_buffer(&t.buffer, 0, &staging, offset, t.bytes());
            offset += t.bytes();
        }
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv().context("the GPU dropped a read-back")?.with_context(|| format!("cannot map {}", names()))?;
        let view = staging.slice(..).get_mapped_range().with_context(|| format!("cannot read {}", names()))?;
        let out = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
