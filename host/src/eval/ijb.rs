//! IJB-B and IJB-C 1:1 verification, as insightface's `eval_ijbc.py` measures it (the figures the ElasticFace
//! paper reports: TAR at FAR 1e-4).
//!
//! A set is a folder as NIST's release lays it out and insightface's copy keeps it (`IJB_release/IJBC`):
//!
//! ```text
//! loose_crop/1.jpg ...                       the face crops, any size
//! meta/ijbc_face_tid_mid.txt                 one line per face: file, template id, media id
//! meta/ijbc_name_5pts_score.txt              the same faces in the same order: file, 5 landmarks (x y), detector score
//! meta/ijbc_template_pair_label.txt          one line per pair of templates: template, template, 1 (same) or 0
//! meta/ijbc_1N_gallery_G1.csv, _G2.csv       optional, 1:N: the galleries (CSV: TEMPLATE_ID,SUBJECT_ID,...)
//! meta/ijbc_1N_probe_mixed.csv               optional, 1:N: the probes, the same columns ([`search`])
//! ```
//!
//! (`ijbb_...` for IJB-B, whose galleries are `S1` and `S2`.) The 1:1 protocol:
//! 1. each face is aligned from its five landmarks onto insightface's 112x112 reference points
//!    ([`elasticface_core::align`]), embedded with its mirror image, and its feature is `(e + e_flip) * score`:
//!    not normalised, weighted by the detector's score (insightface's defaults, `use_flip_test`,
//!    `use_norm_score`, `use_detector_score`);
//! 2. a template's feature is the sum over its media of the mean feature of the template's faces from that media
//!    (the frames of one video count once), L2-normalised; sums in `f64`, in file order;
//! 3. each pair of templates is scored by the distance of their features, `2 - 2 cos` (the squared distance of
//!    unit vectors), and the TAR is given at FAR 1e-6 .. 1e-1 with the core's
//!    [`tar_at_far`](elasticface_core::verify::tar_at_far): the largest threshold whose FAR does not exceed the
//!    target. insightface reads the TAR off scikit-learn's ROC at the point whose FAR is nearest the target, which
//!    may lie above it: the two differ where the curve has a step at the target.
//!
//! 1:N identification, where the set has the 1:N lists: [`search`].
//!
//! Memory, for IJB-C (469,375 faces, 23,124 templates, 15,658,489 pairs): the template sums (23,124 x 512 x 8
//! bytes, 95 MB), the pairs and their distances (13 bytes a pair), the selection and the ROC's sort (about 36
//! bytes a pair while they run): about 0.9 GB at most; and one chunk of faces at a time.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::align::align_face;
use elasticface_core::nn::ImageShape;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::suite::{RocJson, CHUNK_IMAGES, ROC_POINTS};
use super::{roc_curve, tar_reports, FlipEmbeddings, TarReport};
use crate::data::decode::{decode_rgb_any, fill_parallel};
use crate::features::{compute_resumable, Resume};
use crate::fingerprint::Fnv1a;
use crate::train::Backend;

pub mod search;
pub use search::{
    score_searches, Gallery, GalleryReport, RankReport, Scores, Search, SearchReport, Searched, TpirReport, IJB_FPIRS,
    IJB_RANKS,
};

/// The false-accept rates IJB results are given at (insightface's table).
pub const IJB_FARS: [f64; 6] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1];

/// The protocol, as the report states it.
pub const IJB_PROTOCOL: &str = "insightface eval_ijbc.py 1:1: faces aligned from 5 landmarks (similarity onto the \
112x112 arcface points, bilinear, border 0), feature = (e + e_flip) * detector score (not normalised); template = \
sum over media of the mean feature of the media's faces, l2-normalised; distance = 2 - 2 cos of the templates (a \
zero template has cos 0); TAR at FAR: the largest threshold whose FAR on different pairs does not exceed the target. \
1:N (where meta/ holds the 1:N lists), as insightface ijb_evals.py: each gallery searched by every probe template \
(2 - 2 cos), probes of subjects it holds mated, the others non-mated; identification rate at rank 1/5/10 over mated \
probes (ties against the mate); TPIR at FPIR: mate ranked first below the largest threshold that answers at most \
floor(FPIR x non-mated) non-mated probes; over galleries: rank hits summed, TPIR averaged";

