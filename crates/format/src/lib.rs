//! The sqlvault repository format, version 1 (see `docs/format.md`).
//!
//! This crate is pure data: identifiers, the keys derived from a repository secret,
//! and the byte encodings of every object kind (config, snapshot manifest, page map,
//! index, pack trailer). It performs no IO, no compression and no encryption; the
//! engine composes those around these encodings.

pub use blake3;

mod cdc;
mod chunkseq;
mod error;
mod ids;
mod index;
mod keys;
mod manifest;
mod pagemap;

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
    decode_manifest, encode_manifest, is_repo_id, kind,
};
pub use pagemap::{PageMap, PageMapKind};

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
