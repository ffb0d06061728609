//! The margin-penalty softmax family: ArcFace, CosFace, ElasticFace-Arc/Cos and their Plus forms.
//!
//! Shapes: `B` batch, `D` embedding size, `C` classes. Embeddings `(B, D)` are normalised per row, class centres
//! `(D, C)` per column; `cos (B, C)` is their product clamped to `[-1, 1]`; only the target logit gets a margin.
//! TODO(helper): module docs (formulas, the Plus semantics, the acos epsilon), implementation, tests.

use crate::error::Error;

/// Which penalty the target logit gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginKind {
    /// Additive angular margin: `s * cos(theta_y + m)`.
    Arc,
    /// Additive cosine margin: `s * (cos_y - m)`.
    Cos,
}

/// How the Plus variants hand the sorted margins to the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlusAssignment {
    /// Not a Plus variant: sample `i` keeps margin `i`.
    None,
    /// The paper: the sample with the k-th largest `cos_y` gets the k-th smallest margin.
    Paper,
    /// The released code: sample `i` gets `sorted_margins[argsort_desc(cos_y)[i]]`.
    ReleasedCode,
}

/// A loss of the family.
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
    /// `(B, C)` logits; the backward pass overwrites them with gradients.
    pub logits: &'a mut [f32],
    /// `(B)` margins as assigned to the samples (after the Plus assignment).
    pub margins: &'a mut [f32],
    /// `(B)` sample order used by the Plus assignment.
    pub order: &'a mut [u32],
}

/// Forward pass of the whole head: normalise, cosines, Plus assignment of `margins_raw (B)`, margin logits and
/// the mean softmax cross-entropy over the batch, which is returned.
pub fn margin_loss_forward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    emb: &[f32],
    w: &[f32],
    labels: &[u32],
    margins_raw: &[f32],
    scratch: &mut HeadScratch<'_>,
) -> Result<f32, Error> {
    todo!()
}

/// Backward pass of the head after [`margin_loss_forward`] with the same arguments: writes the gradient of the
/// mean loss with respect to the raw embeddings `d_emb (B, D)` and the raw class centres `d_w (D, C)`.
pub fn margin_loss_backward(
    cfg: &MarginConfig,
    shape: &HeadShape,
    labels: &[u32],
    scratch: &mut HeadScratch<'_>,
    d_emb: &mut [f32],
    d_w: &mut [f32],
) -> Result<(), Error> {
    todo!()
}
