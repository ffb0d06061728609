//! Tensors on the GPU: labelled ranges of storage buffers with a shape, their upload and read-back, and tensors
//! packed into shared buffers ([`Gpu::packed`]) so that one dispatch can update many of them at once.

use anyhow::{bail, Context, Result};
use wgpu::util::DeviceExt;

use super::Gpu;

/// A range of elements of a buffer on the GPU (4-byte `f32`, `u32` or `i32`, or `f16`: see [`Elem`]), with its
/// shape and a label that names it in errors.
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
    /// Number of elements.
    pub len: usize,
    /// What an element is.
    pub elem: Elem,
    /// What it is, e.g. `layer2.0.conv1.weight`.
    pub label: String,
}

/// What a tensor's elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// 4 bytes: `f32` (or the bits of a `u32` or `i32`).
    F32,
    /// 2 bytes: IEEE half precision, `f16` in WGSL (needs
    /// [`Capabilities::f16`](super::Capabilities)): mixed precision's activations.
    F16,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
        }
    }

    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wgsl())
    }
}

/// Bytes an allocation of `len` elements of `elem` reserves: at least one 4-byte word (wgpu rejects empty
/// bindings), and a whole number of them (storage bindings are sized in words).
fn allocation_bytes(len: usize, elem: Elem) -> u64 {
    (elem.size() * len as u64).max(4).next_multiple_of(4)
}

