//! Comparison of our results with reference tensors, with written tolerances.
//!
//! Comparison follows `numpy.allclose`: an element passes when `|got - want| <= abs + rel * |want|`.
//! Reports give the largest absolute error and the largest error relative to the tensor's scale
//! (`max |got - want| / max |want|`), which stays meaningful when some expected values are near zero.
//! Reference files are read with [`crate::tensorfile::TensorFile`].

use std::fmt;

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
