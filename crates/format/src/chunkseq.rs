//! Chunk sequences: which chunks, in order, make a dump snapshot's SQL stream.
//!
//! Encoding (little endian): `"SQLVSEQ1"`, kind `u8` (0 full, 1 edit), `chunk_count
//! u32` and `total_bytes u64` of the sequence after applying, `op_count u32`, then
//! - full: `chunk_count` × (`id [32]`, `len u32`);
//! - edit: `op_count` ops against the base sequence, each `tag u8` then
//!   copy (`0`): `start u32`, `count u32` — that range of the base, in order;
//!   new (`1`): `count u32`, `count` × (`id [32]`, `len u32`).
//!
//! An edit lists what changed, so a dump snapshot after a small change costs metadata in
//! proportion to the change (a full sequence is 36 bytes a chunk).

use crate::{ChunkId, FormatError};

const MAGIC: &[u8; 8] = b"SQLVSEQ1";
const KIND: &str = "chunk sequence";

/// A whole sequence: ids and lengths, in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSeq {
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
    /// Their lengths in bytes.
    pub lens: Vec<u32>,
}

/// One step of an edit script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqOp {
    /// `count` chunks of the base starting at `start`.
    Copy {
        /// First chunk of the base.
        start: u32,
        /// How many.
        count: u32,
    },
    /// Chunks not at a reusable place in the base.
    New(Vec<(ChunkId, u32)>),
}

impl ChunkSeq {
    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.lens.iter().map(|&l| l as u64).sum()
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The full encoding.
    pub fn encode_full(&self) -> Vec<u8> {
        let mut out = header(0, self.len() as u32, self.total_bytes(), self.len() as u32);
        out.reserve(self.len() * 36);
        for (id, len) in self.ids.iter().zip(&self.lens) {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&len.to_le_bytes());
        }
        out
    }

    /// An edit script turning `base` into `self`: runs of `base` that reappear in order
    /// are copied, everything else is listed. `None` when the script would exceed
    /// `limit` bytes (write a full sequence then).
    pub fn edit_from(&self, base: &ChunkSeq, limit: usize) -> Option<Vec<u8>> {
        // Where each id first appears in the base, keyed by its first 8 bytes (ids are
        // keyed hashes, so those are uniform); equality is checked on the full id.
        let mut at: hashbrown::HashTable<u32> = hashbrown::HashTable::with_capacity(base.len());
        let key = |id: &ChunkId| u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        for (i, id) in base.ids.iter().enumerate() {
            let h = key(id);
            if at.find(h, |&j| base.ids[j as usize] == *id).is_none() {
                at.insert_unique(h, i as u32, |&j| key(&base.ids[j as usize]));
            }
        }
        let mut ops: Vec<SeqOp> = Vec::new();
        let mut size = 25usize;
        let mut next: Option<usize> = None; // base position that would continue the last copy
        for (id, &len) in self.ids.iter().zip(&self.lens) {
            if let Some(p) = next
                && base.ids.get(p) == Some(id)
                && base.lens[p] == len
                && let Some(SeqOp::Copy { count, .. }) = ops.last_mut()
            {
                *count += 1;
                next = Some(p + 1);
                continue;
            }
            match at.find(key(id), |&j| base.ids[j as usize] == *id) {
                Some(&q) if base.lens[q as usize] == len => {
                    ops.push(SeqOp::Copy { start: q, count: 1 });
                    size += 9;
                    next = Some(q as usize + 1);
                }
                _ => {
                    match ops.last_mut() {
                        Some(SeqOp::New(v)) => v.push((*id, len)),
                        _ => {
                            ops.push(SeqOp::New(vec![(*id, len)]));
                            size += 5;
                        }
                    }
                    size += 36;
                    next = None;
                }
            }
            if size > limit {
                return None;
            }
        }
        let mut out = header(1, self.len() as u32, self.total_bytes(), ops.len() as u32);
        for op in &ops {
            match op {
                SeqOp::Copy { start, count } => {
                    out.push(0);
                    out.extend_from_slice(&start.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
                SeqOp::New(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    for (id, len) in v {
                        out.extend_from_slice(&id.0);
                        out.extend_from_slice(&len.to_le_bytes());
                    }
                }
            }
        }
        Some(out)
    }

    /// Applies an encoded full sequence or edit on top of `self` (the base).
    pub fn apply_encoded(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let bad = |d: &str| FormatError::malformed(KIND, d.to_string());
        if bytes.len() < 25 || &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic { kind: KIND });
        }
        let kind = bytes[8];
        let count = u32::from_le_bytes(bytes[9..13].try_into().expect("4")) as usize;
        let total = u64::from_le_bytes(bytes[13..21].try_into().expect("8"));
        let ops = u32::from_le_bytes(bytes[21..25].try_into().expect("4")) as usize;
        let mut body = &bytes[25..];
        let mut take = |n: usize| -> Result<&[u8], FormatError> {
            if body.len() < n {
                return Err(bad("ends early"));
            }
            let (h, t) = body.split_at(n);
            body = t;
            Ok(h)
        };
        // Memory follows what the bytes describe, never the declared count alone: a
        // full sequence lists every chunk (36 bytes each); an edit grows only as its
        // operations run, and never past its count (which the caller bounds by the
        // manifest: an edit may legitimately copy a repeated run of its base many times).
        let listed = (bytes.len() - 25) / 36;
        if kind == 0 && count > listed {
            return Err(bad("chunk count exceeds what the sequence lists"));
        }
        let reserve = count.min(listed + self.len());
        let mut out = ChunkSeq {
            ids: Vec::with_capacity(reserve),
            lens: Vec::with_capacity(reserve),
        };
        match kind {
            0 => {
                if ops != count {
                    return Err(bad("full sequence count mismatch"));
                }
                for _ in 0..count {
                    let r = take(36)?;
                    out.ids.push(ChunkId(r[..32].try_into().expect("32")));
                    out.lens.push(u32::from_le_bytes(r[32..].try_into().expect("4")));
                }
            }
            1 => {
                for _ in 0..ops {
                    match take(1)?[0] {
                        0 => {
                            let r = take(8)?;
                            let start = u32::from_le_bytes(r[..4].try_into().expect("4")) as usize;
                            let n = u32::from_le_bytes(r[4..].try_into().expect("4")) as usize;
                            let end = start.checked_add(n).filter(|&e| e <= self.len());
                            let Some(end) = end else {
                                return Err(bad("copy outside the base sequence"));
                            };
                            if out.len() + n > count {
                                return Err(bad("an edit copies more than its count"));
                            }
                            out.ids.extend_from_slice(&self.ids[start..end]);
                            out.lens.extend_from_slice(&self.lens[start..end]);
                        }
                        1 => {
                            let n = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
                            if out.len() + n > count {
                                return Err(bad("an edit adds more than its count"));
                            }
                            for _ in 0..n {
                                let r = take(36)?;
                                out.ids.push(ChunkId(r[..32].try_into().expect("32")));
                                out.lens.push(u32::from_le_bytes(r[32..].try_into().expect("4")));
                            }
                        }
                        t => return Err(bad(&format!("unknown op {t}"))),
                    }
                }
            }
            k => return Err(bad(&format!("unknown kind {k}"))),
        }
        if !body.is_empty() {
            return Err(bad("trailing bytes"));
        }
        if out.len() != count || out.total_bytes() != total {
            return Err(bad("count or size does not match the header"));
        }
        *self = out;
        Ok(())
    }
}

