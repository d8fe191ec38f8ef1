//! Backup: snapshot → hash pages → dedup → compress frames → encrypt packs → upload,
//! then index → page map → manifest (create-if-absent). See `docs/format.md`.

// (tidy: long file — the reader, the workers, the uploader and the commit of one
// backup share private state: `Shared`, `Dest`, `Table`. The WAL source of the
// replication issue is the moment to move the stages into a pipeline module with
// options of its own.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sqlvault_compress::{FrameCompressor, FrameDecompressor};
use sqlvault_format::{
    ChunkId, ChunkSeq, CipherFacts, DUMP_CHUNKER, DumpFacts, FORMAT_VERSION, Manifest, MapRef, ObjectId, SnapshotStats,
    kind as format_kind, layout,
};
use sqlvault_sqlite::{SnapshotError, SnapshotMethod, Source, SourceOptions};
use sqlvault_store::RequestCounts;

use crate::lease::Lease;

use crate::error::{Error, ErrorKind, Result, crypt_err, io_err};
use crate::local::{KnownChunks, ParentCache, ParentTable, SeqParent};
use crate::packer::{PackBuilder, SealedPack, compress_checked, index_object, put_index};
use crate::repo::{Repo, now_ms};
use crate::spill::{PageFile, Spill, SpillRef};

/// Options for [`backup`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Database name; defaults to the file name.
    pub name: Option<String>,
    /// zstd level.
    pub level: i32,
    /// Pages per compressed frame.
    pub frame_pages: usize,
    /// Pack size at which a pack is sealed and uploaded.
    pub pack_target: usize,
    /// Worker threads for hashing, compression and encryption (0 = one per core).
    pub threads: usize,
    /// Longest wait for the application's locks.
    pub busy_timeout: Duration,
    /// Decompress every frame and compare before upload (restic's lesson).
    pub verify_frames: bool,
    /// Longest delta chain before a full page map is written again.
    pub max_chain: usize,
    /// Entries per page map object (a large map is written in parts, see
    /// docs/format.md); the default suits every size, smaller values are for tests.
    pub map_part_pages: usize,
    /// Use the backup-API copy even in WAL mode.
    pub force_backup_copy: bool,
    /// Physical pages or a SQL dump.
    pub kind: BackupKind,
    /// The key of a SQLCipher source (its settings are detected when not given).
    pub unlock: Option<sqlvault_sqlite::Unlock>,
    /// Page snapshots: also run `integrity_check` on exactly the state the snapshot
    /// holds, alongside the pages (it reads the whole database once more), record the
    /// result in the manifest and warn when it fails. The backup is taken either way:
    /// a damaged database's only copy is still worth having.
    pub integrity_check: bool,
    /// Take over the name when the repository records another source for it (a moved
    /// database); otherwise such a backup is refused (`backup.name-taken`).
    pub adopt_name: bool,
    /// Hold the database name's lease ([`crate::lease`]) for this long between
    /// renewals, so that no other host backs up the same name meanwhile; `None`: no
    /// lease is taken or checked.
    pub lease: Option<Duration>,
    /// Run inside the snapshot's read transaction (replication's base).
    pub(crate) on_read: Option<sqlvault_sqlite::ReadHook>,
    /// Mark the manifest as the base of a replication chain.
    pub(crate) replicated: bool,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackupKind {
    /// The database's pages, one chunk each: restores byte for byte.
    #[default]
    Pages,
    /// A lossless SQL dump, cut by content-defined chunking: readable, portable across
    /// SQLite versions, and deduplicated between dumps of a slowly changing database.
    Dump,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            name: None,
            level: sqlvault_compress::DEFAULT_LEVEL,
            frame_pages: 256,
            pack_target: 16 << 20,
            threads: 0,
            busy_timeout: Duration::from_secs(10),
            verify_frames: true,
            max_chain: 32,
            map_part_pages: crate::mapparts::PART_ENTRIES,
            force_backup_copy: false,
            kind: BackupKind::Pages,
            unlock: None,
            integrity_check: false,
            adopt_name: false,
            lease: None,
            on_read: None,
            replicated: false,
        }
    }
}

impl BackupOptions {
    /// Sets the database name.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }
    /// Holds the name's lease, renewed every third of `ttl` (see the field).
    pub fn with_lease(mut self, ttl: Option<Duration>) -> Self {
        self.lease = ttl;
        self
    }
    /// Takes over a name another source owns (see the field).
    pub fn with_adopt_name(mut self, yes: bool) -> Self {
        self.adopt_name = yes;
        self
    }
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, t: Duration) -> Self {
        self.busy_timeout = t;
        self
    }
    /// Sets the pack target size.
    pub fn with_pack_target(mut self, bytes: usize) -> Self {
        self.pack_target = bytes.max(1 << 16);
        self
    }
    /// Sets the number of worker threads.
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    /// Sets the zstd level.
    pub fn with_level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }
    /// Forces the backup-API copy method.
    pub fn with_force_backup_copy(mut self, yes: bool) -> Self {
        self.force_backup_copy = yes;
        self
    }
    /// Sets the snapshot kind.
    pub fn with_kind(mut self, kind: BackupKind) -> Self {
        self.kind = kind;
        self
    }
    /// Sets the key of a SQLCipher source.
    pub fn with_unlock(mut self, unlock: Option<sqlvault_sqlite::Unlock>) -> Self {
        self.unlock = unlock;
        self
    }
    /// Checks the source's snapshot state with `integrity_check` too (page snapshots).
    pub fn with_integrity_check(mut self, yes: bool) -> Self {
        self.integrity_check = yes;
        self
    }
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// New snapshot id.
    pub snapshot_id: String,
    /// Database name.
    pub name: String,
    /// `pages` or `dump`.
    pub kind: String,
    /// Bytes of database (or, for a dump, of SQL) read.
    pub bytes_read: u64,
    /// Bytes newly stored in the repository.
    pub bytes_new: u64,
    /// Chunks (pages) in the snapshot.
    pub chunks_total: u64,
    /// Chunks not already stored.
    pub chunks_new: u64,
    /// Packs written.
    pub packs_new: u64,
    /// Page size.
    pub page_size: u32,
    /// Page count.
    pub page_count: u32,
    /// Journal mode of the source.
    pub journal_mode: String,
    /// `dbpage` or `backup-copy`.
    pub method: String,
    /// Snapshot this one was made incrementally against.
    pub parent: Option<String>,
    /// `full` or `delta` page map.
    pub map_kind: String,
    /// Wall time.
    pub seconds: f64,
    /// With `integrity_check`: the source's `integrity_check` of the snapshot's state
    /// (also recorded in the manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_check: Option<sqlvault_format::SourceCheck>,
    /// Store requests by kind.
    pub requests: crate::Requests,
}

/// Consecutive chunks for a worker: pages of the page size when `lens` is empty,
/// else chunks of those lengths (dumps). `first_pgno` is the 1-based ordinal of the
/// first.
struct Batch {
    first_pgno: u32,
    data: Vec<u8>,
    lens: Vec<u32>,
}

/// A pack this backup made: its index entries wait in the destination's spill file
/// (~32 bytes a chunk, 67 MiB for a full backup of 8 GiB) until the index is written.
struct StoredPack {
    id: ObjectId,
    entries: SpillRef,
    chunks: u64,
}

struct WorkerOut {
    packs: Vec<StoredPack>,
    bytes_stored: u64,
}

