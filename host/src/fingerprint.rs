//! FNV-1a (64 bits): the fingerprints that tell a later run whether a file it reads was made from the same inputs
//! (IJB feature files, galleries). Not a cryptographic hash: it catches mix-ups, not tampering.

/// An FNV-1a 64 hash fed bytes a slice at a time.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    /// The hash of nothing (FNV-1a's offset basis).
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds `bytes`, in order.
    pub fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // FNV-1a 64 test vectors (the algorithm's published table).
        let hash = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.eat(s);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        // Fed in pieces, the same.
        let mut h = Fnv1a::new();
        h.eat(b"foo");
        h.eat(b"bar");
        assert_eq!(h.finish(), hash(b"foobar"));
    }
}
