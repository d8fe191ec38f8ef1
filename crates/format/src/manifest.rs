use serde::{Deserialize, Serialize};

use crate::{FORMAT_VERSION, FormatError, ObjectId, RepoKeys};

/// The cleartext marker object `sqlvault.json`. It says only that this prefix is a
/// sqlvault repository, which format version, and the random repository id that a
/// host uses to find its local write key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoMarker {
    /// Always `"sqlvault"`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random repository id (32 hex digits).
    pub repo_id: String,
    /// Days the repository was declared immutable for at `init` (S3 Object Lock). A
    /// statement of intent that audit compares with the bucket and prune's lock
    /// extensions honour; the bucket's lock, not this field, is what protects data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_days: Option<u32>,
}

impl RepoMarker {
    /// A marker for a new repository.
    pub fn new(repo_id: String) -> Self {
        RepoMarker {
            format: "sqlvault".into(),
            version: FORMAT_VERSION,
            repo_id,
            immutable_days: None,
        }
    }

    /// Parses and checks format and version.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let m: RepoMarker = serde_json::from_slice(bytes).map_err(|source| FormatError::Json {
            kind: "repository marker",
            source,
        })?;
        if m.format != "sqlvault" {
            return Err(FormatError::BadMagic {
                kind: "repository marker",
            });
        }
        if m.version != FORMAT_VERSION {
            return Err(FormatError::Version {
                kind: "repository marker",
                version: m.version,
            });
        }
        if !is_repo_id(&m.repo_id) {
            // The id names this host's local state directory: `"../.."` or `"/abs"`
            // must never reach a path.
            return Err(FormatError::malformed(
                "repository marker",
                "repo_id is not 32 lowercase hex digits",
            ));
        }
        Ok(m)
    }
}

/// Whether `s` is a repository id as `init` makes them: 32 lowercase hex digits. Ids
/// become local directory names, so nothing else may pass.
pub fn is_repo_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The repository config, stored as the `config` object encrypted to the recipients
/// only (never to the metadata identity): whoever can decrypt it can restore.
#[derive(Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version.
    pub version: u32,
    /// Same id as the marker; a mismatch means objects were swapped.
    pub repo_id: String,
    /// Creation time, unix milliseconds.
    pub created_ms: i64,
    /// The recipients every data object is encrypted to (age1…, ssh-…).
    pub recipients: Vec<String>,
    /// Hex of the [`crate::RepoSecret`].
    pub secret: String,
    /// For passphrase repositories: the X25519 identity that data objects are encrypted
    /// to (its recipient is in `recipients`), itself protected by the passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_identity: Option<String>,
    /// Hex [`crate::AdminKey`] that signs recipient sets (absent in repositories created
    /// before key rotation existed; the first `key add`/`key remove` creates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    /// Generation of `recipients`: 0 at init, +1 per `key add`/`key remove`.
    #[serde(default)]
    pub generation: u64,
    /// The signed set of `generation` (signed by the previous admin key, naming
    /// `admin_key`'s public half as the next signer), kept here so that a change
    /// interrupted before its publication can be published by running it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_set: Option<RecipientSet>,
}

/// The `keys/recipients` object: the current recipient set, signed with the admin key,
/// in cleartext (recipients are public keys). Backup hosts read it before each backup
/// and adopt a newer generation whose signature checks against the admin public key
/// pinned in their write key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientSet {
    /// Repository id.
    pub repo_id: String,
    /// Generation, strictly increasing.
    pub generation: u64,
    /// Recipients every new object must be encrypted to.
    pub recipients: Vec<String>,
    /// When signed, unix milliseconds.
    pub created_ms: i64,
    /// Hex public key of the admin key that signs the *next* generation. Every change
    /// of the set rotates the admin key: a recipient removed now knew the old admin key
    /// (it is in the config they could read), so hosts that adopt this set stop
    /// trusting it. Absent in sets written before rotation: the same key signs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_admin: Option<String>,
    /// Hex Ed25519 signature over [`RecipientSet::signed_bytes`].
    pub signature: String,
}

