//! `elasticface eval --ijb`: IJB-B/C 1:1 verification and 1:N identification. The protocol's arithmetic against
//! numpy's (`gen_ijb.py`), a synthetic set (`elasticface synth`'s `ijb/`) read, aligned and scored end to end against
//! an independent computation from the core, and malformed sets named by file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use elasticface::commands::{DeviceArgs, EvalArgs, NetworkArgs};
use elasticface::data::decode::encode_png;
use elasticface::data::faces::render;
use elasticface::eval::ijb::{score_set, Face, Gallery, IjbSet, Search, Templates, IJB_FARS, IJB_FPIRS, IJB_RANKS};
use elasticface::eval::suite;
use elasticface::synth::{synth, SynthConfig};
use elasticface::train::run::Device;
use elasticface_core::embedding::squared_l2;
use elasticface_core::nn::ImageShape;
use elasticface_core::verify::{mate_rank, tar_at_far};
use elasticface_tests::{core_flip_embeddings, reference_dir, save_model, tiny_backbone, Stopping};

/// The template features, pair scores and TARs of `gen_ijb.py` (numpy, f64, insightface's steps) from the same
/// face embeddings, and its 1:N ranks and TPIRs. Tolerances: template features and distances within 1e-6 (f32
/// results of f64 sums that differ in order: the project weights each face by 1/(faces of its media), numpy
/// averages then adds; both round once to f32); TAR, ranks and TPIR exactly (no same pair lies within 1e-6 of a
/// threshold here, and no two gallery templates within 1e-6 of a probe's mate).
#[test]
fn the_protocol_matches_numpy() {
    let text = std::fs::read_to_string(reference_dir().join("ijb_protocol.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    assert_eq!(r["dim"], 8);
    let faces: Vec<Face> = r["faces"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, f)| Face {
            file: format!("{i}.jpg"),
            template: f["template"].as_u64().unwrap() as u32,
            media: f["media"].as_u64().unwrap() as u32,
            landmarks: [[0.0; 2]; 5],
            score: f["score"].as_f64().unwrap() as f32,
        })
        .collect();
    let pairs = r["pairs"].as_array().unwrap();
    let subject_templates = |v: &serde_json::Value| -> Vec<(u32, u32)> {
        v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32)).collect()
    };
    let numpy_search = &r["search"];
    let galleries = ["G1", "G2"]
        .map(|g| Gallery { name: g.into(), templates: subject_templates(&numpy_search["galleries"][g]["templates"]) });
    let set = IjbSet {
        name: "NUMPY".into(),
        root: PathBuf::new(),
        faces,
        pairs: (
            pairs.iter().map(|p| p[0].as_u64().unwrap() as u32).collect(),
            pairs.iter().map(|p| p[1].as_u64().unwrap() as u32).collect(),
            pairs.iter().map(|p| p[2].as_u64().unwrap() == 1).collect(),
        ),
        search: Some(Search { galleries: galleries.to_vec(), probes: subject_templates(&numpy_search["probes"]) }),
    };
    // Step 1 as `embed_templates` does it, from the given embeddings: (e + e_flip) * score in f32.
    let mut templates = Templates::new(&set);
    for (i, (e, f)) in r["e"].as_array().unwrap().iter().zip(r["e_flip"].as_array().unwrap()).enumerate() {
        let feature: Vec<f32> = f32s(e).iter().zip(f32s(f)).map(|(a, b)| (a + b) * set.faces[i].score).collect();
        templates.add(i, &feature).unwrap();
    }
    let ids: Vec<u32> = r["template_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(templates.ids, ids, "templates in ascending id order");
    let want: Vec<f32> = r["template_features"].as_array().unwrap().iter().flat_map(f32s).collect();
    let got = templates.features().unwrap();
    let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "template features: {worst:e}");

    let report = score_set(&set, &templates).unwrap();
    assert_eq!((report.faces, report.templates, report.pairs, report.same_pairs), (309, 80, 3160, 40));
    let cos = f32s(&r["cos"]);
    let worst = report.dist.iter().zip(&cos).map(|(d, c)| (d - (2.0 - 2.0 * c)).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "distances: {worst:e}");
    // The keys are Python's repr of each FAR.
    let keys = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"];
    assert_eq!(report.tar_at_far.iter().map(|t| t.far).collect::<Vec<_>>(), IJB_FARS);
    for (t, key) in report.tar_at_far.iter().zip(keys) {
        assert_eq!(t.tar, r["tar_at_far"][key].as_f64(), "TAR at FAR {}", t.far);
    }
    assert_eq!(report.tar(1e-3), Some(0.25));
    eprintln!(
        "IJB protocol vs numpy: TAR at FAR 1e-3, 1e-2, 1e-1: {:?}",
        &report.tar_at_far[3..].iter().map(|t| t.tar).collect::<Vec<_>>()
    );

    // 1:N: each gallery's mated and non-mated probes, hits at each rank, TPIR at each FPIR.
    let search = report.search.as_ref().expect("1:N figures");
    assert_eq!(search.probes, 64);
    let fpir_keys = ["0.0001", "0.001", "0.01", "0.1"];
    for g in &search.galleries {
        let want = &numpy_search["galleries"][g.name.as_str()];
        assert_eq!((g.templates, g.scores.mated, g.scores.non_mated), (8, 8, 56), "{}", g.name);
        assert_eq!(g.scores.mated as u64, want["mated"].as_u64().unwrap());
        for (rank, k) in g.scores.rank.iter().zip(IJB_RANKS) {
            assert_eq!((rank.rank, rank.hits as u64), (k, want["rank"][k.to_string()].as_u64().unwrap()), "{}", g.name);
        }
        assert_eq!(g.scores.tpir_at_fpir.iter().map(|t| t.fpir).collect::<Vec<_>>(), IJB_FPIRS);
        for (t, key) in g.scores.tpir_at_fpir.iter().zip(fpir_keys) {
            assert_eq!(t.tpir, want["tpir_at_fpir"][key].as_f64(), "{} TPIR at FPIR {key}", g.name);
        }
    }
    // Over the galleries: hits summed (7 + 5 of 16 at rank 1), TPIR averaged.
    assert_eq!(search.rank[0].hits, 12);
    assert_eq!(search.rank[0].rate, 12.0 / 16.0);
    assert_eq!(search.tpir(1e-1), Some((0.625 + 0.125) / 2.0));
    assert_eq!(search.tpir(1e-2), None);
    eprintln!("IJB 1:N vs numpy: rank-1 {:.4}, TPIR at FPIR 1e-1 {:?}", search.rank[0].rate, search.tpir(1e-1));
}

