//! IJB-B and IJB-C 1:N identification, where a set has the 1:N lists (insightface's updated meta files, from NIST's
//! protocol: `meta/ijbc_1N_gallery_G1.csv`, `_G2.csv`, `ijbc_1N_probe_mixed.csv`; `S1`, `S2` for IJB-B).
//!
//! As insightface's `ijb_evals.py` measures it (NIST's open-set protocol): templates as for 1:1 (step 2 of
//! [`super`]); every probe template
//! searches each gallery on its own (`2 - 2 cos` to each gallery template); a probe whose subject the gallery holds
//! is mated, the others are non-mated for that gallery. Per gallery: the identification rate at rank 1, 5 and 10
//! over the mated probes ([`mate_rank`]: ties count against the mate), and the TPIR at FPIR 1e-4 .. 1e-1
//! ([`tpir_at_fpir`]: a mated probe counts when its mate ranks first below the threshold; the threshold admits
//! `floor(FPIR x non-mated)` non-mated probes whose nearest template lies below it). Over the galleries: rank hits
//! summed over the mated probes of all galleries (each probe is mated in one of IJB's galleries, so this is
//! `ijb_evals.py`'s division by the probes), and the mean TPIR. `ijb_evals.py` takes its threshold one non-mated
//! probe stricter (the `floor(FPIR x non-mated)`-th largest score, exclusive), and at FPIRs its probes cannot
//! resolve still gives a figure (at FPIR 0); here those are `n/a`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use elasticface_core::verify::{mate_rank, tpir_at_fpir};
use serde::Serialize;

use super::{distance, field, read_text};
use crate::data::decode::fill_parallel;

/// The false-positive identification rates 1:N results are given at.
pub const IJB_FPIRS: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];

/// The ranks 1:N identification rates are given at.
pub const IJB_RANKS: [usize; 3] = [1, 5, 10];

/// A set's 1:N lists: galleries of enrolled templates and the probe templates that search them.
#[derive(Clone, Debug)]
pub struct Search {
    /// The galleries, by name (`G1`, `G2`; `S1`, `S2` for IJB-B), in name order.
    pub galleries: Vec<Gallery>,
    /// The probe templates `(template, subject)`, ascending by template.
    pub probes: Vec<(u32, u32)>,
}

/// One 1:N gallery.
#[derive(Clone, Debug)]
pub struct Gallery {
    /// Its name, from its file (`ijbc_1N_gallery_G1.csv`: `G1`).
    pub name: String,
    /// Its templates `(template, subject)`, ascending by template; one per subject.
    pub templates: Vec<(u32, u32)>,
}

/// The `(template, subject)` pairs a 1:N list names, ascending by template, one per template: a CSV file with a
/// row per face (`TEMPLATE_ID,SUBJECT_ID,...`) under an optional header. Errors name the file and line of a
/// malformed row, a template without faces in `faces_file`, and a template given two subjects.
fn subject_templates(path: &Path, known: &HashSet<u32>, faces_file: &Path) -> Result<Vec<(u32, u32)>> {
    let text = read_text(path)?;
    let mut subject_of: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = l.split(',').map(|f| f.trim().trim_matches('"')).collect();
        if fields.iter().all(|f| f.is_empty()) || (line == 1 && fields[0].parse::<u32>().is_err()) {
            continue; // a blank line, or the header (TEMPLATE_ID,SUBJECT_ID,FILENAME,...)
        }
        let template: u32 = field(&fields, 0, path, line, "template id")?;
        let subject: u32 = field(&fields, 1, path, line, "subject id")?;
        ensure!(
            known.contains(&template),
            "{} line {line}: template {template} has no face in {}",
            path.display(),
            faces_file.display()
        );
        let (first, first_line) = *subject_of.entry(template).or_insert((subject, line));
        ensure!(
            first == subject,
            "{} line {line}: template {template} is subject {subject} here and {first} on line {first_line}",
            path.display()
        );
    }
    ensure!(!subject_of.is_empty(), "{} lists no template", path.display());
    Ok(subject_of.into_iter().map(|(t, (s, _))| (t, s)).collect())
}

