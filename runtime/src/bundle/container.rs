//! The container: header, manifest and aligned sections as bytes, in both
//! directions. [`encode`] lays sections out and seals the file;
//! [`decode`] checks everything the layout promises (magic, version,
//! content hash, manifest schema, section bounds, alignment, overlap, zero
//! padding, checksums) before anyone reads a section.

use std::collections::BTreeSet;
use std::io::Read;

use super::format::{
    align_up, is_valid_name, Header, Manifest, SectionEntry, SectionKind, ALIGN, FORMAT_VERSION,
    HEADER_LEN, MAGIC, MIN_FORMAT_VERSION,
};
use super::sign::{verify_trailer, PublicKey, TRAILER_LEN, TRAILER_MAGIC};
use super::BundleError;

/// One section's payload, handed to [`encode`].
pub struct SectionData<'a> {
    pub kind: SectionKind,
    pub name: String,
    pub bytes: &'a [u8],
}

/// A bundle's manifest, checked against the bytes it describes.
#[derive(Debug)]
pub struct Decoded {
    pub manifest: Manifest,
    pub content_hash: [u8; 32],
    /// The key whose signature trailer verified against the content hash
    /// (`None`: the bundle is not signed).
    pub signer: Option<PublicKey>,
}

/// BLAKE3 of the header's first 32 bytes followed by the manifest: the
/// manifest holds every section's BLAKE3 and all other bytes must be zero,
/// so this hash identifies the whole file while each byte is hashed once.
fn content_hash(header_head: &[u8], manifest: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header_head);
    h.update(manifest);
    *h.finalize().as_bytes()
}

/// The sealed header of a bundle of this format version and manifest.
fn header(version: u32, manifest_json: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = Header {
        version,
        manifest_len: manifest_json.len() as u64,
        content_hash: [0; 32],
    }
    .to_bytes();
    let hash = content_hash(&header[..32], manifest_json);
    header[32..].copy_from_slice(&hash);
    header
}

/// Assembles a file from a format version, manifest bytes and payloads
/// placed at absolute offsets (gaps are zero). The header's content hash is
/// computed here. [`encode`] uses it; tests use it to build files whose
/// manifest is wrong but sealed.
pub fn seal(version: u32, manifest_json: &[u8], placed: &[(u64, &[u8])]) -> Vec<u8> {
    let manifest_end = HEADER_LEN + manifest_json.len();
    let end = placed
        .iter()
        .map(|(off, b)| *off as usize + b.len())
        .fold(manifest_end, usize::max);
    let mut out = vec![0u8; end];
    for (off, b) in placed {
        out[*off as usize..*off as usize + b.len()].copy_from_slice(b);
    }
    let header = header(version, manifest_json);
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..manifest_end].copy_from_slice(manifest_json);
    out
}

/// A bundle laid out but not yet written: its sealed header and manifest,
/// and where each section goes. Written by [`Layout::write`] straight to a
/// file, so that building a bundle never holds a second copy of its
/// sections; [`encode`] writes it to memory.
pub struct Layout {
    /// The header (content hash included) followed by the manifest.
    head: Vec<u8>,
    /// Each section's offset, in order.
    offsets: Vec<u64>,
    /// The file's length.
    len: u64,
}

impl Layout {
    /// The content hash sealed in the header (what a signature covers).
    pub fn content_hash(&self) -> [u8; 32] {
        let mut h = [0u8; 32];
        h.copy_from_slice(&self.head[32..HEADER_LEN]);
        h
    }

