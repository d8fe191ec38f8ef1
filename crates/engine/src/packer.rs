//! Packs: building them frame by frame (backup's workers and [`Packer`] share
//! [`PackBuilder`] and [`compress_checked`]), indexing them, and reading chunks back
//! out. [`Packer`] writes chunks one at a time, for repacking and copy; backup has its own
//! multi-threaded pipeline around the same pieces.

use std::io::{Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use sqlvault_compress::{FrameCompressor, FrameDecompressor};
use sqlvault_crypt::EncryptWriter;
use sqlvault_format::{ChunkId, IndexEntry, ObjectId, PACK_MAGIC, encode_entries, layout, write_index};

use crate::error::{Error, ErrorKind, Result, corrupt, crypt_err, io_err};
use crate::repo::{Repo, get_or};

/// A decrypting reader over one pack (one GET), its name for messages and the size of
/// its ciphertext (which bounds every offset into its plaintext).
async fn open_pack(
    repo: &Repo,
    pack: &ObjectId,
) -> Result<(
    String,
    u64,
    sqlvault_crypt::age::stream::StreamReader<std::io::Cursor<Bytes>>,
)> {
    repo.require_data_access("reading packs")?;
    let what = format!("pack {}", pack.short());
    let ct = get_or(&repo.store, &layout::pack(pack), || {
        Error::new(
            ErrorKind::Integrity,
            "repo.missing-object",
            format!("{what} is missing from {}", repo.store.describe()),
        )
    })
    .await?;
    let ct_len = ct.len() as u64;
    let r =
        sqlvault_crypt::decrypt_reader(&repo.identities, std::io::Cursor::new(ct)).map_err(|e| crypt_err(&what, e))?;
    Ok((what, ct_len, r))
}

/// Reads the chunks `wanted` (entries of pack `pack`, from an index) out of it: one GET,
/// only the frames that hold them decrypted and decompressed, every chunk re-hashed
/// against its id. Calls `f` for each, in frame order.
pub(crate) async fn read_chunks(
    repo: &Repo,
    pack: &ObjectId,
    wanted: &mut [IndexEntry],
    mut f: impl FnMut(&IndexEntry, &[u8]) -> Result<()>,
) -> Result<()> {
    let (what, ct_len, mut r) = open_pack(repo, pack).await?;
    let mut dec = FrameDecompressor::new().map_err(|e| io_err("zstd", e))?;
    wanted.sort_by_key(|e| (e.frame_offset, e.offset));
    let (mut frame, mut plain) = (Vec::new(), Vec::new());
    let mut current = u64::MAX;
    for e in wanted.iter() {
        if e.frame_offset != current {
            // The plaintext is shorter than the object: a frame that does not fit in it
            // is refused before anything is allocated for it.
            if e.frame_offset.saturating_add(e.frame_len as u64) > ct_len {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!("{what} is truncated or corrupt: an index entry points past its end"),
                ));
            }
            frame.resize(e.frame_len as usize, 0);
            r.seek(SeekFrom::Start(e.frame_offset))
                .map_err(|err| corrupt(&what, err))?;
            r.read_exact(&mut frame).map_err(|err| corrupt(&what, err))?;
            let bound = sqlvault_compress::frame_content_size(&frame)
                .unwrap_or(16 << 20)
                .min(64 << 20) as usize;
            dec.decompress_into(&frame, &mut plain, bound)
                .map_err(|err| corrupt(&what, err))?;
            current = e.frame_offset;
        }
        let data = plain
            .get(e.offset as usize..(e.offset as usize + e.len as usize))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!("{what}: chunk lies outside its frame"),
                )
            })?;
        if repo.keys.chunk_id(data) != e.id {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                format!(
                    "{what}: chunk {} does not match its id (tampered or corrupt)",
                    &e.id.to_hex()[..16]
                ),
            ));
        }
        f(e, data)?;
    }
    Ok(())
}

