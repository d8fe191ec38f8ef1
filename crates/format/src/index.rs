use crate::{ChunkId, FormatError, ObjectId};

const INDEX_MAGIC: &[u8; 8] = b"SQLVIDX1";
/// Last 8 bytes of every pack's plaintext.
pub const PACK_MAGIC: &[u8; 8] = b"SQLVPAK1";
const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 4;

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
/// Encoding: `"SQLVIDX1"`, `pack_count u32`, then per pack `pack id [16]`,
/// `entry_count u32`, entries (see [`encode_pack_trailer`] for the entry layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// One section per pack.
    pub packs: Vec<PackSection>,
}

fn put_entries(out: &mut Vec<u8>, entries: &[IndexEntry]) {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.frame_offset.to_le_bytes());
        out.extend_from_slice(&e.frame_len.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
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
        let n = self.u32()? as usize;
        if self.bytes.len() < n.saturating_mul(ENTRY_LEN) {
            return Err(FormatError::malformed(self.kind, "entry count exceeds length"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(IndexEntry {
                id: ChunkId(self.take(32)?.try_into().unwrap()),
                frame_offset: self.u64()?,
                frame_len: self.u32()?,
                offset: self.u32()?,
                len: self.u32()?,
            });
        }
        Ok(v)
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
        if bytes.len() < 12 || &bytes[..8] != INDEX_MAGIC {
            return Err(FormatError::BadMagic { kind: "index" });
        }
        let mut c = Cursor {
            kind: "index",
            bytes: &bytes[8..],
        };
        let n = c.u32()? as usize;
        let mut packs = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let pack = ObjectId(c.take(16)?.try_into().unwrap());
            packs.push(PackSection {
                pack,
                entries: c.entries()?,
            });
        }
        if !c.bytes.is_empty() {
            return Err(FormatError::malformed("index", "trailing bytes"));
        }
        Ok(IndexFile { packs })
    }
}

/// The trailer appended to a pack's plaintext after its frames, so that a pack can be
/// checked, and the index rebuilt, from the pack alone:
/// `entry_count u32`, entries × (`chunk id [32]`, `frame_offset u64`, `frame_len u32`,
/// `offset u32`, `len u32`), then `trailer_len u32` (bytes from `entry_count` to here,
/// exclusive) and the magic `"SQLVPAK1"`.
pub fn encode_pack_trailer(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN + 12);
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
