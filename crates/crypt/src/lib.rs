//! The age stage of sqlvault, as a library: parse recipients and identities, encrypt
//! and decrypt buffers or streams, and make key files. Synchronous; no runtime.
//!
//! Everything sqlvault stores is an age v1 stream, so the stock `age` tool can decrypt
//! any object of a repository, and anything this crate encrypts can be read by `age`.
//!
//! # Main types
//!
//! - [`Recipient`]: one public key to encrypt to — `age1…` (X25519), `ssh-ed25519 …`
//!   or `ssh-rsa …` — parsed with [`str::parse`] or read from a file with
//!   [`read_recipients_file`].
//! - [`Identities`]: the keys that decrypt — an age identity file or an unencrypted
//!   OpenSSH private key ([`Identities::from_file`]), a passphrase
//!   ([`Identities::from_passphrase`]), an `AGE-SECRET-KEY-1…` string, or 32 secret
//!   bytes derived elsewhere.
//! - [`EncryptWriter`]: streaming encryption with an explicit
//!   [`finish`](EncryptWriter::finish); a stream whose `finish` was skipped fails to
//!   decrypt, it is never silently short. [`decrypt_reader`] is the streaming (and
//!   seekable) reverse. [`encrypt_to_vec`] / [`decrypt_to_vec`] do whole buffers.
//! - [`generate_x25519`] and [`generate_identity_file`] (0600, never overwrites) make
//!   new keys.
//!
//! Errors are [`CryptError`]; a wrong key is [`CryptError::NoMatchingIdentity`] and
//! damage or truncation is [`CryptError::Corrupt`], so callers can tell "wrong key"
//! from "bad data" without reading messages.
//!
//! Secrets are held in [`secrecy::SecretString`] or zeroized buffers and never printed:
//! the `Debug` forms here show what kind of key it is, not the key.
//!
//! # Example
//!
//! ```
//! use std::io::Write;
//! use sqlvault_crypt::{CryptError, EncryptWriter, Identities, Recipient, decrypt_to_vec, generate_x25519};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A new identity (keep the secret) and its public recipient (give it out).
//! let (secret, public) = generate_x25519();
//! let recipient: Recipient = public.parse()?;
//!
//! // Stream to the recipient; `finish` writes the last chunk.
//! let mut w = EncryptWriter::new([&recipient], Vec::new())?;
//! w.write_all(b"page bytes")?;
//! let ciphertext = w.finish()?;
//!
//! // Only the identity opens it.
//! let ids = Identities::from_secret_string(&secret)?;
//! assert_eq!(decrypt_to_vec(&ids, &ciphertext)?, b"page bytes");
//!
//! let (other, _) = generate_x25519();
//! let wrong = Identities::from_secret_string(&other)?;
//! assert!(matches!(decrypt_to_vec(&wrong, &ciphertext), Err(CryptError::NoMatchingIdentity)));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use age;
pub use age::secrecy;
use age::secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

/// Errors of the crypt stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// A recipient string is not an age X25519, ssh-ed25519 or ssh-rsa public key.
    #[error("invalid recipient {value:?}")]
    InvalidRecipient {
        /// The offending string (public, safe to print).
        value: String,
    },
    /// A key file could not be read or holds no usable identity.
    #[error("cannot use identity file {path}: {reason}")]
    IdentityFile {
        /// The file.
        path: PathBuf,
        /// Why, without any key material.
        reason: String,
    },
    /// None of the identities can decrypt the object.
    #[error("no identity matches: the object is encrypted to other keys (wrong identity or passphrase)")]
    NoMatchingIdentity,
    /// The object is not an age file or its header is damaged.
    #[error("not a valid age object (damaged or forged header)")]
    Corrupt,
    /// A passphrase cannot be combined with other recipients.
    #[error("a passphrase cannot be combined with other recipients")]
    MixedPassphrase,
    /// No recipients were given.
    #[error("no recipients given")]
    NoRecipients,
    /// IO while reading, writing or creating a key file.
    #[error("io error")]
    Io(#[source] io::Error),
}

