//! Embedding conformance: does a device compute the embeddings the host computes?
//!
//! A firmware evaluator or a test rig runs the same probe images through the device and through the host
//! reference, and hands both embeddings of each probe to a [`ConformanceCheck`], one probe at a time
//! (nothing is stored per probe: any number of probes, no allocation). Each embedding is f32 or int8 with
//! its scale ([`EmbeddingRef`]). Per probe it reports ([`ProbeReport`]):
//!
//! - `cosine`: the cosine similarity of the device's embedding with the host's;
//! - `max_abs_diff`: `max_k |device_k - host_k|`, on the values as given ([`DiffSpace::Raw`], int8 values
//!   dequantised as `q_k * scale`) or on the L2-normalised vectors ([`DiffSpace::Unit`]);
//! - when the probe comes with a `template` (the embedding it is verified against: an enrolled face, the
//!   other image of a pair), the verification decision `cosine(embedding, template) >= threshold` taken with
//!   the device's embedding and with the host's, and whether they agree ([`Decision`]).
//!
//! The run passes ([`ConformanceConfig::passed`]) when at least one probe was checked, no probe was
//! rejected as bad input, every probe is within the tolerances (`cosine >= min_cosine` and
//! `max_abs_diff <= max_abs_diff`), and the decisions disagree at most `max_disagreements` times.
//!
//! ```
//! use elasticface_core::conformance::{ConformanceCheck, ConformanceConfig, EmbeddingRef, Probe};
//!
//! let mut check = ConformanceCheck::new(ConformanceConfig::new(/* threshold */ 0.3, 0.99, 0.02))?;
//! let host = [0.6, -0.8, 0.0];
//! let device = [76, -101, 1]; // the device's int8 output, scale 1/127
//! let template = [0.5, -0.5, 0.7];
//! let report = check.check(&Probe {
//!     device: EmbeddingRef::I8 { values: &device, scale: 1.0 / 127.0 },
//!     host: EmbeddingRef::F32(&host),
//!     template: Some(EmbeddingRef::F32(&template)),
//! })?;
//! assert!(report.within_tolerance && report.decision.unwrap().agrees());
//! assert!(check.passed());
//! # Ok::<(), elasticface_core::Error>(())
//! ```
//!
//! # Arithmetic
//!
//! Int8 values are dequantised as [`crate::embedding::dequantize_i8`] does (`f32::from(q) * scale`). Every
//! cosine is [`crate::embedding::cosine`]'s: three sums in f64 in index order, one division, rounded to f32
//! and clamped to `[-1, 1]`. Differences are taken in f64 (no overflow) and their maximum rounded to f32.
//! There is no other floating-point arithmetic, so a report is the same bits on every target whose `f64`
//! arithmetic is IEEE binary64 (all but x86 without SSE2, whose x87 unit rounds in extended precision).

use crate::embedding::CosineSums;
use crate::error::Error;
use crate::gallery::check_threshold;

/// One embedding as a device or the host produced it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EmbeddingRef<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Int8 values `q` with their scale: element `k` is `q[k] * scale`.
    I8 {
        /// The quantised values.
        values: &'a [i8],
        /// The scale, finite and positive.
        scale: f32,
    },
}

impl<'a> EmbeddingRef<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingRef::F32(v) => v.len(),
            EmbeddingRef::I8 { values, .. } => values.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (int8 dequantised), in order.
    pub fn values(&self) -> Values<'a> {
        match *self {
            EmbeddingRef::F32(v) => Values::F32(v.iter()),
            EmbeddingRef::I8 { values, scale } => Values::I8(values.iter(), scale),
        }
    }

    /// Checks that the embedding can be compared: an int8 scale finite and positive ([`Error::Config`]),
    /// every value finite ([`Error::NonFinite`], int8 values included, whose product with the scale can
    /// overflow), not all zero ([`Error::ZeroNorm`]). Errors are named `what`.
    pub fn check(&self, what: &'static str) -> Result<(), Error> {
        if let EmbeddingRef::I8 { scale, .. } = *self {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::Config { what: "an int8 scale must be finite and positive" });
            }
        }
        if let Some(index) = self.values().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what, index });
        }
        if self.values().all(|v| v == 0.0) {
            return Err(Error::ZeroNorm { what, index: 0 });
        }
        Ok(())
    }
}

