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
        if t.len == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: t.bytes(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        enc.copy_buffer_to_buffer(&t.buffer, 0, &staging, 0, t.bytes());
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv().context("the GPU dropped a read-back")?.with_context(|| format!("cannot map {}", t.label))?;
        let view = staging.slice(..).get_mapped_range().with_context(|| format!("cannot read {}", t.label))?;
        let out = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
