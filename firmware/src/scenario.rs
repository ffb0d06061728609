//! What the bare-metal test computes. The firmware (`main.rs`) runs it on the emulated Cortex-M4F and prints
//! every recorded value; the host test (`tests/tests/firmware_qemu.rs`) includes this very file, runs it on
//! the host and compares the two lists bit for bit. The code is the same on both sides: only the target
//! differs (ARMv7E-M with a single-precision FPU and software f64, against x86-64 or AArch64).
//!
//! 1. **Margins**: every preset's margins drawn from fixed seeds at three steps (one far along the stream),
//!    and single margins computed directly.
//! 2. **Margin losses**: a forward and backward pass of every loss of the family on one batch: the loss, the
//!    assigned margins and order, both gradients.
//! 3. **Conformance**: a device's embeddings (int8 with a scale, f32 with a small error, exact copies) against
//!    the host's, with mated and impostor templates; the summary and the verdict; rejected bad input.
//! 4. **Galleries**: f32 and int8 galleries of 512-dimensional templates: enrolment up to full, 1:N
//!    identification, 1:1 verification, update, removal.
//! 5. **Alignment**: faces aligned from five landmarks (a similarity estimated in f64, a bilinear warp): the
//!    transform's bits and every pixel, for landmarks turned, scaled, mirrored and degenerate.
//!
//! Parts 2 to 4 run their core calls inside [`Sink::measure`], where the firmware measures the stack.

// A refused enrolment hands the 2 KiB embedding back inside the error, by design: there is no allocator to
// box it in.
#![allow(clippy::result_large_err)]

use elasticface_core::align::{align_face, Similarity};
use elasticface_core::conformance::{ConformanceCheck, ConformanceConfig, DiffSpace, EmbeddingRef, Probe, ProbeReport};
use elasticface_core::embedding::quantize_i8;
use elasticface_core::gallery::{EnrollError, Gallery, Match};
use elasticface_core::margin::{
    margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig, PlusAssignment,
};
use elasticface_core::nn::ImageShape;
use elasticface_core::rng::{standard_normal, Philox4x32};
use elasticface_core::Error;

