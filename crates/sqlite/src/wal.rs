//! Reading a WAL file as SQLite itself would recover it: the header, then frame after
//! frame while each one's salts match the header's and the checksum chain holds; only
//! frames up to the last commit frame are committed. The groundwork of continuous
//! replication (shipping committed frames), kept free of SQLite's API so that it can
//! read a WAL another process is appending to.
//!
//! The format (sqlite.org/fileformat2.html#walformat): a 32-byte header — magic
//! (`0x377f0682`: checksums over little-endian words, `0x377f0683`: big-endian), format
//! version 3007000, page size, checkpoint sequence, two salts, two checksum words over
//! the first 24 bytes — then frames of a 24-byte header (page number, the database size
//! in pages after a commit or 0, the two salts, two cumulative checksum words over the
//! frame header's first 8 bytes and the page) and one page. A frame whose salts differ
//! from the header's is left over from an earlier generation of the WAL (it was
//! restarted); a frame whose checksum breaks the chain was torn or overwritten. Either
//! ends the valid part, as it does for SQLite's recovery.

use std::io::{Read, Seek, SeekFrom};

/// Bytes of the WAL header.
pub const WAL_HEADER: usize = 32;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 24;

const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const VERSION: u32 = 3_007_000;

/// Why a WAL header cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalError {
    /// Shorter than a header (an empty WAL is normal: nothing to recover).
    #[error("the WAL is shorter than its 32-byte header")]
    Short,
    /// Not a WAL header: wrong magic or version.
    #[error("not a WAL header (magic {magic:#010x}, version {version})")]
    NotWal {
        /// The magic found.
        magic: u32,
        /// The version found.
        version: u32,
    },
    /// A page size SQLite never writes.
    #[error("the WAL header names page size {0}, which SQLite never uses")]
    PageSize(u32),
    /// The header's own checksum does not match: it was torn or damaged.
    #[error("the WAL header's checksum does not match")]
    Checksum,
}

/// A WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums are computed over big-endian words (magic `0x377f0683`).
    pub big_endian: bool,
    /// Database page size.
    pub page_size: u32,
    /// Checkpoint sequence number: incremented each time the WAL is restarted.
    pub checkpoint_seq: u32,
    /// The salts every frame of this generation carries.
    pub salt: [u32; 2],
    /// The checksum of the header, which the first frame's chain starts from.
    pub checksum: [u32; 2],
}

impl WalHeader {
    /// Parses and checks a header.
    pub fn parse(b: &[u8]) -> Result<WalHeader, WalError> {
        let b: &[u8; WAL_HEADER] = b
            .get(..WAL_HEADER)
            .and_then(|b| b.try_into().ok())
            .ok_or(WalError::Short)?;
        let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let (magic, version) = (be(0), be(4));
        let big_endian = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return Err(WalError::NotWal { magic, version }),
        };
        if version != VERSION {
            return Err(WalError::NotWal { magic, version });
        }
        // Stored as is, except 65536, stored as 1 (as in the database header).
        let page_size = match be(8) {
            1 => 65_536,
            n => n,
        };
        if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::PageSize(page_size));
        }
        let checksum = checksum(big_endian, [0, 0], &b[..24]);
        if checksum != [be(24), be(28)] {
            return Err(WalError::Checksum);
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be(12),
            salt: [be(16), be(20)],
            checksum,
        })
    }

    /// Bytes of one frame (header and page).
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER as u64 + u64::from(self.page_size)
    }

    /// Where frame `n` (1-based, as SQLite counts) starts in the file.
    pub fn frame_offset(&self, n: u32) -> u64 {
        WAL_HEADER as u64 + u64::from(n.saturating_sub(1)) * self.frame_bytes()
    }
}