/// One destination repository of a backup: its own keys, dedup state and page table.
/// A destination that fails stops alone; the others go on.
struct Dest {
    repo: Repo,
    /// The page table of this host's last snapshot of the name, when every pack it
    /// relies on is known to be there: a page equal to its parent's is stored, with no
    /// lookup in the known set (which is on disk).
    parent_pages: Option<ParentTable>,
    /// The entries of the packs it stored, for its index.
    spill: Spill,
    known: KnownChunks,
    table: Mutex<Table>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// What to do with the name's claim at the commit ([`crate::names`]).
    claim: crate::names::ClaimPlan,
    lease: Option<Lease>,
}

struct Shared {
    dests: Vec<Dest>,
    /// Batch buffers handed back by workers for the reader to refill: a steady set of
    /// large buffers keeps the allocator from fragmenting (peak RSS).
    free: Mutex<Vec<Vec<u8>>>,
    /// Every destination has failed (or the reader did, or the caller dropped the
    /// backup's future): stop reading.
    abort: Arc<AtomicBool>,
    page_size: AtomicU64,
    /// Pages the database file holds when the snapshot starts: what `seen` is sized
    /// for up front, as growing it re-hashes every entry (a read from the page file
    /// each).
    expected_pages: AtomicU64,
    opts: BackupOptions,
    /// The first destination's session: temporary directory, cancellation, progress.
    session: crate::Session,
}

/// A sealed pack on its way from a worker thread to the uploader task.
struct Upload {
    dest: usize,
    ct: Vec<u8>,
    sealed: StoredPack,
}

/// Uploads run on async tasks, never on the worker threads: a worker hands a sealed
/// pack to this bounded channel and goes back to hashing and compressing. Capacity
/// one: a full channel blocks the worker (backpressure up to the reader), so memory
/// stays at the packs being built, one waiting, and the uploads in flight.
const UPLOAD_QUEUE: usize = 1;

/// The uploader: PUTs the packs workers seal, `concurrency` at a time, and returns
/// what each destination stored. A failed PUT fails its destination (the workers see
/// it and stop feeding it); the packs it had stored are discarded by the caller.
async fn uploader(shared: Arc<Shared>, rx: tokio::sync::mpsc::Receiver<Upload>, concurrency: usize) -> Vec<WorkerOut> {
    let mut outs: Vec<WorkerOut> = (0..shared.dests.len())
        .map(|_| WorkerOut {
            packs: Vec::new(),
            bytes_stored: 0,
        })
        .collect();
    let queue = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) });
    let shared = &shared;
    let done = queue
        .map(|u| async move {
            let len = u.ct.len() as u64;
            if !shared.live(u.dest) {
                return (u.dest, u.sealed, len, None);
            }
            let key = layout::pack(&u.sealed.id);
            // Append-only: the upload path cannot delete (pack names are new random ids).
            let r = shared.dests[u.dest]
                .repo
                .store
                .appender()
                .put(&key, Bytes::from(u.ct))
                .await;
            (u.dest, u.sealed, len, Some(r))
        })
        .buffer_unordered(concurrency.max(1));
    let mut done = std::pin::pin!(done);
    while let Some((d, sealed, len, r)) = done.next().await {
        match r {
            Some(Ok(())) => {
                outs[d].bytes_stored += len;
                outs[d].packs.push(sealed);
            }
            Some(Err(e)) => shared.fail(d, e.into()),
            None => {}
        }
    }
    outs
}

impl Shared {
    fn fail(&self, d: usize, e: Error) {
        let dest = &self.dests[d];
        dest.failed.store(true, Ordering::SeqCst);
        dest.error.lock().unwrap().get_or_insert(e);
        if self.dests.iter().all(|d| d.failed.load(Ordering::SeqCst)) {
            self.abort.store(true, Ordering::SeqCst);
        }
    }

    fn live(&self, d: usize) -> bool {
        !self.dests[d].failed.load(Ordering::Relaxed)
    }
}

/// The snapshot's page map as it is being built, and the chunks first seen in this
/// backup. `seen` is keyed by the first 8 bytes of an id and holds the page where that
/// id first appeared; a hit counts as a duplicate only if that page's full id is equal,
/// so a prefix collision costs a duplicate upload, never a wrong page.
#[derive(Default)]
struct Table {
    pages: Ids,
    /// Chunk lengths, for dumps (pages are all the page size).
    lens: Vec<u32>,
    /// Page numbers, hashed by the first 8 bytes of the id stored at that page (ids are
    /// keyed hashes, so those bytes are already uniform): 4 bytes an entry.
    seen: hashbrown::HashTable<u32>,
}

/// A snapshot's chunk ids by position: on disk for pages (32 bytes a page would be
/// 67 MiB at 8 GiB, see [`crate::spill`]), in memory for a dump's chunk sequence (its
/// edit script needs random access to the parent's, which is read whole anyway).
enum Ids {
    Mem(Vec<ChunkId>),
    File(Arc<PageFile>, u32),
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Mem(Vec::new())
    }
}

impl Ids {
    /// Stores the ids of the chunks at 1-based positions `first..`.
    fn set(&mut self, first: u32, ids: &[ChunkId]) -> std::io::Result<()> {
        let start = first as usize - 1;
        match self {
            Ids::Mem(v) => {
                if v.len() < start + ids.len() {
                    v.resize(start + ids.len(), ChunkId([0; 32]));
                }
                v[start..start + ids.len()].copy_from_slice(ids);
                Ok(())
            }
            Ids::File(f, filled) => {
                f.write(first, ids)?;
                *filled = (*filled).max(first + ids.len() as u32 - 1);
                Ok(())
            }
        }
    }

    /// The id at 1-based position `pos` (zero if unreadable: the caller only compares).
    fn get(&self, pos: u32) -> ChunkId {
        match self {
            Ids::Mem(v) => v[pos as usize - 1],
            Ids::File(f, _) => f.get(pos).unwrap_or(ChunkId([0; 32])),
        }
    }

    fn len(&self) -> usize {
        match self {
            Ids::Mem(v) => v.len(),
            Ids::File(_, filled) => *filled as usize,
        }
    }
}

fn id_hash(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().unwrap())
}

/// A worker's reusable buffers.
#[derive(Default)]
struct Scratch {
    frame_in: Vec<u8>,
    frame_out: Vec<u8>,
    check: Vec<u8>,
    frame_ids: Vec<(ChunkId, u32, u32)>,
    ids: Vec<ChunkId>,
    parent: Vec<u8>,
    spans: Vec<(usize, usize)>,
    fresh: Vec<usize>,
    /// The fresh chunks whose frame is in `frame_out`: destinations that need exactly
    /// the same chunks share one compressed (and checked) frame.
    compressed_for: Option<Vec<usize>>,
}

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Batch>>, up: &Uploads) {
    let n = shared.dests.len();
    let opts = &shared.opts;
    let codecs = FrameCompressor::new(opts.level)
        .map_err(|e| io_err("zstd", e))
        .and_then(|c| Ok((c, FrameDecompressor::new().map_err(|e| io_err("zstd", e))?)));
    let (mut comp, mut decomp) = match codecs {
        Ok(c) => c,
        Err(e) => {
            for d in 0..n {
                shared.fail(d, Error::new(e.kind(), e.code(), e.one_line()));
            }
            while rx.lock().unwrap().recv().is_ok() {}
            return;
        }
    };
    let mut sc = Scratch::default();
    let mut packs: Vec<Option<PackBuilder>> = (0..n).map(|_| None).collect();
    loop {
        let batch = { rx.lock().unwrap().recv() };
        let Ok(batch) = batch else { break };
        if shared.abort.load(Ordering::Relaxed) {
            continue; // drain so the reader never blocks on a full channel
        }
        let ps = shared.page_size.load(Ordering::Relaxed) as usize;
        sc.spans.clear();
        if batch.lens.is_empty() {
            sc.spans.extend((0..batch.data.len() / ps).map(|i| (i * ps, ps)));
        } else {
            let mut off = 0;
            for &l in &batch.lens {
                sc.spans.push((off, l as usize));
                off += l as usize;
            }
        }
        sc.compressed_for = None;
        for (d, pack) in packs.iter_mut().enumerate() {
            if !shared.live(d) {
                continue;
            }
            if let Err(e) = dest_batch(shared, d, &batch, &mut sc, &mut comp, &mut decomp, pack, up) {
                *pack = None;
                shared.fail(d, e);
            }
        }
        shared.free.lock().unwrap().push(batch.data);
    }
    for (d, pack) in packs.iter_mut().enumerate() {
        if let Some(p) = pack.take()
            && shared.live(d)
            && let Err(e) = p.seal().and_then(|sealed| upload_pack(shared, d, sealed, up))
        {
            shared.fail(d, e);
        }
    }
}

