//! A snapshot's page table on disk, for restore: the chunk id of every page, 32 bytes
//! a page at `(pgno − 1) × 32` in a private scratch file. In memory it would be the one
//! part of a restore that grows with the database (67 MiB at 8 GiB, 2.1 M pages); on
//! disk it costs 0.8% of the database in the session's temporary directory, and
//! restore reads it back one pass of pages at a time.
//!
//! The maps are applied under the same rules as [`Repo::page_map`] (a full map
//! replaces the table, a delta sets its pages and truncates or extends it), with the
//! same bound: the table only grows by what a map's bytes can fill
//! ([`PageMap::applied_count`]), so a few crafted bytes cannot make it write gigabytes.
//! Which pages are mapped is one bit a page in memory (256 KiB at 8 GiB).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use sqlvault_format::{ChunkId, FormatError, Manifest, PageMap, PageMapKind};

use crate::error::{Result, corrupt, io_err, map_count_mismatch, map_unmapped};
use crate::repo::Repo;

/// Bytes of one id in the table.
const ID: usize = 32;

/// Ids written with one `pwrite` at most (a full map is one run of pages).
const WRITE_BUF: usize = 1 << 20;

/// Ids read with one `pread` when a pass is read back.
const READ_BUF: usize = 256 << 10;

/// The page table of one snapshot, complete and checked against its manifest.
pub(crate) struct PageTable {
    file: File,
    pages: u32,
    // After the file, so that the file is closed before its directory goes.
    _dir: tempfile::TempDir,
}

impl PageTable {
    /// Streams the maps of `m` (fetched, decrypted and MAC-checked one at a time by
    /// [`Repo::each_map`]) into a new table in a private scratch directory (0700,
    /// removed when the table is dropped or the process is interrupted), the file
    /// itself 0600. Refuses, as `repo.corrupt-object`, maps that give another page
    /// count than the manifest's or leave a page unmapped.
    pub(crate) async fn build(repo: &Repo, m: &Manifest) -> Result<PageTable> {
        let dir = repo.session.scratch("restore")?;
        let path = dir.path().join("pages");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(format!("cannot create {}", path.display()), e))?;
        let mut t = Applier::new(&file);
        repo.each_map(m, |r, pt| {
            t.apply(pt).map_err(|e| match e {
                Applied::Format(e) => corrupt(format!("page map {}", r.id.short()), e),
                Applied::Io(e) => io_err(format!("cannot write {}", path.display()), e),
            })
        })
        .await?;
        let pages = t.finish(m)?;
        Ok(PageTable { file, pages, _dir: dir })
    }

    /// Pages in the table (the manifest's page count).
    pub(crate) fn pages(&self) -> u32 {
        self.pages
    }

    /// The ids of pages `first..first + n` (1-based), in page order.
    pub(crate) fn read(&self, first: u32, n: usize) -> Result<Vec<ChunkId>> {
        read_ids(&self.file, first, n).map_err(|e| io_err("cannot read the restore's page table", e))
    }

    /// The id of page `pgno`, when it is within the table.
    pub(crate) fn get(&self, pgno: u32) -> Result<Option<ChunkId>> {
        if pgno == 0 || pgno > self.pages {
            return Ok(None);
        }
        Ok(self.read(pgno, 1)?.pop())
    }

    /// Sets page `pgno`'s id (replication keeps a chain's newest table this way).
    pub(crate) fn set(&self, pgno: u32, id: &ChunkId) -> Result<()> {
        self.file
            .write_all_at(&id.0, (pgno as u64 - 1) * ID as u64)
            .map_err(|e| io_err("cannot write a page table", e))
    }

    /// Sets the page count (pages past it are forgotten; new ones must be [`set`]).
    ///
    /// [`set`]: PageTable::set
    pub(crate) fn set_pages(&mut self, pages: u32) {
        self.pages = pages;
    }

    /// A second handle on the table's file (a scratch file of this process: no lock of
    /// SQLite's lives on it), for a reader on another thread.
    pub(crate) fn reader(&self) -> Result<TableReader> {
        Ok(TableReader {
            file: self
                .file
                .try_clone()
                .map_err(|e| io_err("cannot reopen a page table", e))?,
            pages: self.pages,
        })
    }

    /// The state checksum of the table (docs/format.md, "Segments").
    pub(crate) fn state(&self, key: &sqlvault_format::StateKey) -> Result<sqlvault_format::StateChecksum> {
        let mut x = sqlvault_format::StateChecksum::default();
        for (first, n) in passes(self.pages, 64 << 10) {
            for (i, id) in self.read(first, n)?.iter().enumerate() {
                x.toggle(key, first + i as u32, id);
            }
        }
        Ok(x)
    }
}

