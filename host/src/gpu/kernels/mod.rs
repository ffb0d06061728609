//! The WGSL kernels, one module per kernel family, each named after the core function it mirrors.
//!
//! Every kernel follows one pattern. A family's struct holds its compiled pipelines (built once per device).
//! Its methods check the tensors against the shape and return a [`Dispatch`]: the pipeline, a bind group built
//! once, and the workgroup count. A training step records its dispatches into one compute pass.
//!
//! Binding convention of every shader: `@group(0) @binding(0)` is a uniform `Params` struct (mirrored by a
//! `#[repr(C)]` Rust struct next to the kernel), and storage buffers follow at bindings 1, 2, ... in the order
//! the WGSL declares them.

pub mod batchnorm;
pub mod conv2d;
pub mod linear;
pub mod margin;
pub mod normalize;
pub mod precision;
pub mod prelu;
pub mod preprocess;
pub mod residual;
pub mod sgd;
pub mod winograd;

#[cfg(test)]
mod backends;
#[cfg(test)]
mod shader_files;

use std::sync::OnceLock;

use anyhow::{bail, Result};
use wgpu::util::DeviceExt;

use super::{Elem, Gpu, Recorded, Tensor};

/// Threads per workgroup of the element-wise kernels (must match `WG` in their shaders).
pub const ELEMENTWISE_WORKGROUP: u32 = 256;

/// One recorded kernel launch: pipeline, bind group and workgroup count, ready to be recorded again and again.
pub struct Dispatch {
    /// What it computes, for profiles and errors.
    pub label: String,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Dispatch {
    /// Records the launch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The workgroup count.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}

impl Gpu {
    /// Builds a [`Dispatch`] of `pipeline` with `params` at binding 0 and `tensors` at bindings 1, 2, ...
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        for t in tensors {
            if t.bytes() > self.caps.max_binding {
                bail!(
                    "{label}: {} is {} bytes, more than one binding may hold ({}); this kernel does not split it",
                    t.label,
                    t.bytes(),
                    self.caps.max_binding
                );
            }
        }
        let max = self.caps.max_workgroups_per_dim;
        if workgroups.iter().any(|&w| w > max) {
            bail!("{label}: {workgroups:?} workgroups exceed the adapter's {max} per dimension");
        }
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, t) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: t.binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(Dispatch { label: label.to_string(), pipeline: pipeline.clone(), bind_group, workgroups })
    }

    /// Records `dispatches` in order into one compute pass of one encoder, submits and waits.
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let enc = self.record(dispatches);
        self.queue.submit([enc.finish()]);
        self.wait()
    }

    /// [`Gpu::run`] followed, in the same submission, by the read-back of `t` (a pass and its result: one
    /// submission, one wait).
    pub fn run_and_read<T: bytemuck::Pod>(&self, dispatches: &[&Dispatch], t: &Tensor) -> Result<Vec<T>> {
        let recorded = self.record_and_read(&[], dispatches, &[t])?;
        self.receive(self.submit(recorded))
    }

    /// [`Gpu::run_and_read`] recorded now and submitted later ([`Gpu::submit`], then [`Gpu::receive`]), with buffer
    /// copies before the compute pass (each [`BufferCopy`] copies `len` elements) and the read-back of `reads`
    /// (concatenated; none when empty): e.g. a training step and its report, recorded while the step before runs.
    pub(crate) fn record_and_read(
        &self,
        copies: &[BufferCopy<'_>],
        dispatches: &[&Dispatch],
        reads: &[&Tensor],
    ) -> Result<Recorded> {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        self.record_copies(&mut enc, copies)?;
        self.record_into(&mut enc, dispatches);
        self.finish_with_read(enc, reads)
    }

    /// Runs `copies` alone and waits.
    pub fn copy(&self, copies: &[BufferCopy<'_>]) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copies") });
        self.record_copies(&mut enc, copies)?;
        self.queue.submit([enc.finish()]);
        self.wait()
    }

    fn record_copies(&self, enc: &mut wgpu::CommandEncoder, copies: &[BufferCopy<'_>]) -> Result<()> {
        for c in copies {
            if c.src_offset + c.len > c.src.len || c.dst_offset + c.len > c.dst.len {
                bail!(
                    "copy of {} elements from {}[{}..] ({} elements) to {}[{}..] ({} elements) is out of bounds",
                    c.len,
                    c.src.label,
                    c.src_offset,
                    c.src.len,
                    c.dst.label,
                    c.dst_offset,
                    c.dst.len
                );
            }
            let from = c.src.offset + 4 * c.src_offset as u64;
            let (to, bytes) = (c.dst.offset + 4 * c.dst_offset as u64, 4 * c.len as u64);
            enc.copy_buffer_to_buffer(&c.src.buffer, from, &c.dst.buffer, to, bytes);
        }
        Ok(())
    }

    /// An encoder holding one compute pass with `dispatches` in order.
    fn record(&self, dispatches: &[&Dispatch]) -> wgpu::CommandEncoder {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        self.record_into(&mut enc, dispatches);
        enc
    }

    fn record_into(&self, enc: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("run"), timestamp_writes: None });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
    }

    /// Workgroups covering `n` threads in groups of `per_group`, folded into two dimensions when one would exceed
    /// the adapter's limit. Shaders recover the linear index as `(gid.y * num_workgroups.x) * WG + gid.x`.
    pub fn grid_1d(&self, n: usize, per_group: u32) -> [u32; 3] {
        let groups = n.div_ceil(per_group as usize).max(1);
        let max = self.caps.max_workgroups_per_dim as usize;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }
}