impl From<age::DecryptError> for CryptError {
    fn from(e: age::DecryptError) -> Self {
        match e {
            // DecryptionFailed at header time is a passphrase (scrypt stanza) that does
            // not open the file key: a wrong passphrase, not damage.
            age::DecryptError::NoMatchingKeys
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::DecryptionFailed => CryptError::NoMatchingIdentity,
            age::DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => CryptError::Corrupt,
            age::DecryptError::Io(e) => CryptError::Io(e),
            _ => CryptError::Corrupt,
        }
    }
}

impl From<age::EncryptError> for CryptError {
    fn from(e: age::EncryptError) -> Self {
        match e {
            age::EncryptError::MixedRecipientAndPassphrase => CryptError::MixedPassphrase,
            age::EncryptError::MissingRecipients => CryptError::NoRecipients,
            age::EncryptError::Io(e) => CryptError::Io(e),
            other => CryptError::Io(io::Error::other(other.to_string())),
        }
    }
}

/// One public key to encrypt to.
pub struct Recipient {
    text: String,
    inner: Box<dyn age::Recipient + Send + Sync>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.text)
    }
}

impl Recipient {
    /// The canonical text form, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The age recipient.
    pub fn as_age(&self) -> &dyn age::Recipient {
        self.inner.as_ref()
    }
}

impl FromStr for Recipient {
    type Err = CryptError;
    fn from_str(s: &str) -> Result<Self, CryptError> {
        let s = s.trim();
        let inner: Box<dyn age::Recipient + Send + Sync> = if s.starts_with("age1") {
            Box::new(
                age::x25519::Recipient::from_str(s)
                    .map_err(|_| CryptError::InvalidRecipient { value: s.to_string() })?,
            )
        } else if s.starts_with("ssh-") {
            Box::new(
                age::ssh::Recipient::from_str(s).map_err(|_| CryptError::InvalidRecipient { value: s.to_string() })?,
            )
        } else {
            return Err(CryptError::InvalidRecipient { value: s.to_string() });
        };
        Ok(Recipient {
            text: s.to_string(),
            inner,
        })
    }
}

/// Opens a key, identity or recipients file for reading only if it is a regular file,
/// without blocking: `O_NONBLOCK` (a FIFO without a writer would block `open(2)`
/// forever), then the type of the opened descriptor. (The same check as
/// `sqlvault_sqlite::open_regular`, which this leaf crate cannot depend on.)
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file"),
        ));
    }
    // `O_NONBLOCK` stays set: it has no effect on reads of a regular file (open(2):
    // "this flag has no effect for regular files and block devices"), which is all
    // that gets here, so clearing it would need `fcntl` (unsafe) for nothing.
    Ok(f)
}

/// Reads a recipients file: one recipient per line, `#` comments and blank lines ignored.
pub fn read_recipients_file(path: &Path) -> Result<Vec<Recipient>, CryptError> {
    let f = open_regular(path).map_err(|e| CryptError::IdentityFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(CryptError::Io)?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse()?);
    }
    Ok(out)
}

/// A set of keys able to decrypt.
pub struct Identities {
    inner: Vec<Box<dyn age::Identity + Send + Sync>>,
    what: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({}, <redacted>)", self.what)
    }
}

