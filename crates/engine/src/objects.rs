//! Reading what snapshots are made of: page maps, chunk sequences and indexes, each
//! fetched, decrypted, authenticated and bounded before it is used.

use std::sync::Arc;

use futures::StreamExt;
use sqlvault_format::{
    ChunkId, ChunkSeq, IndexAuth, IndexEntry, IndexFile, Manifest, MapRef, ObjectId, PageMap, kind, layout,
};

use crate::error::{Error, ErrorKind, Result, corrupt, map_count_mismatch, map_unmapped};
use crate::repo::{Repo, Skipped, escape_name, get_or, unknown_kind};

/// A chunk sequence (its resulting count is a u32 at byte 9) may not describe more
/// than `most`: checked before anything is allocated for it.
fn check_declared_count(pt: &[u8], most: u64, what: &str, r: &MapRef) -> Result<()> {
    let declared = pt
        .get(9..13)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    match declared {
        Some(n) if n as u64 > most => Err(Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!(
                "{what} {} claims {n} entries, more than its snapshot allows ({most})",
                r.id.short()
            ),
        )),
        _ => Ok(()),
    }
}

/// Index bytes (as listed, in KiB) that [`Repo::each_live_index_entry`] loads at once.
const INDEX_KIB_IN_FLIGHT: u64 = 16 << 10;

impl Repo {
    /// Fetches, decrypts and authenticates each map object a manifest lists, in order,
    /// handing its plaintext to `apply`.
    pub(crate) async fn each_map(&self, m: &Manifest, apply: impl FnMut(&MapRef, &[u8]) -> Result<()>) -> Result<()> {
        self.each_map_of(&m.maps, &format!("snapshot {}", m.id.short()), apply)
            .await
    }

