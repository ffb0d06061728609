//! The margin-penalty softmax family: ArcFace, CosFace, ElasticFace-Arc/Cos and their Plus forms.
//!
//! # The loss
//!
//! Shapes: `B` batch, `D` embedding size, `C` classes. For raw embeddings `emb (B, D)` and raw class centres
//! `w (D, C)` (one centre per column):
//!
//! ```text
//! emb_unit = emb / ||emb||   per row                    (B, D)
//! w_unit   = w / ||w||       per column                 (D, C)
//! cos      = clamp(emb_unit @ w_unit, -1, 1)            (B, C)
//! logits[b, c] = s * cos[b, c]                          for c != y_b
//! logits[b, y_b] = s * cos(acos(cos[b, y_b]) + m_b)     Arc (ArcFace, ElasticFace-Arc)
//!                = s * (cos[b, y_b] - m_b)              Cos (CosFace, ElasticFace-Cos)
//! loss = mean_b ( logsumexp_c logits[b, c] - logits[b, y_b] )
//! ```
//!
//! ArcFace and CosFace use `m_b = m` for every sample. ElasticFace draws a fresh `m_b ~ N(m, sigma^2)` per
//! sample at every step ([`MarginConfig::draw_margins`], reproducibly from a seed and the step with
//! [`MarginConfig::draw_margins_at`]); margins are not clamped. The Arc form keeps the exact calculus through
//! `acos` (no "easy margin", no `theta + m > pi` fix, no straight-through trick), as the reference code does.
//!
//! # Plus variants
//!
//! ElasticFace-Arc+ and -Cos+ hand the drawn margins out by how close each sample is to its class centre
//! ([`assign_plus`]). Both semantics rank the samples by `cos_y` descending (ties by sample index ascending,
//! like a stable sort) into `order`, and sort the margins ascending into `sorted`:
//!
//! - [`PlusAssignment::Paper`]: sample `order[k]` gets `sorted[k]`: the sample with the k-th largest `cos_y` gets
//!   the k-th smallest margin, so samples far from their centre get the larger margins (the paper's intent).
//! - [`PlusAssignment::ReleasedCode`]: sample `i` gets `sorted[order[i]]`, which is what the released code's
//!   indexing computes. It applies the permutation instead of its inverse, so the margins end up essentially
//!   unordered with respect to `cos_y`. Offered only to reproduce published numbers.
//!
//! The assignment is piecewise constant in the inputs: the backward pass treats the assigned margins as
//! constants, as autograd does in the reference.
//!
//! # Backward
//!
//! `dlogits = (softmax(logits) - onehot(y)) / B`; `dcos = s * dlogits` except at the target, where Cos has
//! `d logit_y / d cos_y = s` and Arc has
//!
//! ```text
//! d/dc [s cos(acos(c) + m)] = s sin(acos(c) + m) / sqrt(1 - c^2)
//! ```
//!
//! The denominator `sin(theta) = sqrt(1 - c^2)` is floored at [`ARC_SIN_THETA_FLOOR`] (`1e-4`). The floor only
//! acts when `cos_y` is exactly `+-1`: an `f32` below 1 in magnitude is at most `1 - 2^-24`, where
//! `sqrt((1 - c)(1 + c)) >= sqrt(2^-24 (2 - 2^-24)) ~ 3.45e-4 > 1e-4`. At `|c| = 1` the exact derivative is
//! infinite (PyTorch returns `inf`, then NaN); the floor makes it a large finite number instead, and when the
//! clamp was active (the raw product exceeded 1) the clamp's zero gradient removes it anyway.
//!
//! The clamp passes the gradient where `-1 <= raw <= 1`, like `torch.clamp`. A clamped entry is stored as
//! exactly `+-1`, so the backward pass recomputes the raw product `emb_unit[b] . w_unit[:, c]` for those entries
//! only (rare), with the same `f32` operations in the same order as the forward pass, so bit for bit the same
//! value: no mask has to be stored. Then `d emb_unit = dcos @ w_unit^T`, `d w_unit = emb_unit^T @ dcos`, and
//! the L2 normalisation backward gives the gradients of the raw inputs.
//!
//! # Precision
//!
//! Products and sums over `D` and `B` are `f32` (the GPU twins do the same). The target logit and its derivative
//! (`B` values) and the log-sum-exp over `C` are computed in `f64` from the `f32` inputs and rounded once.
//!
//! The margins (and everything here) are the same bits on every target whose `f64` arithmetic is IEEE binary64,
//! with `libm`'s software functions and no fused multiply-add. The exception is x86 without SSE2 (`i586`, `i686`
//! built without it): `f64` runs on the x87 unit in extended precision and `libm` swaps in an x87 `exp`, so the
//! results there may differ in the last bits.
//!
//! # Errors
//!
//! Every function checks its slice lengths ([`Error::Length`] naming the argument), labels ([`Error::Label`]),
//! finiteness ([`Error::NonFinite`]), zero vectors ([`Error::ZeroNorm`]) and the configuration
//! ([`Error::Config`]) and never panics. A result that would overflow (logits beyond `f32`, say with an absurd
//! scale) is an [`Error::NonFinite`] naming the result, never a silent NaN.

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

use rand_core::RngCore;

use crate::error::{check_finite, check_labels, check_len, Error};
use crate::nn::{check_norms, l2_normalize_backward, l2_normalize_forward, VectorLayout};
use crate::rng::{standard_normal, Philox4x32, STANDARD_NORMAL_BOUND};

/// Floor of `sin(theta_y) = sqrt(1 - cos_y^2)` in the Arc derivative. It changes nothing unless `cos_y` is exactly
/// `+-1` in `f32` (every other `f32` cosine has `sin(theta) >= 3.45e-4`); see the module documentation.
pub const ARC_SIN_THETA_FLOOR: f32 = 1e-4;

/// Largest batch the head accepts: sample indices are `u32` and [`assign_plus`] borrows their top bit. `2^31`
/// (`usize::MAX` where `usize` is narrower than 32 bits).
pub const MAX_BATCH: usize = if usize::BITS >= 32 { (1u32 << 31) as usize } else { usize::MAX };

/// Which penalty the target logit gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginKind {
    /// Additive angular margin: `s * cos(theta_y + m)`.
    Arc,
    /// Additive cosine margin: `s * (cos_y - m)`.
    Cos,
}

impl MarginKind {
    /// `"arc"` or `"cos"`.
    pub const fn name(self) -> &'static str {
        match self {
            MarginKind::Arc => "arc",
            MarginKind::Cos => "cos",
        }
    }
}

impl fmt::Display for MarginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MarginKind {
    type Err = Error;

    /// `arc` or `cos`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "arc" => Ok(MarginKind::Arc),
            "cos" => Ok(MarginKind::Cos),
            _ => Err(Error::Config { what: "unknown margin kind; expected `arc` or `cos`" }),
        }
    }
}

/// How the Plus variants hand the sorted margins to the samples (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlusAssignment {
    /// Not a Plus variant: sample `i` keeps margin `i`.
    None,
    /// The paper: the sample with the k-th largest `cos_y` gets the k-th smallest margin.
    Paper,
    /// The released code: sample `i` gets `sorted_margins[argsort_desc(cos_y)[i]]`.
    ReleasedCode,
}

impl PlusAssignment {
    /// `"none"`, `"paper"` or `"released-code"`.
    pub const fn name(self) -> &'static str {
        match self {
            PlusAssignment::None => "none",
            PlusAssignment::Paper => "paper",
            PlusAssignment::ReleasedCode => "released-code",
        }
    }
}

impl fmt::Display for PlusAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PlusAssignment {
    type Err = Error;

    /// `none`, `paper` or `released-code`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "none" => Ok(PlusAssignment::None),
            "paper" => Ok(PlusAssignment::Paper),
            "released-code" => Ok(PlusAssignment::ReleasedCode),
            _ => Err(Error::Config { what: "unknown Plus assignment; expected `none`, `paper` or `released-code`" }),
        }
    }
}

/// A loss of the family.
///
/// Presets: [`MarginConfig::PRESETS`], by name with [`MarginConfig::preset`] or [`str::parse`]. The text form
/// ([`fmt::Display`], [`FromStr`]) is a preset name (`elastic-arc-plus`), a preset with another Plus assignment
/// (`elastic-arc-plus (plus=released-code)`), or every field (`arc(s=64, m=0.5, sigma=0.05, plus=none)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarginConfig {
    /// Arc or Cos.
    pub kind: MarginKind,
    /// Scale `s` of the logits.
    pub s: f32,
    /// Mean margin `m`.
    pub m: f32,
    /// Standard deviation of the margin; 0 for ArcFace and CosFace.
    pub sigma: f32,
    /// Plus assignment.
    pub plus: PlusAssignment,
}

