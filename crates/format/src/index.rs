use crate::{ChunkId, FormatError, ObjectId, RepoKeys};

/// Format-1 indexes: no MAC, so anyone holding a recipient could have written one.
const INDEX_MAGIC_V1: &[u8; 8] = b"SQLVIDX1";
/// Format-2 indexes: the body is followed by the repository MAC of everything before it.
const INDEX_MAGIC: &[u8; 8] = b"SQLVIDX2";

/// Whether a decoded index proved that a holder of the repository secret wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexAuth {
    /// A format-2 index whose MAC checked: written by a backup host, copy or prune.
    Authenticated,
    /// A format-1 index (no MAC): a bucket writer with the public recipients could have
    /// made it. Good for finding chunks (each is re-hashed against its id when read),
    /// never for deciding what may be deleted.
    Legacy,
}
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
        // Uniform only if the decoder's `i × chunk_len` (checked) gives every offset back:
        // a wrapped product must not pass for one.
        let uniform = len > 0
            && f.iter()
                .enumerate()
                .all(|(i, e)| e.len == len && u32::try_from(i).ok().and_then(|i| i.checked_mul(len)) == Some(e.offset));
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

    /// Only what [`put_entries`] writes is accepted: it groups every run of entries at
    /// one frame offset into one frame, so two frames in a row at the same offset (one
    /// frame with two lengths) and a frame with no chunks are malformed. Accepting them
    /// would let a re-encoding (prune rewrites index sections from decoded entries)
    /// silently give one frame's chunks the other frame's length.
    fn entries_with(&mut self, mut f: impl FnMut(IndexEntry)) -> Result<(), FormatError> {
        let frames = self.u32()? as usize;
        let mut previous: Option<u64> = None;
        for _ in 0..frames {
            let frame_offset = self.u64()?;
            let frame_len = self.u32()?;
            let chunk_len = self.u32()?;
            let n = self.u32()? as usize;
            if n == 0 {
                return Err(FormatError::malformed(self.kind, "a frame with no chunks"));
            }
            if previous == Some(frame_offset) {
                return Err(FormatError::malformed(
                    self.kind,
                    "two frames in a row at the same offset",
                ));
            }
            previous = Some(frame_offset);
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
    /// Serialises the index (format 2: MAC'd under `keys`).
    pub fn encode(&self, keys: &RepoKeys) -> Vec<u8> {
        let sections: Vec<(ObjectId, Vec<u8>)> = self
            .packs
            .iter()
            .map(|p| (p.pack, encode_entries(&p.entries)))
            .collect();
        let mut out = Vec::new();
        write_index(&mut out, keys, sections.iter().map(|(p, e)| (p, &e[..]))).expect("writing to a Vec cannot fail");
        out
    }

    /// Parses an index, authenticating it first when it is of format 2.
    pub fn decode(bytes: &[u8], keys: &RepoKeys) -> Result<(Self, IndexAuth), FormatError> {
        let mut packs: Vec<PackSection> = Vec::new();
        let auth = Self::decode_with(bytes, keys, |pack, e| match packs.last_mut() {
            Some(p) if p.pack == pack => p.entries.push(e),
            _ => packs.push(PackSection { pack, entries: vec![e] }),
        })?;
        Ok((IndexFile { packs }, auth))
    }

    /// Validates an index and hands each `(pack, entry)` to `f` without building lists
    /// (an index of a 4 GiB backup holds a million entries). A format-2 index is
    /// authenticated before `f` sees any entry; a format-1 index is decoded and
    /// reported as [`IndexAuth::Legacy`].
    pub fn decode_with(
        bytes: &[u8],
        keys: &RepoKeys,
        mut f: impl FnMut(ObjectId, IndexEntry),
    ) -> Result<IndexAuth, FormatError> {
        let (body, auth) = match bytes.get(..8) {
            Some(m) if m == INDEX_MAGIC => {
                let split = bytes
                    .len()
                    .checked_sub(32)
                    .filter(|&n| n >= 12)
                    .ok_or_else(|| FormatError::malformed("index", "ends early"))?;
                let (body, mac) = bytes.split_at(split);
                if !keys.verify_mac(body, mac.try_into().expect("32 bytes")) {
                    return Err(FormatError::Unauthentic { kind: "index" });
                }
                (body, IndexAuth::Authenticated)
            }
            Some(m) if m == INDEX_MAGIC_V1 => (bytes, IndexAuth::Legacy),
            _ => return Err(FormatError::BadMagic { kind: "index" }),
        };
        if body.len() < 12 {
            return Err(FormatError::malformed("index", "ends early"));
        }
        let mut c = Cursor {
            kind: "index",
            bytes: &body[8..],
        };
        let n = c.u32()? as usize;
        let mut previous = None;
        for _ in 0..n {
            let pack = ObjectId(c.take(16)?.try_into().unwrap());
            // Writers list each pack once; the same pack twice in a row would be read as
            // one section, whose frames the checks above never saw side by side.
            if previous == Some(pack) {
                return Err(FormatError::malformed("index", "the same pack twice in a row"));
            }
            previous = Some(pack);
            c.entries_with(|e| f(pack, e))?;
        }
        if !c.bytes.is_empty() {
            return Err(FormatError::malformed("index", "trailing bytes"));
        }
        Ok(auth)
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

/// Writes a format-2 index from already encoded sections (`(pack,
/// encode_entries(..))`), byte for byte what [`IndexFile::encode`] gives for the same
/// entries: magic, sections, then the MAC under `keys` of all of that, computed as it
/// streams.
pub fn write_index<'a>(
    w: &mut impl std::io::Write,
    keys: &RepoKeys,
    sections: impl ExactSizeIterator<Item = (&'a ObjectId, &'a [u8])>,
) -> std::io::Result<()> {
    let mut mac = keys.mac_hasher();
    let mut put = |w: &mut dyn std::io::Write, b: &[u8]| {
        mac.update(b);
        w.write_all(b)
    };
    put(w, INDEX_MAGIC)?;
    put(w, &(sections.len() as u32).to_le_bytes())?;
    for (pack, entries) in sections {
        put(w, &pack.0)?;
        put(w, entries)?;
    }
    w.write_all(mac.finalize().as_bytes())
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
        if e.frame_offset
            .checked_add(e.frame_len as u64)
            .is_none_or(|end| end > start as u64)
            || e.offset.checked_add(e.len).is_none()
        {
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
        let keys = crate::RepoSecret::generate().keys();
        let enc = idx.encode(&keys);
        assert_eq!(
            IndexFile::decode(&enc, &keys).unwrap(),
            (idx.clone(), IndexAuth::Authenticated)
        );
        assert!(IndexFile::decode(&enc[..enc.len() - 3], &keys).is_err());
    }

    #[test]
    fn an_index_without_the_secret_is_never_authenticated() {
        let keys = crate::RepoSecret::generate().keys();
        let idx = IndexFile {
            packs: vec![PackSection {
                pack: ObjectId([7; 16]),
                entries: vec![entry(1, 0), entry(2, 0)],
            }],
        };
        // Another repository's key (what a bucket writer can make), one flipped bit.
        let forged = idx.encode(&crate::RepoSecret::generate().keys());
        assert!(matches!(
            IndexFile::decode(&forged, &keys),
            Err(FormatError::Unauthentic { .. })
        ));
        let mut flipped = idx.encode(&keys);
        flipped[30] ^= 1;
        assert!(matches!(
            IndexFile::decode(&flipped, &keys),
            Err(FormatError::Unauthentic { .. })
        ));
        // A format-1 index (no MAC) still decodes, as legacy.
        let mut v1 = idx.encode(&keys);
        v1.truncate(v1.len() - 32);
        v1[..8].copy_from_slice(INDEX_MAGIC_V1);
        assert_eq!(IndexFile::decode(&v1, &keys).unwrap(), (idx, IndexAuth::Legacy));
        for junk in [
            &b""[..],
            b"SQLVIDX2",
            b"SQLVIDX1\xff\xff\xff\xff",
            b"garbage garbage garbage garbage garbage",
        ] {
            assert!(IndexFile::decode(junk, &keys).is_err());
        }
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
        let keys = crate::RepoSecret::generate().keys();
        let mut out = Vec::new();
        write_index(&mut out, &keys, [(&ObjectId([7; 16]), &raw[..])].into_iter()).unwrap();
        assert_eq!(out, idx.encode(&keys));
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
        // Offsets that overflow when added are refused, not wrapped.
        let mut huge = vec![0u8; 20];
        huge.extend(encode_pack_trailer(&[IndexEntry {
            frame_offset: u64::MAX - 1,
            ..entry(1, 0)
        }]));
        assert!(decode_pack_trailer(&huge).is_err());
        let mut huge = vec![0u8; 20];
        huge.extend(encode_pack_trailer(&[
            IndexEntry {
                offset: u32::MAX,
                len: 2,
                ..entry(1, 0)
            },
            entry(2, 10),
        ]));
        assert!(decode_pack_trailer(&huge).is_err());
    }
}

#[cfg(test)]
mod fuzz_regressions {
    //! Inputs found by `cargo xtask fuzz` (targets entries, pack_trailer, index),
    //! minimized. Each decoded, and re-encoding it changed an entry: `put_entries` merges
    //! a run of entries at one frame offset into one frame, so the chunks of the second
    //! frame took the first frame's length.
    use super::*;

    /// Two frames in a row at offset 0, of lengths 9 and 3.
    const TWO_LENGTHS_AT_ONE_OFFSET: &[u8] = &[
        2, 0, 0, 0, // frame_count 2
        // frame at offset 0, 9 bytes long; chunk_len 0 (explicit chunks); 1 chunk
        0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, // id
        0, 0, 0, 0, 100, 0, 0, 0, // offset 0, len 100
        // frame at offset 0 again, 3 bytes long: one frame, two lengths
        0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, // id
        0, 0, 0, 0, 232, 3, 0, 0, // offset 0, len 1000
    ];

    fn entries_of(bytes: &[u8]) -> Result<Vec<IndexEntry>, FormatError> {
        let mut v = Vec::new();
        decode_entries(bytes, |e| v.push(e))?;
        Ok(v)
    }

    #[test]
    fn entries_with_two_lengths_for_one_frame_are_malformed() {
        assert_eq!(TWO_LENGTHS_AT_ONE_OFFSET.len(), 4 + 2 * (20 + 40));
        assert!(matches!(
            entries_of(TWO_LENGTHS_AT_ONE_OFFSET),
            Err(FormatError::Malformed { .. })
        ));
        // The same two frames at distinct offsets are fine, and round-trip.
        let mut ok = TWO_LENGTHS_AT_ONE_OFFSET.to_vec();
        ok[64] = 9;
        let entries = entries_of(&ok).unwrap();
        assert_eq!(entries[1].frame_offset, 9);
        assert_eq!(entries_of(&encode_entries(&entries)).unwrap(), entries);
    }

    #[test]
    fn entries_with_an_empty_frame_are_malformed() {
        // Frames at 0, 5 (no chunks) and 0 again: without the empty one in between they
        // are the case above.
        let mut b = vec![3, 0, 0, 0];
        b.extend_from_slice(&TWO_LENGTHS_AT_ONE_OFFSET[4..64]);
        b.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&TWO_LENGTHS_AT_ONE_OFFSET[64..]);
        assert!(matches!(entries_of(&b), Err(FormatError::Malformed { .. })));
        // A list of no frames at all is what encoding no entries gives.
        assert_eq!(entries_of(&encode_entries(&[])).unwrap(), vec![]);
    }

    #[test]
    fn pack_trailer_with_two_lengths_for_one_frame_is_malformed() {
        // 12 bytes of frames, the entries, trailer_len, magic.
        let mut pack = vec![0x28; 12];
        pack.extend_from_slice(TWO_LENGTHS_AT_ONE_OFFSET);
        pack.extend_from_slice(&(TWO_LENGTHS_AT_ONE_OFFSET.len() as u32).to_le_bytes());
        pack.extend_from_slice(PACK_MAGIC);
        assert!(matches!(decode_pack_trailer(&pack), Err(FormatError::Malformed { .. })));
    }

    fn index_of(sections: &[(u8, &[u8])], keys: &RepoKeys) -> Vec<u8> {
        let mut b = INDEX_MAGIC.to_vec();
        b.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (pack, entries) in sections {
            b.extend_from_slice(&[*pack; 16]);
            b.extend_from_slice(entries);
        }
        let mac = keys.mac(&b);
        b.extend_from_slice(&mac);
        b
    }

    #[test]
    fn authenticated_index_with_two_lengths_for_one_frame_is_malformed() {
        // The MAC is right (a backup host's key): the body must still be refused.
        let keys = crate::RepoSecret::from_bytes([7; 32]).keys();
        let bad = index_of(&[(7, TWO_LENGTHS_AT_ONE_OFFSET)], &keys);
        assert!(matches!(
            IndexFile::decode(&bad, &keys),
            Err(FormatError::Malformed { .. })
        ));
    }

    /// Minimized from fuzz/artifacts/entries/crash-7c49a0ed…: one frame of explicit
    /// chunks, each `0x8000_0001` bytes long, at offsets 0, `0x8000_0001` and 2 — what
    /// `i × len` gives when it wraps. The encoder's uniformity test overflowed (a panic
    /// with overflow checks, else a "uniform" frame that the decoder then refuses).
    const OFFSETS_THAT_WRAP: &[u8] = &[
        1, 0, 0, 0, // frame_count 1
        // frame at offset 0, 9 bytes long; chunk_len 0 (explicit chunks); 3 chunks
        0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, //
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, // id
        0, 0, 0, 0, 1, 0, 0, 0x80, // offset 0, len 0x8000_0001
        2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, // id
        1, 0, 0, 0x80, 1, 0, 0, 0x80, // offset 0x8000_0001, len 0x8000_0001
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, // id
        2, 0, 0, 0, 1, 0, 0, 0x80, // offset 2 (= 2 × 0x8000_0001 wrapped), len 0x8000_0001
    ];

    #[test]
    fn entries_whose_offsets_wrap_re_encode_without_overflow() {
        let entries = entries_of(OFFSETS_THAT_WRAP).unwrap();
        assert_eq!(entries.len(), 3);
        let enc = encode_entries(&entries);
        assert_eq!(enc, OFFSETS_THAT_WRAP, "not a uniform frame: written as it came");
        assert_eq!(entries_of(&enc).unwrap(), entries);
        let mut pack = vec![0; 9];
        pack.extend_from_slice(&encode_pack_trailer(&entries));
        assert_eq!(
            decode_pack_trailer(&pack).map(|(e, _)| e).ok(),
            None,
            "chunk ends overflow"
        );
    }

    #[test]
    fn index_listing_one_pack_twice_in_a_row_is_malformed() {
        // Each section alone is one valid frame; read as one pack they are the case above.
        let keys = crate::RepoSecret::from_bytes([7; 32]).keys();
        let mut first = vec![1, 0, 0, 0];
        first.extend_from_slice(&TWO_LENGTHS_AT_ONE_OFFSET[4..64]);
        let mut second = vec![1, 0, 0, 0];
        second.extend_from_slice(&TWO_LENGTHS_AT_ONE_OFFSET[64..]);
        let bad = index_of(&[(7, &first), (7, &second)], &keys);
        assert!(matches!(
            IndexFile::decode(&bad, &keys),
            Err(FormatError::Malformed { .. })
        ));
        // Two packs, or the same pack with another in between, decode and round-trip.
        for order in [[7, 8, 7], [7, 8, 9]] {
            let ok = index_of(&[(order[0], &first), (order[1], &second), (order[2], &first)], &keys);
            let (idx, auth) = IndexFile::decode(&ok, &keys).unwrap();
            assert_eq!(auth, IndexAuth::Authenticated);
            assert_eq!(idx.packs.len(), 3);
            assert_eq!(IndexFile::decode(&idx.encode(&keys), &keys).unwrap().0, idx);
        }
    }
}
