//! Fixed-capacity galleries of enrolled faces, for 1:1 verification and 1:N identification on a device.
//!
//! A gallery holds identities, each an id (`u32`, unique) and one template of `D` elements, in enrolment
//! order. Probes are compared with the templates by cosine similarity and accepted when
//! `cosine >= threshold`, with the threshold in `[-1, 1]`. The element type `T` ([`Element`]) is one of:
//!
//! | `T` | template | probe | cosine |
//! |---|---|---|---|
//! | `f32` (default) | the embedding L2-normalised ([`l2_normalize`]) | finite, not all zero | [`cosine`], f64 sums |
//! | `i8` | the int8 embedding as given ([`crate::embedding::quantize_i8`]) | not all zero | [`cosine_i8`], exact integer sums |
//!
//! Int8 templates need no scale: the per-vector scales of symmetric quantisation cancel in the cosine.
//!
//! There is one implementation of every operation, over borrowed storage whose sizes are chosen at run time
//! ([`GalleryView`] to search, [`GalleryViewMut`] to enrol, update and remove). [`Gallery<N, D, T>`] owns
//! its storage inline with the sizes fixed at compile time and delegates to the views; the C API
//! (`ffi` feature) puts the views over caller memory.
//!
//! ```
//! use elasticface_core::embedding::quantize_i8;
//! use elasticface_core::gallery::Gallery;
//!
//! let mut g: Gallery<4, 3> = Gallery::new();
//! g.enroll(7, [1.0, 0.0, 0.0]).unwrap();
//! g.enroll(9, [0.0, 2.0, 0.0]).unwrap();
//! let best = g.identify::<1>(&[0.9, 0.1, 0.0], 0.5).unwrap();
//! assert_eq!(best[0].id, 7);
//! assert!(g.verify(9, &[0.0, 1.0, 0.1], 0.5).unwrap().unwrap().accepted);
//!
//! // The same with int8 embeddings, as a device's quantised network emits them.
//! let mut q: Gallery<4, 3, i8> = Gallery::new();
//! q.enroll(7, [127, 0, 0]).unwrap();
//! let mut probe = [0i8; 3];
//! quantize_i8(&[0.9, 0.1, 0.0], &mut probe).unwrap();
//! assert_eq!(q.identify::<1>(&probe, 0.5).unwrap()[0].id, 7);
//! ```

use core::fmt;

use heapless::Vec;

use crate::embedding::{cosine, cosine_i8, l2_normalize, I8_MAX_DIM};
use crate::error::{check_finite, check_len, Error};

mod sealed {
    /// Only the element types of this module implement [`super::Element`].
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i8 {}
}

/// The element type of a gallery's templates and probes: `f32` or `i8` (see the module documentation).
///
/// Sealed: the gallery's guarantees (no panics, templates that can always be compared) rest on these two
/// implementations.
pub trait Element: Copy + PartialEq + fmt::Debug + sealed::Sealed {
    /// The value of unused storage.
    const ZERO: Self;

    /// Checks that `embedding` can be a template. Errors are named `"embedding"`.
    fn check_template(embedding: &[Self]) -> Result<(), Error>;

    /// Writes the template that enrolment stores for `embedding` into `out` (the same length, else
    /// [`Error::Length`]), or rejects the embedding as [`Element::check_template`] does and leaves `out`
    /// untouched.
    fn write_template(embedding: &[Self], out: &mut [Self]) -> Result<(), Error>;

    /// Checks that `probe` can be compared with any template. Errors are named `"probe"`.
    fn check_probe(probe: &[Self]) -> Result<(), Error>;

    /// Cosine similarity of a checked probe with a template, in `[-1, 1]`.
    fn similarity(probe: &[Self], template: &[Self]) -> Result<f32, Error>;
}

impl Element for f32 {
    const ZERO: Self = 0.0;

    /// Rejected: a non-finite element ([`Error::NonFinite`]), a sum of squares that is zero
    /// ([`Error::ZeroNorm`], underflow included) or that overflows f32 ([`Error::NonFinite`] named
    /// `"embedding norm"`: the template would be all zeros).
    fn check_template(embedding: &[f32]) -> Result<(), Error> {
        check_finite("embedding", embedding)?;
        // The sum that `l2_normalize` divides by (same operations, same order).
        let squares = embedding.iter().fold(0.0f32, |acc, &v| acc + v * v);
        if squares == 0.0 {
            return Err(Error::ZeroNorm { what: "embedding", index: 0 });
        }
        if !squares.is_finite() {
            return Err(Error::NonFinite { what: "embedding norm", index: 0 });
        }
        Ok(())
    }

    /// `out = embedding / ||embedding||`, computed by [`l2_normalize`].
    fn write_template(embedding: &[f32], out: &mut [f32]) -> Result<(), Error> {
        check_len("out", out, embedding.len())?;
        Self::check_template(embedding)?;
        l2_normalize(embedding, out).map(|_| ())
    }