impl Search {
    /// The 1:N lists of set `prefix` in `meta`, if it has them: `<prefix>_1N_probe_mixed.csv` and every
    /// `<prefix>_1N_gallery_<NAME>.csv`. Probes without a gallery, or galleries without probes, are an error (a
    /// set copied in part); so is a gallery with two templates of one subject or with no mated probe.
    pub(super) fn open(meta: &Path, prefix: &str, known: &HashSet<u32>, faces_file: &Path) -> Result<Option<Self>> {
        let probe_file = meta.join(format!("{prefix}_1N_probe_mixed.csv"));
        let gallery_prefix = format!("{prefix}_1N_gallery_");
        let mut gallery_files = Vec::new();
        for entry in std::fs::read_dir(meta).with_context(|| format!("cannot read {}", meta.display()))? {
            let path = entry.with_context(|| format!("cannot read {}", meta.display()))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(g) = name.strip_prefix(&gallery_prefix).and_then(|r| r.strip_suffix(".csv")) {
                gallery_files.push((g.to_string(), path.clone()));
            }
        }
        gallery_files.sort();
        match (probe_file.is_file(), gallery_files.is_empty()) {
            (false, true) => return Ok(None),
            (false, false) => bail!(
                "{}: the 1:N galleries ({}) need their probes, {}",
                meta.display(),
                gallery_files.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>().join(", "),
                probe_file.display()
            ),
            (true, true) => {
                bail!("{}: the 1:N probes need a gallery, {gallery_prefix}<NAME>.csv", probe_file.display())
            }
            (true, false) => {}
        }
        let probes = subject_templates(&probe_file, known, faces_file)?;
        let probe_subjects: HashSet<u32> = probes.iter().map(|&(_, s)| s).collect();
        let mut galleries = Vec::with_capacity(gallery_files.len());
        for (name, path) in gallery_files {
            let templates = subject_templates(&path, known, faces_file)?;
            let mut template_of: HashMap<u32, u32> = HashMap::new();
            for &(template, subject) in &templates {
                if let Some(other) = template_of.insert(subject, template) {
                    bail!(
                        "{}: subject {subject} has templates {other} and {template}; a gallery holds one per subject",
                        path.display()
                    );
                }
            }
            ensure!(
                templates.iter().any(|(_, s)| probe_subjects.contains(s)),
                "{}: no probe of {} is of a subject this gallery holds",
                path.display(),
                probe_file.display()
            );
            galleries.push(Gallery { name, templates });
        }
        Ok(Some(Self { galleries, probes }))
    }
}

/// An identification rate at a rank.
#[derive(Clone, Debug, Serialize)]
pub struct RankReport {
    /// The rank `k`.
    pub rank: usize,
    /// Mated probes whose mate ranks at most `k`.
    pub hits: usize,
    /// `hits` / mated probes.
    pub rate: f64,
}

impl RankReport {
    /// `hits` of `mated` probes at rank `rank`.
    fn of(rank: usize, hits: usize, mated: usize) -> Self {
        Self { rank, hits, rate: hits as f64 / mated as f64 }
    }
}

/// The TPIR at a target FPIR.
#[derive(Clone, Debug, Serialize)]
pub struct TpirReport {
    /// The target false-positive identification rate.
    pub fpir: f64,
    /// The true-positive identification rate; `None` when the probes cannot resolve `fpir` (fewer than `1 / fpir`
    /// non-mated probes, in some gallery for a mean).
    pub tpir: Option<f64>,
    /// The distance threshold (a search answers when its nearest entry lies below it; for IJB a squared distance,
    /// `2 - 2 cos`); `None` for a mean over galleries.
    pub threshold: Option<f32>,
    /// The FPIR reached at that threshold (at most `fpir`); for a mean, the mean.
    pub fpir_reached: Option<f64>,
}

/// What one gallery measured.
#[derive(Clone, Debug, Serialize)]
pub struct GalleryReport {
    /// Its name (`G1`).
    pub name: String,
    /// Templates enrolled.
    pub templates: usize,
    /// What its probes' searches measured (in the JSON, beside the name: `mated`, `non_mated`, `rank`,
    /// `tpir_at_fpir`).
    #[serde(flatten)]
    pub scores: Scores,
}

/// What 1:N identification measured: each gallery, then over the galleries.
#[derive(Clone, Debug, Serialize)]
pub struct SearchReport {
    /// Probe templates.
    pub probes: usize,
    /// Each gallery, in name order.
    pub galleries: Vec<GalleryReport>,
    /// Over the galleries: rank hits and mated probes summed.
    pub rank: Vec<RankReport>,
    /// Over the galleries: the mean TPIR.
    pub tpir_at_fpir: Vec<TpirReport>,
}

impl SearchReport {
    /// The mean TPIR at `fpir` over the galleries, when it was measured and could be resolved.
    pub fn tpir(&self, fpir: f64) -> Option<f64> {
        self.tpir_at_fpir.iter().find(|t| t.fpir == fpir).and_then(|t| t.tpir)
    }
}

/// What one probe's search of a gallery found.
#[derive(Clone, Copy, Debug)]
pub enum Searched {
    /// The gallery holds the probe's subject: the distance to its mate and the mate's rank ([`mate_rank`]).
    Mated {
        /// The distance to the mate.
        dist: f32,
        /// The mate's rank, from 1.
        rank: usize,
    },
    /// It does not: the distance to the nearest entry.
    NonMated {
        /// The distance to the nearest entry.
        nearest: f32,
    },
}

/// The 1:N figures of one gallery's searches.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    /// Probes whose subject the gallery holds.
    pub mated: usize,
    /// Probes whose subject it does not hold.
    pub non_mated: usize,
    /// The identification rate at each of [`IJB_RANKS`].
    pub rank: Vec<RankReport>,
    /// The TPIR at each of [`IJB_FPIRS`], with the distance threshold.
    pub tpir_at_fpir: Vec<TpirReport>,
}