/// Error of [`MarginConfig::from_str`] for a text that is none of the accepted forms.
const UNKNOWN_LOSS: Error = Error::Config {
    what: "unknown margin loss; expected arcface, cosface, elastic-arc, elastic-cos, elastic-arc-plus or \
           elastic-cos-plus, optionally followed by ` (plus=none|paper|released-code)`, or all fields as in \
           `arc(s=64, m=0.5, sigma=0.05, plus=none)` or `cos(...)`",
};

/// Error of [`MarginConfig::from_str`] for a malformed field list.
const BAD_FIELDS: Error = Error::Config {
    what: "`arc(...)`/`cos(...)` takes `s=`, `m=`, `sigma=` and `plus=`, comma-separated, each at most once; \
           `s` and `m` are required, `sigma` defaults to 0 and `plus` to none",
};

impl MarginConfig {
    /// ArcFace: Arc, `s = 64`, `m = 0.5`.
    pub const ARCFACE: Self = Self { kind: MarginKind::Arc, s: 64.0, m: 0.5, sigma: 0.0, plus: PlusAssignment::None };
    /// CosFace: Cos, `s = 64`, `m = 0.35`.
    pub const COSFACE: Self = Self { kind: MarginKind::Cos, s: 64.0, m: 0.35, sigma: 0.0, plus: PlusAssignment::None };
    /// ElasticFace-Arc: Arc, `s = 64`, `m_i ~ N(0.5, 0.05^2)`.
    pub const ELASTIC_ARC: Self =
        Self { kind: MarginKind::Arc, s: 64.0, m: 0.5, sigma: 0.05, plus: PlusAssignment::None };
    /// ElasticFace-Cos: Cos, `s = 64`, `m_i ~ N(0.35, 0.05^2)`.
    pub const ELASTIC_COS: Self =
        Self { kind: MarginKind::Cos, s: 64.0, m: 0.35, sigma: 0.05, plus: PlusAssignment::None };
    /// ElasticFace-Arc+: Arc, `s = 64`, `m_i ~ N(0.5, 0.0175^2)`, paper assignment.
    pub const ELASTIC_ARC_PLUS: Self =
        Self { kind: MarginKind::Arc, s: 64.0, m: 0.5, sigma: 0.0175, plus: PlusAssignment::Paper };
    /// ElasticFace-Cos+: Cos, `s = 64`, `m_i ~ N(0.35, 0.02^2)`, paper assignment. `sigma` is the released
    /// configuration's 0.02; the paper's text says 0.025.
    pub const ELASTIC_COS_PLUS: Self =
        Self { kind: MarginKind::Cos, s: 64.0, m: 0.35, sigma: 0.02, plus: PlusAssignment::Paper };

    /// Every preset with its name.
    pub const PRESETS: [(&'static str, Self); 6] = [
        ("arcface", Self::ARCFACE),
        ("cosface", Self::COSFACE),
        ("elastic-arc", Self::ELASTIC_ARC),
        ("elastic-cos", Self::ELASTIC_COS),
        ("elastic-arc-plus", Self::ELASTIC_ARC_PLUS),
        ("elastic-cos-plus", Self::ELASTIC_COS_PLUS),
    ];

    /// The preset called `name` (one of [`MarginConfig::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        Self::PRESETS.iter().find(|(n, _)| *n == name).map(|&(_, cfg)| cfg)
    }

    /// The name of the preset equal to `self`, if any.
    pub fn preset_name(&self) -> Option<&'static str> {
        Self::PRESETS.iter().find(|(_, cfg)| cfg == self).map(|&(n, _)| n)
    }

    /// The same loss with another Plus assignment.
    pub const fn with_plus(self, plus: PlusAssignment) -> Self {
        Self { plus, ..self }
    }

    /// Checks the domain: `s` finite and positive, `m` finite, `sigma` finite and non-negative, and
    /// `|m| + 8.58 sigma <= f32::MAX` (in `f64`), so that every margin drawn is finite: [`standard_normal`] stays
    /// below 8.58 in magnitude, so `m + sigma * z` does too, and rounds to a finite `f32`.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.s.is_finite() && self.s > 0.0) {
            return Err(Error::Config { what: "margin scale `s` must be finite and positive" });
        }
        if !self.m.is_finite() {
            return Err(Error::Config { what: "margin `m` must be finite" });
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(Error::Config { what: "margin standard deviation `sigma` must be finite and non-negative" });
        }
        // f64 keeps this exact enough: rounding is monotone, so |m + sigma z| as computed never exceeds it.
        if f64::from(self.m).abs() + STANDARD_NORMAL_BOUND * f64::from(self.sigma) > f64::from(f32::MAX) {
            return Err(Error::Config { what: "margins m +- 8.58 sigma must fit f32" });
        }
        Ok(())
    }

    /// One margin per element of `out`: `out[i] = (m + sigma * z_i) as f32`, computed in `f64`, with `z_i` the
    /// `i`-th [`standard_normal`] drawn from `rng`. Finite for every configuration [`MarginConfig::validate`]
    /// accepts.
    ///
    /// A normal is drawn for every sample even when `sigma == 0` (the margin is then exactly `m`), so the stream
    /// position after a step does not depend on the loss.
    pub fn draw_margins(&self, rng: &mut impl RngCore, out: &mut [f32]) {
        let (m, sigma) = (f64::from(self.m), f64::from(self.sigma));
        for o in out.iter_mut() {
            *o = (m + sigma * standard_normal(rng)) as f32;
        }
    }

    /// The margins of training step `step`: [`MarginConfig::draw_margins`] on `Philox4x32::new(seed, step)`.
    /// Margin `i` is also [`MarginConfig::margin_at`]`(seed, step, i)`.
    ///
    /// Streams `0..steps` of a training seed thus belong to the margins: draw anything else from that seed (the
    /// initial weights, say) from other streams, such as `u64::MAX`, which the host initialises the weights from.
    pub fn draw_margins_at(&self, seed: u64, step: u64, out: &mut [f32]) {
        self.draw_margins(&mut Philox4x32::new(seed, step), out);
    }

    /// Margin `i` of training step `step`, computed directly (what a GPU thread computes for sample `i`).
    pub fn margin_at(&self, seed: u64, step: u64, i: u64) -> f32 {
        (f64::from(self.m) + f64::from(self.sigma) * Philox4x32::normal_at(seed, step, i)) as f32
    }

    /// The target logit for `cos_y` in `[-1, 1]` and the sample's margin: Arc `s * cos(acos(cos_y) + margin)`,
    /// Cos `s * (cos_y - margin)`; computed in `f64`, rounded once.
    pub fn target_logit(&self, cos_y: f32, margin: f32) -> f32 {
        let (s, c, m) = (f64::from(self.s), f64::from(cos_y), f64::from(margin));
        let v = match self.kind {
            MarginKind::Arc => s * libm::cos(libm::acos(c) + m),
            MarginKind::Cos => s * (c - m),
        };
        v as f32
    }

    /// `d target_logit / d cos_y`: Arc `s * sin(acos(cos_y) + margin) / max(sqrt(1 - cos_y^2),`
    /// [`ARC_SIN_THETA_FLOOR`]`)`, Cos `s`; computed in `f64`, rounded once.
    pub fn target_logit_derivative(&self, cos_y: f32, margin: f32) -> f32 {
        let (s, c, m) = (f64::from(self.s), f64::from(cos_y), f64::from(margin));
        let v = match self.kind {
            MarginKind::Arc => {
                let sin_theta = libm::sqrt((1.0 - c) * (1.0 + c));
                s * libm::sin(libm::acos(c) + m) / libm::fmax(sin_theta, f64::from(ARC_SIN_THETA_FLOOR))
            }
            MarginKind::Cos => s,
        };
        v as f32
    }

    /// Parses the field list of `arc(...)` / `cos(...)`.
    fn parse_fields(kind: MarginKind, body: &str) -> Result<Self, Error> {
        let (mut s, mut m, mut sigma, mut plus) = (None, None, None, None);
        for field in body.split(',') {
            let (key, value) = field.split_once('=').ok_or(BAD_FIELDS)?;
            let value = value.trim();
            let number = || {
                value
                    .parse::<f32>()
                    .map_err(|_| Error::Config { what: "a number in `arc(...)`/`cos(...)` does not parse" })
            };
            let slot_was_empty = match key.trim() {
                "s" => s.replace(number()?).is_none(),
                "m" => m.replace(number()?).is_none(),
                "sigma" => sigma.replace(number()?).is_none(),
                "plus" => plus.replace(value.parse::<PlusAssignment>()?).is_none(),
                _ => return Err(BAD_FIELDS),
            };
            if !slot_was_empty {
                return Err(BAD_FIELDS);
            }
        }
        match (s, m) {
            (Some(s), Some(m)) => {
                Ok(Self { kind, s, m, sigma: sigma.unwrap_or(0.0), plus: plus.unwrap_or(PlusAssignment::None) })
            }
            _ => Err(BAD_FIELDS),
        }
    }
}