impl Tensor {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.elem.size() * self.len as u64
    }

    /// The bytes a dispatch binds: the tensor's range of its buffer, rounded up to whole 4-byte words (one word
    /// for an empty tensor, as wgpu rejects empty bindings; every allocation reserves it).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(allocation_bytes(self.len, self.elem)),
        })
    }

    /// Errors unless the elements are `elem`, naming the tensor and `kernel`.
    pub fn expect_elem(&self, kernel: &str, elem: Elem) -> Result<()> {
        if self.elem != elem {
            bail!("{kernel}: {} holds {} elements, the kernel takes {elem}", self.label, self.elem);
        }
        Ok(())
    }

    /// The first `shape.iter().product()` elements of this tensor seen as a tensor of `shape`, on the same buffer
    /// (nothing is copied or allocated). Writes through either are seen by both.
    ///
    /// Used to give one buffer several roles: the first `n` samples of a batch-sized activation, or a scratch
    /// gradient buffer holding a smaller layer's gradient. A dispatch binds the view's elements only. Errors when
    /// the view is longer than the tensor.
    pub fn view(&self, label: &str, shape: &[usize]) -> Result<Tensor> {
        self.view_as(label, shape, self.elem)
    }

    /// This part of a packed group (`group`, laid out by [`Gpu::packed`]) seen in `copy`, a tensor of as many
    /// elements as the group holding the same values in another storage (e.g. f16): the same element offset, shape,
    /// length and label, `copy`'s buffer and element type. Errors unless this part lies in `group` and `copy` is as
    /// long.
    pub fn same_part_of(&self, group: &Tensor, copy: &Tensor) -> Result<Tensor> {
        if self.buffer != group.buffer || self.offset < group.offset || copy.len != group.len {
            bail!("{}: not a part of {} (or {} is not a copy of it)", self.label, group.label, copy.label);
        }
        let first = ((self.offset - group.offset) / self.elem.size()) as usize;
        if first + self.len > group.len {
            bail!("{}: elements {first}.. lie beyond {}", self.label, group.label);
        }
        let offset = copy.offset + first as u64 * copy.elem.size();
        let (shape, label) = (self.shape.clone(), self.label.clone());
        Ok(Tensor { buffer: copy.buffer.clone(), offset, shape, len: self.len, elem: copy.elem, label })
    }

    /// [`Self::view`] with elements of `elem`: the first bytes of this tensor, as many as `shape` of `elem`
    /// take (e.g. f16 values in a buffer of f32 gradients). Errors when they are more than the tensor's bytes.
    pub fn view_as(&self, label: &str, shape: &[usize], elem: Elem) -> Result<Tensor> {
        let len = shape.iter().product::<usize>();
        if elem.size() * len as u64 > self.bytes() {
            bail!(
                "{label}: a view of {len} {elem} elements {shape:?} of {}, which has {} {}",
                self.label,
                self.len,
                self.elem
            );
        }
        let buffer = self.buffer.clone();
        Ok(Tensor { buffer, offset: self.offset, shape: shape.to_vec(), len, elem, label: label.to_string() })
    }
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// A zero-filled tensor of `shape` (4-byte elements).
    pub fn zeros(&self, label: &str, shape: &[usize]) -> Tensor {
        self.zeros_as(label, shape, Elem::F32)
    }

    /// A zero-filled tensor of `shape` with elements of `elem`.
    pub fn zeros_as(&self, label: &str, shape: &[usize], elem: Elem) -> Tensor {
        let len = shape.iter().product::<usize>();
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: allocation_bytes(len, elem),
            usage: USAGE,
            mapped_at_creation: false,
        });
        Tensor { buffer, offset: 0, shape: shape.to_vec(), len, elem, label: label.to_string() }
    }

    /// A tensor of `shape` holding `data` rounded to f16 (to nearest, ties to even: as
    /// [`elasticface_core::nn::round_to_f16`]).
    pub fn upload_f16(&self, label: &str, shape: &[usize], data: &[f32]) -> Tensor {
        let t = self.zeros_as(label, shape, Elem::F16);
        self.write_f32_as(&t, data).expect("the tensor was made for the data");
        t
    }

    /// Overwrites a tensor's contents with `data`, stored as its elements are: f32 as they are, f16 rounded to
    /// nearest (ties to even). Writes go in whole 4-byte words: an f16 tensor of odd length is refused unless it
    /// ends its buffer (then the half word after it is padding, zeroed), so that no neighbour is overwritten.
    pub fn write_f32_as(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        match t.elem {
            Elem::F32 => self.write(t, data),
            Elem::F16 => {
                if data.len() != t.len {
                    bail!("{}: writing {} elements into a tensor of {}", t.label, data.len(), t.len);
                }
                let end = t.offset + allocation_bytes(t.len, t.elem);
                if t.len % 2 == 1 && end != t.buffer.size() {
                    bail!("{}: an f16 view of odd length ({}) cannot be written in whole words", t.label, t.len);
                }
                let mut bytes: Vec<u8> = data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
                bytes.resize(allocation_bytes(t.len, t.elem) as usize, 0);
                self.queue.write_buffer(&t.buffer, t.offset, &bytes);
                Ok(())
            }
        }
    }

    /// Reads a tensor of f32 or f16 elements back as f32 (f16 exactly; waits for the GPU).
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        match t.elem {
            Elem::F32 => self.read(t),
            Elem::F16 => {
                let words = Tensor {
                    buffer: t.buffer.clone(),
                    offset: t.offset,
                    shape: vec![t.len.div_ceil(2)],
                    len: t.len.div_ceil(2),
                    elem: Elem::F32,
                    label: t.label.clone(),
                };
                let words: Vec<u32> = self.read(&words)?;
                let halves = words.iter().flat_map(|w| [*w as u16, (*w >> 16) as u16]);
                Ok(halves.take(t.len).map(|h| half::f16::from_bits(h).to_f32()).collect())
            }
        }
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
        Tensor { buffer, offset: 0, shape: shape.to_vec(), len, elem: Elem::F32, label: label.to_string() }
    }

    /// Overwrites a tensor's contents (4-byte elements).
    pub fn write<T: bytemuck::Pod>(&self, t: &Tensor, data: &[T]) -> Result<()> {
        if data.len() != t.len || std::mem::size_of::<T>() != 4 || t.elem != Elem::F32 {
            bail!("{}: writing {} elements into a tensor of {}", t.label, data.len(), t.len);
        }
        self.queue.write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Overwrites a tensor of 4-byte elements with `bytes`, four to an element as they lie in memory: element `i`
    /// holds bytes `4i .. 4i + 3`, the first in its lowest 8 bits (WGSL reads storage little-endian), and the last
    /// element is zero-padded; `t` has `ceil(bytes.len() / 4)` elements. The layout of
    /// [`Preprocess::pack`](super::kernels::preprocess::Preprocess::pack), without packing: the bytes go to the
    /// queue as they are (how the trainer uploads its images; docs/speed.md has the time it saves).
    pub fn write_bytes(&self, t: &Tensor, bytes: &[u8]) -> Result<()> {
        if t.elem != Elem::F32 || bytes.len().div_ceil(4) != t.len {
            bail!("{}: writing {} bytes into a tensor of {} 4-byte elements", t.label, bytes.len(), t.len);
        }
        let whole = bytes.len() - bytes.len() % 4;
        if whole > 0 {
            self.queue.write_buffer(&t.buffer, t.offset, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut last = [0u8; 4];
            last[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&t.buffer, t.offset + whole as u64, &last);
        }
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

    fn submit_and_read_all<T: bytemuck::Pod>(&self, enc: wgpu::CommandEncoder, ts: &[&Tensor]) -> Result<Vec<T>> {
        let recorded = self.finish_with_read(enc, ts)?;
        let submitted = self.submit(recorded);
        self.receive(submitted)
    }

    /// Appends to `enc` a copy of each of `ts` into one staging buffer and finishes it, without submitting:
    /// commands to submit later ([`Gpu::submit`]), e.g. a training step recorded while the one before it runs.
    pub(crate) fn finish_with_read(&self, mut enc: wgpu::CommandEncoder, ts: &[&Tensor]) -> Result<Recorded> {
        if let Some(t) = ts.iter().find(|t| t.elem != Elem::F32) {
            bail!("{}: holds {} elements, read as 4-byte ones (`Gpu::read_f32` reads f16)", t.label, t.elem);
        }
        let total: u64 = ts.iter().map(|t| t.bytes()).sum();
        let names = ts.iter().map(|t| t.label.as_str()).collect::<Vec<_>>().join(", ");
        if total == 0 {
            return Ok(Recorded { commands: enc.finish(), read: None });
        }
        if total > self.caps.max_buffer {
            bail!("reading back {names}: {total} bytes exceed the largest buffer ({})", self.caps.max_buffer);
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
        Ok(Recorded { commands: enc.finish(), read: Some(ReadBack { staging, names }) })
    }

    /// Submits commands recorded before, and asks for their read-back; [`Gpu::receive`] waits for it.
    pub(crate) fn submit(&self, recorded: Recorded) -> Submitted {
        self.queue.submit([recorded.commands]);
        let read = recorded.read.map(|read| {
            let (tx, rx) = std::sync::mpsc::channel();
            read.staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            (read, rx)
        });
        Submitted { read }
    }

    /// Waits for submitted commands and returns what they read back (nothing where they read nothing back), as
    /// 4-byte elements.
    pub(crate) fn receive<T: bytemuck::Pod>(&self, submitted: Submitted) -> Result<Vec<T>> {
        assert_eq!(std::mem::size_of::<T>(), 4, "read as 4-byte elements");
        self.wait()?;
        let Some((read, rx)) = submitted.read else {
            return Ok(Vec::new());
        };
        let names = &read.names;
        rx.recv().context("the GPU dropped a read-back")?.with_context(|| format!("cannot map {names}"))?;
        let view = read.staging.slice(..).get_mapped_range().with_context(|| format!("cannot read {names}"))?;
        let out = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        read.staging.unmap();
        Ok(out)
    }
}

/// Finished commands, not yet submitted, that end with a read-back ([`Gpu::finish_with_read`]).
pub struct Recorded {
    commands: wgpu::CommandBuffer,
    read: Option<ReadBack>,
}

/// Submitted commands whose read-back is on its way ([`Gpu::submit`]).
pub struct Submitted {
    read: Option<(ReadBack, std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>)>,
}

/// The staging buffer of a read-back and what it holds, for errors.
struct ReadBack {
    staging: wgpu::Buffer,
    names: String,
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
    /// Every part starts at a multiple of twice the adapter's storage offset alignment, so it can be bound alone,
    /// and so can the same elements of a copy of its group in f16 ([`Tensor::same_part_of`]: half the bytes, offsets
    /// still multiples of the alignment; mixed precision's copy of the weights). A group holds consecutive parts and
    /// at most the largest binding (and buffer) in bytes. Given the same shapes, the layout is the same: tensors
    /// packed alike can be updated group by group together (a parameter, its gradient and its momentum). Errors when
    /// one part alone exceeds a binding.
    pub fn packed(&self, label: &str, parts: &[(String, Vec<usize>)]) -> Result<Packed> {
        let limit = self.caps.max_binding.min(self.caps.max_buffer) / 4;
        let align = (2 * self.caps.storage_offset_alignment.max(4) / 4) as usize;
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
                elem: Elem::F32,
                label: name.clone(),
            })
            .collect();
        Ok(Packed { groups, parts })
    }
}
