//! What SQL read from a dump may do to the connection that loads it.
//!
//! The loader's input is untrusted: `sqlvault load` takes any file, and a dump snapshot's
//! SQL was written by a backup host that may be compromised. Verification after the load
//! (integrity_check, the logical checksum, the snapshot's MAC'd record) proves that the
//! *result* is right; it cannot undo what a statement did while it ran. So the connection
//! is fenced in before the first statement, and nothing the input says can lift the fence:
//!
//! - an authorizer (it runs when a statement is prepared, never per row) that allows only
//!   what builds one database: DDL and DML on schema `main`, on tables the input itself
//!   created; an allow-list of pragmas (those a dump writes, none that names a file or
//!   another database) and of functions (deterministic built-ins that a schema's CHECK,
//!   generated-column or index expression may need, and `char`, `unistr`, `replace` for
//!   literals). ATTACH — and VACUUM, whose only way to write is an ATTACH of its output —,
//!   the `temp` schema, virtual-table creation, DROP/ALTER, recursive CTEs and anything
//!   unknown to this list are denied, and the reason is kept for the error;
//! - defensive mode on, untrusted schema, load_extension off: even a hole in the list
//!   above cannot make `sqlite_schema`, shadow tables or pages writable;
//! - a progress handler that interrupts any statement whose work exceeds a budget that
//!   grows with the input already read: a genuine dump's work is proportional to its
//!   size, a recursive or runaway query's is not.
//!
//! Only the loader itself, running SQL text that is a constant in this crate (with bound
//! values it has validated), steps outside the fence ([`Guard::trusted`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// VM instructions between two calls of the progress handler.
const PROGRESS_OPS: u32 = 10_000;

/// Work any statement may do whatever the input's size: 10^8 VM steps (about a second).
pub(crate) const BASE_STEPS: u64 = 100_000_000;

/// Work a statement may do per byte of input read so far. Measured on genuine dumps
/// (`building_indexes_on_a_large_table_stays_far_below_the_budget`, and the real
/// databases of the corpus): the costliest statement, a CREATE INDEX over a large table,
/// takes about 0.2 steps per byte of the dump; this leaves a margin of 300.
pub(crate) const STEPS_PER_BYTE: u64 = 64;

/// Pragmas a dump may set or read (`PRAGMA x` or `PRAGMA x=v`, schema `main`).
/// `writable_schema` is not here: only the loader sets it, for the sections it validates.
const PRAGMAS: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "encoding",
    "foreign_keys",
    "journal_mode",
    "page_size",
    "user_version",
];

/// The tables SQLite maintains itself; a dump creates and fills them.
pub(crate) const INTERNAL_TABLES: &[&str] = &["sqlite_sequence", "sqlite_stat1", "sqlite_stat3", "sqlite_stat4"];

/// The only statement creating each of [`INTERNAL_TABLES`] that a load runs: the text
/// SQLite itself writes into `sqlite_schema` for it, which is what a dump copies.
pub(crate) const INTERNAL_CREATES: &[&str] = &[
    "CREATE TABLE sqlite_sequence(name,seq)",
    "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
    "CREATE TABLE sqlite_stat3(tbl,idx,neq,nlt,ndlt,sample)",
    "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)",
];

/// Functions the input may call: what dump literals use (`char`; `replace` and `unistr`
/// in the stock shell's), and the deterministic built-ins a schema's CHECK constraints,
/// generated columns and index expressions may evaluate during the load. None reads or
/// writes a file, another database or the connection's state; `zeroblob`, `randomblob`,
/// `load_extension`, `fts3_tokenizer`, `sqlite_*` and every aggregate are not here.
const FUNCTIONS: &[&str] = &[
    "->",
    "->>",
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "cos",
    "cosh",
    "date",
    "datetime",
    "degrees",
    "exp",
    "floor",
    "format",
    "glob",
    "hex",
    "if",
    "ifnull",
    "iif",
    "instr",
    "json",
    "json_array",
    "json_array_insert",
    "json_array_length",
    "json_error_position",
    "json_extract",
    "json_insert",
    "json_object",
    "json_patch",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_set",
    "json_type",
    "json_valid",
    "jsonb",
    "jsonb_array",
    "jsonb_array_insert",
    "jsonb_extract",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_patch",
    "jsonb_remove",
    "jsonb_replace",
    "jsonb_set",
    "julianday",
    "length",
    "like",
    "likelihood",
    "likely",
    "ln",
    "log",
    "log10",
    "log2",
    "lower",
    "ltrim",
    "max",
    "min",
    "mod",
    "nullif",
    "octet_length",
    "pi",
    "pow",
    "power",
    "printf",
    "quote",
    "radians",
    "replace",
    "round",
    "rtrim",
    "sign",
    "sin",
    "sinh",
    "soundex",
    "sqrt",
    "strftime",
    "substr",
    "substring",
    "tan",
    "tanh",
    "time",
    "timediff",
    "trim",
    "trunc",
    "typeof",
    "unhex",
    "unicode",
    "unistr",
    "unistr_quote",
    "unixepoch",
    "unlikely",
    "upper",
];