/// SQLite's WAL checksum, continued from `s` over `data` (a multiple of 8 bytes).
pub fn checksum(big_endian: bool, s: [u32; 2], data: &[u8]) -> [u32; 2] {
    let [mut s1, mut s2] = s;
    for w in data.chunks_exact(8) {
        let word = |i: usize| {
            let b: [u8; 4] = w[i..i + 4].try_into().expect("4 bytes");
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s1 = s1.wrapping_add(word(0)).wrapping_add(s2);
        s2 = s2.wrapping_add(word(4)).wrapping_add(s1);
    }
    [s1, s2]
}

/// One valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Its number, from 1.
    pub n: u32,
    /// The database page it holds.
    pub page: u32,
    /// On a commit frame, the database's size in pages after the commit; else 0.
    pub commit_size: u32,
    /// The checksum chain after it: a later scan that finds the same value at the same
    /// frame knows the WAL up to here is unchanged.
    pub checksum: [u32; 2],
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalScan {
    /// The header.
    pub header: WalHeader,
    /// Every valid frame, in order: the committed ones and any after the last commit.
    pub frames: Vec<Frame>,
}

impl WalScan {
    /// The committed frames: up to and including the last commit frame.
    pub fn committed(&self) -> &[Frame] {
        let end = self
            .frames
            .iter()
            .rposition(|f| f.commit_size != 0)
            .map_or(0, |i| i + 1);
        &self.frames[..end]
    }

    /// The database size in pages after the last commit, if any frame committed.
    pub fn commit_size(&self) -> Option<u32> {
        self.committed().last().map(|f| f.commit_size)
    }

    /// Where a follower that has shipped every committed frame stands.
    pub fn position(&self) -> Position {
        let last = self.committed().last();
        Position {
            salt: self.header.salt,
            checkpoint_seq: self.header.checkpoint_seq,
            frame: last.map_or(0, |f| f.n),
            checksum: last.map_or(self.header.checksum, |f| f.checksum),
        }
    }

    /// How this WAL continues from `p`, where a follower stopped (module docs of what
    /// each answer means for it).
    pub fn since(&self, p: &Position) -> Continuity {
        if self.header.salt != p.salt {
            return Continuity::Restarted;
        }
        let at = p.frame as usize;
        let here = match at {
            0 => Some(self.header.checksum),
            n => self.frames.get(n - 1).map(|f| f.checksum),
        };
        match here {
            None => Continuity::Truncated {
                valid: self.frames.len() as u32,
            },
            Some(c) if c != p.checksum => Continuity::Overwritten,
            Some(_) => Continuity::Continues {
                new: at..self.committed().len().max(at),
            },
        }
    }
}

/// Where a follower of a WAL stopped: after frame `frame` (0: none yet) of the WAL
/// generation whose header carries `salt`, the checksum chain then being `checksum`.
/// The chain value stands for every byte of every frame up to there: a later scan that
/// finds it at the same frame knows nothing before was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The generation's salts.
    pub salt: [u32; 2],
    /// The generation's checkpoint sequence (one more per restart).
    pub checkpoint_seq: u32,
    /// The last frame shipped.
    pub frame: u32,
    /// The checksum chain after it (the header's checksum for frame 0).
    pub checksum: [u32; 2],
}

/// What became of the WAL since a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    /// The same generation still holds everything up to the position unchanged; the
    /// committed frames at these indices (into [`WalScan::frames`]) are new, maybe none.
    Continues {
        /// Indices of the new committed frames.
        new: std::ops::Range<usize>,
    },
    /// Another generation: the WAL was restarted after a checkpoint copied it into the
    /// database. Whether commits were made (and checkpointed away) between the
    /// position and the restart cannot be told from the WAL: only a follower that held
    /// a read mark at its position (which stops the restart) may go on without a new
    /// base.
    Restarted,
    /// The same generation holds fewer valid frames than the position: truncated, or
    /// its tail damaged. A break: what was shipped is no longer what the WAL says.
    Truncated {
        /// Valid frames left.
        valid: u32,
    },
    /// The frame at the position carries another checksum chain: frames up to it were
    /// rewritten. A break.
    Overwritten,
}

