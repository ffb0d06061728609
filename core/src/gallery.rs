//! A fixed-capacity gallery of enrolled faces, for 1:1 verification and 1:N identification on a device.
//!
//! [`Gallery<N, D>`] holds up to `N` identities, each an id (`u32`) and one `D`-dimensional embedding,
//! stored L2-normalised, in enrolment order, inline (no allocator: `heapless` storage). Probes are compared
//! by cosine similarity ([`crate::embedding::cosine`]) and accepted when `cosine >= threshold`, with the
//! threshold in `[-1, 1]`.
//!
//! ```
//! use elasticface_core::gallery::Gallery;
//!
//! let mut g: Gallery<4, 3> = Gallery::new();
//! g.enroll(7, [1.0, 0.0, 0.0]).unwrap();
//! g.enroll(9, [0.0, 2.0, 0.0]).unwrap();
//! let best = g.identify::<1>(&[0.9, 0.1, 0.0], 0.5).unwrap();
//! assert_eq!(best[0].id, 7);
//! assert!(g.verify(9, &[0.0, 1.0, 0.1], 0.5).unwrap().unwrap().accepted);
//! ```

use core::fmt;

use heapless::Vec;

use crate::embedding::{cosine, l2_normalize};
use crate::error::{check_finite, Error};

/// One enrolled identity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<const D: usize> {
    id: u32,
    embedding: [f32; D],
}

impl<const D: usize> Entry<D> {
    /// The identity's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its embedding, L2-normalised on enrolment.
    pub fn embedding(&self) -> &[f32; D] {
        &self.embedding
    }
}

/// One candidate of [`Gallery::identify`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// The enrolled id.
    pub id: u32,
    /// Cosine similarity of the probe with that identity's embedding.
    pub cosine: f32,
}

/// The answer of [`Gallery::verify`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verification {
    /// Whether `cosine >= threshold`.
    pub accepted: bool,
    /// Cosine similarity of the probe with the claimed identity's embedding.
    pub cosine: f32,
}

/// Why [`Gallery::enroll`] refused an entry. As `heapless::Vec::push` does, the refusals that are not the
/// entry's fault hand it back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EnrollError<const D: usize> {
    /// The gallery holds `N` identities already; the entry, as given, is handed back.
    Full {
        /// The id that was to be enrolled.
        id: u32,
        /// The embedding that was to be enrolled.
        embedding: [f32; D],
    },
    /// The id is enrolled already (use [`Gallery::update`] to replace its embedding); the entry is handed
    /// back.
    Duplicate {
        /// The id that was to be enrolled.
        id: u32,
        /// The embedding that was to be enrolled.
        embedding: [f32; D],
    },
    /// The embedding cannot be normalised: a non-finite element ([`Error::NonFinite`]) or norm zero
    /// ([`Error::ZeroNorm`]).
    Invalid(Error),
}

impl<const D: usize> fmt::Display for EnrollError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnrollError::Full { id, .. } => write!(f, "the gallery is full; id {id} was not enrolled"),
            EnrollError::Duplicate { id, .. } => write!(f, "id {id} is enrolled already"),
            EnrollError::Invalid(e) => write!(f, "the embedding cannot be enrolled: {e}"),
        }
    }
}

