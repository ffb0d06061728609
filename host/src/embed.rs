//! Embeddings of image files: `elasticface embed` (many images to a `.npy` or safetensors file) and
//! `elasticface compare` (two images to a cosine and a decision).
//!
//! Images are decoded on all cores ([`decode_each`]; other sizes are resized to the network's input as
//! insightface's evaluation does, with a warning) and embedded in chunks on the backend. Options:
//! - `flip`: add the embedding of the mirror image (`e + e_flip`, the verification protocol's fusion);
//! - `normalize`: L2-normalise each embedding. With both, the result is the protocol's fused embedding.
//!
//! Output files: `.npy` (`float32 (N, E)`, little-endian, C order) with the image paths, one per line, in
//! `<name>.files.txt` beside it; or `.safetensors` with the tensor `embeddings (N, E)` and the paths and options
//! in its `about` manifest.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::embedding::{cosine, l2_normalize};
use elasticface_core::nn::ImageShape;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::data::decode::decode_each;
use crate::eval::suite::CHUNK_IMAGES;
use crate::eval::FlipEmbeddings;
use crate::features::{compute_resumable, Resume};
use crate::fingerprint::Fnv1a;
use crate::tensorfile::TensorFile;
use crate::train::Backend;

/// Extensions taken as images when a folder is searched (any case).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// How embeddings are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Add the mirror image's embedding.
    pub flip: bool,
    /// L2-normalise each embedding.
    pub normalize: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Skip images that cannot be read (listed in a warning; [`Embeddings::skipped`]) instead of stopping at the
    /// first.
    pub skip_bad: bool,
}

/// Embeddings of a list of images.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// Embedding size `E`.
    pub dim: usize,
    /// `(N, E)`, row `i` for the `i`-th image embedded (the images given, less those skipped).
    pub values: Vec<f32>,
    /// Images that were resized to the network's input.
    pub resized: usize,
    /// The images skipped as unreadable (`skip_bad`), by their index in the list given, ascending.
    pub skipped: Vec<usize>,
}

impl Embeddings {
    /// The items of `all` (one per image given) that were embedded, in order: the files, people's images, mates.
    pub fn kept<T: Clone>(&self, all: &[T]) -> Vec<T> {
        without(all, &self.skipped)
    }
}

/// `all` without the items at `skipped` (ascending).
fn without<T: Clone>(all: &[T], skipped: &[usize]) -> Vec<T> {
    let mut skipped = skipped.iter().peekable();
    all.iter().enumerate().filter(|(i, _)| skipped.next_if_eq(&i).is_none()).map(|(_, v)| v.clone()).collect()
}

/// The image files named by `inputs`: files as given (any extension), folders searched recursively for
/// `.jpg`/`.jpeg`/`.png` files (hidden entries skipped), each folder's finds sorted by path.
pub fn list_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            ensure!(!found.is_empty(), "{} holds no .jpg, .jpeg or .png image", p.display());
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    ensure!(!out.is_empty(), "no images given");
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a folder search takes `path` as an image: a `.jpg`, `.jpeg` or `.png` extension, in any case.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The magic of the feature files of `embed_files` (see [`crate::features`]).
const FEATURE_MAGIC: &[u8; 8] = b"EFIMGFT1";

/// The row `embed_files` keeps for an image it skipped: a NaN with a payload of its own, which no network computes,
/// so that a resumed run knows the image was skipped.
const SKIPPED: u32 = 0x7fc1_5eed;