fn header(kind: u8, count: u32, total: u64, ops: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&ops.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(ids: &[u8]) -> ChunkSeq {
        ChunkSeq {
            ids: ids.iter().map(|&b| ChunkId([b; 32])).collect(),
            lens: ids.iter().map(|&b| 100 + b as u32).collect(),
        }
    }

    fn header(kind: u8, count: u32, ops: u32) -> Vec<u8> {
        let mut b = Vec::from(*MAGIC);
        b.push(kind);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&ops.to_le_bytes());
        b
    }

    #[test]
    fn a_few_bytes_cannot_claim_a_huge_sequence() {
        // A full sequence claiming 2^32-1 chunks it does not list.
        let mut s = ChunkSeq::default();
        assert!(s.apply_encoded(&header(0, u32::MAX, u32::MAX)).is_err());
        // An edit copying its whole base over and over, past the count it declares.
        let mut base = seq(&[1, 2, 3]);
        let mut edit = header(1, 3, 1000);
        for _ in 0..1000 {
            edit.push(0);
            edit.extend_from_slice(&0u32.to_le_bytes());
            edit.extend_from_slice(&3u32.to_le_bytes());
        }
        assert!(base.apply_encoded(&edit).is_err());
        assert_eq!(base, seq(&[1, 2, 3]));
    }

    #[test]
    fn edits_copy_what_stayed_and_list_what_changed() {
        let base = seq(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let cur = seq(&[1, 2, 9, 4, 5, 6, 10, 11, 8, 1]);
        let edit = cur.edit_from(&base, usize::MAX).unwrap();
        assert!(edit.len() < cur.encode_full().len());
        let mut applied = base.clone();
        applied.apply_encoded(&edit).unwrap();
        assert_eq!(applied, cur);
        let mut full = ChunkSeq::default();
        full.apply_encoded(&cur.encode_full()).unwrap();
        assert_eq!(full, cur);
        assert!(cur.edit_from(&base, 40).is_none(), "limit respected");
        // Applied to the wrong base, a copy out of range or a size mismatch is caught.
        let mut short = seq(&[1]);
        assert!(short.apply_encoded(&edit).is_err());
        let mut cut = base.clone();
        assert!(cut.apply_encoded(&edit[..edit.len() - 1]).is_err());
    }
}
