//! Matrices larger than one storage binding: a row-major `(rows, cols)` matrix kept as several tensors, each holding
//! a contiguous range of whole rows and each within the adapter's binding limit ([`Capabilities::max_binding`]).
//!
//! The margin head's class centres are the case in point: iResNet-100 on MS1MV2 has `85,742 x 512` of them (175 MB)
//! while lavapipe binds at most 128 MiB. Kernels that work row by row (normalisation, SGD, the head's per-class
//! passes) are dispatched once per part; callers see one matrix.
//!
//! [`Capabilities::max_binding`]: super::Capabilities::max_binding

use std::ops::Range;

use anyhow::{bail, Result};

use super::{Gpu, Tensor};

/// A row-major `(rows, cols)` matrix of 4-byte elements split by rows into [`Tensor`] parts.
///
/// Part `i` holds rows `offsets[i]..offsets[i + 1]` as a `(rows_i, cols)` tensor. Every part but the last holds a
/// multiple of the `row_align` it was created with, so that kernels working on blocks of rows see the same blocks
/// however the matrix is split.
pub struct SplitTensor {
    /// The parts, first rows first.
    pub parts: Vec<Tensor>,
    /// First row of each part, then `rows`: `parts.len() + 1` entries.
    pub offsets: Vec<usize>,
    /// Rows of the whole matrix.
    pub rows: usize,
    /// Columns (elements per row).
    pub cols: usize,
    /// What it is, e.g. `head.weight`; part `i` is labelled `head.weight[a..b]` with its row range.
    pub label: String,
}

impl SplitTensor {
    /// Elements of the whole matrix.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the matrix has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows part `i` holds.
    pub fn part_rows(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Whether `other` is split at the same rows (so that kernels can pair their parts).
    pub fn same_split(&self, other: &SplitTensor) -> bool {
        self.offsets == other.offsets
    }
}

/// Row boundaries of a split of `rows` rows of `cols` elements into parts of at most `max_bytes` each, every part but
/// the last a multiple of `row_align` rows.
fn split_offsets(label: &str, rows: usize, cols: usize, row_align: usize, max_bytes: u64) -> Result<Vec<usize>> {
    let row_align = row_align.max(1);
    let row_bytes = 4 * cols.max(1) as u64;
    let fit = (max_bytes / row_bytes) as usize;
    let per_part = fit / row_align * row_align;
    if per_part == 0 {
        let block = row_align as u64 * row_bytes;
        bail!(
            "{label}: a block of {row_align} rows of {cols} elements ({block} bytes) exceeds a binding ({max_bytes})"
        );
    }
    let mut offsets: Vec<usize> = (0..rows.max(1)).step_by(per_part).collect();
    offsets.push(rows);
    Ok(offsets)
}

impl Gpu {
    /// A zero `(rows, cols)` matrix split into parts within the binding limit, each but the last a multiple of
    /// `row_align` rows. Errors when not even `row_align` rows fit one binding.
    pub fn zeros_split(&self, label: &str, rows: usize, cols: usize, row_align: usize) -> Result<SplitTensor> {
        let offsets = split_offsets(label, rows, cols, row_align, self.caps.max_binding)?;
        Ok(self.zeros_split_at(label, offsets, cols))
    }

    /// A zero matrix split at the same rows as `like`, with `cols` columns (e.g. the per-class norms of the head,
    /// `cols = 1`, or a momentum buffer, `cols = like.cols`). Errors when a part would exceed the binding limit.
    pub fn zeros_split_like(&self, label: &str, like: &SplitTensor, cols: usize) -> Result<SplitTensor> {
        let t = self.zeros_split_at(label, like.offsets.clone(), cols);
        for part in &t.parts {
            if part.bytes() > self.caps.max_binding {
                bail!(
                    "{}: {} bytes exceed the largest binding ({} bytes)",
                    part.label,
                    part.bytes(),
                    self.caps.max_binding
                );
            }
        }
        Ok(t)
    }

    fn zeros_split_at(&self, label: &str, offsets: Vec<usize>, cols: usize) -> SplitTensor {
        let parts = offsets
            .windows(2)
            .map(|r| self.zeros(&format!("{label}[{}..{}]", r[0], r[1]), &[r[1] - r[0], cols]))
            .collect();
        let rows = *offsets.last().expect("at least one boundary");
        SplitTensor { parts, offsets, rows, cols, label: label.to_string() }
    }

    /// A split `(rows, cols)` matrix holding `data` (row-major), as [`Gpu::zeros_split`] splits it.
    pub fn upload_split<T: bytemuck::Pod>(
        &self,
        label: &str,
        rows: usize,
        cols: usize,
        row_align: usize,
        data: &[T],
    ) -> Result<SplitTensor> {
        let t = self.zeros_split(label, rows, cols, row_align)?;
        self.write_split(&t, data)?;
        Ok(t)
    }

    /// Overwrites a split matrix with `data` (row-major, `rows * cols` elements).
    pub fn write_split<T: bytemuck::Pod>(&self, t: &SplitTensor, data: &[T]) -> Result<()> {
        if data.len() != t.len() {
            bail!("{}: writing {} elements into a matrix of {}", t.label, data.len(), t.len());
        }
        for (i, part) in t.parts.iter().enumerate() {
            let rows = t.part_rows(i);
            self.write(part, &data[rows.start * t.cols..rows.end * t.cols])?;
        }
        Ok(())
    }

    /// Reads a split matrix back as one row-major vector (waits for the GPU).
    pub fn read_split<T: bytemuck::Pod>(&self, t: &SplitTensor) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(t.len());
        for part in &t.parts {
            out.extend(self.read::<T>(part)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::split_offsets;

    #[test]
    fn offsets_respect_the_limit_and_the_alignment() {
        // 300 rows of 16 f32 (64 bytes); 8192 bytes hold 128 rows, a multiple of 64.
        assert_eq!(split_offsets("w", 300, 16, 64, 8192).unwrap(), [0, 128, 256, 300]);
        // 6000 bytes hold 93 rows: 64 with the alignment.
        assert_eq!(split_offsets("w", 300, 16, 64, 6000).unwrap(), [0, 64, 128, 192, 256, 300]);
        assert_eq!(split_offsets("w", 300, 16, 1, 1 << 20).unwrap(), [0, 300]);
        assert_eq!(split_offsets("w", 0, 16, 1, 1 << 20).unwrap(), [0, 0]);
        let e = split_offsets("head.weight", 300, 16, 64, 4000).unwrap_err();
        assert!(e.to_string().starts_with("head.weight: a block of 64 rows"), "{e}");
    }
}
