//! Signed firmware: who built a bundle's native code.
//!
//! A firmware may end with a 104-byte signature trailer after its sealed
//! image (`docs/BUNDLE.md`, `docs/SECURITY.md`):
//!
//! ```text
//! "M4CSIG01" | ed25519 public key (32) | ed25519 signature (64)
//! ```
//!
//! The signature covers [`SIGNED_DOMAIN`] followed by the bundle's 32-byte
//! content hash, which covers every other byte of the file (the manifest
//! holds each section's BLAKE3 and all gaps must be zero). The trailer lies
//! outside the hashed bytes, so signing does not change the content hash
//! that adapters bind to. The runtime loads native code only from a bundle
//! whose signature verifies and whose key is trusted ([`TrustedKeys`]).
//!
//! Keys are one-line text files a person can read:
//! `m4c-ed25519-secret:<64 hex digits>` (the 32-byte seed) and
//! `m4c-ed25519-public:<64 hex digits>`, parsed strictly.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// The first bytes of the signature trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"M4CSIG01";

/// Bytes of the signature trailer.
pub const TRAILER_LEN: usize = 8 + 32 + 64;

/// What is signed before the content hash: a signature over a firmware's
/// hash can never be taken for a signature of anything else.
pub const SIGNED_DOMAIN: &[u8] = b"m4c firmware signature v1\0";

const SECRET_PREFIX: &str = "m4c-ed25519-secret:";
const PUBLIC_PREFIX: &str = "m4c-ed25519-public:";

/// Why a key could not be read, made or used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("no random source for a new key: {0}")]
    Random(String),
}

/// A secret signing key.
pub struct SecretKey(SigningKey);