/// The values of an [`EmbeddingRef`] as f32, in order (see [`EmbeddingRef::values`]).
#[derive(Clone, Debug)]
pub enum Values<'a> {
    /// f32 values.
    F32(core::slice::Iter<'a, f32>),
    /// Int8 values and their scale.
    I8(core::slice::Iter<'a, i8>, f32),
}

impl Iterator for Values<'_> {
    type Item = f32;

    #[inline]
    fn next(&mut self) -> Option<f32> {
        match self {
            Values::F32(it) => it.next().copied(),
            Values::I8(it, scale) => it.next().map(|&q| f32::from(q) * *scale),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Values::F32(it) => it.size_hint(),
            Values::I8(it, _) => it.size_hint(),
        }
    }
}

/// Where [`ProbeReport::max_abs_diff`] is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiffSpace {
    /// On the values as given (int8 dequantised): for a device that must reproduce the host's numbers.
    #[default]
    Raw,
    /// On the L2-normalised vectors (norms in f64): for a device whose embeddings only need the same
    /// direction, e.g. one that normalises and one that does not.
    Unit,
}

/// The tolerances of a conformance run, set by the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConformanceConfig {
    /// Verification threshold on the cosine with the template, in `[-1, 1]`: accepted when
    /// `cosine >= threshold`.
    pub threshold: f32,
    /// Smallest acceptable cosine between the device's and the host's embedding, in `[-1, 1]`.
    pub min_cosine: f32,
    /// Largest acceptable `max_abs_diff`: not NaN, not negative (`+inf` disables the check).
    pub max_abs_diff: f32,
    /// How many probes may take a different verification decision on the device than on the host.
    pub max_disagreements: u64,
    /// Where the difference is measured.
    pub space: DiffSpace,
}

impl ConformanceConfig {
    /// Tolerances with no disagreement allowed and differences on the raw values.
    pub const fn new(threshold: f32, min_cosine: f32, max_abs_diff: f32) -> Self {
        Self { threshold, min_cosine, max_abs_diff, max_disagreements: 0, space: DiffSpace::Raw }
    }

    /// Checks the domains: `threshold` and `min_cosine` in `[-1, 1]`, `max_abs_diff >= 0` ([`Error::Config`]).
    pub fn validate(&self) -> Result<(), Error> {
        check_threshold(self.threshold)?;
        if !(-1.0..=1.0).contains(&self.min_cosine) {
            return Err(Error::Config { what: "the minimum cosine must lie in [-1, 1]" });
        }
        if self.max_abs_diff.is_nan() || self.max_abs_diff < 0.0 {
            return Err(Error::Config { what: "the maximum absolute difference must not be negative or NaN" });
        }
        Ok(())
    }

    /// Compares the device's embedding of one probe with the host's (see the module documentation). Nothing
    /// is recorded: [`ConformanceCheck::check`] records, or [`ConformanceSummary::record`] by hand.
    ///
    /// Errors, in this order: an invalid configuration; `host` or `template` with another length than
    /// `device` ([`Error::Length`]); an embedding [`EmbeddingRef::check`] rejects (named `"device"`,
    /// `"host"`, `"template"`).
    pub fn compare(&self, probe: &Probe<'_>) -> Result<ProbeReport, Error> {
        self.validate()?;
        let Probe { device, host, template } = *probe;
        let dim = device.len();
        check_emb_len("host", &host, dim)?;
        if let Some(t) = template {
            check_emb_len("template", &t, dim)?;
        }
        device.check("device")?;
        host.check("host")?;
        if let Some(t) = template {
            t.check("template")?;
        }

        let sums = CosineSums::of(device.values().zip(host.values()));
        let cosine = sums.cosine("device", "host")?;
        let max_abs_diff = match self.space {
            DiffSpace::Raw => max_abs_diff(device.values().zip(host.values()), 1.0, 1.0),
            DiffSpace::Unit => {
                max_abs_diff(device.values().zip(host.values()), libm::sqrt(sums.aa), libm::sqrt(sums.bb))
            }
        };
        let decision = match template {
            None => None,
            Some(t) => {
                let device_cosine = CosineSums::of(device.values().zip(t.values())).cosine("device", "template")?;
                let host_cosine = CosineSums::of(host.values().zip(t.values())).cosine("host", "template")?;
                Some(Decision {
                    device_cosine,
                    host_cosine,
                    device_accepts: device_cosine >= self.threshold,
                    host_accepts: host_cosine >= self.threshold,
                })
            }
        };
        let within_tolerance = cosine >= self.min_cosine && max_abs_diff <= self.max_abs_diff;
        Ok(ProbeReport { cosine, max_abs_diff, within_tolerance, decision })
    }