/// A copy of `len` elements (4 bytes each) of `src` from `src_offset` into `dst` from `dst_offset` (element
/// offsets; multiples of 1: wgpu needs 4-byte alignment, which elements have).
pub struct BufferCopy<'a> {
    /// Source.
    pub src: &'a Tensor,
    /// First source element.
    pub src_offset: usize,
    /// Destination.
    pub dst: &'a Tensor,
    /// First destination element.
    pub dst_offset: usize,
    /// Elements.
    pub len: usize,
}

/// `source` (the shader `file`) with its storage aliases set: each `alias NAME = f32;` line of `aliases` declares
/// the given element type instead, and `enable f16;` goes first where one is f16. The shaders whose tensors may
/// hold mixed precision's f16 activations declare such aliases and convert as they read and write.
/// Errors where a line is missing, or f16 is asked of an adapter without it.
pub fn with_storage(gpu: &Gpu, file: &str, source: &str, aliases: &[(&str, Elem)]) -> Result<String> {
    if aliases.iter().any(|(_, e)| *e == Elem::F16) && !gpu.caps.f16 {
        bail!("{}: {file} on f16 activations needs f16 in shaders, which the adapter lacks", gpu.info.name);
    }
    storage_source(file, source, aliases)
}

/// [`with_storage`] on any adapter: `source` with its storage aliases set. Errors where a line is missing.
fn storage_source(file: &str, source: &str, aliases: &[(&str, Elem)]) -> Result<String> {
    let f16 = aliases.iter().any(|(_, e)| *e == Elem::F16);
    let mut out = if f16 { String::from("enable f16;\n") } else { String::new() };
    let mut body = source.to_string();
    for (name, elem) in aliases {
        let line = format!("alias {name} = f32;");
        if !body.contains(&line) {
            bail!("{file} no longer declares `{line}`");
        }
        body = body.replace(&line, &format!("alias {name} = {elem};"));
    }
    out.push_str(&body);
    Ok(out)
}

/// A shader whose activation operands may be f32 or f16, compiled once per combination of storages on first
/// use: the batch norms, the Winograd transforms and the input pipeline, whose kernels then read and write
/// whatever their tensors hold ([`Tensor::elem`]). `P` is what one compilation builds (its pipelines).
pub struct StorageVariants<P> {
    file: &'static str,
    source: &'static str,
    /// The storage aliases the shader declares (`alias NAME = f32;`), in the order [`Self::get`] takes elements.
    aliases: &'static [&'static str],
    /// By combination: bit `i` of the index set where alias `i` is f16.
    compiled: Vec<OnceLock<P>>,
}

impl<P> StorageVariants<P> {
    /// The shader `file` (its text `source`) with the storage `aliases` it declares; nothing compiled yet.
    pub fn new(file: &'static str, source: &'static str, aliases: &'static [&'static str]) -> Self {
        Self { file, source, aliases, compiled: (0..1 << aliases.len()).map(|_| OnceLock::new()).collect() }
    }

    /// What `build` makes of the module with the aliases declaring `elems` (one per alias, in order): compiled
    /// on the first call for that combination, kept after. Errors as [`with_storage`].
    pub fn get(&self, gpu: &Gpu, elems: &[Elem], build: impl FnOnce(&wgpu::ShaderModule) -> P) -> Result<&P> {
        assert_eq!(elems.len(), self.aliases.len(), "{}: one element type per storage alias", self.file);
        let index = elems.iter().enumerate().map(|(i, e)| usize::from(*e == Elem::F16) << i).sum::<usize>();
        let slot = &self.compiled[index];
        if let Some(p) = slot.get() {
            return Ok(p);
        }
        let aliases: Vec<(&str, Elem)> = self.aliases.iter().copied().zip(elems.iter().copied()).collect();
        let source = with_storage(gpu, self.file, self.source, &aliases)?;
        let names: Vec<String> = aliases.iter().map(|(name, elem)| format!("{name} {elem}")).collect();
        let module = gpu.shader(&format!("{} ({})", self.file, names.join(", ")), &source);
        let built = build(&module);
        Ok(slot.get_or_init(|| built))
    }
}

/// Checks that `t` has exactly `len` elements stored as f32: the storage of a kernel that takes f32 only (an f16
/// tensor of `len` elements, bound by its bytes, would be read past its end).
pub fn check_f32(kernel: &str, t: &Tensor, len: usize) -> Result<()> {
    check_len(kernel, t, len)?;
    t.expect_elem(kernel, Elem::F32)
}

/// Checks that `t` has exactly `len` elements.
pub fn check_len(kernel: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.len != len {
        bail!("{kernel}: {} has {} elements, the shape needs {len}", t.label, t.len);
    }
    Ok(())
}
