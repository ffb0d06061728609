//! A reader that turns the fuzzer's bytes into the values the targets need; past the end it yields zeros.

#![allow(dead_code)] // each target uses a part

pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// True with probability about `1 / n`.
    pub fn one_in(&mut self, n: u8) -> bool {
        self.u8().is_multiple_of(n)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A value below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.u32() as usize % n
    }

    /// A float: mostly ordinary values, sometimes raw bits (NaN, infinities, subnormals, huge values).
    pub fn f32(&mut self) -> f32 {
        match self.u8() % 8 {
            0 => f32::from_bits(self.u32()),
            1 => [0.0, -0.0, 1.0, -1.0, f32::NAN, f32::INFINITY, f32::MAX, f32::MIN_POSITIVE][self.below(8)],
            _ => (self.u8() as i8) as f32 / 64.0,
        }
    }

    /// A threshold-like value: mostly in [-1.25, 1.25], sometimes anything.
    pub fn threshold(&mut self) -> f32 {
        match self.u8() % 4 {
            0 => self.f32(),
            _ => (self.u8() as i8) as f32 / 100.0,
        }
    }
}
