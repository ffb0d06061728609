//! Who runs the independent parts of a layer: the calling thread ([`Serial`]) or the host's threads.
//!
//! The core has no threads of its own (it runs on bare metal too); a host lends them through an [`Executor`]. The
//! layers that take one ([`nn::conv2d_forward_on`](crate::nn::conv2d_forward_on) and its two backward passes, the
//! batch norms' and PReLUs' `_on` forms, and through them [`model::forward`](crate::model::forward) and the
//! [`Trainer`](crate::model::Trainer)) cut their output into pieces of whole rows (an output plane, a filter, a
//! channel's statistic) and compute every row with the same code and the same order of sums wherever it lands. So
//! the results are the same bits on any executor and any number of threads: determinism does not depend on the
//! machine.

/// Runs a function over the pieces of an output, possibly several at once.
///
/// The output is a slice of `rows` rows of `row_len` elements each. An implementation cuts it into pieces of
/// whole, consecutive rows, each piece once, and calls `f(first_row, piece)` on every one (`first_row` the index of
/// the piece's first row), in any order and on any thread, returning when all are done. Any such cut is correct:
/// the callers compute each row alone. [`Serial`] makes one piece of everything.
pub trait Executor: Sync {
    /// Calls `f` over pieces of whole rows of `out`, as the trait describes. `row_len` is at least 1 and divides
    /// `out.len()`.
    fn for_each_rows(&self, out: &mut [f32], row_len: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync));
}

/// Runs everything on the calling thread, in one piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Executor for Serial {
    fn for_each_rows(&self, out: &mut [f32], _row_len: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        f(0, out);
    }
}

#[cfg(test)]
extern crate std;

/// Cuts an output into pieces of `.0` rows and runs them last first, as threads might finish: for tests of the
/// layers' independence from the executor.
#[cfg(test)]
pub(crate) struct Pieces(pub usize);

#[cfg(test)]
impl Executor for Pieces {
    fn for_each_rows(&self, out: &mut [f32], row_len: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let pieces: std::vec::Vec<_> = out.chunks_mut(self.0 * row_len).enumerate().collect();
        for (i, piece) in pieces.into_iter().rev() {
            f(i * self.0, piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_calls_once_with_everything() {
        let mut out = [0.0f32; 6];
        Serial.for_each_rows(&mut out, 2, &|first, piece| {
            assert_eq!(first, 0);
            piece.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        });
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
