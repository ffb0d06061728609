//! Tensors on the GPU: labelled ranges of storage buffers with a shape, their upload and read-back, and tensors
//! packed into shared buffers ([`Gpu::packed`]) so that one dispatch can update many of them at once.

use anyhow::{bail, Context, Result};
use wgpu::util::DeviceExt;

use super::Gpu;

/// A range of `f32` or `u32` elements of a buffer on the GPU, with its shape and a label that names it in errors.
///
/// Most tensors own their buffer from its start (`offset` 0). A tensor of a [`Packed`] group, and any view of it,
/// starts further in. A dispatch binds exactly the tensor's bytes, `offset..offset + bytes` ([`Tensor::binding`]).
pub struct Tensor {
    /// The storage buffer (`STORAGE | COPY_SRC | COPY_DST`).
    pub buffer: wgpu::Buffer,
    /// Where the tensor starts in `buffer`, bytes: a multiple of the adapter's storage offset alignment.
    pub offset: u64,
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

    /// The bytes a dispatch binds: the tensor's range of its buffer (one element for an empty tensor, as wgpu
    /// rejects empty bindings; every allocation reserves it).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }

    /// The first `shape.iter().product()` elements of this tensor seen as a tensor of `shape`, on the same buffer
    /// (nothing is copied or allocated). Writes through either are seen by both.
    ///
    /// Used to give one buffer several roles: the first `n` samples of a batch-sized activation, or a scratch
    /// gradient buffer holding a smaller layer's gradient. A dispatch binds the view's elements only. Errors when
    /// the view is longer than the tensor.
    pub fn view(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        let len = shape.iter().product::<usize>();
        if len > self.len {
            bail!("{label}: a view of {len} elements {shape:?} of {}, which has {}", self.label, self.len);
        }
        let buffer = self.buffer.clone();
        Ok(Tensor { buffer, offset: self.offset, shape: shape.to_vec(), len, label: label.to_string() })
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
        Tensor { buffer, offset: 0, shape: shape.to_vec(), len, label: label.to_string() }
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
        Tensor { buffer, offset: 0, shape: shape.to_vec(), len, label: label.to_string() }
    }

    /// Overwrites a tensor's contents.
    pub fn write<T: bytemuck::Pod>(&self, t: &Tensor, data: &[T]) -> Result<()> {
        if data.len() != t.len || std::mem::size_of::<T>() != 4 {
            bail!("{}: writing {} elements into a tensor of {}", t.label, data.len(), t.len);
        }
        self.queue.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
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
            enc.copy_buffer_to_buffer(&t.buffer, t.offset, &staging, offset, t.bytes());
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

/// Tensors laid out one after another in as few buffers as the binding limit allows ([`Gpu::packed`]).
///
/// Each buffer is also one flat tensor, a *group*: an element-wise kernel (SGD, clipping) dispatched once per group
/// updates every part it holds. The gaps the alignment leaves between parts are zero-filled and no part's binding
/// covers them, so they stay zero unless a group-wide kernel writes them, and an SGD step keeps zero at zero.
pub struct Packed {
    /// Each buffer as one flat tensor `(elements)`, the gaps included, labelled `LABEL [group i]`.
    pub groups: Vec<Tensor>,
    /// The tensors asked for, in order.
    pub parts: Vec<Tensor>,
}

impl Gpu {
    /// Zero-filled tensors of the given labels and shapes, packed into shared buffers.
    ///
    /// Every part starts at a multiple of the adapter's storage offset alignment, so it can be bound alone. A group
    /// holds consecutive parts and at most the largest binding (and buffer) in bytes. Given the same shapes, the
    /// layout is the same: tensors packed alike can be updated group by group together (a parameter, its gradient
    /// and its momentum). Errors when one part alone exceeds a binding.
    pub fn packed(&self, label: &str, parts: &[(String, Vec<usize>)]) -> Result<Packed> {
        let limit = self.caps.max_binding.min(self.caps.max_buffer) / 4;
        let align = (self.caps.storage_offset_alignment.max(4) / 4) as usize;
        // Elements of each group so far, and each part's (group, element offset).
        let mut ends: Vec<usize> = Vec::new();
        let mut places = Vec::with_capacity(parts.len());
        for (name, shape) in parts {
            // Every part reserves at least one element: an empty tensor still binds four bytes.
            let len = shape.iter().product::<usize>().max(1);
            if len as u64 > limit {
                bail!("{name} {shape:?}: {} bytes, more than one storage binding holds ({})", 4 * len, 4 * limit);
            }
            // After the last group's parts, aligned, if it fits there; else at the start of a new group.
            let start = ends.last().map(|end| end.next_multiple_of(align)).filter(|s| (s + len) as u64 <= limit);
            match (start, ends.last_mut()) {
                (Some(start), Some(end)) => *end = start + len,
                _ => ends.push(len),
            }
            places.push((ends.len() - 1, start.unwrap_or(0)));
        }
        let groups: Vec<Tensor> =
            ends.iter().enumerate().map(|(g, &end)| self.zeros(&format!("{label} [group {g}]"), &[end])).collect();
        let parts = parts
            .iter()
            .zip(places)
            .map(|((name, shape), (group, offset))| Tensor {
                buffer: groups[group].buffer.clone(),
                offset: 4 * offset as u64,
                shape: shape.clone(),
                len: shape.iter().product(),
                label: name.clone(),
            })
            .collect();
        Ok(Packed { groups, parts })
    }
}