/// A read-only handle on a [`PageTable`]'s file.
pub(crate) struct TableReader {
    file: File,
    pages: u32,
}

impl TableReader {
    /// Pages in the table when the handle was made.
    pub(crate) fn pages(&self) -> u32 {
        self.pages
    }

    /// The ids of pages `first..first + n` (1-based).
    pub(crate) fn read(&self, first: u32, n: usize) -> Result<Vec<ChunkId>> {
        read_ids(&self.file, first, n).map_err(|e| io_err("cannot read a page table", e))
    }
}

/// The ranges `(first page, pages)` of passes of at most `per` pages over `pages`.
pub(crate) fn passes(pages: u32, per: usize) -> impl Iterator<Item = (u32, usize)> {
    let per = per.max(1) as u64;
    (0..(pages as u64).div_ceil(per)).map(move |i| {
        let first = i * per;
        (first as u32 + 1, per.min(pages as u64 - first) as usize)
    })
}

fn read_ids(file: &File, first: u32, n: usize) -> io::Result<Vec<ChunkId>> {
    let mut ids = Vec::with_capacity(n);
    let mut buf = vec![0u8; READ_BUF.min(n * ID)];
    let mut at = (first as u64 - 1) * ID as u64;
    while ids.len() < n {
        let k = (n - ids.len()).min(buf.len() / ID);
        let b = &mut buf[..k * ID];
        file.read_exact_at(b, at)?;
        ids.extend(b.chunks_exact(ID).map(|c| ChunkId(c.try_into().expect("32 bytes"))));
        at += b.len() as u64;
    }
    Ok(ids)
}

/// Why a map could not be applied.
#[derive(Debug)]
enum Applied {
    Format(FormatError),
    Io(io::Error),
}

/// Applies encoded maps, in chain order, to a table file.
struct Applier<'a> {
    file: &'a File,
    /// Pages in the table so far.
    count: usize,
    /// One bit a page; bits at and past `count` are always clear, so a table that
    /// shrinks and grows again has its new pages unmapped until a map lists them.
    mapped: Vec<u64>,
    /// Ids of consecutive pages from `buf_first` on, not written yet.
    buf: Vec<u8>,
    buf_first: u32,
}

