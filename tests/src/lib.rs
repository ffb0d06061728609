//! Shared helpers of the cross-crate tests (the tests themselves are in `tests/tests/`).

use std::path::PathBuf;
use std::sync::OnceLock;

use elasticface::gpu::{Gpu, GpuOptions};

/// The folder of the PyTorch reference vectors shipped with the repository (`tests/data/reference`).
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join("reference")
}

/// The GPU the kernel tests run on, created once per test process with runtime bounds checks on and mixed
/// precision emulated where the adapter lacks cooperative matrices.
///
/// Where no adapter exists this prints why the test is skipped and returns `None`, unless
/// `ELASTICFACE_REQUIRE_GPU=1` (set by CI, which installs lavapipe): then a missing adapter fails the test.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| {
        // Mixed precision is emulated where the adapter has no cooperative matrices, so that its trainer is tested
        // everywhere (the cooperative-matrix kernels themselves only where they exist).
        let opts = GpuOptions { checked: true, emulate_tensor_cores: true, ..GpuOptions::from_env() };
        Gpu::new(&opts).map_err(|e| format!("{e:#}"))
    });
    match gpu {
        Ok(g) => Some(g),
        Err(e) if std::env::var("ELASTICFACE_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("ELASTICFACE_REQUIRE_GPU=1 but no GPU adapter: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (no GPU adapter): {e}");
            None
        }
    }
}

/// Deterministic test data: `n` values uniform in `[-1, 1)` from `seed` (splitmix64).
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Rounding slack an element-wise kernel may have against its core twin on `gpu`, in units of `f32::EPSILON` times
/// the tensor's largest magnitude: 0 on a CPU adapter (lavapipe, CI), which rounds every operation and fuses none,
/// so results there must be bit-identical; `eps` elsewhere, since WGSL lets a driver contract `a * b + c` into one
/// fused multiply-add (NVIDIA's does). A contraction changes a result by about an ulp of the operands, which is
/// many ulps of a result that nearly cancels (`p - lr * buf` near zero): hence a bound on the tensor's scale, not
/// on each element's ulps.
pub fn slack_allowed(gpu: &Gpu, eps: f32) -> f32 {
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        0.0
    } else {
        eps
    }
}

/// Asserts `|got - want| <= slack * f32::EPSILON * max |want|` element by element (`slack = 0`: bit for bit).
pub fn assert_within_scale(what: &str, got: &[f32], want: &[f32], slack: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let bound = slack * f32::EPSILON * scale;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if slack == 0.0 { g.to_bits() == w.to_bits() } else { (g - w).abs() <= bound };
        assert!(ok, "{what}: element {i}: gpu {g:e}, core {w:e}: |difference| {:e}, bound {bound:e}", (g - w).abs());
    }
}

/// Prints every check of a selftest report, then asserts that none failed and that at least `min_checks` ran (so
/// that a reference file that lost tensors cannot pass by checking less).
pub fn assert_report_passed(report: &elasticface::selftest::Report, min_checks: usize) {
    for c in report.sections.iter().flat_map(|s| &s.checks) {
        println!("{c}");
    }
    let (all, failed) = report.counts();
    let failures: Vec<String> =
        report.sections.iter().flat_map(|s| &s.checks).filter(|c| !c.pass).map(|c| c.to_string()).collect();
    assert!(failed == 0, "{failed} of {all} checks failed:\n{}", failures.join("\n"));
    assert!(all >= min_checks, "only {all} checks ran, expected at least {min_checks}");
}

/// Largest absolute difference of two slices of one length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A tiny iResNet (`[1, 1, 1, 1]` blocks, widths `[4, 8, 8, 16]`, 16x16 input, 8-d embedding) with insightface's
/// initialisation from `seed`, then batch norm statistics and affine parameters and PReLU slopes moved away from
/// their initial values (as training moves them), so that every tensor matters in a comparison.
pub fn tiny_backbone(seed: u64) -> elasticface::checkpoint::Backbone {
    use elasticface_core::model::{init_state, IResNetConfig, ModuleKind};
    use elasticface_core::rng::Philox4x32;
    let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };
    let mut state = vec![0.0; cfg.state_len()];
    init_state(&cfg, &mut Philox4x32::new(seed, 0), &mut state).expect("valid config");
    let noise = uniform(seed ^ 0xb0b, state.len());
    for t in cfg.tensors() {
        let (lo, hi) = match (t.module.kind, t.field) {
            (ModuleKind::BatchNorm { frozen: true, .. }, "weight") => continue,
            (ModuleKind::BatchNorm { .. }, "weight") => (0.5, 1.5),
            // Small variances amplify, as in trained networks whose activations are larger than their biases.
            (ModuleKind::BatchNorm { .. }, "running_var") => (0.02, 0.1),
            (ModuleKind::BatchNorm { .. }, _) => (-0.02, 0.02),
            (ModuleKind::PRelu { .. }, _) => (0.0, 0.5),
            _ => continue,
        };
        for (v, n) in state[t.range()].iter_mut().zip(&noise[t.range()]) {
            *v = lo + (hi - lo) * (n + 1.0) / 2.0;
        }
    }
    elasticface::checkpoint::Backbone { cfg, bn: Default::default(), state, steps: 0 }
}

