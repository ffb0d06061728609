//! `margin_loss.safetensors`: the eight losses of the family (ArcFace, CosFace, ElasticFace-Arc/Cos, their Plus
//! forms with the paper's and the released code's assignment) run through the core's head, tensor by tensor.
//!
//! Each case of the manifest (`cases`: `name`, `kind`, `s`, `m`, `std`, `plus`, `B`, `D`, `C`) gives the loss; its
//! tensors `<name>.embeddings (B, D)`, `<name>.weight (D, C)`, `<name>.labels (B)` and `<name>.margins_raw (B)`
//! are the inputs, and `margins_assigned`, `cos`, `logits`, `loss`, `grad_embeddings` and `grad_weight` are
//! compared. The reference computes in `f64` autograd from `f32` inputs and stores the results rounded to `f32`;
//! the core computes in `f32` (with `f64` only for the target logits, the log-sum-exp and the softmax), so the
//! tolerances below are those of `f32` arithmetic, each with its reason and the error measured on the bundled
//! file. A case named after a preset (`elastic_arc_plus`, `..._refcode`) also checks that the manifest's
//! parameters are the preset's.

use anyhow::{anyhow, bail, Context, Result};
use elasticface_core::margin::{
    margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig, MarginKind, PlusAssignment,
};
use serde_json::Value;

use crate::gpu::kernels::margin::{
    download_head_weight, upload_head_weight, HeadOptions, MarginHead, MarginLoss, ROW_STATS,
};
use crate::gpu::kernels::Dispatch;
use crate::gpu::Gpu;
use crate::reference::{Check, Tolerance};
use crate::tensorfile::TensorFile;

// Tolerances. The bundled file has B = 12, D = 16, C = 53 and s = 64 in every case. "Measured" is the largest
// error over its eight cases (CPU reference, x86-64); `u = 2^-24` is the f32 unit roundoff. Gradient errors come from
// cancellation in f32 sums over C and D and in the normalisation's projection `dy - y <y, dy>`: they scale with the
// tensor's largest entries, not with each element, so those tolerances are absolute.

/// The assigned margins are a permutation of the same `f32` values: nothing is computed, only ranked and moved.
/// Measured: exact in all eight cases.
const MARGINS: Tolerance = Tolerance::EXACT;

/// Cosines: a D-term `f32` dot product of unit vectors, each component rounded by the normalisation. The
/// first-order worst-case bound is about `D u = 9.5e-7` for D = 16. Measured 1.19e-7 (2 ulp below 1) in every case;
/// 1e-6 is ~8x that.
const COS: Tolerance = Tolerance::new(1e-6, 0.0);

/// Logits are `s * cos` with `s = 64`, so the cosine error is multiplied by 64; the Arc target's is further
/// multiplied by `sin(theta + m) / sin(theta)` (up to ~1.4 for these cosines). Measured 7.6e-6 (`64 * 1.19e-7`,
/// 2 ulp of values of 32..64), 9.5e-6 for elastic_arc_plus. `s` times the cosine tolerance, 6.4e-5, is ~7x that.
const LOGITS: Tolerance = Tolerance::new(6.4e-5, 0.0);

/// The loss: a softmax-weighted mean of logit errors plus the target logit's, so at most about twice the logits'
/// error; the log-sum-exp itself is `f64`, rounded once to a loss of 44..61 (ulp 3.8e-6). Measured 0 in six
/// cases, 3.8e-6 (1 ulp) in two; 2e-5 (~5 ulp) is ~5x.
const LOSS: Tolerance = Tolerance::new(2e-5, 0.0);

/// Gradient with respect to the raw embeddings (entries up to 1.1..1.7): `s = 64` times softmax differences summed
/// over C = 53 classes and D = 16 dimensions in f32, then divided by the embedding norm. Measured 7.9e-7
/// (elastic_cos_plus_refcode), 2.5e-7..5.8e-7 of the largest entry across cases, i.e. 4..10 ulp of it; 4e-6 is ~5x.
const GRAD_EMB: Tolerance = Tolerance::new(4e-6, 0.0);

