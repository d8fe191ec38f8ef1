//! A map from chunk ids to small fixed-size values kept on local disk, for state that
//! grows with a repository and must not grow memory with it: copy's source id →
//! destination id, the destination's chunk set, where each source chunk is stored.
//!
//! Entries are sorted runs in one private scratch file (0600, in a directory removed
//! on drop and on signals), each searched through fences in memory (every
//! [`FENCE`]-th id: under one byte an entry); the newest [`PENDING`] entries wait in
//! memory until they are sorted and written as a run. More than [`MAX_RUNS`] runs are
//! merged into one, streamed, so a lookup reads at most that many small blocks. A
//! lookup that cannot read the file is an error, never "absent": callers decide what
//! absence means (for copy: read the chunk again, which is always safe, but an I/O
//! failure must not pass silently as a cache miss forever).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use sqlvault_format::ChunkId;

/// Records per block: one lookup reads one block per run.
const FENCE: u64 = 64;
/// Entries held in memory before they are written as a run (~5 MiB at 32-byte values).
pub(crate) const PENDING: usize = 1 << 16;
/// Runs on disk before they are merged into one (a backstop: the size-tiered merging
/// in [`RunMap::flush`] keeps fewer).
const MAX_RUNS: usize = 8;
/// Two runs are merged while the newer holds at least 1/MERGE_RATIO of the older.
const MERGE_RATIO: u64 = 4;

/// One sorted run of the file: `count` records from byte `at`.
struct Run {
    at: u64,
    count: u64,
    /// The id of record `k * FENCE`, for every k.
    fence: Vec<ChunkId>,
}

/// A map from chunk ids to `V`-byte values on local disk (see the module docs). An id
/// inserted twice keeps one of its values (callers store values any of which is
/// right: a pack that holds the chunk, the id the chunk hashes to).
pub(crate) struct RunMap<const V: usize> {
    dir: tempfile::TempDir,
    /// The file's name in `dir` (it changes when runs are merged).
    name: u32,
    runs: Runs,
    /// Bytes of the file no run uses any more (runs merged into a later one).
    dead: u64,
    /// Sorted already (a run is written as it is) and ~1.2× its entries' bytes, where a
    /// hash map at the same count would hold twice as many buckets.
    pending: BTreeMap<ChunkId, [u8; V]>,
}

/// The sorted runs of one file.
struct Runs {
    file: File,
    end: u64,
    list: Vec<Run>,
}

impl<const V: usize> RunMap<V> {
    const REC: usize = 32 + V;

    /// An empty map with its file in `dir`, which it owns and removes when dropped.
    pub(crate) fn create(dir: tempfile::TempDir) -> std::io::Result<Self> {
        let file = create_private(&dir, 0)?;
        Ok(RunMap {
            dir,
            name: 0,
            runs: Runs {
                file,
                end: 0,
                list: Vec::new(),
            },
            dead: 0,
            pending: BTreeMap::new(),
        })
    }

    /// Entries stored, counting an id once per run it is in (an upper bound).
    pub(crate) fn len(&self) -> u64 {
        self.runs.list.iter().map(|r| r.count).sum::<u64>() + self.pending.len() as u64
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        self.runs.file.set_len(0)?;
        self.runs.end = 0;
        self.runs.list.clear();
        self.dead = 0;
        self.pending.clear();
        Ok(())
    }

    /// Adds `id` → `v` (kept as it is if `id` is already pending).
    pub(crate) fn insert(&mut self, id: ChunkId, v: [u8; V]) -> std::io::Result<()> {
        self.pending.entry(id).or_insert(v);
        if self.pending.len() >= PENDING {
            self.flush()?;
        }
        Ok(())
    }