/// Embeds `files` on `backend` (input size `shape`) in chunks, with a progress bar unless `opts.quiet`.
///
/// With `resume`, each chunk's embeddings (before normalisation) are also kept in that file ([`crate::features`]):
/// a run stopped part way (Ctrl-C, a crash) and started again with the same files (names, sizes and modification
/// times), input size and `flip` embeds the first chunk again to check the model and device, reads back what the
/// file holds and embeds only the rest; the embeddings are the same bits as those of a run never stopped. The
/// caller removes the file once its output is written. `resized` then counts the images decoded in this run.
pub fn embed_files(
    backend: &mut dyn Backend,
    files: &[PathBuf],
    shape: ImageShape,
    opts: EmbedOptions,
    resume: Option<&Path>,
) -> Result<Embeddings> {
    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(files.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let resume = match resume {
        Some(path) => {
            Some(Resume { path, magic: FEATURE_MAGIC, key: fingerprint(files, shape, opts)?, quiet: opts.quiet })
        }
        None => None,
    };
    let (mut values, mut resized, mut reasons) = (Vec::new(), 0, Vec::new());
    let mut embed_chunk = |start: usize, count: usize, resized: &mut usize, reasons: &mut Vec<(usize, String)>| {
        let chunk = &files[start..start + count];
        let (pixels, each) = decode_each(
            chunk.len(),
            shape,
            |i| {
                let bytes = std::fs::read(&chunk[i]).with_context(|| format!("cannot read {}", chunk[i].display()))?;
                Ok(Cow::Owned(bytes))
            },
            |i| chunk[i].display().to_string(),
        )?;
        let mut bad = Vec::new();
        for (i, decoded) in each.into_iter().enumerate() {
            match decoded {
                Ok(original) => *resized += usize::from(original.is_some()),
                Err(e) if opts.skip_bad => {
                    bad.push(i);
                    reasons.push((start + i, format!("{e:#}")));
                }
                Err(e) => return Err(e),
            }
        }
        let mut rows = if opts.flip {
            let e = FlipEmbeddings::embed(backend, &pixels, chunk.len())?;
            e.plain.iter().zip(&e.flipped).map(|(a, b)| a + b).collect()
        } else {
            backend.embed(&pixels, &vec![false; chunk.len()])?
        };
        let dim = rows.len() / count;
        for i in bad {
            rows[i * dim..(i + 1) * dim].fill(f32::from_bits(SKIPPED));
        }
        Ok(rows)
    };
    let dim = compute_resumable(
        files.len(),
        CHUNK_IMAGES,
        resume,
        |start, count| embed_chunk(start, count, &mut resized, &mut reasons),
        |_, _, rows| {
            values.extend_from_slice(rows);
            Ok(())
        },
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let skipped = drop_skipped(&mut values, dim, files, &reasons, opts.skip_bad, resume.map(|r| r.path))?;
    ensure!(!values.is_empty() || files.is_empty(), "none of the {} images could be read", files.len());
    if opts.normalize {
        let mut unit = vec![0.0; dim];
        for (row, file) in values.chunks_exact_mut(dim).zip(without(files, &skipped)) {
            l2_normalize(row, &mut unit).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            row.copy_from_slice(&unit);
        }
    }
    if resized > 0 {
        eprintln!(
            "warning: {resized} of {} images are not {}x{}; resized as insightface does (shorter side to the input \
             size, centre crop)",
            files.len(),
            shape.h,
            shape.w
        );
    }
    Ok(Embeddings { dim, values, resized, skipped })
}

/// Takes the rows of skipped images (marked [`SKIPPED`]: this run's, or an earlier run's read back) out of
/// `values` (`(N, dim)`, a row per file of `files`) and names them in one warning, with the reasons of this run's
/// (`reasons`: file index and error); returns their indices. Without `skip_bad`, a skipped image (one an earlier run
/// skipped, read back from the feature file `resume`) is an error.
fn drop_skipped(
    values: &mut Vec<f32>,
    dim: usize,
    files: &[PathBuf],
    reasons: &[(usize, String)],
    skip_bad: bool,
    resume: Option<&Path>,
) -> Result<Vec<usize>> {
    let skipped: Vec<usize> =
        values.chunks_exact(dim).enumerate().filter(|(_, r)| r[0].to_bits() == SKIPPED).map(|(i, _)| i).collect();
    if let (Some(&i), false) = (skipped.first(), skip_bad) {
        bail!(
            "{}: cannot be read (skipped by an earlier run with --skip-bad-images, whose embeddings {} holds)",
            files[i].display(),
            resume.map_or(String::new(), |r| r.display().to_string())
        );
    }
    if skipped.is_empty() {
        return Ok(skipped);
    }
    let mut kept = Vec::with_capacity(values.len() - skipped.len() * dim);
    for row in values.chunks_exact(dim).filter(|r| r[0].to_bits() != SKIPPED) {
        kept.extend_from_slice(row);
    }
    *values = kept;
    let named: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|&i| match reasons.iter().find(|(j, _)| *j == i) {
            Some((_, why)) => why.clone(),
            None => format!("{} (skipped by an earlier run)", files[i].display()),
        })
        .collect();
    let more = if skipped.len() > 5 { format!("; and {} more", skipped.len() - 5) } else { String::new() };
    eprintln!("warning: skipped {} unreadable images: {}{more}", skipped.len(), named.join("; "));
    Ok(skipped)
}

/// FNV-1a over what makes `embed_files`' features: the input size, `flip`, and each file's name, size and
/// modification time (a file replaced under the same name is embedded again).
fn fingerprint(files: &[PathBuf], shape: ImageShape, opts: EmbedOptions) -> Result<u64> {
    let mut h = Fnv1a::new();
    h.eat(&(shape.h as u64).to_le_bytes());
    h.eat(&(shape.w as u64).to_le_bytes());
    h.eat(&[u8::from(opts.flip)]);
    for f in files {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        h.eat(f.as_os_str().as_encoded_bytes());
        h.eat(&[0]);
        h.eat(&meta.len().to_le_bytes());
        h.eat(&modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
    }
    Ok(h.finish())
}

/// The `.npy` bytes (format 1.0) of little-endian C-order `float32` `values` of `shape`.
pub fn npy_bytes(values: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    ensure!(values.len() == shape.iter().product::<usize>(), "{} values for shape {shape:?}", values.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // A 1-tuple needs its trailing comma: (5,).
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by '\n', is a multiple
    // of 64 bytes (numpy's alignment).
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let len = u16::try_from(header.len()).context("npy header too long")?;
    let mut out = Vec::with_capacity(10 + header.len() + 4 * values.len());
    out.extend(b"\x93NUMPY\x01\x00");
    out.extend(len.to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    Ok(out)
}

/// The feature file a command that writes `out` keeps while it embeds (`embed_files`' `resume`): `out` with
/// `.features` added (`people.safetensors.features`).
pub fn resume_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".features");
    PathBuf::from(name)
}

/// The file list written beside a `.npy` output: `emb.npy` -> `emb.files.txt`.
pub fn file_list_path(npy: &Path) -> PathBuf {
    npy.with_extension("files.txt")
}

/// The most bytes of file names a `.safetensors` output takes: the format refuses a header above 100 MB, and the
/// manifest holds the names (about 1.2 M names of 80 bytes).
const SAFETENSORS_NAMES_MAX: usize = 90_000_000;

/// Checks, before anything is embedded, that [`write_embeddings`] can write `files`' embeddings to `out`: a `.npy`
/// or `.safetensors` name, every file name UTF-8 without a line break (the list holds one a line), and names that
/// fit a safetensors manifest.
pub fn check_output(out: &Path, files: &[PathBuf]) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    ensure!(
        ext == "npy" || ext == "safetensors",
        "{}: write embeddings to a .npy or a .safetensors file",
        out.display()
    );
    let mut bytes = 0;
    for f in files {
        let name = f.to_str().ok_or_else(|| anyhow!("{}: the file name is not UTF-8", f.display()))?;
        ensure!(!name.contains(['\n', '\r']), "{name:?}: a file name with a line break cannot go in the file list");
        bytes += name.len() + 4;
    }
    ensure!(
        ext == "npy" || bytes <= SAFETENSORS_NAMES_MAX,
        "{}: the names of {} files take about {} MB, more than a safetensors manifest holds (100 MB); write a .npy \
         (its file list is a text file beside it)",
        out.display(),
        files.len(),
        bytes / 1_000_000
    );
    Ok(())
}

/// Writes the embeddings of `files` to `out`: `.npy` (with [`file_list_path`]) or `.safetensors` (paths in the
/// manifest). `about` is added to the safetensors manifest (the model, the options). [`check_output`] says
/// beforehand whether it can.
pub fn write_embeddings(out: &Path, emb: &Embeddings, files: &[PathBuf], about: serde_json::Value) -> Result<()> {
    check_output(out, files)?;
    let rows = files.len();
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    match ext.as_str() {
        "npy" => {
            let bytes = npy_bytes(&emb.values, &[rows, emb.dim])?;
            std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
            let list = file_list_path(out);
            let mut f = std::fs::File::create(&list).with_context(|| format!("cannot write {}", list.display()))?;
            for n in &names {
                writeln!(f, "{n}").with_context(|| format!("cannot write {}", list.display()))?;
            }
        }
        "safetensors" => {
            let mut meta = json!({"format": "elasticface-embeddings", "files": names});
            if let (Some(m), serde_json::Value::Object(extra)) = (meta.as_object_mut(), about) {
                m.extend(extra);
            }
            let mut f = TensorFile::new("embeddings", meta);
            f.insert_f32("embeddings", &[rows, emb.dim], emb.values.clone())?;
            f.save(out)?;
        }
        _ => unreachable!("check_output accepts .npy and .safetensors only"),
    }
    Ok(())
}

/// The result of comparing two images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// Cosine similarity of the two fused embeddings.
    pub cosine: f32,
    /// The squared distance of the two unit embeddings, `2 - 2 cosine` (the scale of `eval`'s thresholds).
    pub distance: f32,
    /// Whether `cosine > threshold` (as `eval` accepts a pair at `distance < 2 - 2 threshold`).
    pub same: bool,
}

