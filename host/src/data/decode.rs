//! Encoded images (JPEG, PNG) to `u8 (H, W, 3)` RGB bytes, and the encoders tests and `elasticface synth` use.
//!
//! JPEG is decoded by `zune-jpeg` in strict mode, PNG by the `image` crate. The `image` crate runs `zune-jpeg`
//! leniently: a truncated or garbled JPEG then decodes to an image padded with grey, without an error. Strict
//! mode fails on those, as PIL/libjpeg do ("image file is truncated", "broken data stream"), so a damaged file
//! is reported instead of trained on.
//!
//! The format is told by the bytes' own signature, not by a file name, so a PNG inside a RecordIO file decodes
//! as well as a JPEG. Every image becomes 8-bit RGB as PIL's `convert("RGB")` makes it: grey is replicated to
//! three channels, an alpha channel is dropped (not blended), 16-bit samples are scaled to 8 bits. EXIF
//! orientation is not applied, as PIL's `Image.open` does not apply it; [`exif_orientation`] reads it and
//! [`orient_rgb`] turns the pixels as it says, for `align --exif apply`.
//!
//! JPEG pixels are not bit-identical to libjpeg's (PIL, OpenCV): IDCT, chroma upsampling and colour conversion
//! round differently. On insightface-style 112x112 4:2:0 JPEGs about a quarter of the values differ, by at most
//! 4 levels (mean absolute difference 0.35); PNG is lossless and identical.
//!
//! The size is checked from the header, before any pixel is decoded: training needs images of exactly the
//! configured size, and [`decode_rgb`] never resizes. Evaluation and embedding take images of any size and bring
//! them to the network's input size as insightface's evaluation does ([`decode_rgb_resized`]).

use std::io::Cursor;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::nn::ImageShape;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// The encodings [`decode_rgb`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JPEG (JFIF, Exif or raw): starts with `FF D8 FF`.
    Jpeg,
    /// PNG: starts with `89 50 4E 47 0D 0A 1A 0A`.
    Png,
}

impl Encoding {
    /// The encoding of `bytes` from its signature, or `None` when it is neither JPEG nor PNG.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else {
            None
        }
    }
}

/// Decodes a JPEG or PNG image of exactly `expected` size to `u8 (H, W, 3)` RGB.
///
/// Errors (never panics): an unknown signature (the first bytes are named), a corrupt or truncated stream, or a
/// size other than `expected` (both sizes are named). The caller adds which file and record the bytes came from.
pub fn decode_rgb(bytes: &[u8], expected: ImageShape) -> Result<Vec<u8>> {
    Ok(decode_checked(bytes, Some(expected))?.0)
}

/// Decodes a JPEG or PNG image of any size to `u8 (H, W, 3)` RGB and returns it with its size.
pub fn decode_rgb_any(bytes: &[u8]) -> Result<(Vec<u8>, ImageShape)> {
    decode_checked(bytes, None)
}

/// Decodes a JPEG or PNG image and brings it to `target`, as insightface's evaluation prepares verification
/// images: an image of another size is resized so that its shorter side matches the target (a triangle filter
/// whose support grows with the reduction, close to OpenCV's area interpolation when shrinking), then cropped
/// to the target around its centre when the aspect ratios differ.
///
/// Returns the pixels and, when the image was resized, its original size (the caller warns: resizing aligned
/// faces changes what the network sees).
pub fn decode_rgb_resized(bytes: &[u8], target: ImageShape) -> Result<(Vec<u8>, Option<ImageShape>)> {
    let (rgb, found) = decode_rgb_any(bytes)?;
    if found == target {
        return Ok((rgb, None));
    }
    Ok((resize_rgb(rgb, found, target)?, Some(found)))
}

/// The EXIF orientation of a JPEG or PNG: how a viewer turns the stored pixels to show the photo upright
/// (`NoTransforms` where the file has no orientation tag or an unreadable one). Reads the headers only.
pub fn exif_orientation(bytes: &[u8]) -> Result<Orientation> {
    let format = match Encoding::sniff(bytes) {
        Some(Encoding::Jpeg) => ImageFormat::Jpeg,
        Some(Encoding::Png) => ImageFormat::Png,
        None => bail!("not a JPEG or PNG image"),
    };
    let mut decoder =
        ImageReader::with_format(Cursor::new(bytes), format).into_decoder().context("corrupt image header")?;
    decoder.orientation().context("corrupt EXIF metadata")
}

