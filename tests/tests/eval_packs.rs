//! `elasticface eval` on insightface verification packs: the reader against packs written by Python, a pack with
//! a known accuracy whose figures must equal the core's protocol exactly, the report's plots, and bad packs.

use std::path::{Path, PathBuf};

use elasticface::checkpoint::Backbone;
use elasticface::commands::{DeviceArgs, EvalArgs, NetworkArgs};
use elasticface::data::decode::{decode_rgb_any, encode_png};
use elasticface::eval::bin::VerificationPack;
use elasticface::eval::plot::COLORS;
use elasticface::eval::suite::{self, EvalReport};
use elasticface::train::run::Device;
use elasticface_core::nn::ImageShape;
use elasticface_core::verify::{fused_distances, kfold_accuracy, tar_at_far, FlipPairs};
use elasticface_tests::{core_flip_embeddings, reference_dir, save_model, tiny_backbone, uniform};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn packs_written_by_python_read_as_expected() {
    let dir = reference_dir().join("formats");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let e = &expected["bin"];
    let issame: Vec<bool> = e["issame"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    for file in ["pairs_py2.bin", "pairs_py3.bin"] {
        let pack = VerificationPack::open(&dir.join("bin").join(file)).unwrap();
        assert_eq!(pack.pairs() as u64, e["pairs"].as_u64().unwrap(), "{file}");
        assert_eq!(pack.len() as u64, e["images"].as_u64().unwrap(), "{file}");
        assert_eq!(pack.issame, issame, "{file}");
        for i in 0..pack.len() {
            assert_eq!(sha256_hex(pack.image(i)), e["image_sha256"][i].as_str().unwrap(), "{file} image {i}");
            let (rgb, shape) = decode_rgb_any(pack.image(i)).unwrap();
            assert_eq!(shape, ImageShape { h: 112, w: 112 }, "{file} image {i}");
            if i == 1 {
                // The PNG decodes losslessly: the same pixels as PIL's (JPEG decoders round differently).
                assert!(e["image_1_is_png"].as_bool().unwrap());
                assert_eq!(sha256_hex(&rgb), e["rgb_sha256"][1].as_str().unwrap(), "{file}");
            }
        }
    }
}

/// `pickle.dumps((bins, issame), protocol=4)` as Python 3 writes it for these types, made here byte by byte
/// (independently of the crate's own pack writer): `BINBYTES` images, `MEMOIZE`, `APPENDS` in batches of 1000.
fn python3_pack(images: &[Vec<u8>], issame: &[bool]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend([b']', 0x94]);
    for chunk in images.chunks(1000) {
        body.push(b'(');
        for img in chunk {
            body.push(b'B');
            body.extend((img.len() as u32).to_le_bytes());
            body.extend(img);
            body.push(0x94);
        }
        body.push(b'e');
    }
    body.extend([b']', 0x94]);
    for chunk in issame.chunks(1000) {
        body.push(b'(');
        body.extend(chunk.iter().map(|&s| if s { 0x88u8 } else { 0x89 }));
        body.push(b'e');
    }
    body.extend([0x86, 0x94, b'.']);
    let mut out = vec![0x80, 4, 0x95];
    out.extend((body.len() as u64).to_le_bytes());
    out.extend(body);
    out
}

/// A random RGB image of `shape` from `seed`.
fn random_image(seed: u64, shape: ImageShape) -> Vec<u8> {
    uniform(seed, shape.len()).iter().map(|v| ((v + 1.0) * 127.5) as u8).collect()
}

/// The pack with a known accuracy: `pairs` pairs alternating same (even) and different (odd). A same pair shows
/// one image twice (squared distance exactly 0); a different pair two random images; pair 3, labelled different,
/// shows one image twice (a labelling error no threshold above 0 can get right).
fn known_pack(shape: ImageShape, pairs: usize) -> (Vec<Vec<u8>>, Vec<bool>) {
    let (mut images, mut issame) = (Vec::new(), Vec::new());
    for p in 0..pairs {
        let a = random_image(1000 + p as u64, shape);
        let same = p % 2 == 0;
        let b = if same || p == 3 { a.clone() } else { random_image(900_000 + p as u64, shape) };
        images.push(encode_png(&a, shape).unwrap());
        images.push(encode_png(&b, shape).unwrap());
        issame.push(same);
    }
    (images, issame)
}

fn eval_args(model: &Path, bins: Vec<PathBuf>) -> EvalArgs {
    EvalArgs {
        model: model.to_path_buf(),
        network: NetworkArgs::default(),
        bins,
        val_dir: None,
        ijb: Vec::new(),
        out: PathBuf::from("unused"),
        device: DeviceArgs { device: Device::Cpu, adapter: None, threads: 0, batch: 64 },
        quiet: true,
    }
}

/// The protocol's distances computed without the crate's backends: the core's forward pass in eval mode on each
/// image and its mirror image, then the core's fusion.
fn independent_distances(b: &Backbone, images: &[Vec<u8>], shape: ImageShape) -> Vec<f32> {
    let e = b.cfg.embedding;
    let (mut e1, mut f1, mut e2, mut f2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, png) in images.iter().enumerate() {
        let rgb = decode_rgb_any(png).unwrap().0;
        let (plain, flipped) = if k % 2 == 0 { (&mut e1, &mut f1) } else { (&mut e2, &mut f2) };
        let (p, f) = core_flip_embeddings(b, &rgb, shape);
        plain.extend(p);
        flipped.extend(f);
    }
    let pairs = FlipPairs { dim: e, emb1: &e1, emb1_flip: &f1, emb2: &e2, emb2_flip: &f2 };
    let mut dist = vec![0.0; images.len() / 2];
    fused_distances(&pairs, &mut vec![0.0; 3 * e], &mut dist).unwrap();
    dist
}

#[test]
fn a_pack_with_known_accuracy_matches_the_core_protocol_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = tiny_backbone(1);
    let shape = ImageShape { h: backbone.cfg.input_h, w: backbone.cfg.input_w };
    let model = save_model(&backbone, dir.path());
    // 2000 pairs: 1000 different ones, enough to resolve FAR 1e-3 (not 1e-4).
    let (images, issame) = known_pack(shape, 2000);
    let bin = dir.path().join("known.bin");
    std::fs::write(&bin, python3_pack(&images, &issame)).unwrap();

    let report = eval_args(&model, vec![bin.clone()]).evaluate().unwrap();
    assert_eq!(report.sets.len(), 1);
    let s = &report.sets[0];
    let v = &s.verify;
    assert_eq!((s.name.as_str(), s.images, s.resized_images), ("known", 4000, 0));
    assert_eq!((v.pairs, v.same_pairs), (2000, 1000));

    // The same figures from the core alone, compared exactly.
    let dist = independent_distances(&backbone, &images, shape);
    assert_eq!(v.dist, dist, "distances");
    let k = kfold_accuracy(&dist, &issame).unwrap();
    assert_eq!((v.accuracy, v.accuracy_std), (k.mean, k.std));
    assert_eq!(v.fold_accuracies, k.accuracies);
    assert_eq!(v.fold_thresholds, k.thresholds);
    let mut scratch = vec![0.0; dist.len()];
    for t in &v.tar_at_far {
        let want = tar_at_far(&dist, &issame, t.far, &mut scratch).unwrap();
        assert_eq!(
            (t.tar, t.threshold, t.far_reached),
            (want.map(|w| w.tar), want.map(|w| w.threshold), want.map(|w| w.far))
        );
    }

    // And the values the construction implies. Different pairs of distinct images are far apart:
    let min_different = dist.iter().zip(&issame).enumerate().filter(|&(p, (_, &s))| !s && p != 3).map(|(_, (&d, _))| d);
    let min_different = min_different.fold(f32::INFINITY, f32::min);
    assert!(min_different >= 0.01, "the construction needs distinct images apart: {min_different}");
    // every fold picks 0.01 (the first threshold accepting distance 0); fold 0 (pairs 0..199) holds the
    // mislabelled pair 3: 199 of 200 right; the other folds are perfect.
    assert_eq!(v.fold_thresholds, [0.01; 10]);
    assert_eq!(v.fold_accuracies[0], 199.0 / 200.0);
    assert_eq!(v.fold_accuracies[1..], [1.0; 9]);
    assert!((v.accuracy - 0.9995).abs() < 1e-15 && (v.accuracy_std - 0.0015).abs() < 1e-15, "{v:?}");
    assert_eq!((v.best_threshold, v.best_threshold_accuracy), (0.01, 1999.0 / 2000.0));
    // FAR 1e-3 of 1000 different pairs admits one (the mislabelled pair, at 0): every same pair is accepted.
    assert_eq!(v.tar(1e-3), Some(1.0));
    assert_eq!(v.tar_at_far[1].far_reached, Some(1e-3));
    assert_eq!(v.tar_at_far[1].threshold, Some(min_different));
    assert_eq!(v.tar(1e-4), None, "1000 different pairs cannot resolve FAR 1e-4");
    // The ROC ends at (1, 1) and starts at (0, 0).
    let (first, last) = (s.roc.first().unwrap(), s.roc.last().unwrap());
    assert_eq!((first.far, first.tar, last.far, last.tar), (0.0, 0.0, 1.0, 1.0));
}

