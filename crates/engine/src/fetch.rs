//! The fetch stage restore shares between page snapshots and dumps: locate each unique
//! chunk in the indexes, then per pack GET, decrypt, decompress the frames needed,
//! re-hash every chunk against its id and write it at its places in the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sqlvault_format::{ChunkId, Manifest, ObjectId, layout};

use crate::error::{Error, ErrorKind, Result, io_err};
use crate::packer::PackReader;
use crate::repo::{Repo, get_or};

/// One chunk to fetch: where it is and which unique chunk it is (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    frame_offset: u64,
    frame_len: u32,
    offset: u32,
    len: u32,
    uidx: u32,
}

/// Where a unique chunk is: an index entry's place, in the pack `pack` (an index into
/// [`FetchCtx::packs`]) — 24 bytes, one per unique chunk, in a table sized once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    frame_offset: u64,
    frame_len: u32,
    offset: u32,
    len: u32,
    pack: u32,
}

/// [`Loc::pack`] of a chunk no index has listed yet.
const NOWHERE: u32 = u32::MAX;

/// Where each chunk of a snapshot goes in the file being rebuilt.
pub(crate) enum Layout {
    /// Page `n` (1-based) at `(n − 1) × page_size`.
    Pages(u64),
    /// Chunk `n` at `offsets[n − 1]`, `offsets[n] − offsets[n − 1]` bytes long.
    Chunks(Vec<u64>),
}

impl Layout {
    fn offset(&self, ordinal: u32) -> u64 {
        match self {
            Layout::Pages(ps) => (ordinal as u64 - 1) * ps,
            Layout::Chunks(o) => o[ordinal as usize - 1],
        }
    }
    fn len(&self, ordinal: u32) -> u64 {
        match self {
            Layout::Pages(ps) => *ps,
            Layout::Chunks(o) => o[ordinal as usize] - o[ordinal as usize - 1],
        }
    }
}

/// The chunks of one pass and where each goes: the unique ids, sorted (an index entry
/// is found by binary search, without a hash table), and for each the ordinals it
/// fills (CSR: `pgnos[starts[u]..starts[u + 1]]`, 1-based).
pub(crate) struct Plan {
    uids: Vec<ChunkId>,
    starts: Vec<u32>,
    pgnos: Vec<u32>,
}

impl Plan {
    /// The plan for ordinals `first..first + ids.len()`, `ids[i]` the chunk of ordinal
    /// `first + i`. Built in place: the ids are permuted into sorted order where they
    /// are and deduplicated, so the peak is ~36 bytes an ordinal (the ids, the order,
    /// a bit each) instead of a second table of ids; afterwards 32 bytes a unique chunk
    /// and 8 an ordinal.
    pub(crate) fn new(mut ids: Vec<ChunkId>, first: u32) -> Plan {
        let n = ids.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by(|a, b| ids[*a as usize].cmp(&ids[*b as usize]));
        // ids[k] = old ids[order[k]], one cycle of the permutation at a time: each
        // cycle's first id is held while the others move up.
        let mut done = vec![0u64; n.div_ceil(64)];
        for k in 0..n {
            if done[k / 64] & (1 << (k % 64)) != 0 {
                continue;
            }
            let held = ids[k];
            let mut j = k;
            loop {
                done[j / 64] |= 1 << (j % 64);
                let src = order[j] as usize;
                if src == k {
                    ids[j] = held;
                    break;
                }
                ids[j] = ids[src];
                j = src;
            }
        }
        drop(done);
        let unique = ids.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(n > 0);
        let mut starts = Vec::with_capacity(unique + 1);
        starts.extend((0..n).filter(|&k| k == 0 || ids[k] != ids[k - 1]).map(|k| k as u32));
        starts.push(n as u32);
        ids.dedup();
        ids.shrink_to_fit();
        // `order` becomes the CSR's ordinal list, in place.
        let pgnos = order.into_iter().map(|p| p + first).collect();
        Plan {
            uids: ids,
            starts,
            pgnos,
        }
    }
}