/// One face of a set.
#[derive(Clone, Debug, PartialEq)]
pub struct Face {
    /// Its file in `loose_crop/`.
    pub file: String,
    /// Template id.
    pub template: u32,
    /// Media id (a photo, or a video whose frames share it).
    pub media: u32,
    /// Five landmarks `(x, y)` in the crop's pixels.
    pub landmarks: [[f32; 2]; 5],
    /// The face detector's score.
    pub score: f32,
}

/// An IJB set's metadata, read whole; the images are read as they are embedded.
#[derive(Clone, Debug)]
pub struct IjbSet {
    /// `IJBB` or `IJBC`: the prefix of the meta files, in capitals.
    pub name: String,
    /// The folder holding `loose_crop/` and `meta/`.
    pub root: PathBuf,
    /// The faces, in file order.
    pub faces: Vec<Face>,
    /// The pairs: first template, second template, whether they are one person; `(P)` each.
    pub pairs: (Vec<u32>, Vec<u32>, Vec<bool>),
    /// The 1:N lists, where the set has them.
    pub search: Option<Search>,
}

/// The prefix (`ijbc`) of the set in `dir`, if `dir` holds one: the `*_template_pair_label.txt` in `dir/meta`.
fn prefix_in(dir: &Path) -> Result<Option<String>> {
    let meta = dir.join("meta");
    if !meta.is_dir() {
        return Ok(None);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&meta).with_context(|| format!("cannot read {}", meta.display()))? {
        let name = entry.with_context(|| format!("cannot read {}", meta.display()))?.file_name();
        if let Some(prefix) = name.to_str().and_then(|n| n.strip_suffix("_template_pair_label.txt")) {
            found.push(prefix.to_string());
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!("{} holds the pairs of several sets ({}); give one", meta.display(), found.join(", ")),
    }
}

/// Whether `dir` holds an IJB set (a `meta/*_template_pair_label.txt`).
pub fn is_ijb(dir: &Path) -> bool {
    matches!(prefix_in(dir), Ok(Some(_)))
}

/// `(line number, fields)` of each line of `text` that is not blank.
pub(crate) fn rows(text: &str) -> Vec<(usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split_ascii_whitespace().collect::<Vec<_>>()))
        .filter(|(_, f)| !f.is_empty())
        .collect()
}

/// Reads a text file for parsing, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses field `k` of a line, naming the file, the line and the field in the error.
pub(crate) fn field<T: std::str::FromStr>(
    fields: &[&str],
    k: usize,
    path: &Path,
    line: usize,
    what: &str,
) -> Result<T> {
    let text = fields.get(k).ok_or_else(|| {
        anyhow!("{} line {line}: {} fields, the {what} is field {}", path.display(), fields.len(), k + 1)
    })?;
    text.parse().map_err(|_| anyhow!("{} line {line}: the {what} {text:?} is not a number", path.display()))
}

/// Field `k` of a line as a finite number, naming the file, the line and the field in the error.
pub(crate) fn finite(fields: &[&str], k: usize, path: &Path, line: usize, what: &str) -> Result<f32> {
    let v: f32 = field(fields, k, path, line, what)?;
    ensure!(v.is_finite(), "{} line {line}: the {what} {} is not finite", path.display(), fields[k]);
    Ok(v)
}

/// The five landmarks `(x, y)` in fields 1 to 10 of a line (field 0 names the image), as insightface's
/// `*_name_5pts_score.txt` gives them.
pub(crate) fn five_points(fields: &[&str], path: &Path, line: usize) -> Result<[[f32; 2]; 5]> {
    let mut landmarks = [[0.0f32; 2]; 5];
    for (k, xy) in landmarks.iter_mut().enumerate() {
        *xy = [finite(fields, 1 + 2 * k, path, line, "landmark")?, finite(fields, 2 + 2 * k, path, line, "landmark")?];
    }
    Ok(landmarks)
}