impl RecipientSet {
    /// The bytes the signature covers: every field but the signature, unambiguously.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "context": "sqlvault v1 recipient set",
            "repo_id": self.repo_id,
            "generation": self.generation,
            "recipients": self.recipients,
            "created_ms": self.created_ms,
        });
        if let Some(next) = &self.next_admin {
            v["next_admin"] = serde_json::Value::String(next.clone());
        }
        serde_json::to_vec(&v).expect("serialises")
    }

    /// The admin public key that hosts adopting this set trust from now on: the one
    /// it names, else the one that signed it.
    pub fn admin_after<'a>(&'a self, signer: &'a str) -> &'a str {
        self.next_admin.as_deref().unwrap_or(signer)
    }

    /// Builds and signs a set with `key`, handing the next generation to `next`.
    pub fn signed(
        repo_id: &str,
        generation: u64,
        recipients: Vec<String>,
        created_ms: i64,
        key: &crate::AdminKey,
        next: Option<&crate::AdminKey>,
    ) -> Self {
        let mut s = RecipientSet {
            repo_id: repo_id.to_string(),
            generation,
            recipients,
            created_ms,
            next_admin: next.map(|k| k.public_hex()),
            signature: String::new(),
        };
        s.signature = key.sign(&s.signed_bytes());
        s
    }

    /// Whether the signature is by the holder of the admin key `public` (hex).
    pub fn verify(&self, public: &str) -> bool {
        crate::keys::verify_admin_signature(public, &self.signed_bytes(), &self.signature)
    }
}

impl std::fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoConfig")
            .field("repo_id", &self.repo_id)
            .field("recipients", &self.recipients)
            .finish_non_exhaustive()
    }
}

/// A reference from a manifest to a page map object, with the MAC of its plaintext so
/// that a map cannot be swapped or forged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapRef {
    /// The `maps/<id>` object.
    pub id: ObjectId,
    /// Hex MAC of the map plaintext under the repository MAC key.
    pub mac: String,
}

/// Figures recorded about the backup that made a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Bytes of database read.
    pub bytes_read: u64,
    /// Bytes newly stored (encrypted packs, index, map, manifest).
    pub bytes_new: u64,
    /// Chunks in the snapshot.
    pub chunks_total: u64,
    /// Chunks not already in the repository.
    pub chunks_new: u64,
    /// The store requests the backup made up to and including its manifest's PUT
    /// (`check --cost` reports a typical incremental from these). Absent in manifests
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<StoredRequests>,
}

/// Store requests by kind, as recorded in a manifest.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRequests {
    /// GET requests (whole or ranged).
    pub get: u64,
    /// PUT requests.
    pub put: u64,
    /// LIST requests.
    pub list: u64,
    /// DELETE requests.
    pub delete: u64,
    /// HEAD requests.
    pub head: u64,
}