impl fmt::Display for MarginConfig {
    /// The preset name when `self` is a preset; `preset (plus=...)` when it is a preset but for the Plus
    /// assignment; otherwise every field, `kind(s=.., m=.., sigma=.., plus=..)`. Numbers are printed in the
    /// shortest form that parses back to the same `f32`, so [`FromStr`] inverts this exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.preset_name() {
            return f.write_str(name);
        }
        if let Some((name, _)) = Self::PRESETS.iter().find(|(_, cfg)| cfg.with_plus(self.plus) == *self) {
            return write!(f, "{name} (plus={})", self.plus);
        }
        write!(f, "{}(s={}, m={}, sigma={}, plus={})", self.kind, self.s, self.m, self.sigma, self.plus)
    }
}

impl FromStr for MarginConfig {
    type Err = Error;

    /// Accepts the forms [`fmt::Display`] writes: `elastic-cos-plus`, `elastic-cos-plus (plus=released-code)`,
    /// `cos(s=64, m=0.35, sigma=0.02, plus=paper)` (any field order; `sigma` defaults to 0, `plus` to `none`).
    /// The result is [validated](MarginConfig::validate).
    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let cfg = if let Some(cfg) = Self::preset(text) {
            cfg
        } else {
            let (head, tail) = text.split_once('(').ok_or(UNKNOWN_LOSS)?;
            let body = tail.trim_end().strip_suffix(')').ok_or(UNKNOWN_LOSS)?;
            let head = head.trim();
            if let Some(base) = Self::preset(head) {
                let (key, value) = body.split_once('=').ok_or(UNKNOWN_LOSS)?;
                if key.trim() != "plus" {
                    return Err(UNKNOWN_LOSS);
                }
                base.with_plus(value.parse()?)
            } else {
                let kind = match head {
                    "arc" => MarginKind::Arc,
                    "cos" => MarginKind::Cos,
                    _ => return Err(UNKNOWN_LOSS),
                };
                Self::parse_fields(kind, body)?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Sizes of the margin head: `B` samples, `D`-dimensional embeddings, `C` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    /// Batch size B.
    pub batch: usize,
    /// Embedding size D.
    pub dim: usize,
    /// Number of classes C.
    pub classes: usize,
}

impl HeadShape {
    /// `B` samples of `D` elements, `C` classes.
    pub const fn new(batch: usize, dim: usize, classes: usize) -> Self {
        Self { batch, dim, classes }
    }

    /// Checks that every size is at least 1, `B <= `[`MAX_BATCH`], and every buffer length fits `usize`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch == 0 || self.dim == 0 || self.classes == 0 {
            return Err(Error::Shape { what: "the head needs at least one sample, one dimension and one class" });
        }
        if self.batch > MAX_BATCH {
            return Err(Error::Shape { what: "the head takes at most 2^31 samples per batch" });
        }
        let fits = self
            .batch
            .checked_mul(self.dim)
            .and(self.dim.checked_mul(self.classes))
            .and(self.batch.checked_mul(self.classes))
            .and(self.checked_scratch_len());
        match fits {
            Some(_) => Ok(()),
            None => Err(Error::Shape { what: "head buffer sizes overflow usize" }),
        }
    }

    /// Elements of `emb (B, D)`.
    pub const fn emb_len(&self) -> usize {
        self.batch.saturating_mul(self.dim)
    }

    /// Elements of `w (D, C)`.
    pub const fn weight_len(&self) -> usize {
        self.dim.saturating_mul(self.classes)
    }

    /// Elements of `cos` and `logits (B, C)`.
    pub const fn logits_len(&self) -> usize {
        self.batch.saturating_mul(self.classes)
    }

    /// `f32` elements of a [`HeadScratch`] in one arena ([`HeadScratch::from_arena`]):
    /// `B*D + B + D*C + C + 2*B*C + B`.
    pub fn scratch_len(&self) -> usize {
        self.checked_scratch_len().unwrap_or(usize::MAX)
    }

    fn checked_scratch_len(&self) -> Option<usize> {
        let (b, d, c) = (self.batch, self.dim, self.classes);
        b.checked_mul(d)?
            .checked_add(b)?
            .checked_add(d.checked_mul(c)?)?
            .checked_add(c)?
            .checked_add(b.checked_mul(c)?.checked_mul(2)?)?
            .checked_add(b)
    }
}

/// Caller-provided memory of the head, written by [`margin_loss_forward`] and read by
/// [`margin_loss_backward`]. Sizes: see each field.
pub struct HeadScratch<'a> {
    /// `(B, D)` normalised embeddings.
    pub emb_unit: &'a mut [f32],
    /// `(B)` embedding norms.
    pub emb_norm: &'a mut [f32],
    /// `(D, C)` normalised class centres.
    pub w_unit: &'a mut [f32],
    /// `(C)` class-centre norms.
    pub w_norm: &'a mut [f32],
    /// `(B, C)` clamped cosines.
    pub cos: &'a mut [f32],
    /// `(B, C)` logits; the backward pass overwrites them with gradients: on return they hold `dL/d raw_cos`, the
    /// gradient with respect to the cosines before the clamp.
    pub logits: &'a mut [f32],
    /// `(B)` margins as assigned to the samples (after the Plus assignment).
    pub margins: &'a mut [f32],
    /// `(B)` sample order used by the Plus assignment: `order[k]` is the sample with the k-th largest `cos_y`
    /// (the identity when the loss is not a Plus variant).
    pub order: &'a mut [u32],
}

impl<'a> HeadScratch<'a> {
    /// Splits one arena of [`HeadShape::scratch_len`] `f32`s (in field order: `emb_unit`, `emb_norm`, `w_unit`,
    /// `w_norm`, `cos`, `logits`, `margins`) and an `order` of `B` elements into a scratch.
    pub fn from_arena(shape: &HeadShape, arena: &'a mut [f32], order: &'a mut [u32]) -> Result<Self, Error> {
        shape.validate()?;
        check_len("arena", arena, shape.scratch_len())?;
        check_len("order", order, shape.batch)?;
        let (emb_unit, rest) = arena.split_at_mut(shape.emb_len());
        let (emb_norm, rest) = rest.split_at_mut(shape.batch);
        let (w_unit, rest) = rest.split_at_mut(shape.weight_len());
        let (w_norm, rest) = rest.split_at_mut(shape.classes);
        let (cos, rest) = rest.split_at_mut(shape.logits_len());
        let (logits, margins) = rest.split_at_mut(shape.logits_len());
        Ok(Self { emb_unit, emb_norm, w_unit, w_norm, cos, logits, margins, order })
    }

    /// Checks every field's length against `shape`.
    fn check(&self, shape: &HeadShape) -> Result<(), Error> {
        check_len("emb_unit", self.emb_unit, shape.emb_len())?;
        check_len("emb_norm", self.emb_norm, shape.batch)?;
        check_len("w_unit", self.w_unit, shape.weight_len())?;
        check_len("w_norm", self.w_norm, shape.classes)?;
        check_len("cos", self.cos, shape.logits_len())?;
        check_len("logits", self.logits, shape.logits_len())?;
        check_len("margins", self.margins, shape.batch)?;
        check_len("order", self.order, shape.batch)
    }
}

/// Checks that every value lies in `[-1, 1]` (NaN: [`Error::NonFinite`]).
fn check_cosines(what: &'static str, cos: &[f32]) -> Result<(), Error> {
    check_finite(what, cos)?;
    if cos.iter().any(|&c| !(-1.0..=1.0).contains(&c)) {
        return Err(Error::Config { what: "cosines must lie in [-1, 1]" });
    }
    Ok(())
}

/// Gives an error of the normalisation the name of the head's argument (`what`), or of its norms (`norms`) where
/// a norm overflows.
fn rename(e: Error, what: &'static str, norms: &'static str) -> Error {
    match e {
        Error::ZeroNorm { index, .. } => Error::ZeroNorm { what, index },
        Error::NonFinite { what: "norms", index } => Error::NonFinite { what: norms, index },
        Error::NonFinite { index, .. } => Error::NonFinite { what, index },
        other => other,
    }
}

/// Top bit of a `u32` sample index: marks a visited position while [`assign_plus`] permutes in place.
const VISITED: u32 = 1 << 31;

/// Hands the margins to the samples as the Plus variants do (see the module documentation), in place.
///
/// `cos_y (B)`: each sample's cosine to its own class centre. `margins (B)`: the drawn margins on entry, the
/// assigned ones on return (a permutation of the same values). `order (B)`: written with the ranking, `order[k]`
/// = the sample with the k-th largest `cos_y`, ties broken by the smaller sample index (so `-0.0` and `0.0` tie);
/// the identity for [`PlusAssignment::None`], which leaves `margins` untouched.
///
/// Errors: lengths, `B > `[`MAX_BATCH`] ([`Error::Shape`]), a non-finite `cos_y` or margin ([`Error::NonFinite`]).
pub fn assign_plus(plus: PlusAssignment, cos_y: &[f32], margins: &mut [f32], order: &mut [u32]) -> Result<(), Error> {
    check_len("margins", margins, cos_y.len())?;
    check_len("order", order, cos_y.len())?;
    check_finite("cos_y", cos_y)?;
    assign_plus_by(plus, |i| cos_y[i], margins, order)
}