/// Compares two image files: each embedded with its mirror image and fused (as the verification protocol), then
/// the cosine of the two, judged "same person" at `cosine > threshold`: `distance < 2 - 2 threshold`, strictly, as
/// `eval` and insightface accept a pair below a distance threshold.
pub fn compare(backend: &mut dyn Backend, a: &Path, b: &Path, shape: ImageShape, threshold: f32) -> Result<Comparison> {
    let opts = EmbedOptions { flip: true, normalize: true, quiet: true, skip_bad: false };
    let e = embed_files(backend, &[a.to_path_buf(), b.to_path_buf()], shape, opts, None)?;
    let (x, y) = e.values.split_at(e.dim);
    let c = cosine(x, y)?;
    Ok(Comparison { cosine: c, distance: 2.0 - 2.0 * c, same: c > threshold })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_cannot_be_written_are_refused_before_embedding() {
        let files = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let ok = files(&["a/1.jpg", "b/2.jpg"]);
        assert!(check_output(Path::new("e.npy"), &ok).is_ok());
        assert!(check_output(Path::new("e.SafeTensors"), &ok).is_ok());
        let e = check_output(Path::new("e.csv"), &ok).unwrap_err().to_string();
        assert!(e.contains("e.csv: write embeddings to a .npy or a .safetensors file"), "{e}");
        let e = check_output(Path::new("e.npy"), &files(&["a/1.jpg", "b/two\nlines.jpg"])).unwrap_err().to_string();
        assert!(e.contains("\"b/two\\nlines.jpg\": a file name with a line break"), "{e}");
        // About 1.5 M names of 60 bytes: more than a safetensors header holds, fine for .npy.
        let many: Vec<PathBuf> = (0..1_500_000).map(|i| PathBuf::from(format!("{:0>56}.jpg", i))).collect();
        let e = check_output(Path::new("e.safetensors"), &many).unwrap_err().to_string();
        assert!(e.contains("the names of 1500000 files take about 96 MB") && e.contains("write a .npy"), "{e}");
        assert!(check_output(Path::new("e.npy"), &many).is_ok());
    }

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let b = npy_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 24);
        assert_eq!(&b[10 + hlen..10 + hlen + 4], &1.0f32.to_le_bytes());
        assert!(npy_bytes(&[1.0], &[2, 3]).is_err());
        let one = npy_bytes(&[1.0, 2.0], &[2]).unwrap();
        assert!(std::str::from_utf8(&one[10..70]).unwrap().contains("'shape': (2,), }"));
        assert_eq!(file_list_path(Path::new("out/emb.npy")), Path::new("out/emb.files.txt"));
    }
}