type Uploads = tokio::sync::mpsc::Sender<Upload>;

/// One batch for one destination: hash with its key, dedup against its state,
/// compress the new chunks into a frame (shared with the previous destination when
/// the new chunks are the same), append to its pack, upload a full pack.
#[allow(clippy::too_many_arguments)]
fn dest_batch(
    shared: &Shared,
    d: usize,
    batch: &Batch,
    sc: &mut Scratch,
    comp: &mut FrameCompressor,
    decomp: &mut FrameDecompressor,
    pack: &mut Option<PackBuilder>,
    up: &Uploads,
) -> Result<()> {
    let dest = &shared.dests[d];
    let opts = &shared.opts;
    sc.ids.clear();
    sc.fresh.clear();
    sc.ids.extend(
        sc.spans
            .iter()
            .map(|&(o, l)| dest.repo.keys.chunk_id(&batch.data[o..o + l])),
    );
    {
        let mut t = dest.table.lock().unwrap();
        let first = batch.first_pgno as usize - 1;
        let ids = &sc.ids;
        t.pages
            .set(batch.first_pgno, ids)
            .map_err(|e| io_err("cannot write the page table", e))?;
        if !batch.lens.is_empty() {
            if t.lens.len() < first + ids.len() {
                t.lens.resize(first + ids.len(), 0);
            }
            t.lens[first..first + ids.len()].copy_from_slice(&batch.lens);
        }
        if t.seen.capacity() == 0 && matches!(t.pages, Ids::File(..)) {
            let Table { pages, seen, .. } = &mut *t;
            let n = shared.expected_pages.load(Ordering::Relaxed) as usize;
            seen.reserve(n.max(1024), |&pg| id_hash(&pages.get(pg)));
        }
        sc.parent.clear();
        if let Some(pt) = &dest.parent_pages
            && batch.lens.is_empty()
            && pt.read(batch.first_pgno, ids.len(), &mut sc.parent).is_err()
        {
            sc.parent.clear(); // unreadable: every page is looked up
        }
        for (i, id) in ids.iter().enumerate() {
            if sc.parent.get(i * 32..i * 32 + 32) == Some(&id.0[..]) || dest.known.contains(id) {
                continue;
            }
            let Table { pages, seen, .. } = &mut *t;
            let h = id_hash(id);
            // On disk, each probe that matches the 8 bytes reads the full id back: only
            // duplicates (mostly of one page content, such as zeros) ever do.
            if seen.find(h, |&pg| pages.get(pg) == *id).is_some() {
                continue;
            }
            seen.insert_unique(h, batch.first_pgno + i as u32, |&pg| id_hash(&pages.get(pg)));
            sc.fresh.push(i);
        }
    }
    if sc.fresh.is_empty() {
        return Ok(());
    }
    if sc.compressed_for.as_ref() != Some(&sc.fresh) {
        // Until the new frame is complete, `frame_out` belongs to no set of chunks: a
        // failed compression must not leave it reusable by the next destination.
        sc.compressed_for = None;
        sc.frame_in.clear();
        sc.frame_ids.clear();
        for &i in &sc.fresh {
            let (o, l) = sc.spans[i];
            sc.frame_ids
                .push((ChunkId([0; 32]), sc.frame_in.len() as u32, l as u32));
            sc.frame_in.extend_from_slice(&batch.data[o..o + l]);
        }
        compress_checked(
            comp,
            decomp,
            &sc.frame_in,
            &mut sc.frame_out,
            &mut sc.check,
            opts.verify_frames,
        )?;
        sc.compressed_for = Some(sc.fresh.clone());
    }
    // This destination's ids for the frame's chunks (offsets are the same for all).
    for (slot, &i) in sc.frame_ids.iter_mut().zip(&sc.fresh) {
        slot.0 = sc.ids[i];
    }
    let p = match pack.as_mut() {
        Some(p) => p,
        None => pack.insert(PackBuilder::new(&dest.repo, opts.pack_target)?),
    };
    p.append_frame(&sc.frame_out, &sc.frame_ids)?;
    if p.plain_len as usize >= opts.pack_target {
        let sealed = pack.take().expect("present").seal()?;
        upload_pack(shared, d, sealed, up)?;
    }
    Ok(())
}

/// Hands a sealed pack to the uploader; waits while one is already queued.
fn upload_pack(shared: &Shared, dest: usize, (ct, sealed): (Vec<u8>, SealedPack), up: &Uploads) -> Result<()> {
    let entries = shared.dests[dest]
        .spill
        .push(&sealed.entries)
        .map_err(|e| io_err("cannot write the pack entries to the scratch directory", e))?;
    let sealed = StoredPack {
        id: sealed.id,
        entries,
        chunks: sealed.chunks,
    };
    up.blocking_send(Upload { dest, ct, sealed }).map_err(|_| {
        Error::new(
            ErrorKind::Internal,
            "internal",
            "the uploader stopped before the workers",
        )
    })
}

/// The host's record of its last snapshot of a database name, by snapshot kind.
enum Parent {
    Pages(ParentCache),
    Dump(SeqParent),
}

impl Parent {
    fn maps(&self) -> &[MapRef] {
        match self {
            Parent::Pages(p) => &p.maps,
            Parent::Dump(p) => &p.maps,
        }
    }

    fn snapshot(&self) -> ObjectId {
        match self {
            Parent::Pages(p) => p.snapshot,
            Parent::Dump(p) => p.snapshot,
        }
    }
}

/// Backs up the database at `db` into `repo`.
pub async fn backup(repo: &Repo, db: &Path, opts: BackupOptions) -> Result<BackupReport> {
    let mut all = backup_to_all(std::slice::from_ref(repo), db, opts).await?;
    all.pop().expect("one destination, one result")
}

/// Backs up the database at `db` into every repository of `repos`: the database is
/// read once (one snapshot, one logical checksum), and each repository is written
/// independently and in parallel with its own keys and dedup state. A destination that
/// fails does not stop the others. Returns one result per repository, in order; the
/// outer error is for failures that concern every destination (the source database).
pub async fn backup_to_all(repos: &[Repo], db: &Path, opts: BackupOptions) -> Result<Vec<Result<BackupReport>>> {
    // Every lease taken is released on every way out (released ones are skipped).
    let leases = std::sync::Mutex::new(Vec::new());
    let r = backup_leased(repos, db, opts, &leases).await;
    let taken: Vec<Lease> = std::mem::take(&mut *leases.lock().unwrap_or_else(|e| e.into_inner()));
    for l in taken {
        l.release().await;
    }
    r
}