#[test]
fn reports_and_plots_hold_every_curve() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = tiny_backbone(3);
    let shape = ImageShape { h: 16, w: 16 };
    let model = save_model(&backbone, dir.path());
    // Two packs of different difficulty: the second's same pairs are noisy copies, some barely related.
    let (images, issame) = known_pack(shape, 400);
    let easy = dir.path().join("easy.bin");
    std::fs::write(&easy, python3_pack(&images, &issame)).unwrap();
    let (mut hard_images, mut hard_same) = (Vec::new(), Vec::new());
    for p in 0..400 {
        let a = random_image(5000 + p, shape);
        let noise = uniform(7000 + p, shape.len());
        let amount = 40.0 + 200.0 * (p % 5) as f32;
        let b: Vec<u8> = if p % 2 == 0 {
            a.iter().zip(&noise).map(|(&x, n)| (x as f32 + amount * n).clamp(0.0, 255.0) as u8).collect()
        } else {
            random_image(8000 + p, shape)
        };
        hard_images.push(encode_png(&a, shape).unwrap());
        hard_images.push(encode_png(&b, shape).unwrap());
        hard_same.push(p % 2 == 0);
    }
    let hard = dir.path().join("hard.bin");
    std::fs::write(&hard, python3_pack(&hard_images, &hard_same)).unwrap();

    let mut args = eval_args(&model, vec![easy]);
    args.val_dir = None;
    args.bins.push(hard);
    let report: EvalReport = args.evaluate().unwrap();
    assert_eq!(report.sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["easy", "hard"]);
    let out = suite::write_outputs(&report, &dir.path().join("out")).unwrap();

    // The JSON report parses and holds both sets with their ROC points.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out.json).unwrap()).unwrap();
    assert_eq!(json["sets"][1]["name"], "hard");
    let accuracy = json["sets"][0]["accuracy"].as_f64().unwrap();
    assert!((accuracy - report.sets[0].verify.accuracy).abs() < 1e-15);
    assert!(json["sets"][1]["roc"].as_array().unwrap().len() > 10);

    // The PNG decodes, and both curve colours cover many pixels (a line across the plot, not an empty canvas).
    let png = std::fs::read(&out.png).unwrap();
    let (rgb, size) = decode_rgb_any(&png).unwrap();
    assert_eq!((size.w, size.h), (900, 640));
    for (i, c) in COLORS[..2].iter().enumerate() {
        let n = rgb.chunks_exact(3).filter(|p| p == &[c.0, c.1, c.2]).count();
        assert!(n > 300, "curve {i} covers {n} pixels");
    }
    let dark = rgb.chunks_exact(3).filter(|p| p.iter().all(|&v| v < 80)).count();
    assert!(dark > 2000, "axes and text: {dark} dark pixels");

    // The SVG is a document with one polyline per curve, in the curve colours, with many points.
    let svg = std::fs::read_to_string(&out.svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for c in &COLORS[..2] {
        let colour = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        let line = svg
            .lines()
            .find(|l| l.contains("<polyline") && l.contains(&colour) && l.matches(',').count() > 10)
            .unwrap_or_else(|| panic!("no polyline in {colour}"));
        assert!(line.contains("points="), "{line}");
    }
    assert!(svg.contains("easy (") && svg.contains("hard ("), "legend");
}

