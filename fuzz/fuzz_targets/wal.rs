//! The WAL reader (`sqlvault_sqlite::wal::scan`) on arbitrary bytes: the `-wal` file
//! beside a database is written by whatever process has the database open (or left
//! behind by one that crashed). It must never panic or hang, its valid frames must
//! follow one another with the header's page size, and every committed frame must
//! come before the last commit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlvault_sqlite::wal::{FRAME_HEADER, WAL_HEADER, scan};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(s)) = scan(&mut std::io::Cursor::new(data)) else {
        return;
    };
    let frame = FRAME_HEADER as u64 + u64::from(s.header.page_size);
    assert!((WAL_HEADER as u64 + frame * s.frames.len() as u64) <= data.len() as u64);
    for (i, f) in s.frames.iter().enumerate() {
        assert_eq!(f.n as usize, i + 1);
        assert_ne!(f.page, 0);
    }
    if let Some(last) = s.committed().last() {
        assert_ne!(last.commit_size, 0);
    }
});
