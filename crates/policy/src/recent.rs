//! The guard's memory of recent answers, by the address of the names SQLite passes.
//!
//! SQLite asks the authorizer about every column of every statement it prepares, and
//! passes a table's (or function's) name as a pointer to its own string, the same
//! for every column and every statement while the schema stays loaded. Remembering an
//! answer by that address makes the common question a pointer compare and a short
//! byte compare: the bytes at the address must still spell the remembered name, so an
//! address freed and reused for another name is a miss, never a wrong answer. Every
//! change of the rules or the catalog forgets everything.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};

/// Whether the NUL-terminated string at `p` is exactly `name`: compared byte by byte,
/// stopping at the first difference — the string's own NUL differs from every byte of
/// a name, so nothing past it is read.
///
/// # Safety
/// `p` must point to a NUL-terminated string.
unsafe fn spells(p: *const c_char, name: &[u8]) -> bool {
    let p = p.cast::<u8>();
    // SAFETY: every byte read is at or before the string's terminating NUL.
    !name.is_empty()
        && name.iter().enumerate().all(|(i, &b)| unsafe { *p.add(i) } == b)
        && unsafe { *p.add(name.len()) } == 0
}

fn read_slot(table: *const c_char, column: *const c_char) -> usize {
    ((table as usize).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (column as usize).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) >> 59
        & 31
}

/// One remembered column-read decision.
#[derive(Debug, Clone)]
pub(crate) struct RecentRead {
    table: usize,
    column: usize,
    table_name: [u8; RECENT_NAME],
    table_len: u8,
    column_name: [u8; RECENT_NAME],
    column_len: u8,
    decision: u8,
}

impl Default for RecentRead {
    fn default() -> Self {
        RecentRead {
            table: 0,
            column: 0,
            table_name: [0; RECENT_NAME],
            table_len: 0,
            column_name: [0; RECENT_NAME],
            column_len: 0,
            decision: 0,
        }
    }
}

/// One remembered answer about a name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recent {
    addr: usize,
    /// The name, inline (no pointer to chase on the hot path); longer names are not
    /// remembered.
    name: [u8; RECENT_NAME],
    len: u8,
    /// Bits: read, insert, update, delete, function; the high bit marks a function.
    allowed: u8,
}

pub(crate) const RECENT_NAME: usize = 30;

/// Remembered answers: about names (a bit per kind of question) and about column reads
/// (a small code), by address.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    names: RefCell<[Recent; 16]>,
    reads: RefCell<[RecentRead; 32]>,
}

impl Memory {
    /// Forgets every remembered answer: the rules or the catalog changed.
    pub fn forget(&self) {
        *self.names.borrow_mut() = Default::default();
        *self.reads.borrow_mut() = Default::default();
    }

    /// The answer bit `bit` for the name at `name`, remembered or else computed by
    /// `fresh` (all bits for that name at once) and remembered. `function` keeps a
    /// function's entry apart from a table's.
    ///
    /// # Safety
    /// `name` must point to a NUL-terminated string valid for the call.
    pub unsafe fn name_bit(
        &self,
        name: *const c_char,
        bit: u8,
        function: bool,
        fresh: impl FnOnce(&[u8]) -> u8,
    ) -> bool {
        let addr = name as usize;
        // Fibonacci hashing: heap addresses differ in their middle bits.
        let slot = (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) & 15;
        let Ok(mut names) = self.names.try_borrow_mut() else {
            return false;
        };
        let r = &mut names[slot];
        // SAFETY: the caller's promise.
        if r.addr == addr && unsafe { spells(name, &r.name[..r.len as usize]) } && (r.allowed & 0x80 != 0) == function {
            return r.allowed & bit != 0;
        }
        // SAFETY: the caller's promise.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
        let allowed = fresh(bytes);
        if bytes.len() <= RECENT_NAME {
            let mut stored = [0u8; RECENT_NAME];
            stored[..bytes.len()].copy_from_slice(bytes);
            *r = Recent {
                addr,
                name: stored,
                len: bytes.len() as u8,
                allowed: if function { allowed | 0x80 } else { allowed },
            };
        }
        allowed & bit != 0
    }

    /// A remembered code for reading the column named at `column` of the table named at
    /// `table`, if the bytes at both addresses still spell the names it was for.
    ///
    /// # Safety
    /// Both must point to NUL-terminated strings valid for the call.
    pub unsafe fn read(&self, table: *const c_char, column: *const c_char) -> Option<u8> {
        let reads = self.reads.try_borrow().ok()?;
        let r = &reads[read_slot(table, column)];
        // SAFETY: the caller's promise.
        (r.table == table as usize
            && r.column == column as usize
            && unsafe {
                spells(table, &r.table_name[..r.table_len as usize])
                    && spells(column, &r.column_name[..r.column_len as usize])
            })
        .then_some(r.decision)
    }

    /// Remembers `code` for a column read (see [`Memory::read`]).
    ///
    /// # Safety
    /// Both must point to NUL-terminated strings valid for the call.
    pub unsafe fn remember_read(&self, table: *const c_char, column: *const c_char, code: u8) {
        let Ok(mut reads) = self.reads.try_borrow_mut() else {
            return;
        };
        // SAFETY: the caller's promise.
        let (t, c) = unsafe { (CStr::from_ptr(table).to_bytes(), CStr::from_ptr(column).to_bytes()) };
        if t.len() > RECENT_NAME || c.len() > RECENT_NAME {
            return;
        }
        let r = &mut reads[read_slot(table, column)];
        r.table = table as usize;
        r.column = column as usize;
        r.table_name[..t.len()].copy_from_slice(t);
        r.table_len = t.len() as u8;
        r.column_name[..c.len()].copy_from_slice(c);
        r.column_len = c.len() as u8;
        r.decision = code;
    }
}
