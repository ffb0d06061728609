//! Which Philox4x32 stream of a seed each kind of draw reads, in one place, so that no two kinds ever share random
//! numbers: a training run's data, initial weights, margins, shuffles and flips are independent of one another even
//! when they come from one seed (as the demo's do).
//!
//! | streams | draws |
//! |---|---|
//! | `0 ..` [`MARGIN_STREAMS`] | step `k`'s margins: stream `k` (the core's `draw_margins_at`, the GPU, the C ABI) |
//! | [`FACE_SAMPLE_STREAM`] `+ i * 2^20 + s` | synthetic face: pose, expression, light, background of sample `s` |
//! | [`FACE_NOISE_STREAM`] `+ i * 2^20 + s` | synthetic face: the sensor noise of that sample |
//! | [`FACE_IDENTITY_STREAM`] `+ i` | synthetic face: the traits of identity `i` |
//! | [`SYNTH_PAIRS_STREAM`] | `synth`: the pairs of `val.bin` |
//! | [`SYNTH_IJB_STREAM`] | `synth`: where each loose crop of the IJB set holds its face |
//! | [`HELD_OUT_PAIRS_STREAM`] | training: the verification pairs drawn from held-out identities |
//! | [`SYNTHETIC_STREAM`] (block `i`) | `--data synthetic`: the pixels of sample `i` |
//! | [`BENCH_STREAM`] | `bench`: its random batches |
//! | [`SHUFFLE_STREAM`] `\| e` | the order of epoch `e` |
//! | [`FLIP_STREAM`] `\| e` | the flips of epoch `e` |
//! | [`INIT_STREAM`] | the initial weights |
//!
//! Synthetic identities and samples are counted below `2^28` and `2^20`, epochs below `2^62 - 1`. A test checks that
//! the ranges are disjoint. Changing a stream changes what a seed makes: the demo's data and figures among them.

/// Streams `0 .. MARGIN_STREAMS` are the training steps' margins (stream `k`: step `k`).
pub const MARGIN_STREAMS: u64 = 1 << 48;
/// First stream of the synthetic faces' per-sample variation (identity `i`, sample `s`: `+ i * 2^20 + s`).
pub const FACE_SAMPLE_STREAM: u64 = 1 << 48;
/// First stream of the synthetic faces' sensor noise (identity `i`, sample `s`: `+ i * 2^20 + s`).
pub const FACE_NOISE_STREAM: u64 = 1 << 49;
/// First stream of the synthetic identities' traits (identity `i`: `+ i`).
pub const FACE_IDENTITY_STREAM: u64 = 1 << 50;
/// The pairs `synth` writes into `val.bin` ("VBIN").
pub const SYNTH_PAIRS_STREAM: u64 = 0x5642_494e << 32;
/// The geometry of `synth`'s loose IJB crops ("IJBC").
pub const SYNTH_IJB_STREAM: u64 = 0x494a_4243 << 32;
/// The verification pairs training draws from held-out identities ("PAIR").
pub const HELD_OUT_PAIRS_STREAM: u64 = 0x5041_4952 << 32;
/// `--data synthetic`: block `i` of this stream seeds sample `i`'s pixels ("SYNT").
pub const SYNTHETIC_STREAM: u64 = 0x5359_4e54 << 32;
/// `bench`'s random batches ("BNCH").
pub const BENCH_STREAM: u64 = 0x424e_4348 << 32;
/// Epoch `e`'s shuffle reads stream `SHUFFLE_STREAM | e`.
pub const SHUFFLE_STREAM: u64 = 1 << 63;
/// Epoch `e`'s flips read stream `FLIP_STREAM | e`.
pub const FLIP_STREAM: u64 = (1 << 63) | (1 << 62);
/// The initial weights.
pub const INIT_STREAM: u64 = u64::MAX;

/// Bits of a synthetic sample's index within its identity (`s < 2^20`).
pub const FACE_SAMPLE_BITS: u32 = 20;

/// The stream of synthetic sample `sample` of `identity` in the range that begins at `first`.
pub fn face_stream(first: u64, identity: u64, sample: u64) -> u64 {
    first + (identity << FACE_SAMPLE_BITS) + sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kinds_of_draws_read_disjoint_streams() {
        // [first, last] of every kind, at the documented counts: identities below 2^28, samples below 2^20, epochs
        // below 2^62 - 1.
        let faces = |first: u64| (first, face_stream(first, (1 << 28) - 1, (1 << FACE_SAMPLE_BITS) - 1));
        let one = |s: u64| (s, s);
        let epochs = (1u64 << 62) - 2;
        let mut ranges = [
            ("margins", (0, MARGIN_STREAMS - 1)),
            ("face samples", faces(FACE_SAMPLE_STREAM)),
            ("face noise", faces(FACE_NOISE_STREAM)),
            ("face identities", (FACE_IDENTITY_STREAM, FACE_IDENTITY_STREAM + (1 << 28) - 1)),
            ("synth pairs", one(SYNTH_PAIRS_STREAM)),
            ("synth ijb", one(SYNTH_IJB_STREAM)),
            ("held-out pairs", one(HELD_OUT_PAIRS_STREAM)),
            ("synthetic data", one(SYNTHETIC_STREAM)),
            ("bench", one(BENCH_STREAM)),
            ("shuffles", (SHUFFLE_STREAM, SHUFFLE_STREAM | epochs)),
            ("flips", (FLIP_STREAM, FLIP_STREAM | epochs)),
            ("init", one(INIT_STREAM)),
        ];
        ranges.sort_by_key(|&(_, (first, _))| first);
        for pair in ranges.windows(2) {
            let ((a, (_, a_last)), (b, (b_first, _))) = (pair[0], pair[1]);
            assert!(a_last < b_first, "{a} (to {a_last:#x}) overlaps {b} (from {b_first:#x})");
        }
        for (name, (first, last)) in ranges {
            assert!(first <= last, "{name}: empty range");
        }
    }
}
