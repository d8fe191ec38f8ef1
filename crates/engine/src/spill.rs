//! Per-page and per-chunk state of a backup kept on local disk instead of in memory.
//!
//! A backup's state grows with the database: 32 bytes a page for its page table and
//! ~32 bytes a new chunk for the index it will write. At 8 GiB (2.1 M pages) that
//! would be ~130 MiB on top of the pipeline's buffers; at 100 GiB, gigabytes. Both are
//! written once and then read front to back, which a file in the session's scratch
//! directory does at page-cache speed, so memory stays flat whatever the size.
//!
//! Files here are private (0600, in a 0700 scratch directory removed on drop and on
//! signals): a page table is a list of keyed chunk ids, which reveal which pages are
//! equal to each other.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use sqlvault_format::ChunkId;

/// A page table on disk: the id of page `pgno` at `(pgno - 1) * 32`, written by the
/// workers in whatever order their batches finish. Pages never written read as zero
/// ids (the file is sparse), which the commit refuses.
pub(crate) struct PageFile {
    file: File,
}

impl PageFile {
    /// Creates the table as `name` in `dir` (which the caller keeps alive).
    pub(crate) fn create(dir: &Path, name: &str) -> std::io::Result<PageFile> {
        let file = create_private(dir, name)?;
        Ok(PageFile { file })
    }

    /// Writes the ids of consecutive pages starting at `first_pgno` (1-based).
    pub(crate) fn write(&self, first_pgno: u32, ids: &[ChunkId]) -> std::io::Result<()> {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
        self.file.write_all_at(&bytes, (first_pgno as u64 - 1) * 32)
    }

    /// The id stored for `pgno`, zero if none was written.
    pub(crate) fn get(&self, pgno: u32) -> std::io::Result<ChunkId> {
        let mut id = [0u8; 32];
        let n = read_full_at(&self.file, &mut id, (pgno as u64 - 1) * 32)?;
        if n < 32 {
            id = [0; 32];
        }
        Ok(ChunkId(id))
    }

    /// The ids of pages `1..=count`, front to back.
    pub(crate) fn reader(&self, count: u32) -> std::io::Result<IdReader> {
        IdReader::new(self.file.try_clone()?, 0, count as u64)
    }
}

/// A new file `name` in `dir`, read-write, 0600 (it must not exist).
fn create_private(dir: &Path, name: &str) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(name))
}

fn read_full_at(f: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads `count` 32-byte ids from a file, front to back, past a short file as zero ids
/// (a sparse page table whose last pages were never written).
pub(crate) struct IdReader {
    r: BufReader<std::io::Take<File>>,
    left: u64,
}

impl IdReader {
    /// Reads from `file` at byte `at`.
    pub(crate) fn new(mut file: File, at: u64, count: u64) -> std::io::Result<IdReader> {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(at))?;
        Ok(IdReader {
            r: BufReader::with_capacity(1 << 18, file.take(count * 32)),
            left: count,
        })
    }

    /// The next id, or `None` after the last.
    pub(crate) fn next_id(&mut self) -> std::io::Result<Option<ChunkId>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut id = [0u8; 32];
        let mut done = 0;
        while done < 32 {
            match self.r.read(&mut id[done..]) {
                Ok(0) => return Ok(Some(ChunkId([0; 32]))),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(ChunkId(id)))
    }
}

/// An append-only file of byte records (a backup's pack entries), each read back
/// whole by its `(offset, length)`.
pub(crate) struct Spill {
    file: Mutex<(File, u64)>,
}

/// Where one record of a [`Spill`] is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpillRef {
    pub off: u64,
    pub len: u32,
}

impl Spill {
    /// Creates the file as `name` in `dir` (which the caller keeps alive).
    pub(crate) fn create(dir: &Path, name: &str) -> std::io::Result<Spill> {
        let file = create_private(dir, name)?;
        Ok(Spill {
            file: Mutex::new((file, 0)),
        })
    }

    /// Appends a record.
    pub(crate) fn push(&self, bytes: &[u8]) -> std::io::Result<SpillRef> {
        let mut g = self.file.lock().unwrap();
        let off = g.1;
        g.0.write_all_at(bytes, off)?;
        g.1 += bytes.len() as u64;
        Ok(SpillRef {
            off,
            len: bytes.len() as u32,
        })
    }

    /// Reads a record back.
    pub(crate) fn read(&self, r: SpillRef) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; r.len as usize];
        let g = self.file.lock().unwrap();
        g.0.read_exact_at(&mut buf, r.off)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_file_reads_back_out_of_order_writes_and_zero_for_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let t = PageFile::create(dir.path(), "pages").unwrap();
        let id = |b: u8| ChunkId([b; 32]);
        t.write(3, &[id(3), id(4)]).unwrap();
        t.write(1, &[id(1)]).unwrap();
        assert_eq!(t.get(1).unwrap(), id(1));
        assert_eq!(t.get(2).unwrap(), id(0), "a page never written reads as zero");
        assert_eq!(t.get(4).unwrap(), id(4));
        assert_eq!(t.get(9).unwrap(), id(0), "past the end reads as zero");
        let mut r = t.reader(5).unwrap();
        let mut all = Vec::new();
        while let Some(x) = r.next_id().unwrap() {
            all.push(x);
        }
        assert_eq!(all, vec![id(1), id(0), id(3), id(4), id(0)]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pages"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn spill_returns_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spill::create(dir.path(), "entries").unwrap();
        let a = s.push(b"first").unwrap();
        let b = s.push(b"").unwrap();
        let c = s.push(&[7u8; 100_000]).unwrap();
        assert_eq!(s.read(c).unwrap(), vec![7u8; 100_000]);
        assert_eq!(s.read(a).unwrap(), b"first");
        assert_eq!(s.read(b).unwrap(), b"");
    }
}
