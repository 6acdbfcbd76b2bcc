//! Guest images: a flat binary whose first 48 bytes are a header written by
//! `guest-driver-c/runtime/start.S`. Validation is pure logic.

use crate::layout::{IMAGE_BASE, IMAGE_LIMIT};
use thiserror::Error;

/// Magic at the start of every guest image.
pub const IMAGE_MAGIC: &[u8; 8] = b"MEMOUTG1";
/// Size of the image header.
pub const HEADER_SIZE: usize = 48;

/// Why an image was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read guest image {path}: {reason}")]
    Read {
        /// Path given.
        path: String,
        /// OS error text.
        reason: String,
    },
    /// Not a memout guest image.
    #[error("not a memout guest image: {0}")]
    Invalid(String),
    /// The image (with its bss) does not fit the boot region's image area.
    #[error("guest image needs {needed} bytes but the image area holds {limit}")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        limit: u64,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A validated guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// File contents, loaded at `load_addr`.
    pub bytes: Vec<u8>,
    /// Guest-physical (= virtual) load address.
    pub load_addr: u64,
    /// Entry point.
    pub entry: u64,
    /// End of the memory image including bss.
    pub bss_end: u64,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl GuestImage {
    /// Reads and validates an image file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if meta.len() > IMAGE_LIMIT - IMAGE_BASE {
            return Err(Error::TooLarge {
                needed: meta.len(),
                limit: IMAGE_LIMIT - IMAGE_BASE,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(bytes)
    }

    /// Validates image bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let bad = |m: &str| Err(Error::Invalid(m.to_string()));
        if bytes.len() < HEADER_SIZE {
            return bad("shorter than the 48-byte header");
        }
        if &bytes[0..8] != IMAGE_MAGIC {
            return bad("missing MEMOUTG1 magic");
        }
        if u32::from_le_bytes(bytes[8..12].try_into().unwrap()) != 1 {
            return bad("unsupported header version");
        }
        let (entry, load, end, bss_end) = (
            u64_at(&bytes, 16),
            u64_at(&bytes, 24),
            u64_at(&bytes, 32),
            u64_at(&bytes, 40),
        );
        if load != IMAGE_BASE {
            return Err(Error::Invalid(format!(
                "load address {load:#x} is not {IMAGE_BASE:#x}"
            )));
        }
        if end < load || bss_end < end || (bytes.len() as u64) > end - load {
            return bad("inconsistent image sizes");
        }
        if bss_end > IMAGE_LIMIT {
            return Err(Error::TooLarge {
                needed: bss_end - load,
                limit: IMAGE_LIMIT - IMAGE_BASE,
            });
        }
        if entry < load + HEADER_SIZE as u64 || entry >= end {
            return Err(Error::Invalid(format!(
                "entry point {entry:#x} outside the image"
            )));
        }
        Ok(Self {
            bytes,
            load_addr: load,
            entry,
            bss_end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(entry: u64, end: u64, bss: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(IMAGE_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&entry.to_le_bytes());
        b[24..32].copy_from_slice(&IMAGE_BASE.to_le_bytes());
        b[32..40].copy_from_slice(&end.to_le_bytes());
        b[40..48].copy_from_slice(&bss.to_le_bytes());
        b
    }

    #[test]
    fn accepts_a_sane_image() {
        let img = GuestImage::parse(header(
            IMAGE_BASE + 64,
            IMAGE_BASE + 256,
            IMAGE_BASE + 4096,
            256,
        ))
        .unwrap();
        assert_eq!(img.entry, IMAGE_BASE + 64);
    }

    #[test]
    fn refuses_bad_images() {
        assert!(matches!(
            GuestImage::parse(vec![0; 10]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            GuestImage::parse(vec![0; 100]),
            Err(Error::Invalid(_))
        ));
        let mut v = header(IMAGE_BASE + 64, IMAGE_BASE + 256, IMAGE_BASE + 4096, 256);
        v[8] = 2;
        assert!(matches!(GuestImage::parse(v), Err(Error::Invalid(_))));
        assert!(matches!(
            GuestImage::parse(header(IMAGE_BASE, IMAGE_BASE + 256, IMAGE_BASE + 256, 256)),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            GuestImage::parse(header(
                IMAGE_BASE + 64,
                IMAGE_BASE + 128,
                IMAGE_BASE + 256,
                256
            )),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            GuestImage::parse(header(
                IMAGE_BASE + 64,
                IMAGE_BASE + 256,
                IMAGE_LIMIT + 1,
                256
            )),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = GuestImage::from_file(std::path::Path::new("/nonexistent/guest.bin")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/guest.bin"), "{e}");
    }
}