/// Where the results go.
pub trait Sink {
    /// Records value `index` of the series `name` as its bits (f32 bit patterns, integers, codes).
    fn value(&mut self, name: &'static str, index: usize, bits: u32);

    /// Runs `f`, a call into the core whose stack use is reported under `part`, and returns its result.
    fn measure<R>(&mut self, part: &'static str, f: impl FnOnce() -> R) -> R;
}

/// The parts [`Sink::measure`] is called with.
pub const PARTS: [&str; 5] = ["margin_loss", "conformance", "gallery_f32", "gallery_i8", "align"];

/// Seed of the margins, as a training run's.
const SEED: u64 = 20_261_128;

/// Samples per margin draw.
const DRAW: usize = 8;

/// Shape of the margin head: batch, embedding size, classes.
const B: usize = 8;
const D: usize = 32;
const C: usize = 16;
/// `HeadShape::scratch_len` of that shape: `B*D + B + D*C + C + 2*B*C + B`.
const ARENA: usize = B * D + B + D * C + C + 2 * B * C + B;

/// Embedding size of the conformance check and the galleries (ElasticFace's).
const EMB: usize = 512;
/// Probes of the conformance check.
const PROBES: usize = 12;
/// Identities of the galleries.
const IDENTITIES: usize = 16;
/// Candidates per identification.
const TOP: usize = 5;

/// Every loss of the family: the six presets and ElasticFace-Arc+ as the released code assigns margins.
const LOSSES: [MarginConfig; 7] = [
    MarginConfig::ARCFACE,
    MarginConfig::COSFACE,
    MarginConfig::ELASTIC_ARC,
    MarginConfig::ELASTIC_COS,
    MarginConfig::ELASTIC_ARC_PLUS,
    MarginConfig::ELASTIC_COS_PLUS,
    MarginConfig::ELASTIC_ARC_PLUS.with_plus(PlusAssignment::ReleasedCode),
];

/// Runs every part.
pub fn run(sink: &mut impl Sink) {
    margins(sink);
    margin_losses(sink);
    conformance(sink);
    galleries(sink);
    alignment(sink);
}

fn put_f32(sink: &mut impl Sink, name: &'static str, index: usize, v: f32) {
    sink.value(name, index, v.to_bits());
}

fn put_all(sink: &mut impl Sink, name: &'static str, values: &[f32]) {
    for (i, &v) in values.iter().enumerate() {
        put_f32(sink, name, i, v);
    }
}

/// A small number for each error kind.
fn error_code(e: &Error) -> u32 {
    match e {
        Error::Length { .. } => 1,
        Error::Shape { .. } => 2,
        Error::Label { .. } => 3,
        Error::NonFinite { .. } => 4,
        Error::ZeroNorm { .. } => 5,
        Error::Config { .. } => 6,
        _ => 99,
    }
}

/// 0 for success, else [`error_code`].
fn code<T>(r: &Result<T, Error>) -> u32 {
    r.as_ref().err().map_or(0, error_code)
}

/// Standard normals (rounded to f32) of stream `stream` of key `seed`.
fn normals(seed: u64, stream: u64, out: &mut [f32]) {
    let mut rng = Philox4x32::new(seed, stream);
    for v in out.iter_mut() {
        *v = standard_normal(&mut rng) as f32;
    }
}

/// `out[k] = a[k] + scale * b[k]`.
fn add_scaled(a: &[f32], scale: f32, b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + scale * y;
    }
}

fn margins(sink: &mut impl Sink) {
    let mut m = [0.0f32; DRAW];
    for (c, cfg) in LOSSES.iter().enumerate() {
        for (s, step) in [0u64, 1, 1 << 40].into_iter().enumerate() {
            cfg.draw_margins_at(SEED, step, &mut m);
            for (i, &v) in m.iter().enumerate() {
                put_f32(sink, "margins", (c * 3 + s) * DRAW + i, v);
            }
        }
        put_f32(sink, "margin_at", c, cfg.margin_at(SEED, 12_345, 1_000_000));
    }
}

fn margin_losses(sink: &mut impl Sink) {
    let shape = HeadShape::new(B, D, C);
    let (mut emb, mut w) = ([0.0f32; B * D], [0.0f32; D * C]);
    normals(7, 1, &mut emb);
    normals(7, 2, &mut w);
    let labels: [u32; B] = core::array::from_fn(|i| Philox4x32::block(7, 3, i as u64)[0] % C as u32);
    for (c, cfg) in LOSSES.iter().enumerate() {
        let mut margins = [0.0f32; B];
        cfg.draw_margins_at(SEED, c as u64, &mut margins);
        let (mut arena, mut order) = ([0.0f32; ARENA], [0u32; B]);
        let (mut d_emb, mut d_w) = ([0.0f32; B * D], [0.0f32; D * C]);
        let result = sink.measure("margin_loss", || {
            let mut scratch = HeadScratch::from_arena(&shape, &mut arena, &mut order)?;
            let loss = margin_loss_forward(cfg, &shape, &emb, &w, &labels, &margins, &mut scratch)?;
            margin_loss_backward(cfg, &shape, &labels, &mut scratch, &mut d_emb, &mut d_w)?;
            Ok(loss)
        });
        sink.value("loss.status", c, code(&result));
        put_f32(sink, "loss", c, result.unwrap_or(f32::NAN));
        // The scratch arena ends with the margins as assigned to the samples.
        put_all(sink, "loss.assigned_margins", &arena[ARENA - B..]);
        for (i, &o) in order.iter().enumerate() {
            sink.value("loss.order", c * B + i, o);
        }
        put_all(sink, "loss.d_emb", &d_emb);
        put_all(sink, "loss.d_w", &d_w);
    }
}

fn put_report(sink: &mut impl Sink, p: usize, r: &Result<ProbeReport, Error>) {
    sink.value("probe.status", p, code(r));
    let Ok(r) = r else { return };
    put_f32(sink, "probe.cosine", p, r.cosine);
    put_f32(sink, "probe.max_abs_diff", p, r.max_abs_diff);
    sink.value("probe.within_tolerance", p, u32::from(r.within_tolerance));
    if let Some(d) = r.decision {
        put_f32(sink, "probe.device_cosine", p, d.device_cosine);
        put_f32(sink, "probe.host_cosine", p, d.host_cosine);
        sink.value("probe.decisions", p, u32::from(d.device_accepts) | u32::from(d.host_accepts) << 1);
    }
}

fn conformance(sink: &mut impl Sink) {
    let config = ConformanceConfig {
        threshold: 0.3,
        min_cosine: 0.999,
        max_abs_diff: 0.02,
        max_disagreements: 0,
        space: DiffSpace::Raw,
    };
    let Ok(mut check) = ConformanceCheck::new(config) else {
        sink.value("conformance.config", 0, 1);
        return;
    };
    let (mut host, mut noise, mut device, mut template) = ([0.0f32; EMB], [0.0f32; EMB], [0.0f32; EMB], [0.0f32; EMB]);
    let mut q = [0i8; EMB];
    for p in 0..PROBES {
        normals(11, p as u64, &mut host);
        normals(13, p as u64, &mut noise);
        // Every third probe the device emits int8 with a scale, then floats with a small error, then the
        // host's floats exactly.
        let scale = match p % 3 {
            0 => quantize_i8(&host, &mut q).unwrap_or(f32::NAN),
            1 => {
                add_scaled(&host, 1e-3, &noise, &mut device);
                0.0
            }
            _ => {
                device = host;
                0.0
            }
        };
        let device_emb = if p % 3 == 0 { EmbeddingRef::I8 { values: &q, scale } } else { EmbeddingRef::F32(&device) };
        // Even probes are verified against a mate (the same face, perturbed), odd ones against an impostor.
        if p % 2 == 0 {
            normals(17, p as u64, &mut noise);
            add_scaled(&host, 0.5, &noise, &mut template);
        } else {
            normals(19, p as u64, &mut template);
        }
        let probe =
            Probe { device: device_emb, host: EmbeddingRef::F32(&host), template: Some(EmbeddingRef::F32(&template)) };
        let r = sink.measure("conformance", || check.check(&probe));
        put_report(sink, p, &r);
        if p == 0 {
            // The same int8 output compared on unit vectors.
            let unit = ConformanceConfig { space: DiffSpace::Unit, ..config };
            put_report(sink, PROBES, &unit.compare(&probe));
        }
    }
    let s = *check.summary();
    for (i, v) in [s.probes, s.rejected, s.out_of_tolerance, s.decisions, s.disagreements].into_iter().enumerate() {
        sink.value("summary.counts", i, v as u32);
    }
    put_f32(sink, "summary.worst_cosine", 0, s.worst_cosine);
    put_f32(sink, "summary.worst_max_abs_diff", 0, s.worst_max_abs_diff);
    sink.value("summary.passed", 0, u32::from(check.passed()));

    // Bad input: rejected with an error, recorded, and the run fails.
    let mut bad = check;
    normals(11, 0, &mut host);
    device = host;
    device[7] = f32::NAN;
    let zeros = [0.0f32; EMB];
    let probes = [
        Probe { device: EmbeddingRef::F32(&device), host: EmbeddingRef::F32(&host), template: None },
        Probe { device: EmbeddingRef::F32(&host[1..]), host: EmbeddingRef::F32(&host), template: None },
        Probe { device: EmbeddingRef::F32(&host), host: EmbeddingRef::F32(&zeros), template: None },
        Probe { device: EmbeddingRef::I8 { values: &q, scale: -1.0 }, host: EmbeddingRef::F32(&host), template: None },
    ];
    for (i, probe) in probes.iter().enumerate() {
        let r = sink.measure("conformance", || bad.check(probe));
        sink.value("bad_probe.status", i, code(&r));
    }
    sink.value("bad.rejected", 0, bad.summary().rejected as u32);
    sink.value("bad.passed", 0, u32::from(bad.passed()));
}

/// Identity `id`'s face: 512 normals.
fn face(id: u64) -> [f32; EMB] {
    let mut f = [0.0f32; EMB];
    normals(23, id, &mut f);
    f
}

/// A new image of identity `id`: its face with noise.
fn probe_of(id: u64) -> [f32; EMB] {
    let (f, mut noise, mut p) = (face(id), [0.0f32; EMB], [0.0f32; EMB]);
    normals(29, id, &mut noise);
    add_scaled(&f, 0.6, &noise, &mut p);
    p
}

fn quantized(x: &[f32; EMB]) -> [i8; EMB] {
    let mut q = [0i8; EMB];
    // A finite, non-zero input: quantisation cannot fail.
    let _ = quantize_i8(x, &mut q);
    q
}

/// The status, the count and the candidates of an identification, at `at * (2 TOP + 2)` in series `name`.
fn put_matches(sink: &mut impl Sink, name: &'static str, at: usize, r: Result<&[Match], &Error>) {
    sink.value(name, at * (2 * TOP + 2), r.err().map_or(0, error_code));
    let Ok(top) = r else { return };
    sink.value(name, at * (2 * TOP + 2) + 1, top.len() as u32);
    for (i, m) in top.iter().enumerate() {
        sink.value(name, at * (2 * TOP + 2) + 2 + 2 * i, m.id);
        put_f32(sink, name, at * (2 * TOP + 2) + 3 + 2 * i, m.cosine);
    }
}

/// 0 for success, else the kind of refusal.
fn enroll_code<T: elasticface_core::gallery::Element>(r: &Result<(), EnrollError<EMB, T>>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(EnrollError::Full { .. }) => 10,
        Err(EnrollError::Duplicate { .. }) => 11,
        Err(EnrollError::Invalid(e)) => 20 + error_code(e),
    }
}

