//! Randomness as a parameter: a one-method [`Rng`] trait and a deterministic SplitMix64.
//!
//! SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014) is
//! tiny, fast and fully specified, so a seed gives the same picks on every platform. It is for
//! load balancing and jitter, not for anything security-related.

/// A source of uniformly distributed 64-bit values.
pub trait Rng {
    /// The next uniformly distributed value.
    fn next_u64(&mut self) -> u64;
}

impl<R: Rng + ?Sized> Rng for &mut R {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}

/// SplitMix64: a deterministic [`Rng`] from a 64-bit seed (tests, host-sim, per-VM seeding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fully determined by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }
}

/// SplitMix64's finalizer: a bijective avalanche mix of one word.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in `[0, n)` (0 when `n == 0`) by Lemire's multiply-shift; the bias is below
/// `n / 2^64`, far under what any balancer could observe.
pub(crate) fn below(rng: &mut impl Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// A value in `[0, n]`.
pub(crate) fn below_inclusive(rng: &mut impl Rng, n: u64) -> u64 {
    match n.checked_add(1) {
        Some(m) => below(rng, m),
        None => rng.next_u64(),
    }
}

/// A value in `[0, 1)` with 53 random bits.
pub(crate) fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then the SplitMix64 finalizer so that every bit of
/// the input reaches every bit of the output): for consistent-hash keys such as a header
/// value, a cookie or a client IP, and for instance ids.
pub fn key_hash(bytes: &[u8]) -> u64 {
    seeded_hash(bytes, 0)
}

/// [`key_hash`] with a seed mixed in first, so one id gives independent hashes per seed.
pub(crate) fn seeded_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ mix64(seed);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference values of SplitMix64 seeded with 1234567 (from the published C code).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(7);
        assert_eq!(below(&mut rng, 0), 0);
        for n in [1u64, 2, 3, 10, 1_000_003, u64::MAX] {
            for _ in 0..1000 {
                assert!(below(&mut rng, n) < n);
            }
        }
    }
}