    /// Finite and not all zero (then its norm, summed in f64 by [`cosine`], is positive).
    fn check_probe(probe: &[f32]) -> Result<(), Error> {
        check_finite("probe", probe)?;
        check_not_zero("probe", probe)
    }

    fn similarity(probe: &[f32], template: &[f32]) -> Result<f32, Error> {
        cosine(probe, template)
    }
}

impl Element for i8 {
    const ZERO: Self = 0;

    /// Rejected: all zeros ([`Error::ZeroNorm`]) or more than [`I8_MAX_DIM`] elements ([`Error::Shape`]).
    fn check_template(embedding: &[i8]) -> Result<(), Error> {
        check_i8_len(embedding)?;
        check_not_zero("embedding", embedding)
    }

    /// The embedding as given.
    fn write_template(embedding: &[i8], out: &mut [i8]) -> Result<(), Error> {
        check_len("out", out, embedding.len())?;
        Self::check_template(embedding)?;
        out.copy_from_slice(embedding);
        Ok(())
    }

    /// Not all zero and at most [`I8_MAX_DIM`] elements.
    fn check_probe(probe: &[i8]) -> Result<(), Error> {
        check_i8_len(probe)?;
        check_not_zero("probe", probe)
    }

    fn similarity(probe: &[i8], template: &[i8]) -> Result<f32, Error> {
        cosine_i8(probe, template)
    }
}

/// One candidate of an identification.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Match {
    /// The enrolled id.
    pub id: u32,
    /// Cosine similarity of the probe with that identity's template.
    pub cosine: f32,
}

/// The answer of a 1:1 verification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verification {
    /// Whether `cosine >= threshold`.
    pub accepted: bool,
    /// Cosine similarity of the probe with the claimed identity's template.
    pub cosine: f32,
}

/// Why [`GalleryViewMut::enroll`] refused an entry (the entry is borrowed: nothing to hand back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollRefused {
    /// Every slot is taken.
    Full,
    /// The id is enrolled already.
    Duplicate,
    /// The embedding has the wrong length or cannot be a template (see [`Element::check_template`]).
    Invalid(Error),
}

impl fmt::Display for EnrollRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollRefused::Full => f.write_str("the gallery is full"),
            EnrollRefused::Duplicate => f.write_str("the id is enrolled already"),
            EnrollRefused::Invalid(e) => write!(f, "the embedding cannot be enrolled: {e}"),
        }
    }
}