impl<'a> Applier<'a> {
    fn new(file: &'a File) -> Applier<'a> {
        Applier {
            file,
            count: 0,
            mapped: Vec::new(),
            buf: Vec::new(),
            buf_first: 1,
        }
    }

    /// Applies one map. On an error the table is left part-way: the caller gives up.
    fn apply(&mut self, pt: &[u8]) -> std::result::Result<(), Applied> {
        // Checked before anything grows: the bound on what the bytes can fill.
        let (kind, count) = PageMap::applied_count(pt, self.count).map_err(Applied::Format)?;
        if kind == PageMapKind::Full {
            self.mapped.clear();
        }
        self.resize(count);
        let mut written = Ok(());
        PageMap::decode_with(pt, |pgno, id| {
            if written.is_ok() {
                written = self.put(pgno, id);
            }
        })
        .map_err(Applied::Format)?;
        written.map_err(Applied::Io)?;
        self.flush().map_err(Applied::Io)
    }

    fn resize(&mut self, count: usize) {
        self.mapped.resize(count.div_ceil(64), 0);
        if let (Some(last), tail @ 1..) = (self.mapped.last_mut(), count % 64) {
            *last &= (1u64 << tail) - 1;
        }
        self.count = count;
    }

    fn put(&mut self, pgno: u32, id: ChunkId) -> io::Result<()> {
        let i = pgno as usize - 1;
        self.mapped[i / 64] |= 1 << (i % 64);
        let next = self.buf_first as usize + self.buf.len() / ID;
        if pgno as usize != next || self.buf.len() >= WRITE_BUF {
            self.flush()?;
            self.buf_first = pgno;
        }
        self.buf.extend_from_slice(&id.0);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, (self.buf_first as u64 - 1) * ID as u64)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The page count, once it is the manifest's and every page is mapped.
    fn finish(self, m: &Manifest) -> Result<u32> {
        if self.count != m.page_count as usize {
            return Err(map_count_mismatch(m, self.count));
        }
        if let Some(i) = self.first_unmapped() {
            return Err(map_unmapped(m, i + 1));
        }
        Ok(self.count as u32)
    }

    /// The index (pgno − 1) of the first page no map listed.
    fn first_unmapped(&self) -> Option<usize> {
        let w = self.mapped.iter().position(|w| *w != u64::MAX)?;
        let i = w * 64 + self.mapped[w].trailing_ones() as usize;
        (i < self.count).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(b)
    }

    /// Applies `maps` to a fresh table and reads it back whole, as `page_map` does
    /// in memory; both must agree on the outcome.
    fn table(maps: &[Vec<u8>]) -> std::result::Result<Vec<ChunkId>, String> {
        let (mut pages, mut mapped) = (Vec::new(), Vec::new());
        let mut mem = Ok(());
        for pt in maps {
            mem = mem.and_then(|_| PageMap::apply_encoded(pt, &mut pages, &mut mapped));
        }
        let file = tempfile::tempfile().unwrap();
        let mut a = Applier::new(&file);
        let mut disk = Ok(());
        for pt in maps {
            disk = disk.and_then(|_| a.apply(pt));
        }
        match (mem, disk) {
            (Ok(()), Ok(())) => {
                assert_eq!(a.count, pages.len());
                let unmapped = mapped.iter().position(|m| !m);
                assert_eq!(a.first_unmapped(), unmapped);
                if let Some(i) = unmapped {
                    return Err(format!("page {} unmapped", i + 1));
                }
                let got = read_ids(&file, 1, a.count).unwrap();
                assert_eq!(got, pages);
                Ok(got)
            }
            (Err(m), Err(Applied::Format(d))) => {
                assert_eq!(m.to_string(), d.to_string());
                Err(m.to_string())
            }
            (m, d) => panic!("in memory {m:?}, on disk {d:?}"),
        }
    }

    fn ids(r: std::ops::RangeInclusive<u32>) -> Vec<ChunkId> {
        r.map(id).collect()
    }

    #[test]
    fn a_full_map_in_parts_then_deltas_is_the_table_page_map_gives() {
        // A full map of the first N pages, a delta extending to 2N (listing every new
        // page), a delta changing some pages: how a large snapshot's map may be written.
        let n = 1000;
        let first = ids(1..=n);
        let second = ids(1..=2 * n);
        let mut third = second.clone();
        for p in [0, 1, 63, 64, 999, 1000, 1999] {
            third[p] = id(50_000 + p as u32);
        }
        let maps = vec![
            PageMap::encode_full(&first),
            PageMap::delta(&first, &second).encode(),
            PageMap::delta(&second, &third).encode(),
        ];
        assert_eq!(table(&maps).unwrap(), third);
        // Writes of more than one buffer's worth of consecutive pages.
        let big = ids(1..=WRITE_BUF as u32 / 16);
        assert_eq!(table(&[PageMap::encode_full(&big)]).unwrap(), big);
    }

    #[test]
    fn a_table_that_shrinks_and_grows_again_needs_its_new_pages_listed() {
        let base = ids(1..=130);
        let small = ids(1..=5);
        let grown = ids(1..=129);
        let shrink = PageMap::delta(&base, &small).encode();
        // Listing every page past 5 again: the table grown back.
        let regrow = PageMap::delta(&small, &grown).encode();
        assert_eq!(
            table(&[PageMap::encode_full(&base), shrink.clone(), regrow]).unwrap(),
            grown
        );
        // A delta that grows within the bound (it lists pages 1–5 again) but skips
        // page 70: unmapped, though an earlier map had listed it before the shrink.
        let gap = PageMap {
            kind: PageMapKind::Delta,
            page_count: 129,
            entries: (1..=129).filter(|p| *p != 70).map(|p| (p, id(p))).collect(),
        };
        let e = table(&[PageMap::encode_full(&base), shrink, gap.encode()]);
        assert_eq!(e.unwrap_err(), "page 70 unmapped");
    }

    #[test]
    fn crafted_maps_are_refused_before_the_table_grows() {
        // A 17-byte delta claiming 2^32 − 1 pages, and a full map listing fewer pages
        // than it claims.
        let mut delta = b"SQLVMAP1".to_vec();
        delta.push(1);
        delta.extend_from_slice(&u32::MAX.to_le_bytes());
        delta.extend_from_slice(&0u32.to_le_bytes());
        let one = PageMap::encode_full(&[id(1)]);
        assert!(table(&[one.clone(), delta.clone()]).is_err());
        let mut full = PageMap::encode_full(&[id(1), id(2)]);
        full[9..13].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(table(&[one.clone(), full.clone()]).is_err());
        let file = tempfile::tempfile().unwrap();
        let mut a = Applier::new(&file);
        a.apply(&one).unwrap();
        assert!(a.apply(&delta).is_err());
        assert!(a.apply(&full).is_err());
        assert_eq!(a.count, 1);
        assert!(a.mapped.capacity() < 64);
        assert_eq!(file.metadata().unwrap().len(), 32);
        // Out of order, and not a map at all.
        let mut bad = PageMap::delta(&ids(1..=3), &[id(7), id(8), id(9)]).encode();
        bad[17 + 36] = 1;
        assert!(table(&[PageMap::encode_full(&ids(1..=3)), bad]).is_err());
        assert!(table(&[b"nonsense-bytes-here".to_vec()]).is_err());
    }

    #[test]
    fn deltas_out_of_range_order_or_bound_are_refused_and_gaps_unmapped() {
        let delta = |page_count, pgnos: &[u32]| {
            PageMap {
                kind: PageMapKind::Delta,
                page_count,
                entries: pgnos.iter().map(|p| (*p, id(*p))).collect(),
            }
            .encode()
        };
        assert!(table(&[delta(2, &[1, 3])]).is_err(), "page past the count");
        assert!(table(&[delta(2, &[2, 1])]).is_err(), "out of order");
        // On top of one page, 64 listed and 66 claimed: beyond what it can fill.
        let listed: Vec<u32> = (2..=66).filter(|p| *p != 65).collect();
        assert!(table(&[delta(1, &[1]), delta(66, &listed)]).is_err());
        // Listing page 1 again is within the bound, and page 65 stays unmapped.
        let listed: Vec<u32> = (1..=66).filter(|p| *p != 65).collect();
        assert_eq!(
            table(&[delta(1, &[1]), delta(66, &listed)]).unwrap_err(),
            "page 65 unmapped"
        );
    }

    #[test]
    fn passes_cover_every_page_once() {
        assert_eq!(passes(0, 4).count(), 0);
        assert_eq!(passes(4, 4).collect::<Vec<_>>(), vec![(1, 4)]);
        assert_eq!(passes(10, 4).collect::<Vec<_>>(), vec![(1, 4), (5, 4), (9, 2)]);
        assert_eq!(passes(3, 0).collect::<Vec<_>>(), vec![(1, 1), (2, 1), (3, 1)]);
        let file = tempfile::tempfile().unwrap();
        let mut a = Applier::new(&file);
        let all = ids(1..=20_000);
        a.apply(&PageMap::encode_full(&all)).unwrap();
        let mut back = Vec::new();
        for (first, n) in passes(20_000, 7_000) {
            back.extend(read_ids(&file, first, n).unwrap());
        }
        assert_eq!(back, all);
    }
}

/// Restores of snapshots whose maps are crafted with the repository's keys: chains a
/// backup may write (a full map in parts) and damage it never writes.
#[cfg(test)]
mod repo_tests {
    use std::path::Path;

