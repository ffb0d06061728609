//! The C ABI from C: builds `libelasticface_ffi.a`, compiles and links the C program `ffi/c/demo.c` against
//! it and the committed header, runs it, and compares every line it prints (floats as bit patterns) with the
//! same computations done here through the Rust API.
//!
//! Needs a C compiler (`$CC`, else `cc`); without one the test is skipped with a message, unless
//! `ELASTICFACE_REQUIRE_CC=1` (CI), which makes that an error.

mod external;

use std::process::Command;
use std::time::Duration;

use elasticface_core::align::align_face;
use elasticface_core::conformance::{ConformanceCheck, ConformanceConfig, DiffSpace, EmbeddingRef, Probe};
use elasticface_core::embedding::{cosine, quantize_i8};
use elasticface_core::gallery::{Gallery, Match};
use elasticface_core::margin::{margin_loss_backward, margin_loss_forward, HeadScratch, HeadShape, MarginConfig};
use elasticface_core::nn::ImageShape;
use external::{available_or_required, cargo, check, compare_lines, repo_root, run_with_limit, runs, target_dir};

const DIM: usize = 16;
const PROBES: usize = 5;

/// `value()` of the C program: exact f32 arithmetic.
fn value(k: usize) -> f32 {
    ((k * 37 + 11) % 101) as f32 / 50.0 - 1.0
}

/// The lines the C program prints, computed with the Rust API.
struct Expected(Vec<String>);

impl Expected {
    fn f32(&mut self, key: &str, i: i64, x: f32) {
        self.0.push(format!("{key}[{i}] {:08x}", x.to_bits()));
    }
    fn int(&mut self, key: &str, i: i64, x: i64) {
        self.0.push(format!("{key}[{i}] {x}"));
    }
    /// A status code; the numbers are the C ABI's `EF_STATUS_*`.
    fn status(&mut self, what: &str, code: i32) {
        self.0.push(format!("status {what} {code}"));
    }
    fn matches(&mut self, key: &str, m: &[Match]) {
        self.int(key, -1, m.len() as i64);
        for (i, m) in m.iter().enumerate() {
            self.int(key, i as i64, i64::from(m.id));
            self.f32(key, i as i64, m.cosine);
        }
    }
}

const OK: i32 = 0;
const NULL_POINTER: i32 = 1;
const OVERLAP: i32 = 3;
const LENGTH: i32 = 4;
const SHAPE: i32 = 5;
const NON_FINITE: i32 = 6;
const ZERO_NORM: i32 = 7;
const CONFIG: i32 = 8;
const FULL: i32 = 10;
const DUPLICATE: i32 = 11;
const NOT_FOUND: i32 = 12;
const BAD_HANDLE: i32 = 13;
const WRONG_ELEMENT: i32 = 14;

