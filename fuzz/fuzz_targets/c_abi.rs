//! The C ABI entry points on fuzzed input: sequences of calls on a gallery block and fuzzed buffers, with
//! wrong lengths, null and misaligned pointers, overlapping outputs, NaNs, zero vectors, thresholds out of
//! range, unknown element codes and corrupted templates. Every pointer passed is valid for the count passed
//! with it (the part of the contract no callee can check); everything else is fair game.
//!
//! Checked: no crash, no undefined behaviour (AddressSanitizer), and the invariants of each result.
#![no_main]

mod common;

use core::ffi::c_void;
use std::ptr;

use common::Bytes;
use elasticface_core::ffi::*;
use libfuzzer_sys::fuzz_target;

/// Elements of the fuzzed float and int8 buffers.
const BUF: usize = 48;
/// Bytes of the gallery block (8-aligned storage).
const BLOCK_WORDS: usize = 256;

struct State {
    block: Vec<u64>,
    gallery: *mut EfGallery,
    floats: [f32; BUF],
    ints: [i8; BUF],
    summary: EfConformanceSummary,
}

/// A pointer into `buf` at a fuzzed offset with a count that fits, or null with a fuzzed count.
fn pick<T>(b: &mut Bytes<'_>, buf: &[T]) -> (*const T, usize) {
    if b.one_in(16) {
        return (ptr::null(), b.below(3));
    }
    let at = b.below(buf.len());
    let len = b.below(buf.len() - at + 1);
    (buf[at..].as_ptr(), len)
}

/// `dim` elements of `buf` from a fuzzed offset (`dim <= buf.len()`), or null.
fn at_dim<T>(b: &mut Bytes<'_>, buf: &[T], dim: usize) -> *const T {
    if b.one_in(16) || dim > buf.len() {
        return ptr::null();
    }
    buf[b.below(buf.len() - dim + 1)..].as_ptr()
}

fn gallery_capacity(st: &State) -> usize {
    let mut cap = 0;
    unsafe { ef_gallery_capacity(st.gallery, &mut cap) };
    cap
}

