//! `shaders/residual.wgsl` against its core twins.

use elasticface::gpu::kernels::residual::Residual;
use elasticface::gpu::Elem;
use elasticface_core::nn;
use elasticface_tests::{gpu, uniform};

#[test]
fn residual_add_and_accumulate_match_the_core_exactly() {
    let Some(gpu) = gpu() else { return };
    let k = Residual::new(gpu);
    // Odd sizes, and one larger than a workgroup's multiple.
    for len in [1usize, 3, 255, 257, 1000] {
        let (a, b) = (uniform(1, len), uniform(2, len));
        let (ta, tb, ty) = (gpu.upload("a", &[len], &a), gpu.upload("b", &[len], &b), gpu.zeros("y", &[len]));
        gpu.run(&[&k.forward(gpu, &ta, &tb, &ty).unwrap()]).unwrap();
        let mut want = vec![0.0; len];
        nn::residual_add_forward(&a, &b, &mut want).unwrap();
        // One f32 addition per element on both sides: bit-identical.
        assert_eq!(gpu.read::<f32>(&ty).unwrap(), want, "add, len {len}");

        let acc = k.accumulate(gpu, &ty, &ta).unwrap();
        gpu.run(&[&acc, &acc]).unwrap();
        nn::accumulate(&mut want, &a).unwrap();
        nn::accumulate(&mut want, &a).unwrap();
        assert_eq!(gpu.read::<f32>(&ty).unwrap(), want, "accumulate, len {len}");
    }
}

#[test]
fn mismatched_tensors_are_refused() {
    let Some(gpu) = gpu() else { return };
    let k = Residual::new(gpu);
    let (a, b) = (gpu.zeros("a", &[4]), gpu.zeros("b", &[5]));
    let err = k.forward(gpu, &a, &b, &a).err().expect("refused");
    assert!(err.to_string().contains("b has 5 elements"), "{err}");
    // The kernels take f32: an f16 tensor of the right length (half the bytes) would be read past its end.
    let half = gpu.zeros_as("half", &[4], Elem::F16);
    let err = k.forward(gpu, &a, &half, &a).err().expect("refused");
    assert!(err.to_string().contains("half holds f16 elements, the kernel takes f32"), "{err}");
    let err = k.accumulate(gpu, &half, &a).err().expect("refused");
    assert!(err.to_string().contains("half holds f16 elements"), "{err}");
}