    /// The value of `id`, if it has one.
    pub(crate) fn get(&self, id: &ChunkId) -> std::io::Result<Option<[u8; V]>> {
        if let Some(v) = self.pending.get(id) {
            return Ok(Some(*v));
        }
        // The newest run first: a chunk looked up is most often one stored lately.
        for r in self.runs.list.iter().rev() {
            if let Some(v) = self.find_in(r, id)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn find_in(&self, r: &Run, id: &ChunkId) -> std::io::Result<Option<[u8; V]>> {
        let k = r.fence.partition_point(|x| x <= id);
        if k == 0 {
            return Ok(None);
        }
        let first = (k as u64 - 1) * FENCE;
        let n = FENCE.min(r.count - first) as usize;
        let mut block = vec![0u8; n * Self::REC];
        self.runs
            .file
            .read_exact_at(&mut block, r.at + first * Self::REC as u64)?;
        Ok(search_block(&block, Self::REC, id).map(|v| v.try_into().expect("V bytes")))
    }

    /// Writes the pending entries as a run (and merges the runs when there are too many).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Written from where it is and cleared only once the run counts: a failed
        // write loses nothing (the bytes written are unreferenced).
        let mut w = RunWriter::new(&mut self.runs);
        for (id, v) in &self.pending {
            w.push(id, v)?;
        }
        w.finish()?;
        self.pending.clear();
        // Runs stay in sizes at least MERGE_RATIO apart (newest smallest), so a lookup
        // probes ~log4(entries / PENDING) of them: merging the newest two while they
        // are within the ratio, appended at the end of the file.
        while let [.., a, b] = &self.runs.list[..]
            && b.count.saturating_mul(MERGE_RATIO) >= a.count
        {
            let n = self.runs.list.len();
            // The pair stays listed until its merge is written: a failure leaves both.
            let file = self.runs.file.try_clone()?;
            let pair: Vec<Run> = self.runs.list[n - 2..]
                .iter()
                .map(|r| Run {
                    at: r.at,
                    count: r.count,
                    fence: Vec::new(),
                })
                .collect();
            let merged = {
                let mut w = RunWriter::<V>::new(&mut self.runs);
                merge_list::<V>(&file, &pair, |id, v| w.push(id, v))?;
                w.finish_detached()?
            };
            self.dead += pair.iter().map(|r| r.count).sum::<u64>() * Self::REC as u64;
            self.runs.list.truncate(n - 2);
            self.runs.list.extend(merged);
        }
        if self.runs.list.len() > MAX_RUNS || self.dead > self.live_bytes() {
            self.compact()?;
        }
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        self.runs.list.iter().map(|r| r.count).sum::<u64>() * Self::REC as u64
    }

    /// Writes what is pending and merges every run into one, so that each lookup
    /// reads one block: after a bulk load, before the lookups.
    pub(crate) fn seal(&mut self) -> std::io::Result<()> {
        self.flush()?;
        if self.runs.list.len() > 1 || self.dead > 0 {
            self.compact()?;
        }
        Ok(())
    }

    /// A writer of one new run; its records must come in strictly ascending id order.
    /// The run counts once [`RunWriter::finish`] returns; abandoned, it is only
    /// unreferenced bytes in the file.
    pub(crate) fn run_writer(&mut self) -> RunWriter<'_, V> {
        RunWriter::new(&mut self.runs)
    }

    /// Merges every run into one, in a new file.
    fn compact(&mut self) -> std::io::Result<()> {
        let name = self.name + 1;
        let mut out = Runs {
            file: create_private(&self.dir, name)?,
            end: 0,
            list: Vec::new(),
        };
        {
            let mut w = RunWriter::<V>::new(&mut out);
            merge_runs::<V>(&self.runs, |id, v| w.push(id, v))?;
            w.finish()?;
        }
        let _ = std::fs::remove_file(self.dir.path().join(self.name.to_string()));
        self.runs = out;
        self.name = name;
        self.dead = 0;
        Ok(())
    }

    /// Every entry once, in ascending id order, as an owned reader (the map is sealed
    /// first, so it is one run read front to back): for a consumer that awaits between
    /// entries, where [`RunMap::for_each_sorted`]'s callback cannot.
    pub(crate) fn sorted(&mut self) -> std::io::Result<Sorted<V>> {
        self.seal()?;
        let (at, left) = self.runs.list.first().map_or((0, 0), |r| (r.at, r.count));
        Ok(Sorted {
            file: self.runs.file.try_clone()?,
            cursor: Cursor {
                at,
                left,
                buf: Vec::new(),
                pos: 0,
            },
        })
    }

