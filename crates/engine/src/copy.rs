//! `copy`: snapshots from one repository into another, possibly with other recipients
//! and always with another secret, sending only the chunks the destination lacks.
//!
//! Chunk ids are keyed hashes under each repository's secret, so a chunk's id in the
//! destination is only known by reading it from the source and hashing it again. What
//! copy learns is kept in a local map (source id → destination id, see
//! [`CopyMap`]): a later copy of a slowly changing database reads from the source only
//! the chunks it has never seen.
//!
//! A copied snapshot keeps its id, name, creation time and logical checksum; its page
//! map (or chunk sequence) is written anew, in full, under the destination's key. Its
//! manifest is the commit point, created if absent, as for a backup.
//!
//! # Resuming
//!
//! Every pack is indexed as soon as it is uploaded, and the destination's indexes are
//! what copy dedups against: a copy killed at any point and run again re-uploads at
//! most the one pack whose index it did not write. Snapshots whose manifest already
//! exists in the destination are skipped with one HEAD each.
//!
//! # Prune in the destination
//!
//! Copy follows the backup rule (prune.rs): before each snapshot it reads the
//! destination's `prune/pending`, never dedups against a marked pack, and does not
//! commit once the grace period has passed since that read.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use sqlvault_format::{ChunkId, ChunkSeq, IndexEntry, Manifest, ObjectId, decode_entries, kind, layout};
use sqlvault_store::RequestCounts;

use crate::copymap::CopyMap;
use crate::error::{Error, ErrorKind, Result};
use crate::packer::{Packer, stream_chunks, write_index_for};
use crate::repo::{Repo, unknown_kind};
use crate::runs::RunMap;

/// Options for [`copy`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Snapshot ids (or unique prefixes) to copy; empty: every snapshot.
    pub snapshots: Vec<String>,
    /// Only snapshots of this database name.
    pub name: Option<String>,
    /// Target size of a pack before compression and encryption.
    pub pack_target: usize,
    /// Pages (or chunks of a dump) handled per pass: what a pass holds in memory is
    /// ~100 bytes each; the rest of a copy's state is on local disk.
    pub pass_chunks: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            snapshots: Vec::new(),
            name: None,
            pack_target: 16 << 20,
            pass_chunks: 128 << 10,
        }
    }
}

impl CopyOptions {
    /// Copies only these snapshots (ids or unique prefixes).
    pub fn with_snapshots(mut self, ids: Vec<String>) -> Self {
        self.snapshots = ids;
        self
    }

    /// Copies only snapshots of this database name.
    pub fn with_name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    /// Pack target size in bytes.
    pub fn with_pack_target(mut self, bytes: usize) -> Self {
        self.pack_target = bytes;
        self
    }

    /// Pages (or dump chunks) per pass (at least one); the default suits any size.
    pub fn with_pass_chunks(mut self, n: usize) -> Self {
        self.pass_chunks = n.max(1);
        self
    }
}

/// One snapshot written into the destination.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedSnapshot {
    /// Snapshot id (the same in both repositories).
    pub id: String,
    /// Database name.
    pub name: String,
    /// `pages` or `dump`.
    pub kind: String,
    /// Chunks the snapshot references.
    pub chunks_total: u64,
    /// Chunks read from the source (the rest came from the local copy map).
    pub chunks_read: u64,
    /// Chunks the destination lacked and was sent.
    pub chunks_sent: u64,
    /// Bytes written to the destination for it (packs, indexes, map, manifest).
    pub bytes_sent: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// Snapshots copied, oldest first.
    pub copied: Vec<CopiedSnapshot>,
    /// Ids of selected snapshots the destination already had.
    pub already_present: Vec<String>,
    /// Packs uploaded to the destination.
    pub packs_written: u64,
    /// Index objects written to the destination (one per pack: see the module docs).
    pub indexes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// Requests to the source.
    pub source_requests: RequestCounts,
    /// Requests to the destination.
    pub destination_requests: RequestCounts,
}

/// Copies the snapshots `opts` selects from `src` (opened with an identity or the
/// passphrase: chunks are decrypted) into `dst` (a write key is enough: the data is
/// encrypted to the destination's recipients).
pub async fn copy(src: &Repo, dst: &Repo, opts: &CopyOptions) -> Result<CopyReport> {
    dst.session.cancel().check()?;
    dst.session.progress().start("copying", None);
    let r = copy_inner(src, dst, opts).await;
    dst.session.progress().finish();
    r
}

