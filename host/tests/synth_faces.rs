//! The synthetic-faces generator: deterministic to the bit, identities differ, and raw pixels do not identify a
//! person (so a model has to learn identity features); `elasticface synth` writes readable RecordIO and a
//! verification pack in insightface's pickle format.

use elasticface::data::faces::render;
use elasticface::data::{Dataset, RecordIoDataset};
use elasticface_core::nn::ImageShape;
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn rendering_is_pinned_bit_for_bit() {
    // Changing these hashes changes every synthetic data set and the demo's figures: a breaking change.
    let a = render(0, 0, 0, ImageShape { h: 112, w: 112 });
    let b = render(7, 5, 3, ImageShape { h: 48, w: 48 });
    assert_eq!(a, render(0, 0, 0, ImageShape { h: 112, w: 112 }));
    assert_eq!(sha(&a), "9df0386eaf82f85a1ede4779c08b092f9f1196dd3a88885f148d88a9a47110b2");
    assert_eq!(sha(&b), "e3ead5a5b9dcd7c9d866ffac83c8e2cad7be8f83867e206a404f755341694567");
}

/// 1-nearest-neighbour identification on raw pixels: enrol `enrol` samples per identity, probe with the rest.
fn raw_pixel_nn_accuracy(ids: u64, enrol: u64, probes: u64, size: usize) -> f64 {
    let shape = ImageShape { h: size, w: size };
    let gallery: Vec<(u64, Vec<u8>)> =
        (0..ids).flat_map(|i| (0..enrol).map(move |k| (i, render(1, i, k, shape)))).collect();
    let mut correct = 0;
    for i in 0..ids {
        for k in enrol..enrol + probes {
            let p = render(1, i, k, shape);
            let d = |g: &[u8]| g.iter().zip(&p).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>();
            let best = gallery.iter().min_by(|a, b| d(&a.1).total_cmp(&d(&b.1))).unwrap();
            correct += usize::from(best.0 == i);
        }
    }
    correct as f64 / (ids * probes) as f64
}

#[test]
fn raw_pixels_do_not_identify_people() {
    let acc = raw_pixel_nn_accuracy(20, 5, 5, 32);
    println!("raw-pixel 1-NN accuracy over 20 identities: {acc:.3} (chance 0.05)");
    assert!(acc < 0.35, "raw pixels identify {acc:.3} of probes: the task would not need learning");
}

#[test]
fn samples_of_one_identity_are_closer_than_samples_of_two() {
    // Necessary (not sufficient: see the nearest-neighbour test): on average, two images of one person are
    // closer in pixels than images of two people.
    let shape = ImageShape { h: 32, w: 32 };
    let imgs: Vec<Vec<Vec<u8>>> = (0..8).map(|i| (0..6).map(|k| render(2, i, k, shape)).collect()).collect();
    let d =
        |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>().sqrt();
    let (mut intra, mut inter, mut ni, mut nx) = (0.0, 0.0, 0, 0);
    for i in 0..8 {
        for j in 0..8 {
            for a in 0..6 {
                for b in 0..6 {
                    if (i, a) < (j, b) {
                        let v = d(&imgs[i][a], &imgs[j][b]);
                        if i == j {
                            intra += v;
                            ni += 1
                        } else {
                            inter += v;
                            nx += 1
                        }
                    }
                }
            }
        }
    }
    let (intra, inter) = (intra / ni as f64, inter / nx as f64);
    println!("mean pixel distance: same identity {intra:.0}, different {inter:.0}");
    assert!(intra < inter, "{intra} vs {inter}");
}

#[test]
fn synth_writes_recordio_and_a_verification_pack() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = elasticface::synth::SynthConfig {
        out: dir.path().to_path_buf(),
        ids: 6,
        per_id: 3,
        val_ids: 3,
        val_per_id: 2,
        val_pairs: 9,
        size: 32,
        seed: 4,
        quality: 95,
    };
    let out = elasticface::synth::synth(&cfg, true).unwrap();
    // Training and held-out images, and the held-out identities again as the IJB set's crops.
    assert_eq!(out.images, 6 * 3 + 3 * 2 + 3 * 2);
    let ijb = elasticface::eval::ijb::IjbSet::open(&out.ijb).unwrap();
    assert_eq!((ijb.faces.len(), ijb.pairs.0.len()), (6, 15));
    // 1:N: the first templates of identities 0 and 2 (even: G1, subjects 1 and 3) and of 1 (G2); the second ones
    // probe.
    let search = ijb.search.as_ref().expect("1:N lists");
    let galleries: Vec<_> = search.galleries.iter().map(|g| (g.name.as_str(), g.templates.clone())).collect();
    assert_eq!(galleries, [("G1", vec![(1, 1), (5, 3)]), ("G2", vec![(3, 2)])]);
    assert_eq!(search.probes, [(2, 1), (4, 2), (6, 3)]);
    let train = RecordIoDataset::open(&out.train).unwrap();
    assert_eq!((train.len(), train.num_classes()), (18, 6));
    assert_eq!(train.load(4).unwrap().label, 1);
    let val = RecordIoDataset::open(&out.val).unwrap();
    assert_eq!((val.len(), val.num_classes()), (6, 3));
    let bin = std::fs::read(&out.val_bin).unwrap();
    let pack = elasticface::eval::bin::VerificationPack::open(&out.val_bin).unwrap();
    assert_eq!(pack.pairs(), 9);
    // The same seed writes the same bytes.
    let again = tempfile::tempdir().unwrap();
    elasticface::synth::synth(&elasticface::synth::SynthConfig { out: again.path().to_path_buf(), ..cfg }, true)
        .unwrap();
    assert_eq!(std::fs::read(again.path().join("val.bin")).unwrap(), bin);
    for file in ["ijb/loose_crop/6.jpg", "ijb/meta/ijb_name_5pts_score.txt", "ijb/meta/ijb_1N_probe_mixed.csv"] {
        assert_eq!(std::fs::read(again.path().join(file)).unwrap(), std::fs::read(dir.path().join(file)).unwrap());
    }
    assert_eq!(
        std::fs::read(again.path().join("train/train.rec")).unwrap(),
        std::fs::read(out.train.join("train.rec")).unwrap()
    );
}

#[test]
fn the_pickle_has_python_2s_opcodes() {
    // (["ab", <300 bytes>], [True]) as Python 2's pickle.dumps(..., 2) writes it.
    let long = vec![7u8; 300];
    let bytes = elasticface::eval::bin::write_python2_pack(&[b"ab".to_vec(), long.clone()], &[true]);
    let mut want = vec![0x80, 2, b']', b'q', 0, b'(', b'U', 2, b'a', b'b', b'q', 1, b'T', 44, 1, 0, 0];
    want.extend_from_slice(&long);
    want.extend_from_slice(&[b'q', 2, b'e', b']', b'q', 3, 0x88, b'a', 0x86, b'q', 4, b'.']);
    assert_eq!(bytes, want);
}