impl IjbSet {
    /// Reads the metadata of the set in `dir` (the folder holding `loose_crop/` and `meta/`). Errors name the file
    /// and line of anything malformed, and a pair whose template has no face.
    pub fn open(dir: &Path) -> Result<Self> {
        let prefix = prefix_in(dir)?.ok_or_else(|| {
            anyhow!(
                "{} is not an IJB set: it needs meta/<set>_template_pair_label.txt (e.g. IJB_release/IJBC)",
                dir.display()
            )
        })?;
        let meta = dir.join("meta");
        let tid_mid = meta.join(format!("{prefix}_face_tid_mid.txt"));
        let five = meta.join(format!("{prefix}_name_5pts_score.txt"));
        let pair_file = meta.join(format!("{prefix}_template_pair_label.txt"));
        let crops = dir.join("loose_crop");
        ensure!(crops.is_dir(), "{}: the face crops (loose_crop/) are missing", dir.display());

        let (ids_text, five_text) = (read_text(&tid_mid)?, read_text(&five)?);
        let (id_rows, five_rows) = (rows(&ids_text), rows(&five_text));
        ensure!(
            id_rows.len() == five_rows.len(),
            "{} lists {} faces, {} lists {}",
            tid_mid.display(),
            id_rows.len(),
            five.display(),
            five_rows.len()
        );
        let mut faces = Vec::with_capacity(id_rows.len());
        for ((line, f), (five_line, p)) in id_rows.iter().zip(&five_rows) {
            let (line, five_line) = (*line, *five_line);
            ensure!(
                f.len() == 3,
                "{} line {line}: {} fields, expected 3 (file template media)",
                tid_mid.display(),
                f.len()
            );
            ensure!(
                p.len() == 12,
                "{} line {five_line}: {} fields, expected 12 (file, 5 landmarks x y, score)",
                five.display(),
                p.len()
            );
            ensure!(
                f[0] == p[0],
                "{} line {line} names {} where {} line {five_line} names {}",
                tid_mid.display(),
                f[0],
                five.display(),
                p[0]
            );
            faces.push(Face {
                file: f[0].to_string(),
                template: field(f, 1, &tid_mid, line, "template id")?,
                media: field(f, 2, &tid_mid, line, "media id")?,
                landmarks: five_points(p, &five, five_line)?,
                score: finite(p, 11, &five, five_line, "detector score")?,
            });
        }
        ensure!(!faces.is_empty(), "{} lists no face", tid_mid.display());

        let text = read_text(&pair_file)?;
        let known: HashSet<u32> = faces.iter().map(|f| f.template).collect();
        let (mut first, mut second, mut same) = (Vec::new(), Vec::new(), Vec::new());
        for (i, l) in text.lines().enumerate() {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            ensure!(
                f.len() == 3,
                "{} line {}: {} fields, expected 3 (template template label)",
                pair_file.display(),
                i + 1,
                f.len()
            );
            for k in 0..2 {
                let t = field(&f, k, &pair_file, i + 1, "template id")?;
                // Found here, before hours of embedding, not when the pairs are scored.
                ensure!(
                    known.contains(&t),
                    "{} line {}: template {t} has no face in {}",
                    pair_file.display(),
                    i + 1,
                    tid_mid.display()
                );
                [&mut first, &mut second][k].push(t);
            }
            same.push(match f[2] {
                "1" => true,
                "0" => false,
                other => bail!("{} line {}: the label {other:?} is neither 1 nor 0", pair_file.display(), i + 1),
            });
        }
        ensure!(!same.is_empty(), "{} lists no pair", pair_file.display());
        let search = Search::open(&meta, &prefix, &known, &tid_mid)?;
        Ok(Self { name: prefix.to_uppercase(), root: dir.to_path_buf(), faces, pairs: (first, second, same), search })
    }

