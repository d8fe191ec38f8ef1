use crate::{ChunkId, FormatError, ObjectId};

const INDEX_MAGIC: &[u8; 8] = b"SQLVIDX1";
/// Last 8 bytes of every pack's plaintext.
pub const PACK_MAGIC: &[u8; 8] = b"SQLVPAK1";

/// Where one chunk lives inside a pack's plaintext: the zstd frame that holds it
/// (`frame_offset`, `frame_len`) and its place in that frame's decompressed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Byte offset of the frame in the pack plaintext.
    pub frame_offset: u64,
    /// Compressed length of the frame.
    pub frame_len: u32,
    /// Offset of the chunk in the decompressed frame.
    pub offset: u32,
    /// Length of the chunk.
    pub len: u32,
}

/// The entries of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSection {
    /// The pack object.
    pub pack: ObjectId,
    /// Its chunks.
    pub entries: Vec<IndexEntry>,
}

/// An index object: which chunks each listed pack holds.
///
/// Encoding: `"SQLVIDX1"`, `pack_count u32`, then per pack `pack id [16]` and its
/// entries grouped by frame (see [`encode_pack_trailer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// One section per pack.
    pub packs: Vec<PackSection>,
}

/// Entries are stored grouped by frame, since most of what an entry says is the
/// frame's: `frame_count u32`, then per frame `frame_offset u64`, `frame_len u32`,
/// `chunk_len u32`, `chunk_count u32`, and either `chunk_count` × `id [32]` when
/// `chunk_len > 0` (chunk *i* at offset `i × chunk_len`, the page case) or
/// `chunk_count` × (`id [32]`, `offset u32`, `len u32`) when `chunk_len == 0`.
fn put_entries(out: &mut Vec<u8>, entries: &[IndexEntry]) {
    let mut frames: Vec<&[IndexEntry]> = Vec::new();
    let mut start = 0;
    for i in 1..=entries.len() {
        if i == entries.len() || entries[i].frame_offset != entries[start].frame_offset {
            frames.push(&entries[start..i]);
            start = i;
        }
    }
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for f in frames {
        let len = f[0].len;
        let uniform = len > 0
            && f.iter()
                .enumerate()
                .all(|(i, e)| e.len == len && e.offset == i as u32 * len);
        out.extend_from_slice(&f[0].frame_offset.to_le_bytes());
        out.extend_from_slice(&f[0].frame_len.to_le_bytes());
        out.extend_from_slice(&(if uniform { len } else { 0 }).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        for e in f {
            out.extend_from_slice(&e.id.0);
            if !uniform {
                out.extend_from_slice(&e.offset.to_le_bytes());
                out.extend_from_slice(&e.len.to_le_bytes());
            }
        }
    }
}

struct Cursor<'a> {
    kind: &'static str,
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.bytes.len() < n {
            return Err(FormatError::malformed(self.kind, "ends early"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn entries(&mut self) -> Result<Vec<IndexEntry>, FormatError> {
        let mut v = Vec::new();
        self.entries_with(|e| v.push(e))?;
        Ok(v)
    }

    fn entries_with(&mut self, mut f: impl FnMut(IndexEntry)) -> Result<(), FormatError> {
        let frames = self.u32()? as usize;
        for _ in 0..frames {
            let frame_offset = self.u64()?;
            let frame_len = self.u32()?;
            let chunk_len = self.u32()?;
            let n = self.u32()? as usize;
            let rec = if chunk_len > 0 { 32 } else { 40 };
            if self.bytes.len() < n.saturating_mul(rec) {
                return Err(FormatError::malformed(self.kind, "chunk count exceeds length"));
            }
            for i in 0..n {
                let id = ChunkId(self.take(32)?.try_into().unwrap());
                let (offset, len) = if chunk_len > 0 {
                    let off = (i as u32)
                        .checked_mul(chunk_len)
                        .ok_or_else(|| FormatError::malformed(self.kind, "frame too large"))?;
                    (off, chunk_len)
                } else {
                    (self.u32()?, self.u32()?)
                };
                f(IndexEntry {
                    id,
                    frame_offset,
                    frame_len,
                    offset,
                    len,
                });
            }
        }
        Ok(())
    }
}

impl IndexFile {
    /// Serialises the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.pack.0);
            put_entries(&mut out, &p.entries);
        }
        out
    }

    /// Parses an index.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut packs: Vec<PackSection> = Vec::new();
        Self::decode_with(bytes, |pack, e| match packs.last_mut() {
            Some(p) if p.pack == pack => p.entries.push(e),
            _ => packs.push(PackSection { pack, entries: vec![e] }),
        })?;
        Ok(IndexFile { packs })
    }

    /// Validates an index and hands each `(pack, entry)` to `f` without building lists
    /// (an index of a 4 GiB backup holds a million entries).
    pub fn decode_with(bytes: &[u8], mut f: impl FnMut(ObjectId, IndexEntry)) -> Result<(), FormatError> {
        if bytes.len() < 12 || &bytes[..8] != INDEX_MAGIC {
            return Err(FormatError::BadMagic { kind: "index" });
        }
        let mut c = Cursor {
            kind: "index",
            bytes: &bytes[8..],
        };
        let n = c.u32()? as usize;
        for _ in 0..n {
            let pack = ObjectId(c.take(16)?.try_into().unwrap());
            c.entries_with(|e| f(pack, e))?;
        }
        if !c.bytes.is_empty() {
            return Err(FormatError::malformed("index", "trailing bytes"));
        }
        Ok(())
    }
}