async fn copy_inner(src: &Repo, dst: &Repo, opts: &CopyOptions) -> Result<CopyReport> {
    src.require_data_access("copying snapshots")?;
    if src.repo_id == dst.repo_id {
        return Err(Error::new(
            ErrorKind::Usage,
            "copy.same-repository",
            format!(
                "{} and {} are the same repository ({})",
                src.store.describe(),
                dst.store.describe(),
                src.repo_id
            ),
        ));
    }
    let t0 = Instant::now();
    let (src_before, dst_before) = (src.store.stats(), dst.store.stats());
    let chosen = select(src, opts).await?;

    let mut todo = Vec::new();
    let mut already_present = Vec::new();
    for m in chosen {
        if dst.store.head(&layout::snapshot(&m.id)).await?.is_some() {
            already_present.push(m.id.to_string());
        } else {
            todo.push(m);
        }
    }
    if todo.is_empty() {
        return Ok(CopyReport {
            copied: Vec::new(),
            already_present,
            packs_written: 0,
            indexes_written: 0,
            seconds: t0.elapsed().as_secs_f64(),
            source_requests: src.store.stats().since(src_before),
            destination_requests: dst.store.stats().since(dst_before),
        });
    }
    let mut run = Run {
        src,
        dst,
        map: Some(load_map(dst, src).await?),
        have: None,
        have_epoch: None,
        locator: None,
        packer: Packer::new(dst, opts.pack_target)?,
        pass_chunks: opts.pass_chunks.max(1),
        packs_written: 0,
        bytes_sent: 0,
    };
    let mut copied = Vec::new();
    for m in &todo {
        let r = run.snapshot(m).await;
        // What was learned is true whatever happened next: keep it for the rerun,
        // after every snapshot once the map has grown by half.
        let grown = run.map.as_ref().is_some_and(|m| m.grown());
        if r.is_err() || grown || std::ptr::eq(m, todo.last().expect("non-empty")) {
            save_map(&mut run.map, dst, src).await;
        }
        match r? {
            Some(c) => copied.push(c),
            None => already_present.push(m.id.to_string()),
        }
    }
    Ok(CopyReport {
        copied,
        already_present,
        packs_written: run.packs_written,
        indexes_written: run.packs_written,
        seconds: t0.elapsed().as_secs_f64(),
        source_requests: src.store.stats().since(src_before),
        destination_requests: dst.store.stats().since(dst_before),
    })
}

/// The snapshots to copy, oldest first: every one (of `name`), or those `opts`
/// names, each id prefix matching exactly one.
async fn select(src: &Repo, opts: &CopyOptions) -> Result<Vec<Manifest>> {
    let all = src.snapshots().await?;
    let name = opts.name.as_deref();
    let picked: HashSet<ObjectId> = if opts.snapshots.is_empty() {
        // Fails as `find_snapshot` does when there is none.
        src.pick_snapshot(&all, None, name)?;
        all.iter()
            .filter(|m| name.is_none_or(|n| m.name == n))
            .map(|m| m.id)
            .collect()
    } else {
        opts.snapshots
            .iter()
            .map(|want| src.pick_snapshot(&all, Some(want), name).map(|m| m.id))
            .collect::<Result<_>>()?
    };
    Ok(all.into_iter().filter(|m| picked.contains(&m.id)).collect())
}

async fn load_map(dst: &Repo, src: &Repo) -> Result<CopyMap> {
    let (d, s, keys) = (dst.repo_id.clone(), src.repo_id.clone(), dst.keys.clone());
    let home = dst.session.state_dir().to_path_buf();
    let scratch = dst.session.scratch("copy")?;
    tokio::task::spawn_blocking(move || CopyMap::load(&home, &d, &s, &keys, scratch))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "copy map loader panicked").with_source(e))?
}

/// Best effort: a map that cannot be saved only costs the next copy reads. The map is
/// moved to a blocking thread and back (`None` only while it is away).
async fn save_map(map: &mut Option<CopyMap>, dst: &Repo, src: &Repo) {
    let Some(mut owned) = map.take() else { return };
    let (d, s, keys) = (dst.repo_id.clone(), src.repo_id.clone(), dst.keys.clone());
    let home = dst.session.state_dir().to_path_buf();
    let r = tokio::task::spawn_blocking(move || {
        let r = owned.save(&home, &d, &s, &keys);
        (owned, r)
    })
    .await;
    match r {
        Ok((owned, r)) => {
            *map = Some(owned);
            if let Err(e) = r {
                tracing::warn!("copy map not saved: {}", e.one_line());
            }
        }
        Err(_) => tracing::warn!("copy map writer panicked; the map was not saved"),
    }
}