    /// Face `i` aligned to `shape`: `u8 (H, W, 3)`.
    pub fn aligned(&self, i: usize, shape: ImageShape) -> Result<Vec<u8>> {
        let mut out = vec![0u8; shape.len()];
        self.align_into(i, shape, &mut out)?;
        Ok(out)
    }

    fn align_into(&self, i: usize, shape: ImageShape, out: &mut [u8]) -> Result<()> {
        let face = &self.faces[i];
        let path = self.root.join("loose_crop").join(&face.file);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (rgb, found) = decode_rgb_any(&bytes).with_context(|| format!("{}", path.display()))?;
        align_face(&rgb, found, &face.landmarks, out, shape)
            .map_err(|e| anyhow!("{}: cannot align: {e}", path.display()))?;
        Ok(())
    }
}

/// Template features, summed face by face as faces are embedded (step 2 of the protocol): each face's feature
/// weighted by 1 / (the template's faces from its media), so a template's sum is the sum over its media of their
/// faces' mean. In `f64`, in the order faces are added.
#[derive(Clone, Debug)]
pub struct Templates {
    /// Template ids, ascending (as `numpy.unique`).
    pub ids: Vec<u32>,
    /// Each face's index into `ids`.
    of_face: Vec<usize>,
    /// Each face's weight: 1 / faces of its template from its media.
    weight: Vec<f64>,
    /// Feature size `D` (0 until the first face).
    dim: usize,
    /// `(T, D)`.
    sums: Vec<f64>,
}

impl Templates {
    /// No face added yet.
    pub fn new(set: &IjbSet) -> Self {
        let mut ids: Vec<u32> = set.faces.iter().map(|f| f.template).collect();
        ids.sort_unstable();
        ids.dedup();
        let index: HashMap<u32, usize> = ids.iter().enumerate().map(|(i, &t)| (t, i)).collect();
        let of_face: Vec<usize> = set.faces.iter().map(|f| index[&f.template]).collect();
        let mut count: HashMap<(usize, u32), u32> = HashMap::new();
        for (&t, f) in of_face.iter().zip(&set.faces) {
            *count.entry((t, f.media)).or_default() += 1;
        }
        let weight = of_face.iter().zip(&set.faces).map(|(&t, f)| 1.0 / f64::from(count[&(t, f.media)])).collect();
        Self { ids, of_face, weight, dim: 0, sums: Vec::new() }
    }

    /// Adds face `face`'s feature `(D)`.
    pub fn add(&mut self, face: usize, feature: &[f32]) -> Result<()> {
        ensure!(face < self.of_face.len(), "face {face} of {}", self.of_face.len());
        if self.dim == 0 {
            ensure!(!feature.is_empty(), "an empty feature");
            self.dim = feature.len();
            self.sums = vec![0.0; self.ids.len() * self.dim];
        }
        ensure!(feature.len() == self.dim, "face {face}: a feature of {} values, not {}", feature.len(), self.dim);
        let (t, w, d) = (self.of_face[face], self.weight[face], self.dim);
        for (s, &x) in self.sums[t * d..(t + 1) * d].iter_mut().zip(feature) {
            *s += f64::from(x) * w;
        }
        Ok(())
    }

    /// Feature size `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The template features `(T, D)`, each sum L2-normalised. A zero sum (faces of detector score 0) stays
    /// zero, as `sklearn.preprocessing.normalize` leaves it: its cosine with any template is 0. A sum that is not
    /// finite (a network that returned NaN) is an error naming the template.
    pub fn features(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.sums.len()];
        if self.dim == 0 {
            return Ok(out);
        }
        for (t, (row, o)) in self.sums.chunks_exact(self.dim).zip(out.chunks_exact_mut(self.dim)).enumerate() {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            ensure!(norm.is_finite(), "template {}: its feature is not finite", self.ids[t]);
            if norm > 0.0 {
                for (o, v) in o.iter_mut().zip(row) {
                    *o = (v / norm) as f32;
                }
            }
        }
        Ok(out)
    }
}

