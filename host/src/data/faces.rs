//! `synthetic-faces`: a procedural identity set, rendered deterministically from a seed, so that a fresh machine
//! can train and verify a face model without downloading anything.
//!
//! Each **identity** is a fixed set of latent traits drawn from `(seed, identity)`: face outline and jaw, skin,
//! hair colour and hairline, eye spacing/height/size/iris colour, brow thickness and slant, nose length and width,
//! mouth width/height/lip colour, moles, glasses. Each **sample** of an identity varies what a camera varies, drawn
//! from `(seed, identity, sample)`: pose (rotation, translation, scale), expression (smile, open mouth, raised
//! brows, eye openness), illumination direction and strength, colour cast, background, a partial occlusion,
//! blur and sensor noise. Two samples of one identity therefore differ more in pixels than the identities differ
//! in traits, so telling identities apart takes learned features, not pixel templates (a test checks that a
//! nearest-neighbour classifier on raw pixels does poorly).
//!
//! Rendering is plain `f32` arithmetic with the `libm` crate for every transcendental function, so the images are
//! the same bits on every machine.

use elasticface_core::nn::ImageShape;
use elasticface_core::rng::{standard_normal, Philox4x32};
use rand_core::RngCore;

use crate::streams::{face_stream, FACE_IDENTITY_STREAM, FACE_NOISE_STREAM, FACE_SAMPLE_STREAM};

/// A uniform draw in `[lo, hi)`.
fn uniform(rng: &mut Philox4x32, lo: f32, hi: f32) -> f32 {
    let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    lo + (hi - lo) * u
}

fn normal(rng: &mut Philox4x32, sigma: f32) -> f32 {
    (standard_normal(rng) as f32) * sigma
}

type Rgb = [f32; 3];

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Coverage of a shape with signed distance `d` (negative inside), anti-aliased over `aa`.
fn cover(d: f32, aa: f32) -> f32 {
    (0.5 - d / aa).clamp(0.0, 1.0)
}

/// Approximate signed distance to an axis-aligned ellipse centred at the origin.
fn ellipse(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    let k = libm::sqrtf((x / rx) * (x / rx) + (y / ry) * (y / ry));
    (k - 1.0) * rx.min(ry)
}

