//! Tensors packed into shared buffers (`Gpu::packed`), as the trainer keeps its parameters, gradients and momentum:
//! the layout, reads and writes of each part, and the optimiser run once per group against once per tensor.
//!
//! Tolerances. SGD is element-wise: a dispatch per group computes each element with the same shader code as a
//! dispatch per tensor, so the results are compared bit for bit on every device. The global norm sums the same
//! values in another order (blocks that straddle tensors), so it is compared with the core's `f64` sum at 2e-6
//! relative, the bound `gpu_sgd` derives for the `f32` block sums.

use elasticface::gpu::kernels::precision::RoundToF16;
use elasticface::gpu::kernels::sgd::{sum_of_squares_partials, GradClip, SgdKernels, CLIP_COEFFICIENT};
use elasticface::gpu::kernels::Dispatch;
use elasticface::gpu::{Elem, Gpu, GpuOptions, Packed, Tensor};
use elasticface_core::nn::{clip_coefficient, sum_of_squares, Sgd};
use elasticface_tests::{gpu, uniform};

/// Bytes of the binding limit the tests pack under: 256 floats, so that the shapes below take several groups.
const LIMIT: u64 = 1024;

/// Part shapes with an empty one, one that fills a group alone, and lengths that leave alignment gaps.
fn shapes(prefix: &str) -> Vec<(String, Vec<usize>)> {
    let dims: [&[usize]; 7] = [&[3], &[0], &[2, 50], &[256], &[7], &[1, 1, 3, 33], &[130]];
    dims.iter().enumerate().map(|(i, d)| (format!("{prefix}{i}"), d.to_vec())).collect()
}

fn limited_gpu() -> Option<Gpu> {
    gpu()?;
    Some(Gpu::new(&GpuOptions { binding_limit: Some(LIMIT), checked: true, ..GpuOptions::from_env() }).unwrap())
}

/// The group that holds `part`.
fn group_of<'a>(packed: &'a Packed, part: &Tensor) -> &'a Tensor {
    packed.groups.iter().find(|g| g.buffer == part.buffer).expect("every part lies in a group")
}

