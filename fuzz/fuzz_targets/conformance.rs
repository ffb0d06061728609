//! The conformance check on fuzzed embeddings (any f32 bits, int8 values with any scale, mismatched lengths,
//! optional templates) and fuzzed tolerances.
//!
//! Checked: no panic; a report only for valid input, with cosines in [-1, 1], a difference that is not NaN
//! and the tolerance verdict its fields imply; a running summary whose counters add up; and the C ABI
//! (`ef_conformance_check`) giving the same bits as the Rust API.
#![no_main]

mod common;

use common::Bytes;
use elasticface_core::conformance::{
    ConformanceCheck, ConformanceConfig, ConformanceSummary, DiffSpace, EmbeddingRef, Probe, ProbeReport,
};
use elasticface_core::ffi::{
    ef_conformance_check, EfConformanceConfig, EfConformanceSummary, EfEmbedding, EfProbeReport, EfStatus, EF_DIFF_RAW,
    EF_DIFF_UNIT, EF_ELEMENT_F32, EF_ELEMENT_I8,
};
use libfuzzer_sys::fuzz_target;

/// One fuzzed embedding: f32 or int8 with a scale.
enum Emb {
    F32(Vec<f32>),
    I8(Vec<i8>, f32),
}

impl Emb {
    fn read(b: &mut Bytes<'_>, dim: usize) -> Self {
        // Sometimes one element more or fewer.
        let len = match b.u8() % 16 {
            0 => dim + 1,
            1 => dim.saturating_sub(1),
            _ => dim,
        };
        if b.one_in(3) {
            let scale = if b.bool() { b.f32() } else { 1.0 / 127.0 };
            Emb::I8((0..len).map(|_| b.u8() as i8).collect(), scale)
        } else {
            Emb::F32((0..len).map(|_| b.f32()).collect())
        }
    }

    fn as_ref(&self) -> EmbeddingRef<'_> {
        match self {
            Emb::F32(v) => EmbeddingRef::F32(v),
            Emb::I8(v, scale) => EmbeddingRef::I8 { values: v, scale: *scale },
        }
    }

    fn as_c(&self) -> EfEmbedding {
        match self {
            Emb::F32(v) => EfEmbedding { data: v.as_ptr().cast(), len: v.len(), element: EF_ELEMENT_F32, scale: 0.0 },
            Emb::I8(v, scale) => {
                EfEmbedding { data: v.as_ptr().cast(), len: v.len(), element: EF_ELEMENT_I8, scale: *scale }
            }
        }
    }
}

fn c_summary(s: &ConformanceSummary) -> EfConformanceSummary {
    EfConformanceSummary {
        probes: s.probes,
        rejected: s.rejected,
        out_of_tolerance: s.out_of_tolerance,
        decisions: s.decisions,
        disagreements: s.disagreements,
        worst_cosine: s.worst_cosine,
        worst_max_abs_diff: s.worst_max_abs_diff,
    }
}

fn check_report(cfg: &ConformanceConfig, r: &ProbeReport) {
    assert!((-1.0..=1.0).contains(&r.cosine), "{r:?}");
    assert!(r.max_abs_diff >= 0.0, "{r:?}");
    assert_eq!(r.within_tolerance, r.cosine >= cfg.min_cosine && r.max_abs_diff <= cfg.max_abs_diff);
    if let Some(d) = r.decision {
        assert!((-1.0..=1.0).contains(&d.device_cosine) && (-1.0..=1.0).contains(&d.host_cosine), "{d:?}");
        assert_eq!(d.device_accepts, d.device_cosine >= cfg.threshold);
        assert_eq!(d.host_accepts, d.host_cosine >= cfg.threshold);
    }
    if cfg.space == DiffSpace::Unit {
        // Unit vectors differ by at most 2 per element (plus rounding).
        assert!(r.max_abs_diff <= 2.0 + 1e-6, "{r:?}");
    }
}

