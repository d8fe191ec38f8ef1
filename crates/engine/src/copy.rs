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

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlvault_format::{ChunkId, ChunkSeq, IndexEntry, Manifest, ObjectId, decode_entries, kind, layout};
use sqlvault_store::RequestCounts;

use crate::error::{Error, ErrorKind, Result};
use crate::local::CopyMap;
use crate::packer::{Packer, read_chunks, write_index_for};
use crate::repo::{Repo, unknown_kind};

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
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            snapshots: Vec::new(),
            name: None,
            pack_target: 16 << 20,
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
    let mut run = Run {
        src,
        dst,
        map: if todo.is_empty() {
            CopyMap::default()
        } else {
            load_map(dst, src).await?
        },
        have: DstChunks::default(),
        have_epoch: None,
        locator: None,
        packer: Packer::new(dst, opts.pack_target)?,
        packs_written: 0,
        bytes_sent: 0,
    };
    let mut copied = Vec::new();
    for m in &todo {
        let r = run.snapshot(m).await;
        // What was learned is true whatever happened next: keep it for the rerun,
        // after every snapshot once the map has grown by half.
        let grown = run.map.map.len() > run.map.saved + run.map.saved / 2;
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
    tokio::task::spawn_blocking(move || CopyMap::load(&home, &d, &s, &keys))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "copy map loader panicked").with_source(e))
}

/// Best effort: a map that cannot be saved only costs the next copy reads.
async fn save_map(map: &mut CopyMap, dst: &Repo, src: &Repo) {
    let mut owned = std::mem::take(map);
    let (d, s, keys) = (dst.repo_id.clone(), src.repo_id.clone(), dst.keys.clone());
    let home = dst.session.state_dir().to_path_buf();
    let r = tokio::task::spawn_blocking(move || {
        let r = owned.save(&home, &d, &s, &keys);
        (owned, r)
    })
    .await;
    match r {
        Ok((owned, r)) => {
            *map = owned;
            if let Err(e) = r {
                tracing::warn!("copy map not saved: {}", e.one_line());
            }
        }
        Err(_) => tracing::warn!("copy map writer panicked; the map was not saved"),
    }
}

/// The chunks the destination holds in indexed, existing packs, with the pack of each
/// (so that the chunks of packs prune marks are forgotten).
#[derive(Default)]
struct DstChunks {
    packs: Vec<ObjectId>,
    ids: HashMap<ChunkId, u32>,
}

impl DstChunks {
    async fn load(dst: &Repo) -> Result<DstChunks> {
        let mut ids = HashMap::new();
        let packs = live_entries(dst, |p, e| {
            ids.entry(e.id).or_insert(p);
        })
        .await?;
        tracing::debug!(chunks = ids.len(), packs = packs.len(), "destination chunks loaded");
        Ok(DstChunks { packs, ids })
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains_key(id)
    }

    fn add_pack(&mut self, pack: ObjectId, entries: &[u8]) -> Result<()> {
        let p = self.packs.len() as u32;
        self.packs.push(pack);
        decode_entries(entries, |e| {
            self.ids.entry(e.id).or_insert(p);
        })
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "pack entries do not decode").with_source(e))
    }

    /// Forgets every chunk of the packs in `marked`.
    fn drop_packs(&mut self, marked: &HashSet<ObjectId>) -> usize {
        let gone: HashSet<u32> = self
            .packs
            .iter()
            .enumerate()
            .filter(|(_, p)| marked.contains(p))
            .map(|(i, _)| i as u32)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let before = self.ids.len();
        self.ids.retain(|_, p| !gone.contains(p));
        before - self.ids.len()
    }
}

/// Where each source chunk is: index entries of existing packs, sorted by chunk id.
struct Locator {
    packs: Vec<ObjectId>,
    entries: Vec<(u32, IndexEntry)>,
}

impl Locator {
    async fn load(src: &Repo) -> Result<Locator> {
        let mut entries = Vec::new();
        let packs = live_entries(src, |p, e| entries.push((p, e))).await?;
        entries.sort_by_key(|a| a.1.id);
        entries.dedup_by(|a, b| a.1.id == b.1.id);
        Ok(Locator { packs, entries })
    }

    fn find(&self, id: &ChunkId) -> Option<(ObjectId, IndexEntry)> {
        let i = self.entries.binary_search_by(|(_, e)| e.id.cmp(id)).ok()?;
        let (p, e) = self.entries[i];
        Some((self.packs[p as usize], e))
    }
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
    map: CopyMap,
    have: DstChunks,
    /// When the prune state was read right before `have` was listed: no pack in it
    /// that was unmarked then is deleted before this plus the grace period.
    have_epoch: Option<Instant>,
    /// Loaded on first need: a copy the map fully resolves reads no source index.
    locator: Option<Locator>,
    packer: Packer,
    packs_written: u64,
    /// Pack and index bytes uploaded.
    bytes_sent: u64,
}