    use bytes::Bytes;
    use sqlvault_format::{MapRef, ObjectId, encode_manifest, layout};

    use super::*;
    use crate::{Access, BackupOptions, InitKeys, RestoreOptions, Session};

    struct Bench {
        dir: tempfile::TempDir,
        writer: Repo,
        reader: Repo,
    }

    async fn bench(name: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path().join("home"));
        let (_flaky, store) = sqlvault_testkit::flaky_store(name, 0, 3);
        let (secret, public) = sqlvault_crypt::generate_x25519();
        Repo::init(&session, &store, InitKeys::Recipients(vec![public.parse().unwrap()]))
            .await
            .unwrap();
        let writer = Repo::open_write(&session, store.clone()).await.unwrap();
        let ids = sqlvault_crypt::Identities::from_secret_string(&secret).unwrap();
        let reader = Repo::open_read(&session, store, Access::Identities(ids)).await.unwrap();
        Bench { dir, writer, reader }
    }

    fn small_packs() -> BackupOptions {
        let mut o = BackupOptions::default().with_pack_target(64 << 10);
        o.frame_pages = 16;
        o
    }

    /// Writes `maps` (plaintexts) as map objects and a manifest like `m` (new id,
    /// `page_count` pages) listing them in order; returns it as the repository reads it.
    async fn craft(b: &Bench, m: &Manifest, page_count: u32, maps: &[Vec<u8>]) -> Manifest {
        let mut c = m.clone();
        c.id = ObjectId::random();
        c.page_count = page_count;
        c.maps.clear();
        for pt in maps {
            let id = ObjectId::random();
            let ct = b.writer.encrypt_meta(pt).unwrap();
            b.writer.store.put(&layout::map(&id), Bytes::from(ct)).await.unwrap();
            c.maps.push(MapRef {
                id,
                mac: hex::encode(b.writer.keys.mac(pt)),
            });
        }
        let ct = b.writer.encrypt_meta(&encode_manifest(&b.writer.keys, &c)).unwrap();
        b.writer
            .store
            .put(&layout::snapshot(&c.id), Bytes::from(ct))
            .await
            .unwrap();
        b.reader.find_snapshot(Some(&c.id.to_string()), None).await.unwrap()
    }

