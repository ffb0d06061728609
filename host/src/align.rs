//! `elasticface align`: face photos with their five landmarks to aligned crops, as insightface aligns faces
//! ([`elasticface_core::align`]: the similarity onto its reference points, a bilinear warp), for `embed`,
//! `compare` or an image-folder data set for `train`.
//!
//! The list has one face a line, in the layout of insightface's `*_name_5pts_score.txt` (IJB's `meta/`): the photo's
//! path (relative to the root), ten numbers `x y` for the left eye, the right eye, the nose tip, the left and the
//! right corner of the mouth (left and right as seen), and optionally a detector score, which is ignored. Each crop
//! is written under the photo's path relative to the root, as PNG (lossless) or JPEG, so a photo tree of one folder
//! per identity becomes an image-folder data set. A photo listed again (another face in it), or another photo of
//! the same name but for its extension, gets `_1`, `_2` ... (the first name no other face has). Paths of plain
//! names only (no `..`, roots or drives), and no crop may replace a listed photo.
//!
//! Landmarks are positions in a photo as some program read it, and programs differ on a photo that carries an EXIF
//! orientation (a phone's, held upright): OpenCV's `imread` (insightface's detector scripts) turns it as the tag says,
//! PIL's `Image.open` does not. `--exif` says which the list's landmarks are in: the stored pixels (`ignore`, the
//! default: IJB's lists, PIL) or the photo turned upright (`apply`). A run that finds photos with such a tag says how
//! many and how it read them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::align::align_face;
use elasticface_core::nn::ImageShape;
use image::metadata::Orientation;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::decode::{decode_rgb_any, encode_jpeg, encode_png, exif_orientation, orient_rgb};
use crate::eval::ijb::{five_points, read_text, rows};

/// Faces aligned at a time (bounds the memory of decoded photos).
const CHUNK: usize = 256;

/// What to align and how to write it.
#[derive(Clone, Debug)]
pub struct AlignConfig {
    /// The list of photos and landmarks.
    pub list: PathBuf,
    /// The folder the listed paths are relative to.
    pub root: PathBuf,
    /// Where the crops go.
    pub out: PathBuf,
    /// The crops' size (the network's input).
    pub shape: ImageShape,
    /// JPEG quality; `None` writes PNG.
    pub jpeg: Option<u8>,
    /// Which pixels the landmarks are in, for a photo with an EXIF orientation.
    pub exif: Exif,
}

/// Which pixels a list's landmarks refer to in a photo carrying an EXIF orientation (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Exif {
    /// The pixels as stored (PIL's `Image.open`; IJB's lists).
    #[default]
    Ignore,
    /// The photo turned upright as its tag says (OpenCV's `imread`).
    Apply,
}

/// What [`align_all`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aligned {
    /// Crops written.
    pub faces: usize,
    /// Of their photos (one count per face), those that carry an EXIF orientation other than upright.
    pub oriented: usize,
}

impl Aligned {
    /// A note on the photos carrying an EXIF orientation, how their landmarks were read and how to read them the
    /// other way; `None` when there were none.
    pub fn exif_note(&self, exif: Exif) -> Option<String> {
        let n = self.oriented;
        (n > 0).then(|| match exif {
            Exif::Ignore => format!(
                "{n} of the {} faces are in photos with an EXIF orientation; their landmarks were taken in the \
                 stored pixels (as PIL's Image.open reads them). If they were found on the photos turned upright \
                 (OpenCV's imread, insightface's scripts), align again with --exif apply",
                self.faces
            ),
            Exif::Apply => format!(
                "{n} of the {} faces are in photos with an EXIF orientation; they were turned upright as their tags \
                 say before aligning (--exif apply)",
                self.faces
            ),
        })
    }
}

/// One face of the list.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedFace {
    /// Its line in the list.
    pub line: usize,
    /// The photo, relative to the root (plain names only: no `.`, `..`, root or prefix).
    pub photo: PathBuf,
    /// Its landmarks.
    pub landmarks: [[f32; 2]; 5],
    /// Where its crop goes, relative to the output folder; no two faces share one.
    pub crop: PathBuf,
}

