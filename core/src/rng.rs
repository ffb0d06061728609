//! Counter-based random numbers (Philox4x32-10) and a normal sampler on `libm`.
//!
//! ElasticFace draws a fresh margin per sample at every training step. To make those margins reproducible bit
//! for bit, on the CPU, on any GPU and on any target, the generator is counter-based: block `i` of stream
//! `stream` under key `seed` is a pure function [`Philox4x32::block`] of the three numbers, so a GPU thread can
//! compute sample `i`'s margin of step `stream` without any shared state, and the CPU gets the same value by
//! drawing sequentially.
//!
//! # The generator
//!
//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
//! generator of Random123 and cuRAND's `curand_init(seed, subsequence, ...)`:
//! - key `[seed_lo, seed_hi]` (the two 32-bit halves of the `u64` seed);
//! - counter `[block_lo, block_hi, stream_lo, stream_hi]`;
//! - output: four 32-bit words per counter value.
//!
//! The [`RngCore`] implementation hands out the words of blocks 0, 1, 2, ... of one stream in order
//! (word 0 of a block first). [`RngCore::next_u64`] takes two successive words, the first as the low half.
//!
//! # Normals
//!
//! [`standard_normal`] is Box–Muller in `f64` using only the cosine branch: one normal consumes two `u64`
//! draws, i.e. exactly one Philox block when the stream is at a block boundary. [`Philox4x32::normal_at`] is
//! therefore the `i`-th normal of a stream computed directly. Only `libm` is used (software `log`, `cos`, and
//! the correctly rounded `sqrt`), and no fused multiply-add, so the bits are the same on every target whose `f64`
//! arithmetic is IEEE binary64 (SSE2 on x86, every other architecture, software floats). The exception: x86
//! targets without SSE2 (`i586`, `i686` built without it) compute `f64` on the x87 unit, in extended precision, and
//! `libm` swaps in an x87 `exp` there, so their bits may differ.
//!
//! # Streams of a training seed
//!
//! A training run draws the margins of step `t` from stream `t` of its seed
//! ([`MarginConfig::draw_margins_at`](crate::margin::MarginConfig::draw_margins_at)): streams `0..steps` of a
//! training seed belong to the margins. Anything else drawn from the same seed (the initial weights, data order)
//! must use other streams; the host initialises the weights from stream `u64::MAX`.
//!
//! # Stability
//!
//! The words of every `(seed, stream, block)` and the normals derived from them are part of the public contract:
//! published training runs are reproduced from a seed. Tests pin them; changing any of them is a breaking change.

use rand_core::{RngCore, SeedableRng};

/// First Philox multiplier (applied to counter word 0).
const PHILOX_M0: u32 = 0xD251_1F53;
/// Second Philox multiplier (applied to counter word 2).
const PHILOX_M1: u32 = 0xCD9E_8D57;
/// Key increment per round, first word (golden ratio).
const PHILOX_W0: u32 = 0x9E37_79B9;
/// Key increment per round, second word (sqrt(3) - 1).
const PHILOX_W1: u32 = 0xBB67_AE85;
/// Number of rounds.
const PHILOX_ROUNDS: usize = 10;

/// One Philox4x32 round: two 32x32 -> 64 bit products, their halves mixed with the other counter words and the key.
#[inline(always)]
const fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let p0 = (PHILOX_M0 as u64) * (ctr[0] as u64);
    let p1 = (PHILOX_M1 as u64) * (ctr[2] as u64);
    let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
    let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// The Philox4x32-10 bijection of Random123: ten rounds of `counter` under `key`, the key bumped by the Weyl
/// constants between rounds.
///
/// This is the raw function the known-answer vectors of Random123 test; [`Philox4x32::block`] maps a seed,
/// stream and block index onto it.
pub const fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut ctr = round(counter, key);
    let mut key = key;
    let mut r = 1;
    while r < PHILOX_ROUNDS {
        key = [key[0].wrapping_add(PHILOX_W0), key[1].wrapping_add(PHILOX_W1)];
        ctr = round(ctr, key);
        r += 1;
    }
    ctr
}