#[test]
fn packed_parts_are_aligned_ranges_of_a_few_buffers() {
    let Some(gpu) = limited_gpu() else { return };
    // Twice the storage alignment, so that the same elements of an f16 copy can be bound too.
    let align = 2 * u64::from(gpu.caps.storage_offset_alignment.max(4));
    let packed = gpu.packed("p", &shapes("part")).unwrap();
    assert_eq!(packed.parts.len(), 7);
    assert!(packed.groups.len() >= 3, "{} groups under a 256-float limit", packed.groups.len());
    for (i, g) in packed.groups.iter().enumerate() {
        assert!(g.bytes() <= LIMIT, "group {i}: {} bytes", g.bytes());
        assert_eq!((g.offset, g.label.as_str()), (0, format!("p [group {i}]").as_str()));
    }
    for (part, (name, shape)) in packed.parts.iter().zip(shapes("part")) {
        assert_eq!((&part.label, &part.shape, part.len), (&name, &shape, shape.iter().product::<usize>()));
        assert_eq!(part.offset % align, 0, "{name} at byte {}", part.offset);
        assert!(part.offset + part.bytes().max(4) <= group_of(&packed, part).bytes(), "{name} lies in its group");
    }
    // Parts of one group do not overlap, and come in the order asked for.
    for pair in packed.parts.windows(2) {
        if pair[0].buffer == pair[1].buffer {
            assert!(pair[0].offset + pair[0].bytes().max(4) <= pair[1].offset, "{} / {}", pair[0].label, pair[1].label);
        }
    }
    // The same shapes give the same layout: the trainer pairs parameters, gradients and momentum group by group.
    let again = gpu.packed("q", &shapes("other")).unwrap();
    let layout = |p: &Packed| -> Vec<(usize, u64)> {
        p.parts.iter().map(|t| (p.groups.iter().position(|g| g.buffer == t.buffer).unwrap(), t.offset)).collect()
    };
    assert_eq!(layout(&packed), layout(&again));
    assert_eq!(
        packed.groups.iter().map(|g| g.len).collect::<Vec<_>>(),
        again.groups.iter().map(|g| g.len).collect::<Vec<_>>()
    );

    // Each part's elements in an f16 copy of its group: bound alone at an aligned offset, holding the part's
    // values rounded (as mixed precision's copy of the weights does).
    let round = RoundToF16::new(&gpu);
    let values: Vec<Vec<f32>> = packed.groups.iter().map(|g| uniform(g.len as u64, g.len)).collect();
    let copies: Vec<Tensor> =
        packed.groups.iter().map(|g| gpu.zeros_as(&format!("{} (f16)", g.label), &[g.len], Elem::F16)).collect();
    for ((g, v), copy) in packed.groups.iter().zip(&values).zip(&copies) {
        gpu.write(g, v).unwrap();
        gpu.run(&[&round.run(&gpu, g, copy).unwrap()]).unwrap();
    }
    for part in &packed.parts {
        let g = packed.groups.iter().position(|g| g.buffer == part.buffer).unwrap();
        let half = part.same_part_of(&packed.groups[g], &copies[g]).unwrap();
        assert_eq!((half.len, &half.shape, half.elem), (part.len, &part.shape, Elem::F16), "{}", part.label);
        assert_eq!(half.offset % (align / 2), 0, "{} at byte {} of the copy", part.label, half.offset);
        let first = (part.offset / 4) as usize;
        let mut want = values[g][first..first + part.len].to_vec();
        elasticface_core::nn::round_to_f16(&mut want);
        assert_eq!(gpu.read_f32(&half).unwrap(), want, "{}", part.label);
    }
    let other = gpu.zeros("elsewhere", &[4]);
    assert!(packed.parts[0].same_part_of(&other, &copies[0]).is_err(), "a part of another buffer");

    // One part alone larger than a binding is refused by name.
    let Err(err) = gpu.packed("p", &[("small".into(), vec![4]), ("huge".into(), vec![257])]) else {
        panic!("a part larger than a binding was packed");
    };
    assert!(err.to_string().contains("huge [257]: 1028 bytes, more than one storage binding holds (1024)"), "{err}");
}

#[test]
fn parts_are_written_read_and_viewed_alone_and_the_gaps_stay_zero() {
    let Some(gpu) = limited_gpu() else { return };
    let packed = gpu.packed("p", &shapes("part")).unwrap();
    let data: Vec<Vec<f32>> =
        packed.parts.iter().enumerate().map(|(i, t)| (0..t.len).map(|j| (100 * i + j + 1) as f32).collect()).collect();
    for (t, d) in packed.parts.iter().zip(&data) {
        gpu.write(t, d).unwrap();
    }
    for (t, d) in packed.parts.iter().zip(&data) {
        assert_eq!(&gpu.read::<f32>(t).unwrap(), d, "{}", t.label);
    }
    let view = packed.parts[2].view("part2[..1]", &[1, 50]).unwrap();
    assert_eq!(gpu.read::<f32>(&view).unwrap(), data[2][..50]);
    // Each group holds its parts at their offsets and zeros elsewhere.
    for g in &packed.groups {
        let mut want = vec![0.0f32; g.len];
        for (t, d) in packed.parts.iter().zip(&data).filter(|(t, _)| t.buffer == g.buffer) {
            let at = (t.offset / 4) as usize;
            want[at..at + t.len].copy_from_slice(d);
        }
        assert_eq!(gpu.read::<f32>(g).unwrap(), want, "{}", g.label);
    }
}

/// Random values for part `i` of set `set`.
fn values_of(set: u64, i: usize, len: usize) -> Vec<f32> {
    uniform(100 * set + i as u64, len)
}

