//! Reference tensors (safetensors files written by PyTorch) and their comparison with our results.
//!
//! Comparison follows `numpy.allclose`: an element passes when `|got - want| <= abs + rel * |want|`.
//! Reports give the largest absolute error and the largest error relative to the tensor's scale
//! (`max |got - want| / max |want|`), which stays meaningful when some expected values are near zero.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

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
pub struct ReferenceFile {
    /// Where it came from, for messages.
    pub name: String,
    tensors: HashMap<String, Tensor>,
    /// The manifest (`about` metadata), `Null` when absent.
    pub meta: serde_json::Value,
}

impl ReferenceFile {
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

/// How far a result may be from the reference: `|got - want| <= abs + rel * |want|` per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

impl Tolerance {
    /// No difference allowed.
    pub const EXACT: Tolerance = Tolerance { abs: 0.0, rel: 0.0 };

    /// `abs` and `rel` as given.
    pub const fn new(abs: f64, rel: f64) -> Self {
        Self { abs, rel }
    }
}

/// The comparison of one result with its reference.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was compared, e.g. `elastic_arc.grad_embeddings`.
    pub name: String,
    /// Number of elements compared.
    pub len: usize,
    /// Largest `|got - want|`.
    pub max_abs: f64,
    /// `max |got - want| / max |want|` (0 when the reference is all zero and so is the result).
    pub max_rel: f64,
    /// The tolerance applied.
    pub tol: Tolerance,
    /// Whether every element is within the tolerance (and the lengths agree).
    pub pass: bool,
    /// Set when the comparison could not be made (length mismatch, NaN).
    pub problem: Option<String>,
}

impl Check {
    /// Compares `got` with `want` element by element. NaN anywhere fails.
    pub fn compare(name: impl Into<String>, got: &[f32], want: &[f32], tol: Tolerance) -> Check {
        let name = name.into();
        if got.len() != want.len() {
            let problem = format!("length {} but the reference has {}", got.len(), want.len());
            return Check {
                name,
                len: want.len(),
                max_abs: f64::INFINITY,
                max_rel: f64::INFINITY,
                tol,
                pass: false,
                problem: Some(problem),
            };
        }
        let (mut max_abs, mut scale, mut pass) = (0.0f64, 0.0f64, true);
        for (&g, &w) in got.iter().zip(want) {
            let (g, w) = (f64::from(g), f64::from(w));
            let d = (g - w).abs();
            if d.is_nan() || d > tol.abs + tol.rel * w.abs() {
                pass = false;
            }
            max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d) };
            scale = scale.max(w.abs());
        }
        let max_rel = if max_abs == 0.0 { 0.0 } else { max_abs / scale };
        let problem = max_abs.is_nan().then(|| "NaN in the result".to_string());
        Check { name, len: want.len(), max_abs, max_rel, tol, pass, problem }
    }

    /// Compares two integers (or other exactly-equal values given as f64).
    pub fn exact(name: impl Into<String>, got: f64, want: f64) -> Check {
        let d = (got - want).abs();
        let pass = got == want;
        let max_rel = if d == 0.0 { 0.0 } else { d / want.abs().max(f64::MIN_POSITIVE) };
        Check { name: name.into(), len: 1, max_abs: d, max_rel, tol: Tolerance::EXACT, pass, problem: None }
    }

    /// A check that could not run (missing tensor, error from the core): always a failure.
    pub fn failed(name: impl Into<String>, problem: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            len: 0,
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            tol: Tolerance::EXACT,
            pass: false,
            problem: Some(problem.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        write!(
            f,
            "{verdict}  {:<48} n={:<6} max_abs={:<10.3e} max_rel={:<10.3e} tol=({:.0e} abs, {:.0e} rel)",
            self.name, self.len, self.max_abs, self.max_rel, self.tol.abs, self.tol.rel
        )?;
        if let Some(p) = &self.problem {
            write!(f, "  [{p}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_applies_abs_and_rel_parts() {
        let c = Check::compare("t", &[1.0, 2.001], &[1.0, 2.0], Tolerance::new(0.0, 1e-3));
        assert!(c.pass, "{c}");
        let c = Check::compare("t", &[1.0, 2.01], &[1.0, 2.0], Tolerance::new(1e-3, 1e-3));
        assert!(!c.pass, "{c}");
        assert!((c.max_abs - 0.01).abs() < 1e-6 && (c.max_rel - 0.005).abs() < 1e-6);
    }

    #[test]
    fn compare_fails_on_nan_and_length() {
        assert!(!Check::compare("t", &[f32::NAN], &[1.0], Tolerance::new(1.0, 1.0)).pass);
        assert!(!Check::compare("t", &[1.0], &[1.0, 2.0], Tolerance::new(1.0, 1.0)).pass);
    }
}