fn eval_args(model: &Path, ijb: Vec<PathBuf>, out: PathBuf) -> EvalArgs {
    EvalArgs {
        model: model.to_path_buf(),
        network: NetworkArgs::default(),
        bins: Vec::new(),
        val_dir: None,
        ijb,
        out,
        device: DeviceArgs { device: Device::Cpu, adapter: None, threads: 0, batch: 64 },
        quiet: true,
    }
}

/// `synth`'s IJB set of `val_ids` held-out identities with `per_id` faces each, at `size`.
fn synthetic_set(dir: &Path, val_ids: usize, per_id: usize, size: usize) -> PathBuf {
    let cfg = SynthConfig {
        out: dir.to_path_buf(),
        ids: 2,
        per_id: 2,
        val_ids,
        val_per_id: per_id,
        val_pairs: 4,
        size,
        seed: 11,
        quality: 95,
    };
    synth(&cfg, true).unwrap().ijb
}

/// The synthetic set's faces, placed turned and scaled into larger crops, come back aligned close to the faces
/// rendered: far closer than to any other identity's face.
#[test]
fn synthetic_faces_align_back_to_the_rendered_faces() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, per_id, size) = (3, 4, 112);
    let set = IjbSet::open(&synthetic_set(dir.path(), ids, per_id, size)).unwrap();
    assert_eq!(set.name, "IJB");
    assert_eq!(set.faces.len(), ids * per_id);
    // Two templates per identity (first and second half of its samples), frames of a media in pairs.
    assert_eq!(
        set.faces[..4].iter().map(|f| (f.template, f.media)).collect::<Vec<_>>(),
        [(1, 1), (1, 1), (2, 2), (2, 2)]
    );
    let templates = 2 * ids;
    assert_eq!(set.pairs.0.len(), templates * (templates - 1) / 2);
    assert_eq!(set.pairs.2.iter().filter(|&&s| s).count(), ids);
    let shape = ImageShape { h: size, w: size };
    let mean_abs =
        |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64;
    let first_val = 2; // synth's held-out identities follow its 2 training identities
    let (mut worst, mut closest) = (0.0f64, f64::INFINITY);
    for (i, face) in set.faces.iter().enumerate() {
        let aligned = set.aligned(i, shape).unwrap();
        let (id, k) = ((i / per_id) as u64, (i % per_id) as u64);
        let own = mean_abs(&aligned, &render(11, first_val + id, k, shape));
        let other = mean_abs(&aligned, &render(11, first_val + (id + 1) % ids as u64, k, shape));
        // JPEG at quality 95, two bilinear resamplings, landmarks within half a pixel, and corners the turn moved
        // out of the crop (black): measured at most 5.0 levels on average, another identity 5.9x as far.
        assert!(own < 8.0 && own * 4.0 < other, "face {i} ({}): {own:.1} vs {other:.1}", face.file);
        (worst, closest) = (worst.max(own), closest.min(other / own));
    }
    eprintln!("aligned vs rendered: mean |difference| at most {worst:.2} levels, another identity {closest:.1}x that");
}