    /// The bundle's length in bytes (without a signature trailer).
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Writes the bundle: header, manifest, then `sections` (the ones it
    /// was laid out for, in the same order) with the zero padding between.
    pub fn write(
        &self,
        sections: &[SectionData],
        w: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        if sections.len() != self.offsets.len() {
            return Err(std::io::Error::other("sections differ from the layout"));
        }
        w.write_all(&self.head)?;
        let mut at = self.head.len() as u64;
        for (s, &offset) in sections.iter().zip(&self.offsets) {
            let gap = offset
                .checked_sub(at)
                .ok_or_else(|| std::io::Error::other("sections differ from the layout"))?;
            std::io::copy(&mut std::io::repeat(0).take(gap), w)?;
            w.write_all(s.bytes)?;
            at = offset + s.bytes.len() as u64;
        }
        Ok(())
    }
}

/// Lays `sections` out in the given order at 64-byte-aligned offsets after
/// the manifest, fills in `manifest.sections` (offsets, lengths, BLAKE3) and
/// seals the header. Deterministic: the same manifest and payloads give the
/// same bytes.
#[allow(
    clippy::expect_used,
    reason = "sizes of sections held in memory cannot overflow usize; the manifest is plain data"
)]
pub fn lay_out(mut manifest: Manifest, sections: &[SectionData]) -> Layout {
    // The offsets depend on the manifest's length, which depends on the
    // offsets' digits: iterate until the first offset is stable (a few
    // rounds; lengths only grow).
    let checksums: Vec<String> = sections
        .iter()
        .map(|s| blake3::hash(s.bytes).to_hex().to_string())
        .collect();
    let mut start = align_up(HEADER_LEN).expect("small");
    loop {
        let mut at = start as u64;
        let mut len = 0u64;
        manifest.sections = sections
            .iter()
            .zip(&checksums)
            .map(|(s, sum)| {
                let e = SectionEntry {
                    blake3: sum.clone(),
                    kind: s.kind,
                    len: s.bytes.len() as u64,
                    name: s.name.clone(),
                    offset: at,
                };
                len = at + s.bytes.len() as u64;
                at = align_up(len as usize).expect("bundle size") as u64;
                e
            })
            .collect();
        let json = serde_json::to_vec(&manifest).expect("manifest serializes");
        let needed = align_up(HEADER_LEN + json.len()).expect("bundle size");
        if needed == start {
            let mut head = header(FORMAT_VERSION, &json).to_vec();
            head.extend_from_slice(&json);
            return Layout {
                len: len.max(head.len() as u64),
                offsets: manifest.sections.iter().map(|e| e.offset).collect(),
                head,
            };
        }
        start = needed.max(start);
    }
}

/// [`lay_out`] and [`Layout::write`] into memory: the bundle's bytes.
#[allow(
    clippy::expect_used,
    reason = "writing to a Vec cannot fail, and the layout is of these sections"
)]
pub fn encode(manifest: Manifest, sections: &[SectionData]) -> Vec<u8> {
    let layout = lay_out(manifest, sections);
    let mut out = Vec::with_capacity(layout.file_len() as usize);
    layout.write(sections, &mut out).expect("in memory");
    out
}

/// Reads the fixed header, checking magic, version and reserved bytes.
/// What is wrong with a file shorter than a header: a foreign magic, or a
/// truncated bundle. (Readers call this instead of mapping such a file.)
pub fn too_short(bytes: &[u8]) -> BundleError {
    match read_header(bytes) {
        Err(e) => e,
        Ok(_) => BundleError::Truncated {
            what: "the header".into(),
            need: HEADER_LEN as u64,
            len: bytes.len() as u64,
        },
    }
}

fn read_header(bytes: &[u8]) -> Result<Header, BundleError> {
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(BundleError::Truncated {
                what: "the header".into(),
                need: HEADER_LEN as u64,
                len,
            });
        }
        return Err(BundleError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(BundleError::Truncated {
            what: "the header".into(),
            need: HEADER_LEN as u64,
            len,
        });
    }
    // The header's fields, at offsets below HEADER_LEN (checked above).
    let field = |i: usize, n: usize| {
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&bytes[i..i + n]);
        u64::from_le_bytes(le)
    };
    let u32_at = |i: usize| field(i, 4) as u32;
    let u64_at = |i: usize| field(i, 8);
    let version = u32_at(8);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(BundleError::Version {
            found: version,
            oldest: MIN_FORMAT_VERSION,
            newest: FORMAT_VERSION,
        });
    }
    if u32_at(12) != 0 || u64_at(24) != 0 {
        return Err(BundleError::Header(
            "reserved bytes 12..16 or 24..32 are not zero".into(),
        ));
    }
    Ok(Header {
        version,
        manifest_len: u64_at(16),
        content_hash: {
            let mut h = [0u8; 32];
            h.copy_from_slice(&bytes[32..64]);
            h
        },
    })
}

/// Checks that `bytes[from..to]` is all zero padding.
fn check_zero(bytes: &[u8], from: usize, to: usize) -> Result<(), BundleError> {
    match bytes[from..to].iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(BundleError::Layout(format!(
            "byte {} lies outside every section but is not zero padding",
            from + i
        ))),
    }
}