/// Packs of the source fetched at once. Each holds its ciphertext while in flight and
/// then its needed chunks decompressed (~2.5× a pack): two keep the network and the
/// CPU overlapped (four made copy's peak RSS 352 MiB at 1 GiB; docs/benchmarks.md).
const FETCH_AHEAD: usize = 2;

impl Run<'_> {
    /// Copies one snapshot; `None` when another copy committed it first.
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
                self.have = DstChunks::default();
                self.have_epoch = Some(pending_read);
            }
            Some(st) => {
                if self.have.ids.is_empty() || self.have_epoch.is_none_or(|e| e.elapsed() >= grace / 2) {
                    self.have = DstChunks::load(dst).await?;
                    self.have_epoch = Some(pending_read);
                }
                let dropped = self.have.drop_packs(&st.marked_packs());
                if dropped > 0 {
                    tracing::info!(
                        "{dropped} chunks of the destination are in packs prune has marked; not reusing them"
                    );
                }
            }
        }
        let epoch = self.have_epoch.expect("set above");

        let (ids, lens) = match m.kind.as_str() {
            kind::PAGES => (src.page_map(m).await?, None),
            kind::DUMP => {
                let seq = src.chunk_seq(m).await?;
                (seq.ids, Some(seq.lens))
            }
            other => return Err(unknown_kind(m, other)),
        };
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        let to_read: Vec<ChunkId> = unique
            .iter()
            .filter(|s| self.map.map.get(s).is_none_or(|d| !self.have.contains(d)))
            .copied()
            .collect();
        drop(unique);

        let mut chunks_sent = 0u64;
        let bytes_before = self.bytes_sent;
        if !to_read.is_empty() {
            if self.locator.is_none() {
                self.locator = Some(Locator::load(src).await?);
            }
            let loc = self.locator.as_ref().expect("loaded");
            let mut by_pack: HashMap<ObjectId, Vec<IndexEntry>> = HashMap::new();
            for id in &to_read {
                let (pack, e) = loc.find(id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Integrity,
                        "repo.missing-chunk",
                        format!(
                            "snapshot {} of {} needs chunk {} which no index lists (missing index or pack)",
                            m.id.short(),
                            src.store.describe(),
                            &id.to_hex()[..16]
                        ),
                    )
                })?;
                by_pack.entry(pack).or_default().push(e);
            }
            // Packs are fetched a few at a time while their chunks are re-packed in
            // order; the chunks of a pack are held until they are handed on.
            let mut fetched = futures::stream::iter(
                by_pack
                    .into_iter()
                    .map(|(pack, wanted)| async move { read_chunks(src, &pack, wanted).await }),
            )
            .buffer_unordered(FETCH_AHEAD);
            let mut in_packer: HashSet<ChunkId> = HashSet::new();
            while let Some(chunks) = fetched.try_next().await? {
                self.dst.session.cancel().check()?;
                for (sid, data) in chunks {
                    let did = dst.keys.chunk_id(&data);
                    self.map.map.insert(sid, did);
                    if !self.have.contains(&did) && in_packer.insert(did) {
                        self.packer.add(did, &data).await?;
                        self.dst.session.progress().advance(data.len() as u64);
                        chunks_sent += 1;
                        if self.index_sealed().await? {
                            in_packer.clear();
                        }
                    }
                }
            }
            self.packer.flush().await?;
            self.index_sealed().await?;
        }

        // The snapshot's chunks under the destination's ids, in its own map.
        let dst_ids: Vec<ChunkId> = ids
            .iter()
            .map(|s| {
                self.map.map.get(s).copied().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Internal,
                        "copy.unmapped-chunk",
                        format!("chunk {} was not read from the source", &s.to_hex()[..16]),
                    )
                })
            })
            .collect::<Result<_>>()?;
        drop(ids);
        let (new_maps, maps_len) = match lens {
            None => {
                crate::mapparts::write_parts(dst, {
                    let part = crate::mapparts::PART_ENTRIES;
                    move |emit| {
                        let mut parts = crate::mapparts::MapParts::full(part, dst_ids.len() as u32, emit);
                        for (i, id) in dst_ids.into_iter().enumerate() {
                            parts.push(i as u32 + 1, id)?;
                        }
                        parts.finish().map(|_| ())
                    }
                })
                .await?
            }
            Some(lens) => {
                let pt = ChunkSeq { ids: dst_ids, lens }.encode_full();
                let (r, n) = crate::mapparts::put_map(dst, dst.encrypt_meta(&pt)?, dst.keys.mac(&pt)).await?;
                (vec![r], n)
            }
        };
        let mut manifest = m.clone();
        manifest.maps = Vec::new();
        manifest.parent = None;
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
            chunks_read: to_read.len() as u64,
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
            self.have.add_pack(p.id, &p.entries)?;
            self.packs_written += 1;
        }
        Ok(true)
    }
}