impl core::error::Error for EnrollRefused {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EnrollRefused::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Gallery::enroll`] refused an entry. As `heapless::Vec::push` does, the refusals that are not the
/// entry's fault hand it back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnrollError<const D: usize, T: Element = f32> {
    /// The gallery holds `N` identities already; the entry, as given, is handed back.
    Full {
        /// The id that was to be enrolled.
        id: u32,
        /// The embedding that was to be enrolled.
        embedding: [T; D],
    },
    /// The id is enrolled already (use [`Gallery::update`] to replace its template); the entry is handed
    /// back.
    Duplicate {
        /// The id that was to be enrolled.
        id: u32,
        /// The embedding that was to be enrolled.
        embedding: [T; D],
    },
    /// The embedding cannot be a template (see [`Element::check_template`]).
    Invalid(Error),
}

impl<const D: usize, T: Element> fmt::Display for EnrollError<D, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollError::Full { id, .. } => write!(f, "the gallery is full; id {id} was not enrolled"),
            EnrollError::Duplicate { id, .. } => write!(f, "id {id} is enrolled already"),
            EnrollError::Invalid(e) => write!(f, "the embedding cannot be enrolled: {e}"),
        }
    }
}

impl<const D: usize, T: Element> core::error::Error for EnrollError<D, T> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EnrollError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// The enrolled identities of a gallery, read-only, with the embedding size chosen at run time: `ids (L)`
/// and `templates (L, dim)` row-major, in enrolment order. Every search of the crate runs here.
///
/// - **Thresholds** are cosine similarities in `[-1, 1]`; anything else, NaN included, is
///   [`Error::Config`].
/// - **Probes** have `dim` elements and pass [`Element::check_probe`]; f32 probes need not be normalised.
#[derive(Clone, Copy, Debug)]
pub struct GalleryView<'a, T: Element = f32> {
    dim: usize,
    ids: &'a [u32],
    templates: &'a [T],
}

impl<'a, T: Element> GalleryView<'a, T> {
    /// A view of `ids.len()` identities with `dim`-element templates.
    ///
    /// Errors: `templates.len() != ids.len() * dim` ([`Error::Length`]) or a product that overflows
    /// ([`Error::Shape`]). The templates are trusted to be what [`Element::write_template`] wrote; a
    /// template that is not (a NaN, all zeros) makes the searches that reach it return an error.
    pub fn new(dim: usize, ids: &'a [u32], templates: &'a [T]) -> Result<Self, Error> {
        let n = ids.len().checked_mul(dim).ok_or(Error::Shape { what: "ids * dim overflows usize" })?;
        check_len("templates", templates, n)?;
        Ok(Self { dim, ids, templates })
    }

    /// Number of enrolled identities.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no identity is enrolled.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Elements per template.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The enrolled ids, in enrolment order.
    pub fn ids(&self) -> &'a [u32] {
        self.ids
    }

    /// Whether `id` is enrolled.
    pub fn contains(&self, id: u32) -> bool {
        self.position(id).is_some()
    }

    /// The template enrolled for `id`.
    pub fn get(&self, id: u32) -> Option<&'a [T]> {
        self.position(id).and_then(|i| self.template(i))
    }

    /// `(id, template)` of every identity, in enrolment order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'a [T])> + 'a {
        // `chunks_exact(0)` would panic: with dim 0 every template is the empty slice.
        let rows = self.templates.chunks_exact(self.dim.max(1)).chain(core::iter::repeat(&self.templates[..0]));
        self.ids.iter().copied().zip(rows)
    }

    /// The (at most) `out.len()` identities most similar to `probe` with `cosine >= threshold`, by cosine
    /// descending, equal cosines in enrolment order; returns how many were written to the front of `out`.
    ///
    /// Errors, in this order: `threshold` outside `[-1, 1]` or NaN ([`Error::Config`]); a probe of the wrong
    /// length or one [`Element::check_probe`] rejects, even when the gallery is empty; a template that cannot
    /// be compared. Cost: `L` cosines and at most `L * out.len()` moves.
    pub fn identify_into(&self, probe: &[T], threshold: f32, out: &mut [Match]) -> Result<usize, Error> {
        self.check_query(probe, threshold)?;
        let mut n = 0;
        for (id, template) in self.iter() {
            let c = T::similarity(probe, template)?;
            if c < threshold {
                continue;
            }
            // After every candidate with a cosine >= c: ties stay in enrolment order.
            let at = out[..n].iter().position(|m| m.cosine < c).unwrap_or(n);
            if at >= out.len() {
                continue;
            }
            n = (n + 1).min(out.len());
            out[at..n].rotate_right(1);
            out[at] = Match { id, cosine: c };
        }
        Ok(n)
    }

    /// 1:1 verification of a claimed `id`: the cosine of `probe` with its template, accepted when
    /// `cosine >= threshold`. `Ok(None)` when `id` is not enrolled.
    ///
    /// Errors: as [`GalleryView::identify_into`], checked before the id is looked up.
    pub fn verify(&self, id: u32, probe: &[T], threshold: f32) -> Result<Option<Verification>, Error> {
        self.check_query(probe, threshold)?;
        let Some(template) = self.get(id) else {
            return Ok(None);
        };
        let c = T::similarity(probe, template)?;
        Ok(Some(Verification { accepted: c >= threshold, cosine: c }))
    }

    /// Checks the threshold, then the probe.
    fn check_query(&self, probe: &[T], threshold: f32) -> Result<(), Error> {
        check_threshold(threshold)?;
        check_len("probe", probe, self.dim)?;
        T::check_probe(probe)
    }

    /// Index of `id` in `ids`.
    fn position(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|&e| e == id)
    }

    /// Template `i`.
    fn template(&self, i: usize) -> Option<&'a [T]> {
        self.templates.get(i * self.dim..(i + 1) * self.dim)
    }
}

/// A gallery over borrowed storage with the sizes chosen at run time: `ids (capacity)`,
/// `templates (capacity, dim)` row-major, and the number of slots in use, `len`. Enrolment, update and
/// removal run here; [`GalleryViewMut::view`] searches.
///
/// Slots `0..len` hold the identities in enrolment order; the content of the others is unspecified.
#[derive(Debug)]
pub struct GalleryViewMut<'a, T: Element = f32> {
    dim: usize,
    ids: &'a mut [u32],
    templates: &'a mut [T],
    len: &'a mut usize,
}

impl<'a, T: Element> GalleryViewMut<'a, T> {
    /// A gallery of `ids.len()` slots of `dim`-element templates, `*len` of them in use.
    ///
    /// Errors: `templates.len() != ids.len() * dim` ([`Error::Length`]), a product that overflows or
    /// `*len > ids.len()` ([`Error::Shape`]). Templates in use are trusted as in [`GalleryView::new`].
    pub fn new(dim: usize, ids: &'a mut [u32], templates: &'a mut [T], len: &'a mut usize) -> Result<Self, Error> {
        let n = ids.len().checked_mul(dim).ok_or(Error::Shape { what: "capacity * dim overflows usize" })?;
        check_len("templates", templates, n)?;
        if *len > ids.len() {
            return Err(Error::Shape { what: "a gallery cannot hold more identities than its capacity" });
        }
        Ok(Self { dim, ids, templates, len })
    }

    /// The identities in use, to search.
    pub fn view(&self) -> GalleryView<'_, T> {
        let len = *self.len;
        GalleryView { dim: self.dim, ids: &self.ids[..len], templates: &self.templates[..len * self.dim] }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.ids.len()
    }

    /// Number of enrolled identities.
    pub fn len(&self) -> usize {
        *self.len
    }

    /// Whether no identity is enrolled.
    pub fn is_empty(&self) -> bool {
        *self.len == 0
    }

    /// Whether every slot is in use.
    pub fn is_full(&self) -> bool {
        *self.len == self.ids.len()
    }

    /// Enrols `id` with the template of `embedding` ([`Element::write_template`]) in the next slot.
    ///
    /// Errors, checked in this order: an embedding of the wrong length or one that cannot be a template
    /// ([`EnrollRefused::Invalid`]); an id that is enrolled already ([`EnrollRefused::Duplicate`]); a full
    /// gallery ([`EnrollRefused::Full`]). Nothing changes on error.
    pub fn enroll(&mut self, id: u32, embedding: &[T]) -> Result<(), EnrollRefused> {
        check_len("embedding", embedding, self.dim).map_err(EnrollRefused::Invalid)?;
        T::check_template(embedding).map_err(EnrollRefused::Invalid)?;
        if self.view().contains(id) {
            return Err(EnrollRefused::Duplicate);
        }
        let (len, dim) = (*self.len, self.dim);
        let (Some(id_slot), Some(slot)) = (self.ids.get_mut(len), self.templates.get_mut(len * dim..(len + 1) * dim))
        else {
            return Err(EnrollRefused::Full);
        };
        T::write_template(embedding, slot).map_err(EnrollRefused::Invalid)?;
        *id_slot = id;
        *self.len = len + 1;
        Ok(())
    }

    /// Replaces the template of `id` in place (the identity keeps its position).
    ///
    /// Returns `Ok(true)` when `id` was enrolled and is updated, `Ok(false)` when it is not enrolled
    /// (nothing changes). Errors: an embedding of the wrong length or one that cannot be a template, whether
    /// or not `id` is enrolled; the template is unchanged.
    pub fn update(&mut self, id: u32, embedding: &[T]) -> Result<bool, Error> {
        check_len("embedding", embedding, self.dim)?;
        T::check_template(embedding)?;
        let dim = self.dim;
        let Some(slot) = self.view().position(id).and_then(|i| self.templates.get_mut(i * dim..(i + 1) * dim)) else {
            return Ok(false);
        };
        T::write_template(embedding, slot)?;
        Ok(true)
    }

    /// Removes `id`; returns whether it was enrolled. Later identities move up one slot, keeping their order.
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(i) = self.view().position(id) else {
            return false;
        };
        let (len, dim) = (*self.len, self.dim);
        self.ids.copy_within(i + 1..len, i);
        self.templates.copy_within((i + 1) * dim..len * dim, i * dim);
        *self.len = len - 1;
        true
    }

    /// Removes every identity.
    pub fn clear(&mut self) {
        *self.len = 0;
    }
}

/// Up to `N` enrolled identities with `D`-element templates of type `T` (`f32` or `i8`), stored inline:
/// `N * (4 + D * size_of::<T>())` bytes and a length. No allocator.
///
/// - **Ids are unique**: enrolling an id that is present is refused ([`EnrollError::Duplicate`]);
///   [`Gallery::update`] replaces a template, [`Gallery::remove`] deletes an identity.
/// - **Order**: identities keep their enrolment order (removal shifts the later ones, update keeps the
///   position); [`Gallery::identify`] breaks cosine ties by it.
/// - **Thresholds** are cosine similarities in `[-1, 1]`; anything else, NaN included, is
///   [`Error::Config`].
/// - **Probes** pass [`Element::check_probe`]: f32 probes finite and not all zero (they need not be
///   normalised), int8 probes not all zero.
///
/// Every operation is the one of [`GalleryView`] / [`GalleryViewMut`] over this storage.
#[derive(Clone)]
pub struct Gallery<const N: usize, const D: usize, T: Element = f32> {
    len: usize,
    ids: [u32; N],
    templates: [[T; D]; N],
}

impl<const N: usize, const D: usize, T: Element> Default for Gallery<N, D, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const D: usize, T: Element> fmt::Debug for Gallery<N, D, T> {
    /// The enrolled identities, `id: template`, in enrolment order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<const N: usize, const D: usize, T: Element> Gallery<N, D, T> {
    /// An empty gallery.
    pub const fn new() -> Self {
        Self { len: 0, ids: [0; N], templates: [[T::ZERO; D]; N] }
    }

    /// The enrolled identities, to search with run-time sizes.
    pub fn view(&self) -> GalleryView<'_, T> {
        let len = self.len;
        GalleryView { dim: D, ids: &self.ids[..len], templates: &self.templates.as_flattened()[..len * D] }
    }

    /// The storage as a [`GalleryViewMut`].
    fn view_mut(&mut self) -> GalleryViewMut<'_, T> {
        GalleryViewMut { dim: D, ids: &mut self.ids, templates: self.templates.as_flattened_mut(), len: &mut self.len }
    }

    /// Number of enrolled identities.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no identity is enrolled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `N` identities are enrolled.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// The most identities the gallery can hold: `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The enrolled ids, in enrolment order.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// `(id, template)` of every identity, in enrolment order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[T; D])> + '_ {
        self.ids().iter().copied().zip(&self.templates)
    }

    /// Whether `id` is enrolled.
    pub fn contains(&self, id: u32) -> bool {
        self.view().contains(id)
    }

    /// The template enrolled for `id`: the normalised embedding (f32) or the int8 embedding as enrolled.
    pub fn get(&self, id: u32) -> Option<&[T; D]> {
        self.iter().find(|&(e, _)| e == id).map(|(_, t)| t)
    }

    /// Enrols `id` with `embedding`, stored as its template ([`Element::write_template`]).
    ///
    /// Errors, checked in this order: an embedding that cannot be a template ([`EnrollError::Invalid`]); an
    /// id that is enrolled already ([`EnrollError::Duplicate`]); a full gallery ([`EnrollError::Full`]). The
    /// last two hand the entry back.
    pub fn enroll(&mut self, id: u32, embedding: [T; D]) -> Result<(), EnrollError<D, T>> {
        self.view_mut().enroll(id, &embedding).map_err(|e| match e {
            EnrollRefused::Full => EnrollError::Full { id, embedding },
            EnrollRefused::Duplicate => EnrollError::Duplicate { id, embedding },
            EnrollRefused::Invalid(e) => EnrollError::Invalid(e),
        })
    }

    /// Replaces the template of `id` in place (the identity keeps its position).
    ///
    /// Returns `Ok(true)` when `id` was enrolled and is updated, `Ok(false)` when it is not enrolled (nothing
    /// changes). Errors: an embedding that cannot be a template, whether or not `id` is enrolled.
    pub fn update(&mut self, id: u32, embedding: &[T; D]) -> Result<bool, Error> {
        self.view_mut().update(id, embedding)
    }

    /// Removes `id` and returns its template; `None` when it is not enrolled. Later identities move up one
    /// place, keeping their order.
    pub fn remove(&mut self, id: u32) -> Option<[T; D]> {
        let template = *self.get(id)?;
        self.view_mut().remove(id);
        Some(template)
    }

    /// Removes every identity.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The (at most) `K` identities most similar to `probe` with `cosine >= threshold`, by cosine
    /// descending; equal cosines in enrolment order. `K = 0` gives an empty list.
    ///
    /// Errors: `threshold` outside `[-1, 1]` or NaN ([`Error::Config`]); a probe that
    /// [`Element::check_probe`] rejects (f32: non-finite, [`Error::NonFinite`], or all zero,
    /// [`Error::ZeroNorm`]), even when the gallery is empty. Cost: `N` cosines and at most `N K` moves.
    pub fn identify<const K: usize>(&self, probe: &[T; D], threshold: f32) -> Result<Vec<Match, K>, Error> {
        let mut top = [Match { id: 0, cosine: 0.0 }; K];
        let n = self.view().identify_into(probe, threshold, &mut top)?;
        let mut out = Vec::new();
        for m in &top[..n] {
            // n <= K: every push fits.
            let _ = out.push(*m);
        }
        Ok(out)
    }

    /// 1:1 verification of a claimed `id`: the cosine of `probe` with its template, accepted when
    /// `cosine >= threshold`. `Ok(None)` when `id` is not enrolled.
    ///
    /// Errors: as [`Gallery::identify`], checked before the id is looked up.
    pub fn verify(&self, id: u32, probe: &[T; D], threshold: f32) -> Result<Option<Verification>, Error> {
        self.view().verify(id, probe, threshold)
    }
}