/// Checks the section table against the file: names, alignment, bounds,
/// order without overlap, zero gaps. Returns where the sealed image ends
/// (the end of the manifest or of the last section).
fn check_sections(bytes: &[u8], manifest: &Manifest, body: usize) -> Result<usize, BundleError> {
    let len = bytes.len() as u64;
    let mut seen = BTreeSet::new();
    let mut at = body as u64;
    for s in &manifest.sections {
        let what = format!("section {} `{}`", s.kind, s.name);
        if !is_valid_name(&s.name) {
            return Err(BundleError::Manifest(format!("{what}: invalid name")));
        }
        if !seen.insert((s.kind, s.name.as_str())) {
            return Err(BundleError::Manifest(format!("{what} appears twice")));
        }
        if s.blake3.len() != 64 || !s.blake3.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(BundleError::Manifest(format!(
                "{what}: blake3 must be 64 hex digits"
            )));
        }
        if s.offset % ALIGN as u64 != 0 {
            return Err(BundleError::Layout(format!(
                "{what}: offset {} is not a multiple of {ALIGN}",
                s.offset
            )));
        }
        if s.offset < at {
            return Err(BundleError::Layout(format!(
                "{what}: offset {} overlaps the manifest or the previous section (which end at {at}); sections must be in file order",
                s.offset
            )));
        }
        let end = s.offset.checked_add(s.len).filter(|&e| e <= len);
        let Some(end) = end else {
            return Err(BundleError::Truncated {
                what,
                need: s.offset.saturating_add(s.len),
                len,
            });
        };
        check_zero(bytes, at as usize, s.offset as usize)?;
        at = end;
    }
    Ok(at as usize)
}

/// What follows the sealed image: nothing, zero padding, or exactly one
/// signature trailer, which must verify (`docs/BUNDLE.md`).
fn check_tail(
    bytes: &[u8],
    image_end: usize,
    content_hash: &[u8; 32],
) -> Result<Option<PublicKey>, BundleError> {
    let tail = &bytes[image_end..];
    if tail.len() == TRAILER_LEN && tail.starts_with(&TRAILER_MAGIC) {
        let key = verify_trailer(tail, content_hash).map_err(|msg| {
            BundleError::Signature(format!("bytes {image_end}..{}: {msg}", bytes.len()))
        })?;
        return Ok(Some(key));
    }
    check_zero(bytes, image_end, bytes.len())?;
    Ok(None)
}

/// Validates a whole bundle image and returns its manifest. Nothing of a
/// section is trusted before this returns `Ok`.
pub fn decode(bytes: &[u8]) -> Result<Decoded, BundleError> {
    let header = read_header(bytes)?;
    let len = bytes.len() as u64;
    let manifest_end = (HEADER_LEN as u64)
        .checked_add(header.manifest_len)
        .filter(|&e| e <= len)
        .ok_or(BundleError::Truncated {
            what: "the manifest".into(),
            need: (HEADER_LEN as u64).saturating_add(header.manifest_len),
            len,
        })?;
    let manifest_bytes = &bytes[HEADER_LEN..manifest_end as usize];
    if content_hash(&bytes[..32], manifest_bytes) != header.content_hash {
        return Err(BundleError::ContentHash { manifest_end });
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| BundleError::Manifest(format!("not a valid manifest: {e}")))?;
    let image_end = check_sections(bytes, &manifest, manifest_end as usize)?;
    let signer = check_tail(bytes, image_end, &header.content_hash)?;
    for s in &manifest.sections {
        let (start, end) = (s.offset as usize, (s.offset + s.len) as usize);
        if blake3::hash(&bytes[start..end]).to_hex().as_str() != s.blake3.to_ascii_lowercase() {
            return Err(BundleError::Checksum {
                section: format!("{} `{}`", s.kind, s.name),
                start: s.offset,
                end: s.offset + s.len,
            });
        }
    }
    Ok(Decoded {
        manifest,
        content_hash: header.content_hash,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::BundleKind;

    fn empty_manifest() -> Manifest {
        Manifest {
            adapter: None,
            blobs: vec![],
            kind: BundleKind::Firmware,
            modules: vec![],
            sections: vec![],
        }
    }

    #[test]
    fn encode_then_decode_round_trips_and_aligns() {
        let a = vec![7u8; 100];
        let b = vec![9u8; 3];
        let bytes = encode(
            empty_manifest(),
            &[
                SectionData {
                    kind: SectionKind::Weights,
                    name: "weights".into(),
                    bytes: &a,
                },
                SectionData {
                    kind: SectionKind::Ir,
                    name: "m".into(),
                    bytes: &b,
                },
            ],
        );
        let d = decode(&bytes).unwrap();
        let s = &d.manifest.sections;
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|e| e.offset % ALIGN as u64 == 0));
        assert_eq!(&bytes[s[0].offset as usize..][..100], &a[..]);
        assert_eq!(&bytes[s[1].offset as usize..][..3], &b[..]);
        assert_eq!(s[1].offset, s[0].offset + 128);
        assert_eq!(bytes.len() as u64, s[1].offset + 3);
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let a = vec![1u8; 10];
        let mut bytes = encode(
            empty_manifest(),
            &[SectionData {
                kind: SectionKind::Weights,
                name: "weights".into(),
                bytes: &a,
            }],
        );
        let off = decode(&bytes).unwrap().manifest.sections[0].offset as usize;
        bytes[off - 1] = 1;
        let e = decode(&bytes).unwrap_err().to_string();
        assert!(e.contains(&format!("byte {}", off - 1)), "{e}");
    }
}
