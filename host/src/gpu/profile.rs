//! GPU time of each dispatch, from timestamp queries.
//!
//! [`Gpu::profile`] records each dispatch into a compute pass of its own whose beginning and end write a timestamp
//! (`TIMESTAMP_QUERY`; no `TIMESTAMP_QUERY_INSIDE_PASSES` needed), all in one encoder and one submission, and
//! returns the seconds between the two stamps of each. The passes make a profiled run a little slower than an
//! unprofiled one (a pass costs more to launch than a dispatch inside a pass), but the time between the stamps is
//! the dispatch's own: use [`Gpu::profile`] to split a step's GPU time by kernel, and the wall clock of unprofiled
//! runs for throughput.

use anyhow::{bail, Context, Result};

use super::kernels::Dispatch;
use super::Gpu;

/// Dispatches per query set: two stamps each, within wgpu's limit of queries per set.
const PER_SET: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

impl Gpu {
    /// Runs `dispatches` in order, one compute pass each, and returns the GPU seconds each took.
    ///
    /// Errors when the adapter has no timestamp queries ([`Capabilities::timestamps`](super::Capabilities)).
    pub fn profile(&self, dispatches: &[&Dispatch]) -> Result<Vec<f64>> {
        if !self.caps.timestamps {
            bail!("{} has no timestamp queries: per-kernel times are not available", self.info.name);
        }
        let n = dispatches.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let sets: Vec<wgpu::QuerySet> = (0..n.div_ceil(PER_SET))
            .map(|i| {
                let count = (2 * (n - i * PER_SET).min(PER_SET)) as u32;
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                })
            })
            .collect();
        let bytes = 16 * n as u64;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        for (i, d) in dispatches.iter().enumerate() {
            let index = (2 * (i % PER_SET)) as u32;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &sets[i / PER_SET],
                    beginning_of_pass_write_index: Some(index),
                    end_of_pass_write_index: Some(index + 1),
                }),
            });
            d.record(&mut pass);
        }
        for (i, set) in sets.iter().enumerate() {
            // Each full set resolves 2 * PER_SET stamps of 8 bytes: offsets are multiples of 32 KiB, aligned.
            let count = (2 * (n - i * PER_SET).min(PER_SET)) as u32;
            enc.resolve_query_set(set, 0..count, &resolve, (16 * i * PER_SET) as u64);
        }
        enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv().context("the GPU dropped the timestamps")?.context("cannot map the timestamps")?;
        let view = staging.slice(..).get_mapped_range().context("cannot read the timestamps")?;
        let stamps: Vec<u64> = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        let tick = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        Ok(stamps.chunks_exact(2).map(|s| s[1].saturating_sub(s[0]) as f64 * tick).collect())
    }
}