/// `sum(a[k] b[k])` in f32, in 8 lanes (lane `j` sums the products at `k = j mod 8`) added pairwise at the end:
/// a fixed order, so the same bits everywhere, and lanes a compiler can keep in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            lanes[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ra.iter().zip(rb).enumerate() {
        lanes[j] += x * y;
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// The distance of two template features (unit or zero): `2 - 2 cos`, the squared distance of unit vectors, where a
/// zero template has cosine 0 with every other (distance 2), as insightface scores it.
fn distance(a: &[f32], b: &[f32]) -> f32 {
    (2.0 - 2.0 * dot(a, b)).max(0.0)
}

/// The distance, `2 - 2 cos`, of every pair of template features (`(T, D)`, unit or zero rows). On all cores, each
/// pair on its own (the same bits whatever the number of threads).
pub fn pair_distances(templates: &[f32], dim: usize, first: &[usize], second: &[usize]) -> Result<Vec<f32>> {
    ensure!(first.len() == second.len(), "{} first and {} second templates", first.len(), second.len());
    let count = templates.len().checked_div(dim).unwrap_or(0);
    if let Some(&t) = first.iter().chain(second).find(|&&t| t >= count) {
        bail!("template index {t} of {count}");
    }
    let mut dist = vec![0.0f32; first.len()];
    if dist.is_empty() {
        return Ok(dist);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = dist.len().div_ceil(workers);
    let row = |t: usize| &templates[t * dim..(t + 1) * dim];
    std::thread::scope(|scope| {
        for (w, part) in dist.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                for (j, d) in part.iter_mut().enumerate() {
                    let p = w * chunk + j;
                    *d = distance(row(first[p]), row(second[p]));
                }
            });
        }
    });
    Ok(dist)
}

/// What one IJB set measured.
#[derive(Clone, Debug, Serialize)]
pub struct IjbReport {
    /// `IJBB` or `IJBC`.
    pub name: String,
    /// The set's folder.
    pub dir: PathBuf,
    /// Faces embedded.
    pub faces: usize,
    /// Templates.
    pub templates: usize,
    /// Pairs of templates scored.
    pub pairs: usize,
    /// Pairs of one person.
    pub same_pairs: usize,
    /// TAR at each of [`IJB_FARS`].
    pub tar_at_far: Vec<TarReport>,
    /// The ROC curve (FAR, TAR at each threshold), at most [`ROC_POINTS`] points.
    pub roc: Vec<RocJson>,
    /// The squared distance of each pair, `(P)`.
    #[serde(skip)]
    pub dist: Vec<f32>,
    /// 1:N identification, where the set has the 1:N lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchReport>,
}

impl IjbReport {
    /// The TAR at `far`, when it was measured and could be resolved.
    pub fn tar(&self, far: f64) -> Option<f64> {
        TarReport::find(&self.tar_at_far, far)
    }
}

/// Scores a set from its template features (steps 1 and 2 done): step 3.
pub fn score_set(set: &IjbSet, templates: &Templates) -> Result<IjbReport> {
    let (features, dim) = (templates.features()?, templates.dim());
    ensure!(dim > 0, "{}: no face was embedded", set.name);
    let index: HashMap<u32, usize> = templates.ids.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    let (first, second, same) = &set.pairs;
    let lookup = |t: &[u32]| -> Result<Vec<usize>> {
        t.iter()
            .enumerate()
            .map(|(p, id)| {
                index
                    .get(id)
                    .copied()
                    .ok_or_else(|| anyhow!("{}: pair {} names template {id}, which has no face", set.name, p + 1))
            })
            .collect()
    };
    let dist = pair_distances(&features, dim, &lookup(first)?, &lookup(second)?)?;
    let tar_at_far = tar_reports(&dist, same, &IJB_FARS).with_context(|| set.name.clone())?;
    let roc = roc_curve(&dist, same, ROC_POINTS).with_context(|| format!("{}: ROC", set.name))?;
    let search = match &set.search {
        Some(s) => Some(search::score_search(s, &features, dim, &index).with_context(|| format!("{}: 1:N", set.name))?),
        None => None,
    };
    Ok(IjbReport {
        name: set.name.clone(),
        dir: set.root.clone(),
        faces: set.faces.len(),
        templates: templates.ids.len(),
        pairs: same.len(),
        same_pairs: same.iter().filter(|&&s| s).count(),
        tar_at_far,
        roc: roc.into_iter().map(RocJson::from).collect(),
        dist,
        search,
    })
}

