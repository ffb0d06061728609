//! The verification measures and the gallery through the public API, against numpy and against each other.

use elasticface_core::embedding::{cosine, cosine_i8, dequantize_i8, fuse_flip, quantize_i8, squared_l2};
use elasticface_core::gallery::Gallery;
use elasticface_core::verify::{
    fused_distances, kfold_accuracy, roc, roc_evenly_spaced, tar_at_far, FlipPairs, RocPoint, FOLDS,
};

/// Deterministic pairs that numpy can rebuild in float32:
/// `k = (p * 7919) % 1499; same = (p * 31) % 7 < 3; dist = float32(k) / float32(1000) + (0 if same else 0.6)`.
fn numpy_pairs(n: usize) -> (Vec<f32>, Vec<bool>) {
    let same: Vec<bool> = (0..n).map(|p| (p * 31) % 7 < 3).collect();
    let dist = (0..n).map(|p| ((p * 7919) % 1499) as f32 / 1000.0 + if same[p] { 0.0 } else { 0.6 }).collect();
    (dist, same)
}

/// Expected values printed (as `repr` of float64) by the reference's own `kfold_accuracy`
/// (shared/reference/gen_reference.py) under numpy 2.4.6, on [`numpy_pairs`].
#[test]
fn kfold_equals_numpy_bit_for_bit() {
    let (dist, same) = numpy_pairs(997);
    let r = kfold_accuracy(&dist, &same).unwrap();
    assert_eq!(r.thresholds, [0.6; FOLDS]);
    let acc = [0.71, 0.7, 0.84, 0.7, 0.72, 0.76, 0.78, 0.696969696969697, 0.696969696969697, 0.8484848484848485];
    assert_eq!(r.accuracies, acc);
    assert_eq!((r.mean, r.std), (0.7452424242424243, 0.05630039625896462));

    let (dist, same) = numpy_pairs(64);
    let r = kfold_accuracy(&dist, &same).unwrap();
    assert_eq!(r.thresholds, [0.6, 0.5700000000000001, 0.6, 0.6, 0.6, 0.6, 0.6, 0.63, 0.6, 0.6]);
    let (a, b, c) = (0.7142857142857143, 0.5714285714285714, 0.6666666666666666);
    assert_eq!(r.accuracies, [a, b, a, a, c, c, c, c, c, c]);
    assert_eq!((r.mean, r.std), (0.6714285714285715, 0.03955535172818132));
}

#[test]
fn tar_at_far_agrees_with_roc_and_is_the_largest_admissible_threshold() {
    let (dist, same) = numpy_pairs(997);
    let mut scratch = vec![0.0f32; dist.len()];
    for far in [0.01, 0.05, 0.1, 0.3, 0.5, 0.99] {
        let r = tar_at_far(&dist, &same, far, &mut scratch).unwrap().unwrap();
        assert!(r.far <= far, "{far}: {r:?}");
        let mut at = [RocPoint::default(); 2];
        let above = f64::from(r.threshold.next_up());
        roc(&dist, &same, &[f64::from(r.threshold), above], &mut at).unwrap();
        assert_eq!((at[0].far, at[0].tar), (r.far, r.tar), "{far}");
        // Any larger threshold accepts too many impostors.
        assert!(at[1].far > far, "{far}: {r:?} {at:?}");
    }
    // 997 pairs hold ~570 impostors: a FAR of 1e-3 is unresolvable.
    assert_eq!(tar_at_far(&dist, &same, 1e-3, &mut scratch), Ok(None));
}

#[test]
fn roc_is_monotone_and_spans_zero_to_one() {
    let (dist, same) = numpy_pairs(997);
    let mut points = [RocPoint::default(); 41];
    roc_evenly_spaced(&dist, &same, 0.0, 4.0, &mut points).unwrap();
    assert_eq!((points[0].far, points[0].tar), (0.0, 0.0));
    assert_eq!((points[40].far, points[40].tar), (1.0, 1.0));
    assert!(points.windows(2).all(|w| w[0].far <= w[1].far && w[0].tar <= w[1].tar));
}

#[test]
fn fused_distances_use_the_embedding_functions() {
    // Three pairs of 4-d embeddings.
    let e: Vec<f32> = (0..48).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
    let (emb1, rest) = e.split_at(12);
    let (emb1_flip, rest) = rest.split_at(12);
    let (emb2, emb2_flip) = rest.split_at(12);
    let pairs = FlipPairs { dim: 4, emb1, emb1_flip, emb2, emb2_flip };
    let mut dist = [0.0f32; 3];
    fused_distances(&pairs, &mut [0.0; 12], &mut dist).unwrap();
    for (p, &d) in dist.iter().enumerate() {
        let r = p * 4..p * 4 + 4;
        let (mut sum, mut f1, mut f2) = ([0.0f32; 4], [0.0f32; 4], [0.0f32; 4]);
        fuse_flip(&emb1[r.clone()], &emb1_flip[r.clone()], &mut sum, &mut f1).unwrap();
        fuse_flip(&emb2[r.clone()], &emb2_flip[r], &mut sum, &mut f2).unwrap();
        assert_eq!(d, squared_l2(&f1, &f2).unwrap());
        // Unit vectors: squared distance = 2 - 2 cos.
        assert!((d - (2.0 - 2.0 * cosine(&f1, &f2).unwrap())).abs() < 1e-6);
    }
}

#[test]
fn a_gallery_of_quantised_embeddings_still_identifies() {
    const D: usize = 64;
    let face = |id: u32, jitter: u32| -> [f32; D] {
        core::array::from_fn(|k| {
            let base = ((id as usize * 131 + k * 29) % 97) as f32 / 48.0 - 1.0;
            let noise = ((jitter as usize * 7 + k * 13) % 11) as f32 / 110.0 - 0.05;
            base + noise
        })
    };
    let mut g: Gallery<8, D> = Gallery::new();
    for id in 0..8 {
        let mut q = [0i8; D];
        let s = quantize_i8(&face(id, 0), &mut q).unwrap();
        let mut back = [0.0f32; D];
        dequantize_i8(&q, s, &mut back).unwrap();
        g.enroll(id, back).unwrap();
    }
    assert!(g.enroll(8, face(8, 0)).is_err());
    for id in 0..8 {
        let probe = face(id, 1);
        let top = g.identify::<3>(&probe, -1.0).unwrap();
        assert_eq!(top[0].id, id);
        let v = g.verify(id, &probe, 0.9).unwrap().unwrap();
        assert!(v.accepted && v.cosine == top[0].cosine);
        // int8 cosines track the float ones.
        let (mut qa, mut qb) = ([0i8; D], [0i8; D]);
        quantize_i8(&probe, &mut qa).unwrap();
        quantize_i8(g.get(id).unwrap(), &mut qb).unwrap();
        assert!((cosine_i8(&qa, &qb).unwrap() - v.cosine).abs() < 1e-2);
    }
}