/// A similarity threshold must be a cosine: in `[-1, 1]`, not NaN.
pub(crate) fn check_threshold(threshold: f32) -> Result<(), Error> {
    if (-1.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(Error::Config { what: "a cosine threshold must lie in [-1, 1]" })
    }
}

/// A vector that is compared by cosine must not be all zeros.
fn check_not_zero<T: Element>(what: &'static str, x: &[T]) -> Result<(), Error> {
    if x.iter().all(|&v| v == T::ZERO) {
        return Err(Error::ZeroNorm { what, index: 0 });
    }
    Ok(())
}

/// Int8 vectors longer than [`I8_MAX_DIM`] could overflow the exact `i32` sums of [`cosine_i8`].
fn check_i8_len(x: &[i8]) -> Result<(), Error> {
    if x.len() > I8_MAX_DIM {
        return Err(Error::Shape { what: "int8 embeddings longer than I8_MAX_DIM could overflow i32 sums" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gallery() -> Gallery<3, 2> {
        let mut g = Gallery::new();
        g.enroll(10, [1.0, 0.0]).unwrap();
        g.enroll(20, [0.0, 3.0]).unwrap();
        g.enroll(30, [1.0, 1.0]).unwrap();
        g
    }

    #[test]
    fn enrolment_normalises_and_counts() {
        let mut g: Gallery<3, 2> = Gallery::default();
        assert!(g.is_empty());
        assert_eq!(g.capacity(), 3);
        g.enroll(5, [3.0, -4.0]).unwrap();
        assert_eq!(g.get(5), Some(&[0.6, -0.8]));
        assert_eq!(g.len(), 1);
        assert!(g.contains(5) && !g.contains(6) && !g.is_full());
        assert_eq!(g.ids(), [5]);
        assert!(g.iter().eq([(5, &[0.6, -0.8])]));
    }

    #[test]
    fn full_gallery_hands_the_entry_back() {
        let mut g = gallery();
        assert!(g.is_full());
        assert_eq!(g.enroll(40, [2.0, 5.0]), Err(EnrollError::Full { id: 40, embedding: [2.0, 5.0] }));
        assert_eq!(g.len(), 3);
        // A zero-capacity gallery is always full.
        let mut empty: Gallery<0, 2> = Gallery::new();
        assert!(matches!(empty.enroll(1, [1.0, 0.0]), Err(EnrollError::Full { id: 1, .. })));
        assert_eq!(empty.identify::<2>(&[1.0, 0.0], 0.0).unwrap().len(), 0);
    }

    #[test]
    fn duplicates_and_invalid_embeddings_are_refused() {
        let mut g: Gallery<4, 2> = Gallery::new();
        g.enroll(1, [1.0, 0.0]).unwrap();
        assert_eq!(g.enroll(1, [0.0, 1.0]), Err(EnrollError::Duplicate { id: 1, embedding: [0.0, 1.0] }));
        assert_eq!(g.get(1), Some(&[1.0, 0.0]));
        let zero = Err(EnrollError::Invalid(Error::ZeroNorm { what: "embedding", index: 0 }));
        assert_eq!(g.enroll(2, [0.0, 0.0]), zero);
        let nan = Err(EnrollError::Invalid(Error::NonFinite { what: "embedding", index: 1 }));
        assert_eq!(g.enroll(2, [0.0, f32::NAN]), nan);
        // Validity is checked before the duplicate.
        assert!(matches!(g.enroll(1, [f32::INFINITY, 0.0]), Err(EnrollError::Invalid(_))));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn update_and_remove() {
        let mut g = gallery();
        assert_eq!(g.update(20, &[0.0, -2.0]), Ok(true));
        assert_eq!(g.get(20), Some(&[0.0, -1.0]));
        assert_eq!(g.update(99, &[0.0, 1.0]), Ok(false));
        assert_eq!(g.update(20, &[0.0, 0.0]), Err(Error::ZeroNorm { what: "embedding", index: 0 }));
        assert_eq!(g.get(20), Some(&[0.0, -1.0]));
        assert_eq!(g.remove(10), Some([1.0, 0.0]));
        assert_eq!(g.remove(10), None);
        assert_eq!(g.ids(), [20, 30]);
        assert_eq!(g.get(30), Some(&[core::f32::consts::FRAC_1_SQRT_2; 2]));
        g.enroll(10, [1.0, 0.0]).unwrap();
        g.clear();
        assert!(g.is_empty());
    }

    #[test]
    fn identify_ranks_by_cosine_and_applies_the_threshold() {
        let g = gallery();
        let top = g.identify::<3>(&[2.0, 1.0], -1.0).unwrap();
        let ids: [u32; 3] = core::array::from_fn(|i| top[i].id);
        // cos with (1,1)/sqrt2 = 0.949, with (1,0) = 0.894, with (0,1) = 0.447.
        assert_eq!(ids, [30, 10, 20]);
        assert!(top.windows(2).all(|w| w[0].cosine >= w[1].cosine));
        let top1 = g.identify::<1>(&[2.0, 1.0], -1.0).unwrap();
        assert_eq!(top1.len(), 1);
        assert_eq!(top1[0], top[0]);
        let above = g.identify::<3>(&[2.0, 1.0], 0.9).unwrap();
        assert_eq!(above.len(), 1);
        assert_eq!(above[0].id, 30);
        assert!(g.identify::<3>(&[-1.0, -1.0], 0.0).unwrap().is_empty());
        assert!(g.identify::<0>(&[2.0, 1.0], -1.0).unwrap().is_empty());
    }

    #[test]
    fn identify_breaks_ties_by_enrolment_order() {
        let mut g: Gallery<4, 2> = Gallery::new();
        g.enroll(3, [0.0, 1.0]).unwrap();
        g.enroll(1, [1.0, 0.0]).unwrap();
        g.enroll(2, [0.0, 1.0]).unwrap();
        g.enroll(4, [0.0, 5.0]).unwrap();
        let top = g.identify::<2>(&[0.0, 1.0], 0.5).unwrap();
        assert_eq!((top[0].id, top[1].id), (3, 2));
        assert_eq!((top[0].cosine, top[1].cosine), (1.0, 1.0));
        let top = g.identify::<4>(&[0.0, 1.0], -1.0).unwrap();
        let ids: [u32; 4] = core::array::from_fn(|i| top[i].id);
        assert_eq!(ids, [3, 2, 4, 1]);
    }

    #[test]
    fn verify_claims() {
        let g = gallery();
        assert_eq!(g.verify(10, &[5.0, 0.0], 0.99), Ok(Some(Verification { accepted: true, cosine: 1.0 })));
        assert_eq!(g.verify(20, &[5.0, 0.0], 0.0), Ok(Some(Verification { accepted: true, cosine: 0.0 })));
        assert_eq!(g.verify(20, &[5.0, 0.0], 0.01), Ok(Some(Verification { accepted: false, cosine: 0.0 })));
        assert_eq!(g.verify(99, &[5.0, 0.0], 0.5), Ok(None));
    }

    #[test]
    fn bad_thresholds_and_probes_are_errors() {
        let g = gallery();
        for t in [1.0001, -1.5, f32::NAN, f32::INFINITY] {
            assert!(matches!(g.identify::<2>(&[1.0, 0.0], t), Err(Error::Config { .. })), "{t}");
            assert!(matches!(g.verify(10, &[1.0, 0.0], t), Err(Error::Config { .. })), "{t}");
            assert!(matches!(g.verify(99, &[1.0, 0.0], t), Err(Error::Config { .. })), "{t}");
        }
        assert!(g.identify::<2>(&[1.0, 0.0], 1.0).is_ok() && g.identify::<2>(&[1.0, 0.0], -1.0).is_ok());
        assert_eq!(g.identify::<2>(&[0.0, 0.0], 0.5), Err(Error::ZeroNorm { what: "probe", index: 0 }));
        assert_eq!(g.verify(10, &[f32::NAN, 0.0], 0.5), Err(Error::NonFinite { what: "probe", index: 0 }));
        let empty: Gallery<2, 2> = Gallery::new();
        assert_eq!(empty.identify::<2>(&[0.0, 0.0], 0.5), Err(Error::ZeroNorm { what: "probe", index: 0 }));
    }

    #[test]
    fn error_messages() {
        extern crate std;
        use std::string::ToString;
        let e: EnrollError<2> = EnrollError::Full { id: 4, embedding: [0.0; 2] };
        assert_eq!(e.to_string(), "the gallery is full; id 4 was not enrolled");
        let e: EnrollError<2> = EnrollError::Invalid(Error::ZeroNorm { what: "embedding", index: 0 });
        assert!(core::error::Error::source(&e).is_some());
        assert_eq!(EnrollRefused::Duplicate.to_string(), "the id is enrolled already");
        let g: Gallery<2, 1> = Gallery::new();
        assert_eq!(std::format!("{g:?}"), "{}");
    }

    #[test]
    fn a_norm_that_overflows_is_refused_instead_of_stored_as_zeros() {
        let mut g = gallery();
        let huge = [3e38, 3e38];
        let e = Err(Error::NonFinite { what: "embedding norm", index: 0 });
        assert_eq!(g.update(10, &huge), e);
        assert_eq!(g.get(10), Some(&[1.0, 0.0]));
        let mut g: Gallery<2, 2> = Gallery::new();
        assert_eq!(g.enroll(1, huge), Err(EnrollError::Invalid(Error::NonFinite { what: "embedding norm", index: 0 })));
        assert!(g.is_empty());
        // Probes are compared in f64 and may be huge.
        g.enroll(1, [1.0, 1.0]).unwrap();
        assert_eq!(g.identify::<1>(&huge, 0.9).unwrap()[0].id, 1);
    }

    #[test]
    fn int8_gallery_identifies_and_verifies_with_exact_integer_cosines() {
        let mut g: Gallery<3, 3, i8> = Gallery::new();
        g.enroll(1, [127, 0, 0]).unwrap();
        g.enroll(2, [0, -128, 0]).unwrap();
        g.enroll(3, [90, 90, 0]).unwrap();
        assert_eq!(g.enroll(4, [1, 1, 1]), Err(EnrollError::Full { id: 4, embedding: [1, 1, 1] }));
        assert_eq!(g.enroll(1, [1, 1, 1]), Err(EnrollError::Duplicate { id: 1, embedding: [1, 1, 1] }));
        let zero = EnrollError::Invalid(Error::ZeroNorm { what: "embedding", index: 0 });
        assert_eq!(g.enroll(4, [0, 0, 0]), Err(zero));
        // Stored as given, not rescaled.
        assert_eq!(g.get(3), Some(&[90, 90, 0]));
        let probe = [50, 40, 0];
        let top = g.identify::<3>(&probe, -1.0).unwrap();
        let ids: [u32; 3] = core::array::from_fn(|i| top[i].id);
        assert_eq!(ids, [3, 1, 2]);
        for m in &top {
            assert_eq!(m.cosine, cosine_i8(&probe, g.get(m.id).unwrap()).unwrap());
        }
        assert_eq!(g.verify(2, &[0, 5, 0], 0.0), Ok(Some(Verification { accepted: false, cosine: -1.0 })));
        assert_eq!(g.verify(2, &[0, 0, 0], 0.0), Err(Error::ZeroNorm { what: "probe", index: 0 }));
        assert!(matches!(g.verify(2, &[0, 1, 0], 2.0), Err(Error::Config { .. })));
        assert_eq!(g.update(2, &[0, 0, 3]), Ok(true));
        assert_eq!(g.remove(1), Some([127, 0, 0]));
        assert_eq!(g.ids(), [2, 3]);
    }

    #[test]
    fn views_with_run_time_sizes_share_the_implementation() {
        let (mut ids, mut templates, mut len) = ([0u32; 3], [0.0f32; 6], 0usize);
        let mut v = GalleryViewMut::new(2, &mut ids, &mut templates, &mut len).unwrap();
        assert_eq!((v.capacity(), v.len(), v.is_empty(), v.is_full()), (3, 0, true, false));
        v.enroll(10, &[1.0, 0.0]).unwrap();
        v.enroll(20, &[0.0, 3.0]).unwrap();
        v.enroll(30, &[1.0, 1.0]).unwrap();
        assert!(v.is_full());
        assert_eq!(v.enroll(40, &[1.0, 0.0]), Err(EnrollRefused::Full));
        assert_eq!(v.enroll(10, &[1.0, 0.0]), Err(EnrollRefused::Duplicate));
        let len_err = Error::Length { what: "embedding", expected: 2, got: 1 };
        assert_eq!(v.enroll(40, &[1.0]), Err(EnrollRefused::Invalid(len_err)));
        // Invalid before duplicate before full.
        assert!(matches!(v.enroll(10, &[f32::NAN, 0.0]), Err(EnrollRefused::Invalid(_))));
        // The same answers as the owned gallery of the same identities.
        let owned = gallery();
        let mut top = [Match { id: 0, cosine: 0.0 }; 2];
        assert_eq!(v.view().identify_into(&[2.0, 1.0], -1.0, &mut top), Ok(2));
        assert_eq!(&top[..], &owned.identify::<2>(&[2.0, 1.0], -1.0).unwrap()[..]);
        assert_eq!(v.view().verify(20, &[0.0, 1.0], 0.5), owned.verify(20, &[0.0, 1.0], 0.5));
        assert_eq!(v.view().identify_into(&[2.0, 1.0], -1.0, &mut []), Ok(0));
        assert_eq!(
            v.view().identify_into(&[2.0], -1.0, &mut top),
            Err(Error::Length { what: "probe", expected: 2, got: 1 })
        );
        assert!(v.remove(10));
        assert!(!v.remove(10));
        assert_eq!(v.update(30, &[0.0, 2.0]), Ok(true));
        assert_eq!(v.update(99, &[0.0, 2.0]), Ok(false));
        assert_eq!(v.update(99, &[0.0, 0.0]), Err(Error::ZeroNorm { what: "embedding", index: 0 }));
        assert_eq!(v.view().ids(), [20, 30]);
        assert_eq!(v.view().get(30), Some(&[0.0, 1.0][..]));
        v.clear();
        assert!(v.view().is_empty());
        assert_eq!(len, 0);

        // Inconsistent storage is an error, not a panic.
        let (mut ids, mut templates) = ([0u32; 2], [0.0f32; 3]);
        assert!(matches!(GalleryViewMut::new(2, &mut ids, &mut templates, &mut 0), Err(Error::Length { .. })));
        let mut templates = [0.0f32; 4];
        assert!(matches!(GalleryViewMut::new(2, &mut ids, &mut templates, &mut 3), Err(Error::Shape { .. })));
        assert!(matches!(GalleryView::new(usize::MAX, &[1, 2], &[0.0f32; 0]), Err(Error::Shape { .. })));
        // A template that was not written by enrolment makes the searches that reach it fail.
        let bad = GalleryView::new(2, &[1], &[0.0f32, 0.0]).unwrap();
        assert!(bad.identify_into(&[1.0, 0.0], 0.0, &mut top).is_err());
        // Dimension zero: nothing can be enrolled or searched.
        let (mut ids, mut len) = ([0u32; 2], 0);
        let mut v = GalleryViewMut::<f32>::new(0, &mut ids, &mut [], &mut len).unwrap();
        assert!(matches!(v.enroll(1, &[]), Err(EnrollRefused::Invalid(Error::ZeroNorm { .. }))));
        assert_eq!(v.view().identify_into(&[], 0.0, &mut top), Err(Error::ZeroNorm { what: "probe", index: 0 }));
    }
}