/// A snapshot manifest: everything restore needs besides the data. Written last,
/// create-if-absent: a snapshot exists if and only if its manifest exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Snapshot id (also its object name).
    pub id: ObjectId,
    /// Database name (defaults to the file name).
    pub name: String,
    /// `"pages"` for a physical snapshot, `"dump"` for a SQL dump.
    pub kind: String,
    /// Creation time, unix milliseconds; retention orders by this.
    pub created_ms: i64,
    /// Host that made the backup. With `source_path`, the database's identity: retention
    /// groups by name, host and path. Empty when absent (a group of its own per name).
    #[serde(default)]
    pub host: String,
    /// Canonical absolute source path on `host`.
    #[serde(default)]
    pub source_path: String,
    /// Page size in bytes.
    pub page_size: u32,
    /// Pages in the database.
    pub page_count: u32,
    /// `wal`, `delete`, …
    pub journal_mode: String,
    /// `PRAGMA user_version`.
    pub user_version: i64,
    /// `PRAGMA application_id`.
    pub application_id: i64,
    /// `UTF-8`, `UTF-16le`, `UTF-16be`.
    pub text_encoding: String,
    /// SQLite library version that read the database.
    pub sqlite_version: String,
    /// sqlvault version that wrote the snapshot.
    pub tool_version: String,
    /// Hex logical checksum of the content (schema and every row).
    pub logical_checksum: String,
    /// Page maps to apply in order: a full map, then deltas.
    pub maps: Vec<MapRef>,
    /// The snapshot this one was made incrementally against, if any.
    #[serde(default)]
    pub parent: Option<ObjectId>,
    /// Backup figures.
    pub stats: SnapshotStats,
    /// For `"dump"` snapshots: the SQL stream's facts. Its `maps` are chunk sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpFacts>,
    /// For a snapshot of a SQLCipher database: the settings restore re-encrypts with.
    /// The snapshot's pages (or SQL) are the database's plaintext, protected in the
    /// repository by age like everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<CipherFacts>,
    /// When the backup was asked to check its source (`backup --integrity-check`): what
    /// `integrity_check` said of exactly the state this snapshot holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_check: Option<SourceCheck>,
    /// The base of a replication chain (`sqlvault replicate`): segments
    /// `segments/<id>/…` may follow it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicated: bool,
    /// A compaction point of a replication chain: the hex state checksum of its pages
    /// (docs/format.md, "Segments"), which restore checks instead of the logical
    /// checksum (empty then: no statement of the database was run to make it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The source's own `integrity_check` at backup time, on the snapshot's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SourceCheck {
    /// Whether it passed.
    pub ok: bool,
    /// Its first lines when it did not (at most [`SourceCheck::MAX_LINES`], each cut
    /// to [`SourceCheck::MAX_LINE`] bytes).
    #[serde(default)]
    pub problems: Vec<String>,
}

impl SourceCheck {
    /// Lines kept.
    pub const MAX_LINES: usize = 20;
    /// Bytes kept of each line.
    pub const MAX_LINE: usize = 500;

    /// The record of `problems` (all of `integrity_check`'s lines but `ok`).
    pub fn of(problems: &[String]) -> SourceCheck {
        SourceCheck {
            ok: problems.is_empty(),
            problems: problems
                .iter()
                .take(Self::MAX_LINES)
                .map(|l| {
                    let mut end = l.len().min(Self::MAX_LINE);
                    while !l.is_char_boundary(end) {
                        end -= 1;
                    }
                    l[..end].to_string()
                })
                .collect(),
        }
    }
}

/// The SQLCipher facts of an encrypted source: its settings, and a check value that
/// tells the right database key from a wrong one at restore without storing the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CipherFacts {
    /// SQLCipher major version of the file's settings (`cipher_compatibility`).
    pub compatibility: u8,
    /// `cipher_page_size`.
    pub page_size: u32,
    /// `kdf_iter`.
    pub kdf_iter: u32,
    /// `cipher_hmac_algorithm`.
    pub hmac_algorithm: String,
    /// `cipher_kdf_algorithm`.
    pub kdf_algorithm: String,
    /// SQLCipher version that read the database.
    pub sqlcipher_version: String,
    /// Hex of 16 random bytes (format 1; empty when `key_check_sealed` is used).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_check_salt: String,
    /// Hex of the key's check value under that salt (format 1). In the manifest, which
    /// the metadata key opens, it let a write-key holder test guesses of the database
    /// key offline at one hash each; new manifests seal it instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_check: String,
    /// Hex of an age object sealed to the repository's recipients only (not the metadata
    /// key) holding the 16-byte salt and the 32-byte check value: only an identity holder
    /// can test a database key against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check_sealed: Option<String>,
}

/// What a dump snapshot's manifest records about its SQL stream beyond `stats`
/// (whose `bytes_read` and `chunks_total` are the SQL's bytes and chunks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpFacts {
    /// The chunker that cut it ([`crate::ChunkerParams::describe`]).
    pub chunker: String,
}