    /// The verdict on a run: at least one probe, none rejected, none out of tolerance, at most
    /// `max_disagreements` disagreements.
    pub fn passed(&self, summary: &ConformanceSummary) -> bool {
        summary.probes > 0
            && summary.rejected == 0
            && summary.out_of_tolerance == 0
            && summary.disagreements <= self.max_disagreements
    }
}

/// Checks that `e` has `expected` elements.
fn check_emb_len(what: &'static str, e: &EmbeddingRef<'_>, expected: usize) -> Result<(), Error> {
    match e.len() {
        got if got == expected => Ok(()),
        got => Err(Error::Length { what, expected, got }),
    }
}

/// `max_k |a_k / na - b_k / nb|` in f64, rounded to f32 (`0.0` for no elements).
fn max_abs_diff(pairs: impl Iterator<Item = (f32, f32)>, na: f64, nb: f64) -> f32 {
    pairs.fold(0.0f64, |m, (a, b)| m.max(libm::fabs(f64::from(a) / na - f64::from(b) / nb))) as f32
}

/// One probe: the device's and the host's embedding of the same image, and optionally the template both
/// are verified against. All have the same length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe<'a> {
    /// The device's embedding.
    pub device: EmbeddingRef<'a>,
    /// The host's reference embedding.
    pub host: EmbeddingRef<'a>,
    /// The embedding the probe is verified against, if any.
    pub template: Option<EmbeddingRef<'a>>,
}

/// The verification decisions of one probe against its template.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// `cosine(device, template)`.
    pub device_cosine: f32,
    /// `cosine(host, template)`.
    pub host_cosine: f32,
    /// `device_cosine >= threshold`.
    pub device_accepts: bool,
    /// `host_cosine >= threshold`.
    pub host_accepts: bool,
}

impl Decision {
    /// Whether the device decides as the host does.
    pub fn agrees(&self) -> bool {
        self.device_accepts == self.host_accepts
    }
}

/// The comparison of one probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeReport {
    /// `cosine(device, host)`, in `[-1, 1]`.
    pub cosine: f32,
    /// `max_k |device_k - host_k|` in the configured [`DiffSpace`].
    pub max_abs_diff: f32,
    /// `cosine >= min_cosine && max_abs_diff <= max_abs_diff`.
    pub within_tolerance: bool,
    /// The decisions, when the probe has a template.
    pub decision: Option<Decision>,
}

/// Running totals of a conformance run: plain counters, so that a caller (or the C API) can keep them
/// anywhere and resume a run.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct ConformanceSummary {
    /// Probes offered, rejected ones included.
    pub probes: u64,
    /// Probes rejected as bad input (lengths, NaN, zero norm, bad scale or configuration).
    pub rejected: u64,
    /// Probes outside the tolerances.
    pub out_of_tolerance: u64,
    /// Probes with a template (and so a decision).
    pub decisions: u64,
    /// Probes whose decision on the device differs from the host's.
    pub disagreements: u64,
    /// Smallest `cosine` seen (`1.0` before any).
    pub worst_cosine: f32,
    /// Largest `max_abs_diff` seen (`0.0` before any).
    pub worst_max_abs_diff: f32,
}

