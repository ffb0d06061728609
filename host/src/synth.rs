//! `elasticface synth`: writes the procedural identity set ([`crate::data::faces`]) in the formats real face data
//! comes in, so that everything downstream (the trainer, the evaluator) reads it with the same code as a real set:
//!
//! - `train/`: insightface RecordIO (`train.rec`, `train.idx`, `property`) of identities `0..ids`, JPEG;
//! - `val/`: RecordIO of the held-out identities `ids..ids + val_ids` (labelled, for `train --val`);
//! - `val.bin`: an insightface verification pack of pairs of held-out identities, half of them the same person,
//!   pickled as Python 2's protocol 2 writes insightface's published packs;
//! - `ijb/`: the held-out identities as an IJB set ([`crate::eval::ijb`]): two templates per identity (the first
//!   half of its samples, the second half), frames of one media in pairs, each face turned, scaled and moved
//!   into a larger loose crop with its five landmarks and a detector score, and the pairs of templates up to
//!   1,000 apart (every pair for up to 500 identities); and 1:N lists, the first templates of the even identities
//!   as gallery `G1`, of the odd ones as `G2`, the second templates as probes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{ensure, Context, Result};
use elasticface_core::align::{reference_landmarks, warp_affine, Similarity};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::Philox4x32;
use indicatif::{ProgressBar, ProgressStyle};
use rand_core::RngCore;
use serde::Serialize;

use crate::data::decode::encode_jpeg;
use crate::data::faces::render;
use crate::data::{RecordIoPaths, RecordIoWriter};
use crate::eval::bin::write_python2_pack;
use crate::streams::{SYNTH_IJB_STREAM, SYNTH_PAIRS_STREAM};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SynthConfig {
    /// Output folder.
    pub out: PathBuf,
    /// Training identities.
    pub ids: usize,
    /// Images per training identity.
    pub per_id: usize,
    /// Held-out identities.
    pub val_ids: usize,
    /// Images per held-out identity.
    pub val_per_id: usize,
    /// Pairs in `val.bin`.
    pub val_pairs: usize,
    /// Image height and width.
    pub size: usize,
    /// Seed of everything.
    pub seed: u64,
    /// JPEG quality.
    pub quality: u8,
}

/// The version of what the generator makes of its settings, bumped whenever the same settings give other files
/// (2: each kind of draw in its own Philox streams, [`crate::streams`]). The demo keeps it in its data folder's
/// manifest, so that a folder made by another version is made again.
pub const GENERATOR_VERSION: u32 = 2;

/// Where the files went.
#[derive(Clone, Debug, Serialize)]
pub struct SynthOutput {
    /// RecordIO of the training identities.
    pub train: PathBuf,
    /// RecordIO of the held-out identities.
    pub val: PathBuf,
    /// Verification pack of held-out pairs.
    pub val_bin: PathBuf,
    /// IJB set of the held-out identities.
    pub ijb: PathBuf,
    /// Images written in all.
    pub images: usize,
}

/// Renders and encodes the `(identity, sample)` images in order, on all cores.
fn render_all(cfg: &SynthConfig, items: &[(u64, u64)], bar: &ProgressBar) -> Result<Vec<Vec<u8>>> {
    let shape = ImageShape { h: cfg.size, w: cfg.size };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Result<Vec<u8>>>> = (0..items.len()).map(|_| None).collect();
    let chunks: Vec<Vec<(usize, Result<Vec<u8>>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(id, k)) = items.get(i) else { break };
                        done.push((i, encode_jpeg(&render(cfg.seed, id, k, shape), shape, cfg.quality)));
                        bar.inc(1);
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("renderer thread")).collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter().map(|r| r.expect("every item rendered")).collect()
}

fn write_recordio(dir: &Path, classes: usize, shape: ImageShape, labelled: &[(u32, Vec<u8>)]) -> Result<()> {
    let mut w = RecordIoWriter::create(&RecordIoPaths::in_dir(dir), classes, shape)?;
    for (label, jpeg) in labelled {
        w.add_image(*label, jpeg)?;
    }
    w.finish()?;
    Ok(())
}