/// `eval --ijb` end to end on the CPU backend: its distances equal, within 1e-6, the protocol computed here
/// step by step from the core (each face's forward pass, media grouped then averaged then summed, f64); its TARs
/// are the core's on its distances; the report, table and plot hold the set.
#[test]
fn a_synthetic_set_scores_as_the_protocol_says() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = tiny_backbone(5);
    let shape = ImageShape { h: backbone.cfg.input_h, w: backbone.cfg.input_w };
    let model = save_model(&backbone, dir.path());
    let ijb = synthetic_set(&dir.path().join("data"), 12, 5, shape.w);
    let out = dir.path().join("eval");
    let args = eval_args(&model, vec![ijb.clone()], out.clone());
    let report = args.evaluate().unwrap();
    assert!(report.sets.is_empty());
    let r = &report.ijb[0];
    assert_eq!((r.name.as_str(), r.faces, r.templates, r.pairs, r.same_pairs), ("IJB", 60, 24, 276, 12));

    let set = IjbSet::open(&ijb).unwrap();
    // template -> media -> features of its faces.
    let mut groups: BTreeMap<u32, BTreeMap<u32, Vec<Vec<f32>>>> = BTreeMap::new();
    for (i, face) in set.faces.iter().enumerate() {
        let (e, f) = core_flip_embeddings(&backbone, &set.aligned(i, shape).unwrap(), shape);
        let feature = e.iter().zip(&f).map(|(a, b)| (a + b) * face.score).collect();
        groups.entry(face.template).or_default().entry(face.media).or_default().push(feature);
    }
    let d = backbone.cfg.embedding;
    let features: BTreeMap<u32, Vec<f32>> = groups
        .into_iter()
        .map(|(t, medias)| {
            let mut sum = vec![0.0f64; d];
            for frames in medias.values() {
                for j in 0..d {
                    sum[j] += frames.iter().map(|f| f64::from(f[j])).sum::<f64>() / frames.len() as f64;
                }
            }
            let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
            (t, sum.iter().map(|v| (v / norm) as f32).collect())
        })
        .collect();
    let (first, second, same) = &set.pairs;
    let dist: Vec<f32> =
        first.iter().zip(second).map(|(a, b)| squared_l2(&features[a], &features[b]).unwrap()).collect();
    let worst = r.dist.iter().zip(&dist).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "distances: {worst:e}");
    let mut scratch = vec![0.0; r.dist.len()];
    assert_eq!(r.tar_at_far.len(), IJB_FARS.len());
    for t in &r.tar_at_far {
        let want = tar_at_far(&r.dist, same, t.far, &mut scratch).unwrap();
        assert_eq!((t.tar, t.threshold), (want.map(|w| w.tar), want.map(|w| w.threshold)), "FAR {}", t.far);
    }
    // 264 different pairs resolve FAR 1e-2 (2 of them) and 1e-1, not 1e-3.
    assert!(r.tar(1e-2).is_some() && r.tar(1e-3).is_none());

    // 1:N: synth's galleries hold the first templates (odd ids) of the even identities (G1) and of the odd ones
    // (G2); the second templates probe. Each gallery's mates ranked here from the core's distances: the hits must be
    // equal (the distances agree within 1e-6, above, and no rank here turns on a smaller difference).
    let search = set.search.as_ref().expect("synth writes 1:N lists");
    assert_eq!(search.probes, (1..=12).map(|i| (2 * i, i)).collect::<Vec<_>>());
    let got = r.search.as_ref().expect("1:N figures");
    assert_eq!(got.probes, 12);
    let mut all_hits = [0usize; 3];
    for (g, want) in got.galleries.iter().zip(&search.galleries) {
        assert_eq!((g.name.as_str(), g.templates, g.scores.mated, g.scores.non_mated), (want.name.as_str(), 6, 6, 6));
        let first_id = usize::from(g.name == "G2");
        let expect: Vec<(u32, u32)> = (first_id..12).step_by(2).map(|i| (2 * i as u32 + 1, i as u32 + 1)).collect();
        assert_eq!(want.templates, expect, "{}", g.name);
        let mut hits = [0usize; 3];
        for &(probe, subject) in &search.probes {
            let dist: Vec<f32> =
                want.templates.iter().map(|(t, _)| squared_l2(&features[&probe], &features[t]).unwrap()).collect();
            if let Some(mate) = want.templates.iter().position(|&(_, s)| s == subject) {
                let rank = mate_rank(&dist, mate).unwrap();
                for (h, k) in hits.iter_mut().zip(IJB_RANKS) {
                    *h += usize::from(rank <= k);
                }
            }
        }
        assert_eq!(g.scores.rank.iter().map(|r| r.hits).collect::<Vec<_>>(), hits, "{}", g.name);
        // Six non-mated probes resolve no FPIR up to 1e-1.
        assert!(g.scores.tpir_at_fpir.iter().all(|t| t.tpir.is_none()), "{}", g.name);
        for (a, h) in all_hits.iter_mut().zip(hits) {
            *a += h;
        }
    }
    assert_eq!(got.rank.iter().map(|r| r.hits).collect::<Vec<_>>(), all_hits);
    assert_eq!(got.rank[2].hits, 12, "every mate within rank 10 of a gallery of 6");

    // The table, the report and the plot.
    let mut table = Vec::new();
    suite::print_table(&report, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("IJB set") && table.contains("1e-4") && !table.contains("accuracy (%)"), "{table}");
    let row = table.lines().find(|l| l.starts_with("IJB ") && !l.contains("IJB set")).expect("a row for the set");
    assert!(row.contains(" 60 ") && row.contains(" 276 ") && row.contains("n/a"), "{row}");
    assert!(table.contains("IJB 1:N") && table.contains("rank10"), "{table}");
    let all = table.lines().find(|l| l.contains(" all ")).expect("a row over the galleries");
    assert!(all.contains("12 probes") && all.contains(&format!("{:.2}", 100.0 * got.rank[0].rate)), "{all}");
    let files = suite::write_outputs(&report, &out).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(json["ijb"][0]["pairs"], 276);
    assert_eq!(json["ijb"][0]["search"]["galleries"][1]["name"], "G2");
    assert_eq!(json["ijb"][0]["search"]["rank"][2]["hits"], 12);
    assert!(json["ijb_protocol"].as_str().unwrap().contains("detector score"));
    assert!(json["ijb"][0]["roc"].as_array().unwrap().len() > 10);
    // No TAR at FAR 1e-4 to give (264 different pairs): the legend gives the one at 1e-2.
    let legend = format!("IJB (TAR {:.2}% at FAR 1e-2)", 100.0 * r.tar(1e-2).unwrap());
    assert!(std::fs::read_to_string(&files.svg).unwrap().contains(&legend), "the legend: {legend}");
}

