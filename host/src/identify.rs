//! 1:N identification: `elasticface enroll` makes a gallery file of people from their photos, and `elasticface
//! identify` says whom probe photos show. Every search is the core's gallery
//! ([`GalleryView::identify_into`]), the code a device runs: in f32, or with `int8` on int8 templates and probes
//! as a device with a quantised embedding holds them.
//!
//! - **People**: in each folder given, every sub-folder is a person named by the sub-folder, with every image
//!   under it (searched as `embed` searches: `.jpg`, `.jpeg`, `.png`, sorted, hidden entries skipped); every image
//!   directly in the folder is a person of its own, named by its file stem. Names are unique across the folders.
//! - **Templates**: each image embedded with its mirror image and L2-normalised (as `compare` does); a person's
//!   unit embeddings summed in file order, and the sum L2-normalised by the gallery's enrolment.
//! - **Gallery file** (safetensors): the tensor `templates (L, E)`, unit rows in enrolment order, and a manifest
//!   (`about`): `format` ([`FORMAT`]), `version`, `names` and `images` (per person), and the `model` file,
//!   `network` and `weights` (a fingerprint of the model, [`weights_fingerprint`]) it was made with. Embeddings of
//!   another model cannot be compared with its templates, so `identify` and `enroll --update` refuse a model whose
//!   fingerprint differs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::embedding::quantize_i8;
use elasticface_core::gallery::{Element, GalleryView, GalleryViewMut, Match};
use elasticface_core::verify::mate_rank;
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::Backbone;
use crate::data::decode::fill_parallel;
use crate::embed::{self, Embeddings};
use crate::eval::ijb::{score_searches, RankReport, Searched};
use crate::fingerprint::Fnv1a;
use crate::tensorfile::TensorFile;

/// The manifest's `format` of a gallery file.
pub const FORMAT: &str = "elasticface-gallery";
/// The gallery file's version; a file of another version is refused.
pub const VERSION: u64 = 1;

/// One person to enrol: a name and the images of their face.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The name the gallery gives them (a sub-folder's name, or an image's file stem).
    pub name: String,
    /// Their images, sorted by path.
    pub files: Vec<PathBuf>,
}

/// The people in `dirs`, folder after folder, each folder's entries sorted by name (see the module documentation).
/// Errors: a path that is not a folder, a person's folder without images, a name that is not UTF-8, two people of
/// one name, or no one at all.
pub fn list_people(dirs: &[PathBuf]) -> Result<Vec<Person>> {
    let people = people_in(dirs)?;
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for p in &people {
        if let Some(other) = seen.insert(&p.name, p.files[0].as_path()) {
            bail!("two people named {:?}: {} and {}", p.name, other.display(), p.files[0].display());
        }
    }
    Ok(people)
}

/// [`list_people`], where one name may stand for a person in several folders (probes of known people).
fn people_in(dirs: &[PathBuf]) -> Result<Vec<Person>> {
    let mut people: Vec<Person> = Vec::new();
    for dir in dirs {
        ensure!(
            dir.is_dir(),
            "{}: not a folder (give folders of people: a sub-folder of images, or one image, a person)",
            dir.display()
        );
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                entries.push(entry.path());
            }
        }
        entries.sort();
        for path in entries {
            let (name, files) = if path.is_dir() {
                (path.file_name(), embed::list_images(std::slice::from_ref(&path))?)
            } else if embed::is_image(&path) {
                (path.file_stem(), vec![path.clone()])
            } else {
                continue;
            };
            let name = name
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{}: the name is not UTF-8", path.display()))?
                .to_string();
            people.push(Person { name, files });
        }
    }
    let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    ensure!(
        !people.is_empty(),
        "no people in {}: give folders holding a sub-folder of images, or an image, per person",
        names.join(", ")
    );
    Ok(people)
}

/// `people` with only their images that `emb` embedded (`emb` made from every person's images in order), and
/// without those left with none (named in a warning). Errors when no one is left.
pub fn readable(people: &[Person], emb: &Embeddings) -> Result<Vec<Person>> {
    if emb.skipped.is_empty() {
        return Ok(people.to_vec());
    }
    let owner: Vec<usize> =
        people.iter().enumerate().flat_map(|(i, p)| std::iter::repeat_n(i, p.files.len())).collect();
    let all: Vec<(usize, PathBuf)> =
        owner.into_iter().zip(people.iter().flat_map(|p| p.files.iter().cloned())).collect();
    let mut kept: Vec<Person> = people.iter().map(|p| Person { name: p.name.clone(), files: Vec::new() }).collect();
    for (i, file) in emb.kept(&all) {
        kept[i].files.push(file);
    }
    let (kept, none): (Vec<Person>, Vec<Person>) = kept.into_iter().partition(|p| !p.files.is_empty());
    if !none.is_empty() {
        let names: Vec<&str> = none.iter().map(|p| p.name.as_str()).collect();
        eprintln!("warning: not enrolled, no image of theirs could be read: {}", names.join(", "));
    }
    ensure!(!kept.is_empty(), "no one has an image that could be read");
    Ok(kept)
}