/// Snapshot kinds this crate describes.
pub mod kind {
    /// Database pages.
    pub const PAGES: &str = "pages";
    /// A SQL dump.
    pub const DUMP: &str = "dump";
}

impl Manifest {
    /// Database size in bytes.
    pub fn db_size(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }
}

/// Manifest plaintext: the JSON body, a newline, the hex MAC of the body, a newline.
pub fn encode_manifest(keys: &RepoKeys, m: &Manifest) -> Vec<u8> {
    mac_lines(keys, serde_json::to_vec(m).expect("manifest serialises"))
}

/// `body`, a newline, the hex MAC of `body`, a newline: how manifests and segments
/// are stored.
pub(crate) fn mac_lines(keys: &RepoKeys, mut body: Vec<u8>) -> Vec<u8> {
    let mac = hex::encode(keys.mac(&body));
    body.push(b'\n');
    body.extend_from_slice(mac.as_bytes());
    body.push(b'\n');
    body
}

/// The body of what [`mac_lines`] wrote, once its MAC is checked.
pub(crate) fn checked_body<'a>(keys: &RepoKeys, bytes: &'a [u8], kind: &'static str) -> Result<&'a [u8], FormatError> {
    let text = bytes
        .strip_suffix(b"\n")
        .ok_or(FormatError::malformed(kind, "missing final newline"))?;
    let split = text
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or(FormatError::malformed(kind, "missing mac line"))?;
    let (body, mac_hex) = (&text[..split], &text[split + 1..]);
    let mut mac = [0u8; 32];
    hex::decode_to_slice(mac_hex, &mut mac).map_err(|_| FormatError::malformed(kind, "mac is not hex"))?;
    if !keys.verify_mac(body, &mac) {
        return Err(FormatError::Unauthentic { kind });
    }
    Ok(body)
}

