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

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::align::align_face;
use elasticface_core::nn::ImageShape;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::decode::{decode_rgb_any, encode_jpeg, encode_png};
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

/// Aligns every listed face and writes its crop, on all cores; returns the number written.
pub fn align_all(cfg: &AlignConfig, quiet: bool) -> Result<usize> {
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
    for chunk in faces.chunks(CHUNK) {
        let mut pixels = vec![0u8; chunk.len() * cfg.shape.len()];
        crate::data::decode::fill_parallel(&mut pixels, cfg.shape.len(), |i, out| {
            let face = &chunk[i];
            let path = cfg.root.join(&face.photo);
            let at = || format!("{} line {}: {}", cfg.list.display(), face.line, path.display());
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read it", at()))?;
            let (rgb, found) = decode_rgb_any(&bytes).with_context(at)?;
            align_face(&rgb, found, &face.landmarks, out, cfg.shape)
                .map_err(|e| anyhow::anyhow!("{}: cannot align: {e}", at()))?;
            let encoded = match cfg.jpeg {
                Some(q) => encode_jpeg(out, cfg.shape, q),
                None => encode_png(out, cfg.shape),
            }
            .with_context(at)?;
            // Written beside and renamed over: a crash leaves no torn crop, and a link at the crop's place is
            // replaced, not followed (a crop tree made of links to the photos keeps its photos).
            crate::files::write_replacing(&cfg.out.join(&face.crop), &encoded)
        })?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(faces.len())
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
        let cfg =
            AlignConfig { list, root: dir.path().join("photos"), out: dir.path().join("crops"), shape, jpeg: None };
        assert_eq!(align_all(&cfg, true).unwrap(), 1);
        assert_eq!(std::fs::read(&photo).unwrap(), bytes, "the photo behind the link is untouched");
        let crop = dir.path().join("crops/d/a.png");
        assert!(!std::fs::symlink_metadata(&crop).unwrap().file_type().is_symlink());
        assert_ne!(std::fs::read(&crop).unwrap(), bytes);
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
