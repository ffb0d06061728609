//! `margin_loss.safetensors`: the eight losses of the family (ArcFace, CosFace, ElasticFace-Arc/Cos, their Plus
//! forms with the paper's and the released code's assignment) run through the core's head, tensor by tensor.
//!
//! Each case of the manifest (`cases`: `name`, `kind`, `s`, `m`, `std`, `plus`, `B`, `D`, `C`) gives the loss; its
//! tensors `<name>.embeddings (B, D)`, `<name>.weight (D, C)`, `<name>.labels (B)` and `<name>.margins_raw (B)`
//! are the inputs, and `margins_assigned`, `cos`, `logits`, `loss`, `grad_embeddings` and `grad_weight` are
//! compared. The reference computes in `f64` from `f32` inputs and stores `f32`; the core computes in `f32`
//! (with `f64` only for the target logits and the log-sum-exp), so the tolerances below are those of `f32`
//! arithmetic, with the reason for each.

use anyhow::{anyhow, bail, Context, Result};
use elasticface_core::margin::{
    margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig, MarginKind, PlusAssignment,
};
use serde_json::Value;

use crate::reference::{Check, ReferenceFile, Tolerance};

/// The assigned margins are a permutation of the same `f32` values: nothing is computed, only ranked and moved.
const MARGINS: Tolerance = Tolerance::EXACT;

/// Cosines: a D-term `f32` dot product of unit vectors (each component rounded once by the normalisation).
/// The error bound is about `(D + 2) * 2^-24 ~ 1.1e-6` for D = 16; measured 6e-8. 5e-7 absolute leaves ~8x.
const COS: Tolerance = Tolerance::new(5e-7, 0.0);

/// Logits are `s * cos` with `s = 64`, so the cosine error is multiplied by 64 (the Arc target also by
/// `|d cos(theta + m) / d cos| <= ~2` for these inputs). Measured 3.8e-6 (about 60 ulp of a value of 64); 3e-5
/// absolute leaves ~8x.
const LOGITS: Tolerance = Tolerance::new(3e-5, 0.0);

/// The loss is a log-sum-exp of logits over C classes minus the target logit: its error is at most the largest
/// logit error (3.8e-6 measured for the logits) plus `f32` rounding of a value of a few tens. Measured 1.9e-6;
/// 2e-5 absolute (~10x).
const LOSS: Tolerance = Tolerance::new(2e-5, 0.0);

/// Gradients with respect to the raw embeddings: `s = 64` times softmax differences, through D- and C-term
/// `f32` sums and the normalisation backward (divided by norms of ~4). Measured 9e-9 absolute against values up to
/// ~0.1 (relative to the tensor's scale 1e-7); 1e-7 absolute plus 1e-5 relative leaves ~10x on the absolute part
/// alone.
const GRAD_EMB: Tolerance = Tolerance::new(1e-7, 1e-5);

/// Gradients with respect to the raw class centres: like [`GRAD_EMB`], but divided by the centres' norms of
/// ~0.04 (init N(0, 0.01)), so values and absolute errors are ~100x larger. Measured 1e-6 absolute against values
/// up to ~10; 1e-5 absolute plus 1e-5 relative (~10x).
const GRAD_W: Tolerance = Tolerance::new(1e-5, 1e-5);

/// One case of the manifest.
struct Case {
    name: String,
    cfg: MarginConfig,
    shape: HeadShape,
}

/// Reads the loss and the shape of a manifest case.
fn parse_case(v: &Value) -> Result<Case> {
    let name = v.get("name").and_then(Value::as_str).ok_or_else(|| anyhow!("case without a `name`"))?.to_string();
    let field = |key: &str| v.get(key).ok_or_else(|| anyhow!("case `{name}` has no `{key}`"));
    let number = |key: &str| field(key)?.as_f64().ok_or_else(|| anyhow!("case `{name}`: `{key}` is not a number"));
    let size = |key: &str| {
        let n = field(key)?.as_u64().ok_or_else(|| anyhow!("case `{name}`: `{key}` is not a size"))?;
        usize::try_from(n).with_context(|| format!("case `{name}`: `{key}` = {n} does not fit usize"))
    };
    let kind = match field("kind")?.as_str() {
        Some("arc") => MarginKind::Arc,
        Some("cos") => MarginKind::Cos,
        other => bail!("case `{name}`: unknown kind {other:?}"),
    };
    let plus = match field("plus")? {
        Value::Null => PlusAssignment::None,
        Value::String(s) if s == "paper" => PlusAssignment::Paper,
        Value::String(s) if s == "refcode" => PlusAssignment::ReleasedCode,
        other => bail!("case `{name}`: unknown plus {other}"),
    };
    let cfg = MarginConfig { kind, s: number("s")? as f32, m: number("m")? as f32, sigma: number("std")? as f32, plus };
    cfg.validate().map_err(|e| anyhow!("case `{name}`: {e}"))?;
    let shape = HeadShape::new(size("B")?, size("D")?, size("C")?);
    Ok(Case { name, cfg, shape })
}

