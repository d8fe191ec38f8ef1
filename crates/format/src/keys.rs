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
