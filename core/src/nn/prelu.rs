//! PReLU with one slope per channel, as `torch.nn.PReLU(C)`.
//!
//! Non-finite values are not scanned for: they propagate as IEEE arithmetic makes them (a NaN input is
//! not `> 0`, so it takes the negative branch). No function panics: the shape and every slice length are
//! checked before any element is touched.

use super::batchnorm::{channel_sum, per_channel, per_plane, prelu, prelu_slope_term};
use super::BatchNormShape as ChannelShape;
use crate::error::{check_len, Error};
use crate::parallel::{Executor, Serial};

/// `y = x` where `x > 0`, else `alpha[c] * x`. Shapes: `x`, `y` `(N, C, HW)`; `alpha (C)`.
///
/// Errors: [`Error::Shape`] for a zero size ([`ChannelShape::validate`]), [`Error::Length`] naming `x`,
/// `alpha` or `y`.
pub fn prelu_forward(s: &ChannelShape, x: &[f32], alpha: &[f32], y: &mut [f32]) -> Result<(), Error> {
    prelu_forward_on(&Serial, s, x, alpha, y)
}

/// [`prelu_forward`] on `exec`, a plane at a time: the same bits on any executor.
pub fn prelu_forward_on(
    exec: &dyn Executor,
    s: &ChannelShape,
    x: &[f32],
    alpha: &[f32],
    y: &mut [f32],
) -> Result<(), Error> {
    s.validate()?;
    check_len("x", x, s.len())?;
    check_len("alpha", alpha, s.c)?;
    check_len("y", y, s.len())?;
    per_plane(exec, s, y, |start, c, y_plane| {
        for (yv, &xv) in y_plane.iter_mut().zip(&x[start..start + s.hw]) {
            *yv = prelu(xv, alpha[c]);
        }
    });
    Ok(())
}

/// Backward: `dx = dy` where `x > 0`, else `alpha * dy`; `dalpha[c] = sum over x <= 0 of x * dy`.
///
/// Shapes: `x`, `dy`, `dx` `(N, C, HW)`; `alpha`, `dalpha` `(C)`. Overwrites `dx` and `dalpha` (each channel
/// summed per plane, then over the batch). Errors as [`prelu_forward`]; [`Error::Length`] names the slice.
pub fn prelu_backward(
    s: &ChannelShape,
    x: &[f32],
    alpha: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dalpha: &mut [f32],
) -> Result<(), Error> {
    prelu_backward_on(&Serial, s, x, alpha, dy, dx, dalpha)
}

/// [`prelu_backward`] on `exec`: `dx` a plane at a time, then `dalpha` a channel at a time; the same bits on any
/// executor.
pub fn prelu_backward_on(
    exec: &dyn Executor,
    s: &ChannelShape,
    x: &[f32],
    alpha: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dalpha: &mut [f32],
) -> Result<(), Error> {
    s.validate()?;
    check_len("x", x, s.len())?;
    check_len("alpha", alpha, s.c)?;
    check_len("dy", dy, s.len())?;
    check_len("dx", dx, s.len())?;
    check_len("dalpha", dalpha, s.c)?;
    per_plane(exec, s, dx, |start, c, dx_plane| {
        let plane = start..start + s.hw;
        for ((d, &xv), &g) in dx_plane.iter_mut().zip(&x[plane.clone()]).zip(&dy[plane]) {
            *d = if xv > 0.0 { g } else { alpha[c] * g };
        }
    });
    // Each channel's planes' partial sums (from 0.0, in element order) added in batch order from 0.0.
    per_channel(exec, dalpha, |c| channel_sum(s, c, |i| prelu_slope_term(x[i], dy[i])));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ChannelShape = ChannelShape { n: 2, c: 2, hw: 2 };
    const X: [f32; 8] = [1.0, -2.0, -1.0, 0.0, 3.0, -4.0, 2.0, -0.5];
    const ALPHA: [f32; 2] = [0.25, -1.0];

    #[test]
    fn forward_by_hand() {
        let mut y = [f32::NAN; 8];
        prelu_forward(&S, &X, &ALPHA, &mut y).unwrap();
        assert_eq!(y, [1.0, -0.5, 1.0, 0.0, 3.0, -1.0, 2.0, 0.5]);
    }

    #[test]
    fn backward_by_hand() {
        let dy = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let (mut dx, mut da) = ([f32::NAN; 8], [f32::NAN; 2]);
        prelu_backward(&S, &X, &ALPHA, &dy, &mut dx, &mut da).unwrap();
        assert_eq!(dx, [1.0, 0.5, -3.0, -4.0, 5.0, 1.5, 7.0, -8.0]);
        // Channel 0: x <= 0 at -2 (dy 2) and -4 (dy 6): -4 - 24 = -28.
        // Channel 1: x <= 0 at -1 (dy 3), 0 (dy 4) and -0.5 (dy 8): -3 + 0 - 4 = -7.
        assert_eq!(da, [-28.0, -7.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let (mut y, mut dx, mut da) = ([0.0; 8], [0.0; 8], [0.0; 2]);
        assert_eq!(prelu_forward(&S, &X[1..], &ALPHA, &mut y), len("x", 8, 7));
        assert_eq!(prelu_forward(&S, &X, &ALPHA[1..], &mut y), len("alpha", 2, 1));
        assert_eq!(prelu_forward(&S, &X, &ALPHA, &mut y[1..]), len("y", 8, 7));
        assert_eq!(prelu_backward(&S, &X, &ALPHA, &X[1..], &mut dx, &mut da), len("dy", 8, 7));
        assert_eq!(prelu_backward(&S, &X, &ALPHA, &X, &mut dx[1..], &mut da), len("dx", 8, 7));
        assert_eq!(prelu_backward(&S, &X, &ALPHA, &X, &mut dx, &mut da[1..]), len("dalpha", 2, 1));
        let zero = ChannelShape { n: 2, c: 2, hw: 0 };
        assert!(matches!(prelu_forward(&zero, &[], &ALPHA, &mut []), Err(Error::Shape { .. })));
        assert!(matches!(prelu_backward(&zero, &[], &ALPHA, &[], &mut [], &mut da), Err(Error::Shape { .. })));
    }

    #[test]
    fn any_cut_into_planes_and_channels_gives_the_same_bits() {
        extern crate std;
        use crate::parallel::Pieces;
        let s = ChannelShape { n: 3, c: 5, hw: 7 };
        let values =
            |len: usize, k: f32| (0..len).map(|i| libm::sinf(i as f32 * k) * 1.7 - 0.2).collect::<std::vec::Vec<_>>();
        let (x, dy, alpha) = (values(s.len(), 0.37), values(s.len(), 0.71), values(s.c, 1.3));
        let run = |exec: &dyn Executor| {
            let (mut y, mut dx, mut dalpha) = (std::vec![0.0; s.len()], std::vec![0.0; s.len()], std::vec![0.0; s.c]);
            prelu_forward_on(exec, &s, &x, &alpha, &mut y).unwrap();
            prelu_backward_on(exec, &s, &x, &alpha, &dy, &mut dx, &mut dalpha).unwrap();
            [y, dx, dalpha].map(|v| v.iter().map(|v| v.to_bits()).collect::<std::vec::Vec<_>>())
        };
        let serial = run(&Serial);
        for rows in [1, 2, 4, 100] {
            assert_eq!(run(&Pieces(rows)), serial, "pieces of {rows}");
        }
    }
}
