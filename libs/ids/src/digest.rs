use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::U64;

use crate::validate::ValidationError;

const SHA256_PREFIX: &str = "sha256:";
const BLOCK: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest. Its hex part is safe to
/// use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(value: &str) -> Result<Digest, ValidationError> {
        let malformed = |why| ValidationError::Malformed {
            what: "digest",
            value: value.chars().take(80).collect(),
            why,
        };
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(malformed("expected algorithm:hex"));
        };
        if algorithm != "sha256" {
            return Err(malformed("only sha256 digests are supported"));
        }
        if hex.len() != 64 {
            return Err(malformed("a sha256 digest has 64 hex digits"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(malformed("hex digits must be 0-9 or lowercase a-f"));
        }
        Ok(Digest(value.to_string()))
    }

    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Digest {
        Digest(format!("{SHA256_PREFIX}{}", hex::encode(bytes)))
    }

    /// The digest of `data`, in one call.
    pub fn of(data: &[u8]) -> Digest {
        let mut hasher = Sha256Hasher::new();
        hasher.update(data);
        hasher.finalize()
    }

    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Digest, ValidationError> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Digest, ValidationError> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of a SHA-256 computation at a block boundary: enough to carry
/// on hashing from byte `offset` without reading the bytes before it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256Checkpoint {
    /// Bytes hashed so far; always a multiple of the 64-byte block size.
    pub offset: u64,
    pub state: [u32; 8],
}

/// A SHA-256 hasher whose state can be saved and restored, so an interrupted
/// ingest resumes without re-reading what it already hashed.
///
/// The block function is sha2's `compress256`, which picks the SHA-NI
/// instructions at run time where the CPU has them.
#[derive(Clone)]
pub struct Sha256Hasher {
    state: [u32; 8],
    buffer: [u8; BLOCK],
    buffered: usize,
    /// Bytes compressed into `state` (a multiple of 64).
    compressed: u64,
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256Hasher")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

const INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

// The cast in `as_blocks` relies on this layout.
const _: () = assert!(std::mem::size_of::<GenericArray<u8, U64>>() == BLOCK);
const _: () = assert!(std::mem::align_of::<GenericArray<u8, U64>>() == 1);

fn as_blocks(data: &[u8]) -> &[GenericArray<u8, U64>] {
    debug_assert_eq!(data.len() % BLOCK, 0);
    // SAFETY: GenericArray<u8, U64> is a transparent wrapper over 64 bytes
    // with alignment 1 (both checked at compile time above), so any byte
    // slice whose length is a multiple of 64 is a valid slice of
    // `len / 64` blocks borrowing the same memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / BLOCK) }
}

impl Default for Sha256Hasher {
    fn default() -> Self {
        Sha256Hasher::new()
    }
}

impl Sha256Hasher {
    pub fn new() -> Sha256Hasher {
        Sha256Hasher {
            state: INITIAL_STATE,
            buffer: [0; BLOCK],
            buffered: 0,
            compressed: 0,
        }
    }

    /// A hasher that has hashed the `checkpoint.offset` bytes the checkpoint
    /// was taken after.
    pub fn resume(checkpoint: &Sha256Checkpoint) -> Option<Sha256Hasher> {
        if checkpoint.offset % BLOCK as u64 != 0 {
            return None;
        }
        Some(Sha256Hasher {
            state: checkpoint.state,
            buffer: [0; BLOCK],
            buffered: 0,
            compressed: checkpoint.offset,
        })
    }

    /// Total bytes hashed.
    pub fn len(&self) -> u64 {
        self.compressed + self.buffered as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state at the last block boundary. Bytes after `offset` (fewer
    /// than 64) must be hashed again after [`Sha256Hasher::resume`].
    pub fn checkpoint(&self) -> Sha256Checkpoint {
        Sha256Checkpoint {
            offset: self.compressed,
            state: self.state,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if self.buffered > 0 {
            let take = (BLOCK - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < BLOCK {
                return;
            }
            let block = self.buffer;
            sha2::compress256(&mut self.state, as_blocks(&block));
            self.compressed += BLOCK as u64;
            self.buffered = 0;
        }
        let whole = data.len() - data.len() % BLOCK;
        if whole > 0 {
            sha2::compress256(&mut self.state, as_blocks(&data[..whole]));
            self.compressed += whole as u64;
        }
        let rest = &data[whole..];
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The digest of everything hashed so far; the hasher itself is left as
    /// it was, so hashing may go on.
    pub fn digest(&self) -> Digest {
        let bit_len = self.len().wrapping_mul(8);
        let mut state = self.state;
        let mut tail = [0u8; 2 * BLOCK];
        tail[..self.buffered].copy_from_slice(&self.buffer[..self.buffered]);
        tail[self.buffered] = 0x80;
        let padded = if self.buffered + 1 + 8 <= BLOCK {
            BLOCK
        } else {
            2 * BLOCK
        };
        tail[padded - 8..padded].copy_from_slice(&bit_len.to_be_bytes());
        sha2::compress256(&mut state, as_blocks(&tail[..padded]));
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_sha256_bytes(&out)
    }

    pub fn finalize(self) -> Digest {
        self.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn reference(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
    }

    #[test]
    fn matches_sha2_for_every_length_around_the_block_boundaries() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(
                Digest::of(&data[..len]).as_str(),
                reference(&data[..len]),
                "{len}"
            );
        }
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Digest::of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn split_updates_equal_one_update() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for split in [1usize, 7, 63, 64, 65, 129, 4096, 9999] {
            let mut hasher = Sha256Hasher::new();
            for piece in data.chunks(split) {
                hasher.update(piece);
            }
            assert_eq!(
                hasher.finalize().as_str(),
                reference(&data),
                "split {split}"
            );
        }
    }

    #[test]
    fn resuming_from_a_checkpoint_gives_the_same_digest() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 199) as u8).collect();
        for cut in [0usize, 1, 64, 100, 1000, 4999] {
            let mut first = Sha256Hasher::new();
            first.update(&data[..cut]);
            let checkpoint = first.checkpoint();
            assert_eq!(checkpoint.offset % 64, 0);
            assert!(checkpoint.offset <= cut as u64);
            let json = serde_json::to_string(&checkpoint).unwrap();
            let restored: Sha256Checkpoint = serde_json::from_str(&json).unwrap();
            let mut second = Sha256Hasher::resume(&restored).unwrap();
            second.update(&data[restored.offset as usize..]);
            assert_eq!(second.finalize().as_str(), reference(&data), "cut {cut}");
        }
        assert!(Sha256Hasher::resume(&Sha256Checkpoint {
            offset: 3,
            state: [0; 8]
        })
        .is_none());
    }

    #[test]
    fn digest_parsing_is_strict() {
        let good = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::parse(good).unwrap().hex().len(), 64);
        for bad in [
            "",
            "sha256:",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_digest_shows_itself_whole_everywhere() {
        let digest = Digest::of(b"x");
        let text = reference(b"x");
        assert_eq!(digest.algorithm(), "sha256");
        assert_eq!(digest.to_string(), text);
        assert_eq!(format!("{digest:?}"), text);
        assert_eq!(String::from(digest), text);
    }

    #[test]
    fn a_hasher_knows_whether_it_has_hashed_anything() {
        let mut hasher = Sha256Hasher::new();
        assert!(hasher.is_empty());
        hasher.update(b"");
        assert!(hasher.is_empty());
        hasher.update(b"x");
        assert!(!hasher.is_empty());
        assert_eq!(format!("{hasher:?}"), "Sha256Hasher { len: 1, .. }");
    }
}