/// Signed distance to a segment from `a` to `b` of half-thickness `r` (a capsule).
fn capsule(p: (f32, f32), a: (f32, f32), b: (f32, f32), r: f32) -> f32 {
    let (pax, pay, bax, bay) = (p.0 - a.0, p.1 - a.1, b.0 - a.0, b.1 - a.1);
    let h = ((pax * bax + pay * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0);
    let (dx, dy) = (pax - bax * h, pay - bay * h);
    libm::sqrtf(dx * dx + dy * dy) - r
}

/// The traits that make an identity.
#[derive(Clone, Debug)]
struct Identity {
    face_rx: f32,
    face_ry: f32,
    jaw: f32,
    skin: Rgb,
    hair: Rgb,
    hairline: f32,
    hair_side: f32,
    eye_dx: f32,
    eye_y: f32,
    eye_w: f32,
    eye_h: f32,
    iris: Rgb,
    brow_thick: f32,
    brow_slant: f32,
    brow_gap: f32,
    brow_colour: Rgb,
    nose_len: f32,
    nose_w: f32,
    mouth_y: f32,
    mouth_w: f32,
    lips: Rgb,
    moles: [(f32, f32, f32); 2],
    glasses: Option<Rgb>,
}

impl Identity {
    fn draw(seed: u64, identity: u64) -> Self {
        let r = &mut Philox4x32::new(seed, FACE_IDENTITY_STREAM + identity);
        let tone = uniform(r, 0.0, 1.0);
        let skin = mix([235.0, 200.0, 170.0], [110.0, 70.0, 45.0], tone);
        let skin = [skin[0] + normal(r, 8.0), skin[1] + normal(r, 8.0), skin[2] + normal(r, 8.0)];
        let hair_tone = uniform(r, 0.0, 1.0);
        let hair = mix([20.0, 15.0, 10.0], [200.0, 160.0, 90.0], hair_tone * hair_tone);
        let hair = if uniform(r, 0.0, 1.0) < 0.1 { [170.0, 60.0, 30.0] } else { hair };
        let iris = [uniform(r, 30.0, 120.0), uniform(r, 40.0, 140.0), uniform(r, 30.0, 160.0)];
        let mole = |r: &mut Philox4x32| {
            if uniform(r, 0.0, 1.0) < 0.5 {
                (uniform(r, -0.45, 0.45), uniform(r, -0.2, 0.6), uniform(r, 0.015, 0.035))
            } else {
                (0.0, 0.0, 0.0)
            }
        };
        let moles = [mole(r), mole(r)];
        let glasses = (uniform(r, 0.0, 1.0) < 0.25)
            .then(|| [uniform(r, 0.0, 90.0), uniform(r, 0.0, 90.0), uniform(r, 0.0, 90.0)]);
        Self {
            face_rx: uniform(r, 0.52, 0.68),
            face_ry: uniform(r, 0.70, 0.86),
            jaw: uniform(r, -0.25, 0.35),
            skin,
            hair,
            hairline: uniform(r, -0.62, -0.35),
            hair_side: uniform(r, 0.0, 0.5),
            eye_dx: uniform(r, 0.19, 0.30),
            eye_y: uniform(r, -0.22, -0.05),
            eye_w: uniform(r, 0.08, 0.14),
            eye_h: uniform(r, 0.035, 0.06),
            iris,
            brow_thick: uniform(r, 0.012, 0.035),
            brow_slant: uniform(r, -0.12, 0.12),
            brow_gap: uniform(r, 0.07, 0.14),
            brow_colour: scale(hair, uniform(r, 0.6, 1.0)),
            nose_len: uniform(r, 0.14, 0.30),
            nose_w: uniform(r, 0.025, 0.06),
            mouth_y: uniform(r, 0.30, 0.46),
            mouth_w: uniform(r, 0.12, 0.24),
            lips: mix(skin, [170.0, 60.0, 70.0], uniform(r, 0.3, 0.8)),
            moles,
            glasses,
        }
    }
}

/// What changes between two photos of one person.
#[derive(Clone, Debug)]
struct Shot {
    angle: f32,
    shift: (f32, f32),
    zoom: f32,
    smile: f32,
    mouth_open: f32,
    brow_raise: f32,
    eye_open: f32,
    light: (f32, f32),
    light_strength: f32,
    brightness: f32,
    cast: Rgb,
    background: (Rgb, Rgb),
    occluder: Option<(f32, f32, f32, f32, Rgb)>,
    blur: bool,
    noise: f32,
}

impl Shot {
    fn draw(seed: u64, identity: u64, sample: u64) -> Self {
        let r = &mut Philox4x32::new(seed, face_stream(FACE_SAMPLE_STREAM, identity, sample));
        let bg = |r: &mut Philox4x32| [uniform(r, 20.0, 235.0), uniform(r, 20.0, 235.0), uniform(r, 20.0, 235.0)];
        let background = (bg(r), bg(r));
        let occluder = (uniform(r, 0.0, 1.0) < 0.3).then(|| {
            let (x, y) = (uniform(r, -1.0, 1.0), uniform(r, -1.0, 1.0));
            (x, y, uniform(r, 0.15, 0.5), uniform(r, 0.1, 0.4), bg(r))
        });
        Self {
            angle: normal(r, 0.12),
            shift: (normal(r, 0.05), normal(r, 0.05)),
            zoom: 1.0 + normal(r, 0.06),
            smile: uniform(r, -0.3, 1.0),
            mouth_open: if uniform(r, 0.0, 1.0) < 0.3 { uniform(r, 0.01, 0.06) } else { 0.0 },
            brow_raise: uniform(r, -0.02, 0.05),
            eye_open: uniform(r, 0.35, 1.1),
            light: (normal(r, 0.6), normal(r, 0.6)),
            light_strength: uniform(r, 0.0, 0.45),
            brightness: uniform(r, 0.65, 1.25),
            cast: [uniform(r, 0.8, 1.2), uniform(r, 0.8, 1.2), uniform(r, 0.8, 1.2)],
            background,
            occluder,
            blur: uniform(r, 0.0, 1.0) < 0.35,
            noise: uniform(r, 0.0, 9.0),
        }
    }
}

/// Renders sample `sample` of identity `identity` as `u8 (H, W, 3)` RGB.
pub fn render(seed: u64, identity: u64, sample: u64, shape: ImageShape) -> Vec<u8> {
    let id = Identity::draw(seed, identity);
    let shot = Shot::draw(seed, identity, sample);
    let (h, w) = (shape.h, shape.w);
    let half = 0.5 * h.min(w) as f32;
    let aa = 2.0 / half;
    let (sin_a, cos_a) = (libm::sinf(shot.angle), libm::cosf(shot.angle));
    let mut img = vec![0.0f32; h * w * 3];
    for py in 0..h {
        for px in 0..w {
            // Image coordinates in [-1, 1], then into the face's frame (rotated, shifted, zoomed).
            let ix = (px as f32 + 0.5 - 0.5 * w as f32) / half;
            let iy = (py as f32 + 0.5 - 0.5 * h as f32) / half;
            let (tx, ty) = ((ix - shot.shift.0) / shot.zoom, (iy - shot.shift.1) / shot.zoom);
            let (x, y) = (cos_a * tx + sin_a * ty, -sin_a * tx + cos_a * ty);
            let mut c = mix(shot.background.0, shot.background.1, (iy + 1.0) * 0.5);
            // Hair behind the head and at the sides.
            let back = ellipse(x, y + 0.1, id.face_rx + 0.12 + id.hair_side * 0.2, id.face_ry + 0.1);
            let below_hair = y > -0.1 + id.hair_side * 0.6;
            c = mix(c, id.hair, cover(if below_hair { 1.0 } else { back }, aa));
            // Neck, then the face with its jaw.
            c = mix(c, scale(id.skin, 0.85), cover(capsule((x, y), (0.0, 0.6), (0.0, 1.3), 0.28), aa));
            let jaw = 1.0 + id.jaw * y.max(0.0);
            let face = ellipse(x * jaw, y, id.face_rx, id.face_ry);
            // Shading: brighter towards the light, darker towards the edge of the face.
            let edge = (-face / id.face_rx).clamp(0.0, 1.0);
            let lit = 1.0 + shot.light_strength * (x * shot.light.0 + y * shot.light.1) * 0.8;
            c = mix(c, scale(id.skin, lit * (0.8 + 0.2 * edge)), cover(face, aa));
            // Hair cap above the hairline.
            let cap = ellipse(x, y + 0.05, id.face_rx + 0.06, id.face_ry + 0.08).max(y - id.hairline - 0.08 * x * x);
            c = mix(c, id.hair, cover(cap, aa));
            // Eyes, irises, brows.
            for side in [-1.0f32, 1.0] {
                let (ex, ey) = (x - side * id.eye_dx, y - id.eye_y);
                let open = id.eye_h * shot.eye_open;
                c = mix(c, [235.0, 235.0, 230.0], cover(ellipse(ex, ey, id.eye_w, open), aa));
                let iris = ellipse(ex, ey, id.eye_h * 0.95, id.eye_h * 0.95).max(ellipse(ex, ey, id.eye_w, open));
                c = mix(c, id.iris, cover(iris, aa));
                let pupil = ellipse(ex, ey, id.eye_h * 0.4, id.eye_h * 0.4).max(ellipse(ex, ey, id.eye_w, open));
                c = mix(c, [15.0, 15.0, 15.0], cover(pupil, aa));
                let by = id.eye_y - id.brow_gap - shot.brow_raise;
                let inner = (side * (id.eye_dx - id.eye_w), by + id.brow_slant * 0.5);
                let outer = (side * (id.eye_dx + id.eye_w), by - id.brow_slant * 0.5);
                c = mix(c, id.brow_colour, cover(capsule((x, y), inner, outer, id.brow_thick), aa));
                if let Some(frame) = id.glasses {
                    let ring = ellipse(ex, ey, id.eye_w * 1.6, id.eye_w * 1.2).abs() - 0.012;
                    c = mix(c, frame, cover(ring, aa));
                }
            }
            if let Some(frame) = id.glasses {
                let bridge = capsule(
                    (x, y),
                    (-id.eye_dx + id.eye_w * 1.6, id.eye_y),
                    (id.eye_dx - id.eye_w * 1.6, id.eye_y),
                    0.01,
                );
                c = mix(c, frame, cover(bridge, aa));
            }
            // Nose: a shaded ridge and nostrils.
            let tip = id.eye_y + id.nose_len + 0.05;
            c = mix(
                c,
                scale(id.skin, 0.82 * lit),
                cover(capsule((x, y), (0.0, id.eye_y + 0.05), (0.0, tip), id.nose_w * 0.5), aa),
            );
            for side in [-1.0f32, 1.0] {
                c = mix(c, scale(id.skin, 0.45), cover(ellipse(x - side * id.nose_w, y - tip, 0.018, 0.012), aa));
            }
            // Mouth: a curved line (smile bends it), open mouths show a dark inside.
            let mx = x / id.mouth_w;
            let curve = id.mouth_y - shot.smile * 0.05 * (1.0 - mx * mx);
            if mx.abs() < 1.0 {
                let inside = ellipse(x, y - curve, id.mouth_w * 0.8, shot.mouth_open.max(1e-4));
                c = mix(c, [60.0, 20.0, 25.0], cover(inside, aa));
            }
            let lip = (y - curve).abs() - 0.012 - shot.mouth_open * 0.3;
            c = mix(c, id.lips, cover(lip.max(mx.abs() - 1.0), aa));
            for &(mxp, myp, mr) in &id.moles {
                if mr > 0.0 {
                    c = mix(c, scale(id.skin, 0.4), cover(ellipse(x - mxp, y - myp, mr, mr), aa));
                }
            }
            // An occluder in image space (a hand, a scarf, a sign).
            if let Some((ox, oy, ow, oh, oc)) = shot.occluder {
                let d = (ix - ox).abs().max((iy - oy).abs() / (oh / ow)) - ow;
                c = mix(c, oc, cover(d, aa));
            }
            let o = (py * w + px) * 3;
            for k in 0..3 {
                img[o + k] = c[k] * shot.brightness * shot.cast[k];
            }
        }
    }
    if shot.blur {
        img = box_blur(&img, h, w);
    }
    let r = &mut Philox4x32::new(seed, face_stream(FACE_NOISE_STREAM, identity, sample));
    img.iter().map(|&v| libm::roundf(v + normal(r, shot.noise)).clamp(0.0, 255.0) as u8).collect()
}

/// 3x3 box blur, edges clamped.
fn box_blur(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; img.len()];
    for y in 0..h {
        for x in 0..w {
            for k in 0..3 {
                let mut s = 0.0;
                for dy in [-1i64, 0, 1] {
                    for dx in [-1i64, 0, 1] {
                        let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        s += img[(yy * w + xx) * 3 + k];
                    }
                }
                out[(y * w + x) * 3 + k] = s / 9.0;
            }
        }
    }
    out
}