/// A bound on the magnitude of every [`standard_normal`]: the largest is `sqrt(-2 ln 2^-53) = 8.5717...`.
pub(crate) const STANDARD_NORMAL_BOUND: f64 = 8.58;

/// `2^-53`: the spacing of the 53-bit uniforms.
const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;

/// A standard normal from two 64-bit words (Box–Muller, cosine branch).
///
/// `u1 = (top 53 bits of x + 1) * 2^-53` lies in `(0, 1]`, so the logarithm is finite and the result is bounded
/// by `sqrt(-2 ln 2^-53) < 8.58`; `u2 = (top 53 bits of y) * 2^-53` lies in `[0, 1)`.
#[inline]
fn normal_from_u64s(x: u64, y: u64) -> f64 {
    let u1 = ((x >> 11) + 1) as f64 * TWO_POW_MINUS_53;
    let u2 = (y >> 11) as f64 * TWO_POW_MINUS_53;
    let radius = libm::sqrt(-2.0 * libm::log(u1));
    radius * libm::cos(core::f64::consts::TAU * u2)
}

/// Joins two words, the first as the low half (the order [`RngCore::next_u64`] of [`Philox4x32`] uses).
#[inline(always)]
const fn join(lo: u32, hi: u32) -> u64 {
    (lo as u64) | ((hi as u64) << 32)
}

/// A standard normal variate (mean 0, variance 1) from any generator.
///
/// Box–Muller in `f64`, cosine branch only: draws `x = rng.next_u64()`, then `y = rng.next_u64()`, and returns
/// `sqrt(-2 ln u1) * cos(2 pi u2)` with `u1 = ((x >> 11) + 1) 2^-53` in `(0, 1]` and `u2 = (y >> 11) 2^-53` in
/// `[0, 1)`. The result is always finite (`|z| < 8.58`). With a [`Philox4x32`] positioned at a block boundary,
/// one normal consumes exactly one block, so the `i`-th normal of a fresh stream is
/// [`Philox4x32::normal_at`]`(seed, stream, i)`.
pub fn standard_normal<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    let x = rng.next_u64();
    let y = rng.next_u64();
    normal_from_u64s(x, y)
}

/// The Philox4x32-10 counter-based generator: one stream of one key, read sequentially.
///
/// The stream is the sequence of blocks `0, 1, 2, ...` of [`Philox4x32::block`]`(seed, stream, _)`, handed out
/// word by word. Its position is counted in words ([`Philox4x32::word_pos`]) and can be set directly
/// ([`Philox4x32::set_word_pos`]). The block counter is 64 bits: a stream repeats after `2^66` words.
///
/// Two generators are equal when they have the same key, stream and position (modulo `2^66` words): they then draw
/// the same words, however each got there.
#[derive(Clone, Debug)]
pub struct Philox4x32 {
    /// Key: the seed's low and high halves.
    key: [u32; 2],
    /// Stream number (counter words 2 and 3).
    stream: u64,
    /// Index of the block held in `buf`.
    block: u64,
    /// The words of block `block`.
    buf: [u32; 4],
    /// Next word of `buf` to hand out; 4 when `buf` is used up.
    next: usize,
}

impl Philox4x32 {
    /// The generator at the start of stream `stream` of key `seed`.
    pub const fn new(seed: u64, stream: u64) -> Self {
        Self { key: [seed as u32, (seed >> 32) as u32], stream, block: 0, buf: Self::block(seed, stream, 0), next: 0 }
    }

    /// Block `index` of stream `stream` of key `seed`, computed directly: Philox4x32-10 of the counter
    /// `[index_lo, index_hi, stream_lo, stream_hi]` under the key `[seed_lo, seed_hi]`.
    pub const fn block(seed: u64, stream: u64, index: u64) -> [u32; 4] {
        philox4x32_10(
            [index as u32, (index >> 32) as u32, stream as u32, (stream >> 32) as u32],
            [seed as u32, (seed >> 32) as u32],
        )
    }