    /// Every entry once, in ascending id order (pending ones are written as a run first).
    pub(crate) fn for_each_sorted(
        &mut self,
        f: impl FnMut(&ChunkId, &[u8; V]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.flush()?;
        merge_runs::<V>(&self.runs, f)
    }
}

/// The runs merged, streamed (a min-heap over one buffered cursor per run); an id in
/// several runs is handed on once.
fn merge_runs<const V: usize>(
    runs: &Runs,
    f: impl FnMut(&ChunkId, &[u8; V]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    merge_list::<V>(&runs.file, &runs.list, f)
}

/// [`merge_runs`] over some runs of `file`; where an id is in several, the newest
/// run's value is kept (runs are listed oldest first).
fn merge_list<const V: usize>(
    file: &File,
    list: &[Run],
    mut f: impl FnMut(&ChunkId, &[u8; V]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut cursors: Vec<Cursor<V>> = list
        .iter()
        .map(|r| Cursor {
            at: r.at,
            left: r.count,
            buf: Vec::new(),
            pos: 0,
        })
        .collect();
    let mut heap = std::collections::BinaryHeap::new();
    // Ordered by id, then newest run first (Reverse of the run's age).
    let n = cursors.len();
    for (k, c) in cursors.iter_mut().enumerate() {
        if let Some((id, v)) = c.next(file)? {
            heap.push(std::cmp::Reverse((id, n - k, v)));
        }
    }
    let mut last: Option<ChunkId> = None;
    while let Some(std::cmp::Reverse((id, age, v))) = heap.pop() {
        let k = n - age;
        if let Some((nid, nv)) = cursors[k].next(file)? {
            heap.push(std::cmp::Reverse((nid, age, nv)));
        }
        if last == Some(id) {
            continue;
        }
        last = Some(id);
        f(&id, &v)?;
    }
    Ok(())
}

impl<'r, const V: usize> RunWriter<'r, V> {
    fn new(runs: &'r mut Runs) -> Self {
        let at = runs.end;
        RunWriter {
            runs,
            at,
            count: 0,
            buf: Vec::with_capacity(1 << 16),
            fence: Vec::new(),
            last: None,
        }
    }
}

impl<const V: usize> std::fmt::Debug for RunMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunMap")
            .field("runs", &self.runs.list.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The entries of a sealed [`RunMap`] in ascending id order (see [`RunMap::sorted`]).
pub(crate) struct Sorted<const V: usize> {
    file: File,
    cursor: Cursor<V>,
}

impl<const V: usize> Iterator for Sorted<V> {
    type Item = std::io::Result<(ChunkId, [u8; V])>;
    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.next(&self.file).transpose()
    }
}

/// The value of the record for `id` in `block`: records of `rec` bytes, each a 32-byte
/// id then its value, sorted by id (a block of a run here, or of the known-chunk
/// cache, which has the same layout).
pub(crate) fn search_block<'b>(block: &'b [u8], rec: usize, id: &ChunkId) -> Option<&'b [u8]> {
    let n = block.len() / rec;
    let at = |i: usize| &block[i * rec..(i + 1) * rec];
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid)[..32].cmp(&id.0[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(&at(mid)[32..]),
        }
    }
    None
}

/// A cursor over one run, reading it in blocks.
struct Cursor<const V: usize> {
    at: u64,
    left: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<const V: usize> Cursor<V> {
    fn next(&mut self, file: &File) -> std::io::Result<Option<(ChunkId, [u8; V])>> {
        let rec = 32 + V;
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = self.left.min(((64 << 10) / rec) as u64);
            self.buf.resize(n as usize * rec, 0);
            file.read_exact_at(&mut self.buf, self.at)?;
            self.at += n * rec as u64;
            self.left -= n;
            self.pos = 0;
        }
        let r = &self.buf[self.pos..self.pos + rec];
        self.pos += rec;
        Ok(Some((
            ChunkId(r[..32].try_into().expect("32 bytes")),
            r[32..].try_into().expect("V bytes"),
        )))
    }
}

/// Writes one run of a [`RunMap`] (see [`RunMap::run_writer`]).
pub(crate) struct RunWriter<'r, const V: usize> {
    runs: &'r mut Runs,
    at: u64,
    count: u64,
    buf: Vec<u8>,
    fence: Vec<ChunkId>,
    last: Option<ChunkId>,
}

