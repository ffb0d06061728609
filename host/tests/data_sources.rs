//! Image folders, the synthetic source, `data::open`, and the decoder's conversions.

use std::fs;
use std::path::Path;

use elasticface::data::decode::{decode_rgb, encode_jpeg, encode_png};
use elasticface::data::{self, Dataset, ImageFolder, RecordIoPaths, RecordIoWriter, SyntheticDataset};
use elasticface_core::nn::ImageShape;

const SHAPE: ImageShape = ImageShape { h: 12, w: 10 };

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn rgb(seed: u8) -> Vec<u8> {
    (0..SHAPE.len()).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect()
}

fn put(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn image_folder_labels_identities_by_sorted_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(&root.join("bob/2.png"), &encode_png(&rgb(2), SHAPE).unwrap());
    put(&root.join("bob/1.PNG"), &encode_png(&rgb(1), SHAPE).unwrap());
    put(&root.join("alice/b.JPEG"), &encode_jpeg(&rgb(3), SHAPE, 95).unwrap());
    put(&root.join("alice/a.jpg"), &encode_jpeg(&rgb(4), SHAPE, 95).unwrap());
    put(&root.join("alice/notes.txt"), b"not an image");
    put(&root.join("alice/.hidden.jpg"), b"ignored");
    put(&root.join("alice/nested/c.jpg"), b"ignored: not directly in the identity folder");
    put(&root.join("carol_001/x.jpeg"), &encode_jpeg(&rgb(5), SHAPE, 95).unwrap());
    put(&root.join("README.txt"), b"files at the root are ignored");
    fs::create_dir_all(root.join(".cache/junk")).unwrap();

    let ds = ImageFolder::open(root, SHAPE).unwrap();
    let names: Vec<String> = ds.class_names().map(|n| n.to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["alice", "bob", "carol_001"]);
    assert_eq!((ds.len(), ds.num_classes(), ds.image_shape()), (5, 3, SHAPE));
    let files: Vec<String> =
        (0..5).map(|i| ds.path(i).unwrap().strip_prefix(root).unwrap().display().to_string()).collect();
    assert_eq!(files, ["alice/a.jpg", "alice/b.JPEG", "bob/1.PNG", "bob/2.png", "carol_001/x.jpeg"]);
    let labels: Vec<u32> = (0..5).map(|i| ds.load(i).unwrap().label).collect();
    assert_eq!(labels, [0, 0, 1, 1, 2]);
    assert_eq!(ds.load(2).unwrap().rgb, rgb(1), "PNG is lossless");
    assert!(ds.describe(4).ends_with("x.jpeg"));
}

#[test]
fn image_folder_errors_name_the_folder_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let e = err_text(ImageFolder::open(root, SHAPE));
    assert!(e.contains("no identity sub-folder") && e.contains(&root.display().to_string()), "{e}");
    assert!(err_text(ImageFolder::open(&root.join("missing"), SHAPE)).contains("cannot list"));

    fs::create_dir_all(root.join("empty")).unwrap();
    put(&root.join("empty/readme.md"), b"no images");
    let e = err_text(ImageFolder::open(root, SHAPE));
    assert!(e.contains("identity folder") && e.contains("empty") && e.contains("no .jpg"), "{e}");

    fs::remove_dir_all(root.join("empty")).unwrap();

    // A folder of datasets (as `elasticface synth` writes) given for one of them: the error says which to pass.
    put(&root.join("train/train.rec"), b"");
    let e = err_text(ImageFolder::open(root, SHAPE));
    let train = root.join("train").display().to_string();
    assert!(e.contains("holds a RecordIO dataset") && e.contains(&format!("pass {train} itself")), "{e}");
    fs::remove_dir_all(root.join("train")).unwrap();

    let big = ImageShape { h: 24, w: 10 };
    put(&root.join("a/big.png"), &encode_png(&vec![7; big.len()], big).unwrap());
    put(&root.join("a/bad.jpg"), b"\xff\xd8\xff\xe0 truncated");
    put(&root.join("a/text.png"), b"hello");
    let ds = ImageFolder::open(root, SHAPE).unwrap();
    let e = err_text(ds.load(1)); // big.png (sorted: bad.jpg, big.png, text.png)
    assert!(e.contains("big.png") && e.contains("image is 24x10 (HxW) but 12x10 is required"), "{e}");
    let e = err_text(ds.load(0));
    assert!(e.contains("bad.jpg") && e.contains("corrupt JPEG"), "{e}");
    let e = err_text(ds.load(2));
    assert!(e.contains("text.png") && e.contains("not a JPEG or PNG image (5 bytes, starting 68 65 6c 6c 6f)"), "{e}");
}