fn expected() -> Vec<String> {
    let mut e = Expected(Vec::new());
    let host: Vec<[f32; DIM]> = (0..PROBES).map(|p| std::array::from_fn(|k| value(p * DIM + k + 3))).collect();

    // Margins and one pass of the loss.
    let cfg = MarginConfig::ELASTIC_ARC_PLUS;
    let mut drawn = [0.0f32; 8];
    cfg.draw_margins_at(20_261_128, 5, &mut drawn);
    for (i, &m) in drawn.iter().enumerate() {
        e.f32("margin", i as i64, m);
    }
    let shape = HeadShape::new(4, 8, 6);
    let emb: Vec<f32> = (0..32).map(value).collect();
    let w: Vec<f32> = (0..48).map(|i| value(100 + i)).collect();
    let labels = [0u32, 5, 2, 3];
    let mut margins = [0.0f32; 4];
    cfg.draw_margins_at(42, 0, &mut margins);
    let (mut arena, mut order) = (vec![0.0f32; shape.scratch_len()], [0u32; 4]);
    let mut scratch = HeadScratch::from_arena(&shape, &mut arena, &mut order).unwrap();
    let loss = margin_loss_forward(&cfg, &shape, &emb, &w, &labels, &margins, &mut scratch).unwrap();
    let (mut d_emb, mut d_w) = ([0.0f32; 32], [0.0f32; 48]);
    margin_loss_backward(&cfg, &shape, &labels, &mut scratch, &mut d_emb, &mut d_w).unwrap();
    e.f32("loss", 0, loss);
    for (i, &g) in d_emb.iter().enumerate() {
        e.f32("d_emb", i as i64, g);
    }
    for (i, &g) in d_w.iter().enumerate() {
        e.f32("d_w", i as i64, g);
    }

    // Conformance.
    let conf = ConformanceConfig {
        threshold: 0.3,
        min_cosine: 0.999,
        max_abs_diff: 0.01,
        max_disagreements: 0,
        space: DiffSpace::Raw,
    };
    let mut run = ConformanceCheck::new(conf).unwrap();
    for p in 0..PROBES {
        let mut q = [0i8; DIM];
        let device_f32: [f32; DIM] = std::array::from_fn(|k| host[p][k] + 0.001 * value(7 * k + p));
        let device = if p % 2 == 0 {
            let scale = quantize_i8(&host[p], &mut q).unwrap();
            EmbeddingRef::I8 { values: &q, scale }
        } else {
            EmbeddingRef::F32(&device_f32)
        };
        let template = &host[if p % 3 == 0 { p } else { (p + 1) % PROBES }];
        let probe = Probe {
            device,
            host: EmbeddingRef::F32(&host[p]),
            template: (p != 4).then_some(EmbeddingRef::F32(template)),
        };
        let r = run.check(&probe).unwrap();
        let d = r.decision;
        e.f32("probe.cosine", p as i64, r.cosine);
        e.f32("probe.max_abs_diff", p as i64, r.max_abs_diff);
        e.f32("probe.device_cosine", p as i64, d.map_or(f32::NAN, |d| d.device_cosine));
        e.f32("probe.host_cosine", p as i64, d.map_or(f32::NAN, |d| d.host_cosine));
        let flags = i64::from(r.within_tolerance)
            | i64::from(d.is_some()) << 1
            | i64::from(d.is_some_and(|d| d.device_accepts)) << 2
            | i64::from(d.is_some_and(|d| d.host_accepts)) << 3
            | i64::from(d.is_none_or(|d| d.agrees())) << 4;
        e.int("probe.flags", p as i64, flags);
    }
    let mut broken = host[0];
    broken[3] = f32::NAN;
    let nan_probe = Probe { device: EmbeddingRef::F32(&broken), host: EmbeddingRef::F32(&host[0]), template: None };
    assert!(run.check(&nan_probe).is_err());
    e.status("conformance_nan", NON_FINITE);
    let s = *run.summary();
    e.int("summary.probes", 0, s.probes as i64);
    e.int("summary.rejected", 0, s.rejected as i64);
    e.int("summary.out_of_tolerance", 0, s.out_of_tolerance as i64);
    e.int("summary.decisions", 0, s.decisions as i64);
    e.int("summary.disagreements", 0, s.disagreements as i64);
    e.f32("summary.worst_cosine", 0, s.worst_cosine);
    e.f32("summary.worst_max_abs_diff", 0, s.worst_max_abs_diff);
    e.int("summary.passed", 0, i64::from(run.passed()));

    // Galleries.
    e.int("gallery_f32.bytes", 0, 24 + 4 * 4 + 4 * DIM as i64 * 4);
    let mut g: Gallery<4, DIM> = Gallery::new();
    for (id, face) in (100..).zip(&host[..4]) {
        g.enroll(id, *face).unwrap();
    }
    assert!(g.enroll(200, host[4]).is_err());
    e.status("enroll_full", FULL);
    assert!(g.enroll(100, host[4]).is_err());
    e.status("enroll_duplicate", DUPLICATE);
    let probe: [f32; DIM] = std::array::from_fn(|k| host[1][k] + 0.25 * value(3 * k));
    e.matches("identify_f32", &g.identify::<3>(&probe, -1.0).unwrap());
    let v = g.verify(101, &probe, 0.9).unwrap().unwrap();
    e.f32("verify_f32.cosine", 0, v.cosine);
    e.int("verify_f32.accepted", 0, i64::from(v.accepted));
    g.remove(100).unwrap();
    assert!(g.update(102, &host[4]).unwrap());
    g.enroll(200, probe).unwrap();
    e.matches("identify_f32_after", &g.identify::<2>(&probe, 0.0).unwrap());
    assert_eq!(g.verify(100, &probe, 0.5), Ok(None));
    e.status("verify_removed", NOT_FOUND);

    e.int("gallery_i8.bytes", 0, 24 + 4 * 4 + 4 * DIM as i64);
    let mut g8: Gallery<4, DIM, i8> = Gallery::new();
    for (id, face) in (100..).zip(&host[..4]) {
        let mut q = [0i8; DIM];
        quantize_i8(face, &mut q).unwrap();
        g8.enroll(id, q).unwrap();
    }
    let mut qp = [0i8; DIM];
    quantize_i8(&probe, &mut qp).unwrap();
    e.matches("identify_i8", &g8.identify::<3>(&qp, -1.0).unwrap());
    let v = g8.verify(101, &qp, 0.9).unwrap().unwrap();
    e.f32("verify_i8.cosine", 0, v.cosine);
    e.int("verify_i8.accepted", 0, i64::from(v.accepted));
    e.status("wrong_element", WRONG_ELEMENT);

    // A face aligned from its landmarks (the photo is the C program's), and refused ones.
    let photo_shape = ImageShape { h: 20, w: 24 };
    let photo: Vec<u8> =
        (0..photo_shape.len()).map(|i| ((i / 3 / 24 * 11 + i / 3 % 24 * 5 + i % 3 * 40) % 256) as u8).collect();
    let landmarks = [[6.5f32, 8.25], [13.0, 7.5], [10.0, 11.75], [7.25, 15.5], [12.75, 15.0]];
    let crop_shape = ImageShape { h: 12, w: 12 };
    let mut crop = vec![0u8; crop_shape.len()];
    let m = align_face(&photo, photo_shape, &landmarks, &mut crop, crop_shape).unwrap();
    for (i, v) in [m.a, -m.b, m.tx, m.b, m.a, m.ty].into_iter().enumerate() {
        e.0.push(format!("align.matrix[{i}] {:016x}", v.to_bits()));
    }
    for (i, &v) in crop.iter().enumerate() {
        e.int("align.pixel", i as i64, i64::from(v));
    }
    for (what, code) in [
        ("align_coincide", SHAPE),
        ("align_nan", NON_FINITE),
        ("align_null", NULL_POINTER),
        ("align_empty", SHAPE),
        ("align_huge", SHAPE),
        ("align_overlap", OVERLAP),
    ] {
        e.status(what, code);
    }

    // Bad input.
    assert!(cosine(&host[0], &host[1]).is_ok());
    for (what, code) in [
        ("cosine_ok", OK),
        ("cosine_nan", NON_FINITE),
        ("cosine_zero", ZERO_NORM),
        ("cosine_null", NULL_POINTER),
        ("cosine_null_out", NULL_POINTER),
        ("init", OK),
        ("init_small", LENGTH),
        ("init_dim0", SHAPE),
        ("enroll_nan", NON_FINITE),
        ("enroll_zero", ZERO_NORM),
        ("enroll_dim", LENGTH),
        ("identify_threshold", CONFIG),
        ("identify_nan_threshold", CONFIG),
        ("identify_empty", OK),
    ] {
        e.status(what, code);
    }
    e.int("identify_empty.count", 0, 0);
    for (what, code) in [
        ("verify_unknown", NOT_FOUND),
        ("verify_null_out", NULL_POINTER),
        ("bad_handle", BAD_HANDLE),
        ("null_handle", NULL_POINTER),
        ("margin_unknown", CONFIG),
    ] {
        e.status(what, code);
    }
    e.int("status_str_known", 0, 1);
    e.int("status_str_unknown", 0, 1);
    e.0.push("done".into());
    e.0
}

