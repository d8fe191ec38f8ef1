//! Compaction of a destination's chain into a snapshot manifest, from its maps alone.

use bytes::Bytes;
use sqlvault_format::{ObjectId, Segment, layout};

use super::Dest;
use crate::error::Result;

/// Compacts the destination's chain: a snapshot manifest of its newest state, made of
/// the root's maps and one delta of every page changed since the root (or a full map
/// of the table when that is more than half the pages, which becomes the new root),
/// with the state checksum in place of a logical checksum. Nothing is read from the
/// database and no page is uploaded: the chunks are the segments'. The chain then goes
/// on from it: new segments `segments/<its id>/1…`, the transaction count continuing.
pub(super) async fn compact(d: &mut Dest) -> Result<()> {
    use crate::mapparts::{MapParts, PART_ENTRIES, write_parts};
    let root = d.root.clone().expect("a chain has a root");
    let table = d.table.as_ref().expect("checked by the caller");
    let pages = table.pages();
    let changed: Vec<u32> = (1..=pages)
        .filter(|&p| {
            d.since_root
                .get(p as usize / 64)
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
        })
        .collect();
    let full = changed.len() as u64 * 2 > pages as u64;
    let reader = table.reader()?;
    let base_count = root.page_count;
    let (maps, bytes) = write_parts(&d.repo, move |emit| {
        if full {
            let mut parts = MapParts::full(PART_ENTRIES, pages, emit);
            for (first, n) in crate::pagetable::passes(reader.pages(), 64 << 10) {
                for (i, id) in reader.read(first, n)?.into_iter().enumerate() {
                    parts.push(first + i as u32, id)?;
                }
            }
            parts.finish().map(|_| ())
        } else {
            let mut parts = MapParts::delta(PART_ENTRIES, base_count, pages, emit);
            for p in changed {
                let id = reader.read(p, 1)?.pop().expect("one id");
                parts.push(p, id)?;
            }
            parts.finish().map(|_| ())
        }
    })
    .await?;
    let mut m = root.clone();
    m.id = ObjectId::random();
    m.created_ms = d.report.last_observed_ms;
    m.page_count = pages;
    m.maps = if full {
        maps
    } else {
        root.maps.iter().cloned().chain(maps).collect()
    };
    m.parent = Some(root.id);
    m.logical_checksum = String::new();
    m.state = Some(d.state.to_hex());
    m.replicated = true;
    m.source_check = None;
    m.stats = sqlvault_format::SnapshotStats {
        bytes_new: bytes,
        ..Default::default()
    };
    let ct = d
        .repo
        .encrypt_meta(&sqlvault_format::encode_manifest(&d.repo.keys, &m))?;
    d.repo
        .store
        .appender()
        .put_if_absent(&layout::snapshot(&m.id), Bytes::from(ct))
        .await?;
    tracing::debug!(
        "compacted chain {} of {} at segment {} into {} ({} map)",
        d.chain.map(|c| c.short()).unwrap_or_default(),
        d.report.repo,
        d.seq,
        m.id.short(),
        if full { "full" } else { "delta" }
    );
    d.chain = Some(m.id);
    d.seq = 0;
    d.prev = Segment::first_prev(&m.id);
    d.chain_first = None;
    d.events.push("chain-started:compaction".into());
    d.report.chain = m.id.to_string();
    d.report.last_seq = 0;
    d.report.compactions += 1;
    if full {
        d.since_root.clear();
        d.root = Some(m);
    }
    Ok(())
}