/// The fingerprint of a model's embeddings, 16 hex digits: FNV-1a over the input size, the batch norms' eps and
/// every weight's bits. The same file read again (or converted: `.pth`, `.onnx`, `import`) gives the same
/// fingerprint; another model or a training step more does not.
pub fn weights_fingerprint(b: &Backbone) -> String {
    let mut h = Fnv1a::new();
    h.eat(&(b.cfg.input_h as u64).to_le_bytes());
    h.eat(&(b.cfg.input_w as u64).to_le_bytes());
    h.eat(&b.bn.eps.to_bits().to_le_bytes());
    for v in &b.state {
        h.eat(&v.to_bits().to_le_bytes());
    }
    format!("{:016x}", h.finish())
}

/// A gallery of people, as its file holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gallery {
    /// Names, in enrolment order.
    pub names: Vec<String>,
    /// Images enrolled per person.
    pub images: Vec<u64>,
    /// Embedding size `E`.
    pub dim: usize,
    /// `(L, E)`: person `i`'s unit template in row `i`.
    pub templates: Vec<f32>,
    /// The model file it was made with, as given.
    pub model: String,
    /// The network in words.
    pub network: String,
    /// [`weights_fingerprint`] of the model.
    pub weights: String,
}

/// What [`Gallery::enroll`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// People new to the gallery.
    pub added: usize,
    /// People already in it whose templates were replaced.
    pub replaced: usize,
}

impl Gallery {
    /// An empty gallery for embeddings of `dim` elements from `backbone` (read from `model`).
    pub fn new(model: &Path, backbone: &Backbone) -> Self {
        Self {
            names: Vec::new(),
            images: Vec::new(),
            dim: backbone.cfg.embedding,
            templates: Vec::new(),
            model: model.display().to_string(),
            network: backbone.describe(),
            weights: weights_fingerprint(backbone),
        }
    }

    /// Number of people.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no one is enrolled.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Takes the people named `names` out of the gallery; the others keep their order. Errors, before anything
    /// changes: a name the gallery does not hold.
    pub fn remove(&mut self, names: &[String]) -> Result<()> {
        if let Some(n) = names.iter().find(|n| !self.names.contains(n)) {
            bail!("{n:?} is not in the gallery");
        }
        let keep: Vec<bool> = self.names.iter().map(|n| !names.contains(n)).collect();
        let mut kept = keep.iter();
        self.names.retain(|_| *kept.next().expect("a flag a person"));
        let mut kept = keep.iter();
        self.images.retain(|_| *kept.next().expect("a flag a person"));
        self.templates = self
            .templates
            .chunks_exact(self.dim)
            .zip(&keep)
            .filter(|(_, &k)| k)
            .flat_map(|(t, _)| t.to_vec())
            .collect();
        Ok(())
    }