/// A public key: what a trust directory holds and a trailer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `<prefix><64 lowercase hex>` with at most one final newline.
fn parse_line(text: &str, prefix: &str) -> Result<[u8; 32], String> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let digits = line
        .strip_prefix(prefix)
        .ok_or_else(|| format!("not a key file: it must be one line `{prefix}<64 hex digits>`"))?;
    if digits.len() != 64
        || !digits
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(format!(
            "the key after `{prefix}` must be exactly 64 lowercase hex digits"
        ));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn read_key_text(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > 256 {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
            msg: "not a key file (a key is one short line in a regular file)".into(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Parses a secret key file's text.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        parse_line(text, SECRET_PREFIX).map(|seed| SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        Self::parse(&read_key_text(path)?).map_err(|msg| KeyError::Format {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// The key file's text (one line).
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex(&self.0.to_bytes()))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

impl PublicKey {
    /// Parses a public key file's text.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = parse_line(text, PUBLIC_PREFIX)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, String> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| "not a valid ed25519 public key".to_string())
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        Self::parse(&read_key_text(path)?).map_err(|msg| KeyError::Format {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// The key file's text (one line).
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", hex(self.0.as_bytes()))
    }

    /// A short name for messages: the first 16 bytes of the key's BLAKE3,
    /// in hex.
    pub fn fingerprint(&self) -> String {
        hex(&blake3::hash(self.0.as_bytes()).as_bytes()[..16])
    }
}

fn message(content_hash: &[u8; 32]) -> Vec<u8> {
    [SIGNED_DOMAIN, content_hash].concat()
}

/// Appends `key`'s signature trailer to a sealed, unsigned bundle image
/// (as `container::encode` gives it): the signature covers the content
/// hash in the header's bytes 32..64.
pub fn sign(image: &mut Vec<u8>, key: &SecretKey) -> Result<(), String> {
    let content_hash: [u8; 32] = image
        .get(32..64)
        .and_then(|h| h.try_into().ok())
        .ok_or("not a sealed bundle image (shorter than its header)")?;
    image.extend_from_slice(&trailer(&content_hash, key));
    Ok(())
}

/// The signature trailer of the bundle whose content hash is
/// `content_hash`, for writers that stream the bundle to a file
/// (`container::Layout`) and append this after it.
pub fn trailer(content_hash: &[u8; 32], key: &SecretKey) -> [u8; TRAILER_LEN] {
    let signature = key.0.sign(&message(content_hash));
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..40].copy_from_slice(key.0.verifying_key().as_bytes());
    t[40..].copy_from_slice(&signature.to_bytes());
    t
}

/// Verifies a trailer (exactly [`TRAILER_LEN`] bytes starting with
/// [`TRAILER_MAGIC`]) against the content hash; the signing key when it
/// verifies.
pub(crate) fn verify_trailer(trailer: &[u8], content_hash: &[u8; 32]) -> Result<PublicKey, String> {
    let key: [u8; 32] = trailer[8..40].try_into().map_err(|_| "short trailer")?;
    let sig: [u8; 64] = trailer[40..104].try_into().map_err(|_| "short trailer")?;
    let key = PublicKey::from_bytes(&key)?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    key.0
        .verify_strict(&message(content_hash), &sig)
        .map_err(|_| {
            format!(
                "the signature does not verify for key {}: the bundle was altered after signing",
                key.fingerprint()
            )
        })?;
    Ok(key)
}

/// The public keys whose signatures make a bundle's native code loadable.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

/// The trust directory's environment variable.
pub const TRUST_DIR_ENV: &str = "M4C_TRUST_DIR";

impl TrustedKeys {
    /// No key: no native code is loaded from any bundle.
    pub fn none() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// These keys.
    pub fn new(keys: Vec<PublicKey>) -> TrustedKeys {
        TrustedKeys(keys)
    }

    /// The keys of `files` and of every `*.pub` file in `dir` (a missing
    /// directory holds none). A file that is not a public key is an error
    /// naming it: a trust store is never read half.
    pub fn load(files: &[PathBuf], dir: Option<&Path>) -> Result<TrustedKeys, KeyError> {
        let mut keys = vec![];
        for f in files {
            keys.push(PublicKey::read(f)?);
        }
        if let Some(dir) = dir {
            let mut pubs = vec![];
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for e in entries {
                        let e = e.map_err(|source| KeyError::Io {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                        let p = e.path();
                        if p.extension().is_some_and(|x| x == "pub") {
                            pubs.push(p);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KeyError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
            pubs.sort();
            for p in pubs {
                keys.push(PublicKey::read(&p)?);
            }
        }
        Ok(TrustedKeys(keys))
    }

    /// The trust directory: `$M4C_TRUST_DIR`, else
    /// `~/.config/m4c/trusted-keys`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os(TRUST_DIR_ENV) {
            return Some(PathBuf::from(d));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/m4c/trusted-keys"))
    }

    /// Whether `key` is trusted.
    pub fn trusts(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text() {
        let k = SecretKey::generate().unwrap();
        let back = SecretKey::parse(&k.to_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(PublicKey::parse(&k.public().to_text()).unwrap(), k.public());
        assert_eq!(k.public().fingerprint().len(), 32);
    }

    #[test]
    fn key_text_is_parsed_strictly() {
        let k = SecretKey::generate().unwrap().public().to_text();
        for bad in [
            k.to_uppercase(),
            format!(" {k}"),
            format!("{k}\n"),
            k.replace("public", "secret"),
            k[..k.len() - 2].to_string(),
            format!("{}0\n", k.trim_end()),
        ] {
            assert!(PublicKey::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(SecretKey::parse(&k).is_err());
    }

    #[test]
    fn a_signature_verifies_only_for_its_hash() {
        let k = SecretKey::generate().unwrap();
        let hash = [7u8; 32];
        let mut image = [[0u8; 32], hash].concat();
        sign(&mut image, &k).unwrap();
        let trailer = &mut image[64..];
        assert_eq!(trailer.len(), TRAILER_LEN);
        assert_eq!(verify_trailer(trailer, &hash).unwrap(), k.public());
        assert!(verify_trailer(trailer, &[8u8; 32]).is_err());
        trailer[50] ^= 1;
        assert!(verify_trailer(trailer, &hash).is_err());
        assert!(sign(&mut vec![0u8; 10], &k).is_err());
    }

    #[test]
    fn trust_is_by_key() {
        let (a, b) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let t = TrustedKeys::new(vec![a.public()]);
        assert!(t.trusts(&a.public()) && !t.trusts(&b.public()));
        assert!(!TrustedKeys::none().trusts(&a.public()));
    }

    #[test]
    fn a_trust_directory_reads_every_pub_file_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate().unwrap();
        std::fs::write(dir.path().join("ci.pub"), k.public().to_text()).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let t = TrustedKeys::load(&[], Some(dir.path())).unwrap();
        assert!(t.trusts(&k.public()));
        std::fs::write(dir.path().join("bad.pub"), "garbage").unwrap();
        let e = TrustedKeys::load(&[], Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("bad.pub"), "{e}");
        assert!(TrustedKeys::load(&[], Some(&dir.path().join("missing")))
            .unwrap()
            .0
            .is_empty());
    }
}