/// Generates the set.
pub fn synth(cfg: &SynthConfig, quiet: bool) -> Result<SynthOutput> {
    ensure!(cfg.ids >= 2 && cfg.per_id >= 2, "need at least 2 identities with 2 images each");
    ensure!(cfg.val_ids >= 2 && cfg.val_per_id >= 2, "need at least 2 held-out identities with 2 images each");
    ensure!(
        cfg.size >= 16 && cfg.size.is_multiple_of(16),
        "image size must be a multiple of 16 (the network needs it)"
    );
    let shape = ImageShape { h: cfg.size, w: cfg.size };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;

    // Pairs of held-out samples: alternately the same identity (two of its samples) and two identities.
    let mut rng = Philox4x32::new(cfg.seed, SYNTH_PAIRS_STREAM);
    let mut pick = |n: usize| rng.next_u64() % n as u64;
    let (vi, vk) = (cfg.val_ids, cfg.val_per_id);
    let mut pairs = Vec::with_capacity(cfg.val_pairs);
    for p in 0..cfg.val_pairs {
        let a = (pick(vi), pick(vk));
        let b = if p % 2 == 0 {
            (a.0, (a.1 + 1 + pick(vk - 1)) % vk as u64)
        } else {
            ((a.0 + 1 + pick(vi - 1)) % vi as u64, pick(vk))
        };
        pairs.push((a, b, p % 2 == 0));
    }

    let mut items: Vec<(u64, u64)> = Vec::new();
    for id in 0..cfg.ids as u64 {
        items.extend((0..cfg.per_id as u64).map(|k| (id, k)));
    }
    let first_val = cfg.ids as u64;
    for id in 0..vi as u64 {
        items.extend((0..vk as u64).map(|k| (first_val + id, k)));
    }
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(items.len() as u64) };
    bar.set_style(ProgressStyle::with_template("rendering {bar:30} {pos}/{len} [{eta}]").expect("valid template"));
    let jpegs = render_all(cfg, &items, &bar)?;
    bar.finish_and_clear();

    let (train_items, val_items) = jpegs.split_at(cfg.ids * cfg.per_id);
    let labelled = |items: &[Vec<u8>], per: usize| -> Vec<(u32, Vec<u8>)> {
        items.iter().enumerate().map(|(i, j)| ((i / per) as u32, j.clone())).collect()
    };
    let train = cfg.out.join("train");
    let val = cfg.out.join("val");
    write_recordio(&train, cfg.ids, shape, &labelled(train_items, cfg.per_id))?;
    write_recordio(&val, vi, shape, &labelled(val_items, vk))?;

    let image = |(id, k): (u64, u64)| &val_items[(id as usize) * vk + k as usize];
    let mut bins: Vec<Vec<u8>> = Vec::with_capacity(2 * pairs.len());
    let mut issame = Vec::with_capacity(pairs.len());
    for &(a, b, same) in &pairs {
        bins.push(image(a).clone());
        bins.push(image(b).clone());
        issame.push(same);
    }
    let val_bin = cfg.out.join("val.bin");
    let bytes = write_python2_pack(&bins, &issame);
    let mut f = std::fs::File::create(&val_bin).with_context(|| format!("cannot create {}", val_bin.display()))?;
    f.write_all(&bytes).with_context(|| format!("cannot write {}", val_bin.display()))?;
    let ijb = cfg.out.join("ijb");
    let crops = write_ijb(cfg, &ijb, first_val)?;
    Ok(SynthOutput { train, val, val_bin, ijb, images: jpegs.len() + crops })
}