async fn backup_leased(
    repos: &[Repo],
    db: &Path,
    opts: BackupOptions,
    leases: &std::sync::Mutex<Vec<Lease>>,
) -> Result<Vec<Result<BackupReport>>> {
    let started = Instant::now();
    let db: PathBuf = db.to_path_buf();
    // Fails early, naming the file, when it is missing or not a database: before any
    // request. The header alone tells; the key (a SQLCipher derivation, deliberately
    // slow) is proven once, by the snapshot's own open, before anything is uploaded.
    sqlvault_sqlite::probe(&db, None)?;
    let name = opts.name.clone().unwrap_or_else(|| {
        db.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "database".into())
    });
    let kind = opts.kind;
    let Some(first) = repos.first() else {
        return Ok(Vec::new());
    };
    first.session.ensure_temp_dir()?;
    let source = crate::names::SourceId::local(first.session.host(), &db);

    let befores: Vec<RequestCounts> = repos.iter().map(|r| r.store.stats()).collect();
    let adopt = opts.adopt_name;
    // Collected before they are awaited: a lazy map over borrowed repositories would
    // make this future not `Send` (rust-lang/rust#102211), and a service spawns it.
    let preps: Vec<_> = repos
        .iter()
        .map(|r| prepare(r, &name, kind, &source, adopt, opts.lease, leases))
        .collect();
    let preps = futures::future::join_all(preps).await;
    let mut results: Vec<Option<Result<BackupReport>>> = (0..repos.len()).map(|_| None).collect();
    let mut live: Vec<(usize, Prep)> = Vec::new();
    for (i, p) in preps.into_iter().enumerate() {
        match p {
            Ok(p) => live.push((i, p)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    if live.is_empty() {
        return Ok(settle(repos, results));
    }

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        opts.threads
    };
    let mut rest: Vec<(usize, Option<Parent>, Instant, Duration)> = Vec::new();
    let mut dests = Vec::new();
    // Page tables live in a private scratch directory for the whole backup (removed
    // on return and on signals).
    let scratch = first.session.scratch("backup")?;
    for (i, p) in live {
        let pages =
            match kind {
                BackupKind::Pages => Ids::File(
                    Arc::new(PageFile::create(scratch.path(), &format!("pages-{i}")).map_err(|e| {
                        io_err(format!("cannot create a page table in {}", scratch.path().display()), e)
                    })?),
                    0,
                ),
                BackupKind::Dump => Ids::Mem(Vec::new()),
            };
        let spill = Spill::create(scratch.path(), &format!("entries-{i}"))
            .map_err(|e| io_err(format!("cannot create a file in {}", scratch.path().display()), e))?;
        let parent_pages = match &p.parent {
            Some(Parent::Pages(pc)) if p.parent_trusted => pc.open_table().ok(),
            _ => None,
        };
        dests.push(Dest {
            repo: repos[i].clone(),
            parent_pages,
            spill,
            known: p.known,
            table: Mutex::new(Table {
                pages,
                ..Table::default()
            }),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            claim: p.claim,
            lease: p.lease,
        });
        rest.push((i, p.parent, p.pending_read, p.grace));
    }
    let shared = Arc::new(Shared {
        dests,
        free: Mutex::new(Vec::new()),
        abort: Arc::new(AtomicBool::new(false)),
        page_size: AtomicU64::new(0),
        expected_pages: AtomicU64::new(0),
        opts: opts.clone(),
        session: first.session.clone(),
    });

    // A caller that drops this future (a timeout in a service) stops the reader, so the
    // read transaction ends and no more packs are made; the few already queued are
    // garbage prune collects. `Cancel` is the clean way to stop.
    let _stop = crate::session::SetOnDrop(shared.abort.clone());
    let (up_tx, up_rx) = tokio::sync::mpsc::channel::<Upload>(UPLOAD_QUEUE);
    let uploads = tokio::spawn(uploader(shared.clone(), up_rx, threads.max(2)));
    let pipeline = {
        let shared = shared.clone();
        let db = db.clone();
        tokio::task::spawn_blocking(move || run_pipeline(shared, &db, threads, up_tx))
    };
    let snap = pipeline
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "backup pipeline panicked").with_source(e))?;
    let uploaded = uploads
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "backup uploader panicked").with_source(e))?;
    let Shared { dests, .. } =
        Arc::try_unwrap(shared).map_err(|_| Error::new(ErrorKind::Internal, "internal", "pipeline still running"))?;
    let all_failed = dests.iter().all(|d| d.failed.load(Ordering::SeqCst));
    // What each destination stored.
    let outs: Vec<Vec<WorkerOut>> = uploaded.into_iter().map(|o| vec![o]).collect();
    let snap = match snap {
        Ok(s) => s,
        // The reader stopped because every destination had failed: report theirs.
        Err(_) if all_failed => {
            for (((i, ..), d), o) in rest.iter().zip(dests).zip(&outs) {
                discard_uploads(&d.repo, o).await;
                if let Some(l) = d.lease {
                    l.release().await;
                }
                let e = d
                    .error
                    .into_inner()
                    .unwrap()
                    .expect("a failed destination has an error");
                results[*i] = Some(Err(e));
            }
            return Ok(settle(repos, results));
        }
        Err(e) => {
            for (d, o) in dests.into_iter().zip(&outs) {
                discard_uploads(&d.repo, o).await;
                if let Some(l) = d.lease {
                    l.release().await;
                }
            }
            return Err(e);
        }
    };
    let (snap, opts, db) = (&snap, &opts, &db);
    let finishes = dests
        .into_iter()
        .zip(outs)
        .zip(rest)
        .map(|((dest, outs), (i, parent, pending_read, grace))| {
            let (name, before) = (name.clone(), befores[i]);
            let scratch = scratch.path().to_path_buf();
            async move {
                let lease = dest.lease;
                let r = match dest.error.into_inner().unwrap() {
                    Some(e) => {
                        discard_uploads(&dest.repo, &outs).await;
                        Err(e)
                    }
                    None => {
                        let ctx = Finish {
                            repo: &dest.repo,
                            known: dest.known,
                            spill: dest.spill,
                            scratch,
                            table: dest.table.into_inner().unwrap(),
                            outs,
                            parent,
                            pending_read,
                            grace,
                            claim: dest.claim,
                            snap,
                            opts,
                            db,
                            name,
                            started,
                            before,
                            lease: lease.clone(),
                        };
                        finish_dest(ctx).await
                    }
                };
                if let Some(l) = lease {
                    l.release().await;
                }
                (i, r)
            }
        });
    for (i, r) in futures::future::join_all(finishes).await {
        results[i] = Some(r);
    }
    Ok(settle(repos, results))
}

/// Deletes the packs a backup that failed before writing its index uploaded to
/// `repo`: no index names them, so no other backup can have deduplicated against them
/// and nothing else can reference them — they would only be garbage until a prune (a
/// cron job retrying a failing backup would grow the repository every run). Best
/// effort: a store that refuses the deletes (a write-only bucket policy) leaves them
/// to prune, which says so. Never call this once the backup's index is written:
/// another host may have read it and deduplicated against these packs.
async fn discard_uploads(repo: &Repo, outs: &[WorkerOut]) {
    let ids: Vec<ObjectId> = outs.iter().flat_map(|o| o.packs.iter().map(|p| p.id)).collect();
    discard_packs(repo, &ids).await;
}

