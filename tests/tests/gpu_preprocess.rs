//! `shaders/preprocess.wgsl` against its core twin: bit-identical by construction (the kernel looks each byte's
//! value up in a table made by the core function), so every comparison is exact.

use elasticface::gpu::kernels::preprocess::Preprocess;
use elasticface::gpu::kernels::with_storage;
use elasticface::gpu::{Elem, Gpu};
use elasticface_core::nn::{preprocess_image, round_to_f16, ImageShape};
use elasticface_tests::{gpu, uniform};

/// `n` random images of shape `s`, back to back.
fn images(seed: u64, n: usize, s: &ImageShape) -> Vec<u8> {
    uniform(seed, n * s.len()).iter().map(|v| ((v + 1.0) * 128.0) as u8).collect()
}

/// The core's output for the batch: each image preprocessed on its own, concatenated.
fn core(s: &ImageShape, bytes: &[u8], flips: &[u32]) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len()];
    for ((hwc, chw), &flip) in bytes.chunks(s.len()).zip(out.chunks_mut(s.len())).zip(flips) {
        preprocess_image(s, hwc, flip != 0, chw).unwrap();
    }
    out
}

/// The GPU's output for the batch.
fn run(gpu: &Gpu, k: &Preprocess, s: &ImageShape, bytes: &[u8], flips: &[u32]) -> Vec<f32> {
    run_as(gpu, k, s, bytes, flips, Elem::F32)
}

/// The GPU's output for the batch, stored as `elem`.
fn run_as(gpu: &Gpu, k: &Preprocess, s: &ImageShape, bytes: &[u8], flips: &[u32], elem: Elem) -> Vec<f32> {
    let n = flips.len();
    let words = Preprocess::pack(bytes);
    assert_eq!(words.len(), Preprocess::words(n, s));
    let t_images = gpu.upload("images", &[words.len()], &words);
    let t_flip = gpu.upload("flip", &[n], flips);
    let out = gpu.zeros_as("out", &[n, 3, s.h, s.w], elem);
    gpu.run(&[&k.forward(gpu, n, s, &t_images, &t_flip, &out).unwrap()]).unwrap();
    gpu.read_f32(&out).unwrap()
}

/// The error message of a refused call.
fn err<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.err().expect("refused").to_string()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn packing_is_little_endian_and_zero_padded() {
    assert_eq!(Preprocess::pack(&[1, 2, 3, 4, 5]), vec![0x0403_0201, 5]);
    assert_eq!(Preprocess::words(3, &ImageShape { h: 1, w: 1 }), 3); // 9 bytes
}

/// `Gpu::write_bytes` (how the trainer uploads its images) leaves the words `Preprocess::pack` makes, whole or with a
/// partial last word (zero-padded over what was there), and refuses a tensor of another length.
#[test]
fn bytes_written_as_they_are_are_the_packed_words() {
    let Some(gpu) = gpu() else { return };
    for len in 1..=9usize {
        let bytes: Vec<u8> = (0..len).map(|i| 0x81 + 3 * i as u8).collect();
        let words = len.div_ceil(4);
        let t = gpu.upload("t", &[words], &vec![u32::MAX; words]);
        gpu.write_bytes(&t, &bytes).unwrap();
        assert_eq!(gpu.read::<u32>(&t).unwrap(), Preprocess::pack(&bytes), "{len} bytes");
        let short = gpu.upload("short", &[words + 1], &vec![0u32; words + 1]);
        assert!(err(gpu.write_bytes(&short, &bytes)).contains(&format!("writing {len} bytes")));
    }
}