/// [`assign_plus`] with `cos_y` given by a function of the sample index (the head reads it from the `(B, C)`
/// cosines). Lengths of `margins` and `order` must agree; `cos_y` must be finite.
fn assign_plus_by(
    plus: PlusAssignment,
    cos_y: impl Fn(usize) -> f32,
    margins: &mut [f32],
    order: &mut [u32],
) -> Result<(), Error> {
    let batch = margins.len();
    check_len("order", order, batch)?;
    if batch > MAX_BATCH {
        return Err(Error::Shape { what: "the Plus assignment takes at most 2^31 samples" });
    }
    check_finite("margins", margins)?;
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    if plus == PlusAssignment::None {
        return Ok(());
    }
    // Keys are unique (the index breaks ties), so the unstable sort is deterministic and equals a stable sort by
    // cos_y descending. Values are finite here, so `partial_cmp` never fails; it treats -0.0 and 0.0 as equal,
    // as PyTorch's sort does.
    order.sort_unstable_by(|&a, &b| {
        let (ca, cb) = (cos_y(a as usize), cos_y(b as usize));
        cb.partial_cmp(&ca).unwrap_or(Ordering::Equal).then(a.cmp(&b))
    });
    margins.sort_unstable_by(f32::total_cmp);
    // Permute in place by following cycles; a visited position is marked in the top bit of its `order` entry.
    match plus {
        PlusAssignment::None => {}
        PlusAssignment::Paper => {
            // Scatter: sorted[k] moves to position order[k].
            for start in 0..batch {
                if order[start] & VISITED != 0 {
                    continue;
                }
                let mut carried = margins[start];
                let mut k = start;
                loop {
                    let dest = order[k] as usize;
                    order[k] |= VISITED;
                    if dest == start {
                        margins[start] = carried;
                        break;
                    }
                    core::mem::swap(&mut margins[dest], &mut carried);
                    k = dest;
                }
            }
        }
        PlusAssignment::ReleasedCode => {
            // Gather: position i takes sorted[order[i]].
            for start in 0..batch {
                if order[start] & VISITED != 0 {
                    continue;
                }
                let first = margins[start];
                let mut i = start;
                loop {
                    let src = order[i] as usize;
                    order[i] |= VISITED;
                    if src == start {
                        margins[i] = first;
                        break;
                    }
                    margins[i] = margins[src];
                    i = src;
                }
            }
        }
    }
    for o in order.iter_mut() {
        *o &= !VISITED;
    }
    Ok(())
}

/// The raw product `emb_unit[b] . w_unit[:, c]`, accumulated in `f32` over `D` in order from `0.0`: the same
/// operations as [`cosine_forward`] performs for that element.
#[inline]
fn raw_cosine(shape: &HeadShape, emb_unit: &[f32], w_unit: &[f32], b: usize, c: usize) -> f32 {
    let row = &emb_unit[b * shape.dim..(b + 1) * shape.dim];
    let mut acc = 0.0f32;
    for (k, &e) in row.iter().enumerate() {
        acc += e * w_unit[k * shape.classes + c];
    }
    acc
}

/// `cos (B, C) = clamp(emb_unit (B, D) @ w_unit (D, C), -1, 1)`, accumulated in `f32` over `D` in order.
///
/// Errors besides the usual: a product that overflows `f32` (inputs far from unit length) is [`Error::NonFinite`]
/// naming `cos`, at its index in `(B, C)`; rows before it are written.
pub fn cosine_forward(shape: &HeadShape, emb_unit: &[f32], w_unit: &[f32], cos: &mut [f32]) -> Result<(), Error> {
    shape.validate()?;
    check_len("emb_unit", emb_unit, shape.emb_len())?;
    check_len("w_unit", w_unit, shape.weight_len())?;
    check_len("cos", cos, shape.logits_len())?;
    check_finite("emb_unit", emb_unit)?;
    check_finite("w_unit", w_unit)?;
    let rows = emb_unit.chunks_exact(shape.dim).zip(cos.chunks_exact_mut(shape.classes));
    for (b, (erow, crow)) in rows.enumerate() {
        crow.fill(0.0);
        for (&e, wrow) in erow.iter().zip(w_unit.chunks_exact(shape.classes)) {
            for (acc, &w) in crow.iter_mut().zip(wrow) {
                *acc += e * w;
            }
        }
        // Before the clamp, which would keep a NaN (inf - inf) and turn an overflow into +-1.
        if let Some(c) = crow.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "cos", index: b * shape.classes + c });
        }
        for v in crow.iter_mut() {
            *v = v.clamp(-1.0, 1.0);
        }
    }
    Ok(())
}

/// `logits (B, C)` from the clamped `cos (B, C)`: `s * cos` everywhere but the targets, which get
/// [`MarginConfig::target_logit`] with the sample's margin from `margins (B)` (as assigned).
///
/// Errors besides the usual: `cos` outside `[-1, 1]` ([`Error::Config`]), logits beyond `f32`
/// ([`Error::NonFinite`] naming `logits`).
pub fn margin_logits_forward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    cos: &[f32],
    labels: &[u32],
    margins: &[f32],
    logits: &mut [f32],
) -> Result<(), Error> {
    cfg.validate()?;
    shape.validate()?;
    check_len("cos", cos, shape.logits_len())?;
    check_len("labels", labels, shape.batch)?;
    check_len("margins", margins, shape.batch)?;
    check_len("logits", logits, shape.logits_len())?;
    check_labels(labels, shape.classes)?;
    check_cosines("cos", cos)?;
    check_finite("margins", margins)?;
    let rows = cos.chunks_exact(shape.classes).zip(logits.chunks_exact_mut(shape.classes));
    for ((crow, lrow), (&y, &m)) in rows.zip(labels.iter().zip(margins)) {
        for (l, &c) in lrow.iter_mut().zip(crow) {
            *l = cfg.s * c;
        }
        let y = y as usize;
        lrow[y] = cfg.target_logit(crow[y], m);
    }
    check_finite("logits", logits)
}

/// `log(sum(exp(row)))` in `f64`, shifted by the row's maximum so that nothing overflows. `row` is finite and
/// not empty.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let max = f64::from(max);
    let sum: f64 = row.iter().map(|&l| libm::exp(f64::from(l) - max)).sum();
    max + libm::log(sum)
}

/// Mean softmax cross-entropy of `logits (B, C)` with `labels (B)`: `mean_b (logsumexp(logits[b]) -
/// logits[b, y_b])`, in `f64` with the max-shifted log-sum-exp, rounded once.
pub fn cross_entropy_forward(shape: &HeadShape, logits: &[f32], labels: &[u32]) -> Result<f32, Error> {
    shape.validate()?;
    check_len("logits", logits, shape.logits_len())?;
    check_len("labels", labels, shape.batch)?;
    check_labels(labels, shape.classes)?;
    check_finite("logits", logits)?;
    let total: f64 = logits
        .chunks_exact(shape.classes)
        .zip(labels)
        .map(|(row, &y)| log_sum_exp(row) - f64::from(row[y as usize]))
        .sum();
    let loss = (total / shape.batch as f64) as f32;
    if !loss.is_finite() {
        return Err(Error::NonFinite { what: "loss", index: 0 });
    }
    Ok(loss)
}

/// Backward of [`cross_entropy_forward`], in place: `grad (B, C)` holds the logits on entry and
/// `dL/dlogits = (softmax(logits) - onehot(labels)) / B` on return (computed in `f64`, rounded once).
pub fn cross_entropy_backward(shape: &HeadShape, labels: &[u32], grad: &mut [f32]) -> Result<(), Error> {
    shape.validate()?;
    check_len("labels", labels, shape.batch)?;
    check_len("grad", grad, shape.logits_len())?;
    check_labels(labels, shape.classes)?;
    check_finite("grad", grad)?;
    let inv_b = 1.0 / shape.batch as f64;
    for (row, &y) in grad.chunks_exact_mut(shape.classes).zip(labels) {
        let lse = log_sum_exp(row);
        for (c, g) in row.iter_mut().enumerate() {
            let p = libm::exp(f64::from(*g) - lse);
            let onehot = if c == y as usize { 1.0 } else { 0.0 };
            *g = ((p - onehot) * inv_b) as f32;
        }
    }
    Ok(())
}