impl Identities {
    /// Loads an age identity file (`AGE-SECRET-KEY-1…` lines) or an unencrypted OpenSSH
    /// private key (ed25519 or rsa).
    pub fn from_file(path: &Path) -> Result<Self, CryptError> {
        let err = |reason: String| CryptError::IdentityFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut buf = Vec::new();
        open_regular(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput => err(e.to_string()),
                k => err(k.to_string()),
            })?;
        let result = if buf.starts_with(b"-----BEGIN") {
            match age::ssh::Identity::from_buffer(&buf[..], Some(path.display().to_string())) {
                Ok(id @ age::ssh::Identity::Unencrypted(_)) => Ok(Identities {
                    inner: vec![Box::new(id)],
                    what: "ssh key".into(),
                }),
                Ok(_) => Err(err("encrypted or unsupported ssh key".into())),
                Err(_) => Err(err("not a usable ssh private key".into())),
            }
        } else {
            match age::IdentityFile::from_buffer(&buf[..]).and_then(|f| f.into_identities().map_err(io::Error::other)) {
                Ok(ids) if !ids.is_empty() => Ok(Identities {
                    inner: ids,
                    what: "age identity file".into(),
                }),
                Ok(_) => Err(err("no identities in file".into())),
                // age's message names a line number, never the line.
                Err(_) => Err(err("not an age identity file".into())),
            }
        };
        buf.zeroize();
        result
    }

    /// A passphrase identity (age scrypt).
    pub fn from_passphrase(passphrase: SecretString) -> Self {
        Identities {
            inner: vec![Box::new(age::scrypt::Identity::new(passphrase))],
            what: "passphrase".into(),
        }
    }

    /// An X25519 identity from its 32 secret bytes (used for keys derived from the
    /// repository secret).
    pub fn from_x25519_bytes(bytes: &[u8; 32]) -> Self {
        Identities {
            inner: vec![Box::new(x25519_from_bytes(bytes))],
            what: "derived x25519 key".into(),
        }
    }

    /// Parses an `AGE-SECRET-KEY-1…` string.
    pub fn from_secret_string(s: &SecretString) -> Result<Self, CryptError> {
        let id = age::x25519::Identity::from_str(s.expose_secret().trim()).map_err(|_| CryptError::IdentityFile {
            path: PathBuf::from("<embedded identity>"),
            reason: "not an age identity".into(),
        })?;
        Ok(Identities {
            inner: vec![Box::new(id)],
            what: "age identity".into(),
        })
    }

    /// Adds the identities of `other`.
    pub fn extend(&mut self, other: Identities) {
        self.inner.extend(other.inner);
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.inner.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }
}

fn x25519_from_bytes(bytes: &[u8; 32]) -> age::x25519::Identity {
    let hrp = bech32::Hrp::parse_unchecked("age-secret-key-");
    let mut s = bech32::encode::<bech32::Bech32>(hrp, bytes).expect("32 bytes always encode");
    let upper = s.to_uppercase();
    s.zeroize();
    let id = age::x25519::Identity::from_str(&upper).expect("valid encoding");
    let mut upper = upper;
    upper.zeroize();
    id
}

/// The public recipient of an X25519 identity given by its secret bytes.
pub fn x25519_recipient_from_bytes(bytes: &[u8; 32]) -> Recipient {
    let text = x25519_from_bytes(bytes).to_public().to_string();
    text.parse().expect("own recipient parses")
}

/// A fresh X25519 identity: `(secret string, recipient)`.
pub fn generate_x25519() -> (SecretString, String) {
    let id = age::x25519::Identity::generate();
    (id.to_string(), id.to_public().to_string())
}

/// Writes a new age identity file at `path`, created exclusively with mode 0600, and
/// returns its recipient. Refuses to overwrite an existing file.
pub fn generate_identity_file(path: &Path) -> Result<String, CryptError> {
    let (secret, recipient) = generate_x25519();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CryptError::IdentityFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let body = format!(
        "# created by sqlvault: age X25519 identity\n# public key: {recipient}\n{}\n",
        secret.expose_secret()
    );
    let r = f.write_all(body.as_bytes()).and_then(|_| f.sync_all());
    let mut body = body;
    body.zeroize();
    if let Err(e) = r {
        let _ = std::fs::remove_file(path);
        return Err(CryptError::Io(e));
    }
    Ok(recipient)
}

/// Streaming encryption to a set of recipients. Call [`EncryptWriter::finish`]: without
/// it the last STREAM chunk is never written and every reader reports truncation.
pub struct EncryptWriter<W: Write> {
    inner: age::stream::StreamWriter<W>,
}

impl<W: Write> fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptWriter")
    }
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the age header for `recipients` to `w`.
    pub fn new<'a>(recipients: impl IntoIterator<Item = &'a Recipient>, w: W) -> Result<Self, CryptError> {
        let enc = age::Encryptor::with_recipients(recipients.into_iter().map(|r| r.as_age()))?;
        Ok(EncryptWriter {
            inner: enc.wrap_output(w).map_err(CryptError::Io)?,
        })
    }

    /// Encrypts with a passphrase (scrypt); not combinable with recipients.
    pub fn with_passphrase(passphrase: SecretString, w: W) -> Result<Self, CryptError> {
        let enc = age::Encryptor::with_user_passphrase(passphrase);
        Ok(EncryptWriter {
            inner: enc.wrap_output(w).map_err(CryptError::Io)?,
        })
    }

    /// Writes the final chunk and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encrypts a whole buffer.