    /// What the gallery holds, in words: its size and model, then a line per person with their image count.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!("{} people, templates of {} values", self.len(), self.dim),
            format!("model: {} ({}, weights {})", self.model, self.network, self.weights),
        ];
        let width = self.names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        for (name, images) in self.names.iter().zip(&self.images) {
            let s = if *images == 1 { "" } else { "s" };
            lines.push(format!("  {name:<width$}  {images} image{s}"));
        }
        lines
    }

    /// Enrols `people`, whose images' unit embeddings are `emb`'s rows, person after person, each person's files
    /// in order. A person of a name already in the gallery gets the new template in their place (the images of
    /// before are not kept); the others are appended.
    pub fn enroll(&mut self, people: &[Person], emb: &Embeddings) -> Result<Enrolled> {
        let rows: usize = people.iter().map(|p| p.files.len()).sum();
        ensure!(
            emb.dim == self.dim && emb.values.len() == rows * emb.dim,
            "{} embeddings of size {} for {rows} images of a gallery of size {}",
            emb.values.len() / emb.dim.max(1),
            emb.dim,
            self.dim
        );
        let old = self.len();
        let capacity = old + people.len();
        ensure!(u32::try_from(capacity).is_ok(), "a gallery holds at most {} people", u32::MAX);
        // Identity i is id i: ids only ever grow by appending.
        let mut ids: Vec<u32> = (0..capacity as u32).collect();
        let mut templates = std::mem::take(&mut self.templates);
        templates.resize(capacity * self.dim, 0.0);
        let mut len = old;
        let mut view = GalleryViewMut::new(self.dim, &mut ids, &mut templates, &mut len)
            .map_err(|e| anyhow!("gallery storage: {e}"))?;
        let mut index: HashMap<String, usize> = self.names.iter().cloned().zip(0..).collect();
        let (mut done, mut sum) = (Enrolled { added: 0, replaced: 0 }, vec![0.0f32; self.dim]);
        let mut rows = emb.values.chunks_exact(self.dim);
        for p in people {
            ensure!(!p.files.is_empty(), "{}: no images", p.name);
            sum.fill(0.0);
            for _ in &p.files {
                let row = rows.next().expect("one row an image, counted above");
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            let refused = |e: &dyn std::fmt::Display| anyhow!("{}: cannot be enrolled: {e}", p.name);
            match index.get(&p.name) {
                Some(&i) => {
                    view.update(i as u32, &sum).map_err(|e| refused(&e))?;
                    self.images[i] = p.files.len() as u64;
                    done.replaced += 1;
                }
                None => {
                    let i = view.len();
                    view.enroll(i as u32, &sum).map_err(|e| refused(&e))?;
                    index.insert(p.name.clone(), i);
                    self.names.push(p.name.clone());
                    self.images.push(p.files.len() as u64);
                    done.added += 1;
                }
            }
        }
        templates.truncate(len * self.dim);
        self.templates = templates;
        Ok(done)
    }

    /// The `top` people most like each probe (`probes`: `(N, E)`), by cosine, best first (equal cosines in
    /// enrolment order): the core's [`GalleryView::identify_into`] at threshold -1, on the f32 templates, or with
    /// `int8` on templates and probes quantised by [`quantize_i8`] (exact integer cosines, as a device with int8
    /// embeddings computes them). The probes are shared out over all cores, each searched alone (the same result on
    /// any number). `name(i)` names probe `i` in errors.
    pub fn search(
        &self,
        probes: &[f32],
        top: usize,
        int8: bool,
        name: impl Fn(usize) -> String + Sync,
    ) -> Result<Vec<Vec<Match>>> {
        ensure!(top > 0, "ask for at least one candidate");
        let ids: Vec<u32> = (0..self.len() as u32).collect();
        match self.operands(probes, int8, &name)? {
            Operands::F32 { templates, probes } => top_candidates(self.dim, &ids, templates, probes, top, &name),
            Operands::I8 { templates, probes } => top_candidates(self.dim, &ids, &templates, &probes, top, &name),
        }
    }

    /// 1:N identification measured on probes of known people (`probes`: `(N, E)`; `mates[i]`: the gallery's index
    /// of probe `i`'s person, `None` for a person it does not hold), searched as [`Gallery::search`] searches: the
    /// identification rate at ranks 1, 5 and 10 of the mated probes, and the TPIR at FPIR 1e-4 .. 1e-1 with the
    /// `--threshold` that gives each (see [`Evaluation`]). `name(i)` names probe `i` in errors.
    pub fn evaluate(
        &self,
        probes: &[f32],
        mates: &[Option<usize>],
        int8: bool,
        name: impl Fn(usize) -> String + Sync,
    ) -> Result<Evaluation> {
        ensure!(mates.len() * self.dim == probes.len(), "{} probes named for {} values", mates.len(), probes.len());
        if let Some(m) = mates.iter().flatten().find(|&&m| m >= self.len()) {
            bail!("person {m} of a gallery of {}", self.len());
        }
        ensure!(
            mates.iter().any(Option::is_some),
            "none of the probes' people is in the gallery: there is no mate to find"
        );
        let searched = match self.operands(probes, int8, &name)? {
            Operands::F32 { templates, probes } => mate_searches(self.dim, templates, probes, mates, &name)?,
            Operands::I8 { templates, probes } => mate_searches(self.dim, &templates, &probes, mates, &name)?,
        };
        let scores = score_searches(&searched, "the gallery")?;
        let tpir_at_fpir = scores
            .tpir_at_fpir
            .iter()
            .map(|t| CosineTpir {
                fpir: t.fpir,
                tpir: t.tpir,
                // Answered at -cosine < t, so at cosine > -t: from the next f32 up on, where that is a cosine.
                threshold: t.threshold.map(|t| (-t).next_up().max(-1.0)).filter(|&c| c <= 1.0),
                fpir_reached: t.fpir_reached,
            })
            .collect();
        Ok(Evaluation {
            probes: mates.len(),
            mated: scores.mated,
            non_mated: scores.non_mated,
            rank: scores.rank,
            tpir_at_fpir,
        })
    }

    /// The probe images of known people in `dirs`, laid out as for enrolment ([`list_people`]; one person may
    /// have images in several folders), and each one's mate: the gallery's index of their person, `None` for a
    /// person it does not hold.
    pub fn known_probes(&self, dirs: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Option<usize>>)> {
        let index: HashMap<&str, usize> = self.names.iter().map(String::as_str).zip(0..).collect();
        let (mut files, mut mates) = (Vec::new(), Vec::new());
        for p in people_in(dirs)? {
            let mate = index.get(p.name.as_str()).copied();
            mates.extend(std::iter::repeat_n(mate, p.files.len()));
            files.extend(p.files);
        }
        Ok((files, mates))
    }

    /// The templates and `probes` as a search takes them: as they are, or with `int8` each quantised by
    /// [`quantize_i8`].
    fn operands<'a>(&'a self, probes: &'a [f32], int8: bool, name: &dyn Fn(usize) -> String) -> Result<Operands<'a>> {
        ensure!(probes.len().is_multiple_of(self.dim), "{} probe values are not rows of {}", probes.len(), self.dim);
        if !int8 {
            return Ok(Operands::F32 { templates: &self.templates, probes });
        }
        let quantised = |rows: &[f32], what: &dyn Fn(usize) -> String| -> Result<Vec<i8>> {
            let mut out = vec![0i8; rows.len()];
            for (i, (x, q)) in rows.chunks_exact(self.dim).zip(out.chunks_exact_mut(self.dim)).enumerate() {
                quantize_i8(x, q).map_err(|e| anyhow!("{}: cannot be quantised: {e}", what(i)))?;
            }
            Ok(out)
        };
        Ok(Operands::I8 {
            templates: quantised(&self.templates, &|i| format!("the template of {}", self.names[i]))?,
            probes: quantised(probes, name)?,
        })
    }

    /// The gallery file's contents.
    pub fn to_file(&self) -> Result<TensorFile> {
        let meta = json!({
            "format": FORMAT, "version": VERSION, "names": self.names, "images": self.images,
            "model": self.model, "network": self.network, "weights": self.weights,
        });
        let mut f = TensorFile::new("gallery", meta);
        f.insert_f32("templates", &[self.len(), self.dim], self.templates.clone())?;
        Ok(f)
    }

    /// Writes the gallery file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.to_file()?.save(path)
    }

    /// Reads a gallery file, checking its format, version, sizes, unique names, and that every template is one
    /// the gallery can search (finite, not all zero).
    pub fn open(path: &Path) -> Result<Self> {
        let f = TensorFile::open(path)?;
        let m = &f.meta;
        let what = path.display();
        ensure!(m["format"] == FORMAT, "{what} is not a gallery file (written by `elasticface enroll`)");
        ensure!(
            m["version"].as_u64() == Some(VERSION),
            "{what}: gallery version {}, this build reads version {VERSION}",
            m["version"]
        );
        let text = |key: &str| -> Result<String> {
            m[key].as_str().map(str::to_string).ok_or_else(|| anyhow!("{what}: the manifest has no `{key}`"))
        };
        let names: Vec<String> = serde_json::from_value(m["names"].clone())
            .with_context(|| format!("{what}: the manifest's `names` is not a list of names"))?;
        let images: Vec<u64> = serde_json::from_value(m["images"].clone())
            .with_context(|| format!("{what}: the manifest's `images` is not a list of counts"))?;
        let t = f.get("templates")?;
        let (rows, dim) = match t.shape[..] {
            [rows, dim] => (rows, dim),
            _ => bail!("{what}: `templates` has shape {:?}, not (people, embedding)", t.shape),
        };
        ensure!(
            names.len() == rows && images.len() == rows && dim > 0,
            "{what}: {} names and {} image counts for {rows} templates of size {dim}",
            names.len(),
            images.len()
        );
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            ensure!(seen.insert(n), "{what}: {n:?} is enrolled twice");
        }
        let templates = f.f32("templates")?.to_vec();
        for (row, n) in templates.chunks_exact(dim).zip(&names) {
            f32::check_template(row).map_err(|e| anyhow!("{what}: the template of {n:?}: {e}"))?;
        }
        Ok(Self {
            names,
            images,
            dim,
            templates,
            model: text("model")?,
            network: text("network")?,
            weights: text("weights")?,
        })
    }

    /// Checks that embeddings of `backbone` (read from `model`) can be searched in this gallery `path`.
    pub fn check_model(&self, path: &Path, model: &Path, backbone: &Backbone) -> Result<()> {
        let weights = weights_fingerprint(backbone);
        ensure!(
            weights == self.weights && backbone.cfg.embedding == self.dim,
            "{} was enrolled with another model ({}, {}, weights {}); {} ({}, weights {weights}) embeds faces \
             differently: enrol the people again with it",
            path.display(),
            self.model,
            self.network,
            self.weights,
            model.display(),
            backbone.describe()
        );
        Ok(())
    }
}