/// The chunks the destination holds in indexed, existing packs, with the pack of each
/// (so that the chunks of packs prune marks are forgotten), on local disk.
struct DstChunks {
    packs: Vec<ObjectId>,
    /// Packs whose chunks no longer count (marked by prune).
    gone: Vec<bool>,
    ids: RunMap<4>,
    /// Whether the set was listed from the destination (not [`DstChunks::empty`]).
    listed: bool,
}

impl DstChunks {
    /// A set that trusts nothing stored: every chunk is sent.
    fn empty(dst: &Repo) -> Result<DstChunks> {
        Ok(DstChunks {
            packs: Vec::new(),
            gone: Vec::new(),
            ids: RunMap::create(dst.session.scratch("copy")?).map_err(scratch_err)?,
            listed: false,
        })
    }

    async fn load(dst: &Repo) -> Result<DstChunks> {
        let mut ids = RunMap::create(dst.session.scratch("copy")?).map_err(scratch_err)?;
        let mut failed = None;
        let packs = live_entries(dst, |p, e| {
            if failed.is_none() {
                failed = ids.insert(e.id, p.to_le_bytes()).err();
            }
        })
        .await?;
        if let Some(e) = failed {
            return Err(scratch_err(e));
        }
        // One run: each lookup then reads one block.
        ids.seal().map_err(scratch_err)?;
        tracing::debug!(chunks = ids.len(), packs = packs.len(), "destination chunks loaded");
        Ok(DstChunks {
            gone: vec![false; packs.len()],
            packs,
            ids,
            listed: true,
        })
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(match self.ids.get(id).map_err(scratch_err)? {
            Some(p) => !self.gone.get(u32::from_le_bytes(p) as usize).copied().unwrap_or(true),
            None => false,
        })
    }

    fn add_pack(&mut self, pack: ObjectId, entries: &[u8]) -> Result<()> {
        let p = self.packs.len() as u32;
        self.packs.push(pack);
        self.gone.push(false);
        let mut failed = None;
        decode_entries(entries, |e| {
            if failed.is_none() {
                failed = self.ids.insert(e.id, p.to_le_bytes()).err();
            }
        })
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "pack entries do not decode").with_source(e))?;
        failed.map_or(Ok(()), |e| Err(scratch_err(e)))
    }

    /// Forgets every chunk of the packs in `marked`; returns how many packs that was.
    fn drop_packs(&mut self, marked: &HashSet<ObjectId>) -> usize {
        let mut n = 0;
        for (p, g) in self.packs.iter().zip(self.gone.iter_mut()) {
            if !*g && marked.contains(p) {
                *g = true;
                n += 1;
            }
        }
        n
    }
}

fn scratch_err(e: std::io::Error) -> Error {
    crate::error::io_err("cannot use copy's files in the temporary directory", e)
}

/// Where each source chunk is: the first index entry of each, in packs that exist, on
/// local disk (56 bytes an entry there).
struct Locator {
    packs: Vec<ObjectId>,
    entries: RunMap<LOC>,
}

/// Bytes of a located entry: pack number, frame offset, frame length, offset, length.
const LOC: usize = 4 + 8 + 4 + 4 + 4;

impl Locator {
    async fn load(src: &Repo) -> Result<Locator> {
        let mut entries = RunMap::create(src.session.scratch("copy")?).map_err(scratch_err)?;
        let mut failed = None;
        let packs = live_entries(src, |p, e| {
            let mut v = [0u8; LOC];
            v[..4].copy_from_slice(&p.to_le_bytes());
            v[4..12].copy_from_slice(&e.frame_offset.to_le_bytes());
            v[12..16].copy_from_slice(&e.frame_len.to_le_bytes());
            v[16..20].copy_from_slice(&e.offset.to_le_bytes());
            v[20..24].copy_from_slice(&e.len.to_le_bytes());
            if failed.is_none() {
                failed = entries.insert(e.id, v).err();
            }
        })
        .await?;
        if let Some(e) = failed {
            return Err(scratch_err(e));
        }
        entries.seal().map_err(scratch_err)?;
        Ok(Locator { packs, entries })
    }

