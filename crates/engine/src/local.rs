//! Host-local state under the session's state directory ([`crate::Session::state_dir`];
//! the `sqlvault` binary uses `$SQLVAULT_HOME`, else `$XDG_CONFIG_HOME/sqlvault` or
//! `~/.config/sqlvault`):
//!
//! ```text
//! repos/<repo-id>/write-key.json   recipients + repository secret (0600): lets this host back up
//! repos/<repo-id>/pin              fingerprint of the repository secret seen first (older hosts)
//! locations/<hash of location>     per repository location: its id and fingerprint (pins)
//! repos/<repo-id>/cache/known      chunk ids this host knows are stored, and their packs
//! repos/<repo-id>/cache/parent-<h> last snapshot of each database name: its page map
//! repos/<repo-id>/cache/seq-<h>    last dump snapshot of each database name: its chunks
//! ```
//!
//! The caches are an optimisation only: deleting them costs a full upload, never a
//! wrong snapshot, and they are checked against the repository before use.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sqlvault_format::{ChunkId, ChunkSeq, MapRef, ObjectId, RepoSecret};

use crate::error::{Error, ErrorKind, Result, io_err};

pub(crate) fn repo_dir(home: &Path, repo_id: &str) -> PathBuf {
    home.join("repos").join(repo_id)
}

pub(crate) fn mkdir_private(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| io_err(format!("cannot create {}", p.display()), e))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename), mode 0600.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_with(path, |w| w.write_all(bytes))
}

/// Like [`write_private`], streaming what `fill` writes (no copy of large state).
pub(crate) fn write_private_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    mkdir_private(dir)?;
    let name = path.file_name().unwrap().to_string_lossy();
    // A 0600 temporary named with this pid, removed on any error (drop) and on a
    // signal; leftovers of killed runs are swept.
    let r = (|| {
        let tmp = sqlvault_sqlite::scratch_file(dir, &name, ".tmp")?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        tmp.as_file().sync_all()?;
        tmp.persist(path).map(|_| ()).map_err(|e| e.error)
    })();
    if let Err(e) = r {
        return Err(io_err(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// What a backup host holds for a repository: the recipients it has been told to
/// trust and the repository secret. No identity: it cannot decrypt data.
#[derive(Clone, Serialize, Deserialize)]
pub struct WriteKey {
    /// Repository id.
    pub repo_id: String,
    /// Recipients every data object is encrypted to.
    pub recipients: Vec<String>,
    /// Hex repository secret.
    pub secret: String,
    /// Hex public key of the repository's admin key: a newer signed recipient set is
    /// adopted only with its signature (absent in write keys made before key rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_pub: Option<String>,
    /// Generation of `recipients`.
    #[serde(default)]
    pub generation: u64,
    /// Hex public key that signed the set of `generation` (checked again at each
    /// backup); absent for generation 0 and in write keys made before rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_signer: Option<String>,
}

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey")
            .field("repo_id", &self.repo_id)
            .field("recipients", &self.recipients)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl WriteKey {
    pub(crate) fn path(home: &Path, repo_id: &str) -> PathBuf {
        repo_dir(home, repo_id).join("write-key.json")
    }

    pub(crate) fn load(home: &Path, repo_id: &str) -> Result<Option<WriteKey>> {
        let p = Self::path(home, repo_id);
        let Some(b) = read_own_private(&p)? else {
            return Ok(None);
        };
        let wk: WriteKey = serde_json::from_slice(&b).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "local.bad-write-key",
                format!("write key {} is unreadable", p.display()),
            )
            .with_source(e)
        })?;
        if wk.repo_id != repo_id {
            return Err(Error::new(
                ErrorKind::Io,
                "local.bad-write-key",
                format!("write key {} belongs to another repository", p.display()),
            ));
        }
        Ok(Some(wk))
    }

    pub(crate) fn save(&self, home: &Path) -> Result<()> {
        write_private(
            &Self::path(home, &self.repo_id),
            &serde_json::to_vec_pretty(self).expect("serialises"),
        )
    }

    pub(crate) fn secret(&self) -> Result<RepoSecret> {
        RepoSecret::from_hex(&self.secret).ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                "local.bad-write-key",
                format!("write key for repository {} is damaged", self.repo_id),
            )
        })
    }
}