/// Writes a one-face set with the given meta lines.
fn one_face_set(dir: &Path, tid_mid: &str, five: &str, pairs: &str) -> PathBuf {
    let root = dir.join("IJBX");
    std::fs::create_dir_all(root.join("meta")).unwrap();
    std::fs::create_dir_all(root.join("loose_crop")).unwrap();
    std::fs::write(root.join("meta/ijbx_face_tid_mid.txt"), tid_mid).unwrap();
    std::fs::write(root.join("meta/ijbx_name_5pts_score.txt"), five).unwrap();
    std::fs::write(root.join("meta/ijbx_template_pair_label.txt"), pairs).unwrap();
    root
}

#[test]
fn malformed_sets_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let five = "1.jpg 38 51 73 51 56 71 41 92 70 92 0.9\n2.jpg 38 51 73 51 56 71 41 92 70 92 0.8\n";
    let ids = "1.jpg 1 1\n2.jpg 2 2\n";
    let err =
        |tid: &str, f: &str, p: &str| format!("{:#}", IjbSet::open(&one_face_set(dir.path(), tid, f, p)).unwrap_err());
    let e = err("1.jpg 1 1\n3.jpg 2 2\n", five, "1 2 0\n");
    assert!(e.contains("line 2") && e.contains("names 3.jpg") && e.contains("names 2.jpg"), "{e}");
    let e = err("1.jpg 1 x\n2.jpg 2 2\n", five, "1 2 0\n");
    assert!(e.contains("ijbx_face_tid_mid.txt line 1") && e.contains("media id \"x\""), "{e}");
    let e = err(ids, "1.jpg 38 51 73 51 56 71 41 92 70 92\n2.jpg 38 51 73 51 56 71 41 92 70 92 0.8\n", "1 2 0\n");
    assert!(e.contains("ijbx_name_5pts_score.txt line 1") && e.contains("11 fields"), "{e}");
    let e = err(ids, five, "1 2 0\n1 2 2\n");
    assert!(e.contains("ijbx_template_pair_label.txt line 2") && e.contains("\"2\" is neither 1 nor 0"), "{e}");
    // A pair naming a template without faces is found on reading, before any face is embedded.
    let e = err(ids, five, "1 2 0\n\n1 7 0\n");
    assert!(e.contains("ijbx_template_pair_label.txt line 3: template 7 has no face"), "{e}");
    // Scores and landmarks that are not finite (Rust parses "nan" and "inf").
    let e = err(ids, "1.jpg 38 51 73 51 56 71 41 92 70 92 nan\n2.jpg 38 51 73 51 56 71 41 92 70 92 0.8\n", "1 2 0\n");
    assert!(e.contains("ijbx_name_5pts_score.txt line 1: the detector score nan is not finite"), "{e}");
    let e = err(ids, "1.jpg 38 51 73 51 56 71 41 92 70 92 0.9\n2.jpg 38 51 inf 51 56 71 41 92 70 92 0.8\n", "1 2 0\n");
    assert!(e.contains("line 2: the landmark inf is not finite"), "{e}");
    // Blank lines count in neither file; the numbers of faces they list are given.
    assert!(IjbSet::open(&one_face_set(dir.path(), &format!("{ids}\n\n"), five, "1 2 0\n")).is_ok());
    let e = err(ids, "1.jpg 38 51 73 51 56 71 41 92 70 92 0.9\n", "1 2 0\n");
    assert!(e.contains("lists 2 faces") && e.contains("lists 1"), "{e}");
    // A template whose features are not finite is named.
    let set = IjbSet::open(&one_face_set(dir.path(), ids, five, "1 2 0\n")).unwrap();
    let mut t = Templates::new(&set);
    t.add(0, &[1.0, 0.0]).unwrap();
    t.add(1, &[f32::NAN, 1.0]).unwrap();
    let e = format!("{:#}", score_set(&set, &t).unwrap_err());
    assert!(e.contains("template 2: its feature is not finite"), "{e}");
    // A missing crop, and landmarks that coincide, name the file.
    let e = format!("{:#}", set.aligned(0, ImageShape { h: 16, w: 16 }).unwrap_err());
    assert!(e.contains("loose_crop/1.jpg"), "{e}");
    let crop = ImageShape { h: 8, w: 8 };
    std::fs::write(set.root.join("loose_crop/2.jpg"), encode_png(&vec![9; crop.len()], crop).unwrap()).unwrap();
    let mut same_point = set.clone();
    same_point.faces[1].landmarks = [[3.0, 4.0]; 5];
    let e = format!("{:#}", same_point.aligned(1, ImageShape { h: 16, w: 16 }).unwrap_err());
    assert!(e.contains("loose_crop/2.jpg: cannot align") && e.contains("the landmarks all coincide"), "{e}");
    assert!(set.aligned(1, ImageShape { h: 16, w: 16 }).is_ok(), "the crop itself is fine");
    // Not a set at all.
    let e = format!("{:#}", IjbSet::open(dir.path()).unwrap_err());
    assert!(e.contains("is not an IJB set"), "{e}");
    let root = one_face_set(dir.path(), ids, five, "1 2 0\n");
    std::fs::remove_dir_all(root.join("loose_crop")).unwrap();
    let e = format!("{:#}", IjbSet::open(&root).unwrap_err());
    assert!(e.contains("loose_crop/) are missing"), "{e}");
}

