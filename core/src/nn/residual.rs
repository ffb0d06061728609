//! The residual connection `y = a + b` and gradient accumulation.
//!
//! Non-finite values propagate. No function panics: lengths are checked before any element is written.

use crate::error::{check_len, Error};

/// `y = a + b`, element-wise; all three of one length.
///
/// Errors: [`Error::Length`] naming `b` or `y` when it differs from `a`.
pub fn residual_add_forward(a: &[f32], b: &[f32], y: &mut [f32]) -> Result<(), Error> {
    check_len("b", b, a.len())?;
    check_len("y", y, a.len())?;
    for ((yv, &av), &bv) in y.iter_mut().zip(a).zip(b) {
        *yv = av + bv;
    }
    Ok(())
}

/// Backward: both inputs receive `dy`.
///
/// Overwrites `da` and `db`. Errors: [`Error::Length`] naming `da` or `db` when it differs from `dy`.
pub fn residual_add_backward(dy: &[f32], da: &mut [f32], db: &mut [f32]) -> Result<(), Error> {
    check_len("da", da, dy.len())?;
    check_len("db", db, dy.len())?;
    da.copy_from_slice(dy);
    db.copy_from_slice(dy);
    Ok(())
}

/// `dst += src`, element-wise: a tensor used twice receives the sum of both gradients.
///
/// Errors: [`Error::Length`] naming `src` when it differs from `dst`.
pub fn accumulate(dst: &mut [f32], src: &[f32]) -> Result<(), Error> {
    check_len("src", src, dst.len())?;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_backward_and_accumulate() {
        let mut y = [0.0; 3];
        residual_add_forward(&[1.0, 2.0, 3.0], &[0.5, -2.0, 1.0], &mut y).unwrap();
        assert_eq!(y, [1.5, 0.0, 4.0]);
        let (mut da, mut db) = ([f32::NAN; 3], [f32::NAN; 3]);
        residual_add_backward(&[1.0, -1.0, 2.0], &mut da, &mut db).unwrap();
        assert_eq!((da, db), ([1.0, -1.0, 2.0], [1.0, -1.0, 2.0]));
        accumulate(&mut da, &[0.5, 0.5, -2.0]).unwrap();
        assert_eq!(da, [1.5, -0.5, 0.0]);
    }

    #[test]
    fn lengths_are_checked() {
        let len = |what, expected, got| Err(Error::Length { what, expected, got });
        let mut y = [0.0; 3];
        assert_eq!(residual_add_forward(&[1.0; 3], &[1.0; 2], &mut y), len("b", 3, 2));
        assert_eq!(residual_add_forward(&[1.0; 3], &[1.0; 3], &mut y[..2]), len("y", 3, 2));
        let (mut da, mut db) = ([0.0; 3], [0.0; 4]);
        assert_eq!(residual_add_backward(&[1.0; 3], &mut da[..1], &mut db), len("da", 3, 1));
        assert_eq!(residual_add_backward(&[1.0; 3], &mut da, &mut db), len("db", 3, 4));
        assert_eq!(da, [0.0; 3]);
        assert_eq!(accumulate(&mut da, &[1.0; 2]), len("src", 3, 2));
        assert_eq!(da, [0.0; 3]);
    }
}
