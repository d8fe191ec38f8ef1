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

/// The most a frame may decompress to, whatever it declares: backup frames are about
/// a MiB, and a forged one must not make a reader allocate more.
pub(crate) const MAX_FRAME_CONTENT: usize = 64 << 20;

/// One downloaded pack, decrypted on demand: the single pack reader, with one set of
/// bounds, that restore, copy, check and prune use. It is synchronous (CPU only: age,
/// zstd, hashing) and runs on worker or blocking threads; the download is async
/// ([`fetch_pack`]).
///
/// Bounds: no frame is read that does not lie inside the ciphertext (the plaintext is
/// shorter), no frame decompresses to more than it declares, [`MAX_FRAME_CONTENT`] at
/// most (and at least what the caller needs of it), and every chunk handed out is
/// re-hashed against its id.
pub(crate) struct PackReader {
    what: String,
    ct_len: u64,
    r: sqlvault_crypt::age::stream::StreamReader<std::io::Cursor<Bytes>>,
    dec: FrameDecompressor,
    /// Plaintext position of `r`: frames read in order need no seek (a seek drops age's
    /// decrypted chunk and decrypts it again).
    pos: u64,
    frame: Vec<u8>,
    plain: Vec<u8>,
    /// Offset of the frame decompressed in `plain`.
    current: Option<u64>,
}

impl PackReader {
    /// Opens the ciphertext `ct` of pack `pack` with `identities`: the age header only.
    pub(crate) fn open(identities: &sqlvault_crypt::Identities, pack: &ObjectId, ct: Bytes) -> Result<PackReader> {
        let what = format!("pack {}", pack.short());
        let ct_len = ct.len() as u64;
        let r =
            sqlvault_crypt::decrypt_reader(identities, std::io::Cursor::new(ct)).map_err(|e| crypt_err(&what, e))?;
        Ok(PackReader {
            what,
            ct_len,
            r,
            dec: FrameDecompressor::new().map_err(|e| io_err("zstd", e))?,
            pos: 0,
            frame: Vec::new(),
            plain: Vec::new(),
            current: None,
        })
    }

    fn corrupt(&self, detail: &str) -> Error {
        Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("{}: {detail}", self.what),
        )
    }

    /// The decompressed content of the frame at `frame_offset`, `frame_len` bytes of
    /// plaintext, of which the caller needs at least `need` bytes.
    pub(crate) fn frame(&mut self, frame_offset: u64, frame_len: u32, need: usize) -> Result<&[u8]> {
        if self.current == Some(frame_offset) {
            return Ok(&self.plain);
        }
        self.current = None;
        if frame_offset.saturating_add(frame_len as u64) > self.ct_len {
            return Err(self.corrupt("truncated or corrupt: an index entry points past its end"));
        }
        self.frame.resize(frame_len as usize, 0);
        if self.pos != frame_offset {
            self.pos = u64::MAX;
            self.r
                .seek(SeekFrom::Start(frame_offset))
                .map_err(|e| corrupt(&self.what, e))?;
        }
        self.pos = u64::MAX;
        self.r.read_exact(&mut self.frame).map_err(|e| corrupt(&self.what, e))?;
        self.pos = frame_offset + frame_len as u64;
        let bound = sqlvault_compress::frame_content_size(&self.frame)
            .map_or(16 << 20, |n| n.min(MAX_FRAME_CONTENT as u64) as usize)
            .max(need)
            .min(MAX_FRAME_CONTENT);
        self.dec
            .decompress_into(&self.frame, &mut self.plain, bound)
            .map_err(|e| corrupt(&self.what, e))?;
        self.current = Some(frame_offset);
        Ok(&self.plain)
    }

    /// The chunk `e` describes, checked against its id.
    pub(crate) fn chunk(&mut self, keys: &sqlvault_format::RepoKeys, e: &IndexEntry) -> Result<&[u8]> {
        let end = e.offset as usize + e.len as usize;
        self.frame(e.frame_offset, e.frame_len, end)?;
        let sound = self
            .plain
            .get(e.offset as usize..end)
            .is_some_and(|d| keys.chunk_id(d) == e.id);
        if !sound {
            return Err(self.corrupt(&format!(
                "chunk {} is not where its index entry says, or does not match its id (tampered or corrupt)",
                &e.id.to_hex()[..16]
            )));
        }
        Ok(&self.plain[e.offset as usize..end])
    }

    /// The entries the pack's own trailer lists: what it really holds, whatever an index
    /// says. Only the end of the plaintext is decrypted.
    pub(crate) fn trailer(&mut self) -> Result<Vec<IndexEntry>> {
        let what = self.what.clone();
        self.pos = u64::MAX;
        self.current = None;
        let r = &mut self.r;
        let end = r.seek(SeekFrom::End(0)).map_err(|e| corrupt(&what, e))?;
        let mut tail = [0u8; 12];
        if end < 12 {
            return Err(corrupt(&what, std::io::Error::other("too short for a trailer")));
        }
        r.seek(SeekFrom::Start(end - 12)).map_err(|e| corrupt(&what, e))?;
        r.read_exact(&mut tail).map_err(|e| corrupt(&what, e))?;
        let tlen = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        if &tail[4..] != PACK_MAGIC || tlen > end - 12 || tlen > self.ct_len {
            return Err(corrupt(&what, std::io::Error::other("bad trailer")));
        }
        let start = end - 12 - tlen;
        let mut buf = vec![0u8; tlen as usize + 12];
        r.seek(SeekFrom::Start(start)).map_err(|e| corrupt(&what, e))?;
        r.read_exact(&mut buf).map_err(|e| corrupt(&what, e))?;
        // Every frame lies before the trailer.
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
}