/// The entries of one pack in the frame-grouped encoding shared by pack trailers and
/// index sections: ~32 bytes a page-sized chunk, the form a writer keeps in memory.
pub fn encode_entries(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 32 + 20);
    put_entries(&mut out, entries);
    out
}

/// Visits entries written by [`encode_entries`].
pub fn decode_entries(bytes: &[u8], f: impl FnMut(IndexEntry)) -> Result<(), FormatError> {
    let mut c = Cursor {
        kind: "index entries",
        bytes,
    };
    c.entries_with(f)?;
    if !c.bytes.is_empty() {
        return Err(FormatError::malformed("index entries", "trailing bytes"));
    }
    Ok(())
}

/// Writes an index from already encoded sections (`(pack, encode_entries(..))`),
/// byte for byte what [`IndexFile::encode`] gives for the same entries.
pub fn write_index<'a>(
    w: &mut impl std::io::Write,
    sections: impl ExactSizeIterator<Item = (&'a ObjectId, &'a [u8])>,
) -> std::io::Result<()> {
    w.write_all(INDEX_MAGIC)?;
    w.write_all(&(sections.len() as u32).to_le_bytes())?;
    for (pack, entries) in sections {
        w.write_all(&pack.0)?;
        w.write_all(entries)?;
    }
    Ok(())
}

/// The trailer appended to a pack's plaintext after its frames, so that a pack can be
/// checked, and the index rebuilt, from the pack alone: the pack's entries in the
/// frame-grouped encoding described at `put_entries`, then `trailer_len u32` (bytes
/// of the entries) and the magic `"SQLVPAK1"`.
pub fn encode_pack_trailer(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 32 + 12);
    put_entries(&mut out, entries);
    let len = out.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(PACK_MAGIC);
    out
}

/// Parses the trailer at the end of a pack plaintext. Returns the entries and the
/// length of the frame area that precedes the trailer; checks that every entry's frame
/// lies inside that area.
pub fn decode_pack_trailer(plaintext: &[u8]) -> Result<(Vec<IndexEntry>, usize), FormatError> {
    let kind = "pack";
    let n = plaintext.len();
    if n < 12 || &plaintext[n - 8..] != PACK_MAGIC {
        return Err(FormatError::BadMagic { kind });
    }
    let tlen = u32::from_le_bytes(plaintext[n - 12..n - 8].try_into().unwrap()) as usize;
    if tlen > n - 12 {
        return Err(FormatError::malformed(kind, "trailer length exceeds pack"));
    }
    let start = n - 12 - tlen;
    let mut c = Cursor {
        kind,
        bytes: &plaintext[start..n - 12],
    };
    let entries = c.entries()?;
    if !c.bytes.is_empty() {
        return Err(FormatError::malformed(kind, "trailing bytes in trailer"));
    }
    for e in &entries {
        if e.frame_offset + e.frame_len as u64 > start as u64 {
            return Err(FormatError::malformed(kind, "frame outside pack"));
        }
    }
    Ok((entries, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: u8, off: u64) -> IndexEntry {
        IndexEntry {
            id: ChunkId([b; 32]),
            frame_offset: off,
            frame_len: 10,
            offset: 4096 * b as u32,
            len: 4096,
        }
    }

    #[test]
    fn index_round_trip_and_truncation() {
        let idx = IndexFile {
            packs: vec![PackSection {
                pack: ObjectId([7; 16]),
                entries: vec![entry(1, 0), entry(2, 0), entry(3, 10)],
            }],
        };
        let enc = idx.encode();
        assert_eq!(IndexFile::decode(&enc).unwrap(), idx);
        assert!(IndexFile::decode(&enc[..enc.len() - 3]).is_err());
    }

    #[test]
    fn variable_length_chunks_round_trip() {
        let entries = vec![
            IndexEntry {
                id: ChunkId([1; 32]),
                frame_offset: 0,
                frame_len: 9,
                offset: 0,
                len: 100,
            },
            IndexEntry {
                id: ChunkId([2; 32]),
                frame_offset: 0,
                frame_len: 9,
                offset: 100,
                len: 7,
            },
            IndexEntry {
                id: ChunkId([3; 32]),
                frame_offset: 9,
                frame_len: 3,
                offset: 0,
                len: 4096,
            },
        ];
        let mut pack = vec![0u8; 12];
        pack.extend(encode_pack_trailer(&entries));
        assert_eq!(decode_pack_trailer(&pack).unwrap().0, entries);
    }

    #[test]
    fn raw_sections_encode_like_the_index() {
        let entries = vec![entry(1, 0), entry(2, 0), entry(3, 10)];
        let idx = IndexFile {
            packs: vec![PackSection {
                pack: ObjectId([7; 16]),
                entries: entries.clone(),
            }],
        };
        let raw = encode_entries(&entries);
        let mut out = Vec::new();
        write_index(&mut out, [(&ObjectId([7; 16]), &raw[..])].into_iter()).unwrap();
        assert_eq!(out, idx.encode());
        let mut seen = Vec::new();
        decode_entries(&raw, |e| seen.push(e)).unwrap();
        assert_eq!(seen, entries);
    }

    #[test]
    fn pack_trailer_round_trip() {
        let mut pack = vec![0u8; 20];
        let entries = vec![entry(1, 0), entry(2, 10)];
        pack.extend(encode_pack_trailer(&entries));
        let (got, frames_end) = decode_pack_trailer(&pack).unwrap();
        assert_eq!(got, entries);
        assert_eq!(frames_end, 20);
        // A frame pointing past the frame area is malformed.
        let mut bad = vec![0u8; 5];
        bad.extend(encode_pack_trailer(&entries));
        assert!(decode_pack_trailer(&bad).is_err());
    }
}