impl<const V: usize> RunWriter<'_, V> {
    /// Appends a record; an id not above the previous one is refused (`InvalidData`).
    pub(crate) fn push(&mut self, id: &ChunkId, v: &[u8; V]) -> std::io::Result<()> {
        if self.last.is_some_and(|l| l >= *id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "records out of order",
            ));
        }
        self.last = Some(*id);
        if self.count.is_multiple_of(FENCE) {
            self.fence.push(*id);
        }
        self.count += 1;
        self.buf.extend_from_slice(&id.0);
        self.buf.extend_from_slice(v);
        if self.buf.len() >= 1 << 16 {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        self.runs.file.write_all_at(&self.buf, self.runs.end)?;
        self.runs.end += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and returns the run (none if it is empty).
    fn finish_detached(mut self) -> std::io::Result<Option<Run>> {
        self.write_out()?;
        Ok((self.count > 0).then(|| Run {
            at: self.at,
            count: self.count,
            fence: std::mem::take(&mut self.fence),
        }))
    }

    /// Writes what is buffered and adds the run to the map.
    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        self.write_out()?;
        if self.count > 0 {
            self.runs.list.push(Run {
                at: self.at,
                count: self.count,
                fence: std::mem::take(&mut self.fence),
            });
        }
        Ok(())
    }
}

/// A new private file named `name` in `dir` (one a failed merge left there is
/// truncated: the directory is this map's own).
fn create_private(dir: &tempfile::TempDir, name: u32) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.path().join(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        // Spread over the key space, not ascending in insertion order.
        b[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        b[4..8].copy_from_slice(&n.to_le_bytes());
        ChunkId(b)
    }

    #[test]
    fn runs_on_disk_answer_as_a_hash_map_would_through_flushes_and_merges() {
        let mut m = RunMap::<4>::create(tempfile::tempdir().unwrap()).unwrap();
        let n = (PENDING * (MAX_RUNS + 3)) as u32 + 777;
        let mut truth = HashMap::new();
        for i in 0..n {
            m.insert(id(i), i.to_le_bytes()).unwrap();
            truth.insert(id(i), i.to_le_bytes());
            // Re-inserting keeps one value: here the same one.
            if i % 1000 == 0 {
                m.insert(id(i / 2), (i / 2).to_le_bytes()).unwrap();
            }
        }
        // Size-tiered: ~log4 of the flushes, never the backstop's count.
        assert!(m.runs.list.len() <= 4, "runs merged: {}", m.runs.list.len());
        for w in m.runs.list.windows(2) {
            assert!(
                w[0].count > w[1].count * MERGE_RATIO,
                "{} vs {}",
                w[0].count,
                w[1].count
            );
        }
        for i in (0..n).step_by(97).chain([0, n - 1]) {
            assert_eq!(m.get(&id(i)).unwrap(), Some(i.to_le_bytes()), "{i}");
        }
        for i in n..n + 200 {
            assert_eq!(m.get(&id(i)).unwrap(), None);
        }
        let mut seen = 0u32;
        let mut prev: Option<ChunkId> = None;
        m.for_each_sorted(|k, v| {
            assert!(prev.is_none_or(|p| p < *k));
            prev = Some(*k);
            assert_eq!(truth.get(k), Some(v));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n, "every id once");
        // Sealed: one run, the same answers.
        m.insert(id(n + 5), [9; 4]).unwrap();
        m.seal().unwrap();
        assert_eq!(m.runs.list.len(), 1);
        assert_eq!(m.dead, 0);
        assert_eq!(m.get(&id(n + 5)).unwrap(), Some([9; 4]));
        for i in (0..n).step_by(1013) {
            assert_eq!(m.get(&id(i)).unwrap(), Some(i.to_le_bytes()), "{i}");
        }
        // Only the current file remains in the directory.
        assert_eq!(
            std::fs::read_dir(m.dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_file())
                .count(),
            1
        );
    }

    #[test]
    fn a_run_refuses_records_out_of_order() {
        let mut m = RunMap::<1>::create(tempfile::tempdir().unwrap()).unwrap();
        let mut w = m.run_writer();
        w.push(&ChunkId([2; 32]), &[1]).unwrap();
        assert!(w.push(&ChunkId([2; 32]), &[1]).is_err());
        assert!(w.push(&ChunkId([1; 32]), &[1]).is_err());
        w.finish().unwrap();
        assert_eq!(m.get(&ChunkId([2; 32])).unwrap(), Some([1]));
        assert_eq!(m.len(), 1);
    }
}