/// `u8 (H, W, 3)` RGB of size `shape` turned as `orientation` says (the photo as a viewer shows it), with its
/// size (height and width swapped by the quarter turns).
pub fn orient_rgb(rgb: Vec<u8>, shape: ImageShape, orientation: Orientation) -> Result<(Vec<u8>, ImageShape)> {
    let (w, h) = dims_u32(&rgb, shape)?;
    let mut image =
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, rgb).context("RGB buffer of the wrong size")?);
    image.apply_orientation(orientation);
    let turned = ImageShape { h: image.height() as usize, w: image.width() as usize };
    Ok((image.into_rgb8().into_raw(), turned))
}

/// Decodes `count` encoded images into one `u8 (N, H, W, 3)` buffer of size `target` ([`decode_rgb_resized`]), on
/// all cores. `source(i)` returns the bytes of image `i` (and names it in its errors); a decoding error is given
/// `describe(i)` as context. Returns the pixels and, per image, its original size when it was resized. The first
/// failing image (in index order) is the error.
pub fn decode_many<'a, S, D>(
    count: usize,
    target: ImageShape,
    source: S,
    describe: D,
) -> Result<(Vec<u8>, Vec<Option<ImageShape>>)>
where
    S: Fn(usize) -> Result<std::borrow::Cow<'a, [u8]>> + Sync,
    D: Fn(usize) -> String + Sync,
{
    let (pixels, each) = decode_each(count, target, source, describe)?;
    Ok((pixels, each.into_iter().collect::<Result<_>>()?))
}

/// What [`decode_each`] says of one image: its original size when it was resized, or why it could not be read.
pub type Decoded = Result<Option<ImageShape>>;

/// [`decode_many`], with each image's result ([`Decoded`]); an image that could not be read has zeros for pixels.
pub fn decode_each<'a, S, D>(
    count: usize,
    target: ImageShape,
    source: S,
    describe: D,
) -> Result<(Vec<u8>, Vec<Decoded>)>
where
    S: Fn(usize) -> Result<std::borrow::Cow<'a, [u8]>> + Sync,
    D: Fn(usize) -> String + Sync,
{
    let mut pixels = vec![0u8; count * target.len()];
    let each = fill_parallel(&mut pixels, target.len(), |i, out| {
        Ok(source(i).and_then(|bytes| decode_rgb_resized(&bytes, target).with_context(|| describe(i))).map(
            |(rgb, original)| {
                out.copy_from_slice(&rgb);
                original
            },
        ))
    })?;
    Ok((pixels, each))
}