    /// Where `id` is: its pack's number in [`Locator::packs`] and its entry.
    fn find(&self, id: &ChunkId) -> Result<Option<(u32, IndexEntry)>> {
        let Some(v) = self.entries.get(id).map_err(scratch_err)? else {
            return Ok(None);
        };
        let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        let pack = u32_at(0);
        if pack as usize >= self.packs.len() {
            return Ok(None);
        }
        Ok(Some((
            pack,
            IndexEntry {
                id: *id,
                frame_offset: u64::from_le_bytes(v[4..12].try_into().expect("8 bytes")),
                frame_len: u32_at(12),
                offset: u32_at(16),
                len: u32_at(20),
            },
        )))
    }
}

/// A chunk to read from the source, keyed so that the queue sorts by pack, then
/// position in it: pack number (BE u32), frame offset (BE u64), offset in the frame (BE
/// u32), the chunk id's first 16 bytes; the value holds the whole id, the frame's and
/// the chunk's lengths.
const WANT: usize = 32 + 4 + 4;

fn want_record(pack_no: u32, e: &IndexEntry) -> (ChunkId, [u8; WANT]) {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&pack_no.to_be_bytes());
    k[4..12].copy_from_slice(&e.frame_offset.to_be_bytes());
    k[12..16].copy_from_slice(&e.offset.to_be_bytes());
    k[16..].copy_from_slice(&e.id.0[..16]);
    let mut v = [0u8; WANT];
    v[..32].copy_from_slice(&e.id.0);
    v[32..36].copy_from_slice(&e.frame_len.to_le_bytes());
    v[36..].copy_from_slice(&e.len.to_le_bytes());
    (ChunkId(k), v)
}

/// The queue of chunks to read, grouped by pack: one `(pack, its entries)` at a time.
struct PackGroups {
    records: std::iter::Peekable<crate::runs::Sorted<WANT>>,
    packs: Vec<ObjectId>,
}

impl Iterator for PackGroups {
    type Item = Result<(ObjectId, Vec<IndexEntry>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let pack_of = |k: &ChunkId| u32::from_be_bytes(k.0[..4].try_into().expect("4 bytes"));
        let first = match self.records.peek()? {
            Ok((k, _)) => pack_of(k),
            Err(_) => return Some(Err(scratch_err(self.records.next()?.err()?))),
        };
        let mut entries = Vec::new();
        while let Some(Ok((k, _))) = self.records.peek() {
            if pack_of(k) != first {
                break;
            }
            let (k, v) = self.records.next()?.ok()?;
            entries.push(IndexEntry {
                id: ChunkId(v[..32].try_into().expect("32 bytes")),
                frame_offset: u64::from_be_bytes(k.0[4..12].try_into().expect("8 bytes")),
                frame_len: u32::from_le_bytes(v[32..36].try_into().expect("4 bytes")),
                offset: u32::from_be_bytes(k.0[12..16].try_into().expect("4 bytes")),
                len: u32::from_le_bytes(v[36..].try_into().expect("4 bytes")),
            });
        }
        let pack = self.packs.get(first as usize).copied();
        Some(
            pack.map(|p| (p, entries))
                .ok_or_else(|| Error::new(ErrorKind::Internal, "internal", "a queued chunk names no pack")),
        )
    }
}

/// The copy map is away only if saving it panicked.
fn map_gone() -> Error {
    Error::new(
        ErrorKind::Internal,
        "internal",
        "the copy map was lost when saving it failed",
    )
}

/// [`Repo::each_live_index_entry`], with each pack numbered by its place in the returned
/// list (a `u32` per entry instead of a 16-byte id).
async fn live_entries(repo: &Repo, mut f: impl FnMut(u32, IndexEntry)) -> Result<Vec<ObjectId>> {
    let mut packs = Vec::new();
    let mut slot: HashMap<ObjectId, u32> = HashMap::new();
    repo.each_live_index_entry(|pack, e| {
        let p = *slot.entry(pack).or_insert_with(|| {
            packs.push(pack);
            packs.len() as u32 - 1
        });
        f(p, e);
    })
    .await?;
    Ok(packs)
}

