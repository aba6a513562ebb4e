//! FNV-1a (64-bit): the stable hash of bytes that names, checksums and partitions use
//! across the crates, where the value must not change between builds or machines (the
//! standard library's hashers promise no such thing).

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a fed incrementally: the hash of all bytes written, in order.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl Fnv1a {
    /// FNV-1a whose offset basis is xored with `key` first: one hash family per key (the
    /// trainer hashes each id field under its own), fed and finished as FNV-1a.
    #[inline]
    pub fn keyed(key: u8) -> Self {
        Self(OFFSET ^ u64::from(key))
    }

    /// Adds `bytes`.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(PRIME);
        }
        self
    }

    /// The hash of the bytes written so far.
    #[inline]
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv1a::default().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors_and_is_the_same_fed_in_parts() {
        // From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            Fnv1a::default().write(b"foo").write(b"bar").finish(),
            fnv1a(b"foobar")
        );
        assert_eq!(Fnv1a::keyed(0).write(b"a").finish(), fnv1a(b"a"));
        assert_ne!(Fnv1a::keyed(1).write(b"a").finish(), fnv1a(b"a"));
    }
}