/// Fills the records of `per` elements (bytes of an image, say) that make up `out` on all cores, record `i` by
/// `fill(i, record)`, and returns what each returned, in record order. The first failing record (in index order) is
/// the error.
pub fn fill_parallel<E, T, F>(out: &mut [E], per: usize, fill: F) -> Result<Vec<T>>
where
    E: Send,
    T: Send,
    F: Fn(usize, &mut [E]) -> Result<T> + Sync,
{
    ensure!(per > 0 && out.len().is_multiple_of(per), "{} elements are no whole number of records of {per}", out.len());
    let count = out.len() / per;
    if count == 0 {
        return Ok(Vec::new());
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count);
    let chunk = count.div_ceil(workers);
    let parts: Vec<Result<Vec<T>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = out
            .chunks_mut(chunk * per)
            .enumerate()
            .map(|(w, dst)| {
                let fill = &fill;
                scope.spawn(move || {
                    dst.chunks_exact_mut(per).enumerate().map(|(j, record)| fill(w * chunk + j, record)).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a worker thread panicked")))).collect()
    });
    let mut all = Vec::with_capacity(count);
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// The most pixels an image is scaled to before its centre crop: 64 M (192 MB), far above any face photo's scaling
/// (a 112x112 crop of a 4:1 image scales it to 448x112); a strip of 16384x1 pixels would scale to 1.8 M x 112.
const MAX_SCALED_PIXELS: u64 = 64 << 20;

/// Resizes `u8 (H, W, 3)` RGB of size `from` to `to`: shorter side first, then a centre crop. Errors when the
/// scaled image would exceed 64 M pixels (an image too elongated to be a face).
pub fn resize_rgb(rgb: Vec<u8>, from: ImageShape, to: ImageShape) -> Result<Vec<u8>> {
    use image::imageops::{self, FilterType};
    let (fw, fh) = dims_u32(&rgb, from)?;
    let (tw, th) = (u32::try_from(to.w).context("image too wide")?, u32::try_from(to.h).context("image too high")?);
    let img = image::RgbImage::from_raw(fw, fh, rgb).context("RGB buffer of the wrong size")?;
    // Scale so that both sides cover the target, keeping the aspect ratio, then crop the middle.
    let scale = f64::max(f64::from(tw) / f64::from(fw), f64::from(th) / f64::from(fh));
    let (sw, sh) =
        ((f64::from(fw) * scale).round().max(f64::from(tw)), (f64::from(fh) * scale).round().max(f64::from(th)));
    anyhow::ensure!(
        sw * sh <= MAX_SCALED_PIXELS as f64,
        "a {fw}x{fh} image scaled to cover {tw}x{th} would be {sw}x{sh} pixels: too elongated to resize"
    );
    let (sw, sh) = (sw as u32, sh as u32);
    let scaled = imageops::resize(&img, sw, sh, FilterType::Triangle);
    let cropped = imageops::crop_imm(&scaled, (sw - tw) / 2, (sh - th) / 2, tw, th).to_image();
    Ok(cropped.into_raw())
}

/// Decodes by signature; checks the size against `expected` (before decoding pixels) when given.
fn decode_checked(bytes: &[u8], expected: Option<ImageShape>) -> Result<(Vec<u8>, ImageShape)> {
    let (rgb, shape) = match Encoding::sniff(bytes) {
        Some(Encoding::Jpeg) => decode_jpeg(bytes, expected)?,
        Some(Encoding::Png) => decode_png(bytes, expected)?,
        None => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            bail!("not a JPEG or PNG image ({} bytes, starting {})", bytes.len(), head.join(" "));
        }
    };
    ensure!(shape.h > 0 && shape.w > 0, "image has no pixels ({}x{})", shape.h, shape.w);
    // Both decoders return exactly H*W*3 bytes for an image of that size; checked anyway so that no caller can
    // ever see a short buffer.
    ensure!(rgb.len() == shape.len(), "decoder returned {} bytes for a {}x{} RGB image", rgb.len(), shape.h, shape.w);
    Ok((rgb, shape))
}

/// The error for an image of the wrong size.
fn wrong_size(height: usize, width: usize, expected: ImageShape) -> anyhow::Error {
    anyhow!(
        "image is {height}x{width} (HxW) but {}x{} is required; images are not resized, prepare them at the \
         training size",
        expected.h,
        expected.w
    )
}

/// JPEG by `zune-jpeg` in strict mode (see the module documentation). A file whose only damage is a missing
/// end-of-image marker (all pixels present) still decodes.
fn decode_jpeg(bytes: &[u8], expected: Option<ImageShape>) -> Result<(Vec<u8>, ImageShape)> {
    let options = DecoderOptions::default().set_strict_mode(true).jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| anyhow!("corrupt JPEG header: {e:?}"))?;
    let (width, height) = decoder.dimensions().context("JPEG without a frame header")?;
    let found = ImageShape { h: height, w: width };
    if let Some(expected) = expected.filter(|&e| e != found) {
        return Err(wrong_size(height, width, expected));
    }
    Ok((decoder.decode().map_err(|e| anyhow!("corrupt JPEG data: {e:?}"))?, found))
}

/// PNG by the `image` crate (`png`), converted to 8-bit RGB.
fn decode_png(bytes: &[u8], expected: Option<ImageShape>) -> Result<(Vec<u8>, ImageShape)> {
    let decoder =
        ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png).into_decoder().context("corrupt PNG header")?;
    let (width, height) = decoder.dimensions();
    let found = ImageShape { h: height as usize, w: width as usize };
    if let Some(expected) = expected.filter(|&e| e != found) {
        return Err(wrong_size(found.h, found.w, expected));
    }
    let image = DynamicImage::from_decoder(decoder).context("corrupt PNG data")?;
    Ok((image.into_rgb8().into_raw(), found))
}