/// Templates and probes as a search takes them.
enum Operands<'a> {
    F32 { templates: &'a [f32], probes: &'a [f32] },
    I8 { templates: Vec<i8>, probes: Vec<i8> },
}

/// 1:N measured on probes of known people ([`Gallery::evaluate`]): mated probes (their person is in the gallery)
/// and non-mated ones, scored by `-cosine` as a distance with the core's [`mate_rank`] (ties count against the
/// mate) and [`tpir_at_fpir`](elasticface_core::verify::tpir_at_fpir), as `eval` scores IJB's 1:N.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// Probes searched.
    pub probes: usize,
    /// Probes whose person the gallery holds.
    pub mated: usize,
    /// Probes whose person it does not.
    pub non_mated: usize,
    /// The identification rate of the mated probes at ranks 1, 5 and 10.
    pub rank: Vec<RankReport>,
    /// The TPIR at FPIR 1e-4 .. 1e-1.
    pub tpir_at_fpir: Vec<CosineTpir>,
}

impl Evaluation {
    /// The evaluation in words: the probes, the identification rates, then a line per FPIR.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "1:N on {} probes: {} mated (their person enrolled), {} non-mated",
            self.probes, self.mated, self.non_mated
        )];
        let ranks: Vec<String> = self
            .rank
            .iter()
            .map(|r| format!("rank {} {:.2}% ({} of {})", r.rank, 100.0 * r.rate, r.hits, self.mated))
            .collect();
        lines.push(format!("identification rate: {}", ranks.join(", ")));
        for t in &self.tpir_at_fpir {
            let line = match (t.tpir, t.fpir_reached) {
                (Some(tpir), Some(reached)) => {
                    let threshold = match t.threshold {
                        Some(c) => format!("--threshold {c}"),
                        None => "no threshold refuses the nearest non-mated probe".to_string(),
                    };
                    format!(
                        "TPIR at FPIR {:.0e}: {:.2}% (FPIR reached {:.2}%, {threshold})",
                        t.fpir,
                        100.0 * tpir,
                        100.0 * reached
                    )
                }
                _ => format!(
                    "TPIR at FPIR {:.0e}: n/a (takes at least {} non-mated probes)",
                    t.fpir,
                    (1.0 / t.fpir).round()
                ),
            };
            lines.push(line);
        }
        lines
    }
}