/// The folder of the list `list`, the default root: `.` for a bare file name (whose parent is "").
pub fn list_folder(list: &Path) -> PathBuf {
    match list.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` in lower case: names that a file system ignoring case takes for one file compare equal.
fn folded(path: &Path) -> PathBuf {
    PathBuf::from(path.to_string_lossy().to_lowercase())
}

/// Reads the list: every malformed line is an error naming the list and the line. `extension` is the crops'.
pub fn read_list(list: &Path, extension: &str) -> Result<Vec<ListedFace>> {
    use std::path::Component;
    let text = read_text(list)?;
    let mut taken: HashSet<PathBuf> = HashSet::new();
    let mut faces = Vec::new();
    for (line, fields) in rows(&text) {
        ensure!(
            fields.len() == 11 || fields.len() == 12,
            "{} line {line}: {} fields, expected 11 or 12 (photo, 5 landmarks x y, an optional score)",
            list.display(),
            fields.len()
        );
        // `./a.jpg` is `a.jpg`; anything but plain names (`..`, a root, a drive) could leave the folders.
        let given = Path::new(fields[0]);
        let plain = given.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let photo: PathBuf = given.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        ensure!(
            plain && photo.file_name().is_some(),
            "{} line {line}: {} must be a path inside the root (relative, no ..)",
            list.display(),
            fields[0]
        );
        // The first free name of `stem.ext`, `stem_1.ext`, ...: a photo listed again (another face in it), `a.jpg`
        // beside `a.png`, or a photo named `a_1.jpg` after two faces of `a.jpg`, never share a crop; nor do `A.jpg`
        // and `a.jpg` (one file where names ignore case: macOS, Windows).
        let stem = photo.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let crop = (0..)
            .map(|k| {
                let name = if k == 0 { format!("{stem}.{extension}") } else { format!("{stem}_{k}.{extension}") };
                photo.with_file_name(name)
            })
            .find(|c| !taken.contains(&folded(c)))
            .expect("a free name");
        taken.insert(folded(&crop));
        faces.push(ListedFace { line, crop, landmarks: five_points(&fields, list, line)?, photo });
    }
    ensure!(!faces.is_empty(), "{} lists no face", list.display());
    Ok(faces)
}

/// Aligns every listed face and writes its crop, on all cores.
pub fn align_all(cfg: &AlignConfig, quiet: bool) -> Result<Aligned> {
    cfg.shape.validate().map_err(|e| anyhow::anyhow!("crop size: {e}"))?;
    let extension = if cfg.jpeg.is_some() { "jpg" } else { "png" };
    let faces = read_list(&cfg.list, extension)?;
    // No crop may replace a listed photo (an output folder that is the root, or holds it): a later face of that
    // photo would be cut from the crop.
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let real = |dir: &Path| dir.canonicalize().with_context(|| format!("cannot read {}", dir.display()));
    let (root, out) = (real(&cfg.root)?, real(&cfg.out)?);
    let photos: HashSet<PathBuf> = faces.iter().map(|f| folded(&root.join(&f.photo))).collect();
    if let Some(f) = faces.iter().find(|f| photos.contains(&folded(&out.join(&f.crop)))) {
        bail!(
            "{} line {}: the crop {} would replace a listed photo; write the crops to another folder",
            cfg.list.display(),
            f.line,
            cfg.out.join(&f.crop).display()
        );
    }
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(faces.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("aligning {bar:30} {pos}/{len} faces  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let mut oriented = 0;
    for chunk in faces.chunks(CHUNK) {
        let mut pixels = vec![0u8; chunk.len() * cfg.shape.len()];
        let turned = crate::data::decode::fill_parallel(&mut pixels, cfg.shape.len(), |i, out| {
            let face = &chunk[i];
            let path = cfg.root.join(&face.photo);
            let at = || format!("{} line {}: {}", cfg.list.display(), face.line, path.display());
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read it", at()))?;
            let (rgb, found) = decode_rgb_any(&bytes).with_context(at)?;
            let orientation = exif_orientation(&bytes).with_context(at)?;
            let turned = orientation != Orientation::NoTransforms;
            let (rgb, found) = match cfg.exif {
                Exif::Apply if turned => orient_rgb(rgb, found, orientation).with_context(at)?,
                _ => (rgb, found),
            };
            align_face(&rgb, found, &face.landmarks, out, cfg.shape)
                .map_err(|e| anyhow::anyhow!("{}: cannot align: {e}", at()))?;
            let encoded = match cfg.jpeg {
                Some(q) => encode_jpeg(out, cfg.shape, q),
                None => encode_png(out, cfg.shape),
            }
            .with_context(at)?;
            // Written beside and renamed over: a crash leaves no torn crop, and a link at the crop's place is
            // replaced, not followed (a crop tree made of links to the photos keeps its photos).
            crate::files::write_replacing(&cfg.out.join(&face.crop), &encoded)?;
            Ok(turned)
        })?;
        oriented += turned.iter().filter(|&&t| t).count();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Aligned { faces: faces.len(), oriented })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_list_name_lies_in_the_current_folder() {
        assert_eq!(list_folder(Path::new("list.txt")), Path::new("."));
        assert_eq!(list_folder(Path::new("photos/list.txt")), Path::new("photos"));
        assert_eq!(list_folder(Path::new("/data/list.txt")), Path::new("/data"));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_where_a_crop_goes_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ImageShape { h: 16, w: 16 };
        std::fs::create_dir_all(dir.path().join("photos/d")).unwrap();
        std::fs::create_dir_all(dir.path().join("crops/d")).unwrap();
        let photo = dir.path().join("photos/d/a.png");
        let bytes = encode_png(&vec![200; shape.len()], shape).unwrap();
        std::fs::write(&photo, &bytes).unwrap();
        std::os::unix::fs::symlink(&photo, dir.path().join("crops/d/a.png")).unwrap();
        let list = dir.path().join("photos/list.txt");
        std::fs::write(&list, "d/a.png 5 6 11 6 8 9 6 12 10 12\n").unwrap();
        let cfg = AlignConfig {
            list,
            root: dir.path().join("photos"),
            out: dir.path().join("crops"),
            shape,
            jpeg: None,
            exif: Exif::Ignore,
        };
        assert_eq!(align_all(&cfg, true).unwrap().faces, 1);
        assert_eq!(std::fs::read(&photo).unwrap(), bytes, "the photo behind the link is untouched");
        let crop = dir.path().join("crops/d/a.png");
        assert!(!std::fs::symlink_metadata(&crop).unwrap().file_type().is_symlink());
        assert_ne!(std::fs::read(&crop).unwrap(), bytes);
    }

    /// An EXIF chunk (TIFF, little-endian) holding one tag, the orientation `value` (1..=8).
    fn exif_orientation_chunk(value: u16) -> Vec<u8> {
        let mut c = b"II*\0".to_vec();
        c.extend(8u32.to_le_bytes()); // the first directory, right after this header
        c.extend(1u16.to_le_bytes()); // one entry:
        c.extend(0x0112u16.to_le_bytes()); // Orientation,
        c.extend(3u16.to_le_bytes()); // a SHORT,
        c.extend(1u32.to_le_bytes()); // one of them,
        c.extend(value.to_le_bytes()); // its value,
        c.extend([0, 0]); // padded to 4 bytes
        c.extend(0u32.to_le_bytes()); // no next directory
        c
    }

    /// A photo stored on its side with the tag "turn 90 degrees clockwise to view" (6, a phone held upright) is
    /// cropped from its stored pixels by default and from the upright photo with `--exif apply`: the crops equal
    /// `align_face` on those pixels exactly (PNG is lossless). The JPEG encoding's tag is read as well.
    #[test]
    fn exif_orientation_is_applied_when_asked() {
        use image::{ExtendedColorType, ImageEncoder};
        let dir = tempfile::tempdir().unwrap();
        let (photos, crops) = (dir.path().join("photos"), dir.path().join("crops"));
        std::fs::create_dir_all(&photos).unwrap();
        // The upright photo, 48 high and 40 wide, all its pixels different; stored turned a quarter counter-clockwise.
        let upright_shape = ImageShape { h: 48, w: 40 };
        let upright: Vec<u8> = (0..upright_shape.len()).map(|i| (i * 7 % 251) as u8).collect();
        let img = image::RgbImage::from_raw(40, 48, upright.clone()).unwrap();
        let stored = image::imageops::rotate270(&img);
        let stored_shape = ImageShape { h: stored.height() as usize, w: stored.width() as usize };
        let mut png = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        encoder.set_exif_metadata(exif_orientation_chunk(6)).unwrap();
        encoder.write_image(stored.as_raw(), 48, 40, ExtendedColorType::Rgb8).unwrap();
        std::fs::write(photos.join("a.png"), &png).unwrap();
        std::fs::write(photos.join("b.png"), encode_png(stored.as_raw(), stored_shape).unwrap()).unwrap();
        assert_eq!(exif_orientation(&png).unwrap(), Orientation::Rotate90);
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90);
        encoder.set_exif_metadata(exif_orientation_chunk(6)).unwrap();
        encoder.write_image(stored.as_raw(), 48, 40, ExtendedColorType::Rgb8).unwrap();
        assert_eq!(exif_orientation(&jpeg).unwrap(), Orientation::Rotate90);
        decode_rgb_any(&jpeg).expect("the strict decoder reads a JPEG with EXIF");

        let points = "10 15 28 14 20 25 12 34 27 33";
        let landmarks = [[10.0, 15.0], [28.0, 14.0], [20.0, 25.0], [12.0, 34.0], [27.0, 33.0]];
        let list = photos.join("list.txt");
        std::fs::write(&list, format!("a.png {points}\nb.png {points}\n")).unwrap();
        let shape = ImageShape { h: 16, w: 16 };
        for exif in [Exif::Ignore, Exif::Apply] {
            let cfg =
                AlignConfig { list: list.clone(), root: photos.clone(), out: crops.clone(), shape, jpeg: None, exif };
            let done = align_all(&cfg, true).unwrap();
            assert_eq!(done, Aligned { faces: 2, oriented: 1 });
            assert!(done.exif_note(exif).unwrap().starts_with("1 of the 2 faces"));
            let crop = |name: &str| decode_rgb_any(&std::fs::read(crops.join(name)).unwrap()).unwrap().0;
            let mut want = vec![0; shape.len()];
            let (pixels, found) = match exif {
                Exif::Ignore => (stored.as_raw().as_slice(), stored_shape),
                Exif::Apply => (upright.as_slice(), upright_shape),
            };
            align_face(pixels, found, &landmarks, &mut want, shape).unwrap();
            assert_eq!(crop("a.png"), want, "{exif:?}");
            // The untagged photo is read as stored either way.
            align_face(stored.as_raw(), stored_shape, &landmarks, &mut want, shape).unwrap();
            assert_eq!(crop("b.png"), want, "{exif:?}");
        }
        assert_eq!(Aligned { faces: 2, oriented: 0 }.exif_note(Exif::Ignore), None);
    }

    #[test]
    fn names_that_differ_in_case_only_get_different_crops() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        let points = "20 25 44 25 32 38 22 50 42 50";
        std::fs::write(&list, format!("d/A.jpg {points}\nd/a.jpg {points}\nd/a.JPG {points}\n")).unwrap();
        let crops: Vec<PathBuf> = read_list(&list, "png").unwrap().into_iter().map(|f| f.crop).collect();
        assert_eq!(crops, [PathBuf::from("d/A.png"), PathBuf::from("d/a_1.png"), PathBuf::from("d/a_2.png")]);
    }
}