/// The 1:N lists: read with or without NIST's header, quoted or not; each kind of bad list named by file and line.
#[test]
fn malformed_search_lists_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let five = "1.jpg 38 51 73 51 56 71 41 92 70 92 0.9\n2.jpg 38 51 73 51 56 71 41 92 70 92 0.8\n\
                3.jpg 38 51 73 51 56 71 41 92 70 92 0.7\n";
    let root = one_face_set(dir.path(), "1.jpg 1 1\n2.jpg 2 2\n3.jpg 3 3\n", five, "1 2 0\n");
    let meta = root.join("meta");
    let write = |name: &str, text: &str| std::fs::write(meta.join(format!("ijbx_1N_{name}.csv")), text).unwrap();
    let open = || IjbSet::open(&root);
    let err = || format!("{:#}", open().unwrap_err());
    let header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n";
    // No lists: 1:1 alone. Galleries without probes, and probes without a gallery, are a set copied in part.
    assert!(open().unwrap().search.is_none());
    write("gallery_G1", &format!("{header}1,10,1.jpg\n"));
    let e = err();
    assert!(e.contains("the 1:N galleries (G1) need their probes") && e.contains("ijbx_1N_probe_mixed.csv"), "{e}");
    std::fs::remove_file(meta.join("ijbx_1N_gallery_G1.csv")).unwrap();
    write("probe_mixed", &format!("{header}2,10,2.jpg\n"));
    assert!(err().contains("the 1:N probes need a gallery, ijbx_1N_gallery_<NAME>.csv"), "{}", err());
    // A well-formed pair of lists, galleries in name order, a row per face, quoted fields, no header on G2.
    write("gallery_G2", "\"3\",\"11\",\"3.jpg\"\n");
    write("gallery_G1", &format!("{header}1,10,1.jpg\n1,10,1b.jpg\n\n"));
    write("probe_mixed", &format!("{header}2,10,2.jpg\n3,11,3.jpg\n"));
    let search = open().unwrap().search.unwrap();
    assert_eq!(search.galleries.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["G1", "G2"]);
    assert_eq!(
        (search.galleries[0].templates.as_slice(), search.probes.as_slice()),
        (&[(1, 10)][..], &[(2, 10), (3, 11)][..])
    );
    // Each kind of bad list.
    write("probe_mixed", &format!("{header}2,10,2.jpg\n2,12,2b.jpg\n"));
    assert!(
        err().contains("ijbx_1N_probe_mixed.csv line 3: template 2 is subject 12 here and 10 on line 2"),
        "{}",
        err()
    );
    write("probe_mixed", &format!("{header}2,x,2.jpg\n"));
    assert!(err().contains("ijbx_1N_probe_mixed.csv line 2: the subject id \"x\" is not a number"), "{}", err());
    write("probe_mixed", &format!("{header}7,10,7.jpg\n"));
    assert!(
        err().contains("line 2: template 7 has no face in") && err().contains("ijbx_face_tid_mid.txt"),
        "{}",
        err()
    );
    write("probe_mixed", &format!("{header}2\n"));
    assert!(err().contains("ijbx_1N_probe_mixed.csv line 2: 1 fields, the subject id is field 2"), "{}", err());
    write("probe_mixed", header);
    assert!(err().contains("ijbx_1N_probe_mixed.csv lists no template"), "{}", err());
    write("probe_mixed", &format!("{header}2,10,2.jpg\n"));
    assert!(
        err().contains("ijbx_1N_gallery_G2.csv: no probe of") && err().contains("is of a subject this gallery"),
        "{}",
        err()
    );
    write("gallery_G2", &format!("{header}2,11,2.jpg\n3,11,3.jpg\n"));
    assert!(err().contains("ijbx_1N_gallery_G2.csv: subject 11 has templates 2 and 3"), "{}", err());
}

