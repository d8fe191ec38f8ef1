//! Continuous replication's objects: segments and the state checksum.
//!
//! A *chain* is a base snapshot (an ordinary `pages` manifest marked `replicated`)
//! followed by segments `segments/<base id>/<seq, 20 digits>`, seq 1, 2, … Segment N
//! holds what the committed transactions since segment N − 1 changed: a delta page map
//! (an ordinary `maps/` object, listed with its MAC), the database's page count after
//! it, when the state was observed, and the [`StateChecksum`] of the whole database
//! after it. Each segment names the body hash of the one before (`prev`), so a chain
//! whose segments were swapped, dropped or replayed does not verify.

use serde::{Deserialize, Serialize};

use crate::{ChunkId, FORMAT_VERSION, FormatError, MapRef, ObjectId, RepoKeys};

/// One segment of a replication chain (docs/format.md, "Segments").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    /// Format version.
    pub version: u32,
    /// The base snapshot the chain starts from (also the object's directory).
    pub chain: ObjectId,
    /// 1, 2, … (also the object's name).
    pub seq: u64,
    /// Hex BLAKE3 of the previous segment's body (for seq 1: of the base's id).
    pub prev: String,
    /// Database name, host and source path, as in the base's manifest.
    pub name: String,
    /// The host.
    pub host: String,
    /// The source path.
    pub source_path: String,
    /// When the state was observed (unix ms): every transaction it holds committed
    /// before this instant.
    pub observed_ms: i64,
    /// Transactions committed since the base, up to and including this state.
    pub txid: u64,
    /// Transactions this segment holds.
    pub commits: u64,
    /// Page size.
    pub page_size: u32,
    /// Pages after this segment.
    pub page_count: u32,
    /// Hex [`StateChecksum`] of every page after this segment.
    pub state: String,
    /// The delta page maps to apply after the previous segment's.
    pub maps: Vec<MapRef>,
    /// Pages this segment changed.
    pub pages: u64,
    /// Bytes it uploaded (packs, index, maps; the segment itself not counted).
    pub bytes_new: u64,
    /// What happened in the WAL meanwhile that is not a break (e.g. `"wal-restarted"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// Bytes a segment object may have (its maps are separate objects).
pub const MAX_SEGMENT: usize = 64 << 10;

impl Segment {
    /// The hash the next segment names as `prev`.
    pub fn body_hash(body: &[u8]) -> String {
        blake3::hash(body).to_hex().to_string()
    }

    /// `prev` of segment 1 of a chain.
    pub fn first_prev(chain: &ObjectId) -> String {
        blake3::hash(format!("sqlvault chain {chain}").as_bytes())
            .to_hex()
            .to_string()
    }

    /// Body and MAC lines, as manifests; returns (plaintext, body hash).
    pub fn encode(&self, keys: &RepoKeys) -> (Vec<u8>, String) {
        let body = serde_json::to_vec(self).expect("segment serialises");
        let hash = Self::body_hash(&body);
        (crate::manifest::mac_lines(keys, body), hash)
    }

    /// Parses and authenticates a segment read from `segments/<chain>/<seq>`;
    /// returns it and its body hash.
    pub fn decode(keys: &RepoKeys, bytes: &[u8], chain: &ObjectId, seq: u64) -> Result<(Segment, String), FormatError> {
        let kind = "segment";
        let body = crate::manifest::checked_body(keys, bytes, kind)?;
        let s: Segment = serde_json::from_slice(body).map_err(|source| FormatError::Json { kind, source })?;
        if s.version != FORMAT_VERSION {
            return Err(FormatError::Version {
                kind,
                version: s.version,
            });
        }
        if &s.chain != chain || s.seq != seq {
            return Err(FormatError::malformed(
                kind,
                "chain or sequence differs from the object's name",
            ));
        }
        if !(512..=65_536).contains(&s.page_size) || !s.page_size.is_power_of_two() {
            return Err(FormatError::malformed(kind, "bad page size"));
        }
        if StateChecksum::from_hex(&s.state).is_none() {
            return Err(FormatError::malformed(kind, "state is not 64 hex digits"));
        }
        Ok((s, Self::body_hash(body)))
    }
}

/// The state checksum of a database's pages: the XOR over every page of a keyed hash
/// of (page number, chunk id). XOR makes it maintainable page by page (a changed page
/// XORs its old term out and its new one in), and the key (derived from the
/// repository's MAC key) makes it unforgeable by anyone without the repository secret.
/// Restore recomputes it from the page table it rebuilt and refuses a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateChecksum(pub [u8; 32]);

impl StateChecksum {
    /// XORs in (or out: the same) the term of page `pgno` holding chunk `id`.
    pub fn toggle(&mut self, key: &StateKey, pgno: u32, id: &ChunkId) {
        let mut h = blake3::Hasher::new_keyed(&key.0);
        h.update(&pgno.to_le_bytes());
        h.update(&id.0);
        for (a, b) in self.0.iter_mut().zip(h.finalize().as_bytes()) {
            *a ^= b;
        }
    }

    /// Hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<StateChecksum> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(StateChecksum(b))
    }
}

/// The key of [`StateChecksum`] terms.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl StateKey {
    /// Derived from the repository's keys.
    pub fn new(keys: &RepoKeys) -> StateKey {
        StateKey(keys.mac(b"sqlvault 2026 state checksum v1"))
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_checksum_is_order_free_and_toggles() {
        let keys = crate::RepoSecret::generate().keys();
        let k = StateKey::new(&keys);
        let a = ChunkId([1; 32]);
        let b = ChunkId([2; 32]);
        let mut x = StateChecksum::default();
        x.toggle(&k, 1, &a);
        x.toggle(&k, 2, &b);
        let mut y = StateChecksum::default();
        y.toggle(&k, 2, &b);
        y.toggle(&k, 1, &a);
        assert_eq!(x, y);
        // Swapping which page holds which chunk changes it.
        let mut z = StateChecksum::default();
        z.toggle(&k, 1, &b);
        z.toggle(&k, 2, &a);
        assert_ne!(x, z);
        x.toggle(&k, 2, &b);
        x.toggle(&k, 1, &a);
        assert_eq!(x, StateChecksum::default());
    }

    #[test]
    fn segments_authenticate_and_name_their_place() {
        let keys = crate::RepoSecret::generate().keys();
        let chain = ObjectId::random();
        let s = Segment {
            version: FORMAT_VERSION,
            chain,
            seq: 3,
            prev: Segment::first_prev(&chain),
            name: "a.db".into(),
            host: "h".into(),
            source_path: "/a.db".into(),
            observed_ms: 1,
            txid: 9,
            commits: 2,
            page_size: 4096,
            page_count: 7,
            state: StateChecksum::default().to_hex(),
            maps: vec![],
            pages: 1,
            bytes_new: 10,
            events: vec![],
        };
        let (pt, hash) = s.encode(&keys);
        let (back, h2) = Segment::decode(&keys, &pt, &chain, 3).unwrap();
        assert_eq!((back, h2), (s.clone(), hash));
        assert!(Segment::decode(&keys, &pt, &chain, 4).is_err());
        assert!(Segment::decode(&keys, &pt, &ObjectId::random(), 3).is_err());
        let other = crate::RepoSecret::generate().keys();
        assert!(matches!(
            Segment::decode(&other, &pt, &chain, 3),
            Err(FormatError::Unauthentic { .. })
        ));
    }
}