/// The entries a pack's own trailer lists: what it really holds, whatever an index
/// says. One GET; only the end of the plaintext is decrypted.
pub(crate) async fn read_trailer(repo: &Repo, pack: &ObjectId) -> Result<Vec<IndexEntry>> {
    let (what, ct_len, mut r) = open_pack(repo, pack).await?;
    let end = r.seek(SeekFrom::End(0)).map_err(|e| corrupt(&what, e))?;
    let mut tail = [0u8; 12];
    if end < 12 {
        return Err(corrupt(&what, std::io::Error::other("too short for a trailer")));
    }
    r.seek(SeekFrom::Start(end - 12)).map_err(|e| corrupt(&what, e))?;
    r.read_exact(&mut tail).map_err(|e| corrupt(&what, e))?;
    let tlen = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
    if &tail[4..] != PACK_MAGIC || tlen > end - 12 || tlen > ct_len {
        return Err(corrupt(&what, std::io::Error::other("bad trailer")));
    }
    let start = end - 12 - tlen;
    let mut buf = vec![0u8; tlen as usize + 12];
    r.seek(SeekFrom::Start(start)).map_err(|e| corrupt(&what, e))?;
    r.read_exact(&mut buf).map_err(|e| corrupt(&what, e))?;
    // Every frame lies before the trailer (what decode_pack_trailer checks, which
    // would need the whole plaintext).
    let mut entries = Vec::new();
    sqlvault_format::decode_entries(&buf[..tlen as usize], |e| entries.push(e)).map_err(|e| corrupt(&what, e))?;
    if entries
        .iter()
        .any(|e| e.frame_offset.checked_add(e.frame_len as u64).is_none_or(|x| x > start))
    {
        return Err(corrupt(&what, std::io::Error::other("frame outside pack")));
    }
    Ok(entries)
}

/// A pack that was sealed (and, once the caller PUTs it, uploaded), with its entries
/// kept encoded (~32 bytes a chunk): what its index section will hold.
pub(crate) struct SealedPack {
    pub id: ObjectId,
    pub entries: Vec<u8>,
    pub chunks: u64,
    /// Ciphertext bytes.
    pub size: u64,
}

/// A pack being filled: frames are encrypted as they are appended, so a pack never
/// exists in memory as plaintext and ciphertext at once.
pub(crate) struct PackBuilder {
    id: ObjectId,
    w: EncryptWriter<Vec<u8>>,
    /// Plaintext bytes appended so far (the pack is sealed at a target size).
    pub plain_len: u64,
    entries: Vec<IndexEntry>,
}

impl PackBuilder {
    pub(crate) fn new(repo: &Repo, cap: usize) -> Result<PackBuilder> {
        Ok(PackBuilder {
            id: ObjectId::random(),
            w: EncryptWriter::new(repo.data_recipients.iter(), Vec::with_capacity(cap + cap / 8))
                .map_err(|e| crypt_err("a pack", e))?,
            plain_len: 0,
            entries: Vec::new(),
        })
    }

    /// Appends one compressed frame holding `chunks` as (id, offset, length) in its
    /// decompressed content.
    pub(crate) fn append_frame(&mut self, frame: &[u8], chunks: &[(ChunkId, u32, u32)]) -> Result<()> {
        let frame_offset = self.plain_len;
        self.w.write_all(frame).map_err(|e| io_err("encrypting pack", e))?;
        self.plain_len += frame.len() as u64;
        self.entries.extend(chunks.iter().map(|&(id, offset, len)| IndexEntry {
            id,
            frame_offset,
            frame_len: frame.len() as u32,
            offset,
            len,
        }));
        Ok(())
    }

    /// Writes the trailer and ends the age stream. Returns the ciphertext and the
    /// pack's entries in their encoded form (what the index will hold).
    pub(crate) fn seal(mut self) -> Result<(Vec<u8>, SealedPack)> {
        let raw = encode_entries(&self.entries);
        let e = |e| io_err("encrypting pack", e);
        self.w.write_all(&raw).map_err(e)?;
        self.w.write_all(&(raw.len() as u32).to_le_bytes()).map_err(e)?;
        self.w.write_all(PACK_MAGIC).map_err(e)?;
        let ct = self.w.finish().map_err(e)?;
        let size = ct.len() as u64;
        Ok((
            ct,
            SealedPack {
                id: self.id,
                entries: raw,
                chunks: self.entries.len() as u64,
                size,
            },
        ))
    }
}

/// Compresses `input` into `out` as one zstd frame and, when `verify`, decompresses it
/// into `check` and compares (restic's lesson: a compressor bug must not reach the
/// bucket).
pub(crate) fn compress_checked(
    comp: &mut FrameCompressor,
    dec: &mut FrameDecompressor,
    input: &[u8],
    out: &mut Vec<u8>,
    check: &mut Vec<u8>,
    verify: bool,
) -> Result<()> {
    out.clear();
    comp.compress_into(input, out)
        .map_err(|e| io_err("zstd compression", e))?;
    if verify {
        dec.decompress_into(out, check, input.len())
            .map_err(|e| io_err("zstd self-check", e))?;
        if check[..] != input[..] {
            return Err(Error::new(
                ErrorKind::Internal,
                "backup.compressor-mismatch",
                "compressed frame does not decompress to its input; nothing was uploaded for it",
            ));
        }
    }
    Ok(())
}