/// Every byte value (a 16 x 16 image holding each byte once per channel, in a different place per channel),
/// mirrored or not: stored as f32, exactly the core's values; stored as f16 (mixed precision's input), the core's
/// values rounded by `round_to_f16`.
#[test]
fn every_byte_value_matches_the_core_exactly() {
    let Some(gpu) = gpu() else { return };
    let k = Preprocess::new(gpu);
    let s = ImageShape { h: 16, w: 16 };
    let bytes: Vec<u8> = (0..256usize).flat_map(|i| [i as u8, 255 - i as u8, (i * 7 % 256) as u8]).collect();
    for (elem, flip) in [Elem::F32, Elem::F16].into_iter().flat_map(|e| [(e, 0), (e, 1)]) {
        let mut want = core(&s, &bytes, &[flip]);
        if elem == Elem::F16 {
            let exact = want.clone();
            round_to_f16(&mut want);
            assert_ne!(want, exact, "some values are not f16 values");
        }
        assert_eq!(bits(&run_as(gpu, &k, &s, &bytes, &[flip], elem)), bits(&want), "{elem}, flip {flip}");
    }
}

#[test]
fn batches_with_per_image_flips_match_the_core_exactly() {
    let Some(gpu) = gpu() else { return };
    let k = Preprocess::new(gpu);
    // 5 x 7 x 3 = 105 bytes per image: images start mid-word. One pixel; a single row; a single column.
    let cases = [
        (ImageShape { h: 5, w: 7 }, vec![1, 0, 1]),
        (ImageShape { h: 1, w: 1 }, vec![1]),
        (ImageShape { h: 1, w: 9 }, vec![0, 1]),
        (ImageShape { h: 9, w: 1 }, vec![1, 1]),
        (ImageShape { h: 12, w: 10 }, vec![0, 1, 1, 0, 1]),
    ];
    for (i, (s, flips)) in cases.into_iter().enumerate() {
        let bytes = images(i as u64, flips.len(), &s);
        assert_eq!(bits(&run(gpu, &k, &s, &bytes, &flips)), bits(&core(&s, &bytes, &flips)), "{s:?} {flips:?}");
    }
}

#[test]
fn bad_sizes_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = Preprocess::new(gpu);
    let s = ImageShape { h: 5, w: 7 };
    let images = gpu.zeros("images", &[Preprocess::words(2, &s)]);
    let (flip, out) = (gpu.zeros("flip", &[2]), gpu.zeros("out", &[2, 3, 5, 7]));
    let e = err(k.forward(gpu, 2, &s, &flip, &flip, &out));
    assert!(e.contains("flip has 2 elements") && e.contains("needs 53"), "{e}");
    let e = err(k.forward(gpu, 3, &s, &images, &flip, &out));
    assert!(e.contains("images has 53 elements"), "{e}");
    let e = err(k.forward(gpu, 2, &s, &images, &out, &out));
    assert!(e.contains("out has 210 elements") && e.contains("needs 2"), "{e}");
    let e = err(k.forward(gpu, 0, &s, &images, &flip, &out));
    assert!(e.contains("no images"), "{e}");
    let e = err(k.forward(gpu, 2, &ImageShape { h: 0, w: 7 }, &images, &flip, &out));
    assert!(e.contains("zero"), "{e}");
}

/// The storage aliases a shader declares are rewritten for f16 (with `enable f16;` first), and a missing one is
/// an error naming the file and the line, not a silently unchanged shader.
#[test]
fn storage_aliases_are_rewritten_or_refused() {
    let Some(gpu) = gpu() else { return };
    let source = "alias A = f32;\nalias B = f32;\n";
    let both = with_storage(gpu, "s.wgsl", source, &[("A", Elem::F16), ("B", Elem::F32)]).unwrap();
    assert_eq!(both, "enable f16;\nalias A = f16;\nalias B = f32;\n");
    assert_eq!(with_storage(gpu, "s.wgsl", source, &[("A", Elem::F32)]).unwrap(), source);
    let e = with_storage(gpu, "s.wgsl", source, &[("C", Elem::F16)]).unwrap_err().to_string();
    assert_eq!(e, "s.wgsl no longer declares `alias C = f32;`");
}