/// Fetches every chunk of `plan` and writes it at its places in `file`: locate each
/// unique chunk in the indexes, then per pack GET, decrypt, decompress the frames
/// needed, re-hash every chunk against its id, write. Advances the session's progress
/// by the bytes written; starting and finishing it is the caller's (a restore in
/// passes reports them as one).
pub(crate) async fn fetch_chunks(
    repo: &Repo,
    m: &Manifest,
    plan: Plan,
    layout: Layout,
    file: &File,
    threads: usize,
) -> Result<()> {
    // Locate every unique chunk in the indexes (of packs that exist).
    // The first entry of each chunk is used; other, different entries are kept as
    // alternates, tried if the first does not give the chunk back (an index entry that
    // is damaged, or written with a stolen write key to point elsewhere, must not make
    // a sound snapshot unrestorable).
    let mut packs: Vec<ObjectId> = Vec::new();
    let mut pack_no: HashMap<ObjectId, u32> = HashMap::new();
    let nowhere = Loc {
        frame_offset: 0,
        frame_len: 0,
        offset: 0,
        len: 0,
        pack: NOWHERE,
    };
    let mut locs = vec![nowhere; plan.uids.len()];
    let mut alternates: HashMap<u32, Vec<Loc>> = HashMap::new();
    repo.each_live_index_entry(|pack, e| {
        if let Ok(u) = plan.uids.binary_search(&e.id) {
            let pack = *pack_no.entry(pack).or_insert_with(|| {
                packs.push(pack);
                packs.len() as u32 - 1
            });
            let loc = Loc {
                frame_offset: e.frame_offset,
                frame_len: e.frame_len,
                offset: e.offset,
                len: e.len,
                pack,
            };
            if locs[u].pack == NOWHERE {
                locs[u] = loc;
            } else if locs[u] != loc {
                let alts = alternates.entry(u as u32).or_default();
                if !alts.contains(&loc) {
                    alts.push(loc);
                }
            }
        }
    })
    .await?;
    drop(pack_no);
    if let Some(u) = locs.iter().position(|l| l.pack == NOWHERE) {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.missing-chunk",
            format!(
                "snapshot {} needs chunk {} which no index lists (missing index or pack)",
                m.id.short(),
                &plan.uids[u].to_hex()[..16]
            ),
        ));
    }
    // The chunks of each pack, in tables sized once: 4 bytes a chunk.
    let mut counts = vec![0u32; packs.len()];
    for l in &locs {
        counts[l.pack as usize] += 1;
    }
    let mut by_pack: Vec<Vec<u32>> = counts.iter().map(|&c| Vec::with_capacity(c as usize)).collect();
    drop(counts);
    for (u, l) in locs.iter().enumerate() {
        by_pack[l.pack as usize].push(u as u32);
    }
    let queue: Vec<(u32, Vec<u32>)> = by_pack
        .into_iter()
        .enumerate()
        .filter(|(_, us)| !us.is_empty())
        .map(|(p, us)| (p as u32, us))
        .collect();

    tracing::debug!("restore: chunks located");
    let threads = if threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        threads
    };
    let unique = plan.uids.len();
    let ctx = Arc::new(FetchCtx {
        repo: repo.clone(),
        file: file.try_clone().map_err(|e| io_err("dup", e))?,
        queue: Mutex::new(queue),
        packs,
        locs: Mutex::new(locs),
        plan,
        layout,
        written: AtomicUsize::new(0),
        abort: Arc::new(AtomicBool::new(false)),
        error: Mutex::new(None),
        failed: Mutex::new(Vec::new()),
    });
    // Dropped mid-way (a timeout in a service), the workers stop at their next pack.
    let _stop = crate::session::SetOnDrop(ctx.abort.clone());
    // Rounds: the first fetches every chunk from its first entry; each later one only
    // the chunks that failed, from their next alternate. A chunk with no alternate left
    // fails the restore with its last error.
    loop {
        // Downloads run on async tasks; the workers only decrypt, decompress, check and
        // write. At most `threads + 1` packs are in memory at once (the permits): one
        // download runs ahead of the workers, so the network and the CPUs overlap.
        let permits = Arc::new(tokio::sync::Semaphore::new(threads + 1));
        let (tx, rx) = tokio::sync::mpsc::channel::<Fetched>(threads + 1);
        let queue = std::mem::take(&mut *ctx.queue.lock().unwrap());
        let downloads = tokio::spawn(download_packs(ctx.clone(), queue, permits, threads + 1, tx));
        let c2 = ctx.clone();
        let workers = tokio::task::spawn_blocking(move || {
            let rx = Arc::new(Mutex::new(rx));
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (c, rx) = (c2.clone(), rx.clone());
                    std::thread::spawn(move || fetch_worker(&c, &rx))
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        });
        let joined = workers.await;
        // The workers are gone, and with them the channel: the downloads stop.
        let _ = downloads.await;
        joined.map_err(|e| Error::new(ErrorKind::Internal, "internal", "restore workers panicked").with_source(e))?;
        if let Some(e) = ctx.error.lock().unwrap().take() {
            return Err(e);
        }
        let failed = std::mem::take(&mut *ctx.failed.lock().unwrap());
        if failed.is_empty() {
            break;
        }
        let mut next: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut locs = ctx.locs.lock().unwrap();
        for (u, e) in failed {
            match alternates
                .get_mut(&u)
                .and_then(|a| (!a.is_empty()).then(|| a.remove(0)))
            {
                Some(loc) => {
                    tracing::warn!("{}; trying another index entry for the chunk", e.one_line());
                    locs[u as usize] = loc;
                    next.entry(loc.pack).or_default().push(u);
                }
                None => return Err(e),
            }
        }
        *ctx.queue.lock().unwrap() = next.into_iter().collect();
    }
    repo.session.cancel().check()?;
    if ctx.written.load(Ordering::SeqCst) != unique {
        return Err(Error::new(
            ErrorKind::Internal,
            "restore.incomplete",
            "not every chunk was written",
        ));
    }
    Ok(())
}