pub fn encrypt_to_vec<'a>(
    recipients: impl IntoIterator<Item = &'a Recipient>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let mut w = EncryptWriter::new(recipients, Vec::with_capacity(plaintext.len() + 256))?;
    w.write_all(plaintext).map_err(CryptError::Io)?;
    w.finish().map_err(CryptError::Io)
}

/// A decrypting reader; seekable when `R` is. Reads fail with `InvalidData` if a STREAM
/// chunk does not authenticate or the stream is truncated.
pub fn decrypt_reader<R: Read>(identities: &Identities, r: R) -> Result<age::stream::StreamReader<R>, CryptError> {
    let dec = age::Decryptor::new(r)?;
    Ok(dec.decrypt(identities.iter())?)
}

/// Decrypts a whole buffer. A damaged or truncated payload is [`CryptError::Corrupt`].
pub fn decrypt_to_vec(identities: &Identities, ciphertext: &[u8]) -> Result<Vec<u8>, CryptError> {
    let dec = age::Decryptor::new_buffered(ciphertext)?;
    let mut r = dec.decrypt(identities.iter())?;
    let mut out = Vec::with_capacity(ciphertext.len());
    r.read_to_end(&mut out).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => CryptError::Corrupt,
        _ => CryptError::Io(e),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wrong_key_and_damage() {
        let (sk, pk) = generate_x25519();
        let r: Recipient = pk.parse().unwrap();
        let ids = Identities::from_secret_string(&sk).unwrap();
        let ct = encrypt_to_vec([&r], b"hello pages").unwrap();
        assert_eq!(decrypt_to_vec(&ids, &ct).unwrap(), b"hello pages");

        let (other, _) = generate_x25519();
        let wrong = Identities::from_secret_string(&other).unwrap();
        assert!(matches!(
            decrypt_to_vec(&wrong, &ct),
            Err(CryptError::NoMatchingIdentity)
        ));

        let mut flipped = ct.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 1;
        assert!(matches!(decrypt_to_vec(&ids, &flipped), Err(CryptError::Corrupt)));
        assert!(matches!(decrypt_to_vec(&ids, &ct[..n - 5]), Err(CryptError::Corrupt)));
    }

    /// A writer that keeps what reached it even after the encryptor is dropped.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn skipped_finish_fails_on_decrypt() {
        let (sk, pk) = generate_x25519();
        let r: Recipient = pk.parse().unwrap();
        let ids = Identities::from_secret_string(&sk).unwrap();
        let sink = Shared::default();
        let mut w = EncryptWriter::new([&r], sink.clone()).unwrap();
        w.write_all(&vec![1u8; 200_000]).unwrap();
        w.flush().unwrap();
        drop(w); // no finish()
        let written = sink.0.lock().unwrap().clone();
        assert!(written.len() > 128 * 1024, "full chunks were written");
        assert!(matches!(decrypt_to_vec(&ids, &written), Err(CryptError::Corrupt)));
    }

    #[test]
    fn derived_identity_matches_its_recipient() {
        let bytes = [42u8; 32];
        let r = x25519_recipient_from_bytes(&bytes);
        let ids = Identities::from_x25519_bytes(&bytes);
        let ct = encrypt_to_vec([&r], b"meta").unwrap();
        assert_eq!(decrypt_to_vec(&ids, &ct).unwrap(), b"meta");
    }

    #[test]
    fn identity_file_is_0600_and_refuses_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let pk = generate_identity_file(&p).unwrap();
        assert!(pk.starts_with("age1"));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(generate_identity_file(&p).is_err());
        let ids = Identities::from_file(&p).unwrap();
        let r: Recipient = pk.parse().unwrap();
        let ct = encrypt_to_vec([&r], b"x").unwrap();
        assert_eq!(decrypt_to_vec(&ids, &ct).unwrap(), b"x");
        assert!(Recipient::from_str("age1notakey").is_err());
    }
}
