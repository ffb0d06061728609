//! The best model of a run: `best.safetensors` in the run folder, the backbone at the verification whose mean
//! accuracy over the sets of `--val` is the highest so far, rewritten (atomically) each time a measurement beats it.
//!
//! Every measurement counts: the start's (the seeded weights, the model a fine-tuning run starts from, or a resumed
//! checkpoint), each `--eval-every`, and the end's. Only a higher mean replaces the file (strictly: of equals, the
//! earliest stays). A resumed run continues from the record in the file's manifest when it was measured on the same
//! sets; steps the resumed run takes again measure to the same bits, so a best a crash left from a later step than
//! the checkpoint's stays as it was. A fresh run starts without one.
//!
//! The file is a backbone (what `eval`, `embed`, `export` and `train --init` read); its manifest's `source` says
//! what made it: `{"best_of_run": {"step", "mean_accuracy", "sets": [{"set", "accuracy"}]}}`.
//!
//! Picking the best on the packs one reports (LFW and the like) is choosing on the test set: the figure of a model so
//! chosen is optimistic. Held-out identities (`--val` in the training formats) make an honest validation set.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::checkpoint::Backbone;
use crate::tensorfile::TensorFile;

/// The file's name in the run folder.
pub const FILE: &str = "best.safetensors";

/// One measurement: the step, the mean accuracy and each set's.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Best {
    /// Training steps taken when it was measured.
    pub step: u64,
    /// The mean of the sets' 10-fold accuracies.
    pub mean_accuracy: f64,
    /// Each set's name and 10-fold accuracy, in the order measured.
    pub sets: Vec<(String, f64)>,
}

impl Best {
    fn to_json(&self) -> serde_json::Value {
        let sets: Vec<_> = self.sets.iter().map(|(set, accuracy)| json!({"set": set, "accuracy": accuracy})).collect();
        json!({"best_of_run": {"step": self.step, "mean_accuracy": self.mean_accuracy, "sets": sets}})
    }

    /// The record in a backbone's manifest `source` (`{"best_of_run": ...}`, as this module writes it), if it
    /// holds one.
    pub fn from_json(source: &serde_json::Value) -> Option<Self> {
        let b = source.get("best_of_run")?;
        let sets = b["sets"]
            .as_array()?
            .iter()
            .map(|s| Some((s["set"].as_str()?.to_string(), s["accuracy"].as_f64()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { step: b["step"].as_u64()?, mean_accuracy: b["mean_accuracy"].as_f64()?, sets })
    }

    /// The record in backbone file `path`: `None` where its manifest holds none; an error where it does not read.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        Ok(Self::from_json(&TensorFile::open(path)?.meta["source"]))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.sets.iter().map(|(s, _)| s.as_str())
    }
}

/// The best model of one run folder, as this module describes.
#[derive(Debug)]
pub struct BestModel {
    path: PathBuf,
    best: Option<Best>,
}

impl BestModel {
    /// For a fresh run in folder `out`: no best yet (the run removes a file an earlier attempt left).
    pub fn fresh(out: &Path) -> Self {
        Self { path: out.join(FILE), best: None }
    }

    /// For a run in folder `out` resumed: the record of the folder's file, if there is one. A file without a record
    /// (or that cannot be read: it is written atomically, so that is someone else's) is replaced at the first
    /// measurement, with a note on stderr unless `quiet`.
    pub fn resumed(out: &Path, quiet: bool) -> Self {
        let path = out.join(FILE);
        let best = path.exists().then(|| Best::read(&path)).and_then(|b| match b {
            Ok(b) => b,
            Err(e) => {
                if !quiet {
                    eprintln!("{}: {e:#}; replaced at the next verification", path.display());
                }
                None
            }
        });
        Self { path, best }
    }

    /// The best measurement so far, if any.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// Where the best model is (or will be) kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A measurement at `step` (each set's name and accuracy): when its mean beats the best so far (or the best was
    /// measured on other sets), the backbone `backbone` gives is written to the file and the measurement becomes the
    /// best. Returns whether it did. No sets: nothing to compare, nothing written.
    pub fn offer(
        &mut self,
        step: u64,
        sets: &[(String, f64)],
        backbone: impl FnOnce() -> Result<Backbone>,
    ) -> Result<bool> {
        if sets.is_empty() {
            return Ok(false);
        }
        let mean_accuracy = sets.iter().map(|(_, a)| a).sum::<f64>() / sets.len() as f64;
        let beaten = match &self.best {
            Some(b) if b.names().eq(sets.iter().map(|(s, _)| s.as_str())) => mean_accuracy > b.mean_accuracy,
            _ => true,
        };
        if !beaten {
            return Ok(false);
        }
        let best = Best { step, mean_accuracy, sets: sets.to_vec() };
        backbone()?
            .save(&self.path, best.to_json())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.best = Some(best);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use elasticface_core::model::IResNetConfig;
    use elasticface_core::nn::BatchNorm;

    use super::*;

    const CFG: IResNetConfig =
        IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };

