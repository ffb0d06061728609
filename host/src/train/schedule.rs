//! Learning-rate schedules: step decay by epoch (the ElasticFace recipe) and polynomial decay with linear warmup
//! (insightface's arcface_torch).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A learning-rate schedule over training steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// `lr * factor^k` where `k` is the number of `epochs` already reached, counted from 1 as the released
    /// ElasticFace config counts them (its `0.1 ** len([m for m in [8, 14, 20, 25] if m - 1 <= epoch])` with `epoch`
    /// from 0): lr 0.1 for epochs 1 to 7, 0.01 from the 8th (epoch index 7), ... 1e-5 for the 25th and 26th.
    Step {
        /// Learning rate at the start.
        lr: f32,
        /// Epochs, counted from 1, at whose start the rate is multiplied by `factor`, ascending.
        epochs: Vec<u64>,
        /// The multiplier.
        factor: f32,
    },
    /// Linear warmup from 0 over `warmup` steps, then `lr * (1 - t)^power` with `t` going from 0 to 1 over the
    /// remaining steps up to `total` (insightface: power 2).
    Poly {
        /// Peak learning rate.
        lr: f32,
        /// Warmup steps.
        warmup: u64,
        /// Total steps of the run.
        total: u64,
        /// Exponent of the decay.
        power: f32,
    },
}

impl Schedule {
    /// The ElasticFace recipe's schedule for a base rate `lr`.
    pub fn elasticface(lr: f32) -> Self {
        Schedule::Step { lr, epochs: vec![8, 14, 20, 25], factor: 0.1 }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Step { lr, epochs, factor } => {
                if !(lr.is_finite() && *lr >= 0.0 && factor.is_finite() && *factor >= 0.0) {
                    bail!("step schedule: lr and factor must be finite and non-negative");
                }
                if epochs.windows(2).any(|w| w[0] >= w[1]) {
                    bail!("step schedule: decay epochs {epochs:?} must be strictly ascending");
                }
                if epochs.contains(&0) {
                    bail!("step schedule: decay epochs {epochs:?} count from 1 (the first epoch is 1)");
                }
            }
            Schedule::Poly { lr, warmup, total, power } => {
                if !(lr.is_finite() && *lr >= 0.0 && power.is_finite() && *power > 0.0) {
                    bail!("poly schedule: lr must be finite and non-negative, power positive");
                }
                if warmup > total || *total == 0 {
                    bail!(
                        "poly schedule: warmup ({warmup}) must not exceed the total steps ({total}), which must be > 0"
                    );
                }
            }
        }
        Ok(())
    }

    /// The rate of step `step` (from 0), which belongs to epoch index `epoch` (from 0: the epoch numbered
    /// `epoch + 1`).
    pub fn lr(&self, step: u64, epoch: u64) -> f32 {
        match self {
            Schedule::Step { lr, epochs, factor } => {
                let k = epochs.iter().filter(|&&e| epoch + 1 >= e).count();
                (f64::from(*lr) * f64::from(*factor).powi(k as i32)) as f32
            }
            Schedule::Poly { lr, warmup, total, power } => {
                let lr = f64::from(*lr);
                if step < *warmup {
                    return (lr * step as f64 / *warmup as f64) as f32;
                }
                let span = (total - warmup).max(1) as f64;
                let t = ((step - warmup) as f64 / span).min(1.0);
                (lr * (1.0 - t).powf(f64::from(*power))) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticface_recipe_decays_tenfold_at_its_epochs() {
        let s = Schedule::elasticface(0.1);
        // Epoch indices from 0. The released config's rate: lr 0.1 times its lr_func(epoch), which is
        // 0.1 ** len([m for m in [8, 14, 20, 25] if m - 1 <= epoch]).
        let lr_func = |epoch: u64| 0.1f64.powi([8, 14, 20, 25].iter().filter(|&&m| m - 1 <= epoch).count() as i32);
        let epochs = [(0, 0.1), (6, 0.1), (7, 0.01), (12, 0.01), (13, 1e-3), (19, 1e-4), (24, 1e-5), (25, 1e-5)];
        for (epoch, want) in epochs {
            assert!((0.1 * lr_func(epoch) - want).abs() <= want * 1e-12, "epoch {epoch}");
            let got = f64::from(s.lr(0, epoch));
            // Within f32 rounding of the decimal value.
            assert!((got - want).abs() <= want * 1e-6, "epoch {epoch}: {got} vs {want}");
        }
    }

    #[test]
    fn poly_warms_up_linearly_then_decays_to_zero() {
        let s = Schedule::Poly { lr: 0.2, warmup: 10, total: 110, power: 2.0 };
        assert_eq!(s.lr(0, 0), 0.0);
        assert!((s.lr(5, 0) - 0.1).abs() < 1e-7);
        assert_eq!(s.lr(10, 0), 0.2);
        assert!((s.lr(60, 0) - 0.05).abs() < 1e-7); // (1 - 0.5)^2 * 0.2
        assert_eq!(s.lr(110, 0), 0.0);
        assert_eq!(s.lr(500, 0), 0.0);
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(Schedule::Step { lr: 0.1, epochs: vec![5, 3], factor: 0.1 }.validate().is_err());
        assert!(Schedule::Step { lr: 0.1, epochs: vec![0, 3], factor: 0.1 }.validate().is_err());
        assert!(Schedule::Poly { lr: 0.1, warmup: 20, total: 10, power: 2.0 }.validate().is_err());
        assert!(Schedule::Poly { lr: f32::NAN, warmup: 0, total: 10, power: 2.0 }.validate().is_err());
    }
}
