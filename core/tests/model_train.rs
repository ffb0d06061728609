//! The CPU trainer as a whole: it learns, it is deterministic, its gradients match finite differences on a
//! network with odd, non-square shapes (the PyTorch reference covers one square configuration), and bad input
//! is rejected without touching the weights.

use elasticface_core::margin::{margin_loss_forward, HeadScratch, HeadShape, MarginConfig, MarginKind, PlusAssignment};
use elasticface_core::model::{forward, IResNetConfig, StateRef, StepConfig, TensorKind, Trainer, TrainerLayout};
use elasticface_core::nn::BatchNorm;
use elasticface_core::parallel::Serial;
use elasticface_core::rng::{standard_normal, Philox4x32};
use elasticface_core::Error;

/// A small network with odd widths and a non-square input.
const ODD: IResNetConfig =
    IResNetConfig { layers: [1, 2, 1, 1], widths: [3, 5, 6, 7], input_h: 16, input_w: 32, embedding: 9 };

fn normals(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Philox4x32::new(seed, 99);
    (0..n).map(|_| standard_normal(&mut rng) as f32).collect()
}

struct Run {
    arena: Vec<f32>,
    order: Vec<u32>,
    layout: TrainerLayout,
    step: StepConfig,
}

impl Run {
    fn new(cfg: IResNetConfig, batch: usize, classes: usize, step: StepConfig) -> Self {
        let layout = TrainerLayout::new(&cfg, batch, classes).unwrap();
        Self { arena: vec![0.0; layout.arena_len()], order: vec![0; batch], layout, step }
    }

    fn trainer(&mut self, seed: u64) -> Trainer<'_> {
        let mut t = Trainer::new(self.layout.clone(), self.step, &mut self.arena, &mut self.order).unwrap();
        t.init(&mut Philox4x32::new(seed, 0)).unwrap();
        t
    }
}

/// A fixed batch: images, labels `i % classes`, margins drawn for `step`.
fn batch(
    cfg: &IResNetConfig,
    b: usize,
    classes: usize,
    loss: &MarginConfig,
    step: u64,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let x = normals(7, b * cfg.input_len());
    let labels = (0..b as u32).map(|i| i % classes as u32).collect();
    let mut margins = vec![0.0; b];
    loss.draw_margins_at(11, step, &mut margins);
    (x, labels, margins)
}