#[derive(Debug, Default)]
struct Policy {
    /// The loader's own constant SQL is running.
    trusted: bool,
    /// Tables of `main` the input created (lowercase), plus SQLite's internal ones.
    tables: HashSet<String>,
    /// Why the last denied action was denied.
    denied: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    policy: Mutex<Policy>,
    steps: AtomicU64,
    /// The most steps one statement of the input took so far.
    peak: AtomicU64,
    budget: AtomicU64,
    exceeded: AtomicBool,
}

/// The fence around a loading connection; see the module docs.
#[derive(Debug)]
pub(crate) struct Guard {
    shared: Arc<Shared>,
}

fn lock(p: &Mutex<Policy>) -> MutexGuard<'_, Policy> {
    // A panic cannot happen with the lock held (decide does not panic); be total anyway.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guard {
    /// Fences `conn` in. Call after the loader's own setup pragmas and before the first
    /// statement of the input.
    pub(crate) fn install(conn: &mut Connection) -> rusqlite::Result<Guard> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false)?;
        // SAFETY: the handle is valid while `conn` lives; the call only clears two flags
        // (the C API and the SQL function of load_extension).
        let rc = unsafe { rusqlite::ffi::sqlite3_enable_load_extension(conn.handle(), 0) };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None));
        }
        let mut policy = Policy::default();
        policy.tables.extend(INTERNAL_TABLES.iter().map(|t| t.to_string()));
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            budget: AtomicU64::new(BASE_STEPS),
            ..Shared::default()
        });
        let s = shared.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let mut p = lock(&s.policy);
            match decide(&mut p, &ctx) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    p.denied.get_or_insert(why);
                    Authorization::Deny
                }
            }
        }))?;
        let s = shared.clone();
        conn.progress_handler(
            PROGRESS_OPS as i32,
            Some(move || {
                let done = s.steps.fetch_add(u64::from(PROGRESS_OPS), Ordering::Relaxed) + u64::from(PROGRESS_OPS);
                if done > s.budget.load(Ordering::Relaxed) {
                    s.exceeded.store(true, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            }),
        )?;
        Ok(Guard { shared })
    }

    /// Before each statement of the input: a fresh work budget, no denial recorded.
    pub(crate) fn start(&self, budget: u64) {
        let s = &self.shared;
        s.peak.fetch_max(s.steps.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        s.budget.store(budget, Ordering::Relaxed);
        s.exceeded.store(false, Ordering::Relaxed);
        lock(&s.policy).denied = None;
    }

    /// The most work one statement of the input did: VM steps, counted in units of
    /// 10,000 (statements below that count as nothing).
    pub(crate) fn peak_steps(&self) -> u64 {
        let s = &self.shared;
        s.peak.load(Ordering::Relaxed).max(s.steps.load(Ordering::Relaxed))
    }

    /// Why the statement just run failed, if the fence stopped it.
    pub(crate) fn refusal(&self) -> Option<String> {
        let s = &self.shared;
        if let Some(why) = lock(&s.policy).denied.take() {
            return Some(why);
        }
        s.exceeded.load(Ordering::Relaxed).then(|| {
            format!(
                "it needed more than {} steps of work, more than a dump of this size ever does (a recursive or \
                 runaway query)",
                s.budget.load(Ordering::Relaxed)
            )
        })
    }

    /// Runs the loader's own constant SQL, with defensive mode off if `relax`; the fence
    /// is back up when `f` returns, whatever it returned.
    pub(crate) fn trusted<T>(
        &self,
        conn: &Connection,
        relax: bool,
        f: impl FnOnce() -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        lock(&self.shared.policy).trusted = true;
        self.start(u64::MAX);
        let r = if relax {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)
                .and_then(|_| f())
        } else {
            f()
        };
        let back = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true);
        lock(&self.shared.policy).trusted = false;
        let r = r?;
        // Defensive mode not back on would be a hole: fail the load rather than go on.
        back?;
        Ok(r)
    }
}

