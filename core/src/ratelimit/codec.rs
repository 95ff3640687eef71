//! The fixed state layout: a tag byte (high nibble: algorithm, low nibble: layout version),
//! then fields in little-endian order. Length and tag are checked before any field is read.

use super::StateError;

/// Tag of `FixedWindowState`, layout 1.
pub(super) const TAG_FIXED_WINDOW: u8 = 0x11;
/// Tag of `SlidingWindowState`, layout 1.
pub(super) const TAG_SLIDING_WINDOW: u8 = 0x21;
/// Tag of `ApproxSlidingWindowState`, layout 1.
pub(super) const TAG_APPROX_WINDOW: u8 = 0x31;
/// Tag of `TokenBucketState`, layout 1.
pub(super) const TAG_TOKEN_BUCKET: u8 = 0x41;
/// Tag of `LeakyBucketState`, layout 1.
pub(super) const TAG_LEAKY_BUCKET: u8 = 0x51;

/// Reads fields of a byte string whose length and tag were checked by [`Reader::open`].
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the length and tag; the reader starts after the tag.
    pub(super) fn open(bytes: &'a [u8], tag: u8, len: usize) -> Result<Self, StateError> {
        if bytes.len() != len {
            return Err(StateError::Length {
                expected: len,
                actual: bytes.len(),
            });
        }
        match bytes.first() {
            Some(&found) if found == tag => Ok(Self { bytes, pos: 1 }),
            Some(&found) => Err(StateError::Tag {
                expected: tag,
                found,
            }),
            None => Err(StateError::Length {
                expected: len,
                actual: 0,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        // The length was checked in `open`, so the slice is always there; a short read would
        // yield zeros rather than a panic.
        if let Some(src) = self.bytes.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }

    pub(super) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub(super) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
}

/// Writes a tag and fields into a fixed-size array.
pub(super) struct Writer<const N: usize> {
    bytes: [u8; N],
    pos: usize,
}

impl<const N: usize> Writer<N> {
    pub(super) fn new(tag: u8) -> Self {
        let mut bytes = [0; N];
        if let Some(first) = bytes.first_mut() {
            *first = tag;
        }
        Self { bytes, pos: 1 }
    }

    fn put(&mut self, src: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(self.pos..self.pos + src.len()) {
            dst.copy_from_slice(src);
        }
        self.pos += src.len();
    }

    pub(super) fn u64(mut self, v: u64) -> Self {
        self.put(&v.to_le_bytes());
        self
    }

    pub(super) fn u32(mut self, v: u32) -> Self {
        self.put(&v.to_le_bytes());
        self
    }

    pub(super) fn finish(self) -> [u8; N] {
        debug_assert_eq!(self.pos, N, "state layout length mismatch");
        self.bytes
    }
}
