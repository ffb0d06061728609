//! The model commands end to end, as a user runs them: `import` a PyTorch checkpoint, `export` it to ONNX, `eval`
//! it on verification packs, `embed` a folder of images, `compare` two images (all on the CPU reference).

use std::path::{Path, PathBuf};
use std::process::Command;

use elasticface::data::decode::encode_png;
use elasticface_core::nn::ImageShape;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference/formats").join(rel)
}

/// Runs `elasticface args...`; returns stdout, failing the test with stderr when the command fails.
fn elasticface(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_elasticface")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "elasticface {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `elasticface args...`, which must fail; returns its stderr.
fn elasticface_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_elasticface")).args(args).output().unwrap();
    assert!(!out.status.success(), "elasticface {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `elasticface synth` of 2 training identities and `val_ids` held-out ones of `val_per_id` 32x32 images into
/// `out` (20 pairs in val.bin; the held-out identities also as the IJB set `out/ijb`); returns its stdout.
fn synth_small(out: &str, val_ids: usize, val_per_id: usize) -> String {
    let (ids, per_id) = (val_ids.to_string(), val_per_id.to_string());
    elasticface(&[
        "synth",
        "--out",
        out,
        "--ids",
        "2",
        "--per-id",
        "2",
        "--val-ids",
        &ids,
        "--val-per-id",
        &per_id,
        "--size",
        "32",
        "--val-pairs",
        "20",
        "--quiet",
    ])
}

#[test]
fn import_export_eval_embed_compare() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let pth = fixture("pth/iresnet_tiny_init.pth").display().to_string();

    let out = elasticface(&["import", &pth, "--out", &p("tiny.safetensors")]);
    assert!(out.contains("[2, 1, 1, 1] x [8, 16, 16, 32], 32x32 input, 16-d embedding"), "{out}");

    let out = elasticface(&["export", "--model", &p("tiny.safetensors"), "--out", &p("tiny.onnx")]);
    assert!(out.contains("input `data` float32 (N, 3, 32, 32)"), "{out}");
    assert!(std::fs::metadata(p("tiny.onnx")).unwrap().len() > 100_000);

    // Both packs of the fixture folder (the ONNX file works as a model too).
    let packs = fixture("bin").display().to_string();
    let out = elasticface(&[
        "eval",
        "--model",
        &p("tiny.onnx"),
        "--val-dir",
        &packs,
        "--out",
        &p("eval"),
        "--device",
        "cpu",
        "--threads",
        "3",
        "--quiet",
    ]);
    assert!(out.contains("pairs_py2") && out.contains("pairs_py3") && out.contains("TAR@FAR=1e-3"), "{out}");
    assert!(out.contains(", on cpu (3 threads)"), "{out}");
    for f in ["report.json", "roc.png", "roc.svg"] {
        assert!(dir.path().join("eval").join(f).is_file(), "{f}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval/report.json")).unwrap()).unwrap();
    assert_eq!(report["sets"][0]["pairs"], 12);
    assert_eq!(report["sets"][0]["resized_images"], 24, "112x112 images for a 32x32 network");
    // The same pairs in both encodings give the same figures.
    assert_eq!(report["sets"][0]["fold_accuracies"], report["sets"][1]["fold_accuracies"]);

    // An IJB set (synth's held-out identities) beside a pack: both tables, one report.
    let out = synth_small(&p("synth"), 4, 3);
    assert!(out.contains("as an IJB set"), "{out}");
    let out = elasticface(&[
        "eval",
        "--model",
        &p("tiny.safetensors"),
        "--bin",
        &p("synth/val.bin"),
        "--ijb",
        &p("synth/ijb"),
        "--out",
        &p("eval-ijb"),
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(out.contains("TAR@FAR=1e-3") && out.contains("IJB set"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("IJB ") && l.contains(" 12 ") && l.contains(" 28 ")), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval-ijb/report.json")).unwrap()).unwrap();
    assert_eq!((report["sets"][0]["pairs"].as_u64(), report["ijb"][0]["templates"].as_u64()), (Some(20), Some(8)));
    // synth's IJB set has 1:N lists: two galleries of two, four probes.
    assert!(out.contains("IJB 1:N") && out.contains("4 probes"), "{out}");
    assert_eq!(report["ijb"][0]["search"]["galleries"][0]["templates"].as_u64(), Some(2));

    // A folder of images (one of another size) to .npy with its file list, and to safetensors.
    let imgs = dir.path().join("faces");
    std::fs::create_dir_all(imgs.join("b")).unwrap();
    for (i, side) in [(0u8, 32usize), (1, 32), (2, 48)] {
        let shape = ImageShape { h: side, w: side };
        let rgb: Vec<u8> = (0..shape.len()).map(|k| (k as u8).wrapping_mul(7 + i)).collect();
        let path = if i == 2 { imgs.join("b").join("c.png") } else { imgs.join(format!("{i}.png")) };
        std::fs::write(path, encode_png(&rgb, shape).unwrap()).unwrap();
    }
    let faces = imgs.display().to_string();
    let model = p("tiny.safetensors");
    let out = elasticface(&[
        "embed",
        "--model",
        &model,
        &faces,
        "--out",
        &p("e.npy"),
        "--flip",
        "--normalize",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(out.contains("3 embeddings of size 16"), "{out}");
    assert!(!dir.path().join("e.npy.features").exists(), "the feature file is removed once the output is written");
    let npy = std::fs::read(p("e.npy")).unwrap();
    assert!(std::str::from_utf8(&npy[10..80]).unwrap().contains("'shape': (3, 16)"));
    let list = std::fs::read_to_string(p("e.files.txt")).unwrap();
    let names: Vec<&str> = list.lines().map(|l| l.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["0.png", "1.png", "c.png"]);
    // Normalised: each row has norm 1.
    let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let v: Vec<f32> = npy[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    for row in v.chunks_exact(16) {
        assert!((row.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }
    elasticface(&["embed", "--model", &model, &faces, "--out", &p("e.safetensors"), "--device", "cpu", "--quiet"]);
    let st = elasticface::tensorfile::TensorFile::open(Path::new(&p("e.safetensors"))).unwrap();
    assert_eq!(st.get("embeddings").unwrap().shape, [3, 16]);
    assert_eq!(st.meta["files"].as_array().unwrap().len(), 3);
    // On one thread: the same bits.
    let one = p("e1.safetensors");
    elasticface(&["embed", "--model", &model, &faces, "--out", &one, "--device", "cpu", "--threads", "1", "--quiet"]);
    let st1 = elasticface::tensorfile::TensorFile::open(Path::new(&one)).unwrap();
    let bits = |t: &elasticface::tensorfile::TensorFile| -> Vec<u32> {
        t.f32("embeddings").unwrap().iter().map(|v| v.to_bits()).collect()
    };
    assert_eq!(bits(&st1), bits(&st));

    // An image compared with itself: cosine 1, the same person.
    let a = imgs.join("0.png").display().to_string();
    let out = elasticface(&["compare", "--model", &model, &a, &a, "--device", "cpu"]);
    assert!(out.starts_with("cosine 1.0000") && out.contains("same person"), "{out}");
    let b = imgs.join("1.png").display().to_string();
    let out = elasticface(&["compare", "--model", &model, &a, &b, "--threshold", "1", "--device", "cpu"]);
    assert!(out.contains("different people"), "{out}");
}

#[test]
fn bad_model_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let err = elasticface_fails(&[
        "import",
        &bad.display().to_string(),
        "--out",
        &dir.path().join("x.safetensors").display().to_string(),
    ]);
    assert!(err.contains("bad.pth") && err.contains("not a PyTorch checkpoint"), "{err}");
}

/// What the training tests start from, in `dir`: the tiny PyTorch model, and `synth_small`'s set (4 held-out
/// identities of 3 images); returns the `.pth`, the training folder and the verification pack, as arguments.
fn model_and_data(dir: &Path) -> (String, String, String) {
    let p = |name: &str| dir.join(name).display().to_string();
    synth_small(&p("synth"), 4, 3);
    (fixture("pth/iresnet_tiny_init.pth").display().to_string(), p("synth/train"), p("synth/val.bin"))
}

/// `train --init`: without network flags the run trains the model's own network (a PyTorch state dict here), and
/// its verification at the start is `eval`'s of the model; with another network given, the flags of the model's
/// are named.
#[test]
fn train_init_fine_tunes_the_models_own_network() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (pth, data, val) = model_and_data(dir.path());
    let common = ["--data", &data, "--val", &val, "--batch", "2", "--max-steps", "2", "--device", "cpu", "--quiet"];
    let out =
        elasticface(&[&["train", "--init", &pth, "--init-head", "imprint", "--out", &p("ft")], &common[..]].concat());
    let config = std::fs::read_to_string(dir.path().join("ft/config.toml")).unwrap();
    for line in
        ["arch = \"custom\"", "layers = [2, 1, 1, 1]", "embedding = 16", "input_size = 32", "init_head = \"imprint\""]
    {
        assert!(config.lines().any(|l| l == line), "{line} not in\n{config}");
    }
    elasticface(&["eval", "--model", &pth, "--bin", &val, "--out", &p("eval"), "--device", "cpu", "--quiet"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval/report.json")).unwrap()).unwrap();
    let start = format!("val verification: {:.2}% -> ", 100.0 * report["sets"][0]["accuracy"].as_f64().unwrap());
    assert!(out.contains(&start), "{start} not in\n{out}");

    // Another embedding size: the model's blocks and widths, its own `fc` and `features` seeded (named in the
    // metrics' first line), the rest of the backbone the model's.
    elasticface(
        &[&["train", "--init", &pth, "--embedding", "8", "--init-head", "random", "--out", &p("e8")], &common[..]]
            .concat(),
    );
    let config = std::fs::read_to_string(dir.path().join("e8/config.toml")).unwrap();
    for line in ["arch = \"custom\"", "layers = [2, 1, 1, 1]", "embedding = 8", "input_size = 32"] {
        assert!(config.lines().any(|l| l == line), "{line} not in\n{config}");
    }
    let metrics = std::fs::read_to_string(dir.path().join("e8/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let seeded: Vec<&str> = first["seeded"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(!seeded.is_empty() && seeded.iter().all(|s| s.starts_with("fc.") || s.starts_with("features.")), "{first}");
    assert!(seeded.contains(&"fc.weight"), "{first}");

    let err =
        elasticface_fails(&[&["train", "--init", &pth, "--arch", "r18", "--out", &p("r18")], &common[..]].concat());
    let want = "give --arch custom --layers 2,1,1,1 --widths 8,16,16,32 --embedding 16 --input-size 32";
    assert!(err.contains(want), "{err}");
}

/// `report` on two runs of the CLI: each one's settings, steps and verification as `train` measured them (its
/// last line in metrics.jsonl, the figure `train` printed), the best model's record, the picture; JSON on request;
/// a folder that is no run is refused, naming what is missing.
#[test]
fn report_summarises_runs_from_their_folders() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (pth, data, val) = model_and_data(dir.path());
    let common = ["--data", &data, "--val", &val, "--batch", "2", "--device", "cpu", "--quiet"];
    let trained = elasticface(
        &[&["train", "--init", &pth, "--max-steps", "3", "--eval-every", "2", "--out", &p("a")], &common[..]].concat(),
    );
    elasticface(
        &[&["train", "--init", &pth, "--max-steps", "2", "--lr", "0.01", "--out", &p("b")], &common[..]].concat(),
    );

    let out = elasticface(&["report", &p("a"), &p("b"), "--out", &p("both")]);
    assert!(out.contains(": custom (layers 2,1,1,1, widths 8,16,16,32), 16-d, elastic-arc-plus, batch 2\n"), "{out}");
    assert!(out.contains("\n  steps             3 of at most 3 (epoch "), "{out}");
    assert!(out.contains("\n  steps             2 of at most 2 (epoch "), "{out}");
    for name in ["training.png", "training.svg"] {
        assert!(dir.path().join("both").join(name).is_file(), "{name}");
    }
    let svg = std::fs::read_to_string(dir.path().join("both/training.svg")).unwrap();
    assert!(svg.contains("\na: val\n") && svg.contains("\nb: val\n"), "the legend names each run's set");

    let json = elasticface(&["report", &p("a"), "--json", "--no-plot"]);
    let s: serde_json::Value = serde_json::from_str(&json).unwrap();
    let a = &s[0];
    assert_eq!((a["steps"].as_u64(), a["last_step"].as_u64()), (Some(3), Some(3)), "{a}");
    let set = &a["sets"][0];
    assert_eq!((set["set"].as_str(), set["measurements"].as_u64()), (Some("val"), Some(3)), "{a}");
    let last = format!("-> {:.2}% (", 100.0 * set["last"]["accuracy"].as_f64().unwrap());
    assert!(trained.contains(&last), "{last} not in\n{trained}");
    let best = &a["best_model"];
    assert_eq!(best["step"], set["best"]["step"], "{a}");
    assert_eq!(best["mean_accuracy"], set["best"]["accuracy"], "{a}");
    assert!(!dir.path().join("a/training.png").exists(), "--no-plot");

    // A run before its first line (opening its data, or imprinting): its settings, no step, nothing to draw.
    std::fs::create_dir(dir.path().join("c")).unwrap();
    std::fs::copy(dir.path().join("a/config.toml"), dir.path().join("c/config.toml")).unwrap();
    let out = elasticface(&["report", &p("c")]);
    assert!(out.contains("elastic-arc-plus, batch 2\n  steps  0 of at most 3\n"), "{out}");
    assert!(!dir.path().join("c/training.png").exists());

    let err = elasticface_fails(&["report", &p("synth")]);
    assert!(err.contains("metrics.jsonl") && err.contains("a run folder"), "{err}");
}

/// `align` on synth's IJB set (its landmark file as it is): every crop is, bit for bit, the face `eval --ijb`
/// aligns; colliding names get crops of their own; JPEG on request; a crop may not replace a photo; bad lines name
/// the list and the line.
#[test]
fn align_writes_the_crops_eval_aligns() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    synth_small(&p("synth"), 3, 2);
    let ijb = dir.path().join("synth/ijb");
    let list = ijb.join("meta/ijb_name_5pts_score.txt");
    let out = elasticface(&[
        "align",
        &list.display().to_string(),
        "--root",
        &ijb.join("loose_crop").display().to_string(),
        "--out",
        &p("aligned"),
        "--size",
        "32",
        "--quiet",
    ]);
    assert!(out.contains("aligned 6 faces into 32x32 crops"), "{out}");
    let set = elasticface::eval::ijb::IjbSet::open(&ijb).unwrap();
    let shape = ImageShape { h: 32, w: 32 };
    for (i, face) in set.faces.iter().enumerate() {
        let crop = dir.path().join("aligned").join(face.file.replace(".jpg", ".png"));
        let (rgb, size) = elasticface::data::decode::decode_rgb_any(&std::fs::read(&crop).unwrap()).unwrap();
        assert_eq!(size, shape);
        assert!(rgb == set.aligned(i, shape).unwrap(), "face {i}");
    }

    // The same photo twice (two faces in it), once as `./`, a photo whose crop name the second face would take,
    // another of the same name but its extension: four crops, none overwritten. JPEG, the list's folder as root;
    // `--exif apply` reads these photos (no EXIF orientation) as stored.
    let photos = dir.path().join("photos/id7");
    std::fs::create_dir_all(&photos).unwrap();
    for (from, to) in [("1.jpg", "a.jpg"), ("2.jpg", "a.jpeg"), ("3.jpg", "a_1.jpg")] {
        std::fs::copy(ijb.join("loose_crop").join(from), photos.join(to)).unwrap();
    }
    let lines = "id7/a.jpg 20 25 44 25 32 38 22 50 42 50\n\n./id7/a.jpg 21 26 45 26 33 39 23 51 43 51 0.9\n\
                 id7/a_1.jpg 20 25 44 25 32 38 22 50 42 50\nid7/a.jpeg 20 25 44 25 32 38 22 50 42 50\n";
    std::fs::write(dir.path().join("photos/list.txt"), lines).unwrap();
    let out = elasticface(&[
        "align",
        &p("photos/list.txt"),
        "--out",
        &p("crops"),
        "--jpeg",
        "90",
        "--exif",
        "apply",
        "--quiet",
    ]);
    assert!(out.contains("aligned 4 faces into 112x112"), "{out}");
    let crops: Vec<Vec<u8>> = ["a.jpg", "a_1.jpg", "a_1_1.jpg", "a_2.jpg"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.path().join("crops/id7").join(name)).unwrap();
            let (rgb, size) = elasticface::data::decode::decode_rgb_any(&bytes).unwrap();
            assert_eq!(size, ImageShape { h: 112, w: 112 });
            rgb
        })
        .collect();
    for i in 0..4 {
        for j in i + 1..4 {
            assert!(crops[i] != crops[j], "crops {i} and {j} are the same: one overwrote another");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path().join("crops/id7")).unwrap().count(), 4);
    // PNG crops written into the photos' own folder would replace PNG photos: refused before anything is written.
    let png = ImageShape { h: 64, w: 64 };
    std::fs::write(photos.join("b.png"), encode_png(&vec![80; png.len()], png).unwrap()).unwrap();
    std::fs::write(dir.path().join("photos/list.txt"), "id7/b.png 20 25 44 25 32 38 22 50 42 50\n").unwrap();
    let err = elasticface_fails(&["align", &p("photos/list.txt"), "--out", &p("photos"), "--quiet"]);
    assert!(err.contains("line 1: the crop") && err.contains("would replace"), "{err}");
    assert_eq!(decode_rgb(&std::fs::read(photos.join("b.png")).unwrap()), vec![80; png.len()]);

    // Bad lines.
    for (lines, want) in [
        ("id7/a.jpg 20 25 44\n", "list.txt line 1: 4 fields, expected 11 or 12"),
        ("\nid7/a.jpg 20 25 44 25 32 38 22 50 42 nan\n", "list.txt line 2: the landmark nan is not finite"),
        ("../a.jpg 20 25 44 25 32 38 22 50 42 50\n", "must be a path inside the root"),
        ("/tmp/a.jpg 20 25 44 25 32 38 22 50 42 50\n", "must be a path inside the root"),
        ("id7/missing.jpg 20 25 44 25 32 38 22 50 42 50\n", "list.txt line 1: "),
        ("\nid7/a.jpg 5 5 5 5 5 5 5 5 5 5\n", "list.txt line 2: "),
    ] {
        std::fs::write(dir.path().join("photos/list.txt"), lines).unwrap();
        let err = elasticface_fails(&["align", &p("photos/list.txt"), "--out", &p("crops2"), "--quiet"]);
        assert!(err.contains(want), "{lines:?}: {err}");
    }
}

fn decode_rgb(bytes: &[u8]) -> Vec<u8> {
    elasticface::data::decode::decode_rgb_any(bytes).unwrap().0
}

/// `enroll` then `identify`, as a user runs them: the gallery holds each person's normalised sum of `embed`'s fused
/// embeddings, bit for bit; `identify` lists the candidates by the core's cosines (f32 and int8) and, with
/// `--truth`, ranks the mates as it lists them; `--update` adds and replaces people; a gallery is refused to another
/// model (not to a converted copy of its own), and an existing one without `--update`; `gallery` lists and removes
/// people.
#[test]
fn enroll_then_identify() {
    use elasticface::identify::Gallery;
    use elasticface_core::embedding::{cosine, l2_normalize};

    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let model = fixture("pth/iresnet_tiny_init.pth").display().to_string();
    // alice: two images in her folder; bob: an image of his own; carol: one image in her folder.
    let people = dir.path().join("people");
    let shape = ImageShape { h: 32, w: 32 };
    for (i, rel) in ["alice/a.png", "alice/b.png", "bob.png", "carol/c.png"].iter().enumerate() {
        let rgb: Vec<u8> = (0..shape.len()).map(|k| ((k * (i + 3)) % 251) as u8).collect();
        let path = people.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, encode_png(&rgb, shape).unwrap()).unwrap();
    }
    let cpu = ["--device", "cpu", "--quiet"];
    let run = |args: &[&str]| elasticface(&[args, &cpu[..]].concat());
    let gallery = p("g.safetensors");
    // `identify` with `model` in the gallery, on the CPU.
    let identify =
        |model: &str, args: &[&str]| run(&[&["identify", "--model", model, "--gallery", &gallery], args].concat());
    let out = run(&["enroll", "--model", &model, &p("people"), "--out", &gallery]);
    assert!(out.contains("enrolled 3 people from 4 images (3 new) -> ") && out.ends_with(": 3 people\n"), "{out}");
    assert!(
        !Path::new(&format!("{gallery}.features")).exists(),
        "the feature file is removed once the gallery is written"
    );

    // The templates: each person's fused unit embeddings (as `embed` writes them) summed and normalised.
    run(&["embed", "--model", &model, &p("people"), "--flip", "--normalize", "--out", &p("e.safetensors")]);
    let e = elasticface::tensorfile::TensorFile::open(Path::new(&p("e.safetensors"))).unwrap();
    let rows: Vec<&[f32]> = e.f32("embeddings").unwrap().chunks_exact(16).collect();
    let unit = |v: Vec<f32>| {
        let mut out = vec![0.0; v.len()];
        l2_normalize(&v, &mut out).unwrap();
        out
    };
    let want = [
        unit(rows[0].iter().zip(rows[1]).map(|(a, b)| a + b).collect()),
        unit(rows[2].to_vec()),
        unit(rows[3].to_vec()),
    ];
    let g = Gallery::open(Path::new(&gallery)).unwrap();
    assert_eq!(
        (g.names.clone(), g.images.clone(), g.dim),
        (vec!["alice".into(), "bob".into(), "carol".into()], vec![2, 1, 1], 16)
    );
    assert_eq!(g.templates, want.concat());

    // Every candidate of every probe, by the core's cosine, best first.
    let out = identify(
        &model,
        &[&p("people/bob.png"), &p("people/alice"), "--top", "3", "--threshold", "0.99", "--out", &p("c.csv")],
    );
    let printed: Vec<&str> = out.lines().collect();
    assert!(printed[0].contains("bob.png: bob (cosine 1.0000); next: "), "{out}");
    assert!(printed[1].contains("alice/a.png: ") && printed[2].contains("alice/b.png: "), "{out}");
    assert!(out.contains("of 3 probes identified among 3 people (f32 search, cosine >= 0.99)"), "{out}");
    let csv = std::fs::read_to_string(p("c.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!((lines[0], lines.len()), ("probe,rank,name,cosine,accepted", 1 + 3 * 3));
    let probe_rows = [rows[2], rows[0], rows[1]];
    for (k, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let (probe, rank) = (k / 3, k % 3);
        assert_eq!(f[1], (rank + 1).to_string(), "{line}");
        let person = ["alice", "bob", "carol"].iter().position(|n| *n == f[2]).unwrap();
        let c: f32 = f[3].parse().unwrap();
        assert_eq!(c, cosine(probe_rows[probe], &want[person]).unwrap(), "{line}");
        assert_eq!(f[4], (c >= 0.99).to_string(), "{line}");
        if rank > 0 {
            let before: f32 = lines[k].split(',').nth(3).unwrap().parse().unwrap();
            assert!(before >= c, "{line} after {}", lines[k]);
        }
    }
    // int8, as a device: bob's quantised probe against his quantised template.
    let out = identify(&model, &[&p("people/bob.png"), "--int8"]);
    assert!(out.contains("bob.png: bob (cosine 1.0000)") && out.contains("(int8 search"), "{out}");

    // --update: dave is added, bob gets carol's image in his place; without --update the file is refused.
    std::fs::create_dir_all(dir.path().join("more/bob")).unwrap();
    std::fs::copy(people.join("carol/c.png"), dir.path().join("more/bob/c.png")).unwrap();
    std::fs::copy(people.join("alice/a.png"), dir.path().join("more/dave.png")).unwrap();
    let err = elasticface_fails(&["enroll", "--model", &model, &p("more"), "--out", &gallery, "--device", "cpu"]);
    assert!(err.contains("exists: add --update"), "{err}");
    let out = run(&["enroll", "--model", &model, &p("more"), "--out", &gallery, "--update"]);
    assert!(
        out.contains("enrolled 2 people from 2 images (1 new, 1 replaced)") && out.ends_with(": 4 people\n"),
        "{out}"
    );
    let g = Gallery::open(Path::new(&gallery)).unwrap();
    assert_eq!(g.names, ["alice", "bob", "carol", "dave"]);
    assert_eq!(g.templates, [&want[0][..], &want[2], &want[2], &unit(rows[0].to_vec())].concat());

    // `gallery` lists it; --remove takes people out (a name it does not hold changes nothing).
    let out = elasticface(&["gallery", &gallery]);
    assert!(
        out.contains(": 4 people, templates of 16 values\nmodel: ") && out.contains("\n  alice  2 images\n"),
        "{out}"
    );
    let err = elasticface_fails(&["gallery", &gallery, "--remove", "carol", "--remove", "erin"]);
    assert!(err.contains("\"erin\" is not in the gallery"), "{err}");
    let copy = p("copy.safetensors");
    std::fs::copy(&gallery, &copy).unwrap();
    let out = elasticface(&["gallery", &copy, "--remove", "carol", "--remove", "alice"]);
    assert!(out.contains("removed carol, alice") && out.contains(": 2 people"), "{out}");
    assert_eq!(Gallery::open(Path::new(&copy)).unwrap().names, ["bob", "dave"]);
    assert_eq!(Gallery::open(Path::new(&gallery)).unwrap(), g);

    // --truth: probes of known people (people/: all enrolled; more/: bob and dave, enrolled too) measured as 1:N.
    let out = identify(&model, &[&p("people"), &p("more"), "--truth", "--top", "4", "--out", &p("t.json")]);
    assert!(out.contains("1:N on 6 probes: 6 mated (their person enrolled), 0 non-mated"), "{out}");
    assert!(out.contains("TPIR at FPIR 1e-1: n/a (takes at least 10 non-mated probes)"), "{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("t.json")).unwrap()).unwrap();
    let e = &report["evaluation"];
    assert_eq!((e["probes"].as_u64(), e["mated"].as_u64()), (Some(6), Some(6)));
    // The rank-1 hits are the probes whose own person comes first, strictly: a tie counts against the mate (bob's
    // template is carol's image, so her probe and bob's copy of it tie at cosine 1 with both).
    let hits = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let probe = p["probe"].as_str().unwrap();
            let (first, c) = (&p["candidates"][0], &p["candidates"]);
            let name = first["name"].as_str().unwrap();
            let own = probe.contains(&format!("/{name}/")) || probe.ends_with(&format!("/{name}.png"));
            own && c[1]["cosine"].as_f64() < first["cosine"].as_f64()
        })
        .count();
    assert_eq!((e["rank"][0]["hits"].as_u64(), hits), (Some(2), 2), "{report}");
    assert_eq!(e["rank"][1]["hits"].as_u64(), Some(6), "4 people: every mate within rank 5");

    // The same weights imported, or exported to ONNX, are the same model.
    elasticface(&["import", &model, "--out", &p("tiny.safetensors")]);
    elasticface(&["export", "--model", &p("tiny.safetensors"), "--out", &p("tiny.onnx")]);
    for copy in [p("tiny.safetensors"), p("tiny.onnx")] {
        let out = identify(&copy, &[&p("more/dave.png")]);
        assert!(out.contains("dave.png: dave (cosine 1.0000)"), "{copy}: {out}");
    }

    // Another model's embeddings cannot be searched in this gallery.
    let mut other = elasticface::checkpoint::Backbone::open(Path::new(&model), None, None).unwrap();
    other.state[0] += 0.5;
    other.save(Path::new(&p("other.safetensors")), serde_json::json!({})).unwrap();
    let other = p("other.safetensors");
    let err =
        elasticface_fails(&["identify", "--model", &other, "--gallery", &gallery, &p("people"), "--device", "cpu"]);
    assert!(err.contains("was enrolled with another model") && err.contains("enrol the people again"), "{err}");
}

/// An unreadable image stops `enroll`, `embed` and `identify`, naming it; with `--skip-bad-images` it is left out,
/// named in a warning, and a person left with no image is not enrolled.
#[test]
fn unreadable_images_are_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let model = fixture("pth/iresnet_tiny_init.pth").display().to_string();
    let shape = ImageShape { h: 32, w: 32 };
    for (i, rel) in ["people/ann/1.png", "people/ann/2.png", "people/ben/1.png"].iter().enumerate() {
        let rgb: Vec<u8> = (0..shape.len()).map(|k| ((k * (i + 5)) % 247) as u8).collect();
        std::fs::create_dir_all(dir.path().join(rel).parent().unwrap()).unwrap();
        std::fs::write(dir.path().join(rel), encode_png(&rgb, shape).unwrap()).unwrap();
    }
    std::fs::write(dir.path().join("people/ann/3.jpg"), b"truncated").unwrap();
    std::fs::create_dir_all(dir.path().join("people/cat")).unwrap();
    std::fs::write(dir.path().join("people/cat/1.jpg"), b"").unwrap();
    let cpu = ["--device", "cpu", "--quiet"];

    let args = ["enroll", "--model", &model, &p("people"), "--out", &p("g.safetensors")];
    let err = elasticface_fails(&[&args[..], &cpu].concat());
    assert!(err.contains("ann/3.jpg"), "{err}");
    assert!(!dir.path().join("g.safetensors").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_elasticface"))
        .args([&args[..], &cpu, &["--skip-bad-images"]].concat())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 2 unreadable images: ") && stderr.contains("ann/3.jpg"), "{stderr}");
    assert!(stderr.contains("not enrolled, no image of theirs could be read: cat"), "{stderr}");
    assert!(stdout.contains("enrolled 2 people from 3 images"), "{stdout}");
    let g = elasticface::identify::Gallery::open(Path::new(&p("g.safetensors"))).unwrap();
    assert_eq!((g.names, g.images), (vec!["ann".to_string(), "ben".into()], vec![2, 1]));

    // embed: the list names the images embedded; identify: the skipped probe has no line.
    let out = elasticface(
        &[&["embed", "--model", &model, &p("people"), "--out", &p("e.npy"), "--skip-bad-images"][..], &cpu].concat(),
    );
    assert!(out.contains("3 embeddings of size 16"), "{out}");
    assert_eq!(std::fs::read_to_string(p("e.files.txt")).unwrap().lines().count(), 3);
    let out = elasticface(
        &[
            &["identify", "--model", &model, "--gallery", &p("g.safetensors"), &p("people"), "--skip-bad-images"][..],
            &cpu,
        ]
        .concat(),
    );
    assert!(out.contains("of 3 probes identified among 2 people") && !out.contains("3.jpg"), "{out}");
}