/// Parses a manifest and checks its MAC; `expected_id` must match the object name.
pub fn decode_manifest(keys: &RepoKeys, bytes: &[u8], expected_id: &ObjectId) -> Result<Manifest, FormatError> {
    let kind = "manifest";
    let body = checked_body(keys, bytes, kind)?;
    let m: Manifest = serde_json::from_slice(body).map_err(|source| FormatError::Json { kind, source })?;
    if m.version != FORMAT_VERSION {
        return Err(FormatError::Version {
            kind,
            version: m.version,
        });
    }
    if &m.id != expected_id {
        return Err(FormatError::Unauthentic { kind });
    }
    // A restore sizes its file by page_size × page_count: only SQLite's page sizes.
    if m.kind == self::kind::PAGES && !(m.page_size.is_power_of_two() && (512..=65536).contains(&m.page_size)) {
        return Err(FormatError::malformed(
            kind,
            format!("page size {} is not SQLite's", m.page_size),
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepoSecret;

    fn sample() -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            id: ObjectId([1; 16]),
            name: "app.db".into(),
            kind: "pages".into(),
            created_ms: 1,
            host: "h".into(),
            source_path: "/x/app.db".into(),
            page_size: 4096,
            page_count: 2,
            journal_mode: "wal".into(),
            user_version: 7,
            application_id: 0,
            text_encoding: "UTF-8".into(),
            sqlite_version: "3".into(),
            tool_version: "0".into(),
            logical_checksum: "00".into(),
            maps: vec![],
            parent: None,
            stats: SnapshotStats::default(),
            dump: None,
            cipher: None,
            source_check: None,
            replicated: false,
            state: None,
        }
    }

    #[test]
    fn manifest_mac_detects_forgery_and_wrong_key() {
        let keys = RepoSecret::generate().keys();
        let m = sample();
        let enc = encode_manifest(&keys, &m);
        assert_eq!(decode_manifest(&keys, &enc, &m.id).unwrap(), m);
        let forged = String::from_utf8(enc.clone())
            .unwrap()
            .replace("\"user_version\":7", "\"user_version\":8");
        assert!(matches!(
            decode_manifest(&keys, forged.as_bytes(), &m.id),
            Err(FormatError::Unauthentic { .. })
        ));
        let other = RepoSecret::generate().keys();
        assert!(decode_manifest(&other, &enc, &m.id).is_err());
        // A valid manifest renamed to another snapshot id is rejected too.
        assert!(decode_manifest(&keys, &enc, &ObjectId([2; 16])).is_err());
    }

    #[test]
    fn a_manifest_without_host_and_source_path_is_read_with_empty_ones() {
        // Retention puts such snapshots in a group of their own per name; they must
        // keep restoring.
        let keys = RepoSecret::generate().keys();
        let m = sample();
        let mut v = serde_json::to_value(&m).unwrap();
        let o = v.as_object_mut().unwrap();
        assert!(o.remove("host").is_some() && o.remove("source_path").is_some());
        let body = serde_json::to_vec(&v).unwrap();
        let mut enc = body.clone();
        enc.push(b'\n');
        enc.extend_from_slice(hex::encode(keys.mac(&body)).as_bytes());
        enc.push(b'\n');
        let d = decode_manifest(&keys, &enc, &m.id).unwrap();
        assert_eq!((d.host.as_str(), d.source_path.as_str()), ("", ""));
        assert_eq!(d.name, m.name);
    }

    #[test]
    fn marker_ids_that_would_escape_a_directory_are_refused() {
        let ok = serde_json::to_vec(&RepoMarker::new("0123456789abcdef0123456789abcdef".into())).unwrap();
        assert!(RepoMarker::decode(&ok).is_ok());
        for bad in [
            "../..",
            "/abs",
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef/x",
            "..",
            "a",
        ] {
            let b = serde_json::to_vec(&RepoMarker::new(bad.into())).unwrap();
            assert!(RepoMarker::decode(&b).is_err(), "{bad:?} accepted");
        }
    }
}

#[cfg(test)]
mod recipient_set_tests {
    use super::*;

    #[test]
    fn signed_sets_verify_and_any_change_breaks_them() {
        let k = crate::AdminKey::generate();
        let s = RecipientSet::signed("r1", 3, vec!["age1a".into(), "age1b".into()], 42, &k, None);
        assert!(s.verify(&k.public_hex()));
        assert!(!s.verify(&crate::AdminKey::generate().public_hex()));
        let mut t = s.clone();
        t.generation = 4;
        assert!(!t.verify(&k.public_hex()));
        let mut t = s.clone();
        t.recipients.push("age1evil".into());
        assert!(!t.verify(&k.public_hex()));
        let mut t = s.clone();
        t.repo_id = "r2".into();
        assert!(!t.verify(&k.public_hex()));
        // The same signature bytes in another spelling are refused too: a flipped
        // case bit in the stored object is damage, not an equivalent set.
        let mut t = s.clone();
        t.signature = t.signature.to_uppercase();
        assert!(!t.verify(&k.public_hex()));
        let mut t = s;
        t.signature = "00".repeat(64);
        assert!(!t.verify(&k.public_hex()));
    }

    #[test]
    fn the_next_admin_key_is_signed_and_cannot_be_swapped() {
        let (k, next, evil) = (
            crate::AdminKey::generate(),
            crate::AdminKey::generate(),
            crate::AdminKey::generate(),
        );
        let s = RecipientSet::signed("r1", 4, vec!["age1a".into()], 42, &k, Some(&next));
        assert!(s.verify(&k.public_hex()));
        assert_eq!(s.admin_after(&k.public_hex()), next.public_hex());
        let mut t = s.clone();
        t.next_admin = Some(evil.public_hex());
        assert!(!t.verify(&k.public_hex()));
        let mut t = s;
        t.next_admin = None;
        assert!(!t.verify(&k.public_hex()));
    }
}
