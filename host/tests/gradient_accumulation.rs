//! Gradient accumulation in the core's trainer: a step of N micro-batches updates with the mean of the gradients
//! each micro-batch gives on its own, bit for bit, and moves the running statistics as N steps would.
//!
//! The micro-batches' own gradients come from a second trainer that steps with a learning rate of 0 and no clip
//! (its parameters stay as they are: `p - 0 * buf == p`, and a clip factor of 1 scales by 1), one micro-batch a
//! step; the expected update is then built here (the sum in micro-batch order times `1 / N`) and with the core's
//! clip and SGD, as the released recipe's 4 GPUs would make it from their all-reduced mean.

use elasticface_core::margin::MarginConfig;
use elasticface_core::model::{IResNetConfig, StepConfig, TensorKind, Trainer, TrainerLayout};
use elasticface_core::nn::{clip_coefficient, scale, sgd_step, sum_of_squares};
use elasticface_core::rng::Philox4x32;
use elasticface_core::Error;

const CFG: IResNetConfig =
    IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 8], input_h: 16, input_w: 16, embedding: 8 };
const BATCH: usize = 4;
const CLASSES: usize = 5;
const SEED: u64 = 23;

/// `n` micro-batches of inputs, labels and margins.
fn data(n: usize, step: u64) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut rng = Philox4x32::new(SEED, 1000 + step);
    let input =
        (0..n * BATCH * CFG.input_len()).map(|_| elasticface_core::rng::standard_normal(&mut rng) as f32).collect();
    let labels = (0..n * BATCH).map(|i| ((i as u64 * 3 + step) % CLASSES as u64) as u32).collect();
    let mut margins = vec![0.0; n * BATCH];
    MarginConfig::ELASTIC_ARC_PLUS.draw_margins_at(SEED, step, &mut margins);
    (input, labels, margins)
}

/// The memory of a trainer, initialised from `SEED`.
struct Owned {
    layout: TrainerLayout,
    step_cfg: StepConfig,
    arena: Vec<f32>,
    order: Vec<u32>,
}

impl Owned {
    fn new(layout: TrainerLayout, step_cfg: StepConfig) -> Self {
        let mut me = Self { arena: vec![0.0; layout.arena_len()], order: vec![0; BATCH], layout, step_cfg };
        me.trainer().init(&mut Philox4x32::new(SEED, 0)).unwrap();
        me
    }