impl Default for ConformanceSummary {
    fn default() -> Self {
        Self::new()
    }
}

impl ConformanceSummary {
    /// No probe yet.
    pub const fn new() -> Self {
        Self {
            probes: 0,
            rejected: 0,
            out_of_tolerance: 0,
            decisions: 0,
            disagreements: 0,
            worst_cosine: 1.0,
            worst_max_abs_diff: 0.0,
        }
    }

    /// Counts a compared probe. Counters saturate instead of wrapping.
    pub fn record(&mut self, report: &ProbeReport) {
        self.probes = self.probes.saturating_add(1);
        if !report.within_tolerance {
            self.out_of_tolerance = self.out_of_tolerance.saturating_add(1);
        }
        if let Some(d) = report.decision {
            self.decisions = self.decisions.saturating_add(1);
            if !d.agrees() {
                self.disagreements = self.disagreements.saturating_add(1);
            }
        }
        // `min`/`max` ignore a NaN operand: a summary corrupted by its keeper heals instead of sticking.
        self.worst_cosine = self.worst_cosine.min(report.cosine);
        self.worst_max_abs_diff = self.worst_max_abs_diff.max(report.max_abs_diff);
    }

    /// Counts a probe that was rejected as bad input.
    pub fn record_rejected(&mut self) {
        self.probes = self.probes.saturating_add(1);
        self.rejected = self.rejected.saturating_add(1);
    }
}

/// A streaming conformance run: a validated configuration and its [`ConformanceSummary`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConformanceCheck {
    config: ConformanceConfig,
    summary: ConformanceSummary,
}

impl ConformanceCheck {
    /// A run with no probe yet. Errors: an invalid configuration ([`ConformanceConfig::validate`]).
    pub fn new(config: ConformanceConfig) -> Result<Self, Error> {
        Self::resume(config, ConformanceSummary::new())
    }