/// Reads the WAL from its start: `Ok(None)` when it is shorter than a header (empty:
/// nothing to recover). Frames are read one at a time (memory: one page), from frame
/// `1` up to the first that is short, carries other salts, or breaks the chain.
pub fn scan<R: Read + Seek>(wal: &mut R) -> Result<Option<WalScan>, ScanError> {
    wal.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; WAL_HEADER];
    if !read_full(wal, &mut head)? {
        return Ok(None);
    }
    let header = WalHeader::parse(&head)?;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; FRAME_HEADER + header.page_size as usize];
    let mut chain = header.checksum;
    let mut n = 0u32;
    while read_full(wal, &mut buf)? {
        let be = |i: usize| u32::from_be_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        if [be(8), be(12)] != header.salt || be(0) == 0 {
            break;
        }
        let c = checksum(header.big_endian, chain, &buf[..8]);
        let c = checksum(header.big_endian, c, &buf[FRAME_HEADER..]);
        if c != [be(16), be(20)] {
            break;
        }
        chain = c;
        n += 1;
        frames.push(Frame {
            n,
            page: be(0),
            commit_size: be(4),
            checksum: c,
        });
    }
    Ok(Some(WalScan { header, frames }))
}

/// Why a WAL could not be scanned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// Reading the file failed.
    #[error("cannot read the WAL")]
    Io(#[from] std::io::Error),
    /// Its header is not a WAL header.
    #[error(transparent)]
    Header(#[from] WalError),
}

/// Fills `buf`; `false` when the input ends first (a torn tail is not an error).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(big_endian: bool, page_size: u32, salt: [u32; 2]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend((if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        h.extend(VERSION.to_be_bytes());
        h.extend(page_size.to_be_bytes());
        h.extend(7u32.to_be_bytes());
        h.extend(salt[0].to_be_bytes());
        h.extend(salt[1].to_be_bytes());
        let c = checksum(big_endian, [0, 0], &h);
        h.extend(c[0].to_be_bytes());
        h.extend(c[1].to_be_bytes());
        h
    }

    fn frame(big_endian: bool, chain: &mut [u32; 2], salt: [u32; 2], page: u32, commit: u32, fill: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(page.to_be_bytes());
        f.extend(commit.to_be_bytes());
        f.extend(salt[0].to_be_bytes());
        f.extend(salt[1].to_be_bytes());
        let data = vec![fill; 512];
        let c = checksum(big_endian, *chain, &f[..8]);
        let c = checksum(big_endian, c, &data);
        *chain = c;
        f.extend(c[0].to_be_bytes());
        f.extend(c[1].to_be_bytes());
        f.extend(data);
        f
    }

    fn wal(big_endian: bool, frames: &[(u32, u32)]) -> Vec<u8> {
        let salt = [0x1111, 0x2222];
        let mut w = header(big_endian, 512, salt);
        let mut chain = WalHeader::parse(&w).unwrap().checksum;
        for (i, (page, commit)) in frames.iter().enumerate() {
            w.extend(frame(big_endian, &mut chain, salt, *page, *commit, i as u8));
        }
        w
    }

    #[test]
    fn committed_frames_end_at_the_last_commit_in_either_byte_order() {
        for be in [false, true] {
            let w = wal(be, &[(1, 0), (2, 2), (3, 0), (1, 3), (4, 0)]);
            let s = scan(&mut std::io::Cursor::new(&w)).unwrap().unwrap();
            assert_eq!(s.header.page_size, 512);
            assert_eq!(s.frames.len(), 5);
            assert_eq!(s.committed().len(), 4);
            assert_eq!(s.commit_size(), Some(3));
            assert_eq!(s.header.frame_offset(2), 32 + 536);
        }
    }

    #[test]
    fn a_torn_tail_a_flipped_byte_and_old_salts_end_the_valid_part() {
        let w = wal(false, &[(1, 1), (2, 2), (3, 3)]);
        // Torn in the third frame: two frames stand.
        let torn = &w[..w.len() - 100];
        let s = scan(&mut std::io::Cursor::new(torn)).unwrap().unwrap();
        assert_eq!(s.committed().len(), 2);
        // A flipped byte in the second frame's page: only the first stands.
        let mut flipped = w.clone();
        flipped[32 + 536 + 24 + 10] ^= 1;
        let s = scan(&mut std::io::Cursor::new(&flipped)).unwrap().unwrap();
        assert_eq!(s.committed().len(), 1);
        // A frame from an earlier generation (other salts) after the first: ignored.
        let mut old = wal(false, &[(1, 1)]);
        let mut chain = s.frames[0].checksum;
        old.extend(frame(false, &mut chain, [9, 9], 2, 2, 7));
        let s = scan(&mut std::io::Cursor::new(&old)).unwrap().unwrap();
        assert_eq!(s.frames.len(), 1);
    }

    #[test]
    fn a_follower_sees_appends_rewrites_truncation_and_restarts() {
        let scan_of = |w: &[u8]| scan(&mut std::io::Cursor::new(w)).unwrap().unwrap();
        let a = scan_of(&wal(false, &[(1, 0), (2, 2)]));
        let p = a.position();
        assert_eq!(p.frame, 2);
        assert_eq!(a.since(&p), Continuity::Continues { new: 2..2 });
        // Appended: one uncommitted frame, then a commit.
        let b = scan_of(&wal(false, &[(1, 0), (2, 2), (3, 0)]));
        assert_eq!(b.since(&p), Continuity::Continues { new: 2..2 }, "not committed yet");
        let c = scan_of(&wal(false, &[(1, 0), (2, 2), (3, 0), (1, 3)]));
        assert_eq!(c.since(&p), Continuity::Continues { new: 2..4 });
        // From the very start (nothing shipped yet).
        let empty = scan_of(&wal(false, &[]));
        assert_eq!(c.since(&empty.position()), Continuity::Continues { new: 0..4 });
        // Truncated below the position.
        let t = scan_of(&wal(false, &[(1, 1)]));
        assert_eq!(t.since(&p), Continuity::Truncated { valid: 1 });
        // Same salts, other content up to the position.
        let mut o = header(false, 512, [0x1111, 0x2222]);
        let mut chain = WalHeader::parse(&o).unwrap().checksum;
        o.extend(frame(false, &mut chain, [0x1111, 0x2222], 1, 0, 0));
        o.extend(frame(false, &mut chain, [0x1111, 0x2222], 2, 2, 99));
        assert_eq!(scan_of(&o).since(&p), Continuity::Overwritten);
        // Another generation.
        let mut r = header(false, 512, [0x1112, 0x3333]);
        let mut chain = WalHeader::parse(&r).unwrap().checksum;
        r.extend(frame(false, &mut chain, [0x1112, 0x3333], 1, 1, 0));
        assert_eq!(scan_of(&r).since(&p), Continuity::Restarted);
    }

    #[test]
    fn headers_that_are_not_wal_headers_are_named() {
        assert_eq!(scan(&mut std::io::Cursor::new(vec![0u8; 10])).unwrap(), None);
        let mut h = header(false, 512, [1, 2]);
        h[31] ^= 1;
        assert_eq!(WalHeader::parse(&h), Err(WalError::Checksum));
        let mut h = header(false, 512, [1, 2]);
        h[3] = 0;
        assert!(matches!(WalHeader::parse(&h), Err(WalError::NotWal { .. })));
        let h = header(false, 1000, [1, 2]);
        assert_eq!(WalHeader::parse(&h), Err(WalError::PageSize(1000)));
        assert_eq!(WalHeader::parse(&header(false, 1, [1, 2])).unwrap().page_size, 65_536);
    }
}