fn step(b: &mut Bytes<'_>, st: &mut State) {
    match b.u8() % 17 {
        0 => {
            // (Re)initialise the block, sometimes misaligned or too small.
            let element = [EF_ELEMENT_F32, EF_ELEMENT_I8, 2, u32::MAX][b.below(4)];
            let (dim, capacity) = (b.below(20), b.below(8));
            let offset = if b.one_in(8) { b.below(4) } else { 0 };
            let bytes = BLOCK_WORDS * 8 - offset;
            let mem_len = if b.bool() { bytes } else { b.below(bytes + 1) };
            let mem = unsafe { st.block.as_mut_ptr().cast::<u8>().add(offset) }.cast::<c_void>();
            let mut g = ptr::null_mut();
            let s = unsafe { ef_gallery_init(mem, mem_len, element, dim, capacity, &mut g) };
            let mut size = 0;
            let sized = unsafe { ef_gallery_size(element, dim, capacity, &mut size) };
            if s == EfStatus::Ok {
                assert_eq!(sized, EfStatus::Ok);
                assert!(size <= mem_len);
                st.gallery = g;
            }
        }
        1 | 2 => {
            let f32_kind = b.bool();
            let id = b.u32() % 8;
            let dim = b.below(20);
            let update = b.one_in(3);
            let (mut before, mut after) = (0, 0);
            unsafe { ef_gallery_len(st.gallery, &mut before) };
            let s = unsafe {
                match (f32_kind, update) {
                    (true, false) => ef_gallery_enroll_f32(st.gallery, id, at_dim(b, &st.floats, dim), dim),
                    (false, false) => ef_gallery_enroll_i8(st.gallery, id, at_dim(b, &st.ints, dim), dim),
                    (true, true) => ef_gallery_update_f32(st.gallery, id, at_dim(b, &st.floats, dim), dim),
                    (false, true) => ef_gallery_update_i8(st.gallery, id, at_dim(b, &st.ints, dim), dim),
                }
            };
            unsafe { ef_gallery_len(st.gallery, &mut after) };
            let grew = !update && s == EfStatus::Ok;
            if !st.gallery.is_null() {
                assert_eq!(after, before + usize::from(grew), "{s:?}");
            }
        }
        3 => {
            let s = unsafe { ef_gallery_remove(st.gallery, b.u32() % 8) };
            assert!(matches!(s, EfStatus::Ok | EfStatus::NotFound | EfStatus::NullPointer), "{s:?}");
        }
        4 | 5 => {
            let f32_kind = b.bool();
            let dim = b.below(20);
            let threshold = b.threshold();
            let mut out = [EfMatch { id: 0, cosine: 0.0 }; 6];
            let k = b.below(7);
            let mut n = usize::MAX;
            let s = unsafe {
                if f32_kind {
                    ef_gallery_identify_f32(
                        st.gallery,
                        at_dim(b, &st.floats, dim),
                        dim,
                        threshold,
                        out.as_mut_ptr(),
                        k,
                        &mut n,
                    )
                } else {
                    ef_gallery_identify_i8(
                        st.gallery,
                        at_dim(b, &st.ints, dim),
                        dim,
                        threshold,
                        out.as_mut_ptr(),
                        k,
                        &mut n,
                    )
                }
            };
            if s == EfStatus::Ok {
                assert!(n <= k && n <= gallery_capacity(st));
                for w in out[..n].windows(2) {
                    assert!(w[0].cosine >= w[1].cosine);
                }
                for m in &out[..n] {
                    assert!((-1.0..=1.0).contains(&m.cosine) && m.cosine >= threshold, "{m:?} {threshold}");
                }
            }
            let mut v = EfVerification { cosine: 0.0, accepted: false };
            let dim = b.below(20);
            let s = unsafe {
                if b.bool() {
                    ef_gallery_verify_f32(st.gallery, b.u32() % 8, at_dim(b, &st.floats, dim), dim, threshold, &mut v)
                } else {
                    ef_gallery_verify_i8(st.gallery, b.u32() % 8, at_dim(b, &st.ints, dim), dim, threshold, &mut v)
                }
            };
            if s == EfStatus::Ok {
                assert!((-1.0..=1.0).contains(&v.cosine) && v.accepted == (v.cosine >= threshold));
            }
        }
        6 => {
            // Corrupt the templates and ids (not the header: forging a header is writing past the block, which
            // no API can detect).
            let at = 24 + b.below(BLOCK_WORDS * 8 - 24);
            let bytes = unsafe { std::slice::from_raw_parts_mut(st.block.as_mut_ptr().cast::<u8>(), BLOCK_WORDS * 8) };
            bytes[at] = b.u8();
        }
        7 => {
            let (mut len, mut cap) = (usize::MAX, usize::MAX);
            let s1 = unsafe { ef_gallery_len(st.gallery, &mut len) };
            let s2 = unsafe { ef_gallery_capacity(st.gallery, &mut cap) };
            assert_eq!(s1, s2);
            if s1 == EfStatus::Ok {
                assert!(len <= cap);
            }
            if b.one_in(8) {
                let s = unsafe { ef_gallery_clear(st.gallery) };
                assert_eq!(s == EfStatus::Ok, s1 == EfStatus::Ok);
            }
        }
        8 => {
            for v in st.floats.iter_mut().take(b.below(BUF)) {
                *v = b.f32();
            }
            for v in st.ints.iter_mut().take(b.below(BUF)) {
                *v = b.u8() as i8;
            }
        }
        9 => {
            let (a, n) = pick(b, &st.floats);
            let other = at_dim(b, &st.floats, n);
            let mut c = f32::NAN;
            let s = unsafe { ef_cosine_f32(a, other, n, &mut c) };
            if s == EfStatus::Ok {
                assert!((-1.0..=1.0).contains(&c));
            }
            let (a, n) = pick(b, &st.ints);
            let other = at_dim(b, &st.ints, n);
            let s = unsafe { ef_cosine_i8(a, other, n, &mut c) };
            if s == EfStatus::Ok {
                assert!((-1.0..=1.0).contains(&c));
            }
        }
        10 => {
            // Quantise, sometimes into the input's own bytes (an overlap the callee must refuse).
            let (x, n) = pick(b, &st.floats);
            let mut q = [0i8; BUF];
            let mut scale = f32::NAN;
            let in_place = b.one_in(4) && !x.is_null();
            // The callee must refuse to write here: the bytes belong to the input.
            let out = if in_place { x.cast::<i8>().cast_mut() } else { q.as_mut_ptr() };
            let s = unsafe { ef_quantize_i8(x, n, out, &mut scale) };
            if in_place && n > 0 {
                assert_eq!(s, EfStatus::Overlap);
            }
            if s == EfStatus::Ok {
                assert!(scale.is_finite() && scale >= 0.0);
                assert!(in_place || q[..n].iter().all(|&v| v != i8::MIN));
            }
        }
        11 => {
            let cfg = EfConformanceConfig {
                max_disagreements: u64::from(b.u8() % 3),
                threshold: b.threshold(),
                min_cosine: b.threshold(),
                max_abs_diff: b.f32(),
                diff_space: b.u32() % 3,
            };
            let emb = |b: &mut Bytes<'_>| {
                let element = [EF_ELEMENT_F32, EF_ELEMENT_I8, 9][b.below(3)];
                let (data, len) = if element == EF_ELEMENT_I8 {
                    let (p, n) = pick(b, &st.ints);
                    (p.cast::<c_void>(), n)
                } else {
                    let (p, n) = pick(b, &st.floats);
                    (p.cast::<c_void>(), n)
                };
                EfEmbedding { data, len, element, scale: b.f32() }
            };
            let (device, host, template) = (emb(b), emb(b), emb(b));
            let with_template = b.bool();
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
            let before = st.summary;
            let s = unsafe {
                ef_conformance_check(
                    &cfg,
                    &mut st.summary,
                    &device,
                    &host,
                    if with_template { &template } else { ptr::null() },
                    &mut report,
                )
            };
            assert_eq!(st.summary.probes, before.probes.saturating_add(1));
            assert_eq!(st.summary.rejected, before.rejected.saturating_add(u64::from(s != EfStatus::Ok)));
            if s == EfStatus::Ok {
                assert!((-1.0..=1.0).contains(&report.cosine));
                assert!(report.max_abs_diff >= 0.0, "{report:?}");
                assert_eq!(report.has_decision, with_template);
                if with_template {
                    assert!((-1.0..=1.0).contains(&report.device_cosine));
                    assert!((-1.0..=1.0).contains(&report.host_cosine));
                    assert_eq!(report.agrees, report.device_accepts == report.host_accepts);
                }
            }
            let mut passed = true;
            let s = unsafe { ef_conformance_passed(&cfg, &st.summary, &mut passed) };
            if s == EfStatus::Ok && st.summary.rejected > 0 {
                assert!(!passed);
            }
        }
        12 => {
            let mut name = [0u8; 40];
            let n = b.below(39);
            for c in &mut name[..n] {
                *c = b.u8().max(1);
            }
            let mut cfg = EfMarginConfig { kind: 0, plus: 0, s: 0.0, m: 0.0, sigma: 0.0 };
            let parsed = unsafe { ef_margin_parse(name.as_ptr().cast(), &mut cfg) };
            if parsed != EfStatus::Ok || b.bool() {
                cfg = EfMarginConfig { kind: b.u32() % 3, plus: b.u32() % 4, s: b.f32(), m: b.f32(), sigma: b.f32() };
            }
            let mut out = [f32::NAN; BUF];
            let n = b.below(BUF + 1);
            let s = unsafe { ef_margin_draw(&cfg, u64::from(b.u32()), u64::from(b.u32()), out.as_mut_ptr(), n) };
            if s == EfStatus::Ok && cfg.sigma == 0.0 {
                assert!(out[..n].iter().all(|&m| m == cfg.m));
            }
        }
        13 => {
            let cfg = EfMarginConfig { kind: b.u32() % 3, plus: b.u32() % 4, s: b.f32(), m: b.f32(), sigma: b.f32() };
            let (batch, dim, classes) = (b.below(4), b.below(5), b.below(5));
            let mut arena_len = 0;
            let _ = unsafe { ef_margin_arena_len(batch, dim, classes, &mut arena_len) };
            let arena_len = if b.bool() { arena_len } else { b.below(200) };
            let labels: Vec<u32> = (0..batch).map(|_| b.u32() % 6).collect();
            let margins: Vec<f32> = (0..batch).map(|_| b.f32()).collect();
            let emb = &st.floats[..(batch * dim).min(BUF)];
            let w = &st.floats[..(dim * classes).min(BUF)];
            let (mut arena, mut order) = (vec![0.0f32; arena_len.max(1)], vec![0u32; batch.max(1)]);
            let (mut d_emb, mut d_w, mut loss) = (vec![0.0f32; batch * dim + 1], vec![0.0f32; dim * classes + 1], 0.0);
            let s = unsafe {
                ef_margin_loss(
                    &cfg,
                    batch,
                    dim,
                    classes,
                    if emb.len() == batch * dim { emb.as_ptr() } else { ptr::null() },
                    if w.len() == dim * classes { w.as_ptr() } else { ptr::null() },
                    labels.as_ptr(),
                    margins.as_ptr(),
                    arena.as_mut_ptr(),
                    arena_len.min(arena.len()),
                    order.as_mut_ptr(),
                    &mut loss,
                    d_emb.as_mut_ptr(),
                    d_w.as_mut_ptr(),
                )
            };
            if s == EfStatus::Ok {
                assert!(loss.is_finite());
                assert!(d_emb.iter().chain(&d_w).all(|v| v.is_finite()));
            }
        }
        14 => {
            let text = unsafe { std::ffi::CStr::from_ptr(ef_status_str(b.u32() as i32)) };
            assert!(!text.to_bytes().is_empty());
        }
        15 => {
            // A face aligned from fuzzed landmarks (NaN, coinciding, huge), photo and crop of fuzzed sizes (0
            // included, sometimes overflowing), sometimes into the photo's own bytes.
            let mut photo = [0u8; 8 * 8 * 3];
            let filled = b.below(8 * 8 * 3);
            for v in photo.iter_mut().take(filled) {
                *v = b.u8();
            }
            let (h, w) = if b.one_in(16) { (usize::MAX, 2) } else { (b.below(9), b.below(9)) };
            let (ch, cw) = (b.below(9), b.below(9));
            let landmarks = at_dim(b, &st.floats, 10);
            let (mut crop, mut m) = ([0u8; 8 * 8 * 3], [f64::NAN; 6]);
            let in_place = b.one_in(8);
            let out = if in_place { photo.as_mut_ptr() } else { crop.as_mut_ptr() };
            let s = unsafe { ef_align_face(photo.as_ptr(), h, w, landmarks, out, ch, cw, m.as_mut_ptr()) };
            if in_place && s == EfStatus::Ok {
                panic!("aligned into the photo's own bytes");
            }
            if s == EfStatus::Ok {
                // [a, -b, tx, b, a, ty]: a similarity, finite.
                assert!(m.iter().all(|v| v.is_finite()) && m[0] == m[4] && m[1] == -m[3], "{m:?}");
            }
        }
        _ => {
            // A handle to memory that is not a gallery.
            let garbage = [b.u32(); 16];
            let mut len = 0;
            let s = unsafe { ef_gallery_len(garbage.as_ptr().cast(), &mut len) };
            assert!(matches!(s, EfStatus::BadHandle | EfStatus::Ok), "{s:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mut st = State {
        block: vec![0u64; BLOCK_WORDS],
        gallery: ptr::null_mut(),
        floats: [0.0; BUF],
        ints: [0; BUF],
        summary: EfConformanceSummary {
            probes: 0,
            rejected: 0,
            out_of_tolerance: 0,
            decisions: 0,
            disagreements: 0,
            worst_cosine: 1.0,
            worst_max_abs_diff: 0.0,
        },
    };
    for (i, v) in st.floats.iter_mut().enumerate() {
        *v = ((i * 37 + 11) % 101) as f32 / 50.0 - 1.0;
    }
    for (i, v) in st.ints.iter_mut().enumerate() {
        *v = ((i * 53 + 7) % 255) as i8;
    }
    let mut steps = 0;
    while !b.is_empty() && steps < 64 {
        step(&mut b, &mut st);
        steps += 1;
    }
});
