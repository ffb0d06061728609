//! A run interrupted and resumed from a checkpoint continues bit for bit: 4 steps straight equal 2 steps,
//! a checkpoint written and read back, and 2 more steps, in losses, parameters, head and momentum. The run uses
//! the real data path (synthetic images through the loader, shuffled and flipped) and the CPU trainer.

use std::sync::Arc;

use elasticface::checkpoint::Checkpoint;
use elasticface::data::{Loader, LoaderConfig, Position, SyntheticDataset};
use elasticface_core::margin::MarginConfig;
use elasticface_core::model::{IResNetConfig, StepConfig, Trainer, TrainerLayout};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::Philox4x32;

const CFG: IResNetConfig =
    IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 8], input_h: 16, input_w: 16, embedding: 8 };
const SHAPE: ImageShape = ImageShape { h: 16, w: 16 };
const SEED: u64 = 17;
const BATCH: usize = 4;
const CLASSES: usize = 5;

fn dataset() -> Arc<SyntheticDataset> {
    Arc::new(SyntheticDataset::new(3, 10, CLASSES, SHAPE).unwrap())
}

/// Runs `steps` steps from `start`, crossing epoch boundaries (10 samples, batch 4, drop_last: 2 batches an
/// epoch); returns the losses and the position after the last batch.
fn train(trainer: &mut Trainer<'_>, start: Position, steps: usize) -> (Vec<u32>, Position) {
    let loss = trainer.step_config().margin;
    let mut losses = Vec::new();
    let mut pos = start;
    while losses.len() < steps {
        let cfg = LoaderConfig { workers: 2, ..LoaderConfig::new(BATCH, SEED) };
        let mut loader = Loader::new(dataset(), cfg, pos).unwrap();
        while let Some(batch) = loader.next_batch().unwrap() {
            let mut margins = [0.0; BATCH];
            loss.draw_margins_at(SEED, trainer.steps(), &mut margins);
            let input = batch.to_input(SHAPE).unwrap();
            losses.push(trainer.step(&input, &batch.labels, &margins).unwrap().loss.to_bits());
            pos = batch.next;
            if losses.len() == steps {
                return (losses, pos);
            }
        }
        pos = Position::epoch_start(pos.epoch + 1);
    }
    (losses, pos)
}

fn new_trainer<'a>(arena: &'a mut Vec<f32>, order: &'a mut Vec<u32>) -> Trainer<'a> {
    let layout = TrainerLayout::new(&CFG, BATCH, CLASSES).unwrap();
    arena.resize(layout.arena_len(), 0.0);
    order.resize(BATCH, 0);
    Trainer::new(layout, StepConfig::recipe(MarginConfig::ELASTIC_ARC_PLUS), arena, order).unwrap()
}

#[test]
fn four_steps_straight_equal_two_plus_resume_plus_two() {
    let (mut a1, mut o1) = (Vec::new(), Vec::new());
    let mut straight = new_trainer(&mut a1, &mut o1);
    straight.init(&mut Philox4x32::new(SEED, 0)).unwrap();
    let (losses_straight, _) = train(&mut straight, Position::epoch_start(0), 4);

    let (mut a2, mut o2) = (Vec::new(), Vec::new());
    let mut first = new_trainer(&mut a2, &mut o2);
    first.init(&mut Philox4x32::new(SEED, 0)).unwrap();
    let (mut losses, pos) = train(&mut first, Position::epoch_start(0), 2);
    let dir = std::env::temp_dir().join(format!("elasticface-resume-{}", std::process::id()));
    let path = dir.join("step2.safetensors");
    let run = serde_json::json!({"note": "test"});
    Checkpoint::from_trainer(&first, SEED, pos, run.clone()).save(&path).unwrap();

    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!((ck.step, ck.seed, ck.position, &ck.run), (2, SEED, pos, &run));
    let (mut a3, mut o3) = (Vec::new(), Vec::new());
    let mut resumed = new_trainer(&mut a3, &mut o3);
    ck.apply_to(&mut resumed).unwrap();
    let (more, _) = train(&mut resumed, ck.position, 2);
    losses.extend(more);
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(losses, losses_straight, "losses (f32 bits) differ after resuming");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(resumed.state()), bits(straight.state()), "parameters differ");
    assert_eq!(bits(resumed.head()), bits(straight.head()), "head differs");
    assert_eq!(bits(resumed.momentum().0), bits(straight.momentum().0), "momentum differs");
    assert_eq!(resumed.steps(), 4);
}

#[test]
fn checkpoints_name_tensors_as_insightface_and_refuse_mismatches() {
    let (mut a, mut o) = (Vec::new(), Vec::new());
    let mut t = new_trainer(&mut a, &mut o);
    t.init(&mut Philox4x32::new(1, 0)).unwrap();
    let f = Checkpoint::from_trainer(&t, 1, Position::epoch_start(0), serde_json::Value::Null).to_file().unwrap();
    for key in ["conv1.weight", "layer1.0.downsample.1.running_var", "layer4.0.bn3.num_batches_tracked", "fc.bias"] {
        assert!(f.contains(key), "{key} missing");
    }
    assert!(f.contains("optimizer.momentum.layer2.0.conv1.weight"));
    assert!(!f.contains("optimizer.momentum.features.weight"), "frozen tensors have no momentum");
    assert_eq!(f.get("head.weight").unwrap().shape, [8, CLASSES]);

    // A checkpoint of another network is refused with a message, never loaded half-way.
    let bytes = f.to_bytes().unwrap();
    let other = elasticface::tensorfile::TensorFile::from_bytes("ck", &bytes).unwrap();
    let mut ck = Checkpoint::from_file(&other).unwrap();
    ck.classes = 6;
    let err = ck.apply_to(&mut t).unwrap_err();
    assert!(err.to_string().contains("6 classes"), "{err}");
    let mut meta_broken = other.clone();
    meta_broken.meta["format"] = serde_json::json!("something-else");
    assert!(Checkpoint::from_file(&meta_broken).is_err());
}