/// [`discard_uploads`], by pack id.
async fn discard_packs(repo: &Repo, ids: &[ObjectId]) {
    let keys: Vec<String> = ids.iter().map(layout::pack).collect();
    if keys.is_empty() {
        return;
    }
    // One first, alone: a store that is down (often why the backup failed) costs one
    // round of retries, not one per pack.
    let left = if repo.store.delete(&keys[0]).await.is_err() {
        keys.len()
    } else {
        // Owned keys: a closure over borrowed ones makes this future (and every
        // caller's) not `Send` for a service's `tokio::spawn` (rust-lang/rust#102211).
        futures::stream::iter(keys[1..].to_vec())
            .map(|k| async move { repo.store.delete(&k).await.is_err() })
            .buffer_unordered(8)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await
    };
    if left == 0 {
        tracing::info!("removed the {} packs this failed backup had uploaded", keys.len());
    } else {
        tracing::warn!(
            "{left} of the {} packs this failed backup uploaded could not be removed; prune will",
            keys.len()
        );
    }
}

/// Every destination's result, in order. Failures are the caller's to report (once):
/// only a debug line here.
fn settle(repos: &[Repo], results: Vec<Option<Result<BackupReport>>>) -> Vec<Result<BackupReport>> {
    repos
        .iter()
        .zip(results)
        .map(|(repo, r)| {
            let r = r.expect("every destination has a result");
            if let Err(e) = &r {
                tracing::debug!("backup to {} failed: {}", repo.store.describe(), e.one_line());
            }
            r
        })
        .collect()
}

/// One destination's dedup state, checked against the repository before it is trusted.
struct Prep {
    known: KnownChunks,
    parent: Option<Parent>,
    /// No cached pack was marked or found missing: the parent's pages are all stored.
    parent_trusted: bool,
    pending_read: Instant,
    grace: Duration,
    claim: crate::names::ClaimPlan,
    /// The lease on the name, when asked for: held until after the commit.
    lease: Option<Lease>,
}

/// The lease first, when asked for (it guards everything after it), then the rest of
/// [`prepare_leased`]; a lease taken for a destination that then fails is released.
async fn prepare(
    repo: &Repo,
    name: &str,
    kind: BackupKind,
    source: &crate::names::SourceId,
    adopt: bool,
    lease_ttl: Option<Duration>,
    leases: &std::sync::Mutex<Vec<Lease>>,
) -> Result<Prep> {
    let lease = match lease_ttl {
        Some(ttl) => {
            let l = Lease::acquire(repo, name, ttl).await?;
            leases.lock().unwrap_or_else(|e| e.into_inner()).push(l.clone());
            Some(l)
        }
        None => None,
    };
    match prepare_leased(repo, name, kind, source, adopt).await {
        Ok(p) => Ok(Prep { lease, ..p }),
        Err(e) => {
            if let Some(l) = lease {
                l.release().await;
            }
            Err(e)
        }
    }
}

async fn prepare_leased(
    repo: &Repo,
    name: &str,
    kind: BackupKind,
    source: &crate::names::SourceId,
    adopt: bool,
) -> Result<Prep> {
    // A name another source owns is refused before the database is read or anything
    // is uploaded.
    let claim = crate::names::check(repo, name, source, adopt).await?;
    let repo_id = repo.repo_id.clone();
    let (mut known, parent) = {
        let (rid, n) = (repo_id.clone(), name.to_string());
        let home = repo.session.state_dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let parent = match kind {
                BackupKind::Pages => ParentCache::load(&home, &rid, &n).map(Parent::Pages),
                BackupKind::Dump => SeqParent::load(&home, &rid, &n).map(Parent::Dump),
            };
            (KnownChunks::load(&home, &rid), parent)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "cache loader panicked").with_source(e))?
    };
    // What prune has marked for deletion: never dedup against it. Read before any
    // dedup decision; the commit must then land within the grace period (prune.rs).
    let pending_read = Instant::now();
    let (marked_packs, marked_maps, grace) = match crate::prune::state_for_dedup(repo).await? {
        Some(st) => (st.marked_packs(), st.marked_maps(), st.grace()),
        None => {
            known = KnownChunks::default();
            (Default::default(), Default::default(), crate::prune::DEFAULT_GRACE)
        }
    };
    let dropped = known.drop_packs(&marked_packs);
    if dropped > 0 {
        tracing::info!("{dropped} cached packs are marked by prune; their chunks will be uploaded again if needed");
    }
    let live = known.live_packs();
    let mut parent_trusted = dropped == 0;
    if !live.is_empty() {
        let missing = missing_packs(repo, &live).await?;
        parent_trusted &= missing.is_empty();
        if !missing.is_empty() {
            tracing::warn!(
                "local chunk cache names {} packs that are gone from the repository; their chunks will be uploaded again",
                missing.len()
            );
            known.drop_packs(&missing);
        }
    }
    let parent = match parent {
        Some(p) if !known.is_empty() && !p.maps().iter().any(|m| marked_maps.contains(&m.id)) => {
            repo.store.head(&layout::snapshot(&p.snapshot())).await?.map(|_| p)
        }
        _ => None,
    };
    Ok(Prep {
        known,
        parent,
        parent_trusted,
        pending_read,
        grace,
        claim,
        lease: None,
    })
}

/// S3 prices a LIST like 12.5 GETs or HEADs; one LIST returns up to 1,000 names.
const HEADS_PER_LIST: usize = 12;
const NAMES_PER_LIST: usize = 1000;

/// The packs of `cached` the repository no longer holds, by whichever costs fewer
/// request-equivalents: a HEAD per cached pack, or a LIST of `packs/` (one request per
/// thousand packs in the repository, however many this host wrote). The repository's
/// pack count is what the last LIST saw (`cache/packs-listed`); unknown, a LIST is
/// tried once more than 12 packs are cached. A store whose credentials may not list
/// (a write-only bucket policy) is asked pack by pack.
async fn missing_packs(repo: &Repo, cached: &[ObjectId]) -> Result<std::collections::HashSet<ObjectId>> {
    let count_file = crate::local::repo_dir(repo.session.state_dir(), &repo.repo_id)
        .join("cache")
        .join("packs-listed");
    let in_repo: usize = std::fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let list_requests = in_repo.max(cached.len()).div_ceil(NAMES_PER_LIST);
    if cached.len() <= HEADS_PER_LIST * list_requests {
        return head_packs(repo, cached).await;
    }
    match repo.store.list(layout::PACKS).await {
        Ok(listed) => {
            if let Err(e) = crate::local::write_private(&count_file, format!("{}\n", listed.len()).as_bytes()) {
                tracing::debug!("pack count not cached: {}", e.one_line());
            }
            let present: std::collections::HashSet<ObjectId> =
                listed.iter().filter_map(|(n, _)| n.parse().ok()).collect();
            Ok(cached.iter().filter(|p| !present.contains(p)).copied().collect())
        }
        Err(e) if e.is_not_found() => Ok(cached.iter().copied().collect()),
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => {
            tracing::debug!("cannot list packs ({e}); checking the cached packs one by one");
            head_packs(repo, cached).await
        }
    }
}