/// Gradient with respect to the raw class centres (entries up to 93..125, as the centres' norms are ~0.04 with the
/// N(0, 0.01) init): the same sums over B = 12 samples, divided by the centre norms. Measured 7.2e-5 (cosface),
/// 2.0e-7..5.8e-7 of the largest entry, the same 4..10 ulp as the embeddings' gradient; 4e-4 is ~5.5x.
const GRAD_W: Tolerance = Tolerance::new(4e-4, 0.0);

// The GPU head (`check_gpu`; measured on lavapipe over the eight cases). Its cosines are products of unit vectors
// rounded differently from the core's (the normalisation sums in another order) and its log-sum-exp and softmax are
// f32 where the core's are f64. The assigned margins, cosines, logits and loss keep the CPU bounds: measured exact,
// 1.19e-7, 9.5e-6 and 3.8e-6, as the core. The gradients carry the f32 softmax: each probability's relative error
// grows from ~u to ~s u (the logits are s = 64 times the cosines), summed over C = 53 classes or B = 12 samples.

/// The GPU's loss: as the core's (measured 3.8e-6, 1 ulp).
const GPU_LOSS: Tolerance = LOSS;

/// The GPU's gradient with respect to the embeddings (entries up to 1.1..1.7). Measured 1.96e-6 (the core: 7.9e-7),
/// 1.5e-6 of the largest entry; 1e-5 is ~5x.
const GPU_GRAD_EMB: Tolerance = Tolerance::new(1e-5, 0.0);

/// The GPU's gradient with respect to the class centres (entries up to 93..125). Measured 1.71e-4 (the core:
/// 7.2e-5), 1.5e-6 of the largest entry; 1e-3 is ~6x.
const GPU_GRAD_W: Tolerance = Tolerance::new(1e-3, 0.0);

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

/// A case named after a preset must describe the preset: its check, if it is named after one.
fn config_check(case: &Case) -> Option<Check> {
    let (name, cfg) = (&case.name, &case.cfg);
    let preset = preset_for(name)?;
    let key = format!("{name}.config");
    Some(if preset == *cfg {
        Check::exact(key, 1.0, 1.0)
    } else {
        Check::failed(key, format!("the manifest describes {cfg}, the preset of that name is {preset}"))
    })
}