    /// A run that continues from `summary` (saved from an earlier run with the same configuration).
    pub fn resume(config: ConformanceConfig, summary: ConformanceSummary) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self { config, summary })
    }

    /// Compares one probe ([`ConformanceConfig::compare`]) and records it; a rejected probe is recorded as
    /// such (it fails the run) and its error returned.
    pub fn check(&mut self, probe: &Probe<'_>) -> Result<ProbeReport, Error> {
        match self.config.compare(probe) {
            Ok(report) => {
                self.summary.record(&report);
                Ok(report)
            }
            Err(e) => {
                self.summary.record_rejected();
                Err(e)
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ConformanceConfig {
        &self.config
    }

    /// The totals so far.
    pub fn summary(&self) -> &ConformanceSummary {
        &self.summary
    }

    /// The verdict so far ([`ConformanceConfig::passed`]).
    pub fn passed(&self) -> bool {
        self.config.passed(&self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::{cosine, dequantize_i8, quantize_i8};

    const HOST: [f32; 4] = [0.5, -0.25, 0.75, 0.125];

    fn f32_probe<'a>(device: &'a [f32], host: &'a [f32], template: Option<&'a [f32]>) -> Probe<'a> {
        Probe {
            device: EmbeddingRef::F32(device),
            host: EmbeddingRef::F32(host),
            template: template.map(EmbeddingRef::F32),
        }
    }

    #[test]
    fn identical_embeddings_conform_exactly() {
        let cfg = ConformanceConfig::new(0.5, 1.0, 0.0);
        let r = cfg.compare(&f32_probe(&HOST, &HOST, Some(&HOST))).unwrap();
        assert_eq!(r.cosine, 1.0);
        assert_eq!(r.max_abs_diff, 0.0);
        assert!(r.within_tolerance);
        let d = r.decision.unwrap();
        assert!(d.device_accepts && d.host_accepts && d.agrees());
        assert_eq!(d.device_cosine, cosine(&HOST, &HOST).unwrap());
    }

    #[test]
    fn the_report_is_the_embedding_module_arithmetic() {
        let device = [0.51, -0.24, 0.74, 0.13];
        let template = [0.1, 0.9, -0.3, 0.2];
        let cfg = ConformanceConfig::new(0.0, 0.99, 0.011);
        let r = cfg.compare(&f32_probe(&device, &HOST, Some(&template))).unwrap();
        assert_eq!(r.cosine, cosine(&device, &HOST).unwrap());
        let want = device.iter().zip(HOST).map(|(&a, b)| (f64::from(a) - f64::from(b)).abs()).fold(0.0, f64::max);
        assert_eq!(r.max_abs_diff, want as f32);
        assert!(r.within_tolerance);
        let d = r.decision.unwrap();
        assert_eq!(
            (d.device_cosine, d.host_cosine),
            (cosine(&device, &template).unwrap(), cosine(&HOST, &template).unwrap())
        );
        // A tighter tolerance fails the probe.
        let strict = ConformanceConfig { max_abs_diff: 0.005, ..cfg };
        assert!(!strict.compare(&f32_probe(&device, &HOST, None)).unwrap().within_tolerance);
    }

    #[test]
    fn int8_embeddings_are_dequantised_with_their_scale() {
        let mut q = [0i8; 4];
        let scale = quantize_i8(&HOST, &mut q).unwrap();
        let mut back = [0.0f32; 4];
        dequantize_i8(&q, scale, &mut back).unwrap();
        let cfg = ConformanceConfig::new(0.5, 0.999, scale / 2.0);
        let probe =
            Probe { device: EmbeddingRef::I8 { values: &q, scale }, host: EmbeddingRef::F32(&HOST), template: None };
        let r = cfg.compare(&probe).unwrap();
        assert_eq!(r.cosine, cosine(&back, &HOST).unwrap());
        assert!(r.within_tolerance, "{r:?}");
        // The same int8 vector with a wrong scale has the same direction but other values.
        let wrong = Probe { device: EmbeddingRef::I8 { values: &q, scale: scale * 2.0 }, ..probe };
        let r = cfg.compare(&wrong).unwrap();
        assert!(r.cosine > 0.999 && !r.within_tolerance);
        let unit = ConformanceConfig { space: DiffSpace::Unit, ..cfg };
        assert!(unit.compare(&wrong).unwrap().within_tolerance);
    }

    #[test]
    fn unit_space_ignores_the_norm() {
        let device = HOST.map(|v| v * 3.0);
        let cfg = ConformanceConfig { space: DiffSpace::Unit, ..ConformanceConfig::new(0.0, 0.999, 1e-6) };
        let r = cfg.compare(&f32_probe(&device, &HOST, None)).unwrap();
        assert!(r.max_abs_diff <= 1e-7 && r.within_tolerance, "{r:?}");
        let raw = ConformanceConfig { space: DiffSpace::Raw, ..cfg };
        assert_eq!(raw.compare(&f32_probe(&device, &HOST, None)).unwrap().max_abs_diff, 1.5);
    }

    #[test]
    fn decisions_that_differ_are_counted_and_fail_the_run_beyond_the_allowance() {
        // cos(host, t) = 0.6 accepts at 0.5; the device's cos(device, t) = 0.4 rejects.
        let t = [1.0, 0.0];
        let (host, device) = ([0.6, 0.8], [0.4, 0.916_515_2]);
        let cfg = ConformanceConfig::new(0.5, 0.9, 1.0);
        let mut check = ConformanceCheck::new(cfg).unwrap();
        let r = check.check(&f32_probe(&device, &host, Some(&t))).unwrap();
        let d = r.decision.unwrap();
        assert!(d.host_accepts && !d.device_accepts && !d.agrees());
        assert!(r.within_tolerance);
        assert!(!check.passed());
        assert_eq!(check.summary().disagreements, 1);
        let lenient = ConformanceCheck::resume(ConformanceConfig { max_disagreements: 1, ..cfg }, *check.summary());
        assert!(lenient.unwrap().passed());
    }

    #[test]
    fn bad_input_is_rejected_and_fails_the_run() {
        let cfg = ConformanceConfig::new(0.5, 0.9, 1.0);
        let mut check = ConformanceCheck::new(cfg).unwrap();
        assert!(!check.passed(), "no probe is no pass");
        let e = check.check(&f32_probe(&HOST, &HOST[..3], None));
        assert_eq!(e, Err(Error::Length { what: "host", expected: 4, got: 3 }));
        let e = check.check(&f32_probe(&HOST, &HOST, Some(&HOST[..2])));
        assert_eq!(e, Err(Error::Length { what: "template", expected: 4, got: 2 }));
        let e = check.check(&f32_probe(&[0.5, f32::NAN, 0.0, 0.0], &HOST, None));
        assert_eq!(e, Err(Error::NonFinite { what: "device", index: 1 }));
        let e = check.check(&f32_probe(&HOST, &[0.0; 4], None));
        assert_eq!(e, Err(Error::ZeroNorm { what: "host", index: 0 }));
        let e = check.check(&f32_probe(&HOST, &HOST, Some(&[0.0; 4])));
        assert_eq!(e, Err(Error::ZeroNorm { what: "template", index: 0 }));
        let e = check.check(&f32_probe(&[], &[], None));
        assert_eq!(e, Err(Error::ZeroNorm { what: "device", index: 0 }));
        for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let p =
                Probe { device: EmbeddingRef::I8 { values: &[1, 2, 3, 4], scale }, ..f32_probe(&HOST, &HOST, None) };
            assert!(matches!(check.check(&p), Err(Error::Config { .. })), "{scale}");
        }
        // A scale that overflows when applied.
        let p = Probe {
            device: EmbeddingRef::I8 { values: &[1, 2, 3, 127], scale: f32::MAX },
            ..f32_probe(&HOST, &HOST, None)
        };
        assert_eq!(check.check(&p), Err(Error::NonFinite { what: "device", index: 1 }));
        assert_eq!(check.summary().rejected, 11);
        check.check(&f32_probe(&HOST, &HOST, None)).unwrap();
        assert_eq!((check.summary().probes, check.summary().rejected), (12, 11));
        assert!(!check.passed());

        for bad in [
            ConformanceConfig::new(1.5, 0.9, 1.0),
            ConformanceConfig::new(f32::NAN, 0.9, 1.0),
            ConformanceConfig::new(0.5, -2.0, 1.0),
            ConformanceConfig::new(0.5, 0.9, -1.0),
            ConformanceConfig::new(0.5, 0.9, f32::NAN),
        ] {
            assert!(matches!(ConformanceCheck::new(bad), Err(Error::Config { .. })), "{bad:?}");
            assert!(matches!(bad.compare(&f32_probe(&HOST, &HOST, None)), Err(Error::Config { .. })));
        }
        assert!(ConformanceCheck::new(ConformanceConfig::new(-1.0, 1.0, f32::INFINITY)).is_ok());
    }

    #[test]
    fn huge_values_neither_overflow_nor_pass_silently() {
        let big = [f32::MAX, -f32::MAX];
        let cfg = ConformanceConfig::new(0.5, 0.9, 1.0);
        let r = cfg.compare(&f32_probe(&big, &[-f32::MAX, f32::MAX], None)).unwrap();
        assert_eq!(r.cosine, -1.0);
        assert_eq!(r.max_abs_diff, f32::INFINITY);
        assert!(!r.within_tolerance);
    }

    #[test]
    fn the_summary_tracks_the_worst_probe() {
        let mut s = ConformanceSummary::default();
        let r = |cosine, max_abs_diff| ProbeReport { cosine, max_abs_diff, within_tolerance: true, decision: None };
        s.record(&r(0.99, 0.01));
        s.record(&r(0.995, 0.03));
        s.record(&r(f32::NAN, f32::NAN));
        assert_eq!((s.worst_cosine, s.worst_max_abs_diff), (0.99, 0.03));
        assert_eq!((s.probes, s.decisions, s.out_of_tolerance), (3, 0, 0));
        s.probes = u64::MAX;
        s.record_rejected();
        assert_eq!(s.probes, u64::MAX);
    }
}