    /// Normal `i` of stream `stream` of key `seed`, computed directly from block `i`: the value the `i`-th call
    /// of [`standard_normal`] returns on `Philox4x32::new(seed, stream)` when nothing else is drawn from it.
    pub fn normal_at(seed: u64, stream: u64, i: u64) -> f64 {
        let w = Self::block(seed, stream, i);
        normal_from_u64s(join(w[0], w[1]), join(w[2], w[3]))
    }

    /// The key this generator was made with.
    pub const fn seed(&self) -> u64 {
        join(self.key[0], self.key[1])
    }

    /// The stream this generator reads.
    pub const fn stream(&self) -> u64 {
        self.stream
    }

    /// Number of 32-bit words drawn since the start of the stream (modulo `2^66`, so below `2^66`). A `next_u64`
    /// counts two.
    pub const fn word_pos(&self) -> u128 {
        // `next` is 4 when block `block` is used up: the position is then the start of the next block, which for
        // the last block is 2^66, the start of the stream again.
        ((self.block as u128) * 4 + self.next as u128) & ((1u128 << 66) - 1)
    }

    /// Moves to word `pos` (taken modulo `2^66`) of the stream; the next word drawn is that word.
    pub fn set_word_pos(&mut self, pos: u128) {
        let block = (pos >> 2) as u64;
        self.block = block;
        self.buf = Self::block(self.seed(), self.stream, block);
        self.next = (pos & 3) as usize;
    }
}

impl PartialEq for Philox4x32 {
    /// Same key, stream and position: the same words to come (the buffered block is a function of these).
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.stream == other.stream && self.word_pos() == other.word_pos()
    }
}

impl Eq for Philox4x32 {}

impl RngCore for Philox4x32 {
    /// The next word of the stream.
    #[inline]
    fn next_u32(&mut self) -> u32 {
        if self.next == 4 {
            self.block = self.block.wrapping_add(1);
            self.buf = Self::block(self.seed(), self.stream, self.block);
            self.next = 0;
        }
        let w = self.buf[self.next];
        self.next += 1;
        w
    }

    /// Two successive words: the first is the low half, the second the high half.
    #[inline]
    fn next_u64(&mut self) -> u64 {
        let lo = self.next_u32();
        let hi = self.next_u32();
        join(lo, hi)
    }