fn is_main(db: Option<&str>) -> bool {
    db.is_none_or(|d| d.eq_ignore_ascii_case("main"))
}

/// The authorizer's rule: `Ok` allows, `Err` says why not.
fn decide(p: &mut Policy, ctx: &AuthContext<'_>) -> Result<(), String> {
    if p.trusted {
        return Ok(());
    }
    let main = is_main(ctx.database_name);
    let other = || {
        format!(
            "it uses schema {}: SQL from a dump builds only the main database",
            ctx.database_name.unwrap_or("?")
        )
    };
    let known = |p: &Policy, t: &str| p.tables.contains(&t.to_ascii_lowercase());
    match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } | AuthAction::Select => Ok(()),
        AuthAction::CreateTable { table_name } => {
            if !main {
                Err(other())
            } else if table_name.len() >= 7 && table_name[..7].eq_ignore_ascii_case("sqlite_") {
                Err(format!(
                    "it creates {table_name}: names starting with sqlite_ are SQLite's"
                ))
            } else {
                p.tables.insert(table_name.to_ascii_lowercase());
                Ok(())
            }
        }
        // CREATE INDEX asks for REINDEX of the index it fills.
        AuthAction::CreateIndex { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::CreateTrigger { .. } => {
            if main {
                Ok(())
            } else {
                Err(other())
            }
        }
        // SQLite itself refuses a write to sqlite_schema from SQL text (read-only outside
        // writable_schema, which defensive mode and this list keep off); CREATE needs
        // these permissions for its own row.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::Read { table_name, .. }
            if table_name.eq_ignore_ascii_case("sqlite_master") && main =>
        {
            Ok(())
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::Read { table_name, .. } => {
            if !main {
                Err(other())
            } else if known(p, table_name) {
                Ok(())
            } else {
                Err(format!(
                    "it uses {table_name}, which is not an ordinary table this input created"
                ))
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            if !main {
                Err(other())
            } else if PRAGMAS.iter().any(|n| n.eq_ignore_ascii_case(pragma_name)) {
                Ok(())
            } else {
                let v = pragma_value.map(|v| format!("={v}")).unwrap_or_default();
                Err(format!("PRAGMA {pragma_name}{v} is not one a dump sets"))
            }
        }
        AuthAction::Function { function_name } => {
            if FUNCTIONS
                .binary_search(&function_name.to_ascii_lowercase().as_str())
                .is_ok()
            {
                Ok(())
            } else {
                Err(format!("function {function_name}() is not one a dump may call"))
            }
        }
        AuthAction::Recursive => Err("a recursive common table expression can run without end".into()),
        AuthAction::Attach { filename } => Err(format!(
            "it attaches {filename:?} (ATTACH, or VACUUM, which attaches its output): SQL from a dump \
             builds only its own database"
        )),
        AuthAction::Detach { .. } => Err("DETACH is never part of a dump".into()),
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Err("temporary objects are never part of a dump".into()),
        AuthAction::CreateVtable { .. } => {
            Err("CREATE VIRTUAL TABLE would run the module's code; a dump records virtual tables as schema rows".into())
        }
        AuthAction::DropTable { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropVtable { .. } => Err("DROP is never part of a dump".into()),
        AuthAction::AlterTable { .. } => Err("ALTER TABLE is never part of a dump".into()),
        AuthAction::Analyze { .. } => Err("ANALYZE is never part of a dump (it carries sqlite_stat rows)".into()),
        _ => Err("this operation is never part of a dump".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_list_is_sorted_for_binary_search() {
        assert!(FUNCTIONS.windows(2).all(|w| w[0] < w[1]), "FUNCTIONS must stay sorted");
    }
}