/// A run stopped part way resumes from its feature file: it embeds the first chunk again (to check the file) and
/// then only the faces the file lacks, and its templates and figures are those of a run never stopped, bit for bit.
/// A file of another model is not used (its first record differs): everything is embedded again.
#[test]
fn a_stopped_run_resumes_from_its_feature_file() {
    let dir = tempfile::tempdir().unwrap();
    // 2,100 faces: chunks of 1,024, 1,024 and 52; each chunk is two embed calls (the faces, their mirror images).
    let ijb = synthetic_set(&dir.path().join("data"), 210, 10, 16);
    let set = IjbSet::open(&ijb).unwrap();
    let shape = ImageShape { h: 16, w: 16 };
    let backend = |seed: u64, fail_at: Option<usize>| Stopping {
        inner: elasticface::train::run::open_inference(&tiny_backbone(seed), Device::Cpu, None, 0, 64).unwrap(),
        calls: 0,
        fail_at,
        take_file_at: None,
    };
    let run =
        |b: &mut Stopping, resume: Option<&Path>| elasticface::eval::ijb::embed_templates(b, &set, shape, true, resume);
    let bits = |t: &Templates| t.features().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();

    let mut whole = backend(5, None);
    let straight = run(&mut whole, None).unwrap();
    assert_eq!(whole.calls, 6);

    let file = dir.path().join("IJB.features");
    let record = 8 * 4u64;
    let mut stopped = backend(5, Some(4));
    assert!(run(&mut stopped, Some(&file)).is_err(), "stopped in the third chunk");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 + 2048 * record, "two chunks kept");
    // A crash in the middle of a write leaves part of a record: it is cut off.
    let f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.set_len(32 + 2048 * record + 13).unwrap();
    let mut resumed = backend(5, None);
    let again = run(&mut resumed, Some(&file)).unwrap();
    assert_eq!(resumed.calls, 4, "the first chunk (the check) and the last");
    assert!(bits(&again) == bits(&straight), "resumed templates differ");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 + 2100 * record);
    let (a, b) = (score_set(&set, &again).unwrap(), score_set(&set, &straight).unwrap());
    assert!(a.dist == b.dist && a.tar_at_far == b.tar_at_far);
    // A whole file is read, not embedded again.
    let mut reread = backend(5, None);
    assert!(bits(&run(&mut reread, Some(&file)).unwrap()) == bits(&straight));
    assert_eq!(reread.calls, 2);

    // Records the header does not count (space a crash left unwritten: here garbage), and counted records of no
    // whole chunk, are not used: the run goes on from the last whole chunk counted, with the same results.
    let edit = |count: u64, garbage_at: Option<u64>| {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(24)).unwrap();
        f.write_all(&count.to_le_bytes()).unwrap();
        if let Some(r) = garbage_at {
            f.seek(SeekFrom::Start(32 + r * record)).unwrap();
            f.write_all(&[0xff; 32]).unwrap();
        }
    };
    for (count, garbage) in [(1024, Some(1500u64)), (1500, None)] {
        edit(count, garbage);
        let mut b = backend(5, None);
        assert!(bits(&run(&mut b, Some(&file)).unwrap()) == bits(&straight), "count {count}");
        assert_eq!(b.calls, 6, "count {count}: resumed after the first chunk");
    }
    // Another set (the fingerprint differs): started afresh.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(8)).unwrap();
        f.write_all(&[0; 8]).unwrap();
    }
    let mut b = backend(5, None);
    assert!(bits(&run(&mut b, Some(&file)).unwrap()) == bits(&straight));
    assert_eq!(b.calls, 6, "another set's file is not read");

    // Another model: its first chunk differs from the file's, so the file starts afresh.
    let mut other = backend(6, None);
    let fresh = run(&mut other, Some(&file)).unwrap();
    assert_eq!(other.calls, 6);
    let mut other_whole = backend(6, None);
    assert!(bits(&fresh) == bits(&run(&mut other_whole, None).unwrap()));
    assert!(bits(&fresh) != bits(&straight));
}