async fn head_packs(repo: &Repo, cached: &[ObjectId]) -> Result<std::collections::HashSet<ObjectId>> {
    let heads = futures::stream::iter(cached.iter().copied().map(|p| {
        let store = repo.store.clone();
        async move { store.head(&layout::pack(&p)).await.map(|s| (p, s.is_none())) }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let mut missing = std::collections::HashSet::new();
    for h in heads {
        let (p, gone) = h?;
        if gone {
            missing.insert(p);
        }
    }
    Ok(missing)
}

/// What one destination needs to commit its snapshot.
struct Finish<'a> {
    repo: &'a Repo,
    known: KnownChunks,
    spill: Spill,
    /// The backup's scratch directory.
    scratch: PathBuf,
    table: Table,
    outs: Vec<WorkerOut>,
    parent: Option<Parent>,
    pending_read: Instant,
    grace: Duration,
    claim: crate::names::ClaimPlan,
    snap: &'a SnapOut,
    opts: &'a BackupOptions,
    db: &'a Path,
    name: String,
    started: Instant,
    before: RequestCounts,
    lease: Option<Lease>,
}

/// Index → page map → manifest (the commit) → local caches, for one destination.
async fn finish_dest(ctx: Finish<'_>) -> Result<BackupReport> {
    let Finish {
        repo,
        known,
        spill,
        scratch,
        table,
        outs,
        parent,
        pending_read,
        grace,
        claim,
        snap,
        opts,
        db,
        name,
        started,
        before,
        lease,
    } = ctx;
    let SnapOut {
        info,
        checksum,
        method,
        dump_bytes,
        cipher,
        source_check,
    } = snap;
    let (info, checksum, method, dump_bytes) = (info.clone(), *checksum, *method, *dump_bytes);
    let cipher = cipher.clone();
    let opts = opts.clone();
    let db = db.to_path_buf();
    let kind = opts.kind;
    let repo_id = repo.repo_id.clone();

    // Assemble the page map (or chunk sequence).
    let Table { pages, seen, lens } = table;
    drop(seen);
    let filled = pages.len();
    let complete = match &pages {
        Ids::Mem(v) => !v.iter().any(|id| id.0 == [0; 32]),
        Ids::File(f, _) => {
            let (f, n) = (f.clone(), filled as u32);
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                let mut r = f.reader(n)?;
                while let Some(id) = r.next_id()? {
                    if id.0 == [0; 32] {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, "internal", "page table check panicked").with_source(e))?
            .map_err(|e| io_err("cannot read the page table", e))?
        }
    };
    let mut packs = Vec::new();
    let mut bytes_new = 0u64;
    for o in outs {
        packs.extend(o.packs);
        bytes_new += o.bytes_stored;
    }
    let expected = match kind {
        BackupKind::Pages => info.page_count as usize,
        BackupKind::Dump => lens.len(),
    };
    // The index of the packs this backup wrote, then the known set.
    let pack_ids: Vec<ObjectId> = packs.iter().map(|p| p.id).collect();
    if filled != expected || !complete {
        discard_packs(repo, &pack_ids).await;
        return Err(Error::new(
            ErrorKind::Internal,
            "backup.incomplete",
            format!("snapshot produced {filled} of {expected} chunks"),
        ));
    }
    // A backup that already outlived the prune grace would be refused at its commit:
    // refuse it now, while no index names its packs and they can still be removed.
    if let Err(e) = crate::prune::within_grace(repo, pending_read, grace, "backup.outlived-grace", "the backup") {
        discard_packs(repo, &pack_ids).await;
        return Err(e);
    }
    let chunks_new = packs.iter().map(|p| p.chunks).sum::<u64>();
    // Its ciphertext is gone before the known set grows.
    let spill = Arc::new(spill);
    bytes_new += write_index_parts(repo, &spill, &packs).await?;
    // Where this backup's entries are, for the known set (saved only after the commit).
    let spilled: Vec<SpillRef> = packs.iter().map(|p| p.entries).collect();
    drop(packs);

    let chunks_total = filled as u64;
    let parent_id = parent.as_ref().map(Parent::snapshot);
    let (new_maps, maps_len, maps, map_kind, table_for_cache) = match (kind, pages) {
        (BackupKind::Pages, Ids::File(pages, _)) => {
            let parent = match parent {
                Some(Parent::Pages(p)) => Some(p),
                _ => None,
            };
            let m = page_maps(repo, &opts, info.page_size, pages.clone(), filled as u32, parent).await?;
            (
                m.new_maps,
                m.bytes,
                m.base,
                m.kind,
                CacheTable::Pages(pages, filled as u32, m.depth),
            )
        }
        (_, pages) => {
            let parent = match parent {
                Some(Parent::Dump(p)) => Some(p),
                _ => None,
            };
            let ids = match pages {
                Ids::Mem(v) => v,
                Ids::File(..) => unreachable!("dumps keep their sequence in memory"),
            };
            let (ct, mac, maps, mk, seq) = seq_map_object(repo, &opts, ChunkSeq { ids, lens }, parent).await?;
            let (r, n) = crate::mapparts::put_map(repo, ct, mac).await?;
            (vec![r], n, maps, mk, CacheTable::Dump(seq))
        }
    };
    let snapshot_id = ObjectId::random();
    let bytes_read = match kind {
        BackupKind::Pages => info.page_size as u64 * info.page_count as u64,
        BackupKind::Dump => dump_bytes,
    };
    let manifest = Manifest {
        version: FORMAT_VERSION,
        id: snapshot_id,
        name: name.clone(),
        kind: match kind {
            BackupKind::Pages => format_kind::PAGES,
            BackupKind::Dump => format_kind::DUMP,
        }
        .into(),
        created_ms: now_ms(),
        host: repo.session.host().to_string(),
        source_path: db.canonicalize().unwrap_or(db.clone()).display().to_string(),
        page_size: info.page_size,
        page_count: info.page_count,
        journal_mode: info.journal_mode.clone(),
        user_version: info.user_version,
        application_id: info.application_id,
        text_encoding: info.text_encoding.clone(),
        sqlite_version: sqlvault_sqlite::sqlite_version().to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        logical_checksum: hex::encode(checksum),
        maps,
        parent: parent_id,
        stats: SnapshotStats {
            bytes_read,
            bytes_new: 0,
            chunks_total,
            chunks_new,
            requests: None,
        },
        cipher: match (cipher, &opts.unlock) {
            (Some(s), Some(u)) => {
                // The check value is sealed to the recipients alone: a holder of a write
                // key (which opens manifests) must not be able to test guesses of the
                // database key offline.
                let salt: [u8; 16] = ObjectId::random().0;
                let mut check = zeroize::Zeroizing::new(salt.to_vec());
                check.extend_from_slice(&u.key.check_value(&salt));
                let sealed = sqlvault_crypt::encrypt_to_vec(repo.data_recipients.iter(), &check)
                    .map_err(|e| crypt_err("the database-key check", e))?;
                Some(CipherFacts {
                    compatibility: s.compatibility,
                    page_size: s.page_size,
                    kdf_iter: s.kdf_iter,
                    hmac_algorithm: s.hmac_algorithm,
                    kdf_algorithm: s.kdf_algorithm,
                    sqlcipher_version: sqlvault_sqlite::sqlcipher_version(),
                    key_check_salt: String::new(),
                    key_check: String::new(),
                    key_check_sealed: Some(hex::encode(sealed)),
                })
            }
            _ => None,
        },
        dump: (kind == BackupKind::Dump).then(|| DumpFacts {
            chunker: DUMP_CHUNKER.describe(),
        }),
        source_check: source_check.clone(),
        replicated: opts.replicated,
        state: None,
    };
    let committed = crate::commit::commit(crate::commit::Commit {
        repo,
        new_maps,
        manifest,
        bytes_before: bytes_new + maps_len,
        pending_read,
        grace,
        grace_code: "backup.outlived-grace",
        what: "the backup",
        claim: Some(&claim),
        requests_at_start: before,
        lease: lease.as_ref(),
    })
    .await?;
    let (manifest, manifest_len) = match committed {
        crate::commit::Committed::Written { manifest, manifest_len } => (manifest, manifest_len),
        crate::commit::Committed::AlreadyThere => {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal",
                format!("a snapshot with the new random id {snapshot_id} already exists"),
            ));
        }
    };
    let maps = manifest.maps.clone();

    // Only after the commit does the local cache learn about the new chunks.
    let rid = repo_id.clone();
    let page_size = info.page_size;
    let n = name.clone();
    let packs_new = pack_ids.len() as u64;
    let home = repo.session.state_dir().to_path_buf();
    let cache_result = tokio::task::spawn_blocking(move || -> Result<()> {
        known.save_with(&home, &rid, &pack_ids, |i| spill.read(spilled[i]), &scratch)?;
        match table_for_cache {
            CacheTable::Pages(pages, count, depth) => {
                let mut r = pages
                    .reader(count)
                    .map_err(|e| io_err("cannot read the page table", e))?;
                ParentCache::save(&home, &rid, &n, snapshot_id, &maps, page_size, depth, &mut r)
            }
            CacheTable::Dump(seq) => SeqParent::save(&home, &rid, &n, snapshot_id, &maps, &seq),
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, "internal", "cache writer panicked").with_source(e))?;
    if let Err(e) = cache_result {
        tracing::warn!(
            "snapshot committed, but the local cache was not updated: {}",
            e.one_line()
        );
    }

    Ok(BackupReport {
        snapshot_id: snapshot_id.to_string(),
        name,
        kind: manifest.kind.clone(),
        bytes_read,
        bytes_new: manifest.stats.bytes_new + manifest_len,
        chunks_total,
        chunks_new,
        packs_new,
        page_size: info.page_size,
        page_count: info.page_count,
        journal_mode: info.journal_mode,
        method: method_name(method).into(),
        parent: parent_id.map(|p| p.to_string()),
        map_kind: map_kind.into(),
        seconds: started.elapsed().as_secs_f64(),
        source_check: manifest.source_check.clone(),
        requests: repo.store.stats().since(before),
    })
}

/// Entries per index object, at most: an index of a large backup is written in parts
/// of ~4 MiB rather than built whole (each part is a complete index of its packs).
const INDEX_PART_BYTES: usize = 4 << 20;

/// Writes the index of `packs` in parts, each built (read back from the spill file and
/// encrypted) on a blocking thread. Returns the bytes stored.
async fn write_index_parts(repo: &Repo, spill: &Arc<Spill>, packs: &[StoredPack]) -> Result<u64> {
    let mut total = 0u64;
    let mut i = 0;
    while i < packs.len() {
        let mut j = i;
        let mut bytes = 0usize;
        while j < packs.len() && (j == i || bytes + (packs[j].entries.len as usize) <= INDEX_PART_BYTES) {
            bytes += packs[j].entries.len as usize;
            j += 1;
        }
        let group: Vec<(ObjectId, SpillRef)> = packs[i..j].iter().map(|p| (p.id, p.entries)).collect();
        let (r, sp) = (repo.clone(), spill.clone());
        let ct = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let sealed = group
                .into_iter()
                .map(|(id, at)| {
                    let entries = sp
                        .read(at)
                        .map_err(|e| io_err("cannot read the pack entries back", e))?;
                    Ok(SealedPack {
                        id,
                        entries,
                        chunks: 0,
                        size: 0,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            index_object(&r, &sealed)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "index builder panicked").with_source(e))??;
        total += put_index(repo, ct).await?;
        i = j;
    }
    Ok(total)
}

/// What the local parent cache will hold after the commit.
enum CacheTable {
    /// The page table, its page count and the chain depth.
    Pages(Arc<PageFile>, u32, u32),
    Dump(ChunkSeq),
}

/// The chunk-sequence object of a dump: an edit script against this host's last dump of
/// the same name when that is at most half a full sequence and the chain is short, a
/// full sequence otherwise.
async fn seq_map_object(
    repo: &Repo,
    opts: &BackupOptions,
    seq: ChunkSeq,
    parent: Option<SeqParent>,
) -> Result<(Vec<u8>, [u8; 32], Vec<MapRef>, &'static str, ChunkSeq)> {
    // Built on a blocking thread: the edit script hashes every chunk of the parent.
    let max_chain = opts.max_chain;
    let (pt, maps, kind, seq) = tokio::task::spawn_blocking(move || {
        let edit = match &parent {
            Some(p) if p.maps.len() < max_chain => seq.edit_from(&p.seq, (25 + seq.len() * 36) / 2),
            _ => None,
        };
        match (edit, parent) {
            (Some(e), Some(p)) => (e, p.maps, "delta", seq),
            _ => (seq.encode_full(), Vec::new(), "full", seq),
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, "internal", "edit computation panicked").with_source(e))?;
    Ok((repo.encrypt_meta(&pt)?, repo.keys.mac(&pt), maps, kind, seq))
}

/// The new maps of a page snapshot.
struct NewMaps {
    new_maps: Vec<MapRef>,
    bytes: u64,
    /// The maps it applies on (a delta's chain), before `new_maps`.
    base: Vec<MapRef>,
    kind: &'static str,
    /// Snapshots in the chain, this one included.
    depth: u32,
}

/// The page map: a delta against this host's last snapshot of the same name when that
/// changes at most half the pages and the chain is short, a full map otherwise; either
/// way in parts ([`crate::mapparts`]), streamed from the page files.
async fn page_maps(
    repo: &Repo,
    opts: &BackupOptions,
    page_size: u32,
    pages: Arc<PageFile>,
    count: u32,
    parent: Option<ParentCache>,
) -> Result<NewMaps> {
    let parent = parent.filter(|p| p.page_size == page_size && (p.depth as usize) < opts.max_chain);
    // First pass: is a delta small enough? (Counted, not kept.)
    let parent = match parent {
        None => None,
        Some(p) => {
            let pages = pages.clone();
            tokio::task::spawn_blocking(move || -> Result<Option<ParentCache>> {
                let limit = count as usize / 2;
                let mut n = 0usize;
                let mut r = pages
                    .reader(count)
                    .map_err(|e| io_err("cannot read the page table", e))?;
                let small = p.diff(&mut r, |_, _| {
                    n += 1;
                    Ok(n <= limit)
                })?;
                Ok(small.then_some(p))
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, "internal", "delta computation panicked").with_source(e))??
        }
    };
    let (base, kind, depth) = match &parent {
        Some(p) => (p.maps.clone(), "delta", p.depth + 1),
        None => (Vec::new(), "full", 1),
    };
    let part = opts.map_part_pages;
    let (new_maps, bytes) = crate::mapparts::write_parts(repo, move |emit| {
        let mut cur = pages
            .reader(count)
            .map_err(|e| io_err("cannot read the page table", e))?;
        match parent {
            Some(p) => {
                let mut parts = crate::mapparts::MapParts::delta(part, p.page_count as u32, count, emit);
                p.diff(&mut cur, |pgno, id| parts.push(pgno, id).map(|_| true))?;
                parts.finish()?;
            }
            None => {
                let mut parts = crate::mapparts::MapParts::full(part, count, emit);
                let mut pgno = 0;
                while let Some(id) = cur.next_id().map_err(|e| io_err("cannot read the page table", e))? {
                    pgno += 1;
                    parts.push(pgno, id)?;
                }
                parts.finish()?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(NewMaps {
        new_maps,
        bytes,
        base,
        kind,
        depth,
    })
}

/// What the reader learned about the source while snapshotting it.
struct SnapOut {
    info: sqlvault_sqlite::DbInfo,
    checksum: [u8; 32],
    method: SnapshotMethod,
    /// Bytes of SQL, for dumps.
    dump_bytes: u64,
    /// The source's SQLCipher settings.
    cipher: Option<sqlvault_sqlite::CipherSettings>,
    /// The source's integrity_check of the snapshot's state, when asked.
    source_check: Option<sqlvault_format::SourceCheck>,
}

/// Runs the reader and the workers (CPU only: hashing, dedup, compression,
/// encryption); sealed packs go to the uploader through `up`. Returns what the reader
/// learned, or why it stopped, once every worker is done.
fn run_pipeline(shared: Arc<Shared>, db: &Path, threads: usize, up: Uploads) -> Result<SnapOut> {
    let (tx, rx) = mpsc::sync_channel::<Batch>(threads * 2);
    let rx = Arc::new(Mutex::new(rx));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let shared = shared.clone();
            let rx = rx.clone();
            let up = up.clone();
            std::thread::Builder::new()
                .name(format!("sqlvault-pack-{i}"))
                .spawn(move || worker(&shared, &rx, &up))
                .expect("spawn worker")
        })
        .collect();
    drop(up);

    let src_opts = SourceOptions::default()
        .with_busy_timeout(shared.opts.busy_timeout)
        .with_force_backup_copy(shared.opts.force_backup_copy)
        .with_unlock(shared.opts.unlock.clone())
        .with_integrity_check(shared.opts.integrity_check)
        .with_on_read(shared.opts.on_read.clone())
        .with_temp_dir(shared.session.temp_dir().to_path_buf());
    let snap = match shared.opts.kind {
        BackupKind::Pages => read_pages(&shared, db, src_opts, &tx),
        BackupKind::Dump => read_dump(&shared, db, src_opts, &tx),
    };
    drop(tx);
    for h in handles {
        h.join().expect("worker panicked");
    }
    snap
}

fn read_pages(shared: &Shared, db: &Path, src_opts: SourceOptions, tx: &mpsc::SyncSender<Batch>) -> Result<SnapOut> {
    let mut src = Source::open(db, src_opts)?;
    let frame_pages = shared.opts.frame_pages.max(1);
    let mut batch: Option<Batch> = None;
    let progress = shared.session.progress();
    let cancel = shared.session.cancel();
    // The main file's size: the snapshot's size unless the WAL grew it since the last
    // checkpoint, close enough for a rate and an ETA.
    progress.start("reading", std::fs::metadata(db).ok().map(|m| m.len()));
    let r = src.snapshot(|pgno, page| {
        if shared.abort.load(Ordering::Relaxed) || cancel.is_cancelled() {
            return Err(());
        }
        if shared.page_size.load(Ordering::Relaxed) == 0 {
            shared.page_size.store(page.len() as u64, Ordering::Relaxed);
            let file_len = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
            shared
                .expected_pages
                .store(file_len / page.len() as u64 + 1, Ordering::Relaxed);
        }
        let b = batch.get_or_insert_with(|| {
            let mut data = shared.free.lock().unwrap().pop().unwrap_or_default();
            data.clear();
            data.reserve(page.len() * frame_pages);
            Batch {
                first_pgno: pgno,
                data,
                lens: Vec::new(),
            }
        });
        b.data.extend_from_slice(page);
        if b.data.len() >= page.len() * frame_pages {
            progress.advance(b.data.len() as u64);
            tx.send(batch.take().expect("present")).map_err(|_| ())?;
        }
        Ok(())
    });
    if let Some(b) = batch.take() {
        progress.advance(b.data.len() as u64);
        let _ = tx.send(b);
    }
    progress.finish();
    cancel.check()?;
    let cipher = src.cipher().cloned();
    let source_check = src.integrity_problems().map(sqlvault_format::SourceCheck::of);
    match r {
        Ok((info, checksum, method)) => Ok(SnapOut {
            info,
            checksum,
            method,
            dump_bytes: 0,
            cipher,
            source_check,
        }),
        Err(SnapshotError::Db(e)) => Err(Error::from(e)),
        Err(SnapshotError::Consumer(())) => Err(Error::new(ErrorKind::Internal, "backup.aborted", "backup aborted")),
    }
}

/// SQL of a dump batch handed to one worker: one compressed frame's worth.
const DUMP_BATCH: usize = 1 << 20;

/// Cuts the dump's SQL into content-defined chunks and hands them to the workers in
/// batches. The dump writes large blocks; at most one chunk's worth stays pending.
struct ChunkWriter<'a> {
    shared: &'a Shared,
    tx: &'a mpsc::SyncSender<Batch>,
    pending: Vec<u8>,
    batch: Option<Batch>,
    next: u32,
}

impl ChunkWriter<'_> {
    fn cut(&mut self, last: bool) -> std::io::Result<()> {
        let p = DUMP_CHUNKER;
        let mut pos = 0;
        while self.pending.len() - pos >= p.max || (last && pos < self.pending.len()) {
            let n = p.cut(&self.pending[pos..]);
            let b = match self.batch.as_mut() {
                Some(b) => b,
                None => {
                    let mut data = self.shared.free.lock().unwrap().pop().unwrap_or_default();
                    data.clear();
                    data.reserve(DUMP_BATCH + p.max);
                    self.batch.insert(Batch {
                        first_pgno: self.next,
                        data,
                        lens: Vec::new(),
                    })
                }
            };
            b.data.extend_from_slice(&self.pending[pos..pos + n]);
            b.lens.push(n as u32);
            self.next += 1;
            pos += n;
            if b.data.len() >= DUMP_BATCH {
                self.send()?;
            }
        }
        self.pending.drain(..pos);
        if last {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> std::io::Result<()> {
        if let Some(b) = self.batch.take() {
            self.shared.session.progress().advance(b.data.len() as u64);
            self.tx
                .send(b)
                .map_err(|_| std::io::Error::other("backup workers stopped"))?;
        }
        Ok(())
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.shared.abort.load(Ordering::Relaxed) || self.shared.session.cancel().is_cancelled() {
            return Err(std::io::Error::other("backup aborted"));
        }
        self.pending.extend_from_slice(data);
        self.cut(false)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn read_dump(shared: &Shared, db: &Path, src_opts: SourceOptions, tx: &mpsc::SyncSender<Batch>) -> Result<SnapOut> {
    let mut src = Source::open(db, src_opts)?;
    let mut w = ChunkWriter {
        shared,
        tx,
        pending: Vec::with_capacity(512 * 1024),
        batch: None,
        next: 1,
    };
    shared.session.progress().start("dumping", None);
    let r = src.dump(&mut w);
    shared.session.progress().finish();
    shared.session.cancel().check()?;
    let r = r.map_err(Error::from).and_then(|rep| {
        w.cut(true)
            .map_err(|e| io_err("handing the dump to the backup workers", e))?;
        Ok(SnapOut {
            info: rep.info,
            checksum: rep.logical_checksum,
            method: rep.method,
            dump_bytes: rep.bytes,
            cipher: src.cipher().cloned(),
            source_check: None,
        })
    });
    if let Err(e) = &r
        && shared.abort.load(Ordering::Relaxed)
    {
        // A worker failed first; its error is the one to report.
        tracing::debug!("dump stopped after a worker failure: {}", e.one_line());
    }
    r
}

/// How a snapshot was read, as reports and manifests name it.
pub(crate) fn method_name(m: sqlvault_sqlite::SnapshotMethod) -> &'static str {
    match m {
        sqlvault_sqlite::SnapshotMethod::DbPage => "dbpage",
        sqlvault_sqlite::SnapshotMethod::BackupCopy => "backup-copy",
        _ => "read-transaction",
    }
}
