//! Face alignment from five landmarks, as insightface aligns faces before its networks see them: the similarity
//! transform (rotation, uniform scale, translation) that best maps the detected landmarks onto five reference
//! points, then the image warped through it with bilinear interpolation, black outside the source.
//!
//! - [`ARCFACE_LANDMARKS`]: the reference points of a 112x112 crop (the eyes, the nose tip, the mouth corners);
//! - [`estimate_similarity`]: the least-squares similarity between two point sets (Umeyama's, without reflection,
//!   as scikit-image's `SimilarityTransform.estimate` computes it), in closed form;
//! - [`warp_affine`]: an RGB image through a similarity, as OpenCV's `warpAffine` with its defaults (bilinear,
//!   constant border 0);
//! - [`align_face`]: both, to the network's input size.
//!
//! Everything is computed in `f64` with no fused multiply-add, so every target gives the same pixels. They are not
//! bit-identical to OpenCV's: its `warpAffine` rounds source coordinates to 1/32 pixel and the bilinear weights to
//! 15 bits, where these are exact; where neighbouring pixels differ by `d` levels, the two can differ by about
//! `d / 64` rounded, so by a level or two at the sharpest edges (estimated from that rounding, not measured
//! against OpenCV).
//!
//! Coordinates are in pixels, `(x, y)` with `x` to the right and `y` down, the centre of pixel `(col, row)` at
//! `(col, row)` (OpenCV's convention).

use crate::error::{check_len, Error};
use crate::nn::ImageShape;

/// insightface's reference landmarks in a 112x112 crop, `(x, y)`: the left eye, the right eye, the nose tip, the
/// left and the right corner of the mouth, left and right as they appear in the image (the arcface template:
/// the 96x112 template of SphereFace moved 8 pixels right).
pub const ARCFACE_LANDMARKS: [[f32; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// A similarity transform of the plane: `x' = a x - b y + tx`, `y' = b x + a y + ty` (a rotation by
/// `atan2(b, a)` and a scale of `hypot(a, b)`, then a translation; never a reflection).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    /// `scale * cos(angle)`.
    pub a: f64,
    /// `scale * sin(angle)`.
    pub b: f64,
    /// Translation along x.
    pub tx: f64,
    /// Translation along y.
    pub ty: f64,
}

impl Similarity {
    /// The identity.
    pub const IDENTITY: Self = Self { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };

    /// The image of point `p`.
    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty]
    }

    /// The scale factor, `hypot(a, b)`.
    pub fn scale(&self) -> f64 {
        libm::hypot(self.a, self.b)
    }

    /// The inverse transform; `None` for a transform of scale 0, or with a part that is not finite, which has none.
    pub fn inverse(&self) -> Option<Self> {
        let n = self.a * self.a + self.b * self.b;
        if !(n > 0.0 && n.is_finite() && self.tx.is_finite() && self.ty.is_finite()) {
            return None;
        }
        let (a, b) = (self.a / n, -self.b / n);
        // p = R^-1 (p' - t): the translation is -(R^-1 t).
        Some(Self { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) })
    }
}

/// The similarity that maps `from` onto `to` with the least sum of squared distances (Umeyama 1991 without
/// reflection; scikit-image's `SimilarityTransform().estimate(from, to)`). With the points centred on their means
/// `(u_i, v_i)` (from) and `(p_i, q_i)` (to), and `n = sum(u_i^2 + v_i^2)`:
/// `a = sum(u_i p_i + v_i q_i) / n`, `b = sum(u_i q_i - v_i p_i) / n`, and the translation maps `from`'s mean onto
/// `to`'s. Sums in `f64`, in point order.
///
/// Errors: `from` and `to` of different lengths ([`Error::Length`]), fewer than two points or `from`'s points all
/// equal ([`Error::Shape`]: no scale or rotation can be told), a coordinate not finite ([`Error::NonFinite`], its
/// index counting `x` and `y` of each point in turn).
pub fn estimate_similarity(from: &[[f32; 2]], to: &[[f32; 2]]) -> Result<Similarity, Error> {
    check_len("to", to, from.len())?;
    if from.len() < 2 {
        return Err(Error::Shape { what: "a similarity needs at least two points" });
    }
    for (what, points) in [("from", from), ("to", to)] {
        if let Some(index) = points.iter().flatten().position(|c| !c.is_finite()) {
            return Err(Error::NonFinite { what, index });
        }
    }
    let count = from.len() as f64;
    let mean = |points: &[[f32; 2]]| {
        let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), p| (sx + f64::from(p[0]), sy + f64::from(p[1])));
        [sx / count, sy / count]
    };
    let (mf, mt) = (mean(from), mean(to));
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (f, t) in from.iter().zip(to) {
        let (u, v) = (f64::from(f[0]) - mf[0], f64::from(f[1]) - mf[1]);
        let (p, q) = (f64::from(t[0]) - mt[0], f64::from(t[1]) - mt[1]);
        dot += u * p + v * q;
        cross += u * q - v * p;
        norm += u * u + v * v;
    }
    if norm <= 0.0 {
        return Err(Error::Shape { what: "the points to map all coincide" });
    }
    let (a, b) = (dot / norm, cross / norm);
    Ok(Similarity { a, b, tx: mt[0] - (a * mf[0] - b * mf[1]), ty: mt[1] - (b * mf[0] + a * mf[1]) })
}