fn galleries(sink: &mut impl Sink) {
    let mut g: Gallery<IDENTITIES, EMB> = Gallery::new();
    for id in 0..IDENTITIES as u64 {
        let f = face(id);
        let r = sink.measure("gallery_f32", || g.enroll(1000 + id as u32, f));
        sink.value("f32.enroll", id as usize, enroll_code(&r));
    }
    let extra = face(100);
    let r = sink.measure("gallery_f32", || g.enroll(2000, extra));
    sink.value("f32.enroll_full", 0, enroll_code(&r));
    let r = g.enroll(1000, extra);
    sink.value("f32.enroll_duplicate", 0, enroll_code(&r));
    put_all(sink, "f32.template_3", &g.get(1003).copied().unwrap_or([f32::NAN; EMB])[..8]);

    for (at, id) in [0u64, 5, 15].into_iter().enumerate() {
        let p = probe_of(id);
        let top = sink.measure("gallery_f32", || g.identify::<TOP>(&p, 0.1));
        put_matches(sink, "f32.identify", at, top.as_deref());
        let v = sink.measure("gallery_f32", || g.verify(1000 + id as u32, &p, 0.5));
        sink.value("f32.verify.status", at, code(&v));
        if let Ok(Some(v)) = v {
            put_f32(sink, "f32.verify.cosine", at, v.cosine);
            sink.value("f32.verify.accepted", at, u32::from(v.accepted));
        }
    }
    let (f20, f21) = (face(20), face(21));
    let r = sink.measure("gallery_f32", || g.update(1003, &f20));
    sink.value("f32.update", 0, code(&r) * 100 + u32::from(r == Ok(true)));
    let removed = sink.measure("gallery_f32", || g.remove(1007));
    sink.value("f32.remove", 0, u32::from(removed.is_some()));
    let r = sink.measure("gallery_f32", || g.enroll(2001, f21));
    sink.value("f32.enroll_after_remove", 0, enroll_code(&r));
    let p = probe_of(5);
    let top = sink.measure("gallery_f32", || g.identify::<TOP>(&p, -1.0));
    put_matches(sink, "f32.identify_after", 0, top.as_deref());
    for (i, &id) in g.ids().iter().enumerate() {
        sink.value("f32.ids", i, id);
    }

    let mut g8: Gallery<IDENTITIES, EMB, i8> = Gallery::new();
    for id in 0..IDENTITIES as u64 {
        let q = quantized(&face(id));
        let r = sink.measure("gallery_i8", || g8.enroll(1000 + id as u32, q));
        sink.value("i8.enroll", id as usize, enroll_code(&r));
    }
    let r = g8.enroll(2000, quantized(&extra));
    sink.value("i8.enroll_full", 0, enroll_code(&r));
    for (at, id) in [0u64, 5, 15].into_iter().enumerate() {
        let p = quantized(&probe_of(id));
        let top = sink.measure("gallery_i8", || g8.identify::<TOP>(&p, 0.1));
        put_matches(sink, "i8.identify", at, top.as_deref());
        let v = sink.measure("gallery_i8", || g8.verify(1000 + id as u32, &p, 0.5));
        if let Ok(Some(v)) = v {
            put_f32(sink, "i8.verify.cosine", at, v.cosine);
            sink.value("i8.verify.accepted", at, u32::from(v.accepted));
        }
    }
    // Bad probes and thresholds.
    let zero = [0.0f32; EMB];
    sink.value("bad.identify_zero", 0, code(&g.identify::<TOP>(&zero, 0.5)));
    sink.value("bad.identify_threshold", 0, code(&g.identify::<TOP>(&probe_of(1), 1.5)));
    let mut nan = probe_of(1);
    nan[100] = f32::NAN;
    sink.value("bad.verify_nan", 0, code(&g.verify(1001, &nan, 0.5)));
    sink.value("bad.identify_i8_zero", 0, code(&g8.identify::<TOP>(&[0; EMB], 0.5)));
}