    /// The little-endian bytes of successive words. A trailing partial word still consumes a whole word (its
    /// unused bytes are dropped), so the position afterwards is `ceil(len / 4)` words further.
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(4) {
            let bytes = self.next_u32().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

impl SeedableRng for Philox4x32 {
    /// The seed (`u64`, little-endian) followed by the stream (`u64`, little-endian).
    type Seed = [u8; 16];

    /// `Philox4x32::new(seed, stream)` with both read little-endian from the 16 bytes.
    fn from_seed(seed: Self::Seed) -> Self {
        let mut s = [0u8; 8];
        let mut t = [0u8; 8];
        s.copy_from_slice(&seed[..8]);
        t.copy_from_slice(&seed[8..]);
        Self::new(u64::from_le_bytes(s), u64::from_le_bytes(t))
    }

    /// `Philox4x32::new(state, 0)`: the `u64` is the key itself, not expanded through PCG as rand_core's default
    /// does, so seeds given on a command line mean the same here and on a GPU.
    fn seed_from_u64(state: u64) -> Self {
        Self::new(state, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123 `tests/kat_vectors`, the three `philox4x32 10` lines: counter, key, expected output.
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0; 4], [0; 2], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
        ([u32::MAX; 4], [u32::MAX; 2], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];

    #[test]
    fn random123_known_answers() {
        for (ctr, key, want) in KAT {
            assert_eq!(philox4x32_10(ctr, key), want, "ctr {ctr:08x?} key {key:08x?}");
        }
    }

    #[test]
    fn block_maps_seed_stream_and_index_onto_key_and_counter() {
        // Third KAT vector: counter [243f6a88, 85a308d3, 13198a2e, 03707344], key [a4093822, 299f31d0].
        let seed = 0x299f_31d0_a409_3822;
        let stream = 0x0370_7344_1319_8a2e;
        let index = 0x85a3_08d3_243f_6a88;
        assert_eq!(Philox4x32::block(seed, stream, index), KAT[2].2);
        assert_eq!(Philox4x32::block(0, 0, 0), KAT[0].2);
        assert_eq!(Philox4x32::block(u64::MAX, u64::MAX, u64::MAX), KAT[1].2);
    }

    #[test]
    fn sequential_words_are_the_blocks_in_order() {
        let (seed, stream) = (0x0123_4567_89ab_cdef, 42);
        let mut rng = Philox4x32::new(seed, stream);
        for b in 0..5 {
            let want = Philox4x32::block(seed, stream, b);
            for (k, &w) in want.iter().enumerate() {
                assert_eq!(rng.word_pos(), u128::from(b) * 4 + k as u128);
                assert_eq!(rng.next_u32(), w);
            }
        }
    }

    #[test]
    fn next_u64_is_low_word_then_high_word_even_across_blocks() {
        let mut a = Philox4x32::new(9, 3);
        let mut b = a.clone();
        let _ = a.next_u32(); // odd position: the next u64 straddles words 1-2, then 3 and word 0 of block 1
        let _ = b.next_u32();
        for _ in 0..3 {
            let lo = b.next_u32();
            let hi = b.next_u32();
            assert_eq!(a.next_u64(), u64::from(lo) | (u64::from(hi) << 32));
        }
    }

    #[test]
    fn fill_bytes_is_little_endian_words_and_consumes_whole_words() {
        let mut a = Philox4x32::new(5, 6);
        let mut b = a.clone();
        let mut bytes = [0u8; 7];
        a.fill_bytes(&mut bytes);
        let w0 = b.next_u32().to_le_bytes();
        let w1 = b.next_u32().to_le_bytes();
        assert_eq!(bytes[..4], w0);
        assert_eq!(bytes[4..], w1[..3]);
        assert_eq!(a.word_pos(), 2);
        assert_eq!(a.next_u32(), b.next_u32());
    }

    #[test]
    fn set_word_pos_seeks_anywhere() {
        let mut seq = Philox4x32::new(77, 1);
        let words: [u32; 13] = core::array::from_fn(|_| seq.next_u32());
        let mut r = Philox4x32::new(77, 1);
        for (pos, &w) in words.iter().enumerate().rev() {
            r.set_word_pos(pos as u128);
            assert_eq!(r.word_pos(), pos as u128);
            assert_eq!(r.next_u32(), w);
        }
        // Far positions wrap at 2^66 words and the block counter wraps with them.
        r.set_word_pos((1u128 << 66) + 5);
        assert_eq!(r.word_pos(), 5);
        r.set_word_pos((1u128 << 66) - 1);
        let last = r.next_u32();
        assert_eq!(last, Philox4x32::block(77, 1, u64::MAX)[3]);
        assert_eq!(r.next_u32(), words[0]);
    }

    #[test]
    fn equal_means_same_key_stream_and_position() {
        let mut a = Philox4x32::new(3, 4);
        for _ in 0..4 {
            let _ = a.next_u32();
        }
        let mut b = Philox4x32::new(3, 4);
        b.set_word_pos(4);
        assert_eq!(a, b);
        assert_eq!(a.next_u32(), b.next_u32());
        assert_eq!(a, b);
        assert_ne!(a, Philox4x32::new(3, 4));
        b.set_word_pos(4);
        assert_ne!(a, b);
        assert_ne!(Philox4x32::new(3, 4), Philox4x32::new(3, 5));
        assert_ne!(Philox4x32::new(3, 4), Philox4x32::new(2, 4));
    }

    #[test]
    fn word_pos_is_below_2_pow_66() {
        let mut r = Philox4x32::new(8, 9);
        r.set_word_pos((1u128 << 66) - 4);
        assert_eq!(r.word_pos(), (1u128 << 66) - 4);
        for _ in 0..4 {
            let _ = r.next_u32();
        }
        // The whole stream drawn: back at its start.
        assert_eq!(r.word_pos(), 0);
        assert_eq!(r, Philox4x32::new(8, 9));
        assert_eq!(r.next_u32(), Philox4x32::new(8, 9).next_u32());
    }

    #[test]
    fn seedable_rng_reads_seed_then_stream_little_endian() {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        bytes[8..].copy_from_slice(&99u64.to_le_bytes());
        let r = Philox4x32::from_seed(bytes);
        assert_eq!(r, Philox4x32::new(0x1122_3344_5566_7788, 99));
        assert_eq!((r.seed(), r.stream()), (0x1122_3344_5566_7788, 99));
        assert_eq!(Philox4x32::seed_from_u64(1234), Philox4x32::new(1234, 0));
    }

    #[test]
    fn normal_at_equals_the_sequential_draws() {
        for (seed, stream) in [(0, 0), (20_261_128, 3), (u64::MAX, 1 << 40)] {
            let mut rng = Philox4x32::new(seed, stream);
            for i in 0..200 {
                let z = standard_normal(&mut rng);
                assert_eq!(z.to_bits(), Philox4x32::normal_at(seed, stream, i).to_bits(), "normal {i}");
                assert!(z.is_finite() && z.abs() < 8.58);
            }
            assert_eq!(rng.word_pos(), 800);
        }
    }

    #[test]
    fn normal_extremes_are_finite() {
        // u1 = 1 (x all ones) gives radius 0; u1 = 2^-53 (x = 0) gives the largest radius.
        assert_eq!(normal_from_u64s(u64::MAX, 0), 0.0);
        let z = normal_from_u64s(0, 0);
        assert!(z > 8.57 && z < 8.58, "{z}");
    }

    // Value stability: the numbers below are what seed 20261128 gives (words checked against an independent
    // Python Philox, normals against CPython's math on the same words). Margins of published runs are derived
    // from them; changing the generator, the word order or the normal sampler changes them and is a breaking
    // change. Do not update these values to make a test pass.

    #[test]
    fn pinned_words() {
        let mut rng = Philox4x32::new(20_261_128, 0);
        let words: [u32; 8] = core::array::from_fn(|_| rng.next_u32());
        assert_eq!(words, PINNED_WORDS_S0);
        let mut rng = Philox4x32::new(20_261_128, 7);
        rng.set_word_pos(4 * 1000);
        let words: [u32; 4] = core::array::from_fn(|_| rng.next_u32());
        assert_eq!(words, PINNED_WORDS_S7_B1000);
    }

    #[test]
    fn pinned_normals() {
        let mut rng = Philox4x32::new(20_261_128, 0);
        for (i, &bits) in PINNED_NORMALS_S0.iter().enumerate() {
            assert_eq!(standard_normal(&mut rng).to_bits(), bits, "normal {i}");
        }
        assert_eq!(Philox4x32::normal_at(20_261_128, 7, 1000).to_bits(), PINNED_NORMAL_S7_I1000);
    }

    const PINNED_WORDS_S0: [u32; 8] =
        [0xc446_57aa, 0x1308_f256, 0xd658_0a68, 0x0932_0523, 0xd63a_4a8d, 0x94fc_2049, 0x31c4_d626, 0xbaf4_8fe9];
    const PINNED_WORDS_S7_B1000: [u32; 4] = [0xfcaa_d152, 0x7497_05d7, 0x1f78_8f26, 0xa9ff_26c8];
    /// 2.2220517266172544, -0.12850214458940798, 2.3468062625824255, -1.1477556124934924, -0.6797621729951104,
    /// -1.8634738878885466.
    const PINNED_NORMALS_S0: [u64; 6] = [
        0x4001_c6c3_0e3e_bb45,
        0xbfc0_72c2_1e3d_1a7b,
        0x4002_c642_5c9e_b74f,
        0xbff2_5d34_fd37_5c28,
        0xbfe5_c09c_99c2_4cf4,
        0xbffd_d0c9_fed6_e684,
    ];
    /// -0.6448775065843285. (CPython on glibc gets ...538, one ulp away: glibc's `log`/`cos` are not the `libm`
    /// crate's. That is why only `libm` is used here: its software functions give these bits on every target.)
    const PINNED_NORMAL_S7_I1000: u64 = 0xbfe4_a2d6_2716_9539;
}