/// GETs pack `pack` (a missing one is an integrity error: something references it).
pub(crate) async fn fetch_pack(repo: &Repo, pack: &ObjectId) -> Result<Bytes> {
    get_or(&repo.store, &layout::pack(pack), || {
        Error::new(
            ErrorKind::Integrity,
            "repo.missing-object",
            format!("pack {} is missing from {}", pack.short(), repo.store.describe()),
        )
    })
    .await
}

/// Runs `f` on a blocking thread: the CPU side of a pack (age, zstd, hashing) never
/// runs on the async runtime's threads.
pub(crate) async fn on_cpu<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal", "a pack worker panicked").with_source(e))?
}

/// Reads the chunks `wanted` (entries of pack `pack`, from an index) out of it: one GET,
/// then on a blocking thread only the frames that hold them decrypted and
/// decompressed, every chunk re-hashed against its id. Returns them in frame order.
pub(crate) async fn read_chunks(
    repo: &Repo,
    pack: &ObjectId,
    mut wanted: Vec<IndexEntry>,
) -> Result<Vec<(ChunkId, Vec<u8>)>> {
    repo.require_data_access("reading packs")?;
    let ct = fetch_pack(repo, pack).await?;
    let (ids, keys, pack) = (repo.identities.clone(), repo.keys.clone(), *pack);
    on_cpu(move || {
        let mut r = PackReader::open(&ids, &pack, ct)?;
        wanted.sort_by_key(|e| (e.frame_offset, e.offset));
        wanted
            .iter()
            .map(|e| r.chunk(&keys, e).map(|d| (e.id, d.to_vec())))
            .collect()
    })
    .await
}

/// Chunks of one pack handed on together by [`stream_chunks`].
pub(crate) type ChunkBatch = Vec<(ChunkId, Vec<u8>)>;

/// Bytes of chunks per [`ChunkBatch`].
const BATCH_BYTES: usize = 1 << 20;