/// The TPIR at a target FPIR, with the cosine threshold that gives it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CosineTpir {
    /// The target false-positive identification rate (non-mated probes answered).
    pub fpir: f64,
    /// Mated probes whose person ranks first and is accepted / mated probes; `None` when the probes cannot resolve
    /// `fpir` (fewer than `1 / fpir` non-mated probes).
    pub tpir: Option<f64>,
    /// The `--threshold` (accepted at `cosine >= threshold`) that keeps to `fpir`: the next f32 above the cosine of
    /// the first non-mated probe it must refuse. `None` where `tpir` is, or where no cosine up to 1 refuses it.
    pub threshold: Option<f32>,
    /// The FPIR reached at that threshold (at most `fpir`).
    pub fpir_reached: Option<f64>,
}

/// Each probe against every template, on all cores: its mate's rank and `-cosine`, or the nearest `-cosine`.
fn mate_searches<T: Element + Sync>(
    dim: usize,
    templates: &[T],
    probes: &[T],
    mates: &[Option<usize>],
    name: &(dyn Fn(usize) -> String + Sync),
) -> Result<Vec<Searched>> {
    let mut searched = vec![Searched::NonMated { nearest: 0.0 }; mates.len()];
    fill_parallel(&mut searched, 1, |i, out| {
        let probe = &probes[i * dim..(i + 1) * dim];
        let named = |e: &dyn std::fmt::Display| anyhow!("{}: {e}", name(i));
        T::check_probe(probe).map_err(|e| named(&e))?;
        let dist = templates
            .chunks_exact(dim)
            .map(|t| T::similarity(probe, t).map(|c| -c))
            .collect::<Result<Vec<f32>, _>>()
            .map_err(|e| named(&e))?;
        out[0] = match mates[i] {
            Some(m) => Searched::Mated { dist: dist[m], rank: mate_rank(&dist, m).map_err(|e| named(&e))? },
            None => Searched::NonMated { nearest: dist.iter().copied().fold(f32::INFINITY, f32::min) },
        };
        Ok(())
    })?;
    Ok(searched)
}

/// The `top` candidates of each probe row by [`GalleryView::identify_into`], on one element type, the probes shared
/// out over all cores.
fn top_candidates<T: Element + Sync>(
    dim: usize,
    ids: &[u32],
    templates: &[T],
    probes: &[T],
    top: usize,
    name: &(dyn Fn(usize) -> String + Sync),
) -> Result<Vec<Vec<Match>>> {
    let view = GalleryView::new(dim, ids, templates).map_err(|e| anyhow!("gallery: {e}"))?;
    let (count, per) = (probes.len() / dim, top.min(ids.len()));
    if per == 0 {
        return Ok(vec![Vec::new(); count]);
    }
    let mut out = vec![Match { id: 0, cosine: 0.0 }; count * per];
    let written = fill_parallel(&mut out, per, |i, candidates| {
        let probe = &probes[i * dim..(i + 1) * dim];
        view.identify_into(probe, -1.0, candidates).map_err(|e| anyhow!("{}: {e}", name(i)))
    })?;
    Ok(out.chunks_exact(per).zip(written).map(|(c, n)| c[..n].to_vec()).collect())
}

/// The candidates of probes, and how they read.
#[derive(Clone, Debug)]
pub struct Found<'g> {
    /// The gallery searched.
    pub gallery: &'g Gallery,
    /// Probe names (their paths), in search order.
    pub probes: Vec<String>,
    /// Each probe's candidates, best first ([`Gallery::search`]).
    pub candidates: Vec<Vec<Match>>,
    /// The cosine from which a candidate is accepted (`cosine >= threshold`, as the core's gallery decides).
    pub threshold: f32,
}