/// Backward of [`margin_logits_forward`], in place: `grad (B, C)` holds `dL/dlogits` on entry and `dL/dcos` (of
/// the clamped cosines) on return: `s * grad` everywhere but the targets, which are multiplied by
/// [`MarginConfig::target_logit_derivative`] instead.
pub fn margin_logits_backward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    cos: &[f32],
    labels: &[u32],
    margins: &[f32],
    grad: &mut [f32],
) -> Result<(), Error> {
    cfg.validate()?;
    shape.validate()?;
    check_len("cos", cos, shape.logits_len())?;
    check_len("labels", labels, shape.batch)?;
    check_len("margins", margins, shape.batch)?;
    check_len("grad", grad, shape.logits_len())?;
    check_labels(labels, shape.classes)?;
    check_cosines("cos", cos)?;
    check_finite("margins", margins)?;
    check_finite("grad", grad)?;
    let rows = cos.chunks_exact(shape.classes).zip(grad.chunks_exact_mut(shape.classes));
    for ((crow, grow), (&y, &m)) in rows.zip(labels.iter().zip(margins)) {
        let y = y as usize;
        let target = f64::from(grow[y]) * f64::from(cfg.target_logit_derivative(crow[y], m));
        for g in grow.iter_mut() {
            *g *= cfg.s;
        }
        grow[y] = target as f32;
    }
    check_finite("grad", grad)
}

/// Backward of the clamp in [`cosine_forward`], in place: zeroes `grad (B, C)` where the raw product
/// `emb_unit @ w_unit` was outside `[-1, 1]`; elsewhere (including a raw value of exactly `+-1`) the gradient
/// passes, as with `torch.clamp`. Only entries whose stored `cos` is `+-1` can have been clamped; for those the
/// raw product is recomputed exactly as the forward pass computed it.
pub fn clamp_backward(
    shape: &HeadShape,
    emb_unit: &[f32],
    w_unit: &[f32],
    cos: &[f32],
    grad: &mut [f32],
) -> Result<(), Error> {
    shape.validate()?;
    check_len("emb_unit", emb_unit, shape.emb_len())?;
    check_len("w_unit", w_unit, shape.weight_len())?;
    check_len("cos", cos, shape.logits_len())?;
    check_len("grad", grad, shape.logits_len())?;
    for (i, (&c, g)) in cos.iter().zip(grad.iter_mut()).enumerate() {
        if c == 1.0 || c == -1.0 {
            let raw = raw_cosine(shape, emb_unit, w_unit, i / shape.classes, i % shape.classes);
            if !(-1.0..=1.0).contains(&raw) {
                *g = 0.0;
            }
        }
    }
    Ok(())
}

/// Backward of the product in [`cosine_forward`]: `d_emb_unit (B, D) = dcos (B, C) @ w_unit^T` and
/// `d_w_unit (D, C) = emb_unit^T @ dcos`, accumulated in `f32`. Both outputs are overwritten.
pub fn cosine_backward(
    shape: &HeadShape,
    emb_unit: &[f32],
    w_unit: &[f32],
    dcos: &[f32],
    d_emb_unit: &mut [f32],
    d_w_unit: &mut [f32],
) -> Result<(), Error> {
    shape.validate()?;
    check_len("emb_unit", emb_unit, shape.emb_len())?;
    check_len("w_unit", w_unit, shape.weight_len())?;
    check_len("dcos", dcos, shape.logits_len())?;
    check_len("d_emb_unit", d_emb_unit, shape.emb_len())?;
    check_len("d_w_unit", d_w_unit, shape.weight_len())?;
    check_finite("emb_unit", emb_unit)?;
    check_finite("w_unit", w_unit)?;
    check_finite("dcos", dcos)?;
    let (d, c) = (shape.dim, shape.classes);
    for (grow, de_row) in dcos.chunks_exact(c).zip(d_emb_unit.chunks_exact_mut(d)) {
        for (de, wrow) in de_row.iter_mut().zip(w_unit.chunks_exact(c)) {
            let mut acc = 0.0f32;
            for (&g, &w) in grow.iter().zip(wrow) {
                acc += g * w;
            }
            *de = acc;
        }
    }
    d_w_unit.fill(0.0);
    for (erow, grow) in emb_unit.chunks_exact(d).zip(dcos.chunks_exact(c)) {
        for (&e, dw_row) in erow.iter().zip(d_w_unit.chunks_exact_mut(c)) {
            for (dw, &g) in dw_row.iter_mut().zip(grow) {
                *dw += e * g;
            }
        }
    }
    Ok(())
}

/// Forward pass of the whole head: normalise, cosines, Plus assignment of `margins_raw (B)`, margin logits and
/// the mean softmax cross-entropy over the batch, which is returned.
///
/// Inputs: `emb (B, D)` raw embeddings, `w (D, C)` raw class centres (one per column), `labels (B)` below `C`,
/// `margins_raw (B)` the drawn margins (see [`MarginConfig::draw_margins_at`]; with `sigma = 0` every value is
/// `m`). Every field of `scratch` is written; the Plus assignment ranks the
/// samples by the clamped `f32` cosine to their own class.
///
/// Errors: a bad configuration or shape, lengths (naming the argument or scratch field), labels, non-finite
/// `emb`, `w` or `margins_raw`, a zero row of `emb` or column of `w` ([`Error::ZeroNorm`] naming `emb`/`w`),
/// a norm that overflows `f32` ([`Error::NonFinite`] naming `emb_norm`/`w_norm`), logits or loss beyond `f32`.
pub fn margin_loss_forward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    emb: &[f32],
    w: &[f32],
    labels: &[u32],
    margins_raw: &[f32],
    scratch: &mut HeadScratch<'_>,
) -> Result<f32, Error> {
    cfg.validate()?;
    shape.validate()?;
    check_len("emb", emb, shape.emb_len())?;
    check_len("w", w, shape.weight_len())?;
    check_len("labels", labels, shape.batch)?;
    check_len("margins_raw", margins_raw, shape.batch)?;
    scratch.check(shape)?;
    check_labels(labels, shape.classes)?;
    check_finite("emb", emb)?;
    check_finite("w", w)?;
    check_finite("margins_raw", margins_raw)?;

    let HeadScratch { emb_unit, emb_norm, w_unit, w_norm, cos, logits, margins, order } = scratch;
    let rows = VectorLayout::rows(shape.batch, shape.dim);
    let columns = VectorLayout::columns(shape.dim, shape.classes);
    l2_normalize_forward(rows, emb, emb_unit, emb_norm).map_err(|e| rename(e, "emb", "emb_norm"))?;
    l2_normalize_forward(columns, w, w_unit, w_norm).map_err(|e| rename(e, "w", "w_norm"))?;

    cosine_forward(shape, emb_unit, w_unit, cos)?;
    margins.copy_from_slice(margins_raw);
    let classes = shape.classes;
    let cos_ref: &[f32] = cos;
    assign_plus_by(cfg.plus, |i| cos_ref[i * classes + labels[i] as usize], margins, order)?;
    margin_logits_forward(cfg, shape, cos, labels, margins, logits)?;
    cross_entropy_forward(shape, logits, labels)
}

