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
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
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
///
/// The set stays in its cache file (36 bytes a chunk, sorted by id: 76 MiB for an
/// 8 GiB database) and is searched there: memory holds the pack list and every
/// [`FENCE`]-th id (under one byte a chunk), and a lookup reads one block of
/// [`FENCE`] records. Saving merges the file with this backup's chunks, streamed.
#[derive(Debug, Default)]
pub(crate) struct KnownChunks {
    pub packs: Vec<ObjectId>,
    /// Packs whose chunks no longer count (marked by prune, or gone).
    gone: Vec<bool>,
    file: Option<fs::File>,
    records_at: u64,
    count: u64,
    /// The id of record `k * FENCE`, for every k.
    fence: Vec<ChunkId>,
}

/// Records per block of the known set's file: one lookup reads 2.3 KiB.
const FENCE: u64 = 64;
const KNOWN_RECORD: u64 = 36;

const KNOWN_MAGIC: &[u8; 8] = b"SQLVKNC2";
const PARENT_MAGIC_V1: &[u8; 8] = b"SQLVPAR1";
const PARENT_MAGIC: &[u8; 8] = b"SQLVPAR2";

pub(crate) fn cache_dir(home: &Path, repo_id: &str) -> PathBuf {
    repo_dir(home, repo_id).join("cache")
}

impl KnownChunks {
    /// Whether `id` is stored in a pack that still counts. A read error counts as
    /// unknown: the chunk is uploaded again, never skipped.
    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        let Some(f) = &self.file else { return false };
        let k = self.fence.partition_point(|x| x <= id);
        if k == 0 {
            return false;
        }
        let first = (k as u64 - 1) * FENCE;
        let n = FENCE.min(self.count - first) as usize;
        let mut block = vec![0u8; n * KNOWN_RECORD as usize];
        if f.read_exact_at(&mut block, self.records_at + first * KNOWN_RECORD)
            .is_err()
        {
            return false;
        }
        match crate::runs::search_block(&block, KNOWN_RECORD as usize, id) {
            Some(v) => {
                let p = u32::from_le_bytes(v.try_into().expect("4 bytes")) as usize;
                !self.gone.get(p).copied().unwrap_or(true)
            }
            None => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0 || self.gone.iter().all(|g| *g)
    }

    /// The packs whose chunks still count.
    pub(crate) fn live_packs(&self) -> Vec<ObjectId> {
        self.packs
            .iter()
            .zip(&self.gone)
            .filter(|(_, g)| !**g)
            .map(|(p, _)| *p)
            .collect()
    }

    pub(crate) fn load(home: &Path, repo_id: &str) -> KnownChunks {
        let path = cache_dir(home, repo_id).join("known");
        let Ok(f) = fs::File::open(&path) else {
            return KnownChunks::default();
        };
        Self::open(f).unwrap_or_else(|| {
            tracing::warn!("ignoring damaged or outdated chunk cache of repository {repo_id}");
            KnownChunks::default()
        })
    }

    /// Reads the pack list and checks the records (sorted, unique, naming a listed
    /// pack) in one streamed pass, keeping the fences.
    fn open(f: fs::File) -> Option<KnownChunks> {
        use std::io::Read;
        let len = f.metadata().ok()?.len();
        let mut r = std::io::BufReader::with_capacity(1 << 18, &f);
        let mut head = [0u8; 12];
        r.read_exact(&mut head).ok()?;
        if &head[..8] != KNOWN_MAGIC {
            return None;
        }
        let np = u32::from_le_bytes(head[8..12].try_into().ok()?) as u64;
        let records_at = 12u64.checked_add(np.checked_mul(16)?)?;
        let rest = len.checked_sub(records_at)?;
        if rest % KNOWN_RECORD != 0 {
            return None;
        }
        let mut packs = Vec::with_capacity(np as usize);
        for _ in 0..np {
            let mut p = [0u8; 16];
            r.read_exact(&mut p).ok()?;
            packs.push(ObjectId(p));
        }
        let count = rest / KNOWN_RECORD;
        let mut fence = Vec::with_capacity(count.div_ceil(FENCE) as usize);
        let mut last: Option<ChunkId> = None;
        let mut rec = [0u8; 36];
        for i in 0..count {
            r.read_exact(&mut rec).ok()?;
            let id = ChunkId(rec[..32].try_into().unwrap());
            let p = u32::from_le_bytes(rec[32..].try_into().unwrap()) as u64;
            if p >= np || last.is_some_and(|l| l >= id) {
                return None;
            }
            if i % FENCE == 0 {
                fence.push(id);
            }
            last = Some(id);
        }
        drop(r);
        Some(KnownChunks {
            gone: vec![false; packs.len()],
            packs,
            file: Some(f),
            records_at,
            count,
            fence,
        })
    }