impl Found<'_> {
    fn name(&self, m: &Match) -> &str {
        &self.gallery.names[m.id as usize]
    }

    /// Probes whose best candidate is accepted.
    pub fn identified(&self) -> usize {
        self.candidates.iter().filter(|c| c.first().is_some_and(|m| m.cosine >= self.threshold)).count()
    }

    /// A line a probe: `PROBE: NAME (cosine C)` where the best is accepted, else `PROBE: nobody at cosine >= T
    /// (nearest: NAME, C)`; then `; next: NAME C, ...` for the other candidates.
    pub fn lines(&self) -> Vec<String> {
        self.probes
            .iter()
            .zip(&self.candidates)
            .map(|(probe, cands)| {
                let Some((best, next)) = cands.split_first() else {
                    return format!("{probe}: nobody (the gallery is empty)");
                };
                let (name, c, t) = (self.name(best), best.cosine, self.threshold);
                let mut line = if c >= t {
                    format!("{probe}: {name} (cosine {c:.4})")
                } else {
                    format!("{probe}: nobody at cosine >= {t} (nearest: {name}, {c:.4})")
                };
                if !next.is_empty() {
                    let next: Vec<String> = next.iter().map(|m| format!("{} {:.4}", self.name(m), m.cosine)).collect();
                    line.push_str(&format!("; next: {}", next.join(", ")));
                }
                line
            })
            .collect()
    }

    /// CSV: a header `probe,rank,name,cosine,accepted`, then a row a candidate (rank from 1; the cosine in the
    /// shortest decimal that reads back as the same f32).
    pub fn csv(&self) -> String {
        let mut csv = String::from("probe,rank,name,cosine,accepted\n");
        for (probe, cands) in self.probes.iter().zip(&self.candidates) {
            let probe = csv_field(probe);
            for (rank, m) in cands.iter().enumerate() {
                let (name, accepted) = (csv_field(self.name(m)), m.cosine >= self.threshold);
                csv.push_str(&format!("{probe},{},{name},{},{accepted}\n", rank + 1, m.cosine));
            }
        }
        csv
    }

    /// JSON: a list of `{"probe", "candidates": [{"name", "cosine", "accepted"}, ...]}`.
    pub fn json(&self) -> serde_json::Value {
        let rows = self.probes.iter().zip(&self.candidates).map(|(probe, cands)| {
            let cands: Vec<_> = cands
                .iter()
                .map(|m| json!({"name": self.name(m), "cosine": m.cosine, "accepted": m.cosine >= self.threshold}))
                .collect();
            json!({"probe": probe, "candidates": cands})
        });
        serde_json::Value::Array(rows.collect())
    }
}