    fn checksum(p: &Path) -> [u8; 32] {
        sqlvault_sqlite::verify_file(p).unwrap().logical_checksum
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_map_written_in_parts_then_deltas_restores_in_passes() {
        let b = bench("parts").await;
        let db = b.dir.path().join("app.db");
        let opts = sqlvault_testkit::GenOptions {
            target_bytes: 512 << 10,
            seed: 1,
            wal: false,
        };
        sqlvault_testkit::generate(&db, &opts).unwrap();
        crate::backup(&b.writer, &db, small_packs()).await.unwrap();
        let first = b.reader.find_snapshot(None, None).await.unwrap();
        let base = b.reader.page_map(&first).await.unwrap();
        // The database grows to about twice its pages, some old ones change.
        sqlvault_testkit::update_random(&db, 0.05, 2).unwrap();
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("CREATE TABLE more(v BLOB)").unwrap();
            for _ in 0..base.len() {
                c.execute("INSERT INTO more VALUES (randomblob(4000))", []).unwrap();
            }
        }
        let r = crate::backup(&b.writer, &db, small_packs()).await.unwrap();
        let second = b.reader.find_snapshot(Some(&r.snapshot_id), None).await.unwrap();
        let current = b.reader.page_map(&second).await.unwrap();
        let n = base.len();
        assert!(current.len() >= 2 * n, "{} pages after {n}", current.len());
        // Full(1..N) of the first snapshot's pages, a delta to 2N pages listing pages
        // N+1..2N, a delta to the second snapshot's table.
        let mut grown = base.clone();
        grown.extend_from_slice(&current[n..2 * n]);
        let maps = vec![
            PageMap::encode_full(&base),
            PageMap::delta(&base, &grown).encode(),
            PageMap::delta(&grown, &current).encode(),
        ];
        let m = craft(&b, &second, current.len() as u32, &maps).await;
        assert_eq!(b.reader.page_map(&m).await.unwrap(), current);
        let want = checksum(&{
            let p = b.dir.path().join("want.db");
            crate::restore_snapshot(&b.reader, &second, &p, &RestoreOptions::default())
                .await
                .unwrap();
            p
        });
        for per in [3, 100, 0] {
            let out = b.dir.path().join(format!("out-{per}.db"));
            crate::restore_snapshot(&b.reader, &m, &out, &RestoreOptions::default().with_pass_pages(per))
                .await
                .unwrap_or_else(|e| panic!("{per}: {}", e.one_line()));
            assert_eq!(checksum(&out), want, "{per}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn maps_that_do_not_give_the_manifest_its_pages_are_refused_as_corrupt() {
        let b = bench("bad-maps").await;
        let db = b.dir.path().join("app.db");
        sqlvault_testkit::generate(
            &db,
            &sqlvault_testkit::GenOptions {
                target_bytes: 256 << 10,
                seed: 4,
                wal: false,
            },
        )
        .unwrap();
        crate::backup(&b.writer, &db, small_packs()).await.unwrap();
        let m = b.reader.find_snapshot(None, None).await.unwrap();
        let pages = b.reader.page_map(&m).await.unwrap();
        let n = pages.len() as u32;
        let half = &pages[..n as usize / 2];
        let listing = |count: u32, skip: u32| {
            PageMap {
                kind: PageMapKind::Delta,
                page_count: count,
                entries: (1..=count)
                    .filter(|p| *p != skip)
                    .map(|p| (p, pages[p as usize - 1]))
                    .collect(),
            }
            .encode()
        };
        let cases: Vec<(&str, &str, u32, Vec<Vec<u8>>)> = vec![
            // The manifest claims a page more than the maps give.
            ("count", "manifest says", n + 1, vec![PageMap::encode_full(&pages)]),
            // A delta claiming more pages than it lists.
            (
                "bound",
                "corrupt or was tampered with",
                n,
                vec![PageMap::encode_full(half), {
                    let mut d = PageMap::delta(half, half).encode();
                    d[9..13].copy_from_slice(&n.to_le_bytes());
                    d
                }],
            ),
            // A delta that grows within its bound but leaves a page out.
            (
                "unmapped",
                "unmapped",
                n,
                vec![PageMap::encode_full(half), listing(n, n - 2)],
            ),
        ];
        for (what, says, count, maps) in cases {
            let c = craft(&b, &m, count, &maps).await;
            let out = b.dir.path().join(format!("{what}.db"));
            let e = crate::restore_snapshot(&b.reader, &c, &out, &RestoreOptions::default().with_pass_pages(7))
                .await
                .unwrap_err();
            assert_eq!(
                (e.kind(), e.code()),
                (crate::ErrorKind::Integrity, "repo.corrupt-object"),
                "{what}: {}",
                e.one_line()
            );
            assert!(e.one_line().contains(says), "{what}: {}", e.one_line());
            assert!(!out.exists(), "{what}");
            // page_map, which check and copy use, says the same.
            let e2 = b.reader.page_map(&c).await.unwrap_err();
            assert_eq!(e.one_line(), e2.one_line(), "{what}");
        }
        // The scratch tables are gone with their restores.
        let tmp = b.writer.session.temp_dir().to_path_buf();
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| !n.to_string_lossy().contains("restore")),
            "{left:?}"
        );
    }
}