#[test]
fn training_lowers_the_loss_and_is_bit_for_bit_repeatable() {
    let loss = MarginConfig::ELASTIC_ARC_PLUS;
    let (b, k) = (8, 4);
    let mut step = StepConfig::recipe(loss);
    step.sgd.lr = 0.02;
    let mut losses = [vec![], vec![]];
    let mut states = [vec![], vec![]];
    for (run, out) in losses.iter_mut().enumerate() {
        let mut r = Run::new(ODD, b, k, step);
        let mut t = r.trainer(5);
        for s in 0..25 {
            let (x, labels, margins) = batch(&ODD, b, k, &loss, s);
            out.push(t.step(&x, &labels, &margins).unwrap().loss);
        }
        states[run] = t.state().to_vec();
    }
    // Same seed, same data: the same losses and weights, bit for bit.
    assert_eq!(
        losses[0].iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        losses[1].iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    assert!(states[0].iter().zip(&states[1]).all(|(a, b)| a.to_bits() == b.to_bits()));
    // Memorising one fixed batch of 8 samples in 4 classes: the margin loss must fall well below its start.
    let (first, last) = (losses[0][0], *losses[0].last().unwrap());
    assert!(last < 0.5 * first, "loss {first} -> {last}: {:?}", losses[0]);
}

/// `L(state)`: the train-mode forward pass and the head, without an update.
fn loss_at(
    cfg: &IResNetConfig,
    state: &[f32],
    head: &[f32],
    x: &[f32],
    labels: &[u32],
    margins: &[f32],
    loss: &MarginConfig,
) -> f64 {
    let b = labels.len();
    let mut state = state.to_vec();
    let mut acts = vec![0.0; cfg.activations_len(b)];
    let mut emb = vec![0.0; b * cfg.embedding];
    forward(&Serial, cfg, &BatchNorm::default(), StateRef::Train(&mut state), b, x, &mut acts, &mut emb).unwrap();
    let shape = HeadShape::new(b, cfg.embedding, head.len() / cfg.embedding);
    let mut arena = vec![0.0; shape.scratch_len()];
    let mut order = vec![0; b];
    let mut scratch = HeadScratch::from_arena(&shape, &mut arena, &mut order).unwrap();
    f64::from(margin_loss_forward(loss, &shape, &emb, head, labels, margins, &mut scratch).unwrap())
}

#[test]
fn backbone_gradients_match_finite_differences_on_odd_shapes() {
    // A soft loss (s = 4, Cos) keeps the objective smooth enough for f32 central differences; no clipping
    // (clip norm 1e30) and lr 0 so that `grads()` holds the raw gradient and the state does not move.
    let loss = MarginConfig { kind: MarginKind::Cos, s: 4.0, m: 0.2, sigma: 0.0, plus: PlusAssignment::None };
    let (b, k) = (5, 3);
    let mut step = StepConfig::recipe(loss);
    step.sgd = elasticface_core::nn::Sgd { lr: 0.0, momentum: 0.0, weight_decay: 0.0 };
    step.clip_norm = 1e30;
    let mut r = Run::new(ODD, b, k, step);
    let mut t = r.trainer(3);
    let (x, labels, margins) = batch(&ODD, b, k, &loss, 0);
    let state = t.state().to_vec();
    let head = t.head().to_vec();
    t.step(&x, &labels, &margins).unwrap();
    let grads = t.grads().to_vec();

    // Probe three elements of every trainable tensor. This network is strongly curved in places (a 1x1
    // downsample conv on 3 channels feeds a batch norm over few values; PReLU kinks): at h = 1e-2 some central
    // differences are off by 2x, at h = 1e-4 they agree with the analytic gradient to ~1e-3. The loss (~2) is
    // evaluated in f32, so a few ulps (~5e-7) of rounding over 2h = 2e-4 give ~2.5e-3 of noise: elements pass
    // within 1e-2 absolute + 1e-2 relative (measured worst: 4.4e-3). A missing term or a wrong factor is O(1).
    let h = 1e-4f32;
    let mut checked = 0;
    for ti in ODD.tensors().filter(|t| t.kind == TensorKind::Trainable) {
        for j in [0, ti.len / 2, ti.len - 1] {
            let i = ti.offset + j;
            let mut plus = state.clone();
            plus[i] += h;
            let mut minus = state.clone();
            minus[i] -= h;
            let fd = (loss_at(&ODD, &plus, &head, &x, &labels, &margins, &loss)
                - loss_at(&ODD, &minus, &head, &x, &labels, &margins, &loss))
                / (2.0 * f64::from(h));
            let g = f64::from(grads[i]);
            assert!((fd - g).abs() <= 1e-2 + 1e-2 * g.abs(), "{ti}[{j}]: analytic {g}, finite difference {fd}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} elements checked");
}

#[test]
fn bad_input_is_rejected_and_the_weights_are_untouched() {
    let loss = MarginConfig::ELASTIC_COS;
    let (b, k) = (4, 3);
    let mut r = Run::new(ODD, b, k, StepConfig::recipe(loss));
    let mut t = r.trainer(1);
    let (mut x, mut labels, margins) = batch(&ODD, b, k, &loss, 0);
    let before = t.state().to_vec();

    assert!(matches!(t.step(&x[1..], &labels, &margins), Err(Error::Length { what: "input", .. })));
    assert!(matches!(t.step(&x, &labels[1..], &margins), Err(Error::Length { what: "labels", .. })));
    labels[2] = 3;
    assert_eq!(t.step(&x, &labels, &margins), Err(Error::Label { index: 2, label: 3, classes: 3 }));
    labels[2] = 2;
    x[5] = f32::NAN;
    assert_eq!(t.step(&x, &labels, &margins), Err(Error::NonFinite { what: "input", index: 5 }));
    assert_eq!(t.state(), &before[..], "rejected steps leave the state as it was");
    assert_eq!(t.steps(), 0);

    // A poisoned weight makes the loss NaN: the step stops before SGD touches the weights or the head.
    x[5] = 0.0;
    let conv = ODD.find("layer1.0.conv1.weight").unwrap();
    t.state_mut()[conv.offset] = f32::INFINITY;
    let head = t.head().to_vec();
    let err = t.step(&x, &labels, &margins).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert_eq!(t.head(), &head[..]);
    assert_eq!(t.state()[conv.offset], f32::INFINITY);
    let fc = ODD.find("fc.weight").unwrap();
    assert_eq!(t.state()[fc.range()], before[fc.range()]);
}

#[test]
fn init_follows_insightface() {
    let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [16, 32, 32, 64], input_h: 32, input_w: 32, embedding: 32 };
    let mut r = Run::new(cfg, 2, 100, StepConfig::recipe(MarginConfig::ARCFACE));
    let t = r.trainer(42);
    let stats = |name: &str| {
        let v = &t.state()[cfg.find(name).unwrap().range()];
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt(), v.len())
    };
    // conv N(0, 0.1): 9216 samples, so the sample std is within a few percent.
    let (m, s, n) = stats("layer2.0.conv2.weight");
    assert!(m.abs() < 5.0 * 0.1 / (n as f64).sqrt() && (s - 0.1).abs() < 0.005, "{m} {s}");
    // fc uniform in +-1/sqrt(IN): std = bound / sqrt(3).
    let (_, s, _) = stats("fc.weight");
    let bound = 1.0 / ((64 * 2 * 2) as f64).sqrt();
    assert!((s - bound / 3f64.sqrt()).abs() < 0.02 * bound, "{s}");
    assert_eq!(stats("layer1.0.bn1.weight").0, 1.0);
    assert_eq!(stats("layer1.0.bn1.running_var").0, 1.0);
    assert_eq!(stats("layer1.0.bn1.running_mean").0, 0.0);
    assert_eq!(stats("prelu.weight").0, 0.25);
    assert_eq!(stats("features.weight").0, 1.0);
    // head N(0, 0.01)
    let h = t.head();
    let s = (h.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / h.len() as f64).sqrt();
    assert!((s - 0.01).abs() < 0.0005, "{s}");
}