/// One field of a CSV line (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticface_core::embedding::{cosine, l2_normalize};

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn people_are_sub_folders_and_loose_images() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a/alice/2.jpg", "a/alice/1.PNG", "a/alice/x/3.jpeg", "a/bob.jpg", "a/notes.txt", "a/.hidden/1.jpg"] {
            touch(&d.join(f));
        }
        touch(&d.join("b/carol/1.png"));
        let people = list_people(&[d.join("a"), d.join("b")]).unwrap();
        let got: Vec<(&str, Vec<String>)> = people
            .iter()
            .map(|p| {
                let rel = p.files.iter().map(|f| f.strip_prefix(d).unwrap().display().to_string()).collect();
                (p.name.as_str(), rel)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("alice", vec!["a/alice/1.PNG".to_string(), "a/alice/2.jpg".into(), "a/alice/x/3.jpeg".into()]),
                ("bob", vec!["a/bob.jpg".into()]),
                ("carol", vec!["b/carol/1.png".into()]),
            ]
        );

        // The same name twice, across folders or as a folder and an image; a person without images; no one.
        touch(&d.join("c/bob/1.jpg"));
        let e = list_people(&[d.join("a"), d.join("c")]).unwrap_err().to_string();
        assert!(e.contains("two people named \"bob\"") && e.contains("bob.jpg"), "{e}");
        touch(&d.join("e/dave.png"));
        touch(&d.join("e/dave/1.png"));
        assert!(list_people(&[d.join("e")]).unwrap_err().to_string().contains("two people named \"dave\""));
        std::fs::create_dir_all(d.join("f/erin")).unwrap();
        let e = format!("{:#}", list_people(&[d.join("f")]).unwrap_err());
        assert!(e.contains("erin holds no .jpg"), "{e}");
        std::fs::create_dir_all(d.join("g")).unwrap();
        assert!(list_people(&[d.join("g")]).unwrap_err().to_string().contains("no people in"));
        assert!(list_people(&[d.join("a/bob.jpg")]).unwrap_err().to_string().contains("not a folder"));
    }

    fn gallery(dim: usize) -> Gallery {
        Gallery {
            names: vec![],
            images: vec![],
            dim,
            templates: vec![],
            model: "m.safetensors".into(),
            network: "net".into(),
            weights: "0123456789abcdef".into(),
        }
    }

    fn person(name: &str, images: usize) -> Person {
        Person { name: name.into(), files: (0..images).map(|i| PathBuf::from(format!("{name}/{i}.png"))).collect() }
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        l2_normalize(v, &mut out).unwrap();
        out
    }

    #[test]
    fn templates_are_normalised_sums_and_names_are_replaced_in_place() {
        let mut g = gallery(3);
        let (a0, a1, b0) = (unit(&[1.0, 0.0, 0.0]), unit(&[0.0, 1.0, 0.0]), unit(&[0.0, 0.6, 0.8]));
        let values = [a0.clone(), a1.clone(), b0.clone()].concat();
        let done = g
            .enroll(&[person("a", 2), person("b", 1)], &Embeddings { dim: 3, values, resized: 0, skipped: vec![] })
            .unwrap();
        assert_eq!(done, Enrolled { added: 2, replaced: 0 });
        assert_eq!(g.names, ["a", "b"]);
        assert_eq!(g.images, [2, 1]);
        // a: (a0 + a1) / |a0 + a1|, summed and normalised as the core does.
        let sum: Vec<f32> = a0.iter().zip(&a1).map(|(x, y)| x + y).collect();
        assert_eq!(g.templates[..3], unit(&sum)[..]);
        assert_eq!(g.templates[3..], b0[..]);

        // c is new, a again replaces its template where it was.
        let c0 = unit(&[0.0, 0.0, 1.0]);
        let values = [c0.clone(), b0.clone()].concat();
        let done = g
            .enroll(&[person("c", 1), person("a", 1)], &Embeddings { dim: 3, values, resized: 0, skipped: vec![] })
            .unwrap();
        assert_eq!(done, Enrolled { added: 1, replaced: 1 });
        assert_eq!(g.names, ["a", "b", "c"]);
        assert_eq!(g.images, [1, 1, 1]);
        assert_eq!(g.templates, [b0.clone(), b0.clone(), c0].concat());

        // Embeddings that do not fit the people are refused.
        let e =
            g.enroll(&[person("d", 2)], &Embeddings { dim: 3, values: b0, resized: 0, skipped: vec![] }).unwrap_err();
        assert!(e.to_string().contains("for 2 images"), "{e}");
    }

    #[test]
    fn people_are_removed_by_name_and_the_rest_keep_their_order() {
        let mut g = gallery(2);
        let values = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0]), unit(&[1.0, 1.0])].concat();
        let people = [person("a", 1), person("bé", 1), person("c", 1)];
        g.enroll(&people, &Embeddings { dim: 2, values, resized: 0, skipped: vec![] }).unwrap();
        assert_eq!(g.describe()[2..], ["  a   1 image", "  bé  1 image", "  c   1 image"]);
        let before = g.clone();
        assert!(g.remove(&["c".into(), "x".into()]).unwrap_err().to_string().contains("\"x\" is not in the gallery"));
        assert_eq!(g, before, "nothing removed on error");
        g.remove(&["a".into()]).unwrap();
        assert_eq!((g.names.clone(), g.images.clone()), (vec!["bé".to_string(), "c".into()], vec![1, 1]));
        assert_eq!(g.templates, before.templates[2..]);
        assert_eq!(g.describe()[0], "2 people, templates of 2 values");
    }

    #[test]
    fn searches_rank_by_the_cores_cosines_in_f32_and_int8() {
        let mut g = gallery(4);
        let t = [unit(&[1.0, 0.2, 0.0, 0.0]), unit(&[0.0, 1.0, 0.3, 0.0]), unit(&[0.1, 0.0, 0.0, 1.0])];
        let people = [person("a", 1), person("b", 1), person("c", 1)];
        g.enroll(&people, &Embeddings { dim: 4, values: t.concat(), resized: 0, skipped: vec![] }).unwrap();
        let probes = [unit(&[0.1, 0.9, 0.2, 0.1]), unit(&[0.9, 0.1, 0.0, 0.5])].concat();
        let found = g.search(&probes, 2, false, |i| format!("probe {i}")).unwrap();
        let ids = |f: &[Match]| f.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!((ids(&found[0]), ids(&found[1])), (vec![1, 0], vec![0, 2]));
        for (p, f) in probes.chunks_exact(4).zip(&found) {
            for m in f {
                assert_eq!(m.cosine, cosine(p, &t[m.id as usize]).unwrap());
            }
        }
        // More candidates than people: every one, once.
        assert_eq!(g.search(&probes, 9, false, |i| i.to_string()).unwrap()[0].len(), 3);
        // int8: the cosines of the quantised vectors, exact integer sums.
        let q = |v: &[f32]| {
            let mut out = vec![0i8; v.len()];
            quantize_i8(v, &mut out).unwrap();
            out
        };
        let found = g.search(&probes, 1, true, |i| i.to_string()).unwrap();
        let want = elasticface_core::embedding::cosine_i8(&q(&probes[..4]), &q(&t[1])).unwrap();
        assert_eq!((found[0][0].id, found[0][0].cosine), (1, want));
        // A probe that cannot be searched is named.
        let e = g.search(&[0.0; 4], 1, false, |i| format!("probe {i}.png")).unwrap_err();
        assert!(e.to_string().starts_with("probe 0.png:"), "{e}");
    }

    #[test]
    fn evaluation_ranks_mates_and_finds_the_threshold_of_each_fpir() {
        let at = |deg: f32| {
            let r = deg.to_radians();
            vec![r.cos(), r.sin()]
        };
        let mut g = gallery(2);
        g.enroll(
            &[person("a", 1), person("b", 1)],
            &Embeddings { dim: 2, values: [at(0.0), at(90.0)].concat(), resized: 0, skipped: vec![] },
        )
        .unwrap();
        // p0 (a's) nearest a; p1 (b's) nearer a than b; ten non-mated probes at 35..44 degrees, nearest a.
        let mut probes = [at(10.0), at(30.0)].concat();
        let mut mates = vec![Some(0), Some(1)];
        for k in 0..10 {
            probes.extend(at(35.0 + k as f32));
            mates.push(None);
        }
        let e = g.evaluate(&probes, &mates, false, |i| format!("probe {i}")).unwrap();
        assert_eq!((e.probes, e.mated, e.non_mated), (12, 2, 10));
        let rates: Vec<(usize, usize)> = e.rank.iter().map(|r| (r.rank, r.hits)).collect();
        assert_eq!(rates, [(1, 1), (5, 2), (10, 2)]);
        // FPIR 1e-1 admits one of ten non-mated probes: the threshold is just above the second nearest's cosine
        // (36 degrees), so the first (35) is answered, and p0 (10 degrees, its mate first) identified.
        let t = e.tpir_at_fpir.iter().find(|t| t.fpir == 1e-1).unwrap();
        let second = cosine(&probes[6..8], &g.templates[..2]).unwrap();
        assert_eq!((t.tpir, t.fpir_reached, t.threshold), (Some(0.5), Some(0.1), Some(second.next_up())));
        // Below 1e-1, ten non-mated probes resolve nothing.
        assert!(e.tpir_at_fpir.iter().filter(|t| t.fpir < 1e-1).all(|t| t.tpir.is_none() && t.threshold.is_none()));
        let lines = e.lines();
        assert_eq!(
            lines[1],
            "identification rate: rank 1 50.00% (1 of 2), rank 5 100.00% (2 of 2), rank 10 100.00% (2 of 2)"
        );
        assert!(lines
            .contains(&format!("TPIR at FPIR 1e-1: 50.00% (FPIR reached 10.00%, --threshold {})", second.next_up())));
        assert!(lines.contains(&"TPIR at FPIR 1e-2: n/a (takes at least 100 non-mated probes)".to_string()));

        // int8: the same ranks here; the threshold is above an int8 cosine.
        let q = g.evaluate(&probes, &mates, true, |i| i.to_string()).unwrap();
        assert_eq!(q.rank.iter().map(|r| r.hits).collect::<Vec<_>>(), [1, 2, 2]);
        assert_eq!(q.tpir_at_fpir[3].tpir, Some(0.5));
        // Probes of people none of whom is enrolled measure nothing.
        let e = g.evaluate(&probes[..2], &[None], false, |i| i.to_string()).unwrap_err();
        assert!(e.to_string().contains("none of the probes' people is in the gallery"), "{e}");
    }

    #[test]
    fn files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        let mut g = gallery(2);
        let values = [unit(&[1.0, 1.0]), unit(&[1.0, -2.0])].concat();
        g.enroll(&[person("a,\"x\"", 1), person("b", 1)], &Embeddings { dim: 2, values, resized: 0, skipped: vec![] })
            .unwrap();
        g.save(&path).unwrap();
        assert_eq!(Gallery::open(&path).unwrap(), g);

        let mut f = g.to_file().unwrap();
        f.meta["names"] = json!(["a", "a"]);
        f.save(&path).unwrap();
        assert!(Gallery::open(&path).unwrap_err().to_string().contains("\"a\" is enrolled twice"));
        let mut f = g.to_file().unwrap();
        f.meta["version"] = json!(2);
        f.save(&path).unwrap();
        assert!(Gallery::open(&path).unwrap_err().to_string().contains("gallery version 2"));
        let mut f = g.to_file().unwrap();
        f.insert_f32("templates", &[2, 2], vec![1.0, 0.0, 0.0, 0.0]).unwrap();
        f.save(&path).unwrap();
        let e = Gallery::open(&path).unwrap_err().to_string();
        assert!(e.contains("the template of \"b\""), "{e}");
        TensorFile::new("x", json!({"format": "elasticface-embeddings"})).save(&path).unwrap();
        assert!(Gallery::open(&path).unwrap_err().to_string().contains("is not a gallery file"));
    }

    #[test]
    fn found_candidates_read_as_lines_csv_and_json() {
        let mut g = gallery(2);
        g.names = vec!["ann".into(), "b,\"o\"".into()];
        let found = Found {
            gallery: &g,
            probes: vec!["p1.png".into(), "p 2.png".into(), "p3.png".into()],
            candidates: vec![
                vec![Match { id: 1, cosine: 0.75 }, Match { id: 0, cosine: 0.125 }],
                vec![Match { id: 0, cosine: 0.25 }],
                vec![],
            ],
            threshold: 0.5,
        };
        assert_eq!(found.identified(), 1);
        assert_eq!(
            found.lines(),
            [
                "p1.png: b,\"o\" (cosine 0.7500); next: ann 0.1250",
                "p 2.png: nobody at cosine >= 0.5 (nearest: ann, 0.2500)",
                "p3.png: nobody (the gallery is empty)",
            ]
        );
        assert_eq!(
            found.csv(),
            "probe,rank,name,cosine,accepted\np1.png,1,\"b,\"\"o\"\"\",0.75,true\np1.png,2,ann,0.125,false\n\
             p 2.png,1,ann,0.25,false\n"
        );
        let j = found.json();
        assert_eq!(j[0]["candidates"][0], json!({"name": "b,\"o\"", "cosine": 0.75, "accepted": true}));
        assert_eq!((j[1]["probe"].as_str(), j[2]["candidates"].as_array().map(Vec::len)), (Some("p 2.png"), Some(0)));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