    /// Forgets the chunks of the packs in `gone`; returns how many packs that was.
    pub(crate) fn drop_packs(&mut self, gone: &std::collections::HashSet<ObjectId>) -> usize {
        let mut n = 0;
        for (p, g) in self.packs.iter().zip(self.gone.iter_mut()) {
            if !*g && gone.contains(p) {
                *g = true;
                n += 1;
            }
        }
        n
    }

    /// Writes the set with the chunks of `new` (pack id and its encoded entries, read
    /// through `entries`) added: the cache file and one sorted run per new pack are
    /// merged, streamed, so the set is never in memory. A chunk stored twice keeps
    /// its first pack; packs that no longer count are left out.
    pub(crate) fn save_with(
        &self,
        home: &Path,
        repo_id: &str,
        new: &[ObjectId],
        mut entries: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
        scratch: &Path,
    ) -> Result<()> {
        use std::io::BufWriter;
        // Nothing new and nothing forgotten (an incremental backup of an unchanged
        // database): the file on disk is already the set; rewriting it would cost a
        // pass over 36 bytes a chunk for nothing.
        if new.is_empty() && self.file.is_some() && !self.gone.iter().any(|g| *g) {
            return Ok(());
        }
        let e = |e| io_err("cannot write the chunk cache", e);
        // One sorted run per new pack, in a scratch file.
        let runs_path = scratch.join("known-runs");
        let mut runs_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&runs_path)
            .map_err(e)?;
        let mut remap = vec![u32::MAX; self.packs.len()];
        let mut packs = Vec::new();
        for (i, p) in self.packs.iter().enumerate() {
            if !self.gone[i] {
                remap[i] = packs.len() as u32;
                packs.push(*p);
            }
        }
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(new.len());
        {
            let mut w = BufWriter::new(&mut runs_file);
            let mut at = 0u64;
            for (i, pack) in new.iter().enumerate() {
                let bytes = entries(i).map_err(e)?;
                let mut ids = Vec::new();
                sqlvault_format::decode_entries(&bytes, |x| ids.push(x.id)).map_err(|x| {
                    Error::new(ErrorKind::Internal, "internal", "pack entries do not decode").with_source(x)
                })?;
                ids.sort_unstable();
                ids.dedup();
                let p = packs.len() as u32;
                packs.push(*pack);
                for id in &ids {
                    w.write_all(&id.0).map_err(e)?;
                    w.write_all(&p.to_le_bytes()).map_err(e)?;
                }
                runs.push((at, ids.len() as u64));
                at += ids.len() as u64 * KNOWN_RECORD;
            }
            w.flush().map_err(e)?;
        }
        // Sources of the merge: the current file, then each run. Positional reads
        // (one file description shared by every run, no seek offsets to share).
        struct Src<'f> {
            f: &'f fs::File,
            at: u64,
            left: u64,
            buf: Vec<u8>,
            pos: usize,
        }
        impl Src<'_> {
            fn next(&mut self) -> std::io::Result<Option<(ChunkId, u32)>> {
                if self.pos == self.buf.len() {
                    if self.left == 0 {
                        return Ok(None);
                    }
                    let n = self.left.min(227);
                    self.buf.resize((n * KNOWN_RECORD) as usize, 0);
                    self.f.read_exact_at(&mut self.buf, self.at)?;
                    self.at += n * KNOWN_RECORD;
                    self.left -= n;
                    self.pos = 0;
                }
                let rec = &self.buf[self.pos..self.pos + 36];
                self.pos += 36;
                Ok(Some((
                    ChunkId(rec[..32].try_into().unwrap()),
                    u32::from_le_bytes(rec[32..].try_into().unwrap()),
                )))
            }
        }
        let src = |f, at, left| Src {
            f,
            at,
            left,
            buf: Vec::new(),
            pos: 0,
        };
        let mut srcs = Vec::new();
        if let Some(f) = &self.file {
            srcs.push(src(f, self.records_at, self.count));
        }
        for (at, n) in &runs {
            srcs.push(src(&runs_file, *at, *n));
        }
        let old = self.file.is_some();
        let path = cache_dir(home, repo_id).join("known");
        let r = write_private_with(&path, |w| {
            w.write_all(KNOWN_MAGIC)?;
            w.write_all(&(packs.len() as u32).to_le_bytes())?;
            for p in &packs {
                w.write_all(&p.0)?;
            }
            // Min-heap of (id, source, pack): equal ids come out in source order (the
            // current file, then the runs in the order their packs were stored), so
            // the first pack that stored a chunk keeps it.
            let mut heap = std::collections::BinaryHeap::new();
            for (k, s) in srcs.iter_mut().enumerate() {
                if let Some((id, p)) = s.next()? {
                    heap.push(std::cmp::Reverse((id, k, p)));
                }
            }
            let mut last: Option<ChunkId> = None;
            while let Some(std::cmp::Reverse((id, k, p))) = heap.pop() {
                if let Some((nid, np)) = srcs[k].next()? {
                    heap.push(std::cmp::Reverse((nid, k, np)));
                }
                // The current file's packs are renumbered; gone ones are left out.
                let p = if old && k == 0 { remap[p as usize] } else { p };
                if p == u32::MAX || last == Some(id) {
                    continue;
                }
                last = Some(id);
                w.write_all(&id.0)?;
                w.write_all(&p.to_le_bytes())?;
            }
            Ok(())
        });
        let _ = fs::remove_file(&runs_path);
        r
    }
}