    /// [`Repo::each_map`] over any list of maps (a segment's); `owner` names what lists
    /// them in errors.
    pub(crate) async fn each_map_of(
        &self,
        maps: &[MapRef],
        owner: &str,
        mut apply: impl FnMut(&MapRef, &[u8]) -> Result<()>,
    ) -> Result<()> {
        for r in maps {
            let ct = get_or(&self.store, &layout::map(&r.id), || {
                Error::new(
                    ErrorKind::Integrity,
                    "repo.missing-object",
                    format!("page map {} of {owner} is missing", r.id.short()),
                )
            })
            .await?;
            let pt = self.decrypt_meta(&format!("page map {}", r.id.short()), &ct)?;
            drop(ct);
            let mut mac = [0u8; 32];
            if hex::decode_to_slice(&r.mac, &mut mac).is_err() || !self.keys.verify_mac(&pt, &mac) {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!("page map {} of {owner} fails authentication", r.id.short()),
                ));
            }
            apply(r, &pt)?;
        }
        Ok(())
    }

    /// The page map of a snapshot: chunk id by page (index = pgno − 1).
    pub async fn page_map(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        // Decoded straight into the table: at 4 GiB a full map is 32 MiB, and holding
        // its ciphertext, plaintext and a decoded copy at once would triple that.
        let mut pages: Vec<ChunkId> = Vec::new();
        let mut mapped: Vec<bool> = Vec::new();
        // Each map's own bytes bound the table (PageMap::apply_encoded); an earlier map
        // of the chain may have more pages than the snapshot (the database shrank).
        self.each_map(m, |r, pt| {
            PageMap::apply_encoded(pt, &mut pages, &mut mapped)
                .map_err(|e| corrupt(format!("page map {}", r.id.short()), e))
        })
        .await?;
        if pages.len() != m.page_count as usize {
            return Err(map_count_mismatch(m, pages.len()));
        }
        if let Some(i) = mapped.iter().position(|m| !m) {
            return Err(map_unmapped(m, i + 1));
        }
        Ok(pages)
    }

    /// The chunk sequence of a dump snapshot: its SQL stream, chunk by chunk.
    pub async fn chunk_seq(&self, m: &Manifest) -> Result<ChunkSeq> {
        let mut seq = ChunkSeq::default();
        self.each_map(m, |r, pt| {
            // An edit may copy runs of its base more than once (repeated content), so its
            // bytes do not bound it; what it may grow to is bounded by the snapshot and
            // the chain so far, generously (an earlier sequence of the chain can be
            // longer than the snapshot's, when the dump shrank).
            let listed = pt.len().saturating_sub(25) / 36;
            let most = m.stats.chunks_total.max((seq.len() + listed) as u64).saturating_mul(4);
            check_declared_count(pt, most, "chunk sequence", r)?;
            seq.apply_encoded(pt)
                .map_err(|e| corrupt(format!("chunk sequence {}", r.id.short()), e))
        })
        .await?;
        if m.dump.is_none() || m.stats.bytes_read != seq.total_bytes() || m.stats.chunks_total != seq.len() as u64 {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                format!(
                    "chunk sequences of snapshot {} do not give the dump its manifest describes",
                    m.id.short()
                ),
            ));
        }
        Ok(seq)
    }

    /// Every chunk a snapshot references, in order, whatever its kind.
    pub async fn chunk_ids(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        match m.kind.as_str() {
            kind::PAGES => self.page_map(m).await,
            kind::DUMP => Ok(self.chunk_seq(m).await?.ids),
            other => Err(unknown_kind(m, other)),
        }
    }

    /// Ids of the packs that exist (one LIST).
    pub(crate) async fn pack_ids(&self) -> Result<std::collections::HashSet<ObjectId>> {
        Ok(self
            .store
            .list(layout::PACKS)
            .await?
            .into_iter()
            .filter_map(|(n, _)| n.parse().ok())
            .collect())
    }

    /// Hands every index entry of a pack that exists to `f`, index by index in listing
    /// order (fetched a few at a time). Entries of packs that are gone are skipped: an
    /// index can outlive a pack a killed prune deleted, and another pack then holds the
    /// chunk. Index objects that cannot be authenticated are skipped with a warning:
    /// every chunk read through an entry is re-hashed against its id, so an index is
    /// only ever a hint, and one junk object must not stop a restore.
    pub(crate) async fn each_live_index_entry(&self, mut f: impl FnMut(ObjectId, IndexEntry)) -> Result<()> {
        let existing = self.pack_ids().await?;
        let listed = self.store.list(layout::INDEX).await?;
        // A few indexes load at once (latency), but no more than INDEX_BYTES_IN_FLIGHT
        // of them as listed: an index of a large backup is tens of MiB, held as
        // ciphertext and then plaintext until its entries are handed on, and eight of
        // those would outweigh everything else a restore holds. The semaphore is fair
        // and the stream ordered, so the oldest load, the one consumed next, always
        // holds its permits before any later one: no deadlock. One index larger than
        // the budget loads alone.
        let budget = Arc::new(tokio::sync::Semaphore::new(INDEX_KIB_IN_FLIGHT as usize));
        let mut loaded = futures::stream::iter(listed.into_iter().map(|(n, size)| {
            let budget = budget.clone();
            async move {
                let want = (size >> 10).saturating_add(1).min(INDEX_KIB_IN_FLIGHT) as u32;
                let permit = budget.acquire_many_owned(want).await.expect("never closed");
                let pt = self.index_plaintext(&n).await;
                (n, (pt, permit))
            }
        }))
        .buffered(8);
        while let Some((name, (pt, _permit))) = loaded.next().await {
            let pt = match pt {
                Ok(pt) => pt,
                Err(e) if e.kind() == ErrorKind::Store => return Err(e),
                Err(e) => {
                    tracing::warn!("skipping index {}: {}", escape_name(&name), e.one_line());
                    continue;
                }
            };
            // Streamed, not buffered (an index of a large backup holds a million
            // entries): a format-2 index is authenticated before any entry is handed
            // on, and entries are only hints anyway (every chunk read through one is
            // re-hashed, and a bad one falls back to another entry).
            match IndexFile::decode_with(&pt, &self.keys, |pack, e| {
                if existing.contains(&pack) {
                    f(pack, e);
                }
            }) {
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "skipping index {} of {}: {}",
                    escape_name(&name),
                    self.store.describe(),
                    corrupt("it", e).one_line()
                ),
            }
        }
        Ok(())
    }

    /// Names of the index objects.
    pub async fn index_names(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// One index object, decrypted with the metadata key but not decoded.
    pub async fn index_plaintext(&self, name: &str) -> Result<Vec<u8>> {
        let key = format!("{}/{name}", layout::INDEX);
        let ct = self.store.get(&key).await?;
        self.decrypt_meta(&format!("index {}", escape_name(name)), &ct)
    }

    /// One index object, decoded and (format 2) authenticated.
    pub async fn load_index(&self, name: &str) -> Result<(IndexFile, IndexAuth)> {
        let pt = self.index_plaintext(name).await?;
        IndexFile::decode(&pt, &self.keys).map_err(|e| corrupt(format!("index {}", escape_name(name)), e))
    }

    /// Every index object that can be read, by name, and those that cannot.
    pub async fn load_indexes_checked(&self) -> Result<(Vec<(String, IndexFile)>, Vec<Skipped>)> {
        let names = self.index_names().await?;
        let results: Vec<(String, Result<(IndexFile, IndexAuth)>)> =
            futures::stream::iter(names.into_iter().map(|n| async move {
                let r = self.load_index(&n).await;
                (n, r)
            }))
            .buffer_unordered(8)
            .collect()
            .await;
        let (mut ok, mut skipped) = (Vec::new(), Vec::new());
        for (n, r) in results {
            match r {
                Ok((idx, _)) => ok.push((n, idx)),
                // Deleted by a prune between the listing and the read.
                Err(e) if e.code() == "store.not-found" => {}
                Err(e) if e.kind() == ErrorKind::Store => return Err(e),
                Err(e) => skipped.push(Skipped::new(format!("{}/{}", layout::INDEX, escape_name(&n)), &e)),
            }
        }
        Ok((ok, skipped))
    }
}