struct Run<'a> {
    src: &'a Repo,
    dst: &'a Repo,
    /// `None` only while it is being saved.
    map: Option<CopyMap>,
    /// Listed on first need and again when older than half the grace.
    have: Option<DstChunks>,
    /// When the prune state was read right before `have` was listed: no pack in it
    /// that was unmarked then is deleted before this plus the grace period.
    have_epoch: Option<Instant>,
    /// Loaded on first need: a copy the map fully resolves reads no source index.
    locator: Option<Locator>,
    packer: Packer,
    pass_chunks: usize,
    packs_written: u64,
    /// Pack and index bytes uploaded.
    bytes_sent: u64,
}

/// Packs of the source fetched ahead of the one being re-packed. Each holds its
/// ciphertext (~17 MiB) until it is decoded; its chunks come in 1 MiB batches. One
/// keeps the network and the CPU overlapped; every one more costs a pack of memory.
const FETCH_AHEAD: usize = 1;

/// A snapshot's chunks in order, as the source lists them: a page table on disk (page
/// snapshots), or a dump's chunk sequence (a few bytes a dump chunk, in memory).
enum Chunks {
    Pages(crate::pagetable::PageTable),
    Seq(Vec<ChunkId>),
}

impl Chunks {
    fn len(&self) -> u32 {
        match self {
            Chunks::Pages(t) => t.pages(),
            Chunks::Seq(ids) => ids.len() as u32,
        }
    }

    /// The ids of ordinals `first..first + n` (1-based).
    fn read(&self, first: u32, n: usize) -> Result<Vec<ChunkId>> {
        match self {
            Chunks::Pages(t) => t.read(first, n),
            Chunks::Seq(ids) => Ok(ids[first as usize - 1..first as usize - 1 + n].to_vec()),
        }
    }
}

/// Where the destination's ids of a snapshot's chunks go: a page table on disk, or
/// the dump's new chunk sequence.
enum Out {
    Pages(crate::spill::PageFile, tempfile::TempDir),
    Seq(Vec<ChunkId>, Vec<u32>),
}