/// The last snapshot this host made of one database name: its maps and page table.
/// The page table stays on disk; it is only ever read front to back.
#[derive(Debug)]
pub(crate) struct ParentCache {
    pub snapshot: ObjectId,
    pub maps: Vec<MapRef>,
    pub page_size: u32,
    /// Snapshots in its delta chain (a full map counts one however many parts it has).
    pub depth: u32,
    path: PathBuf,
    pages_at: u64,
    pub page_count: u64,
}

/// A parent's page table, read by range (the backup workers compare each batch of
/// pages with the parent's before looking anything up).
#[derive(Debug)]
pub(crate) struct ParentTable {
    file: fs::File,
    at: u64,
    count: u64,
}

impl ParentTable {
    /// Reads the ids of pages `first..first + n` (1-based) into `out`, as raw 32-byte
    /// records; pages past the parent's end are left out (`out` is shorter).
    pub(crate) fn read(&self, first: u32, n: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = first as u64 - 1;
        let n = (n as u64).min(self.count.saturating_sub(start));
        out.resize((n * 32) as usize, 0);
        self.file.read_exact_at(out, self.at + start * 32)
    }
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
        // Version 1 had no depth: its maps were one per snapshot.
        let v2 = match &head[..8] {
            m if m == PARENT_MAGIC => true,
            m if m == PARENT_MAGIC_V1 => false,
            _ => return None,
        };
        let snapshot = ObjectId(head[8..24].try_into().ok()?);
        let page_size = u32::from_le_bytes(head[24..28].try_into().ok()?);
        let jlen = u32::from_le_bytes(head[28..32].try_into().ok()?) as u64;
        let mut depth = None;
        let mut at = 32;
        if v2 {
            let mut d = [0u8; 4];
            f.read_exact(&mut d).ok()?;
            depth = Some(u32::from_le_bytes(d));
            at += 4;
        }
        let mut json = vec![0u8; jlen.min(len) as usize];
        f.read_exact(&mut json).ok()?;
        let maps: Vec<MapRef> = serde_json::from_slice(&json).ok()?;
        let pages_at = at + jlen;
        let rest = len.checked_sub(pages_at)?;
        (rest % 32 == 0).then_some(ParentCache {
            snapshot,
            depth: depth.unwrap_or(maps.len() as u32),
            maps,
            page_size,
            path,
            pages_at,
            page_count: rest / 32,
        })
    }

    /// The parent's page table for reads of any page range.
    pub(crate) fn open_table(&self) -> std::io::Result<ParentTable> {
        Ok(ParentTable {
            file: fs::File::open(&self.path)?,
            at: self.pages_at,
            count: self.page_count,
        })
    }

    /// The parent's page table, front to back.
    pub(crate) fn table(&self) -> std::io::Result<crate::spill::IdReader> {
        crate::spill::IdReader::new(fs::File::open(&self.path)?, self.pages_at, self.page_count)
    }

    /// Hands `f` each page of `current` that differs from this parent (every page past
    /// the parent's end differs), both tables streamed from disk. Stops, returning
    /// false, as soon as `f` does.
    pub(crate) fn diff(
        &self,
        current: &mut crate::spill::IdReader,
        mut f: impl FnMut(u32, ChunkId) -> Result<bool>,
    ) -> Result<bool> {
        let e = |e| io_err("cannot read the cached parent page table", e);
        let mut base = self.table().map_err(e)?;
        let mut pgno = 0u32;
        while let Some(id) = current.next_id().map_err(e)? {
            pgno += 1;
            let same = match base.next_id().map_err(e)? {
                Some(b) => b == id,
                None => false,
            };
            if !same && !f(pgno, id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records `pages` as the parent for the next backup of `name`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn save(
        home: &Path,
        repo_id: &str,
        name: &str,
        snapshot: ObjectId,
        maps: &[MapRef],
        page_size: u32,
        depth: u32,
        pages: &mut crate::spill::IdReader,
    ) -> Result<()> {
        let json = serde_json::to_vec(maps).expect("serialises");
        write_private_with(&parent_path(home, repo_id, name), |w| {
            w.write_all(PARENT_MAGIC)?;
            w.write_all(&snapshot.0)?;
            w.write_all(&page_size.to_le_bytes())?;
            w.write_all(&(json.len() as u32).to_le_bytes())?;
            w.write_all(&depth.to_le_bytes())?;
            w.write_all(&json)?;
            while let Some(id) = pages.next_id()? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_round_trips_and_diffs_from_disk() {
        let home = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let id = |b: u8| ChunkId([b; 32]);
        let base = crate::spill::PageFile::create(scratch.path(), "base").unwrap();
        base.write(1, &[id(1), id(2), id(3)]).unwrap();
        let maps = vec![MapRef {
            id: ObjectId([7; 16]),
            mac: "ab".into(),
        }];
        ParentCache::save(
            home.path(),
            "r",
            "app.db",
            ObjectId([5; 16]),
            &maps,
            4096,
            3,
            &mut base.reader(3).unwrap(),
        )
        .unwrap();
        let p = ParentCache::load(home.path(), "r", "app.db").unwrap();
        assert_eq!(
            (p.snapshot, p.page_size, p.depth, p.page_count),
            (ObjectId([5; 16]), 4096, 3, 3)
        );
        assert_eq!(p.maps, maps);
        let cur = crate::spill::PageFile::create(scratch.path(), "cur").unwrap();
        cur.write(1, &[id(1), id(9), id(3), id(4)]).unwrap();
        let mut seen = Vec::new();
        assert!(
            p.diff(&mut cur.reader(4).unwrap(), |pg, x| {
                seen.push((pg, x));
                Ok(true)
            })
            .unwrap()
        );
        assert_eq!(seen, vec![(2, id(9)), (4, id(4))]);
        assert!(
            !p.diff(&mut cur.reader(4).unwrap(), |_, _| Ok(false)).unwrap(),
            "stops when told"
        );

        // A version-1 cache (no depth) still loads: one map per snapshot.
        let path = parent_path(home.path(), "r", "old.db");
        write_private_with(&path, |w| {
            w.write_all(PARENT_MAGIC_V1)?;
            w.write_all(&[5; 16])?;
            w.write_all(&4096u32.to_le_bytes())?;
            w.write_all(&2u32.to_le_bytes())?;
            w.write_all(b"[]")?;
            w.write_all(&[1; 32])?;
            Ok(())
        })
        .unwrap();
        let old = ParentCache::load(home.path(), "r", "old.db").unwrap();
        assert_eq!((old.depth, old.page_count), (0, 1));
    }

    #[test]
    fn known_chunks_merge_on_disk_look_up_and_drop_packs() {
        let home = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let id = |n: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_be_bytes());
            ChunkId(b)
        };
        let entries = |ids: &[u32]| {
            let e: Vec<sqlvault_format::IndexEntry> = ids
                .iter()
                .map(|&n| sqlvault_format::IndexEntry {
                    id: id(n),
                    frame_offset: 0,
                    frame_len: 1,
                    offset: 0,
                    len: 1,
                })
                .collect();
            sqlvault_format::encode_entries(&e)
        };
        let (a, b, c) = (ObjectId([8; 16]), ObjectId([9; 16]), ObjectId([10; 16]));
        // First backup: packs a and b; 300 chunks so that lookups cross fences.
        let pa: Vec<u32> = (0..300).map(|n| n * 2).collect();
        let pb: Vec<u32> = vec![3, 5, 0];
        let k = KnownChunks::load(home.path(), "r");
        assert!(k.is_empty() && !k.contains(&id(0)));
        let ents = [entries(&pa), entries(&pb)];
        k.save_with(home.path(), "r", &[a, b], |i| Ok(ents[i].clone()), scratch.path())
            .unwrap();
        let mut k = KnownChunks::load(home.path(), "r");
        assert_eq!(k.count, 302, "chunk 0 is in both packs and counted once");
        assert_eq!(k.packs, vec![a, b]);
        for n in 0..600 {
            assert_eq!(k.contains(&id(n)), n % 2 == 0 || n == 3 || n == 5, "chunk {n}");
        }
        // Second backup adds pack c; prune marked a. Chunk 0 was first stored in a:
        // dropping a forgets it, though b holds it too (as before: first pack only).
        assert_eq!(k.drop_packs(&[a].into_iter().collect()), 1);
        assert_eq!(k.drop_packs(&[a].into_iter().collect()), 0);
        assert!(!k.contains(&id(2)) && k.contains(&id(3)) && !k.contains(&id(0)));
        assert_eq!(k.live_packs(), vec![b]);
        let ec = [entries(&[7, 3, 1000])];
        k.save_with(home.path(), "r", &[c], |i| Ok(ec[i].clone()), scratch.path())
            .unwrap();
        let k2 = KnownChunks::load(home.path(), "r");
        assert_eq!(k2.packs, vec![b, c], "the marked pack is left out");
        assert_eq!(k2.count, 4, "3 and 5 from b, 7 and 1000 from c (3 kept in b)");
        assert!(k2.contains(&id(7)) && k2.contains(&id(1000)) && k2.contains(&id(5)) && !k2.contains(&id(2)));
        // Nothing new, nothing dropped: the file is left as it is (same inode).
        let path = cache_dir(home.path(), "r").join("known");
        let ino = || std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        let before = ino();
        k2.save_with(home.path(), "r", &[], |_| unreachable!(), scratch.path())
            .unwrap();
        assert_eq!(ino(), before, "an unchanged set is not rewritten");
        // A dropped pack alone is a change: rewritten without it.
        let mut k3 = KnownChunks::load(home.path(), "r");
        k3.drop_packs(&[c].into_iter().collect());
        k3.save_with(home.path(), "r", &[], |_| unreachable!(), scratch.path())
            .unwrap();
        assert_ne!(ino(), before);
        let k4 = KnownChunks::load(home.path(), "r");
        assert_eq!((k4.packs.clone(), k4.count), (vec![b], 2));
        assert!(!k4.contains(&id(7)) && k4.contains(&id(5)));
        // A damaged file is ignored, never trusted.
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&path, &bytes).unwrap();
        assert!(KnownChunks::load(home.path(), "r").is_empty());
        assert!(files_in(scratch.path()).is_empty(), "the runs are removed");
    }

    fn files_in(d: &Path) -> Vec<String> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}