struct FetchCtx {
    repo: Repo,
    file: File,
    /// Per pack (an index into `packs`), the unique chunks (indexes into `plan.uids`)
    /// to take from it.
    queue: Mutex<Vec<(u32, Vec<u32>)>>,
    packs: Vec<ObjectId>,
    /// Where each unique chunk is fetched from this round (changed only between
    /// rounds, to an alternate).
    locs: Mutex<Vec<Loc>>,
    plan: Plan,
    layout: Layout,
    written: AtomicUsize,
    abort: Arc<AtomicBool>,
    /// A failure that stops the restore (the store, the local file).
    error: Mutex<Option<Error>>,
    /// Chunks an entry did not give back (damaged or misleading), for another round.
    failed: Mutex<Vec<(u32, Error)>>,
}

/// A pack as downloaded (or why not), with what the restore needs of it, holding one
/// of the memory permits until a worker is done with it.
struct Fetched {
    pack: ObjectId,
    needs: Vec<u32>,
    body: Result<Bytes>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Downloads the packs of `queue`, as many at once as there are permits, and hands
/// them to the workers; stops at the first send nobody receives (the workers ended)
/// or when the restore is aborted or cancelled.
async fn download_packs(
    c: Arc<FetchCtx>,
    queue: Vec<(u32, Vec<u32>)>,
    permits: Arc<tokio::sync::Semaphore>,
    depth: usize,
    tx: tokio::sync::mpsc::Sender<Fetched>,
) {
    let c = &c;
    let fetches = futures::stream::iter(queue)
        .map(|(pack, needs)| {
            let permits = permits.clone();
            let pack = c.packs[pack as usize];
            async move {
                let permit = permits.acquire_owned().await.expect("never closed");
                if c.abort.load(Ordering::Relaxed) {
                    return None;
                }
                if let Err(e) = c.repo.session.cancel().check() {
                    // Reported as what it is, not as an incomplete restore.
                    fail(c, e);
                    return None;
                }
                let body = get_or(&c.repo.store, &layout::pack(&pack), || {
                    Error::new(
                        ErrorKind::Integrity,
                        "repo.missing-object",
                        format!("pack {} is missing from the repository", pack.short()),
                    )
                })
                .await;
                Some(Fetched {
                    pack,
                    needs,
                    body,
                    _permit: permit,
                })
            }
        })
        .buffer_unordered(depth);
    let mut fetches = std::pin::pin!(fetches);
    while let Some(f) = fetches.next().await {
        let Some(f) = f else { break };
        if tx.send(f).await.is_err() {
            break;
        }
    }
}

fn fetch_worker(c: &FetchCtx, rx: &Mutex<tokio::sync::mpsc::Receiver<Fetched>>) {
    loop {
        if c.abort.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = c.repo.session.cancel().check() {
            fail(c, e);
            return;
        }
        let Some(f) = rx.lock().unwrap().blocking_recv() else {
            return;
        };
        let mut needs: Vec<Need> = {
            let locs = c.locs.lock().unwrap();
            f.needs
                .iter()
                .map(|&u| {
                    let l = locs[u as usize];
                    Need {
                        frame_offset: l.frame_offset,
                        frame_len: l.frame_len,
                        offset: l.offset,
                        len: l.len,
                        uidx: u,
                    }
                })
                .collect()
        };
        if let Err(e) = restore_pack(c, &f.pack, f.body, &mut needs) {
            fail(c, e);
            return;
        }
    }
}

fn fail(c: &FetchCtx, e: Error) {
    c.abort.store(true, Ordering::SeqCst);
    let mut slot = c.error.lock().unwrap();
    if slot.is_none() {
        *slot = Some(e);
    }
}

/// Fetches one pack and writes the chunks `needs` asks of it. What the pack or an
/// entry gets wrong (a missing or damaged pack, a frame outside it, a chunk that does
/// not hash to its id) fails only the chunks concerned, recorded in `c.failed` for
/// another round; only the store and the local file stop the restore.
fn restore_pack(c: &FetchCtx, pack: &ObjectId, body: Result<Bytes>, needs: &mut [Need]) -> Result<()> {
    let soft = |needs: &[Need], e: &Error| {
        let mut f = c.failed.lock().unwrap();
        f.extend(
            needs
                .iter()
                .map(|n| (n.uidx, Error::new(e.kind(), e.code(), e.one_line()))),
        );
    };
    let ct = match body {
        Ok(ct) => ct,
        Err(e) if e.kind() == ErrorKind::Integrity => {
            soft(needs, &e);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut r = match PackReader::open(&c.repo.identities, pack, ct) {
        Ok(r) => r,
        // A wrong identity is the caller's problem, not the entry's.
        Err(e) if e.kind() == ErrorKind::Auth => return Err(e),
        Err(e) => {
            soft(needs, &e);
            return Ok(());
        }
    };
    let what = format!("pack {}", pack.short());
    needs.sort_by_key(|n| (n.frame_offset, n.offset));
    // (file offset, offset in the decompressed frame, length)
    let mut runs: Vec<(u64, u32, u32)> = Vec::new();
    let mut i = 0;
    while i < needs.len() {
        let e = needs[i];
        let mut j = i;
        let mut max_end = 0usize;
        while j < needs.len() && needs[j].frame_offset == e.frame_offset {
            max_end = max_end.max(needs[j].offset as usize + needs[j].len as usize);
            j += 1;
        }
        let group = &needs[i..j];
        i = j;
        let plain = match r.frame(e.frame_offset, e.frame_len, max_end) {
            Ok(p) => p,
            Err(err) => {
                soft(group, &err);
                continue;
            }
        };
        runs.clear();
        for n in group {
            let (off, len) = (n.offset as usize, n.len as usize);
            let u = n.uidx as usize;
            let p = &c.plan;
            let first = p.pgnos[p.starts[u] as usize];
            let sound = plain
                .get(off..off.saturating_add(len))
                .is_some_and(|d| c.repo.keys.chunk_id(d) == p.uids[u] && len as u64 == c.layout.len(first));
            if !sound {
                soft(
                    std::slice::from_ref(n),
                    &Error::new(
                        ErrorKind::Integrity,
                        "repo.corrupt-object",
                        format!(
                            "{what}: chunk {} is not where its index entry says, or does not match its id (tampered or corrupt)",
                            &p.uids[u].to_hex()[..16]
                        ),
                    ),
                );
                continue;
            }
            for &pgno in &p.pgnos[p.starts[u] as usize..p.starts[u + 1] as usize] {
                runs.push((c.layout.offset(pgno), off as u32, len as u32));
                c.repo.session.progress().advance(len as u64);
            }
            c.written.fetch_add(1, Ordering::Relaxed);
        }
        // Chunks that follow each other in the file and in the frame go out in one
        // write: a full snapshot's frames are runs of consecutive pages.
        runs.sort_unstable();
        let mut k = 0;
        while k < runs.len() {
            let (file0, frame0, mut len) = runs[k];
            let mut end = k + 1;
            while end < runs.len()
                && runs[end].0 == file0 + len as u64
                && runs[end].1 as u64 == frame0 as u64 + len as u64
            {
                len += runs[end].2;
                end += 1;
            }
            let bytes = &plain[frame0 as usize..frame0 as usize + len as usize];
            c.file
                .write_all_at(bytes, file0)
                .map_err(|e| io_err("cannot write a restored chunk", e))?;
            k = end;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_lists_each_unique_chunk_once_with_every_ordinal_it_fills() {
        // Pseudo-random ids from a small set (many duplicates, long cycles in the
        // permutation), from ordinal 1000 on.
        let mut x = 0x9e37_79b9_u64;
        let ids: Vec<ChunkId> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ChunkId([
                    (x % 701) as u8,
                    (x % 3) as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ])
            })
            .collect();
        let plan = Plan::new(ids.clone(), 1000);
        let mut want = ids.clone();
        want.sort();
        want.dedup();
        assert_eq!(plan.uids, want);
        assert_eq!(plan.uids.capacity(), plan.uids.len());
        assert_eq!(plan.starts.len(), want.len() + 1);
        let mut seen = vec![false; ids.len()];
        for (u, id) in plan.uids.iter().enumerate() {
            let run = &plan.pgnos[plan.starts[u] as usize..plan.starts[u + 1] as usize];
            assert!(!run.is_empty());
            for &p in run {
                assert_eq!(ids[p as usize - 1000], *id);
                assert!(!std::mem::replace(&mut seen[p as usize - 1000], true));
            }
        }
        assert!(seen.iter().all(|s| *s));
        // Nothing, one, all the same.
        let empty = Plan::new(Vec::new(), 1);
        assert!(empty.uids.is_empty() && empty.starts == vec![0] && empty.pgnos.is_empty());
        let same = Plan::new(vec![ChunkId([4; 32]); 3], 1);
        assert_eq!(
            (same.uids.len(), same.starts, same.pgnos),
            (1, vec![0, 3], vec![1, 2, 3])
        );
    }
}