/// Size of the photo faces are aligned from, and of the aligned crop.
const PHOTO: ImageShape = ImageShape { h: 30, w: 40 };
const CROP: ImageShape = ImageShape { h: 16, w: 16 };

/// Records a similarity's four coefficients as the high and low halves of their f64 bits.
fn put_similarity(sink: &mut impl Sink, name: &'static str, at: usize, m: &Similarity) {
    for (k, v) in [m.a, m.b, m.tx, m.ty].into_iter().enumerate() {
        let bits = v.to_bits();
        sink.value(name, at * 8 + 2 * k, (bits >> 32) as u32);
        sink.value(name, at * 8 + 2 * k + 1, bits as u32);
    }
}

fn alignment(sink: &mut impl Sink) {
    // A photo of smooth gradients and a sharp-edged block, so interpolation weights show in every channel.
    let mut photo = [0u8; 30 * 40 * 3];
    for (i, px) in photo.chunks_exact_mut(3).enumerate() {
        let (r, c) = (i / PHOTO.w, i % PHOTO.w);
        let block = if (8..20).contains(&r) && (12..26).contains(&c) { 90 } else { 0 };
        px[0] = (r * 8 + block) as u8;
        px[1] = (c * 6) as u8;
        px[2] = ((r * 13 + c * 7) % 256) as u8;
    }
    // Landmarks of a 16x16 reference face turned, scaled and moved into the photo (about 0.3 rad and 1.7x, and
    // -0.6 rad and 0.9x), mirrored (no similarity maps it well: the fit shrinks), then coinciding (refused).
    let mut sets = [[[0.0f32; 2]; 5]; 4];
    let reference = elasticface_core::align::reference_landmarks(CROP);
    for (set, m) in sets
        .iter_mut()
        .zip([Similarity { a: 1.625, b: 0.5, tx: 9.5, ty: 2.25 }, Similarity { a: 0.75, b: -0.5, tx: 14.0, ty: 8.0 }])
    {
        for (p, q) in set.iter_mut().zip(reference) {
            let [x, y] = m.apply([f64::from(q[0]), f64::from(q[1])]);
            *p = [x as f32, y as f32];
        }
    }
    sets[2] = sets[0].map(|[x, y]| [40.0 - x, y]);
    sets[3] = [[12.5, 7.25]; 5];
    let mut crop = [0u8; 16 * 16 * 3];
    for (at, landmarks) in sets.iter().enumerate() {
        let r = sink.measure("align", || align_face(&photo, PHOTO, landmarks, &mut crop, CROP));
        sink.value("align.status", at, code(&r));
        if let Ok(m) = r {
            put_similarity(sink, "align.transform", at, &m);
            for (i, &v) in crop.iter().enumerate() {
                sink.value("align.pixels", at * CROP.len() + i, u32::from(v));
            }
        }
    }
}