#[test]
fn synthetic_samples_are_a_function_of_seed_and_index() {
    let a = SyntheticDataset::new(11, 100, 7, SHAPE).unwrap();
    let b = SyntheticDataset::new(11, 100, 7, SHAPE).unwrap();
    let c = SyntheticDataset::new(12, 100, 7, SHAPE).unwrap();
    assert_eq!(a.load(42).unwrap(), b.load(42).unwrap());
    assert_ne!(a.load(42).unwrap().rgb, c.load(42).unwrap().rgb);
    assert_ne!(a.load(42).unwrap().rgb, a.load(43).unwrap().rgb);
    assert_eq!((0..9).map(|i| a.load(i).unwrap().label).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6, 0, 1]);
    assert_eq!(a.load(0).unwrap().rgb.len(), SHAPE.len());
    assert!(a.load(100).is_err());
    assert!(SyntheticDataset::new(1, 10, 0, SHAPE).is_err());
    // Pixels are spread over the whole byte range.
    let px = a.load(3).unwrap().rgb;
    let mean = px.iter().map(|&p| f64::from(p)).sum::<f64>() / px.len() as f64;
    assert!((100.0..155.0).contains(&mean), "{mean}");
}

#[test]
fn open_picks_the_source_from_the_path() {
    let dir = tempfile::tempdir().unwrap();
    put(&dir.path().join("folder/id0/a.png"), &encode_png(&rgb(1), SHAPE).unwrap());
    let ds = data::open(&dir.path().join("folder"), SHAPE).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (1, 1));

    let rec_dir = dir.path().join("rec");
    fs::create_dir_all(&rec_dir).unwrap();
    let mut w = RecordIoWriter::create(&RecordIoPaths::in_dir(&rec_dir), 2, SHAPE).unwrap();
    w.add_image(1, &encode_png(&rgb(3), SHAPE).unwrap()).unwrap();
    w.finish().unwrap();
    for path in [rec_dir.clone(), rec_dir.join("train.rec")] {
        let ds = data::open(&path, SHAPE).unwrap();
        assert_eq!((ds.len(), ds.num_classes(), ds.load(0).unwrap().label), (1, 2, 1));
    }
    let e = err_text(data::open(&rec_dir, ImageShape { h: 112, w: 112 }));
    assert!(e.contains("images are 12x10 (property file) but 112x112 is required"), "{e}");
}

#[test]
fn decoder_converts_grey_and_alpha_to_rgb() {
    let shape = ImageShape { h: 4, w: 3 };
    let grey: Vec<u8> = (0..12).map(|i| i * 20).collect();
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png).write_image(&grey, 3, 4, image::ExtendedColorType::L8).unwrap();
    }
    let want: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
    assert_eq!(decode_rgb(&png, shape).unwrap(), want);

    let rgba: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgba, 3, 4, image::ExtendedColorType::Rgba8)
            .unwrap();
    }
    let want: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(decode_rgb(&png, shape).unwrap(), want, "alpha dropped, not blended");

    let grey_flat = vec![77u8; 64];
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode(&grey_flat, 8, 8, image::ExtendedColorType::L8)
        .unwrap();
    let out = decode_rgb(&jpeg, ImageShape { h: 8, w: 8 }).unwrap();
    assert!(out.iter().all(|&v| v.abs_diff(77) <= 1), "{out:?}");
}

#[cfg(unix)]
#[test]
fn image_folder_follows_symbolic_links() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    put(&elsewhere.join("eve/e.png"), &encode_png(&rgb(6), SHAPE).unwrap());
    put(&elsewhere.join("f.png"), &encode_png(&rgb(7), SHAPE).unwrap());
    let root = dir.path().join("root");
    put(&root.join("adam/a.png"), &encode_png(&rgb(8), SHAPE).unwrap());
    std::os::unix::fs::symlink(elsewhere.join("eve"), root.join("eve")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("f.png"), root.join("adam/f.png")).unwrap();
    let ds = ImageFolder::open(&root, SHAPE).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (3, 2));
    assert_eq!(ds.load(1).unwrap().rgb, rgb(7));
    assert_eq!(ds.load(2).unwrap(), data::Sample { rgb: rgb(6), label: 1 });
}