/// Two runs on one feature file (the same `--out`): the run whose file the other took meanwhile stops at its next
/// chunk with an error naming the file, instead of interleaving its records with the other's.
#[test]
fn a_run_whose_feature_file_another_run_took_stops() {
    let dir = tempfile::tempdir().unwrap();
    let ijb = synthetic_set(&dir.path().join("data"), 210, 10, 16);
    let set = IjbSet::open(&ijb).unwrap();
    let file = dir.path().join("IJB.features");
    // Calls 2 and 3 embed the second chunk (its faces, their mirror images): the file is taken during them.
    let mut b = Stopping {
        inner: elasticface::train::run::open_inference(&tiny_backbone(5), Device::Cpu, None, 0, 64).unwrap(),
        calls: 0,
        fail_at: None,
        take_file_at: Some((3, file.clone())),
    };
    let shape = ImageShape { h: 16, w: 16 };
    let e =
        format!("{:#}", elasticface::eval::ijb::embed_templates(&mut b, &set, shape, true, Some(&file)).unwrap_err());
    assert!(e.contains("IJB.features changed while this run wrote it") && e.contains("its own --out"), "{e}");
    assert_eq!((b.calls, std::fs::metadata(&file).unwrap().len()), (4, 32), "nothing written after the intrusion");
}