/// Backward pass of the head after [`margin_loss_forward`] with the same arguments: writes the gradient of the
/// mean loss with respect to the raw embeddings `d_emb (B, D)` and the raw class centres `d_w (D, C)`.
///
/// Reads `scratch` as the forward pass left it and overwrites `scratch.logits` with `dL/d raw_cos`; call it once
/// per forward pass. The assigned margins are constants (the Plus assignment is piecewise constant).
pub fn margin_loss_backward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    labels: &[u32],
    scratch: &mut HeadScratch<'_>,
    d_emb: &mut [f32],
    d_w: &mut [f32],
) -> Result<(), Error> {
    cfg.validate()?;
    shape.validate()?;
    check_len("labels", labels, shape.batch)?;
    scratch.check(shape)?;
    check_len("d_emb", d_emb, shape.emb_len())?;
    check_len("d_w", d_w, shape.weight_len())?;
    check_labels(labels, shape.classes)?;
    check_norms("emb_norm", scratch.emb_norm)?;
    check_norms("w_norm", scratch.w_norm)?;

    let HeadScratch { emb_unit, emb_norm, w_unit, w_norm, cos, logits, margins, .. } = scratch;
    cross_entropy_backward(shape, labels, logits)?;
    margin_logits_backward(cfg, shape, cos, labels, margins, logits)?;
    clamp_backward(shape, emb_unit, w_unit, cos, logits)?;
    cosine_backward(shape, emb_unit, w_unit, logits, d_emb, d_w)?;
    l2_normalize_backward(VectorLayout::rows(shape.batch, shape.dim), emb_unit, emb_norm, d_emb)?;
    l2_normalize_backward(VectorLayout::columns(shape.dim, shape.classes), w_unit, w_norm, d_w)?;
    check_finite("d_emb", d_emb)?;
    check_finite("d_w", d_w)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    const ALL_PLUS: [PlusAssignment; 3] = [PlusAssignment::None, PlusAssignment::Paper, PlusAssignment::ReleasedCode];

    #[test]
    fn presets_have_the_published_values() {
        let p = |name| MarginConfig::preset(name).unwrap();
        assert_eq!(
            p("arcface"),
            MarginConfig { kind: MarginKind::Arc, s: 64.0, m: 0.5, sigma: 0.0, plus: PlusAssignment::None }
        );
        assert_eq!(
            p("cosface"),
            MarginConfig { kind: MarginKind::Cos, s: 64.0, m: 0.35, sigma: 0.0, plus: PlusAssignment::None }
        );
        assert_eq!(
            (p("elastic-arc").kind, p("elastic-arc").sigma, p("elastic-arc").plus),
            (MarginKind::Arc, 0.05, PlusAssignment::None)
        );
        assert_eq!(
            (p("elastic-cos").kind, p("elastic-cos").sigma, p("elastic-cos").plus),
            (MarginKind::Cos, 0.05, PlusAssignment::None)
        );
        assert_eq!((p("elastic-arc-plus").m, p("elastic-arc-plus").sigma), (0.5, 0.0175));
        assert_eq!(p("elastic-arc-plus").plus, PlusAssignment::Paper);
        assert_eq!((p("elastic-cos-plus").m, p("elastic-cos-plus").sigma), (0.35, 0.02));
        assert_eq!(p("elastic-cos-plus").plus, PlusAssignment::Paper);
        for (name, cfg) in MarginConfig::PRESETS {
            assert_eq!(cfg.s, 64.0);
            assert_eq!(cfg.validate(), Ok(()));
            assert_eq!(cfg.preset_name(), Some(name));
        }
        assert_eq!(MarginConfig::preset("elastic_arc"), None);
    }

    #[test]
    fn display_and_parse_round_trip() {
        assert_eq!(MarginConfig::ELASTIC_ARC_PLUS.to_string(), "elastic-arc-plus");
        assert_eq!(
            MarginConfig::ELASTIC_ARC_PLUS.with_plus(PlusAssignment::ReleasedCode).to_string(),
            "elastic-arc-plus (plus=released-code)"
        );
        assert_eq!(MarginConfig::ARCFACE.with_plus(PlusAssignment::Paper).to_string(), "arcface (plus=paper)");
        let custom = MarginConfig { s: 30.0, ..MarginConfig::ELASTIC_ARC };
        assert_eq!(custom.to_string(), "arc(s=30, m=0.5, sigma=0.05, plus=none)");
        let custom2 =
            MarginConfig { kind: MarginKind::Cos, s: 16.5, m: -0.1, sigma: 0.0, plus: PlusAssignment::ReleasedCode };
        assert_eq!(custom2.to_string(), "cos(s=16.5, m=-0.1, sigma=0, plus=released-code)");

        let mut configs: Vec<MarginConfig> = Vec::new();
        for (_, cfg) in MarginConfig::PRESETS {
            configs.extend(ALL_PLUS.map(|p| cfg.with_plus(p)));
        }
        configs.extend([custom, custom2, MarginConfig { s: 1e-3, m: 1.0 / 3.0, sigma: 0.1234567, ..custom }]);
        for cfg in configs {
            let text = cfg.to_string();
            assert_eq!(text.parse::<MarginConfig>(), Ok(cfg), "{text}");
        }
        for p in ALL_PLUS {
            assert_eq!(p.to_string().parse::<PlusAssignment>(), Ok(p));
        }
        for k in [MarginKind::Arc, MarginKind::Cos] {
            assert_eq!(k.to_string().parse::<MarginKind>(), Ok(k));
        }
    }

    #[test]
    fn parse_accepts_spacing_and_any_field_order() {
        assert_eq!("  cosface ".parse::<MarginConfig>(), Ok(MarginConfig::COSFACE));
        assert_eq!(
            "elastic-cos-plus(plus = released-code)".parse::<MarginConfig>(),
            Ok(MarginConfig::ELASTIC_COS_PLUS.with_plus(PlusAssignment::ReleasedCode))
        );
        assert_eq!(
            "arc (plus=paper, sigma=0.0175, m=0.5, s=64)".parse::<MarginConfig>(),
            Ok(MarginConfig::ELASTIC_ARC_PLUS)
        );
        assert_eq!("cos(s=64, m=0.35)".parse::<MarginConfig>(), Ok(MarginConfig::COSFACE));
    }

    #[test]
    fn parse_errors_are_config_errors() {
        let bad = [
            "arcfase",
            "",
            "elastic-arc-plus (plus=sorted)",
            "elastic-arc-plus (sigma=0.1)",
            "elastic-arc-plus (plus=paper",
            "arc(s=64)",
            "arc(s=64, m=0.5, s=32)",
            "arc(s=64, m=zero)",
            "arc(s=64, m=0.5, scale=2)",
            "sin(s=64, m=0.5)",
            "arc(s=-64, m=0.5)",
            "arc(s=64, m=NaN)",
            "cos(s=64, m=0.35, sigma=-0.1)",
            "cos(s=inf, m=0.35)",
        ];
        for text in bad {
            assert!(matches!(text.parse::<MarginConfig>(), Err(Error::Config { .. })), "{text:?}");
        }
        assert!(matches!("Paper".parse::<PlusAssignment>(), Err(Error::Config { .. })));
        assert!(matches!("refcode".parse::<PlusAssignment>(), Err(Error::Config { .. })));
        // The error lists what is accepted.
        let Err(Error::Config { what }) = "arcfase".parse::<MarginConfig>() else { panic!() };
        for name in ["arcface", "cosface", "elastic-arc", "elastic-cos", "elastic-arc-plus", "elastic-cos-plus"] {
            assert!(what.contains(name), "{what}");
        }
        let Err(Error::Config { what }) = "x".parse::<PlusAssignment>() else { panic!() };
        assert!(what.contains("none") && what.contains("paper") && what.contains("released-code"));
    }

    #[test]
    fn validate_checks_the_domain() {
        let ok = MarginConfig::ELASTIC_COS;
        assert_eq!(MarginConfig { m: -0.2, sigma: 0.0, ..ok }.validate(), Ok(()));
        for bad in [
            MarginConfig { s: 0.0, ..ok },
            MarginConfig { s: f32::INFINITY, ..ok },
            MarginConfig { s: f32::NAN, ..ok },
            MarginConfig { m: f32::NAN, ..ok },
            MarginConfig { sigma: -0.01, ..ok },
            MarginConfig { sigma: f32::INFINITY, ..ok },
            MarginConfig { sigma: 3e38, ..ok },
            MarginConfig { m: -3e38, sigma: 1e37, ..ok },
            MarginConfig { m: f32::MAX, sigma: 1e31, ..ok },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config { .. })), "{bad:?}");
        }
        assert!("cos(s=64, m=0.35, sigma=3e38)".parse::<MarginConfig>().is_err());
    }

    #[test]
    fn every_margin_of_an_accepted_config_is_finite() {
        // The widest accepted spread: |m| + 8.58 sigma just below f32::MAX, where the normals reach 8.57.
        let sigma = (f64::from(f32::MAX) / 8.58 * 0.999_999) as f32;
        for m in [0.0, 1e30, -1e30] {
            let cfg = MarginConfig { m, sigma, ..MarginConfig::ELASTIC_ARC };
            cfg.validate().unwrap();
            let mut margins = [0.0f32; 4096];
            cfg.draw_margins_at(7, 0, &mut margins);
            assert!(margins.iter().all(|v| v.is_finite()));
            assert!(margins.iter().any(|v| v.abs() > 1e38), "the test reaches the range it is about");
            assert!(cfg.margin_at(7, 0, 3).is_finite());
        }
    }

    #[test]
    fn cosines_that_overflow_are_errors_not_nan() {
        // Not unit vectors: 3e38 * 2 overflows, and inf - inf is NaN (which the clamp would keep).
        let shape = HeadShape::new(1, 2, 2);
        let mut cos = [0.0; 2];
        let e = cosine_forward(&shape, &[3e38, 3e38], &[2.0, 1.0, -2.0, 1.0], &mut cos);
        assert_eq!(e, Err(Error::NonFinite { what: "cos", index: 0 }));
        // An infinity alone would be clamped to 1.
        let e = cosine_forward(&shape, &[3e38, 3e38], &[0.0, 1.0, 0.0, 1.0], &mut cos);
        assert_eq!(e, Err(Error::NonFinite { what: "cos", index: 1 }));
    }

    #[test]
    fn margins_without_sigma_are_exactly_m_and_still_consume_the_stream() {
        let mut rng = Philox4x32::new(3, 4);
        let mut out = [0.0f32; 5];
        MarginConfig::COSFACE.draw_margins(&mut rng, &mut out);
        assert_eq!(out, [0.35; 5]);
        assert_eq!(rng.word_pos(), 5 * 4);
    }

    #[test]
    fn draw_margins_at_equals_margin_at() {
        let cfg = MarginConfig::ELASTIC_ARC;
        let mut out = [0.0f32; 37];
        cfg.draw_margins_at(20_261_128, 12, &mut out);
        for (i, &m) in out.iter().enumerate() {
            assert_eq!(m.to_bits(), cfg.margin_at(20_261_128, 12, i as u64).to_bits());
            let z = Philox4x32::normal_at(20_261_128, 12, i as u64);
            assert_eq!(m, (0.5f64 + 0.05 * z) as f32);
        }
        let mut other = [0.0f32; 37];
        cfg.draw_margins_at(20_261_128, 13, &mut other);
        assert_ne!(out, other);
    }

    #[test]
    fn plus_assignment_by_hand() {
        // cos_y ranks the samples 1 (0.9), 2 (0.5), 3 (0.3), 0 (0.1); sorted margins [0.46, 0.48, 0.50, 0.52].
        let cos_y = [0.1, 0.9, 0.5, 0.3];
        let raw = [0.52, 0.48, 0.50, 0.46];

        let (mut m, mut order) = (raw, [0u32; 4]);
        assign_plus(PlusAssignment::Paper, &cos_y, &mut m, &mut order).unwrap();
        assert_eq!(order, [1, 2, 3, 0]);
        // Paper: the closest sample (1) gets the smallest margin, the farthest (0) the largest.
        assert_eq!(m, [0.52, 0.46, 0.48, 0.50]);

        let (mut m, mut order) = (raw, [0u32; 4]);
        assign_plus(PlusAssignment::ReleasedCode, &cos_y, &mut m, &mut order).unwrap();
        assert_eq!(order, [1, 2, 3, 0]);
        // Released code: sample i gets sorted[order[i]] = sorted[1], sorted[2], sorted[3], sorted[0]. The closest
        // sample gets 0.50 and the farthest 0.48: not the paper's assignment.
        assert_eq!(m, [0.48, 0.50, 0.52, 0.46]);

        let (mut m, mut order) = (raw, [9u32; 4]);
        assign_plus(PlusAssignment::None, &cos_y, &mut m, &mut order).unwrap();
        assert_eq!((m, order), (raw, [0, 1, 2, 3]));
    }

    #[test]
    fn plus_ties_break_by_sample_index() {
        // 1 and 3 tie at 0.7, 0 and 2 at 0.5, 4 and 5 at -0.0 / 0.0 (equal, as in PyTorch's sort).
        let cos_y = [0.5, 0.7, 0.5, 0.7, -0.0, 0.0];
        let raw = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1];
        let (mut m, mut order) = (raw, [0u32; 6]);
        assign_plus(PlusAssignment::Paper, &cos_y, &mut m, &mut order).unwrap();
        assert_eq!(order, [1, 3, 0, 2, 4, 5]);
        assert_eq!(m, [0.3, 0.1, 0.4, 0.2, 0.5, 0.6]);
        let (mut m, mut order) = (raw, [0u32; 6]);
        assign_plus(PlusAssignment::ReleasedCode, &cos_y, &mut m, &mut order).unwrap();
        assert_eq!(m, [0.2, 0.4, 0.1, 0.3, 0.5, 0.6]);
    }

    /// A small deterministic generator for the tests below.
    fn lcg(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 40) as f32) / (1u64 << 24) as f32
    }

    #[test]
    fn in_place_permutations_match_the_definitions() {
        let mut state = 1u64;
        for batch in [1usize, 2, 3, 7, 16, 61, 128] {
            for _ in 0..20 {
                // Coarse cosines so that ties happen.
                let cos_y: Vec<f32> = (0..batch).map(|_| (lcg(&mut state) * 8.0) as u32 as f32 / 8.0).collect();
                let raw: Vec<f32> = (0..batch).map(|_| 0.5 + 0.05 * (lcg(&mut state) - 0.5)).collect();
                let mut want_order: Vec<u32> = (0..batch as u32).collect();
                want_order.sort_by(|&a, &b| cos_y[b as usize].partial_cmp(&cos_y[a as usize]).unwrap());
                let mut sorted = raw.clone();
                sorted.sort_by(f32::total_cmp);
                let mut paper = vec![0.0; batch];
                for (k, &i) in want_order.iter().enumerate() {
                    paper[i as usize] = sorted[k];
                }
                let released: Vec<f32> = want_order.iter().map(|&k| sorted[k as usize]).collect();

                for (plus, want) in [(PlusAssignment::Paper, &paper), (PlusAssignment::ReleasedCode, &released)] {
                    let (mut m, mut order) = (raw.clone(), vec![0u32; batch]);
                    assign_plus(plus, &cos_y, &mut m, &mut order).unwrap();
                    assert_eq!(order, want_order);
                    assert_eq!(&m, want);
                    if plus == PlusAssignment::Paper {
                        // Paper: the margins assign_plus hands out never decrease as cos_y decreases.
                        for k in 1..batch {
                            let (prev, next) = (want_order[k - 1] as usize, want_order[k] as usize);
                            assert!(m[next] >= m[prev], "{m:?} by {want_order:?}");
                            assert!(cos_y[next] <= cos_y[prev]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plus_rejects_bad_input() {
        let (mut m, mut order) = ([0.5f32; 3], [0u32; 3]);
        let e = assign_plus(PlusAssignment::Paper, &[0.1, f32::NAN, 0.3], &mut m, &mut order);
        assert_eq!(e, Err(Error::NonFinite { what: "cos_y", index: 1 }));
        let e = assign_plus(PlusAssignment::Paper, &[0.1, 0.2], &mut m, &mut order);
        assert_eq!(e, Err(Error::Length { what: "margins", expected: 2, got: 3 }));
        let e = assign_plus(PlusAssignment::Paper, &[0.1, 0.2, 0.3], &mut m, &mut order[..2]);
        assert_eq!(e, Err(Error::Length { what: "order", expected: 3, got: 2 }));
        m[2] = f32::INFINITY;
        let e = assign_plus(PlusAssignment::ReleasedCode, &[0.1, 0.2, 0.3], &mut m, &mut order);
        assert_eq!(e, Err(Error::NonFinite { what: "margins", index: 2 }));
    }

    #[test]
    fn arc_derivative_floor_acts_only_at_plus_minus_one() {
        let cfg = MarginConfig::ARCFACE;
        let below_one = 1.0 - f32::EPSILON / 2.0; // largest f32 below 1
        for c in [below_one, -below_one, 0.3, -0.99] {
            let (cd, m) = (f64::from(c), 0.5f64);
            let exact = 64.0 * libm::sin(libm::acos(cd) + m) / libm::sqrt((1.0 - cd) * (1.0 + cd));
            assert_eq!(cfg.target_logit_derivative(c, 0.5), exact as f32, "{c}");
        }
        let at_one = cfg.target_logit_derivative(1.0, 0.5);
        assert_eq!(at_one, (64.0 * libm::sin(0.5f64) / 1e-4f64) as f32);
        assert!(cfg.target_logit_derivative(-1.0, 0.5).is_finite());
        assert_eq!(MarginConfig::COSFACE.target_logit_derivative(1.0, 0.35), 64.0);
    }

    #[test]
    fn clamp_passes_the_gradient_only_inside_the_interval() {
        // Not unit vectors, so that the raw products are 1.5, 1.0, -1.5 and -1.0.
        let shape = HeadShape::new(4, 1, 1);
        let emb_unit = [1.5, 1.0, -1.5, -1.0];
        let w_unit = [1.0];
        let mut cos = [0.0; 4];
        cosine_forward(&shape, &emb_unit, &w_unit, &mut cos).unwrap();
        assert_eq!(cos, [1.0, 1.0, -1.0, -1.0]);
        let mut grad = [2.0; 4];
        clamp_backward(&shape, &emb_unit, &w_unit, &cos, &mut grad).unwrap();
        assert_eq!(grad, [0.0, 2.0, 0.0, 2.0]);
    }

    #[test]
    fn loss_of_a_hand_computed_case() {
        // emb [1, 0], centres [1, 0] and [0, 1]: cos = [1, 0]. CosFace s=2, m=0.5: logits [1, 0],
        // loss = ln(e + 1) - 1 = ln(1 + 1/e).
        let cfg = MarginConfig { kind: MarginKind::Cos, s: 2.0, m: 0.5, sigma: 0.0, plus: PlusAssignment::None };
        let shape = HeadShape::new(1, 2, 2);
        let mut arena = [0.0f32; 14];
        assert_eq!(shape.scratch_len(), 14);
        let mut order = [0u32; 1];
        let mut scratch = HeadScratch::from_arena(&shape, &mut arena, &mut order).unwrap();
        let loss =
            margin_loss_forward(&cfg, &shape, &[3.0, 0.0], &[2.0, 0.0, 0.0, 5.0], &[0], &[0.5], &mut scratch).unwrap();
        assert!((f64::from(loss) - libm::log(1.0 + libm::exp(-1.0))).abs() < 1e-7, "{loss}");
        assert_eq!(scratch.cos, &[1.0, 0.0]);
        assert_eq!(scratch.logits, &[1.0, 0.0]);
        assert_eq!((scratch.emb_norm[0], scratch.w_norm), (3.0, &mut [2.0, 5.0][..]));
    }

    /// A valid head of shape (3, 4, 5) with all buffers, for the error tests.
    struct Head {
        shape: HeadShape,
        emb: Vec<f32>,
        w: Vec<f32>,
        labels: Vec<u32>,
        margins: Vec<f32>,
        arena: Vec<f32>,
        order: Vec<u32>,
        d_emb: Vec<f32>,
        d_w: Vec<f32>,
    }

    impl Head {
        fn new() -> Self {
            let shape = HeadShape::new(3, 4, 5);
            let mut state = 7u64;
            let mut rnd = |n: usize| (0..n).map(|_| lcg(&mut state) - 0.5).collect::<Vec<f32>>();
            Head {
                shape,
                emb: rnd(12),
                w: rnd(20),
                labels: vec![4, 0, 2],
                margins: vec![0.5, 0.45, 0.55],
                arena: vec![0.0; shape.scratch_len()],
                order: vec![0; 3],
                d_emb: vec![0.0; 12],
                d_w: vec![0.0; 20],
            }
        }

        fn forward(&mut self, cfg: &MarginConfig) -> Result<f32, Error> {
            let mut s = HeadScratch::from_arena(&self.shape, &mut self.arena, &mut self.order)?;
            margin_loss_forward(cfg, &self.shape, &self.emb, &self.w, &self.labels, &self.margins, &mut s)
        }

        fn backward(&mut self, cfg: &MarginConfig) -> Result<(), Error> {
            let mut s = HeadScratch::from_arena(&self.shape, &mut self.arena, &mut self.order)?;
            margin_loss_backward(cfg, &self.shape, &self.labels, &mut s, &mut self.d_emb, &mut self.d_w)
        }
    }

    #[test]
    fn a_valid_head_runs() {
        for (_, cfg) in MarginConfig::PRESETS {
            let mut h = Head::new();
            let loss = h.forward(&cfg).unwrap();
            assert!(loss.is_finite() && loss > 0.0);
            h.backward(&cfg).unwrap();
            assert!(h.d_emb.iter().chain(&h.d_w).all(|v| v.is_finite()));
            assert!(h.d_emb.iter().any(|&v| v != 0.0));
        }
    }

    #[test]
    fn bad_heads_return_the_right_error() {
        let cfg = MarginConfig::ELASTIC_ARC_PLUS;
        let mut h = Head::new();
        h.emb.pop();
        assert_eq!(h.forward(&cfg), Err(Error::Length { what: "emb", expected: 12, got: 11 }));

        let mut h = Head::new();
        h.w.push(1.0);
        assert_eq!(h.forward(&cfg), Err(Error::Length { what: "w", expected: 20, got: 21 }));

        let mut h = Head::new();
        h.margins.pop();
        assert_eq!(h.forward(&cfg), Err(Error::Length { what: "margins_raw", expected: 3, got: 2 }));

        let mut h = Head::new();
        h.labels[1] = 5;
        assert_eq!(h.forward(&cfg), Err(Error::Label { index: 1, label: 5, classes: 5 }));

        let mut h = Head::new();
        h.emb[5] = f32::NAN;
        assert_eq!(h.forward(&cfg), Err(Error::NonFinite { what: "emb", index: 5 }));

        let mut h = Head::new();
        h.w[7] = f32::NEG_INFINITY;
        assert_eq!(h.forward(&cfg), Err(Error::NonFinite { what: "w", index: 7 }));

        let mut h = Head::new();
        h.margins[2] = f32::NAN;
        assert_eq!(h.forward(&cfg), Err(Error::NonFinite { what: "margins_raw", index: 2 }));

        let mut h = Head::new();
        h.emb[4..8].fill(0.0);
        assert_eq!(h.forward(&cfg), Err(Error::ZeroNorm { what: "emb", index: 1 }));

        let mut h = Head::new();
        for d in 0..4 {
            h.w[d * 5 + 3] = 0.0;
        }
        assert_eq!(h.forward(&cfg), Err(Error::ZeroNorm { what: "w", index: 3 }));

        let mut h = Head::new();
        h.emb[0] = 3e38; // the squared norm overflows f32
        assert_eq!(h.forward(&cfg), Err(Error::NonFinite { what: "emb_norm", index: 0 }));

        let mut h = Head::new();
        assert!(matches!(h.forward(&MarginConfig { s: -1.0, ..cfg }), Err(Error::Config { .. })));

        // An absurd scale: the logits fit f32 but the loss does not; with margins of -2 the target logits
        // s * (cos_y + 2) do not fit either.
        let mut h = Head::new();
        let huge = MarginConfig { kind: MarginKind::Cos, s: f32::MAX, ..cfg };
        assert_eq!(h.forward(&huge), Err(Error::NonFinite { what: "loss", index: 0 }));
        h.margins.fill(-2.0);
        assert!(matches!(h.forward(&huge), Err(Error::NonFinite { what: "logits", .. })));

        let mut h = Head::new();
        h.shape = HeadShape::new(0, 4, 5);
        assert!(matches!(h.forward(&cfg), Err(Error::Shape { .. })));

        let mut h = Head::new();
        h.shape = HeadShape::new(3, usize::MAX / 2, 5);
        assert!(matches!(h.forward(&cfg), Err(Error::Shape { .. })));

        // Scratch fields are checked by name.
        let mut h = Head::new();
        let (shape, mut arena, mut order) = (h.shape, vec![0.0; 200], [0u32; 3]);
        let mut s = HeadScratch::from_arena(&shape, &mut arena[..shape.scratch_len()], &mut order).unwrap();
        let mut short = [0.0f32; 14];
        s.cos = &mut short;
        let e = margin_loss_forward(&cfg, &shape, &h.emb, &h.w, &h.labels, &h.margins, &mut s);
        assert_eq!(e, Err(Error::Length { what: "cos", expected: 15, got: 14 }));
        let e = margin_loss_backward(&cfg, &shape, &h.labels, &mut s, &mut h.d_emb, &mut h.d_w);
        assert_eq!(e, Err(Error::Length { what: "cos", expected: 15, got: 14 }));
        assert_eq!(
            HeadScratch::from_arena(&shape, &mut arena, &mut order).err(),
            Some(Error::Length { what: "arena", expected: shape.scratch_len(), got: 200 })
        );
    }

    #[test]
    fn bad_backward_inputs_return_errors() {
        let cfg = MarginConfig::ELASTIC_COS;
        let mut h = Head::new();
        h.forward(&cfg).unwrap();
        h.d_w.pop();
        assert_eq!(h.backward(&cfg), Err(Error::Length { what: "d_w", expected: 20, got: 19 }));

        let mut h = Head::new();
        h.forward(&cfg).unwrap();
        h.labels[0] = 9;
        assert_eq!(h.backward(&cfg), Err(Error::Label { index: 0, label: 9, classes: 5 }));

        // A scratch that no forward pass wrote (all zeros): zero norms, not NaN gradients.
        let mut h = Head::new();
        assert_eq!(h.backward(&cfg), Err(Error::ZeroNorm { what: "emb_norm", index: 0 }));
    }

    #[test]
    fn low_level_functions_check_their_inputs() {
        let shape = HeadShape::new(2, 1, 2);
        let cfg = MarginConfig::ARCFACE;
        let mut out = [0.0f32; 4];
        assert!(matches!(
            margin_logits_forward(&cfg, &shape, &[0.0, 1.5, 0.0, 0.0], &[0, 1], &[0.5, 0.5], &mut out),
            Err(Error::Config { .. })
        ));
        assert_eq!(
            margin_logits_forward(&cfg, &shape, &[0.0, f32::NAN, 0.0, 0.0], &[0, 1], &[0.5, 0.5], &mut out),
            Err(Error::NonFinite { what: "cos", index: 1 })
        );
        assert_eq!(
            cross_entropy_forward(&shape, &[0.0, f32::INFINITY, 0.0, 0.0], &[0, 1]),
            Err(Error::NonFinite { what: "logits", index: 1 })
        );
        assert_eq!(
            cross_entropy_backward(&shape, &[0, 2], &mut out),
            Err(Error::Label { index: 1, label: 2, classes: 2 })
        );
        let (mut de, mut dw) = ([0.0f32; 2], [0.0f32; 2]);
        assert_eq!(
            cosine_backward(&shape, &[1.0, 1.0], &[1.0, 1.0], &[0.0, 0.0, f32::NAN, 0.0], &mut de, &mut dw),
            Err(Error::NonFinite { what: "dcos", index: 2 })
        );
    }

    #[test]
    fn cross_entropy_is_stable_for_large_logits() {
        // Logits of 1e4 would overflow exp in f32 and f64 without the max shift.
        let shape = HeadShape::new(1, 1, 3);
        let logits = [1e4f32, 1e4 - 1.0, 1e4 - 2.0];
        let loss = cross_entropy_forward(&shape, &logits, &[1]).unwrap();
        let want = libm::log(1.0 + libm::exp(-1.0) + libm::exp(-2.0)) + 1.0;
        assert!((f64::from(loss) - want).abs() < 1e-6, "{loss} vs {want}");
        let mut g = logits;
        cross_entropy_backward(&shape, &[1], &mut g).unwrap();
        let z = 1.0 + libm::exp(-1.0) + libm::exp(-2.0);
        let want = [1.0 / z, libm::exp(-1.0) / z - 1.0, libm::exp(-2.0) / z];
        for (g, w) in g.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-7);
        }
    }
}