/// Warps `u8 (H, W, 3)` RGB `src` through `m` (source coordinates to destination coordinates) into
/// `u8 (h, w, 3)` `dst`: each destination pixel takes the bilinear interpolation of the four source pixels around
/// `m^-1` of its centre, a pixel outside the source counting as 0, rounded to the nearest level (halves up).
///
/// Errors: `src` or `dst` not of their shape's length ([`Error::Length`]), an empty shape ([`Error::Shape`]), a
/// transform that cannot be inverted ([`Error::Config`]).
pub fn warp_affine(
    src: &[u8],
    src_shape: ImageShape,
    m: &Similarity,
    dst: &mut [u8],
    dst_shape: ImageShape,
) -> Result<(), Error> {
    src_shape.validate()?;
    dst_shape.validate()?;
    check_len("src", src, src_shape.len())?;
    check_len("dst", dst, dst_shape.len())?;
    let inv = m.inverse().ok_or(Error::Config { what: "the transform has no inverse (scale 0 or not finite)" })?;
    let (sw, sh) = (src_shape.w as i64, src_shape.h as i64);
    let pixel = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= sw || y >= sh {
            return [0.0; 3];
        }
        let i = (y as usize * src_shape.w + x as usize) * ImageShape::CHANNELS;
        [f64::from(src[i]), f64::from(src[i + 1]), f64::from(src[i + 2])]
    };
    for (row, line) in dst.chunks_exact_mut(dst_shape.w * ImageShape::CHANNELS).enumerate() {
        for (col, out) in line.chunks_exact_mut(ImageShape::CHANNELS).enumerate() {
            let [sx, sy] = inv.apply([col as f64, row as f64]);
            let (fx0, fy0) = (libm::floor(sx), libm::floor(sy));
            // Far outside (or not finite): black. The bound keeps the casts exact.
            if !(fx0 >= -2.0 && fy0 >= -2.0 && fx0 <= sw as f64 + 1.0 && fy0 <= sh as f64 + 1.0) {
                out.fill(0);
                continue;
            }
            let (x0, y0) = (fx0 as i64, fy0 as i64);
            let (fx, fy) = (sx - fx0, sy - fy0);
            let (p00, p01, p10, p11) = (pixel(x0, y0), pixel(x0 + 1, y0), pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1));
            for c in 0..ImageShape::CHANNELS {
                let top = p00[c] * (1.0 - fx) + p01[c] * fx;
                let bottom = p10[c] * (1.0 - fx) + p11[c] * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                out[c] = libm::floor(v + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(())
}

/// The reference landmarks for a crop of `shape`, placed as insightface's `estimate_norm` places them: for a
/// square crop whose side is a multiple of 128 but not of 112, [`ARCFACE_LANDMARKS`] scaled by `side / 128` and
/// moved `8 side / 128` to the right (the 112x112 points centred in 128x128, as insightface's 128 crops have
/// them); otherwise scaled by `w / 112` along x and `h / 112` along y (insightface's rule for multiples of 112; it
/// takes no other size).
pub fn reference_landmarks(shape: ImageShape) -> [[f32; 2]; 5] {
    let (w, h) = (shape.w as f64, shape.h as f64);
    let (sx, sy, dx) = if shape.w == shape.h && shape.w.is_multiple_of(128) && !shape.w.is_multiple_of(112) {
        (w / 128.0, h / 128.0, 8.0 * w / 128.0)
    } else {
        (w / 112.0, h / 112.0, 0.0)
    };
    ARCFACE_LANDMARKS.map(|[x, y]| [(f64::from(x) * sx + dx) as f32, (f64::from(y) * sy) as f32])
}

/// Aligns a face: the similarity that maps its five `landmarks` (in `src`'s pixels, ordered as
/// [`ARCFACE_LANDMARKS`]) onto [`reference_landmarks`]`(dst_shape)`, and `src` warped through it into `dst`
/// ([`warp_affine`]). Returns the transform.
///
/// Errors: those of [`estimate_similarity`] (landmarks not finite or all at one point) and of [`warp_affine`].
pub fn align_face(
    src: &[u8],
    src_shape: ImageShape,
    landmarks: &[[f32; 2]; 5],
    dst: &mut [u8],
    dst_shape: ImageShape,
) -> Result<Similarity, Error> {
    let m = estimate_similarity(landmarks, &reference_landmarks(dst_shape)).map_err(|e| match e {
        Error::NonFinite { index, .. } => Error::NonFinite { what: "landmarks", index },
        Error::Shape { .. } => Error::Shape { what: "the landmarks all coincide" },
        other => other,
    })?;
    warp_affine(src, src_shape, &m, dst, dst_shape)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ImageShape = ImageShape { h: 5, w: 7 };

    fn ramp(shape: ImageShape) -> [u8; 105] {
        let mut img = [0u8; 105];
        for (i, v) in img.iter_mut().enumerate().take(shape.len()) {
            *v = (i * 37 % 251) as u8 + 1;
        }
        img
    }

    #[test]
    fn an_exact_similarity_is_recovered() {
        let m = Similarity { a: 0.8, b: -0.35, tx: 12.5, ty: -3.25 };
        let from = [[1.0f32, 2.0], [5.0, -1.0], [3.0, 4.0], [-2.0, 0.5], [0.0, 7.0]];
        let to = from.map(|[x, y]| {
            let [u, v] = m.apply([f64::from(x), f64::from(y)]);
            [u as f32, v as f32]
        });
        let got = estimate_similarity(&from, &to).unwrap();
        // `to` was rounded to f32 (relative 6e-8 of coordinates up to 20).
        for (g, w) in [(got.a, m.a), (got.b, m.b), (got.tx, m.tx), (got.ty, m.ty)] {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {m:?}");
        }
        let inv = got.inverse().unwrap();
        let [x, y] = inv.apply(got.apply([3.0, -8.0]));
        assert!((x - 3.0).abs() < 1e-12 && (y + 8.0).abs() < 1e-12);
        assert!((got.scale() - libm::hypot(0.8, 0.35)).abs() < 1e-5);
    }

    #[test]
    fn a_reflection_is_not_a_similarity() {
        // Mirrored points: the best similarity without reflection maps everything onto the mean (a = b = 0).
        let from = [[-1.0f32, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]];
        let to = from.map(|[x, y]| [-x, y]);
        let m = estimate_similarity(&from, &to).unwrap();
        assert_eq!((m.a, m.b), (0.0, 0.0));
        assert_eq!(m.inverse(), None);
    }

    #[test]
    fn estimate_errors() {
        let p = [[0.0f32, 0.0], [1.0, 1.0]];
        assert!(matches!(estimate_similarity(&p, &p[..1]), Err(Error::Length { what: "to", .. })));
        assert!(matches!(estimate_similarity(&p[..1], &p[..1]), Err(Error::Shape { .. })));
        assert!(matches!(estimate_similarity(&[[2.0, 3.0]; 3], &[[0.0, 0.0]; 3]), Err(Error::Shape { .. })));
        let bad = [[0.0f32, 0.0], [1.0, f32::NAN]];
        assert_eq!(estimate_similarity(&p, &bad), Err(Error::NonFinite { what: "to", index: 3 }));
        let mut lm = [[10.0f32, 10.0]; 5];
        let (mut dst, img) = ([0u8; 105], ramp(SHAPE));
        assert_eq!(
            align_face(&img[..SHAPE.len()], SHAPE, &lm, &mut dst[..SHAPE.len()], SHAPE),
            Err(Error::Shape { what: "the landmarks all coincide" })
        );
        lm[2][0] = f32::INFINITY;
        assert_eq!(
            align_face(&img[..SHAPE.len()], SHAPE, &lm, &mut dst[..SHAPE.len()], SHAPE),
            Err(Error::NonFinite { what: "landmarks", index: 4 })
        );
    }

    #[test]
    fn the_identity_and_whole_pixel_moves_copy_pixels() {
        let img = ramp(SHAPE);
        let src = &img[..SHAPE.len()];
        let mut dst = [0u8; 105];
        warp_affine(src, SHAPE, &Similarity::IDENTITY, &mut dst[..SHAPE.len()], SHAPE).unwrap();
        assert_eq!(&dst[..SHAPE.len()], src);
        // Two pixels right and one up: destination (c, r) shows source (c - 2, r + 1), black where that is outside.
        let shift = Similarity { tx: 2.0, ty: -1.0, ..Similarity::IDENTITY };
        warp_affine(src, SHAPE, &shift, &mut dst[..SHAPE.len()], SHAPE).unwrap();
        for r in 0..SHAPE.h {
            for c in 0..SHAPE.w {
                let (sc, sr) = (c as i64 - 2, r as i64 + 1);
                let inside = sc >= 0 && (sr as usize) < SHAPE.h;
                for k in 0..3 {
                    let want = if inside { src[(sr as usize * SHAPE.w + sc as usize) * 3 + k] } else { 0 };
                    assert_eq!(dst[(r * SHAPE.w + c) * 3 + k], want, "({c}, {r})");
                }
            }
        }
        // A quarter turn, moved back into view: source pixel (c, r) lands at (h - 1 - r, c).
        let turn = Similarity { a: 0.0, b: 1.0, tx: (SHAPE.h - 1) as f64, ty: 0.0 };
        let turned = ImageShape { h: SHAPE.w, w: SHAPE.h };
        warp_affine(src, SHAPE, &turn, &mut dst[..turned.len()], turned).unwrap();
        for r in 0..SHAPE.h {
            for c in 0..SHAPE.w {
                let (x, y) = (SHAPE.h - 1 - r, c);
                assert_eq!(dst[(y * turned.w + x) * 3], src[(r * SHAPE.w + c) * 3]);
            }
        }
    }

    #[test]
    fn half_pixels_interpolate_and_the_border_is_black() {
        // One row of two pixels, 10 and 21; moved half a pixel left: (10 + 21) / 2 = 15.5 -> 16, then (21 + 0) / 2.
        let shape = ImageShape { h: 1, w: 2 };
        let src = [10, 10, 10, 21, 21, 21];
        let mut dst = [0u8; 6];
        let m = Similarity { tx: -0.5, ..Similarity::IDENTITY };
        warp_affine(&src, shape, &m, &mut dst, shape).unwrap();
        assert_eq!(dst, [16, 16, 16, 11, 11, 11]);
        // Scaled far down: everything but the first pixel samples outside.
        let far = Similarity { a: 1e-9, b: 0.0, tx: 0.0, ty: 0.0 };
        warp_affine(&src, shape, &far, &mut dst, shape).unwrap();
        assert_eq!(dst, [10, 10, 10, 0, 0, 0]);
        let none = Similarity { a: 0.0, b: 0.0, tx: 1.0, ty: 1.0 };
        assert!(matches!(warp_affine(&src, shape, &none, &mut dst, shape), Err(Error::Config { .. })));
        let lost = Similarity { a: 1.0, b: 0.0, tx: f64::NAN, ty: 0.0 };
        assert!(matches!(warp_affine(&src, shape, &lost, &mut dst, shape), Err(Error::Config { .. })));
        assert!(matches!(warp_affine(&src[..5], shape, &m, &mut dst, shape), Err(Error::Length { what: "src", .. })));
        assert!(matches!(warp_affine(&src, shape, &m, &mut dst[..3], shape), Err(Error::Length { what: "dst", .. })));
    }

    #[test]
    fn reference_landmarks_scale_with_the_crop() {
        assert_eq!(reference_landmarks(ImageShape { h: 112, w: 112 }), ARCFACE_LANDMARKS);
        let half = reference_landmarks(ImageShape { h: 56, w: 112 });
        assert_eq!(half[0], [38.2946, (51.6963f64 / 2.0) as f32]);
        // insightface's 128x128 crops: the 112x112 points moved 8 pixels right (its estimate_norm); 256 likewise
        // at twice the size; 224 (a multiple of 112) and 896 (of both) scale.
        let square = |side| reference_landmarks(ImageShape { h: side, w: side });
        assert_eq!(square(128)[0], [(38.2946f64 + 8.0) as f32, 51.6963]);
        assert_eq!(square(256)[4], [((70.7299f64 + 8.0) * 2.0) as f32, (92.2041f64 * 2.0) as f32]);
        assert_eq!(square(224)[0], [(38.2946f64 * 2.0) as f32, (51.6963f64 * 2.0) as f32]);
        assert_eq!(square(896)[0], [(38.2946f64 * 8.0) as f32, (51.6963f64 * 8.0) as f32]);
    }
}