/// The identification rates and TPIRs of the searches of one gallery (`what` names it in errors). Distances are
/// any measure where nearer is smaller (`2 - 2 cos` for IJB); the thresholds are in that measure.
pub fn score_searches(searched: &[Searched], what: &str) -> Result<Scores> {
    let (mut mated, mut first, mut ranks, mut non_mated) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in searched {
        match *s {
            Searched::Mated { dist, rank } => {
                mated.push(dist);
                first.push(rank == 1);
                ranks.push(rank);
            }
            Searched::NonMated { nearest } => non_mated.push(nearest),
        }
    }
    let rank = IJB_RANKS
        .iter()
        .map(|&k| {
            let hits = ranks.iter().filter(|&&r| r <= k).count();
            RankReport::of(k, hits, ranks.len())
        })
        .collect();
    let mut scratch = vec![0.0; non_mated.len()];
    let tpir_at_fpir = IJB_FPIRS
        .iter()
        .map(|&fpir| {
            let t = tpir_at_fpir(&mated, &first, &non_mated, fpir, &mut scratch)
                .map_err(|e| anyhow!("{what}: TPIR at FPIR {fpir}: {e}"))?;
            Ok(TpirReport {
                fpir,
                tpir: t.map(|t| t.tpir),
                threshold: t.map(|t| t.threshold),
                fpir_reached: t.map(|t| t.fpir),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Scores { mated: mated.len(), non_mated: non_mated.len(), rank, tpir_at_fpir })
}

/// Every probe searches `gallery` (template features `(T, D)`, `index` from template id to row), on all cores.
fn search_gallery(
    features: &[f32],
    dim: usize,
    index: &HashMap<u32, usize>,
    gallery: &Gallery,
    probes: &[(u32, u32)],
) -> Result<GalleryReport> {
    let row = |t: u32| -> Result<&[f32]> {
        let i = *index.get(&t).ok_or_else(|| anyhow!("template {t} has no face"))?;
        Ok(&features[i * dim..(i + 1) * dim])
    };
    let enrolled = gallery.templates.iter().map(|&(t, _)| row(t)).collect::<Result<Vec<_>>>()?;
    let mate_of: HashMap<u32, usize> = gallery.templates.iter().enumerate().map(|(j, &(_, s))| (s, j)).collect();
    let mut searched = vec![Searched::NonMated { nearest: 0.0 }; probes.len()];
    fill_parallel(&mut searched, 1, |p, out| {
        let (template, subject) = probes[p];
        let probe = row(template)?;
        let dist: Vec<f32> = enrolled.iter().map(|g| distance(probe, g)).collect();
        out[0] = match mate_of.get(&subject) {
            Some(&mate) => Searched::Mated {
                dist: dist[mate],
                rank: mate_rank(&dist, mate).map_err(|e| anyhow!("probe template {template}: {e}"))?,
            },
            None => Searched::NonMated { nearest: dist.iter().copied().fold(f32::INFINITY, f32::min) },
        };
        Ok(())
    })?;
    let scores = score_searches(&searched, &format!("gallery {}", gallery.name))?;
    Ok(GalleryReport { name: gallery.name.clone(), templates: gallery.templates.len(), scores })
}

/// 1:N identification of a set's probes in each of its galleries (template features `(T, D)`).
pub(super) fn score_search(
    search: &Search,
    features: &[f32],
    dim: usize,
    index: &HashMap<u32, usize>,
) -> Result<SearchReport> {
    let galleries = search
        .galleries
        .iter()
        .map(|g| search_gallery(features, dim, index, g, &search.probes))
        .collect::<Result<Vec<_>>>()?;
    let mated: usize = galleries.iter().map(|g| g.scores.mated).sum();
    let rank = IJB_RANKS
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let hits = galleries.iter().map(|g| g.scores.rank[i].hits).sum();
            RankReport::of(k, hits, mated)
        })
        .collect();
    let n = galleries.len() as f64;
    let tpir_at_fpir = IJB_FPIRS
        .iter()
        .enumerate()
        .map(|(i, &fpir)| {
            let each: Option<Vec<(f64, f64)>> = galleries
                .iter()
                .map(|g| Some((g.scores.tpir_at_fpir[i].tpir?, g.scores.tpir_at_fpir[i].fpir_reached?)))
                .collect();
            TpirReport {
                fpir,
                tpir: each.as_ref().map(|e| e.iter().map(|v| v.0).sum::<f64>() / n),
                threshold: None,
                fpir_reached: each.as_ref().map(|e| e.iter().map(|v| v.1).sum::<f64>() / n),
            }
        })
        .collect();
    Ok(SearchReport { probes: search.probes.len(), galleries, rank, tpir_at_fpir })
}