/// Encodes `u8 (H, W, 3)` RGB as a baseline JPEG of `quality` (1..=100; 4:2:0 chroma subsampling).
pub fn encode_jpeg(rgb: &[u8], shape: ImageShape, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = dims_u32(rgb, shape)?;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode(rgb, w, h, image::ExtendedColorType::Rgb8)
        .context("JPEG encoding failed")?;
    Ok(out)
}

/// Encodes `u8 (H, W, 3)` RGB as an 8-bit RGB PNG (lossless).
pub fn encode_png(rgb: &[u8], shape: ImageShape) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w, h) = dims_u32(rgb, shape)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .context("PNG encoding failed")?;
    Ok(out)
}

/// Checks `rgb` against `shape` and returns `(width, height)` as the encoders take them.
fn dims_u32(rgb: &[u8], shape: ImageShape) -> Result<(u32, u32)> {
    shape.validate().map_err(|e| anyhow!("image shape {}x{}: {e}", shape.h, shape.w))?;
    if rgb.len() != shape.len() {
        bail!("RGB buffer has {} bytes, a {}x{} image needs {}", rgb.len(), shape.h, shape.w, shape.len());
    }
    let w = u32::try_from(shape.w).context("image too wide")?;
    let h = u32::try_from(shape.h).context("image too high")?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose left half is black and right half white, `h x w`.
    fn halves(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| if (i / 3) % w < w / 2 { 0 } else { 255 }).collect()
    }

    #[test]
    fn other_sizes_are_resized_by_the_shorter_side_and_cropped() {
        let target = ImageShape { h: 16, w: 16 };
        // Exactly the target: untouched.
        let rgb = halves(16, 16);
        let (same, original) = decode_rgb_resized(&encode_png(&rgb, target).unwrap(), target).unwrap();
        assert_eq!((same, original), (rgb, None));
        // 32x64 (HxW): scaled to 16x32, then the middle 16 columns kept: black then white, sharp at the centre.
        let wide = ImageShape { h: 32, w: 64 };
        let (out, original) = decode_rgb_resized(&encode_png(&halves(32, 64), wide).unwrap(), target).unwrap();
        assert_eq!(original, Some(wide));
        assert_eq!(out.len(), target.len());
        let row: Vec<u8> = out[..16 * 3].chunks(3).map(|p| p[0]).collect();
        assert!(row[..7].iter().all(|&v| v == 0) && row[9..].iter().all(|&v| v == 255), "{row:?}");
        // A uniform image stays uniform at any scale.
        let big = ImageShape { h: 50, w: 50 };
        let (out, _) = decode_rgb_resized(&encode_png(&vec![77; big.len()], big).unwrap(), target).unwrap();
        assert!(out.iter().all(|&v| v == 77));
        // A strip of 1 x 5,000,000 pixels would scale to 80 M x 16 before its crop: refused, not allocated.
        let strip = ImageShape { h: 1, w: 5_000_000 };
        let e = resize_rgb(vec![9; strip.len()], strip, target).unwrap_err().to_string();
        assert!(e.contains("a 5000000x1 image scaled to cover 16x16 would be 80000000x16 pixels"), "{e}");
    }

    #[test]
    fn many_images_decode_in_order_and_the_first_failure_is_named() {
        let shape = ImageShape { h: 16, w: 16 };
        let images: Vec<Vec<u8>> = (0..37u8).map(|i| encode_png(&vec![i; shape.len()], shape).unwrap()).collect();
        let source = |i: usize| Ok(std::borrow::Cow::Borrowed(images[i].as_slice()));
        let (pixels, resized) = decode_many(images.len(), shape, source, |i| format!("item {i}")).unwrap();
        assert_eq!(resized, vec![None; 37]);
        for (i, img) in pixels.chunks_exact(shape.len()).enumerate() {
            assert!(img.iter().all(|&v| v == i as u8), "image {i}");
        }
        let bad = |i: usize| {
            if i == 30 || i == 5 {
                Ok(std::borrow::Cow::Borrowed(&b"garbage"[..]))
            } else {
                source(i)
            }
        };
        let e = decode_many(images.len(), shape, bad, |i| format!("item {i}")).unwrap_err();
        assert!(format!("{e:#}").starts_with("item 5: not a JPEG or PNG image"), "{e:#}");
    }
}