/// Writes the held-out identities `first..first + val_ids` as an IJB set in `dir` (see the module documentation);
/// returns the number of crops written.
fn write_ijb(cfg: &SynthConfig, dir: &Path, first: u64) -> Result<usize> {
    let shape = ImageShape { h: cfg.size, w: cfg.size };
    // The loose crops: twice the aligned size, as detectors' crops hold the face with its surroundings.
    let crop = ImageShape { h: 2 * cfg.size, w: 2 * cfg.size };
    let (crops, meta) = (dir.join("loose_crop"), dir.join("meta"));
    for d in [&crops, &meta] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut rng = Philox4x32::new(cfg.seed, SYNTH_IJB_STREAM);
    let mut uniform = |lo: f64, hi: f64| lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let reference = reference_landmarks(shape);
    let (mut tid_mid, mut five) = (String::new(), String::new());
    // The 1:N lists, NIST's columns (a row per face): galleries G1 (even identities), G2 (odd ones), probes.
    let header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n";
    let mut lists = [header.to_string(), header.to_string(), header.to_string()];
    let half = cfg.val_per_id.div_ceil(2);
    for id in 0..cfg.val_ids as u64 {
        for k in 0..cfg.val_per_id as u64 {
            let (template, media) = (1 + 2 * id + u64::from(k >= half as u64), 1 + id * cfg.val_per_id as u64 + k / 2);
            // The face turned by up to 0.3 rad, scaled 1-1.6x about its centre, moved by up to an eighth.
            let (angle, scale) = (uniform(-0.3, 0.3), uniform(1.0, 1.6));
            // libm's, not the platform's: the same bits on every machine.
            let (a, b) = (scale * libm::cos(angle), scale * libm::sin(angle));
            let c = cfg.size as f64 / 2.0;
            let (cx, cy) = (cfg.size as f64 + uniform(-c / 4.0, c / 4.0), cfg.size as f64 + uniform(-c / 4.0, c / 4.0));
            let m = Similarity { a, b, tx: cx - (a * c - b * c), ty: cy - (b * c + a * c) };
            let mut pixels = vec![0u8; crop.len()];
            warp_affine(&render(cfg.seed, first + id, k, shape), shape, &m, &mut pixels, crop)?;
            let name = format!("{}.jpg", id * cfg.val_per_id as u64 + k + 1);
            let path = crops.join(&name);
            std::fs::write(&path, encode_jpeg(&pixels, crop, cfg.quality)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            tid_mid.push_str(&format!("{name} {template} {media}\n"));
            let list = if k >= half as u64 { 2 } else { (id % 2) as usize };
            lists[list].push_str(&format!("{template},{},{name}\n", id + 1));
            five.push_str(&name);
            for p in reference {
                // A detector's landmarks: where the reference points went, within half a pixel.
                let [x, y] = m.apply([f64::from(p[0]), f64::from(p[1])]);
                five.push_str(&format!(" {:.3} {:.3}", x + uniform(-0.5, 0.5), y + uniform(-0.5, 0.5)));
            }
            five.push_str(&format!(" {:.4}\n", uniform(0.5, 1.0)));
        }
    }
    // Every pair of templates up to 1,000 apart: all of them for up to 500 identities, and never more than 1,000
    // pairs a template (both of an identity's templates are neighbours, so every same pair is in).
    let mut pairs = String::new();
    let templates = 2 * cfg.val_ids as u64;
    for t1 in 1..=templates {
        for t2 in t1 + 1..=templates.min(t1 + 1000) {
            pairs.push_str(&format!("{t1} {t2} {}\n", u8::from((t1 - 1) / 2 == (t2 - 1) / 2)));
        }
    }
    let [g1, g2, probes] = lists;
    for (file, text) in [
        ("ijb_face_tid_mid.txt", tid_mid),
        ("ijb_name_5pts_score.txt", five),
        ("ijb_template_pair_label.txt", pairs),
        ("ijb_1N_gallery_G1.csv", g1),
        ("ijb_1N_gallery_G2.csv", g2),
        ("ijb_1N_probe_mixed.csv", probes),
    ] {
        let path = meta.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(cfg.val_ids * cfg.val_per_id)
}