/// [`read_chunks`] for a consumer that handles chunks as they come (copy): one GET,
/// then a blocking thread decrypts and decompresses the frames in order and sends the
/// chunks, re-hashed against their ids, in batches of about 1 MiB through a channel
/// one batch deep. What a pack costs in memory is its ciphertext and one batch or two,
/// never all its chunks decompressed (a 17 MiB pack holds ~43 MiB of pages). A failure
/// ends the stream with its error.
pub(crate) async fn stream_chunks(
    repo: &Repo,
    pack: ObjectId,
    mut wanted: Vec<IndexEntry>,
) -> Result<tokio::sync::mpsc::Receiver<Result<ChunkBatch>>> {
    repo.require_data_access("reading packs")?;
    let ct = fetch_pack(repo, &pack).await?;
    let (ids, keys) = (repo.identities.clone(), repo.keys.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        let run = || -> Result<()> {
            let mut r = PackReader::open(&ids, &pack, ct)?;
            wanted.sort_by_key(|e| (e.frame_offset, e.offset));
            let mut batch = Vec::new();
            let mut bytes = 0;
            for e in &wanted {
                let d = r.chunk(&keys, e)?;
                bytes += d.len();
                batch.push((e.id, d.to_vec()));
                if bytes >= BATCH_BYTES {
                    bytes = 0;
                    if tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return Ok(()); // The consumer gave up.
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(batch));
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(rx)
}

/// The entries a pack's own trailer lists ([`PackReader::trailer`]). One GET.
pub(crate) async fn read_trailer(repo: &Repo, pack: &ObjectId) -> Result<Vec<IndexEntry>> {
    repo.require_data_access("reading packs")?;
    let ct = fetch_pack(repo, pack).await?;
    let (ids, pack) = (repo.identities.clone(), *pack);
    on_cpu(move || PackReader::open(&ids, &pack, ct)?.trailer()).await
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
/// Compression and encryption run on blocking threads; only the upload is async.
pub(crate) struct Packer {
    repo: Repo,
    /// The CPU side, lent to a blocking thread while a frame is compressed (absent
    /// only after a failure, which ends the operation).
    cpu: Option<Box<PackerCpu>>,
    frame_bytes: usize,
    written: Vec<SealedPack>,
}

/// A sealed pack's ciphertext and what its index section will hold.
type Sealed = (Vec<u8>, SealedPack);

struct PackerCpu {
    repo: Repo,
    comp: FrameCompressor,
    dec: FrameDecompressor,
    frame: Vec<u8>,
    frame_ids: Vec<(ChunkId, u32, u32)>,
    out: Vec<u8>,
    check: Vec<u8>,
    pack_target: usize,
    pack: Option<PackBuilder>,
}

impl PackerCpu {
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

    /// Flushes the frame; seals the pack when it is full, or when `force` and it holds
    /// anything.
    fn step(mut self: Box<Self>, force: bool) -> Result<(Box<Self>, Option<Sealed>)> {
        self.flush_frame()?;
        let full = self
            .pack
            .as_ref()
            .is_some_and(|p| force || p.plain_len as usize >= self.pack_target);
        let sealed = match full {
            true => Some(self.pack.take().expect("present").seal()?),
            false => None,
        };
        Ok((self, sealed))
    }
}

impl Packer {
    pub(crate) fn new(repo: &Repo, pack_target: usize) -> Result<Packer> {
        Ok(Packer {
            repo: repo.clone(),
            cpu: Some(Box::new(PackerCpu {
                repo: repo.clone(),
                comp: FrameCompressor::new(sqlvault_compress::DEFAULT_LEVEL).map_err(|e| io_err("zstd", e))?,
                dec: FrameDecompressor::new().map_err(|e| io_err("zstd", e))?,
                frame: Vec::new(),
                frame_ids: Vec::new(),
                out: Vec::new(),
                check: Vec::new(),
                pack_target,
                pack: None,
            })),
            frame_bytes: 1 << 20,
            written: Vec::new(),
        })
    }

    fn cpu(&mut self) -> Result<&mut PackerCpu> {
        self.cpu
            .as_deref_mut()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal", "a packer used after it failed"))
    }

    /// Adds one chunk; uploads a pack when it is full.
    pub(crate) async fn add(&mut self, id: ChunkId, data: &[u8]) -> Result<()> {
        let cpu = self.cpu()?;
        cpu.frame_ids.push((id, cpu.frame.len() as u32, data.len() as u32));
        cpu.frame.extend_from_slice(data);
        if cpu.frame.len() >= self.frame_bytes {
            self.step(false).await?;
        }
        Ok(())
    }

    async fn step(&mut self, force: bool) -> Result<()> {
        let cpu = self
            .cpu
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal", "a packer used after it failed"))?;
        let (cpu, sealed) = on_cpu(move || cpu.step(force)).await?;
        self.cpu = Some(cpu);
        if let Some((ct, sealed)) = sealed {
            // Append-only, even inside prune: packing never deletes.
            self.repo
                .store
                .appender()
                .put(&layout::pack(&sealed.id), Bytes::from(ct))
                .await?;
            self.written.push(sealed);
        }
        Ok(())
    }

    /// Seals and uploads the pack being filled, however small.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.step(true).await
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
    put_index(repo, index_object(repo, packs)?).await
}

/// The encrypted index object of `packs` (CPU: call it off the async threads when
/// the index is large).
pub(crate) fn index_object(repo: &Repo, packs: &[SealedPack]) -> Result<Vec<u8>> {
    let size: usize = packs.iter().map(|p| 16 + p.entries.len()).sum();
    let mut w = repo.meta_writer(size + size / 64 + 1024)?;
    write_index(&mut w, &repo.keys, packs.iter().map(|p| (&p.id, &p.entries[..])))
        .map_err(|e| io_err("encrypting index", e))?;
    w.finish().map_err(|e| io_err("encrypting index", e))
}

/// Uploads an index object under a new name (append-only). Returns its size.
pub(crate) async fn put_index(repo: &Repo, ct: Vec<u8>) -> Result<u64> {
    let n = ct.len() as u64;
    repo.store
        .appender()
        .put(&layout::index(&ObjectId::random()), Bytes::from(ct))
        .await?;
    Ok(n)
}
