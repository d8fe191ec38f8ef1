//! The sqlvault repository format, version 1 (see `docs/format.md`), as a library:
//! the types and byte encodings of everything a repository holds, so that any
//! program can read or write a repository's objects without the engine.
//!
//! This crate is pure data: identifiers, the keys derived from a repository secret,
//! and the byte encodings of every object kind (config, snapshot manifest, page map,
//! index, pack trailer). It performs no IO, no compression and no encryption; the
//! engine composes those around these encodings. Every decoder bounds every length by
//! what it can check first and returns [`FormatError`] (never panics) on hostile input.
//!
//! # Main types
//!
//! - Identifiers: [`ObjectId`] (random, names objects), [`ChunkId`] (a *keyed* hash
//!   of a chunk, so the storage host cannot confirm guessed content).
//! - Keys: [`RepoSecret`] derives [`RepoKeys`] — the chunk-id key, the MAC key that
//!   authenticates metadata, the metadata identity; [`AdminKey`] signs
//!   [`RecipientSet`]s.
//! - Objects: [`RepoMarker`] and [`RepoConfig`] (a repository), [`Manifest`] (a
//!   snapshot, MAC'd: [`encode_manifest`] / [`decode_manifest`]), [`PageMap`] (page
//!   number → chunk), [`IndexFile`] (chunk → pack, frame, offset; MAC'd), the pack
//!   trailer ([`encode_pack_trailer`] / [`decode_pack_trailer`]) that makes a pack
//!   self-describing.
//! - [`layout`]: where each object lives under a repository prefix.
//!
//! Errors: [`FormatError`] says which object kind failed and how — bad magic,
//! malformed, unauthentic (a MAC that does not match: altered or forged), an
//! unsupported version, invalid JSON.
//!
//! # Example
//!
//! Chunk ids under a repository's key, a pack trailer and the authenticated index
//! that points at the same chunks, each encoded and decoded back.
//!
//! ```
//! use sqlvault_format::{
//!     FormatError, IndexAuth, IndexEntry, IndexFile, ObjectId, PackSection, RepoSecret, decode_pack_trailer,
//!     encode_pack_trailer,
//! };
//!
//! let keys = RepoSecret::generate().keys();
//! let pages = [vec![1u8; 4096], vec![2u8; 4096]];
//! // One zstd frame (pretend 100 compressed bytes at offset 0) holding both pages.
//! let entries: Vec<IndexEntry> = pages
//!     .iter()
//!     .enumerate()
//!     .map(|(i, page)| IndexEntry {
//!         id: keys.chunk_id(page),
//!         frame_offset: 0,
//!         frame_len: 100,
//!         offset: (i * 4096) as u32,
//!         len: 4096,
//!     })
//!     .collect();
//!
//! // A pack's plaintext is its frames then the trailer: the pack alone says what it holds.
//! let mut pack = vec![0u8; 100];
//! pack.extend(encode_pack_trailer(&entries));
//! let (found, frames_len) = decode_pack_trailer(&pack).unwrap();
//! assert_eq!((found.as_slice(), frames_len), (entries.as_slice(), 100));
//!
//! // The index says the same for many packs, with the repository's MAC.
//! let index = IndexFile { packs: vec![PackSection { pack: ObjectId::random(), entries }] };
//! let bytes = index.encode(&keys);
//! assert_eq!(IndexFile::decode(&bytes, &keys).unwrap(), (index, IndexAuth::Authenticated));
//!
//! // Another repository's keys (or a bucket writer without the secret) cannot forge one.
//! let other = RepoSecret::generate().keys();
//! assert!(matches!(IndexFile::decode(&bytes, &other), Err(FormatError::Unauthentic { .. })));
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub use blake3;

mod cdc;
mod chunkseq;
mod error;
mod ids;
mod index;
mod keys;
mod manifest;
mod pagemap;
mod segment;