/// The magic of the feature files of IJB faces (see [`crate::features`]).
const FEATURE_MAGIC: &[u8; 8] = b"EFIJBFT1";

/// FNV-1a over what makes the set's faces and their crops: file names, templates, media, landmarks and scores
/// (bits), and the input size.
fn fingerprint(set: &IjbSet, shape: ImageShape) -> u64 {
    let mut h = Fnv1a::new();
    h.eat(&(shape.h as u64).to_le_bytes());
    h.eat(&(shape.w as u64).to_le_bytes());
    for f in &set.faces {
        h.eat(f.file.as_bytes());
        h.eat(&[0]);
        h.eat(&f.template.to_le_bytes());
        h.eat(&f.media.to_le_bytes());
        for v in f.landmarks.iter().flatten().chain([&f.score]) {
            h.eat(&v.to_bits().to_le_bytes());
        }
    }
    h.finish()
}

/// Features `(count, D)` of faces `start..start + count`: aligned on all cores, embedded with their mirror images,
/// `(e + e_flip) * score`.
fn embed_faces(
    backend: &mut dyn Backend,
    set: &IjbSet,
    shape: ImageShape,
    start: usize,
    count: usize,
) -> Result<Vec<f32>> {
    let mut pixels = vec![0u8; count * shape.len()];
    fill_parallel(&mut pixels, shape.len(), |i, out| set.align_into(start + i, shape, out))?;
    let emb = FlipEmbeddings::embed(backend, &pixels, count).with_context(|| format!("{}: embedding", set.name))?;
    let d = emb.dim;
    let mut features = Vec::with_capacity(count * d);
    for (i, (e, f)) in emb.plain.chunks_exact(d).zip(emb.flipped.chunks_exact(d)).enumerate() {
        let score = set.faces[start + i].score;
        features.extend(e.iter().zip(f).map(|(a, b)| (a + b) * score));
    }
    Ok(features)
}

/// Template features of a set on `backend` (steps 1 and 2): faces aligned to `shape` on all cores, a chunk at a
/// time, embedded with their mirror images, `(e + e_flip) * score` added to their template's sum in face order.
///
/// With `resume`, the faces' features are also kept in that file (see [`crate::features`]): a run stopped part way
/// (Ctrl-C, a crash) and started again embeds the first chunk again to check the file, reads the faces it holds,
/// and embeds only the rest; the templates are the same, bit for bit, as those of a run that was never stopped.
pub fn embed_templates(
    backend: &mut dyn Backend,
    set: &IjbSet,
    shape: ImageShape,
    quiet: bool,
    resume: Option<&Path>,
) -> Result<Templates> {
    let n = set.faces.len();
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(n as u64) };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} faces  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix(set.name.clone());
    let mut templates = Templates::new(set);
    let resume = resume.map(|path| Resume { path, magic: FEATURE_MAGIC, key: fingerprint(set, shape), quiet });
    compute_resumable(
        set.faces.len(),
        CHUNK_IMAGES,
        resume,
        |start, count| embed_faces(backend, set, shape, start, count),
        |start, dim, features| {
            for (i, feature) in features.chunks_exact(dim).enumerate() {
                templates.add(start + i, feature)?;
            }
            Ok(())
        },
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    Ok(templates)
}
