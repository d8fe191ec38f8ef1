use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The repository secret: 32 random bytes created by `init`. Every symmetric key of
/// the repository is derived from it. A backup host holds it (in its write key) but no
/// age identity; a restore host recovers it from the `config` object with an identity.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RepoSecret([u8; 32]);

impl RepoSecret {
    /// A fresh secret from the OS generator.
    pub fn generate() -> Self {
        RepoSecret(rand::random())
    }

    /// Wraps existing bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RepoSecret(bytes)
    }

    /// Parses the hex form used inside config and write-key files.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(RepoSecret(out))
    }

    /// Hex form for the (encrypted or 0600) files that carry it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A public fingerprint of the secret: lets a restore host pin a repository without
    /// knowing the secret, and lets humans compare repositories.
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key("sqlvault v1 repository fingerprint", &self.0);
        hex::encode(&h[..16])
    }

    /// Derives the working keys.
    pub fn keys(&self) -> RepoKeys {
        RepoKeys {
            chunk: blake3::derive_key("sqlvault v1 chunk id key", &self.0),
            mac: blake3::derive_key("sqlvault v1 metadata mac key", &self.0),
            metadata_identity: blake3::derive_key("sqlvault v1 metadata x25519 identity", &self.0),
        }
    }
}

impl fmt::Debug for RepoSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoSecret(<redacted>)")
    }
}

/// Keys derived from a [`RepoSecret`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RepoKeys {
    chunk: [u8; 32],
    mac: [u8; 32],
    metadata_identity: [u8; 32],
}

impl RepoKeys {
    /// Chunk id of a plaintext chunk (keyed BLAKE3).
    pub fn chunk_id(&self, data: &[u8]) -> crate::ChunkId {
        crate::ChunkId(*blake3::keyed_hash(&self.chunk, data).as_bytes())
    }

    /// MAC over metadata (manifest bodies, page maps).
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac, data).as_bytes()
    }

    /// An incremental form of [`RepoKeys::mac`], for metadata written as a stream.
    pub fn mac_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.mac)
    }

    /// Constant-time MAC check.
    pub fn verify_mac(&self, data: &[u8], mac: &[u8; 32]) -> bool {
        blake3::Hash::from(self.mac(data)) == blake3::Hash::from(*mac)
    }

    /// Secret bytes of the X25519 metadata identity. Manifests, maps and indexes are
    /// encrypted to it as well as to the user's recipients so that a backup host (which
    /// holds the secret but no identity) can list snapshots without reading any data.
    pub fn metadata_identity_bytes(&self) -> [u8; 32] {
        self.metadata_identity
    }
}

impl fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoKeys(<redacted>)")
    }
}

/// The repository's admin signing key (Ed25519): kept in the config (readable only by
/// identity holders), it signs each new recipient set so that backup hosts, which hold
/// the repository secret but must not be able to redirect other hosts' backups, accept
/// a recipient change only from someone who can read the repository.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AdminKey([u8; 32]);

impl AdminKey {
    /// A fresh key from the OS generator.
    pub fn generate() -> Self {
        AdminKey(rand::random())
    }

    /// Parses the hex form kept in the config.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(AdminKey(out))
    }

    /// Hex form for the config (which is encrypted).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hex of the public verifying key, which backup hosts pin.
    pub fn public_hex(&self) -> String {
        hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&self.0)
                .verifying_key()
                .to_bytes(),
        )
    }

    /// Signature over `msg`, hex.
    pub fn sign(&self, msg: &[u8]) -> String {
        use ed25519_dalek::Signer;
        hex::encode(ed25519_dalek::SigningKey::from_bytes(&self.0).sign(msg).to_bytes())
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// Checks a hex Ed25519 signature over `msg` by the hex public key `public`.
pub fn verify_admin_signature(public: &str, msg: &[u8], signature: &str) -> bool {
    // Only the lowercase spelling `sign` writes: hex decoding accepts either case, and a
    // flipped case bit in a stored set must read as damage, not as the same signature.
    if !signature.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return false;
    }
    let (mut pk, mut sig) = ([0u8; 32], [0u8; 64]);
    if hex::decode_to_slice(public, &mut pk).is_err() || hex::decode_to_slice(signature, &mut sig).is_err() {
        return false;
    }
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}