#[test]
fn bad_packs_name_the_file_and_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let backbone = tiny_backbone(1);
    let model = save_model(&backbone, dir.path());
    let shape = ImageShape { h: 16, w: 16 };
    let (mut images, issame) = known_pack(shape, 12);
    let run = |name: &str, bytes: Vec<u8>| -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = eval_args(&model, vec![path.clone()]).evaluate().unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        text
    };
    let good = python3_pack(&images, &issame);
    let e = run("truncated.bin", good[..good.len() / 2].to_vec());
    assert!(e.contains("truncated"), "{e}");
    let e = run("odd.bin", python3_pack(&images[..23], &issame[..11]));
    assert!(e.contains("23 images, an odd count"), "{e}");
    let e = run("text.bin", b"lfw pairs\n".to_vec());
    assert!(e.contains("unsupported pickle opcode"), "{e}");
    images[5] = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    let e = run("undecodable.bin", python3_pack(&images, &issame));
    assert!(e.contains("image 5 (pair 2)") && e.contains("PNG"), "{e}");
    images[5] = b"GIF89a".to_vec();
    let e = run("gif.bin", python3_pack(&images, &issame));
    assert!(e.contains("image 5 (pair 2)") && e.contains("not a JPEG or PNG"), "{e}");
    // Every pack is read before anything is embedded, the model loaded included: a malformed last pack fails at
    // once, not after the packs before it (here the model does not even exist).
    let good_path = dir.path().join("good.bin");
    std::fs::write(&good_path, python3_pack(&images[..4], &issame[..2])).unwrap();
    let bad_path = dir.path().join("odd.bin");
    let no_model = dir.path().join("missing.safetensors");
    let e = format!("{:#}", eval_args(&no_model, vec![good_path, bad_path.clone()]).evaluate().unwrap_err());
    assert!(e.contains(&bad_path.display().to_string()) && e.contains("an odd count"), "{e}");
}

#[test]
fn a_folder_of_packs_is_taken_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["lfw.bin", "agedb_30.bin", "notes.txt"] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let found = suite::packs_in(dir.path()).unwrap();
    let names: Vec<String> = found.iter().map(|p| suite::pack_name(p)).collect();
    assert_eq!(names, ["agedb_30", "lfw"]);
    let empty = tempfile::tempdir().unwrap();
    assert!(suite::packs_in(empty.path()).is_err());
}