    /// A backbone told apart by its step count.
    fn backbone(steps: u64) -> impl FnOnce() -> Result<Backbone> {
        move || {
            let state = (0..CFG.state_len()).map(|i| (1 + i as u64 + steps) as f32).collect();
            Ok(Backbone { cfg: CFG, bn: BatchNorm::default(), state, steps })
        }
    }

    fn sets(accuracies: &[(&str, f64)]) -> Vec<(String, f64)> {
        accuracies.iter().map(|&(s, a)| (s.to_string(), a)).collect()
    }

    fn on_disk(dir: &Path) -> (u64, Best) {
        let f = TensorFile::open(&dir.join(FILE)).unwrap();
        let b = Backbone::from_file(&f, None, None).unwrap();
        (b.steps, Best::from_json(&f.meta["source"]).unwrap())
    }

    /// Only a higher mean replaces the file, with the backbone of its step; a resumed run goes on from the file's
    /// record, or starts over when the sets differ; a fresh run starts over.
    #[test]
    fn the_file_holds_the_backbone_of_the_highest_mean_accuracy() {
        let dir = tempfile::tempdir().unwrap();
        let mut best = BestModel::fresh(dir.path());
        assert!(!best.offer(0, &[], backbone(0)).unwrap());
        assert!(!dir.path().join(FILE).exists());
        assert!(best.offer(0, &sets(&[("lfw", 0.5), ("agedb_30", 0.6)]), backbone(0)).unwrap());
        assert!(best.offer(3, &sets(&[("lfw", 0.9), ("agedb_30", 0.7)]), backbone(3)).unwrap());
        // The same mean: the earlier stays. A lower one: too.
        assert!(!best.offer(6, &sets(&[("lfw", 0.7), ("agedb_30", 0.9)]), backbone(6)).unwrap());
        assert!(!best.offer(9, &sets(&[("lfw", 0.95), ("agedb_30", 0.5)]), backbone(9)).unwrap());
        let want = Best { step: 3, mean_accuracy: 0.8, sets: sets(&[("lfw", 0.9), ("agedb_30", 0.7)]) };
        assert_eq!(best.best(), Some(&want));
        assert_eq!(on_disk(dir.path()), (3, want.clone()));
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();

        let mut resumed = BestModel::resumed(dir.path(), true);
        assert_eq!(resumed.best(), Some(&want));
        assert!(!resumed.offer(6, &sets(&[("lfw", 0.7), ("agedb_30", 0.9)]), backbone(6)).unwrap());
        assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), bytes);
        assert!(resumed.offer(12, &sets(&[("lfw", 0.9), ("agedb_30", 0.71)]), backbone(12)).unwrap());
        assert_eq!(on_disk(dir.path()).0, 12);

        // Other sets: not comparable, the first measurement is the best.
        let mut other = BestModel::resumed(dir.path(), true);
        assert!(other.offer(15, &sets(&[("lfw", 0.1)]), backbone(15)).unwrap());
        assert_eq!(on_disk(dir.path()), (15, Best { step: 15, mean_accuracy: 0.1, sets: sets(&[("lfw", 0.1)]) }));

        let mut fresh = BestModel::fresh(dir.path());
        assert!(fresh.offer(0, &sets(&[("lfw", 0.05)]), backbone(0)).unwrap());
        assert_eq!(on_disk(dir.path()).0, 0);
    }

    /// A file that is no backbone of ours, or one without a record, is replaced at the first measurement.
    #[test]
    fn a_file_without_a_record_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not safetensors").unwrap();
        let mut best = BestModel::resumed(dir.path(), true);
        assert_eq!(best.best(), None);
        assert!(best.offer(4, &sets(&[("held-out", 0.6)]), backbone(4)).unwrap());
        assert_eq!(on_disk(dir.path()).0, 4);

        backbone(7)().unwrap().save(&dir.path().join(FILE), json!({"imported_from": "model.pth"})).unwrap();
        let mut best = BestModel::resumed(dir.path(), true);
        assert_eq!(best.best(), None);
        assert!(best.offer(8, &sets(&[("held-out", 0.2)]), backbone(8)).unwrap());
        assert_eq!(on_disk(dir.path()).0, 8);
    }
}
