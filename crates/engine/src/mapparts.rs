//! Page maps written in parts: no map object holds more than [`PART_ENTRIES`] entries,
//! so a backup never builds (nor a restore fetches) the whole map of a large database
//! as one buffer. At 32 bytes a page a full map of 8 GiB is 67 MiB; in parts it is
//! 17 objects of at most 4 MiB.
//!
//! The parts need nothing new in the format: a snapshot's maps are a chain applied in
//! order, and a delta may extend the page count by pages it lists (docs/format.md).
//! A full map of N pages is a `Full` map of the first part's pages followed by deltas
//! that each list, and so extend the table by, the next pages. A delta is cut at any
//! entry: each part but the last takes the page count up to its last listed page (new
//! pages are always listed, as they differ from the parent), the last sets the
//! snapshot's own count, which also truncates a database that shrank.

use bytes::Bytes;
use sqlvault_format::{ChunkId, MapRef, ObjectId, PageMap, PageMapKind, layout};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repo;

/// Entries per map object: 4 MiB of a full map, 4.5 MiB of a delta.
pub(crate) const PART_ENTRIES: usize = 128 * 1024;

/// One sealed part: ciphertext and the MAC of its plaintext.
pub(crate) type Part = (Vec<u8>, [u8; 32]);

/// Cuts a stream of `(pgno, id)` entries (pgno ascending) into map parts of at most
/// `part_entries` entries, handing each encoded part to `emit` as it fills.
pub(crate) struct MapParts<F: FnMut(Vec<u8>) -> Result<()>> {
    part_entries: usize,
    full: bool,
    /// The page count after the parts emitted so far.
    count: u32,
    final_count: u32,
    buf: Vec<(u32, ChunkId)>,
    parts: usize,
    emit: F,
}

impl<F: FnMut(Vec<u8>) -> Result<()>> MapParts<F> {
    /// A full map of `final_count` pages: push every page, 1 to `final_count`.
    pub(crate) fn full(part_entries: usize, final_count: u32, emit: F) -> Self {
        Self::new(part_entries, true, 0, final_count, emit)
    }

    /// A delta from a table of `base_count` pages to one of `final_count`: push the
    /// pages that differ, including every page past `base_count`.
    pub(crate) fn delta(part_entries: usize, base_count: u32, final_count: u32, emit: F) -> Self {
        Self::new(part_entries, false, base_count, final_count, emit)
    }

    fn new(part_entries: usize, full: bool, count: u32, final_count: u32, emit: F) -> Self {
        MapParts {
            part_entries: part_entries.max(1),
            full,
            count,
            final_count,
            buf: Vec::new(),
            parts: 0,
            emit,
        }
    }

    /// Adds an entry (pgno ascending).
    pub(crate) fn push(&mut self, pgno: u32, id: ChunkId) -> Result<()> {
        self.buf.push((pgno, id));
        if self.buf.len() >= self.part_entries {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Emits what is left; returns the number of parts.
    pub(crate) fn finish(mut self) -> Result<usize> {
        // A full map that ended exactly on a part boundary is complete as it is.
        if !(self.buf.is_empty() && self.parts > 0 && self.count == self.final_count) {
            self.flush(true)?;
        }
        Ok(self.parts)
    }

    fn flush(&mut self, last: bool) -> Result<()> {
        let kind = if self.full && self.parts == 0 {
            PageMapKind::Full
        } else {
            PageMapKind::Delta
        };
        let page_count = if last {
            self.final_count
        } else {
            self.count.max(self.buf.last().map_or(0, |e| e.0))
        };
        let map = PageMap {
            kind,
            page_count,
            entries: std::mem::take(&mut self.buf),
        };
        if kind == PageMapKind::Full && map.entries.len() != page_count as usize {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal",
                format!("a full map part of {} pages lists {}", page_count, map.entries.len()),
            ));
        }
        let pt = map.encode();
        self.buf = map.entries;
        self.buf.clear();
        self.count = page_count;
        self.parts += 1;
        (self.emit)(pt)
    }
}

