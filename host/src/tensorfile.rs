//! Named tensors in safetensors files: reference vectors from PyTorch, checkpoints, embeddings.
//!
//! A [`TensorFile`] holds `F32` and `I64` tensors by name plus a JSON manifest stored in the file's `about`
//! metadata. Files are written atomically: to a temporary file in the same folder, synced, then renamed over
//! the destination, so a crash never leaves a half-written file under the real name.

use std::collections::HashMap;
use std::path::Path;

use std::borrow::Cow;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};

/// One tensor of a reference file, converted to the type we compute in.
#[derive(Clone, Debug)]
pub enum Data {
    /// `F32` tensors (the reference computes in f64 and stores f32).
    F32(Vec<f32>),
    /// `I64` tensors (labels, counters).
    I64(Vec<i64>),
}

/// A named tensor: its shape and its values.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Data,
}

/// A reference file loaded into memory: its tensors by name and the JSON manifest stored in its
/// `about` metadata.
#[derive(Clone, Debug)]
pub struct TensorFile {
    /// Where it came from, for messages.
    pub name: String,
    tensors: HashMap<String, Tensor>,
    /// The manifest (`about` metadata), `Null` when absent.
    pub meta: serde_json::Value,
}

impl TensorFile {
    /// Parses a safetensors file held in memory; `name` is used in error messages.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).with_context(|| format!("{name}: not a safetensors file"))?;
        let (_, header) = SafeTensors::read_metadata(bytes).with_context(|| format!("{name}: bad header"))?;
        let meta = match header.metadata().as_ref().and_then(|m| m.get("about")) {
            Some(text) => {
                serde_json::from_str(text).with_context(|| format!("{name}: `about` metadata is not JSON"))?
            }
            None => serde_json::Value::Null,
        };
        let mut tensors = HashMap::new();
        for (key, view) in st.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => {
                    Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                }
                Dtype::I64 => Data::I64(
                    raw.chunks_exact(8)
                        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                        .collect(),
                ),
                other => bail!("{name}: tensor `{key}` has dtype {other:?}; only F32 and I64 are used"),
            };
            tensors.insert(key, Tensor { shape: view.shape().to_vec(), data });
        }
        Ok(Self { name: name.to_string(), tensors, meta })
    }

    /// An empty file named `name` (for messages) with the manifest `meta`.
    pub fn new(name: &str, meta: serde_json::Value) -> Self {
        Self { name: name.to_string(), tensors: HashMap::new(), meta }
    }

    /// Adds (or replaces) an `F32` tensor; `data` must have the shape's element count.
    pub fn insert_f32(&mut self, key: &str, shape: &[usize], data: Vec<f32>) -> Result<()> {
        self.insert(key, Tensor { shape: shape.to_vec(), data: Data::F32(data) })
    }

    /// Adds (or replaces) an `I64` tensor; `data` must have the shape's element count.
    pub fn insert_i64(&mut self, key: &str, shape: &[usize], data: Vec<i64>) -> Result<()> {
        self.insert(key, Tensor { shape: shape.to_vec(), data: Data::I64(data) })
    }

    fn insert(&mut self, key: &str, t: Tensor) -> Result<()> {
        let len = match &t.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        };
        // Checked: a hostile shape whose product wraps to the data's length is no shape.
        if t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(len) {
            bail!("{}: tensor `{key}` has {len} values for shape {:?}", self.name, t.shape);
        }
        self.tensors.insert(key.to_string(), t);
        Ok(())
    }

    /// The file's bytes: the tensors sorted by name, the manifest as the `about` metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut views: Vec<(&str, &Tensor)> = self.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        views.sort_unstable_by_key(|(k, _)| *k);
        let meta = (!self.meta.is_null()).then(|| HashMap::from([("about".to_string(), self.meta.to_string())]));
        safetensors::serialize(views, meta).with_context(|| format!("{}: cannot serialise", self.name))
    }

    /// Writes the file atomically: a temporary file beside `path`, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::files::write_atomically(path, &self.to_bytes()?)
    }

    /// Reads and parses a safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&path.display().to_string(), &bytes)
    }

    /// The tensor `key`, or an error naming the file and the key.
    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| anyhow!("{}: no tensor `{key}`", self.name))
    }

    /// Whether the file holds a tensor `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Names of all tensors, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// The f32 values of tensor `key`.
    pub fn f32(&self, key: &str) -> Result<&[f32]> {
        match &self.get(key)?.data {
            Data::F32(v) => Ok(v),
            Data::I64(_) => bail!("{}: tensor `{key}` is I64, expected F32", self.name),
        }
    }

    /// The i64 values of tensor `key`.
    pub fn i64(&self, key: &str) -> Result<&[i64]> {
        match &self.get(key)?.data {
            Data::I64(v) => Ok(v),
            Data::F32(_) => bail!("{}: tensor `{key}` is F32, expected I64", self.name),
        }
    }

    /// The single f32 value of a one-element tensor `key`.
    pub fn scalar(&self, key: &str) -> Result<f32> {
        match self.f32(key)? {
            [v] => Ok(*v),
            v => bail!("{}: tensor `{key}` has {} elements, expected 1", self.name, v.len()),
        }
    }

    /// Class labels stored as I64, checked to fit `u32`.
    pub fn labels(&self, key: &str) -> Result<Vec<u32>> {
        self.i64(key)?
            .iter()
            .map(|&l| {
                u32::try_from(l).map_err(|_| anyhow!("{}: `{key}` holds label {l}, not a class index", self.name))
            })
            .collect()
    }
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            Data::F32(_) => Dtype::F32,
            Data::I64(_) => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            Data::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::I64(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
    fn data_len(&self) -> usize {
        match &self.data {
            Data::F32(v) => 4 * v.len(),
            Data::I64(v) => 8 * v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("elasticface-tensorfile-{}", std::process::id()));
        let path = dir.join("t.safetensors");
        let mut f = TensorFile::new("t", serde_json::json!({"step": 3}));
        f.insert_f32("a.weight", &[2, 2], vec![1.0, -2.5, f32::MIN_POSITIVE, 4.0]).unwrap();
        f.insert_i64("a.num_batches_tracked", &[], vec![7]).unwrap();
        assert!(f.insert_f32("bad", &[3], vec![1.0]).is_err());
        f.save(&path).unwrap();
        let g = TensorFile::open(&path).unwrap();
        assert_eq!(g.keys(), ["a.num_batches_tracked", "a.weight"]);
        assert_eq!(g.f32("a.weight").unwrap(), &[1.0, -2.5, f32::MIN_POSITIVE, 4.0]);
        assert_eq!(g.get("a.weight").unwrap().shape, [2, 2]);
        assert_eq!(g.i64("a.num_batches_tracked").unwrap(), &[7]);
        assert_eq!(g.meta["step"], 3);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