impl Run<'_> {
    fn map(&self) -> Result<&CopyMap> {
        self.map.as_ref().ok_or_else(map_gone)
    }

    /// Copies one snapshot; `None` when another copy committed it first.
    ///
    /// Memory stays flat whatever the snapshot's size: its chunk list, the
    /// destination's chunk set, where each source chunk is and the copy map are on
    /// local disk; a pass of [`CopyOptions::pass_chunks`] ordinals holds their ids,
    /// the unique ones sorted and the destination id of each (~100 bytes an ordinal),
    /// plus the packs in flight.
    async fn snapshot(&mut self, m: &Manifest) -> Result<Option<CopiedSnapshot>> {
        let (src, dst) = (self.src, self.dst);
        // The backup rule (prune.rs), with the destination's chunk set listed after a
        // read of the prune state: a pack unmarked at that read is not deleted before
        // the read plus the grace, so the commit must land by then. A set older than
        // half the grace is listed again, after this snapshot's read.
        let pending_read = Instant::now();
        let state = crate::prune::state_for_dedup(dst).await?;
        let grace = state.as_ref().map_or(crate::prune::DEFAULT_GRACE, |st| st.grace());
        match &state {
            None => {
                // The prune state is unreadable: nothing stored is trusted to stay.
                self.have = None;
                self.have = Some(DstChunks::empty(dst)?);
                self.have_epoch = Some(pending_read);
            }
            Some(st) => {
                let stale = self.have.as_ref().is_none_or(|h| !h.listed)
                    || self.have_epoch.is_none_or(|e| e.elapsed() >= grace / 2);
                if stale {
                    self.have = None;
                    self.have = Some(DstChunks::load(dst).await?);
                    self.have_epoch = Some(pending_read);
                }
                let dropped = self.have.as_mut().expect("loaded").drop_packs(&st.marked_packs());
                if dropped > 0 {
                    tracing::info!("{dropped} packs of the destination are marked by prune; not reusing their chunks");
                }
            }
        }
        let epoch = self.have_epoch.expect("set above");

        let (chunks, lens) = match m.kind.as_str() {
            kind::PAGES => (Chunks::Pages(crate::pagetable::PageTable::build(src, m).await?), None),
            kind::DUMP => {
                let seq = src.chunk_seq(m).await?;
                (Chunks::Seq(seq.ids), Some(seq.lens))
            }
            other => return Err(unknown_kind(m, other)),
        };
        let total = chunks.len();
        let mut out = match lens {
            None => {
                let dir = dst.session.scratch("copy")?;
                let f = crate::spill::PageFile::create(dir.path(), "pages").map_err(scratch_err)?;
                Out::Pages(f, dir)
            }
            Some(lens) => Out::Seq(Vec::with_capacity(total as usize), lens),
        };

        // Three sweeps, so that each source pack is fetched once whatever the passes:
        // 1. per pass, the chunks the map and the destination do not resolve are
        //    located and queued on disk, keyed by where they are (pack, frame, offset);
        // 2. the queue is read in that order, each pack fetched once, its chunks
        //    hashed under the destination's key, mapped, and sent if it lacks them;
        // 3. per pass, every chunk is mapped to its destination id, written out.
        let mut chunks_sent = 0u64;
        let bytes_before = self.bytes_sent;
        let requests_at_start = dst.store.stats();
        let mut wanted: RunMap<WANT> = RunMap::create(dst.session.scratch("copy")?).map_err(scratch_err)?;
        for (first, n) in crate::pagetable::passes(total, self.pass_chunks) {
            dst.session.cancel().check()?;
            let mut unique = chunks.read(first, n)?;
            unique.sort_unstable();
            unique.dedup();
            for sid in &unique {
                let did = self.map()?.map.get(sid).map_err(scratch_err)?.map(ChunkId);
                let known = match &did {
                    Some(d) => self.have.as_ref().expect("loaded").contains(d)?,
                    None => false,
                };
                if known {
                    continue;
                }
                if self.locator.is_none() {
                    self.locator = Some(Locator::load(src).await?);
                }
                let loc = self.locator.as_ref().expect("loaded");
                let (pack, e) = loc.find(sid)?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Integrity,
                        "repo.missing-chunk",
                        format!(
                            "snapshot {} of {} needs chunk {} which no index lists (missing index or pack)",
                            m.id.short(),
                            src.store.describe(),
                            &sid.to_hex()[..16]
                        ),
                    )
                })?;
                let (key, v) = want_record(pack, &e);
                wanted.insert(key, v).map_err(scratch_err)?;
            }
        }
        let chunks_read = wanted.len();

        if chunks_read > 0 {
            let packs = self
                .locator
                .as_ref()
                .expect("loaded before anything is wanted")
                .packs
                .clone();
            let groups = PackGroups {
                records: wanted.sorted().map_err(scratch_err)?.peekable(),
                packs,
            };
            // One pack is fetched (and starts decoding) while the chunks of the
            // previous one are re-packed, as they are decoded: memory holds two
            // ciphertexts and a few 1 MiB batches, not packs of decompressed pages.
            // The GET runs on a task of its own, so it proceeds while this loop
            // waits on the destination.
            let mut fetched = futures::stream::iter(groups.map(|g| {
                let src = src.clone();
                tokio::spawn(async move {
                    let (pack, entries) = g?;
                    stream_chunks(&src, pack, entries).await
                })
            }))
            .buffered(FETCH_AHEAD + 1);
            let mut in_packer: HashSet<ChunkId> = HashSet::new();
            while let Some(joined) = fetched.next().await {
                let mut batches = joined.map_err(|e| {
                    Error::new(ErrorKind::Internal, "internal", "a pack reader panicked").with_source(e)
                })??;
                while let Some(batch) = batches.recv().await {
                    dst.session.cancel().check()?;
                    for (sid, data) in batch? {
                        let did = dst.keys.chunk_id(&data);
                        self.map
                            .as_mut()
                            .ok_or_else(map_gone)?
                            .insert(sid, did)
                            .map_err(scratch_err)?;
                        let known = self.have.as_ref().expect("loaded").contains(&did)?;
                        if !known && in_packer.insert(did) {
                            self.packer.add(did, &data).await?;
                            dst.session.progress().advance(data.len() as u64);
                            chunks_sent += 1;
                            if self.index_sealed().await? {
                                in_packer.clear();
                            }
                        }
                    }
                }
            }
        }
        drop(wanted);

        for (first, n) in crate::pagetable::passes(total, self.pass_chunks) {
            dst.session.cancel().check()?;
            let ids = chunks.read(first, n)?;
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let mut dst_of = Vec::with_capacity(unique.len());
            for sid in &unique {
                let did = self.map()?.map.get(sid).map_err(scratch_err)?.map(ChunkId);
                dst_of.push(did.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Internal,
                        "copy.unmapped-chunk",
                        format!("chunk {} was not read from the source", &sid.to_hex()[..16]),
                    )
                })?);
            }
            let dst_ids: Vec<ChunkId> = ids
                .iter()
                .map(|s| dst_of[unique.binary_search(s).expect("every id is in its pass's unique list")])
                .collect();
            match &mut out {
                Out::Pages(f, _) => f.write(first, &dst_ids).map_err(scratch_err)?,
                Out::Seq(v, _) => v.extend_from_slice(&dst_ids),
            }
        }
        self.packer.flush().await?;
        self.index_sealed().await?;
        drop(chunks);

        // A compaction point of a replication chain is checked by its state checksum,
        // keyed by its repository and over its chunk ids: computed anew for the
        // destination's ids as the map is written.
        let state = std::sync::Arc::new(std::sync::Mutex::new(sqlvault_format::StateChecksum::default()));
        let (new_maps, maps_len) = match out {
            Out::Pages(f, dir) => {
                let r = crate::mapparts::write_parts(dst, {
                    let part = crate::mapparts::PART_ENTRIES;
                    let (state, key) = (state.clone(), sqlvault_format::StateKey::new(&dst.keys));
                    move |emit| {
                        let mut parts = crate::mapparts::MapParts::full(part, total, emit);
                        let mut cur = f.reader(total).map_err(scratch_err)?;
                        let mut pgno = 0u32;
                        let mut x = sqlvault_format::StateChecksum::default();
                        while let Some(id) = cur.next_id().map_err(scratch_err)? {
                            pgno += 1;
                            x.toggle(&key, pgno, &id);
                            parts.push(pgno, id)?;
                        }
                        *state.lock().unwrap_or_else(|e| e.into_inner()) = x;
                        parts.finish().map(|_| ())
                    }
                })
                .await;
                drop(dir);
                r?
            }
            Out::Seq(dst_ids, lens) => {
                let pt = ChunkSeq { ids: dst_ids, lens }.encode_full();
                let (r, n) = crate::mapparts::put_map(dst, dst.encrypt_meta(&pt)?, dst.keys.mac(&pt)).await?;
                (vec![r], n)
            }
        };
        let mut manifest = m.clone();
        manifest.maps = Vec::new();
        manifest.parent = None;
        if manifest.state.is_some() {
            manifest.state = Some(state.lock().unwrap_or_else(|e| e.into_inner()).to_hex());
        }
        manifest.stats.chunks_new = chunks_sent;
        let committed = crate::commit::commit(crate::commit::Commit {
            repo: dst,
            new_maps,
            manifest,
            bytes_before: self.bytes_sent - bytes_before + maps_len,
            pending_read: epoch,
            grace,
            grace_code: "copy.outlived-grace",
            what: "copying the snapshot",
            claim: None,
            requests_at_start,
            lease: None,
        })
        .await?;
        let (manifest, manifest_len) = match committed {
            crate::commit::Committed::Written { manifest, manifest_len } => (*manifest, manifest_len),
            crate::commit::Committed::AlreadyThere => {
                tracing::info!("snapshot {} was copied by another run meanwhile", m.id.short());
                return Ok(None);
            }
        };
        tracing::info!(
            snapshot = %m.id.short(),
            chunks = manifest.stats.chunks_total,
            sent = chunks_sent,
            "snapshot copied"
        );
        Ok(Some(CopiedSnapshot {
            id: m.id.to_string(),
            name: m.name.clone(),
            kind: m.kind.clone(),
            chunks_total: manifest.stats.chunks_total,
            chunks_read,
            chunks_sent,
            bytes_sent: manifest.stats.bytes_new + manifest_len,
        }))
    }

    /// Indexes the packs uploaded since the last call, one index each, and adds their
    /// chunks to the destination's set. Returns whether there were any.
    async fn index_sealed(&mut self) -> Result<bool> {
        let sealed = self.packer.take_sealed();
        if sealed.is_empty() {
            return Ok(false);
        }
        for p in &sealed {
            self.bytes_sent += p.size + write_index_for(self.dst, std::slice::from_ref(p)).await?;
            self.have.as_mut().expect("loaded").add_pack(p.id, &p.entries)?;
            self.packs_written += 1;
        }
        Ok(true)
    }
}