/// Builds a map's parts on a blocking thread (`produce` pushes the entries; reading
/// them is file I/O and the encryption is CPU), encrypts each and PUTs it as it is
/// sealed, one waiting at most. Returns the new maps, in order, and their bytes.
pub(crate) async fn write_parts<P>(repo: &Repo, produce: P) -> Result<(Vec<MapRef>, u64)>
where
    P: FnOnce(&mut dyn FnMut(Vec<u8>) -> Result<()>) -> Result<()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Part>(1);
    let r = repo.clone();
    let builder = tokio::task::spawn_blocking(move || {
        let mut emit = |pt: Vec<u8>| {
            let part = (r.encrypt_meta(&pt)?, r.keys.mac(&pt));
            drop(pt);
            tx.blocking_send(part)
                .map_err(|_| Error::new(ErrorKind::Internal, "internal", "the map uploader stopped"))
        };
        produce(&mut emit)
    });
    let mut maps = Vec::new();
    let mut bytes = 0u64;
    let mut failed = None;
    while let Some((ct, mac)) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        match put_map(repo, ct, mac).await {
            Ok((r, n)) => {
                maps.push(r);
                bytes += n;
            }
            Err(e) => failed = Some(e),
        }
    }
    let built = builder
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "map builder panicked").with_source(e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    built?;
    Ok((maps, bytes))
}

/// Uploads one map object under a new name (append-only: nothing is replaced).
pub(crate) async fn put_map(repo: &Repo, ct: Vec<u8>, mac: [u8; 32]) -> Result<(MapRef, u64)> {
    let id = ObjectId::random();
    let n = ct.len() as u64;
    repo.store.appender().put(&layout::map(&id), Bytes::from(ct)).await?;
    Ok((
        MapRef {
            id,
            mac: hex::encode(mac),
        },
        n,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies encoded parts the way a restore does and returns the table.
    fn apply(parts: &[Vec<u8>], mut pages: Vec<ChunkId>) -> Vec<ChunkId> {
        let mut mapped = vec![true; pages.len()];
        for p in parts {
            PageMap::apply_encoded(p, &mut pages, &mut mapped).unwrap();
        }
        assert!(mapped.iter().all(|m| *m), "every page mapped");
        pages
    }

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[4] = 1;
        ChunkId(b)
    }

    #[test]
    fn a_full_map_in_parts_applies_to_the_same_table() {
        for (n, part) in [(1u32, 3usize), (7, 3), (9, 3), (10, 1), (5, 100)] {
            let mut parts = Vec::new();
            let mut w = MapParts::full(part, n, |pt| {
                parts.push(pt);
                Ok(())
            });
            for p in 1..=n {
                w.push(p, id(p)).unwrap();
            }
            let count = w.finish().unwrap();
            assert_eq!(count, parts.len());
            assert_eq!(count, (n as usize).div_ceil(part), "{n} pages in parts of {part}");
            assert_eq!(apply(&parts, Vec::new()), (1..=n).map(id).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_delta_in_parts_grows_shrinks_and_changes_like_one_delta() {
        let base: Vec<ChunkId> = (1..=10).map(id).collect();
        // Grow to 14 with pages 2, 9 changed; shrink to 6 with page 3 changed; no change.
        let cases: [(u32, Vec<u32>); 3] = [(14, vec![2, 9, 11, 12, 13, 14]), (6, vec![3]), (10, vec![])];
        for (final_count, changed) in cases {
            for part in [1, 2, 4, 100] {
                let mut parts = Vec::new();
                let mut w = MapParts::delta(part, 10, final_count, |pt| {
                    parts.push(pt);
                    Ok(())
                });
                for &p in &changed {
                    w.push(p, id(p + 1000)).unwrap();
                }
                w.finish().unwrap();
                let mut want: Vec<ChunkId> = (1..=final_count).map(id).collect();
                for &p in &changed {
                    want[p as usize - 1] = id(p + 1000);
                }
                assert_eq!(apply(&parts, base.clone()), want, "to {final_count} in parts of {part}");
            }
        }
    }
}