pub use cdc::{ChunkerParams, DUMP_CHUNKER};
pub use chunkseq::{ChunkSeq, SeqOp};
pub use error::FormatError;
pub use ids::{ChunkId, ObjectId};
pub use index::{
    IndexAuth, IndexEntry, IndexFile, PACK_MAGIC, PackSection, decode_entries, decode_pack_trailer, encode_entries,
    encode_pack_trailer, write_index,
};
pub use keys::{AdminKey, RepoKeys, RepoSecret, verify_admin_signature};
pub use manifest::{
    CipherFacts, DumpFacts, Manifest, MapRef, RecipientSet, RepoConfig, RepoMarker, SnapshotStats, SourceCheck,
    StoredRequests, decode_manifest, encode_manifest, is_repo_id, kind,
};
pub use pagemap::{PageMap, PageMapKind};
pub use segment::{MAX_SEGMENT, Segment, StateChecksum, StateKey};

/// The repository format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Object key layout inside a repository prefix. Every name after the prefix is a
/// random [`ObjectId`], so the storage provider learns nothing about content.
pub mod layout {
    use crate::ObjectId;

    /// Cleartext marker: format name, version and random repository id.
    pub const MARKER: &str = "sqlvault.json";
    /// age stream to the repository's recipients holding the [`crate::RepoConfig`].
    pub const CONFIG: &str = "config";
    /// Directory of snapshot manifests.
    pub const SNAPSHOTS: &str = "snapshots";
    /// Directory of page maps.
    pub const MAPS: &str = "maps";
    /// Directory of index files.
    pub const INDEX: &str = "index";
    /// Directory of packs.
    pub const PACKS: &str = "packs";
    /// Directory of evidence records (verifications, drills): small MAC'd objects.
    pub const EVIDENCE: &str = "evidence";
    /// Directory of name claims: which host and source path own a database name.
    pub const NAMES: &str = "names";
    /// The signed recipient set of format 1 (one object, rewritten by every change):
    /// no longer written nor read, see [`recipient_set`].
    pub const RECIPIENTS: &str = "keys/recipients";

    /// `keys/recipients-<generation, 20 digits>`: the signed recipient set of one
    /// generation, created once (create-if-absent) by `key add`/`key remove` and never
    /// rewritten, so a bucket writer with create-only credentials cannot replace one.
    pub fn recipient_set(generation: u64) -> String {
        format!("{RECIPIENTS}-{generation:020}")
    }
    /// Prune's state: objects marked for deletion and when, and the grace period.
    /// Backups read it (one GET) so as never to dedup against a marked pack.
    pub const PRUNE_PENDING: &str = "prune/pending";
    /// Held by a running prune (create-if-absent), refreshed while it runs.
    pub const PRUNE_LOCK: &str = "prune/lock";

    /// Directory of replication segments: `segments/<base snapshot id>/<seq>`.
    pub const SEGMENTS: &str = "segments";

    /// `segments/<chain>/` — the prefix listing one chain.
    pub fn chain(chain: &ObjectId) -> String {
        format!("{SEGMENTS}/{chain}/")
    }
    /// `segments/<chain>/<seq, 20 digits>`
    pub fn segment(chain: &ObjectId, seq: u64) -> String {
        format!("{SEGMENTS}/{chain}/{seq:020}")
    }

    /// `snapshots/<id>`
    pub fn snapshot(id: &ObjectId) -> String {
        format!("{SNAPSHOTS}/{id}")
    }
    /// `maps/<id>`
    pub fn map(id: &ObjectId) -> String {
        format!("{MAPS}/{id}")
    }
    /// `index/<id>`
    pub fn index(id: &ObjectId) -> String {
        format!("{INDEX}/{id}")
    }
    /// `evidence/<id>`
    pub fn evidence(id: &ObjectId) -> String {
        format!("{EVIDENCE}/{id}")
    }
    /// `packs/<id>`
    pub fn pack(id: &ObjectId) -> String {
        format!("{PACKS}/{id}")
    }
}