#[test]
fn the_c_program_gets_the_rust_results_bit_for_bit() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if !available_or_required(runs(&cc, &["--version"]), "a C compiler", "ELASTICFACE_REQUIRE_CC") {
        return;
    }
    let root = repo_root();
    // A target directory of its own: the one of this test is locked by the `cargo test` running it.
    let target = target_dir().join("ffi-c");
    check(
        cargo(&root).args(["build", "--release", "--quiet", "-p", "elasticface-ffi", "--target-dir"]).arg(&target),
        "building libelasticface_ffi.a",
    );
    let exe = target.join("ef_demo");
    check(
        Command::new(&cc)
            .args(["-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I"])
            .arg(root.join("ffi/include"))
            .arg(root.join("ffi/c/demo.c"))
            .arg(target.join("release/libelasticface_ffi.a"))
            .args(["-lm", "-lpthread", "-ldl", "-o"])
            .arg(&exe),
        "compiling ffi/c/demo.c",
    );
    let (ok, out) = run_with_limit(&mut Command::new(&exe), Duration::from_secs(60));
    assert!(ok, "ef_demo failed; its output:\n{out}");
    let n = compare_lines(&out, &expected(), "the C program's output");
    eprintln!("C ABI from C: {n} lines equal to the Rust API's results");
}