/// What a host knows about the repository at one location: the identity it presented
/// when this host first used it (or when `init`/`join` made it known). A bucket writer
/// can replace the cleartext marker and the config with those of a repository of their
/// own; the location keeps its identity here, so that swap is refused instead of
/// trusted on first use again under the new id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LocationPin {
    /// [`sqlvault_store::Store::location`].
    pub location: String,
    /// The repository id.
    pub repo_id: String,
    /// Fingerprint of the repository secret.
    pub fingerprint: String,
    /// Generation of the recipient set seen last, and the admin key trusted after it:
    /// a config of another generation must be reached from here along the signed sets
    /// (a removed recipient knows the secret, so the fingerprint alone cannot tell
    /// their config from the owner's).
    #[serde(default)]
    pub generation: u64,
    /// See `generation`; absent for repositories without an admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_pub: Option<String>,
}

/// Where the pin of `location` is kept.
pub(crate) fn location_pin_path(home: &Path, location: &str) -> PathBuf {
    location_path(home, location)
}

fn location_path(home: &Path, location: &str) -> PathBuf {
    let h = blake3::hash(location.as_bytes());
    home.join("locations").join(&h.to_hex()[..32])
}

impl LocationPin {
    /// The pin of `location`, if this host has one.
    pub(crate) fn load(home: &Path, location: &str) -> Result<Option<LocationPin>> {
        let p = location_path(home, location);
        let bytes = match read_own_private(&p)? {
            Some(b) => b,
            None => return Ok(None),
        };
        let pin: LocationPin = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "local.bad-pin",
                format!(
                    "location pin {} is unreadable (delete it to trust {location} anew)",
                    p.display()
                ),
            )
            .with_source(e)
        })?;
        if pin.location != location || !sqlvault_format::is_repo_id(&pin.repo_id) {
            return Err(Error::new(
                ErrorKind::Io,
                "local.bad-pin",
                format!("location pin {} does not describe {location}", p.display()),
            ));
        }
        Ok(Some(pin))
    }

    pub(crate) fn save(&self, home: &Path) -> Result<()> {
        write_private(
            &location_path(home, &self.location),
            &serde_json::to_vec_pretty(self).expect("serialises"),
        )
    }
}

/// Reads a state file this user owns and nobody else can write; `None` if absent. A
/// file another local user could have planted or changed is refused, not trusted.
fn read_own_private(p: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("cannot read {}", p.display()), e)),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::new(
            ErrorKind::Io,
            "local.untrusted-state",
            format!(
                "{} is not a regular file of this user that only this user can write: refusing to trust it",
                p.display()
            ),
        ));
    }
    fs::read(p)
        .map(Some)
        .map_err(|e| io_err(format!("cannot read {}", p.display()), e))
}