/// Writes chunks into new packs of `repo`: frames of up to `frame_bytes` of chunks,
/// each compressed and checked by decompressing it before it is encrypted, packs sealed
/// and uploaded at `pack_target`. Nothing is indexed until [`write_index_for`].
pub(crate) struct Packer {
    repo: Repo,
    comp: FrameCompressor,
    dec: FrameDecompressor,
    frame: Vec<u8>,
    frame_ids: Vec<(ChunkId, u32, u32)>,
    out: Vec<u8>,
    check: Vec<u8>,
    frame_bytes: usize,
    pack_target: usize,
    pack: Option<PackBuilder>,
    written: Vec<SealedPack>,
}

impl Packer {
    pub(crate) fn new(repo: &Repo, pack_target: usize) -> Result<Packer> {
        Ok(Packer {
            repo: repo.clone(),
            comp: FrameCompressor::new(sqlvault_compress::DEFAULT_LEVEL).map_err(|e| io_err("zstd", e))?,
            dec: FrameDecompressor::new().map_err(|e| io_err("zstd", e))?,
            frame: Vec::new(),
            frame_ids: Vec::new(),
            out: Vec::new(),
            check: Vec::new(),
            frame_bytes: 1 << 20,
            pack_target,
            pack: None,
            written: Vec::new(),
        })
    }

    /// Adds one chunk; uploads a pack when it is full.
    pub(crate) async fn add(&mut self, id: ChunkId, data: &[u8]) -> Result<()> {
        self.frame_ids.push((id, self.frame.len() as u32, data.len() as u32));
        self.frame.extend_from_slice(data);
        if self.frame.len() >= self.frame_bytes {
            self.flush_frame()?;
            if self
                .pack
                .as_ref()
                .is_some_and(|p| p.plain_len as usize >= self.pack_target)
            {
                self.seal().await?;
            }
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.frame_ids.is_empty() {
            return Ok(());
        }
        compress_checked(
            &mut self.comp,
            &mut self.dec,
            &self.frame,
            &mut self.out,
            &mut self.check,
            true,
        )?;
        let p = match self.pack.as_mut() {
            Some(p) => p,
            None => self.pack.insert(PackBuilder::new(&self.repo, self.pack_target)?),
        };
        p.append_frame(&self.out, &self.frame_ids)?;
        self.frame.clear();
        self.frame_ids.clear();
        Ok(())
    }

    async fn seal(&mut self) -> Result<()> {
        let Some(p) = self.pack.take() else {
            return Ok(());
        };
        let (ct, sealed) = p.seal()?;
        self.repo.store.put(&layout::pack(&sealed.id), Bytes::from(ct)).await?;
        self.written.push(sealed);
        Ok(())
    }

    /// Seals and uploads the pack being filled, however small.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.flush_frame()?;
        self.seal().await
    }

    /// The packs uploaded since the last call, not yet indexed: a caller that indexes
    /// them at once bounds what a crash can orphan to the pack being filled.
    pub(crate) fn take_sealed(&mut self) -> Vec<SealedPack> {
        std::mem::take(&mut self.written)
    }

    /// Uploads what is pending and returns every pack written, not yet indexed.
    pub(crate) async fn finish(mut self) -> Result<Vec<SealedPack>> {
        self.flush().await?;
        Ok(self.written)
    }
}

/// Writes one index object for `packs` (packs before index: the crash contract),
/// streamed into the encryptor so the index never exists in plaintext as a whole.
/// Returns its size.
pub(crate) async fn write_index_for(repo: &Repo, packs: &[SealedPack]) -> Result<u64> {
    if packs.is_empty() {
        return Ok(0);
    }
    let size: usize = packs.iter().map(|p| 16 + p.entries.len()).sum();
    let mut w = repo.meta_writer(size + size / 64 + 1024)?;
    write_index(&mut w, &repo.keys, packs.iter().map(|p| (&p.id, &p.entries[..])))
        .map_err(|e| io_err("encrypting index", e))?;
    let ct = w.finish().map_err(|e| io_err("encrypting index", e))?;
    let n = ct.len() as u64;
    repo.store
        .put(&layout::index(&ObjectId::random()), Bytes::from(ct))
        .await?;
    Ok(n)
}