/// Runs one case through the head and compares every tensor.
fn run_case(file: &TensorFile, case: &Case) -> Result<Vec<Check>> {
    let (name, cfg, shape) = (&case.name, &case.cfg, &case.shape);
    let key = |t: &str| format!("{name}.{t}");
    let emb = file.f32(&key("embeddings"))?;
    let w = file.f32(&key("weight"))?;
    let labels = file.labels(&key("labels"))?;
    let margins_raw = file.f32(&key("margins_raw"))?;

    let mut checks: Vec<Check> = config_check(case).into_iter().collect();
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

/// Runs one case through the GPU head ([`MarginHead`]) and compares what it keeps: the assigned margins, the
/// target cosines and target logits (the GPU head is fused over the classes and never stores the full `(B, C)`
/// cosines or logits), the loss and both gradients.
fn run_case_gpu(file: &TensorFile, case: &Case, gpu: &Gpu, k: &MarginLoss) -> Result<Vec<Check>> {
    let (name, cfg, shape) = (&case.name, &case.cfg, case.shape);
    let HeadShape { batch: b, dim: d, classes: c } = shape;
    let key = |t: &str| format!("{name}.{t}");
    let emb = file.f32(&key("embeddings"))?;
    let w = file.f32(&key("weight"))?;
    let labels = file.labels(&key("labels"))?;
    let margins_raw = file.f32(&key("margins_raw"))?;
    if emb.len() != b * d || labels.len() != b {
        bail!("case `{name}`: embeddings or labels do not match B = {b}, D = {d}");
    }

    let emb_t = gpu.upload("embeddings", &[b, d], emb);
    let w_t = upload_head_weight(gpu, "head.weight", d, c, w)?;
    let d_emb = gpu.zeros("grad.embeddings", &[b, d]);
    let d_w = gpu.zeros_split_like("grad.head.weight", &w_t, d)?;
    let head = MarginHead::new(gpu, k, cfg, shape, &emb_t, &w_t, &d_emb, &d_w, &HeadOptions::default())?;
    head.write_step(gpu, &labels, margins_raw)?;
    let all: Vec<&Dispatch> = head.forward().iter().chain(head.backward()).collect();
    gpu.run(&all)?;

    // The reference's (B, C) cosines and logits at each sample's own class.
    let targets = |t: &[f32]| -> Result<Vec<f32>> {
        if t.len() != b * c {
            bail!("case `{name}`: a (B, C) tensor has {} elements", t.len());
        }
        Ok(labels.iter().enumerate().map(|(i, &y)| t[i * c + y as usize]).collect())
    };
    let row_stats = gpu.read::<f32>(&head.row_stats)?;
    let target_logits: Vec<f32> = row_stats.chunks_exact(ROW_STATS).map(|r| r[1]).collect();
    let mut checks: Vec<Check> = config_check(case).into_iter().collect();
    let margins = gpu.read::<f32>(&head.margins)?;
    checks.push(Check::compare(key("margins_assigned"), &margins[..b], file.f32(&key("margins_assigned"))?, MARGINS));
    let cos_y = gpu.read::<f32>(&head.cos_y)?;
    checks.push(Check::compare(key("cos (targets)"), &cos_y, &targets(file.f32(&key("cos"))?)?, COS));
    let want = targets(file.f32(&key("logits"))?)?;
    checks.push(Check::compare(key("logits (targets)"), &target_logits, &want, LOGITS));
    let loss = head.read_loss(gpu)?;
    checks.push(Check::compare(key("loss"), &[loss], &[file.scalar(&key("loss"))?], GPU_LOSS));
    let d_emb = gpu.read::<f32>(&d_emb)?;
    checks.push(Check::compare(key("grad_embeddings"), &d_emb, file.f32(&key("grad_embeddings"))?, GPU_GRAD_EMB));
    let d_w = download_head_weight(gpu, &d_w)?;
    checks.push(Check::compare(key("grad_weight"), &d_w, file.f32(&key("grad_weight"))?, GPU_GRAD_W));
    Ok(checks)
}

/// The manifest's cases, or the check that says why there are none.
fn cases(file: &TensorFile) -> Result<&[Value], Check> {
    match file.meta.get("cases").and_then(Value::as_array) {
        None => Err(Check::failed("margin_loss", "the manifest has no `cases` list")),
        Some(cases) if cases.is_empty() => Err(Check::failed("margin_loss", "the manifest lists no cases")),
        Some(cases) => Ok(cases),
    }
}

/// Every case through `run` (the CPU's or the GPU's), problems as failed checks.
fn check_cases(file: &TensorFile, run: impl Fn(&Case) -> Result<Vec<Check>>) -> Vec<Check> {
    let cases = match cases(file) {
        Ok(cases) => cases,
        Err(check) => return vec![check],
    };
    let mut checks = Vec::new();
    for (i, v) in cases.iter().enumerate() {
        match parse_case(v) {
            Ok(case) => match run(&case) {
                Ok(c) => checks.extend(c),
                Err(e) => checks.push(Check::failed(case.name, format!("{e:#}"))),
            },
            Err(e) => checks.push(Check::failed(format!("case {i}"), format!("{e:#}"))),
        }
    }
    checks
}

/// Runs the file through the core and compares every tensor: per case the preset's parameters (when the case is
/// named after a preset), the assigned margins, cosines, logits, loss and both gradients. Problems (a missing
/// tensor, an error from the core) become failed checks.
pub fn check_cpu(file: &TensorFile) -> Vec<Check> {
    check_cases(file, |case| run_case(file, case))
}

/// Runs the file through the GPU head (`shaders/margin_loss.wgsl`), every case: the preset's parameters, the
/// assigned margins, the target cosines and logits, the loss and both gradients.
pub fn check_gpu(file: &TensorFile, gpu: &Gpu) -> Vec<Check> {
    let k = MarginLoss::new(gpu);
    check_cases(file, |case| run_case_gpu(file, case, gpu, &k))
}