/// Saves `b` as `dir/tiny.safetensors` (a backbone file, as `import` writes) and returns the path.
pub fn save_model(b: &elasticface::checkpoint::Backbone, dir: &std::path::Path) -> PathBuf {
    let model = dir.join("tiny.safetensors");
    b.save(&model, Default::default()).expect("the model is written");
    model
}

/// The embeddings of an RGB image `u8 (H, W, 3)` and of its mirror image by the core's forward pass in eval
/// mode, without the crate's backends: what evaluation tests compare the backends' results with.
pub fn core_flip_embeddings(
    b: &elasticface::checkpoint::Backbone,
    rgb: &[u8],
    shape: elasticface_core::nn::ImageShape,
) -> (Vec<f32>, Vec<f32>) {
    use elasticface_core::model::{forward, StateRef};
    use elasticface_core::nn::{preprocess_image, BatchNorm};
    use elasticface_core::parallel::Serial;
    let cfg = b.cfg;
    let mut acts = vec![0.0; cfg.activations_len(1)];
    let mut embed = |flip: bool| {
        let mut x = vec![0.0; cfg.input_len()];
        preprocess_image(&shape, rgb, flip, &mut x).expect("an image of the network's size");
        let mut out = vec![0.0; cfg.embedding];
        let state = StateRef::Eval(&b.state);
        forward(&Serial, &cfg, &BatchNorm::default(), state, 1, &x, &mut acts, &mut out).expect("forward");
        out
    };
    (embed(false), embed(true))
}

/// The batch norm comparisons `gpu_batchnorm.rs` and `gpu_batchnorm_fused.rs` share (their error measures and
/// tolerances are explained in `gpu_batchnorm.rs`).
pub mod batchnorm {
    use elasticface_core::nn::BatchNormShape;

    /// Largest `|got - want| / (1 + |want|)`: absolute for values below 1, relative above.
    pub fn mixed_error(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0.0, f32::max)
    }

    /// Asserts `mixed_error(got, want) <= tol` and prints it.
    pub fn check(what: &str, s: &BatchNormShape, got: &[f32], want: &[f32], tol: f32) {
        let e = mixed_error(got, want);
        println!("{what:<22} {s:?}: max error {e:.2e}");
        assert!(e <= tol, "{what} {s:?}: error {e:e} > {tol:e}");
    }

    /// Asserts that each channel's sum agrees within `tol * sum |terms|` (`abs`: the per-channel sums of the
    /// terms' absolute values, from [`channel_abs_sums`]) and prints the largest ratio.
    pub fn check_sums(what: &str, s: &BatchNormShape, got: &[f32], want: &[f32], abs: &[f32], tol: f32) {
        let e = got.iter().zip(want).zip(abs).map(|((g, w), a)| (g - w).abs() / a.max(f32::MIN_POSITIVE));
        let e = e.fold(0.0, f32::max);
        println!("{what:<22} {s:?}: max error {e:.2e} of sum |terms|");
        assert!(e <= tol, "{what} {s:?}: error {e:e} of sum |terms| > {tol:e}");
    }

    /// Per channel, `sum |f(i, c)|` over its values (`i` the flat index, `c` the channel), in f64.
    pub fn channel_abs_sums(s: &BatchNormShape, f: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let mut out = vec![0.0f64; s.c];
        for i in 0..s.len() {
            let c = (i / s.hw) % s.c;
            out[c] += f64::from(f(i, c).abs());
        }
        out.into_iter().map(|v| v as f32).collect()
    }
}

/// A backend that counts its `embed` calls and fails the one numbered `fail_at` (from 0), as a crash would stop a
/// run; at the call numbered `take_file_at.0` it truncates the feature file `take_file_at.1` to its header, as
/// another run opening it afresh would; everything else goes to the CPU reference.
pub struct Stopping {
    /// The CPU reference.
    pub inner: Box<dyn elasticface::train::Backend>,
    /// `embed` calls so far.
    pub calls: usize,
    /// The call that fails.
    pub fail_at: Option<usize>,
    /// The call at which the feature file is taken, and the file.
    pub take_file_at: Option<(usize, PathBuf)>,
}

impl elasticface::train::Backend for Stopping {
    fn step(&mut self, b: &elasticface::data::Batch, m: &[f32]) -> anyhow::Result<elasticface_core::model::StepReport> {
        self.inner.step(b, m)
    }
    fn set_lr(&mut self, lr: f32) -> anyhow::Result<()> {
        self.inner.set_lr(lr)
    }
    fn embed(&mut self, images: &[u8], flips: &[bool]) -> anyhow::Result<Vec<f32>> {
        self.calls += 1;
        anyhow::ensure!(Some(self.calls - 1) != self.fail_at, "stopped");
        if let Some((_, file)) = self.take_file_at.as_ref().filter(|(at, _)| *at == self.calls - 1) {
            std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(32).unwrap();
        }
        self.inner.embed(images, flips)
    }
    fn steps(&self) -> u64 {
        self.inner.steps()
    }
    fn checkpoint(
        &self,
        seed: u64,
        p: elasticface::data::Position,
        run: serde_json::Value,
    ) -> anyhow::Result<elasticface::checkpoint::Checkpoint> {
        self.inner.checkpoint(seed, p, run)
    }
    fn load(&mut self, c: &elasticface::checkpoint::Checkpoint) -> anyhow::Result<()> {
        self.inner.load(c)
    }
    fn device(&self) -> String {
        self.inner.device()
    }
}
