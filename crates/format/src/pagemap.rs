use crate::{ChunkId, FormatError};

const MAGIC: &[u8; 8] = b"SQLVMAP1";
const KIND: &str = "page map";

/// Whether a page map lists every page or only the pages changed since its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageMapKind {
    /// Every page 1..=page_count.
    Full,
    /// Pages that differ from the map it is applied on top of.
    Delta,
}

/// The mapping from page number to chunk id, whole or as a change set.
///
/// Encoding (little endian): `"SQLVMAP1"`, kind `u8` (0 full, 1 delta),
/// `page_count u32`, `entry_count u32`, then for a full map `page_count` × `chunk id [32]`
/// in page order, for a delta `entry_count` × (`pgno u32`, `chunk id [32]`), pgno ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMap {
    /// Full or delta.
    pub kind: PageMapKind,
    /// Pages in the database after applying this map.
    pub page_count: u32,
    /// `(pgno, chunk)` pairs, pgno ascending, 1-based.
    pub entries: Vec<(u32, ChunkId)>,
}

impl PageMap {
    /// Serialises the map.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.entries.len() * 36);
        out.extend_from_slice(MAGIC);
        out.push(match self.kind {
            PageMapKind::Full => 0,
            PageMapKind::Delta => 1,
        });
        out.extend_from_slice(&self.page_count.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (pgno, id) in &self.entries {
            if self.kind == PageMapKind::Delta {
                out.extend_from_slice(&pgno.to_le_bytes());
            }
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// Parses and validates a map (ascending, in range, full maps complete).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut entries = Vec::new();
        let (kind, page_count) = Self::decode_with(bytes, |pgno, id| entries.push((pgno, id)))?;
        Ok(PageMap {
            kind,
            page_count,
            entries,
        })
    }

    /// Validates a map and hands each `(pgno, id)` to `f` without building a list, so
    /// that a full map of a large database is never held twice. On error, `f` may have
    /// seen a prefix of the entries.
    pub fn decode_with(bytes: &[u8], mut f: impl FnMut(u32, ChunkId)) -> Result<(PageMapKind, u32), FormatError> {
        if bytes.len() < 17 || &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic { kind: KIND });
        }
        let kind = match bytes[8] {
            0 => PageMapKind::Full,
            1 => PageMapKind::Delta,
            k => return Err(FormatError::malformed(KIND, format!("unknown kind {k}"))),
        };
        let page_count = u32::from_le_bytes(bytes[9..13].try_into().unwrap());
        let n = u32::from_le_bytes(bytes[13..17].try_into().unwrap()) as usize;
        let body = &bytes[17..];
        let rec = if kind == PageMapKind::Full { 32 } else { 36 };
        if kind == PageMapKind::Full && n != page_count as usize {
            return Err(FormatError::malformed(KIND, "full map does not list every page"));
        }
        if body.len() != n * rec {
            return Err(FormatError::malformed(KIND, "length does not match entry count"));
        }
        let mut last = 0u32;
        for (i, r) in body.chunks_exact(rec).enumerate() {
            let (pgno, id) = if rec == 32 {
                (i as u32 + 1, r)
            } else {
                (u32::from_le_bytes(r[..4].try_into().unwrap()), &r[4..])
            };
            if pgno <= last || pgno > page_count {
                return Err(FormatError::malformed(
                    KIND,
                    format!("page {pgno} out of order or range"),
                ));
            }
            last = pgno;
            f(pgno, ChunkId(id.try_into().unwrap()));
        }
        Ok((kind, page_count))
    }

    /// The kind of an encoded map and the page count of a table of `current` pages once
    /// the map is applied, refused when the map claims more pages than its bytes can
    /// fill: a full map must list every page, and a delta may add at most the pages it
    /// lists (a new page must be listed). A table that grows only by what this allows
    /// cannot be made to claim gigabytes by a few crafted bytes, whether it lives in
    /// memory ([`PageMap::apply_encoded`]) or on disk.
    pub fn applied_count(bytes: &[u8], current: usize) -> Result<(PageMapKind, usize), FormatError> {
        if bytes.len() < 17 || &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic { kind: KIND });
        }
        let (kind, rec, base) = match bytes[8] {
            0 => (PageMapKind::Full, 32, 0),
            1 => (PageMapKind::Delta, 36, current),
            k => return Err(FormatError::malformed(KIND, format!("unknown kind {k}"))),
        };
        let page_count = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        let entries = u32::from_le_bytes(bytes[13..17].try_into().unwrap()) as usize;
        if entries.checked_mul(rec) != Some(bytes.len() - 17) || page_count > base.saturating_add(entries) {
            return Err(FormatError::malformed(KIND, "page count exceeds what the map lists"));
        }
        Ok((kind, page_count))
    }

    /// Applies an encoded map on top of `pages`/`mapped` (index = pgno − 1): a full map
    /// replaces them, a delta sets its pages and truncates or extends to its page count.
    ///
    /// The table never grows beyond what the bytes can fill ([`PageMap::applied_count`]),
    /// checked before anything is allocated.
    pub fn apply_encoded(bytes: &[u8], pages: &mut Vec<ChunkId>, mapped: &mut Vec<bool>) -> Result<(), FormatError> {
        let (kind, page_count) = Self::applied_count(bytes, pages.len())?;
        if kind == PageMapKind::Full {
            mapped.clear();
        }
        pages.resize(page_count, ChunkId([0; 32]));
        mapped.resize(page_count, false);
        Self::decode_with(bytes, |pgno, id| {
            pages[pgno as usize - 1] = id;
            mapped[pgno as usize - 1] = true;
        })?;
        Ok(())
    }

    /// Applies this map on top of `pages` (index = pgno - 1). A full map replaces it.
    pub fn apply(&self, pages: &mut Vec<Option<ChunkId>>) {
        if self.kind == PageMapKind::Full {
            pages.clear();
        }
        pages.resize(self.page_count as usize, None);
        for (pgno, id) in &self.entries {
            pages[*pgno as usize - 1] = Some(*id);
        }
    }

    /// The delta that turns `base` into `current` (both indexed by pgno - 1).
    pub fn delta(base: &[ChunkId], current: &[ChunkId]) -> PageMap {
        let entries = current
            .iter()
            .enumerate()
            .filter(|(i, id)| base.get(*i) != Some(id))
            .map(|(i, id)| (i as u32 + 1, *id))
            .collect();
        PageMap {
            kind: PageMapKind::Delta,
            page_count: current.len() as u32,
            entries,
        }
    }

    /// The 17-byte header of a full map of `page_count` pages; the ids follow in page
    /// order. Lets a writer stream a large map instead of building it.
    pub fn full_header(page_count: u32) -> [u8; 17] {
        let mut h = [0u8; 17];
        h[..8].copy_from_slice(MAGIC);
        h[8] = 0;
        h[9..13].copy_from_slice(&page_count.to_le_bytes());
        h[13..17].copy_from_slice(&page_count.to_le_bytes());
        h
    }

    /// Encodes a full map of `pages` directly, without building the entry list.
    pub fn encode_full(pages: &[ChunkId]) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + pages.len() * 32);
        out.extend_from_slice(&Self::full_header(pages.len() as u32));
        for id in pages {
            out.extend_from_slice(&id.0);
        }
        out
    }

    /// A full map of `current`.
    pub fn full(current: &[ChunkId]) -> PageMap {
        PageMap {
            kind: PageMapKind::Full,
            page_count: current.len() as u32,
            entries: current.iter().enumerate().map(|(i, id)| (i as u32 + 1, *id)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ChunkId {
        ChunkId([b; 32])
    }

    #[test]
    fn full_then_delta_reconstructs_current() {
        let base = vec![id(1), id(2), id(3)];
        let current = vec![id(1), id(9), id(3), id(4)];
        assert_eq!(PageMap::encode_full(&base), PageMap::full(&base).encode());
        let full = PageMap::decode(&PageMap::encode_full(&base)).unwrap();
        let delta = PageMap::decode(&PageMap::delta(&base, &current).encode()).unwrap();
        assert_eq!(delta.entries.len(), 2);
        let mut pages = Vec::new();
        full.apply(&mut pages);
        delta.apply(&mut pages);
        let got: Vec<_> = pages.into_iter().map(Option::unwrap).collect();
        assert_eq!(got, current);
        let (mut direct, mut mapped) = (Vec::new(), Vec::new());
        PageMap::apply_encoded(&PageMap::encode_full(&base), &mut direct, &mut mapped).unwrap();
        PageMap::apply_encoded(&PageMap::delta(&base, &current).encode(), &mut direct, &mut mapped).unwrap();
        assert_eq!(direct, current);
        assert!(mapped.iter().all(|m| *m));
    }

    #[test]
    fn a_few_bytes_cannot_claim_a_huge_table() {
        // A 17-byte delta claiming 2^32-1 pages, and a full map that lists fewer pages
        // than it claims: refused before the table grows.
        let mut delta = Vec::from(*MAGIC);
        delta.push(1);
        delta.extend_from_slice(&u32::MAX.to_le_bytes());
        delta.extend_from_slice(&0u32.to_le_bytes());
        let (mut pages, mut mapped) = (vec![id(1)], vec![true]);
        assert!(PageMap::apply_encoded(&delta, &mut pages, &mut mapped).is_err());
        assert_eq!(pages.len(), 1);
        let mut full = PageMap::encode_full(&[id(1), id(2)]);
        full[9..13].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(PageMap::apply_encoded(&full, &mut pages, &mut mapped).is_err());
        assert!(pages.capacity() < 1024);
        // A delta may add exactly the pages it lists.
        let grow = PageMap::delta(&[id(1)], &[id(1), id(2), id(3)]).encode();
        PageMap::apply_encoded(&grow, &mut pages, &mut mapped).unwrap();
        assert_eq!(pages, vec![id(1), id(2), id(3)]);
    }

    #[test]
    fn shrinking_database_truncates() {
        let base = vec![id(1), id(2), id(3)];
        let current = vec![id(1)];
        let mut pages = Vec::new();
        PageMap::full(&base).apply(&mut pages);
        PageMap::delta(&base, &current).apply(&mut pages);
        assert_eq!(pages, vec![Some(id(1))]);
    }

    #[test]
    fn truncated_or_unordered_maps_are_rejected() {
        let enc = PageMap::full(&[id(1), id(2)]).encode();
        assert!(PageMap::decode(&enc[..enc.len() - 1]).is_err());
        let mut bad = PageMap::delta(&[id(1), id(2)], &[id(3), id(4)]).encode();
        bad[17 + 36] = 1; // second pgno 1 after first pgno 1: not ascending
        assert!(PageMap::decode(&bad).is_err());
        assert!(matches!(
            PageMap::decode(b"nonsense-bytes-here"),
            Err(FormatError::BadMagic { .. })
        ));
    }
}