/// The preset the reference names a case after: `elastic_arc_plus` is `elastic-arc-plus`, a `_refcode` suffix
/// means the released code's Plus assignment. `None` for names that are not presets.
fn preset_for(name: &str) -> Option<MarginConfig> {
    let (base, plus) = match name.strip_suffix("_refcode") {
        Some(base) => (base, Some(PlusAssignment::ReleasedCode)),
        None => (name, None),
    };
    let cfg = MarginConfig::preset(&base.replace('_', "-"))?;
    Some(plus.map_or(cfg, |p| cfg.with_plus(p)))
}

/// Runs one case through the head and compares every tensor.
fn run_case(file: &ReferenceFile, case: &Case) -> Result<Vec<Check>> {
    let (name, cfg, shape) = (&case.name, &case.cfg, &case.shape);
    let key = |t: &str| format!("{name}.{t}");
    let emb = file.f32(&key("embeddings"))?;
    let w = file.f32(&key("weight"))?;
    let labels = file.labels(&key("labels"))?;
    let margins_raw = file.f32(&key("margins_raw"))?;

    let mut checks = Vec::new();
    if let Some(preset) = preset_for(name) {
        checks.push(if preset == *cfg {
            Check::exact(key("config"), 1.0, 1.0)
        } else {
            Check::failed(key("config"), format!("the manifest describes {cfg}, the preset of that name is {preset}"))
        });
    }

    let mut arena = vec![0.0f32; shape.scratch_len()];
    let mut order = vec![0u32; shape.batch];
    let mut scratch = HeadScratch::from_arena(shape, &mut arena, &mut order).map_err(|e| anyhow!("scratch: {e}"))?;
    let loss = margin_loss_forward(cfg, shape, emb, w, &labels, margins_raw, &mut scratch)
        .map_err(|e| anyhow!("margin_loss_forward: {e}"))?;
    checks.push(Check::compare(key("margins_assigned"), scratch.margins, file.f32(&key("margins_assigned"))?, MARGINS));
    checks.push(Check::compare(key("cos"), scratch.cos, file.f32(&key("cos"))?, COS));
    checks.push(Check::compare(key("logits"), scratch.logits, file.f32(&key("logits"))?, LOGITS));
    checks.push(Check::compare(key("loss"), &[loss], &[file.scalar(&key("loss"))?], LOSS));

    let mut d_emb = vec![0.0f32; shape.emb_len()];
    let mut d_w = vec![0.0f32; shape.weight_len()];
    margin_loss_backward(cfg, shape, &labels, &mut scratch, &mut d_emb, &mut d_w)
        .map_err(|e| anyhow!("margin_loss_backward: {e}"))?;
    checks.push(Check::compare(key("grad_embeddings"), &d_emb, file.f32(&key("grad_embeddings"))?, GRAD_EMB));
    checks.push(Check::compare(key("grad_weight"), &d_w, file.f32(&key("grad_weight"))?, GRAD_W));
    Ok(checks)
}

/// Runs the file through the core and compares every tensor: per case the preset's parameters (when the case is
/// named after a preset), the assigned margins, cosines, logits, loss and both gradients. Problems (a missing
/// tensor, an error from the core) become failed checks.
pub fn check_cpu(file: &ReferenceFile) -> Vec<Check> {
    let Some(cases) = file.meta.get("cases").and_then(Value::as_array) else {
        return vec![Check::failed("margin_loss", "the manifest has no `cases` list")];
    };
    if cases.is_empty() {
        return vec![Check::failed("margin_loss", "the manifest lists no cases")];
    }
    let mut checks = Vec::new();
    for (i, v) in cases.iter().enumerate() {
        match parse_case(v) {
            Ok(case) => match run_case(file, &case) {
                Ok(c) => checks.extend(c),
                Err(e) => checks.push(Check::failed(case.name, format!("{e:#}"))),
            },
            Err(e) => checks.push(Check::failed(format!("case {i}"), format!("{e:#}"))),
        }
    }
    checks
}
