//! `elasticface align`: face photos with their five landmarks to aligned crops, as insightface aligns faces
//! ([`elasticface_core::align`]: the similarity onto its reference points, a bilinear warp), for `embed`,
//! `compare` or an image-folder data set for `train`.
//!
//! The list has one face a line, in the layout of insightface's `*_name_5pts_score.txt` (IJB's `meta/`): the photo's
//! path (relative to the root), ten numbers `x y` for the left eye, the right eye, the nose tip, the left and the
//! right corner of the mouth (left and right as seen), and optionally a detector score, which is ignored. Each crop
//! is written under the photo's path relative to the root, as PNG (lossless) or JPEG, so a photo tree of one folder
//! per identity becomes an image-folder data set. A photo listed again (another face in it), or another photo of
//! the same name but for its extension, gets `_1`, `_2` ...

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
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
    /// The photo, relative to the root.
    pub photo: PathBuf,
    /// Its landmarks.
    pub landmarks: [[f32; 2]; 5],
    /// Where its crop goes, relative to the output folder.
    pub crop: PathBuf,
}

/// Reads the list: every malformed line is an error naming the list and the line. `extension` is the crops'.
pub fn read_list(list: &Path, extension: &str) -> Result<Vec<ListedFace>> {
    let text = read_text(list)?;
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut faces = Vec::new();
    for (line, fields) in rows(&text) {
        ensure!(
            fields.len() == 11 || fields.len() == 12,
            "{} line {line}: {} fields, expected 11 or 12 (photo, 5 landmarks x y, an optional score)",
            list.display(),
            fields.len()
        );
        let photo = PathBuf::from(fields[0]);
        ensure!(
            photo.is_relative() && !photo.components().any(|c| c == std::path::Component::ParentDir),
            "{} line {line}: {} must be a path inside the root (relative, no ..)",
            list.display(),
            fields[0]
        );
        // Keyed on the crop's name: `a.jpg` and `a.png` in one folder would both write `a.png`.
        let again = seen.entry(photo.with_extension("")).or_default();
        let stem = photo.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = if *again == 0 { format!("{stem}.{extension}") } else { format!("{stem}_{again}.{extension}") };
        *again += 1;
        faces.push(ListedFace {
            crop: photo.with_file_name(name),
            landmarks: five_points(&fields, list, line)?,
            photo,
        });
    }
    ensure!(!faces.is_empty(), "{} lists no face", list.display());
    Ok(faces)
}

/// Aligns every listed face and writes its crop, on all cores; returns the number written.
pub fn align_all(cfg: &AlignConfig, quiet: bool) -> Result<usize> {
    cfg.shape.validate().map_err(|e| anyhow::anyhow!("crop size: {e}"))?;
    let extension = if cfg.jpeg.is_some() { "jpg" } else { "png" };
    let faces = read_list(&cfg.list, extension)?;
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
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let (rgb, found) = decode_rgb_any(&bytes).with_context(|| format!("{}", path.display()))?;
            align_face(&rgb, found, &face.landmarks, out, cfg.shape)
                .map_err(|e| anyhow::anyhow!("{}: cannot align: {e}", path.display()))?;
            let encoded = match cfg.jpeg {
                Some(q) => encode_jpeg(out, cfg.shape, q)?,
                None => encode_png(out, cfg.shape)?,
            };
            let dest = cfg.out.join(&face.crop);
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&dest, encoded).with_context(|| format!("cannot write {}", dest.display()))
        })?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(faces.len())
}