pub(crate) fn load_pin(home: &Path, repo_id: &str) -> Option<String> {
    fs::read_to_string(repo_dir(home, repo_id).join("pin"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub(crate) fn save_pin(home: &Path, repo_id: &str, fingerprint: &str) -> Result<()> {
    write_private(
        &repo_dir(home, repo_id).join("pin"),
        format!("{fingerprint}\n").as_bytes(),
    )
}

/// Chunks this host has stored, with the pack that holds each: when prune marks a pack
/// (or it is gone), exactly its chunks are forgotten.
#[derive(Debug, Default)]
pub(crate) struct KnownChunks {
    pub packs: Vec<ObjectId>,
    /// Sorted by id, unique: the chunk and the index in `packs` of its pack.
    pub ids: Vec<(ChunkId, u32)>,
}

const KNOWN_MAGIC: &[u8; 8] = b"SQLVKNC2";
const PARENT_MAGIC: &[u8; 8] = b"SQLVPAR1";

fn cache_dir(home: &Path, repo_id: &str) -> PathBuf {
    repo_dir(home, repo_id).join("cache")
}

impl KnownChunks {
    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.ids.binary_search_by(|(c, _)| c.cmp(id)).is_ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(crate) fn load(home: &Path, repo_id: &str) -> KnownChunks {
        let Ok(b) = fs::read(cache_dir(home, repo_id).join("known")) else {
            return KnownChunks::default();
        };
        Self::decode(&b).unwrap_or_else(|| {
            tracing::warn!("ignoring damaged or outdated chunk cache of repository {repo_id}");
            KnownChunks::default()
        })
    }

    fn decode(b: &[u8]) -> Option<KnownChunks> {
        let rest = b.strip_prefix(KNOWN_MAGIC)?;
        let np = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let rest = &rest[4..];
        let packs_bytes = rest.get(..np.checked_mul(16)?)?;
        let rest = &rest[np * 16..];
        if rest.len() % 36 != 0 {
            return None;
        }
        let packs: Vec<ObjectId> = packs_bytes
            .chunks_exact(16)
            .map(|c| ObjectId(c.try_into().unwrap()))
            .collect();
        let ids: Vec<(ChunkId, u32)> = rest
            .chunks_exact(36)
            .map(|c| {
                (
                    ChunkId(c[..32].try_into().unwrap()),
                    u32::from_le_bytes(c[32..].try_into().unwrap()),
                )
            })
            .collect();
        (ids.windows(2).all(|w| w[0].0 < w[1].0) && ids.iter().all(|(_, p)| (*p as usize) < packs.len()))
            .then_some(KnownChunks { packs, ids })
    }

    pub(crate) fn save(&self, home: &Path, repo_id: &str) -> Result<()> {
        write_private_with(&cache_dir(home, repo_id).join("known"), |w| {
            w.write_all(KNOWN_MAGIC)?;
            w.write_all(&(self.packs.len() as u32).to_le_bytes())?;
            for p in &self.packs {
                w.write_all(&p.0)?;
            }
            for (id, p) in &self.ids {
                w.write_all(&id.0)?;
                w.write_all(&p.to_le_bytes())?;
            }
            Ok(())
        })
    }

    /// Adds the chunks of a newly stored pack (call [`KnownChunks::sort`] after the
    /// last one).
    pub(crate) fn add_pack(&mut self, pack: ObjectId, ids: impl IntoIterator<Item = ChunkId>) {
        let p = self.packs.len() as u32;
        self.packs.push(pack);
        self.ids.extend(ids.into_iter().map(|id| (id, p)));
    }

    /// Restores the order (in place: no second copy of the set); a chunk stored twice
    /// keeps its first pack.
    pub(crate) fn sort(&mut self) {
        self.ids.sort_by_key(|a| a.0);
        self.ids.dedup_by(|a, b| a.0 == b.0);
    }

    /// Forgets the packs in `gone` and every chunk they hold.
    pub(crate) fn drop_packs(&mut self, gone: &std::collections::HashSet<ObjectId>) -> usize {
        if !self.packs.iter().any(|p| gone.contains(p)) {
            return 0;
        }
        let mut remap = vec![u32::MAX; self.packs.len()];
        let mut kept = Vec::new();
        for (i, p) in self.packs.iter().enumerate() {
            if !gone.contains(p) {
                remap[i] = kept.len() as u32;
                kept.push(*p);
            }
        }
        let before = self.ids.len();
        self.ids.retain_mut(|(_, p)| {
            *p = remap[*p as usize];
            *p != u32::MAX
        });
        self.packs = kept;
        before - self.ids.len()
    }
}

/// The last snapshot this host made of one database name: its maps and page table.
/// The page table stays on disk; it is only ever read front to back.
#[derive(Debug)]
pub(crate) struct ParentCache {
    pub snapshot: ObjectId,
    pub maps: Vec<MapRef>,
    pub page_size: u32,
    path: PathBuf,
    pages_at: u64,
    page_count: u64,
}

fn parent_path(home: &Path, repo_id: &str, name: &str) -> PathBuf {
    let h = blake3::hash(name.as_bytes());
    cache_dir(home, repo_id).join(format!("parent-{}", &h.to_hex()[..24]))
}

impl ParentCache {
    /// Reads the header of the cached parent of `name`, if any and well-formed.
    pub(crate) fn load(home: &Path, repo_id: &str, name: &str) -> Option<ParentCache> {
        use std::io::Read;
        let path = parent_path(home, repo_id, name);
        let mut f = fs::File::open(&path).ok()?;
        let len = f.metadata().ok()?.len();
        let mut head = [0u8; 32];
        f.read_exact(&mut head).ok()?;
        if &head[..8] != PARENT_MAGIC {
            return None;
        }
        let snapshot = ObjectId(head[8..24].try_into().ok()?);
        let page_size = u32::from_le_bytes(head[24..28].try_into().ok()?);
        let jlen = u32::from_le_bytes(head[28..32].try_into().ok()?) as u64;
        let mut json = vec![0u8; jlen.min(len) as usize];
        f.read_exact(&mut json).ok()?;
        let maps: Vec<MapRef> = serde_json::from_slice(&json).ok()?;
        let pages_at = 32 + jlen;
        let rest = len.checked_sub(pages_at)?;
        (rest % 32 == 0).then_some(ParentCache {
            snapshot,
            maps,
            page_size,
            path,
            pages_at,
            page_count: rest / 32,
        })
    }

    /// The pages of `current` that differ from this parent, streaming the parent's
    /// table from disk. `None` if the file cannot be read or more than `limit` differ.
    pub(crate) fn delta(&self, current: &[ChunkId], limit: usize) -> Option<sqlvault_format::PageMap> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::io::BufReader::with_capacity(1 << 20, fs::File::open(&self.path).ok()?);
        f.seek(SeekFrom::Start(self.pages_at)).ok()?;
        let mut entries = Vec::new();
        let mut buf = [0u8; 32];
        for (i, id) in current.iter().enumerate() {
            let same = (i as u64) < self.page_count && {
                f.read_exact(&mut buf).ok()?;
                buf == id.0
            };
            if !same {
                entries.push((i as u32 + 1, *id));
                if entries.len() > limit {
                    return None;
                }
            }
        }
        Some(sqlvault_format::PageMap {
            kind: sqlvault_format::PageMapKind::Delta,
            page_count: current.len() as u32,
            entries,
        })
    }

    /// Records `pages` as the parent for the next backup of `name`.
    pub(crate) fn save(
        home: &Path,
        repo_id: &str,
        name: &str,
        snapshot: ObjectId,
        maps: &[MapRef],
        page_size: u32,
        pages: &[ChunkId],
    ) -> Result<()> {
        let json = serde_json::to_vec(maps).expect("serialises");
        write_private_with(&parent_path(home, repo_id, name), |w| {
            w.write_all(PARENT_MAGIC)?;
            w.write_all(&snapshot.0)?;
            w.write_all(&page_size.to_le_bytes())?;
            w.write_all(&(json.len() as u32).to_le_bytes())?;
            w.write_all(&json)?;
            for id in pages {
                w.write_all(&id.0)?;
            }
            Ok(())
        })
    }
}

/// The last dump snapshot this host made of one database name: its maps and chunk
/// sequence (36 bytes a chunk, read whole: the edit script needs random access).
#[derive(Debug)]
pub(crate) struct SeqParent {
    pub snapshot: ObjectId,
    pub maps: Vec<MapRef>,
    pub seq: ChunkSeq,
}

const SEQ_MAGIC: &[u8; 8] = b"SQLVSQC1";

fn seq_path(home: &Path, repo_id: &str, name: &str) -> PathBuf {
    let h = blake3::hash(name.as_bytes());
    cache_dir(home, repo_id).join(format!("seq-{}", &h.to_hex()[..24]))
}

impl SeqParent {
    pub(crate) fn load(home: &Path, repo_id: &str, name: &str) -> Option<SeqParent> {
        let b = fs::read(seq_path(home, repo_id, name)).ok()?;
        let rest = b.strip_prefix(SEQ_MAGIC)?;
        let snapshot = ObjectId(rest.get(..16)?.try_into().ok()?);
        let jlen = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
        let maps: Vec<MapRef> = serde_json::from_slice(rest.get(20..20 + jlen)?).ok()?;
        let mut seq = ChunkSeq::default();
        seq.apply_encoded(rest.get(20 + jlen..)?).ok()?;
        Some(SeqParent { snapshot, maps, seq })
    }

    pub(crate) fn save(
        home: &Path,
        repo_id: &str,
        name: &str,
        snapshot: ObjectId,
        maps: &[MapRef],
        seq: &ChunkSeq,
    ) -> Result<()> {
        let json = serde_json::to_vec(maps).expect("serialises");
        write_private_with(&seq_path(home, repo_id, name), |w| {
            w.write_all(SEQ_MAGIC)?;
            w.write_all(&snapshot.0)?;
            w.write_all(&(json.len() as u32).to_le_bytes())?;
            w.write_all(&json)?;
            w.write_all(&seq.encode_full())
        })
    }
}

/// What `copy` learned about chunk ids between two repositories: the destination's id
/// of each source chunk it has read. Ids are keyed hashes under each repository's own
/// secret, so without this map a later copy would fetch and re-hash every chunk again
/// just to learn its destination id. The file is MACed under the destination's key: a
/// damaged map would point snapshots at the wrong data, so it is used whole or not at all.
#[derive(Debug, Default)]
pub(crate) struct CopyMap {
    pub map: std::collections::HashMap<ChunkId, ChunkId>,
    /// Entries when last loaded or saved (to save only after real growth).
    pub saved: usize,
}

const COPY_MAGIC: &[u8; 8] = b"SQLVCPM1";

fn copy_map_path(home: &Path, dst_id: &str, src_id: &str) -> PathBuf {
    cache_dir(home, dst_id).join(format!("copy-from-{src_id}"))
}

impl CopyMap {
    pub(crate) fn load(home: &Path, dst_id: &str, src_id: &str, keys: &sqlvault_format::RepoKeys) -> CopyMap {
        Self::load_from(&copy_map_path(home, dst_id, src_id), keys)
    }

    fn load_from(path: &Path, keys: &sqlvault_format::RepoKeys) -> CopyMap {
        let Ok(b) = fs::read(path) else {
            return CopyMap::default();
        };
        let decoded = (|| {
            let (body, mac) = b.split_at_checked(b.len().checked_sub(32)?)?;
            if !keys.verify_mac(body, mac.try_into().ok()?) {
                return None;
            }
            let rest = body.strip_prefix(COPY_MAGIC)?;
            let n = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let pairs = rest.get(8..)?;
            if pairs.len() != n.checked_mul(64)? {
                return None;
            }
            Some(
                pairs
                    .chunks_exact(64)
                    .map(|c| {
                        (
                            ChunkId(c[..32].try_into().unwrap()),
                            ChunkId(c[32..].try_into().unwrap()),
                        )
                    })
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        })();
        match decoded {
            Some(map) => CopyMap { saved: map.len(), map },
            None => {
                tracing::warn!("ignoring damaged copy map {}", path.display());
                CopyMap::default()
            }
        }
    }

    /// Saves the map (sorted, so the file is deterministic), MACed under `keys`.
    pub(crate) fn save(
        &mut self,
        home: &Path,
        dst_id: &str,
        src_id: &str,
        keys: &sqlvault_format::RepoKeys,
    ) -> Result<()> {
        self.save_to(&copy_map_path(home, dst_id, src_id), keys)
    }

    fn save_to(&mut self, path: &Path, keys: &sqlvault_format::RepoKeys) -> Result<()> {
        let mut pairs: Vec<(&ChunkId, &ChunkId)> = self.map.iter().collect();
        pairs.sort_unstable();
        let mut body = Vec::with_capacity(16 + pairs.len() * 64);
        body.extend_from_slice(COPY_MAGIC);
        body.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
        for (s, d) in pairs {
            body.extend_from_slice(&s.0);
            body.extend_from_slice(&d.0);
        }
        let mac = keys.mac(&body);
        write_private_with(path, |w| {
            w.write_all(&body)?;
            w.write_all(&mac)
        })?;
        self.saved = self.map.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_delta_streams_from_disk() {
        let dir = std::env::temp_dir().join(format!("sqlvault-parent-test-{}", std::process::id()));
        let path = dir.join("p");
        let base = [ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32])];
        write_private_with(&path, |w| {
            w.write_all(PARENT_MAGIC)?;
            w.write_all(&[5; 16])?;
            w.write_all(&4096u32.to_le_bytes())?;
            w.write_all(&2u32.to_le_bytes())?;
            w.write_all(b"[]")?;
            for id in &base {
                w.write_all(&id.0)?;
            }
            Ok(())
        })
        .unwrap();
        let p = ParentCache {
            snapshot: ObjectId([5; 16]),
            maps: vec![],
            page_size: 4096,
            path,
            pages_at: 34,
            page_count: 3,
        };
        let current = [ChunkId([1; 32]), ChunkId([9; 32]), ChunkId([3; 32]), ChunkId([4; 32])];
        let d = p.delta(&current, 10).unwrap();
        assert_eq!(d.entries, vec![(2, ChunkId([9; 32])), (4, ChunkId([4; 32]))]);
        assert!(p.delta(&current, 1).is_none(), "limit exceeded");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn known_chunks_sort_round_trip_and_drop_packs() {
        let (a, b) = (ObjectId([8; 16]), ObjectId([9; 16]));
        let mut k = KnownChunks::default();
        k.add_pack(a, [ChunkId([3; 32]), ChunkId([1; 32])]);
        k.add_pack(b, [ChunkId([2; 32]), ChunkId([3; 32])]);
        k.sort();
        let ids: Vec<ChunkId> = k.ids.iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32])]);
        assert!(k.contains(&ChunkId([2; 32])) && !k.contains(&ChunkId([4; 32])));
        let mut enc = Vec::new();
        enc.extend_from_slice(KNOWN_MAGIC);
        enc.extend_from_slice(&2u32.to_le_bytes());
        enc.extend_from_slice(&a.0);
        enc.extend_from_slice(&b.0);
        for (id, p) in &k.ids {
            enc.extend_from_slice(&id.0);
            enc.extend_from_slice(&p.to_le_bytes());
        }
        let mut d = KnownChunks::decode(&enc).unwrap();
        assert_eq!(d.ids, k.ids);
        assert!(KnownChunks::decode(&enc[..enc.len() - 1]).is_none());
        // Chunk 3 was first stored in pack a: dropping a forgets 1 and 3, keeps 2.
        assert_eq!(d.drop_packs(&[a].into_iter().collect()), 2);
        assert_eq!(d.packs, vec![b]);
        assert_eq!(d.ids, vec![(ChunkId([2; 32]), 0)]);
        assert_eq!(d.drop_packs(&[a].into_iter().collect()), 0);
    }

    #[test]
    fn copy_map_round_trips_and_is_dropped_whole_when_damaged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache").join("copy-from-x");
        let keys = sqlvault_format::RepoSecret::generate().keys();
        let mut m = CopyMap::default();
        for i in 0..50u8 {
            m.map.insert(ChunkId([i; 32]), ChunkId([i.wrapping_mul(7); 32]));
        }
        m.save_to(&path, &keys).unwrap();
        assert_eq!(m.saved, 50);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = CopyMap::load_from(&path, &keys);
        assert_eq!((back.map, back.saved), (m.map.clone(), 50));
        // Another repository's key, one flipped bit, a truncation: nothing is used.
        let other = sqlvault_format::RepoSecret::generate().keys();
        assert!(CopyMap::load_from(&path, &other).map.is_empty());
        let mut b = fs::read(&path).unwrap();
        b[20] ^= 1;
        fs::write(&path, &b).unwrap();
        assert!(CopyMap::load_from(&path, &keys).map.is_empty());
        b[20] ^= 1;
        fs::write(&path, &b[..b.len() - 1]).unwrap();
        assert!(CopyMap::load_from(&path, &keys).map.is_empty());
        assert!(CopyMap::load_from(&dir.path().join("absent"), &keys).map.is_empty());
    }
}