impl<const D: usize> core::error::Error for EnrollError<D> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EnrollError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Up to `N` enrolled identities with `D`-dimensional embeddings, stored inline (`N * (4 + 4 D)` bytes and
/// a length).
///
/// - **Ids are unique**: enrolling an id that is present is refused ([`EnrollError::Duplicate`]);
///   [`Gallery::update`] replaces an embedding, [`Gallery::remove`] deletes an identity.
/// - **Order**: entries keep their enrolment order (removal shifts the later ones, update keeps the
///   position); [`Gallery::identify`] breaks cosine ties by it.
/// - **Thresholds** are cosine similarities in `[-1, 1]`; anything else, NaN included, is
///   [`Error::Config`].
/// - **Probes** must be finite and not all zero; they need not be normalised.
#[derive(Clone, Debug)]
pub struct Gallery<const N: usize, const D: usize> {
    entries: Vec<Entry<D>, N>,
}

impl<const N: usize, const D: usize> Default for Gallery<N, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const D: usize> Gallery<N, D> {
    /// An empty gallery.
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// Number of enrolled identities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no identity is enrolled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `N` identities are enrolled.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// The most identities the gallery can hold: `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The entries, in enrolment order.
    pub fn entries(&self) -> &[Entry<D>] {
        &self.entries
    }

    /// Whether `id` is enrolled.
    pub fn contains(&self, id: u32) -> bool {
        self.position(id).is_some()
    }

    /// The normalised embedding enrolled for `id`.
    pub fn get(&self, id: u32) -> Option<&[f32; D]> {
        self.position(id).map(|i| &self.entries[i].embedding)
    }

    /// Enrols `id` with `embedding`, stored normalised ([`l2_normalize`]).
    ///
    /// Errors, checked in this order: an embedding with a non-finite element or of norm zero (one whose
    /// sum of squares underflows f32 included) ([`EnrollError::Invalid`]); an id that is enrolled already
    /// ([`EnrollError::Duplicate`]); a full gallery ([`EnrollError::Full`]). The last two hand the entry back.
    pub fn enroll(&mut self, id: u32, embedding: [f32; D]) -> Result<(), EnrollError<D>> {
        let unit = normalized(&embedding).map_err(EnrollError::Invalid)?;
        if self.contains(id) {
            return Err(EnrollError::Duplicate { id, embedding });
        }
        self.entries.push(Entry { id, embedding: unit }).map_err(|_| EnrollError::Full { id, embedding })
    }

    /// Replaces the embedding of `id` (normalised, in place: the entry keeps its position).
    ///
    /// Returns `Ok(true)` when `id` was enrolled and is updated, `Ok(false)` when it is not enrolled (nothing
    /// changes). Errors: a non-finite embedding or one of norm zero, whether or not `id` is enrolled.
    pub fn update(&mut self, id: u32, embedding: &[f32; D]) -> Result<bool, Error> {
        let unit = normalized(embedding)?;
        match self.position(id) {
            Some(i) => {
                self.entries[i].embedding = unit;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes `id` and returns its normalised embedding; `None` when it is not enrolled. Later entries move
    /// up one place, keeping their order.
    pub fn remove(&mut self, id: u32) -> Option<[f32; D]> {
        self.position(id).map(|i| self.entries.remove(i).embedding)
    }

    /// Removes every identity.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The (at most) `K` identities most similar to `probe` with `cosine >= threshold`, by cosine
    /// descending; equal cosines in enrolment order. `K = 0` gives an empty list.
    ///
    /// Errors: `threshold` outside `[-1, 1]` or NaN ([`Error::Config`]); a non-finite `probe`
    /// ([`Error::NonFinite`]) or an all-zero one ([`Error::ZeroNorm`]), even when the gallery is empty.
    /// Cost: `N` cosines and at most `N K` moves.
    pub fn identify<const K: usize>(&self, probe: &[f32; D], threshold: f32) -> Result<Vec<Match, K>, Error> {
        check_threshold(threshold)?;
        check_probe(probe)?;
        let mut top: Vec<Match, K> = Vec::new();
        for e in &self.entries {
            let c = cosine(probe, &e.embedding)?;
            if c < threshold {
                continue;
            }
            // After every candidate with a cosine >= c: ties stay in enrolment order.
            let at = top.iter().position(|m| m.cosine < c).unwrap_or(top.len());
            if at >= K {
                continue;
            }
            if top.is_full() {
                top.pop();
            }
            // There is room now (at <= len < K), so insert cannot hand the match back.
            let _ = top.insert(at, Match { id: e.id, cosine: c });
        }
        Ok(top)
    }

    /// 1:1 verification of a claimed `id`: the cosine of `probe` with its embedding, accepted when
    /// `cosine >= threshold`. `Ok(None)` when `id` is not enrolled.
    ///
    /// Errors: as [`Gallery::identify`], checked before the id is looked up.
    pub fn verify(&self, id: u32, probe: &[f32; D], threshold: f32) -> Result<Option<Verification>, Error> {
        check_threshold(threshold)?;
        check_probe(probe)?;
        let Some(i) = self.position(id) else {
            return Ok(None);
        };
        let c = cosine(probe, &self.entries[i].embedding)?;
        Ok(Some(Verification { accepted: c >= threshold, cosine: c }))
    }

    /// Index of `id` in `entries`.
    fn position(&self, id: u32) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }
}

/// `x / ||x||` as an array, errors named `"embedding"`.
fn normalized<const D: usize>(x: &[f32; D]) -> Result<[f32; D], Error> {
    let mut unit = [0.0f32; D];
    l2_normalize(x, &mut unit).map_err(|e| match e {
        Error::NonFinite { index, .. } => Error::NonFinite { what: "embedding", index },
        Error::ZeroNorm { index, .. } => Error::ZeroNorm { what: "embedding", index },
        other => other,
    })?;
    Ok(unit)
}

/// A similarity threshold must be a cosine: in `[-1, 1]`, not NaN.
fn check_threshold(threshold: f32) -> Result<(), Error> {
    if (-1.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(Error::Config { what: "a cosine threshold must lie in [-1, 1]" })
    }
}

/// A probe must be finite and not all zero (then its norm, summed in f64 by `cosine`, is positive).
fn check_probe(probe: &[f32]) -> Result<(), Error> {
    check_finite("probe", probe)?;
    if probe.iter().all(|&v| v == 0.0) {
        return Err(Error::ZeroNorm { what: "probe", index: 0 });
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
        assert_eq!(g.entries()[0].id(), 5);
        assert_eq!(g.entries()[0].embedding(), &[0.6, -0.8]);
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
        let ids: [u32; 2] = core::array::from_fn(|i| g.entries()[i].id());
        assert_eq!(ids, [20, 30]);
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
    }
}