fn same_bits(r: &ProbeReport, c: &EfProbeReport) {
    assert_eq!(r.cosine.to_bits(), c.cosine.to_bits());
    assert_eq!(r.max_abs_diff.to_bits(), c.max_abs_diff.to_bits());
    assert_eq!(r.within_tolerance, c.within_tolerance);
    assert_eq!(r.decision.is_some(), c.has_decision);
    if let Some(d) = r.decision {
        assert_eq!(
            (d.device_cosine.to_bits(), d.host_cosine.to_bits()),
            (c.device_cosine.to_bits(), c.host_cosine.to_bits())
        );
        assert_eq!((d.device_accepts, d.host_accepts, d.agrees()), (c.device_accepts, c.host_accepts, c.agrees));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let space = if b.bool() { DiffSpace::Unit } else { DiffSpace::Raw };
    let cfg = ConformanceConfig {
        threshold: b.threshold(),
        min_cosine: b.threshold(),
        max_abs_diff: b.f32(),
        max_disagreements: u64::from(b.u8() % 4),
        space,
    };
    let c_cfg = EfConformanceConfig {
        max_disagreements: cfg.max_disagreements,
        threshold: cfg.threshold,
        min_cosine: cfg.min_cosine,
        max_abs_diff: cfg.max_abs_diff,
        diff_space: if space == DiffSpace::Unit { EF_DIFF_UNIT } else { EF_DIFF_RAW },
    };
    let valid_config = cfg.validate().is_ok();
    let mut check = ConformanceCheck::new(cfg).ok();
    assert_eq!(check.is_some(), valid_config);
    let mut summary = ConformanceSummary::new();
    let mut c_sum = c_summary(&summary);

    let dim = b.below(40);
    let mut probes = 0u64;
    while !b.is_empty() && probes < 16 {
        let (device, host) = (Emb::read(&mut b, dim), Emb::read(&mut b, dim));
        let template = b.bool().then(|| Emb::read(&mut b, dim));
        let probe =
            Probe { device: device.as_ref(), host: host.as_ref(), template: template.as_ref().map(Emb::as_ref) };
        let result = cfg.compare(&probe);
        match &result {
            Ok(r) => {
                check_report(&cfg, r);
                summary.record(r);
            }
            Err(_) => summary.record_rejected(),
        }
        if let Some(check) = check.as_mut() {
            assert_eq!(check.check(&probe), result);
            assert_eq!(*check.summary(), summary);
        }

        // The C ABI: the same report, bit for bit, and the same summary.
        let (cd, ch) = (device.as_c(), host.as_c());
        let ct = template.as_ref().map(Emb::as_c);
        let mut report = EfProbeReport {
            cosine: 0.0,
            max_abs_diff: 0.0,
            device_cosine: 0.0,
            host_cosine: 0.0,
            within_tolerance: false,
            has_decision: false,
            device_accepts: false,
            host_accepts: false,
            agrees: false,
        };
        let tp = ct.as_ref().map_or(std::ptr::null(), |t| t as *const EfEmbedding);
        let s = unsafe { ef_conformance_check(&c_cfg, &mut c_sum, &cd, &ch, tp, &mut report) };
        match &result {
            Ok(r) => {
                assert_eq!(s, EfStatus::Ok);
                same_bits(r, &report);
            }
            Err(e) => assert_eq!(s, EfStatus::from(*e)),
        }
        let ConformanceSummary { probes: p, rejected, out_of_tolerance, decisions, disagreements, .. } = summary;
        assert_eq!((c_sum.probes, c_sum.rejected, c_sum.out_of_tolerance), (p, rejected, out_of_tolerance));
        assert_eq!((c_sum.decisions, c_sum.disagreements), (decisions, disagreements));
        assert_eq!(c_sum.worst_cosine.to_bits(), summary.worst_cosine.to_bits());
        assert_eq!(c_sum.worst_max_abs_diff.to_bits(), summary.worst_max_abs_diff.to_bits());
        probes += 1;
    }
    assert_eq!(summary.probes, probes);
    assert!(summary.rejected + summary.out_of_tolerance <= 2 * probes);
    assert!(summary.disagreements <= summary.decisions && summary.decisions <= probes);
    if valid_config {
        let passed = cfg.passed(&summary);
        assert_eq!(
            passed,
            probes > 0
                && summary.rejected == 0
                && summary.out_of_tolerance == 0
                && summary.disagreements <= cfg.max_disagreements
        );
    }
});
