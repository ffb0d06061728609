//! `embed` and `enroll` keep the embeddings of a long run in a feature file as they go: a run stopped part way
//! (here by a backend that fails, as a crash would stop it) and started again embeds the first chunk again (to
//! check the file), then only the images the file lacks, with the same bits as a run never stopped.

use std::path::PathBuf;

use elasticface::data::decode::encode_png;
use elasticface::embed::{embed_files, resume_path, EmbedOptions};
use elasticface::train::run::{open_inference, Device};
use elasticface_core::nn::ImageShape;
use elasticface_tests::{tiny_backbone, Stopping};

#[test]
fn a_stopped_embedding_resumes_from_its_feature_file() {
    let dir = tempfile::tempdir().unwrap();
    // 1,100 images: chunks of 1,024 and 76; each chunk is two embed calls (the images, their mirror images).
    let shape = ImageShape { h: 16, w: 16 };
    let files: Vec<PathBuf> = (0..1100usize)
        .map(|i| {
            let rgb: Vec<u8> = (0..shape.len()).map(|k| ((k * 7 + i * 13 + k * i) % 251) as u8).collect();
            let path = dir.path().join(format!("{i:04}.png"));
            std::fs::write(&path, encode_png(&rgb, shape).unwrap()).unwrap();
            path
        })
        .collect();
    let backend = |fail_at: Option<usize>| Stopping {
        inner: open_inference(&tiny_backbone(3), Device::Cpu, None, 0, 64).unwrap(),
        calls: 0,
        fail_at,
        take_file_at: None,
    };
    let opts = EmbedOptions { flip: true, normalize: true, quiet: true, skip_bad: false };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

    let mut whole = backend(None);
    let straight = embed_files(&mut whole, &files, shape, opts, None).unwrap();
    assert_eq!((whole.calls, straight.values.len()), (4, 1100 * 8));

    let file = resume_path(&dir.path().join("out.npy"));
    assert_eq!(file.file_name().unwrap(), "out.npy.features");
    let mut stopped = backend(Some(2));
    assert!(embed_files(&mut stopped, &files, shape, opts, Some(&file)).is_err(), "stopped in the second chunk");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 + 1024 * 8 * 4, "the first chunk kept");
    let mut resumed = backend(None);
    let again = embed_files(&mut resumed, &files, shape, opts, Some(&file)).unwrap();
    assert_eq!(resumed.calls, 4, "the first chunk (the check) and the second");
    assert!(bits(&again.values) == bits(&straight.values), "resumed embeddings differ");
    // A whole file is read, not embedded again.
    let mut reread = backend(None);
    assert!(
        bits(&embed_files(&mut reread, &files, shape, opts, Some(&file)).unwrap().values) == bits(&straight.values)
    );
    assert_eq!(reread.calls, 2);

    // An image replaced under its name (another size, time or content), another flip or another list: afresh.
    let other = EmbedOptions { flip: false, ..opts };
    let mut b = backend(None);
    embed_files(&mut b, &files, shape, other, Some(&file)).unwrap();
    assert_eq!(b.calls, 2, "without flips: one call a chunk, nothing read back");
    let mut b = backend(None);
    embed_files(&mut b, &files[1..], shape, opts, Some(&file)).unwrap();
    assert_eq!(b.calls, 4, "another list");
    let mut b = backend(None);
    embed_files(&mut b, &files, shape, opts, Some(&file)).unwrap();
    std::fs::write(&files[1099], encode_png(&vec![9u8; shape.len()], shape).unwrap()).unwrap();
    let mut b = backend(None);
    let changed = embed_files(&mut b, &files, shape, opts, Some(&file)).unwrap();
    assert_eq!(b.calls, 4, "a replaced image: embedded again");
    assert!(bits(&changed.values[..1099 * 8]) == bits(&straight.values[..1099 * 8]));
    assert!(bits(&changed.values[1099 * 8..]) != bits(&straight.values[1099 * 8..]));
}

/// With `skip_bad`, unreadable images are left out (their indices in `skipped`), the others embedded with the same
/// bits as a list without them, also across a resume, where a skipped image is known from the feature file; without
/// it, the first unreadable image stops the run, and a feature file that skipped one is refused.
#[test]
fn unreadable_images_are_skipped_when_asked_and_named_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let shape = ImageShape { h: 16, w: 16 };
    let bad = [5usize, 1050];
    let files: Vec<PathBuf> = (0..1100usize)
        .map(|i| {
            let path = dir.path().join(format!("{i:04}.png"));
            if bad.contains(&i) {
                std::fs::write(&path, b"not an image").unwrap();
            } else {
                let rgb: Vec<u8> = (0..shape.len()).map(|k| ((k * 5 + i * 11 + k * i) % 249) as u8).collect();
                std::fs::write(&path, encode_png(&rgb, shape).unwrap()).unwrap();
            }
            path
        })
        .collect();
    let good: Vec<PathBuf> =
        files.iter().enumerate().filter(|(i, _)| !bad.contains(i)).map(|(_, f)| f.clone()).collect();
    let backend = |fail_at: Option<usize>| Stopping {
        inner: open_inference(&tiny_backbone(4), Device::Cpu, None, 0, 64).unwrap(),
        calls: 0,
        fail_at,
        take_file_at: None,
    };
    let strict = EmbedOptions { flip: true, normalize: true, quiet: true, skip_bad: false };
    let skip = EmbedOptions { skip_bad: true, ..strict };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

    let err = embed_files(&mut backend(None), &files, shape, strict, None).unwrap_err();
    assert!(format!("{err:#}").contains("0005.png"), "{err:#}");
    let want = embed_files(&mut backend(None), &good, shape, strict, None).unwrap();

    let got = embed_files(&mut backend(None), &files, shape, skip, None).unwrap();
    assert_eq!(got.skipped, bad);
    assert!(bits(&got.values) == bits(&want.values), "the readable images embed as a list without the others");
    assert_eq!(got.kept(&files), good);

    // Stopped in the second chunk, resumed: image 5 is known skipped from the file, 1050 is skipped again.
    let file = resume_path(&dir.path().join("out.npy"));
    assert!(embed_files(&mut backend(Some(2)), &files, shape, skip, Some(&file)).is_err());
    let again = embed_files(&mut backend(None), &files, shape, skip, Some(&file)).unwrap();
    assert_eq!(again.skipped, bad);
    assert!(bits(&again.values) == bits(&want.values), "resumed embeddings differ");
    // Without skip_bad, a file that skipped an image (after its first chunk, which is embedded again) is refused
    // rather than read as an embedding.
    let rest: Vec<PathBuf> = files.iter().filter(|f| !f.ends_with("0005.png")).cloned().collect();
    let file = resume_path(&dir.path().join("rest.npy"));
    embed_files(&mut backend(None), &rest, shape, skip, Some(&file)).unwrap();
    let err = embed_files(&mut backend(None), &rest, shape, strict, Some(&file)).unwrap_err();
    assert!(err.to_string().contains("1050.png: cannot be read (skipped by an earlier run"), "{err}");
}