    fn trainer(&mut self) -> Trainer<'_> {
        Trainer::attach(self.layout.clone(), self.step_cfg, &mut self.arena, &mut self.order).unwrap()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_step_of_micro_batches_updates_with_the_mean_of_their_gradients() {
    let recipe = StepConfig::recipe(MarginConfig::ELASTIC_ARC_PLUS);
    let plain = TrainerLayout::new(&CFG, BATCH, CLASSES).unwrap();
    let trainable: Vec<_> = CFG.tensors().filter(|t| t.kind == TensorKind::Trainable).collect();
    for n in [2usize, 3] {
        let mut acc = Owned::new(plain.clone().with_accumulation(), recipe);
        let at_zero =
            StepConfig { sgd: elasticface_core::nn::Sgd { lr: 0.0, ..recipe.sgd }, clip_norm: f32::MAX, ..recipe };
        let mut each = Owned::new(plain.clone(), at_zero);
        let (state0, head0) = (each.trainer().state().to_vec(), each.trainer().head().to_vec());
        let (input, labels, margins) = data(n, 0);

        // Each micro-batch on its own: its loss, backbone and head gradients.
        let per = BATCH * CFG.input_len();
        let (mut losses, mut grads, mut head_grads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let mut t = each.trainer();
            let r = t.step(&input[i * per..][..per], &labels[i * BATCH..][..BATCH], &margins[i * BATCH..][..BATCH]);
            losses.push(r.unwrap().loss);
            grads.push(t.grads().to_vec());
            head_grads.push(t.head_grad().to_vec());
        }
        for t in &trainable {
            assert_eq!(bits(&each.trainer().state()[t.range()]), bits(&state0[t.range()]), "{t} moved at lr 0");
        }

        // The expected step: means (sums in micro-batch order, times 1/N rounded to f32), then the clip and SGD of
        // the recipe.
        let inv_n = 1.0 / n as f32;
        let mean = |parts: &[Vec<f32>]| -> Vec<f32> {
            (0..parts[0].len()).map(|j| parts[1..].iter().fold(parts[0][j], |s, g| s + g[j]) * inv_n).collect()
        };
        let loss = mean(&losses.iter().map(|&l| vec![l]).collect::<Vec<_>>())[0];
        let mut grad = mean(&grads);
        let head_grad = mean(&head_grads);
        // The core takes the norm with `libm::sqrtf`, correctly rounded as `f32::sqrt` is.
        let norm = trainable.iter().map(|t| sum_of_squares(&grad[t.range()])).sum::<f32>().sqrt();
        let coef = clip_coefficient(norm, recipe.clip_norm);
        let (mut state, mut momentum) = (state0.clone(), vec![0.0; state0.len()]);
        for t in &trainable {
            scale(&mut grad[t.range()], coef);
            sgd_step(&recipe.sgd, &mut state[t.range()], &grad[t.range()], &mut momentum[t.range()]).unwrap();
        }
        let (mut head, mut head_momentum) = (head0.clone(), vec![0.0; head0.len()]);
        sgd_step(&recipe.sgd, &mut head, &head_grad, &mut head_momentum).unwrap();
        // The running statistics moved once per micro-batch, as in `each`.
        let running = each.trainer().state().to_vec();
        for t in CFG.tensors().filter(|t| t.kind == TensorKind::RunningStat) {
            state[t.range()].copy_from_slice(&running[t.range()]);
        }

        let mut t = acc.trainer();
        let r = t.step(&input, &labels, &margins).unwrap();
        assert_eq!((r.loss.to_bits(), r.grad_norm.to_bits()), (loss.to_bits(), norm.to_bits()), "{n}: loss, norm");
        assert_eq!(bits(t.state()), bits(&state), "{n} micro-batches: state");
        assert_eq!(bits(t.head()), bits(&head), "{n} micro-batches: head");
        let (m, hm) = t.momentum();
        assert_eq!((bits(m), bits(hm)), (bits(&momentum), bits(&head_momentum)), "{n} micro-batches: momentum");
        assert_eq!(t.steps(), 1, "micro-batches make one step");
    }
}

#[test]
fn micro_batches_need_room_for_the_sums_and_whole_micro_batches() {
    let recipe = StepConfig::recipe(MarginConfig::ELASTIC_ARC);
    let plain = TrainerLayout::new(&CFG, BATCH, CLASSES).unwrap();
    let grown = plain.clone().with_accumulation();
    assert!(!plain.accumulates() && grown.accumulates());
    assert_eq!(grown.clone().with_accumulation(), grown, "room is made once");
    let sums = CFG.state_len() + CFG.embedding * CLASSES;
    assert_eq!(grown.arena_len(), plain.arena_len() + sums, "the sums go after everything else");

    let mut t = Owned::new(plain, recipe);
    let (input, labels, margins) = data(2, 0);
    let e = t.trainer().step(&input, &labels, &margins).unwrap_err();
    assert!(matches!(e, Error::Config { what } if what.contains("accumulation")), "{e}");
    let mut t = Owned::new(grown, recipe);
    let part = BATCH * CFG.input_len();
    let e = t.trainer().step(&input[..part + 1], &labels[..BATCH + 1], &margins[..BATCH + 1]).unwrap_err();
    assert_eq!(e, Error::Length { what: "labels", expected: BATCH, got: BATCH + 1 }, "whole micro-batches only");
    // One micro-batch on a layout with room is a plain step.
    assert!(t.trainer().step(&input[..part], &labels[..BATCH], &margins[..BATCH]).is_ok());
}