/// Writes [`values_of`] `set` into every tensor and returns what it wrote.
fn fill(gpu: &Gpu, tensors: &[Tensor], set: u64) -> Vec<Vec<f32>> {
    let values: Vec<Vec<f32>> = tensors.iter().enumerate().map(|(i, t)| values_of(set, i, t.len)).collect();
    for (t, v) in tensors.iter().zip(&values) {
        gpu.write(t, v).unwrap();
    }
    values
}

/// Packs `shapes` and fills every part with [`values_of`] `set`.
fn filled(gpu: &Gpu, label: &str, set: u64, shapes: &[(String, Vec<usize>)]) -> Packed {
    let packed = gpu.packed(label, shapes).unwrap();
    fill(gpu, &packed.parts, set);
    packed
}

/// Every part of `packed` read back, and whether the gaps between them still hold zeros only.
fn read_parts(gpu: &Gpu, packed: &Packed) -> (Vec<Vec<f32>>, bool) {
    let mut gaps_zero = true;
    for g in &packed.groups {
        let mut data = gpu.read::<f32>(g).unwrap();
        for t in packed.parts.iter().filter(|t| t.buffer == g.buffer) {
            let at = (t.offset / 4) as usize;
            data[at..at + t.len].fill(0.0);
        }
        gaps_zero &= data.iter().all(|&v| v == 0.0);
    }
    (packed.parts.iter().map(|t| gpu.read::<f32>(t).unwrap()).collect(), gaps_zero)
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn one_sgd_dispatch_per_group_matches_one_per_tensor_bit_for_bit() {
    let Some(gpu) = limited_gpu() else { return };
    let k = SgdKernels::new(&gpu);
    let hyper = SgdKernels::hyper(&gpu, &Sgd { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 });
    let shapes = shapes("t");
    // Three copies of the same parameters, gradients and momentum: packed and updated group by group; packed and
    // updated part by part (each bound at its offset); and in buffers of their own.
    let packed = |l: &str| [filled(&gpu, l, 1, &shapes), filled(&gpu, l, 2, &shapes), filled(&gpu, l, 3, &shapes)];
    let (by_group, by_part) = (packed("group"), packed("part"));
    let own: [Vec<Tensor>; 3] = [1, 2, 3].map(|_| shapes.iter().map(|(n, s)| gpu.zeros(n, s)).collect());
    let initial: Vec<Vec<Vec<f32>>> = own.iter().zip(1..).map(|(tensors, set)| fill(&gpu, tensors, set)).collect();
    // One dispatch per (parameter, gradient, momentum) triple.
    let step = |[p, g, m]: [&[Tensor]; 3]| -> Vec<Dispatch> {
        p.iter().zip(g).zip(m).map(|((p, g), m)| k.step(&gpu, &hyper, p, g, m).unwrap()).collect()
    };
    let mut dispatches = step(by_group.each_ref().map(|p| &p.groups[..]));
    assert_eq!(dispatches.len(), by_group[0].groups.len());
    dispatches.extend(step(by_part.each_ref().map(|p| &p.parts[..])));
    dispatches.extend(step(own.each_ref().map(|t| &t[..])));
    // Two steps.
    let all: Vec<_> = dispatches.iter().chain(&dispatches).collect();
    gpu.run(&all).unwrap();
    for (what, set) in [("parameters", 0), ("momentum", 2)] {
        let want: Vec<Vec<f32>> = own[set].iter().map(|t| gpu.read::<f32>(t).unwrap()).collect();
        assert_ne!(bits(&want), bits(&initial[set]), "{what}: the steps changed them");
        for (how, p) in [("by group", &by_group[set]), ("by part", &by_part[set])] {
            let (got, gaps_zero) = read_parts(&gpu, p);
            assert_eq!(bits(&got), bits(&want), "{what} {how}");
            assert!(gaps_zero, "{what} {how}: a gap changed");
        }
    }
}

#[test]
fn clipping_packed_gradients_takes_two_dispatches_per_group_and_matches_the_core() {
    let Some(gpu) = limited_gpu() else { return };
    let k = SgdKernels::new(&gpu);
    let shapes = shapes("grad");
    let grads = gpu.packed("grads", &shapes).unwrap();
    let before = fill(&gpu, &grads.parts, 4);
    let refs: Vec<&Tensor> = grads.groups.iter().collect();
    let clip = GradClip::new(&gpu, &k, &refs, 1.0).unwrap();
    assert_eq!(clip.dispatches().len(), 2 * grads.groups.len() + 1);
    assert_eq!(clip.partials.len, grads.groups.iter().map(|g| sum_of_squares_partials(g.len)).sum::<usize>());
    gpu.run(&clip.dispatches().iter().collect::<Vec<_>>()).unwrap();

    let norm = sum_of_squares(&before.concat()).sqrt();
    let (got_norm, got_coefficient) = clip.read(&gpu).unwrap();
    assert!(((got_norm - norm) / norm).abs() < 2e-6, "norm {got_norm}, core {norm}");
    let coefficient = clip_coefficient(norm, 1.0);
    assert!(coefficient < 0.5, "the test clips: {coefficient}");
    assert!(((got_coefficient - coefficient) / coefficient).abs() < 2e-6, "{got_coefficient} against {coefficient}");
    assert_eq!(gpu.read::<f32>(&clip.clip).unwrap()[CLIP_COEFFICIENT], got_coefficient);
    // Every element was multiplied by the coefficient (one rounding, as on the CPU), and the gaps stay zero.
    let (after, gaps_zero) = read_parts(&gpu, &grads);
    let want: Vec<Vec<f32>> = before.iter().map(|t| t.iter().map(|v| v * got_coefficient).collect()).collect();
    assert_eq!(bits(&after), bits(&want));
    assert!(gaps_zero);
}

/// f16 tensors (mixed precision's activations): written rounded to nearest, ties to even, as the core's
/// `round_to_f16`; read back exactly; viewed inside f32 buffers by bytes; never written past their end.
#[test]
fn f16_tensors_round_as_the_core_and_stay_in_their_bytes() {
    let Some(gpu) = gpu() else { return };
    // Ties, subnormals, overflow and odd lengths.
    let values: Vec<f32> = vec![1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 2f32.powi(-25), 65520.0, -0.1, 7.0];
    let mut want = values.clone();
    elasticface_core::nn::round_to_f16(&mut want);
    for len in [values.len(), values.len() - 1] {
        let t = gpu.upload_f16("t", &[len], &values[..len]);
        assert_eq!((t.elem, t.bytes()), (Elem::F16, 2 * len as u64));
        let got = gpu.read_f32(&t).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want[..len]), "length {len}");
    }
    // A view of 3 f16 values at the start of an f32 tensor of 4: its bytes only; an odd-length view cannot be
    // written in whole words without touching its neighbour, so it is refused, and the neighbour keeps its bits.
    let words = gpu.upload("words", &[4], &[1.5f32, 2.5, 3.5, 4.5]);
    let half = words.view_as("half", &[3], Elem::F16).unwrap();
    assert_eq!(half.bytes(), 6);
    let e = gpu.write_f32_as(&half, &[1.0, 2.0, 3.0]).unwrap_err().to_string();
    assert!(e.contains("half: an f16 view of odd length (3)"), "{e}");
    let even = words.view_as("even", &[4], Elem::F16).unwrap();
    gpu.write_f32_as(&even, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(gpu.read_f32(&even).unwrap(), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(gpu.read::<f32>(&words).unwrap()[2..], [3.5, 4.5]);
    // More f16 elements than the bytes hold, and an f16 tensor read as words, are refused.
    assert!(words.view_as("long", &[9], Elem::F16).is_err());
    assert!(gpu.read::<f32>(&even).unwrap_err().to_string().contains("holds f16 elements"));
}
