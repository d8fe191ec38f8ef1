//! The guard: a connection that acts for one principal. It installs the authorizer
//! with the principal's role, turns on SQLite's defensive settings, and reports every
//! decision to an optional audit sink.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, ffi};

use crate::auth::Identity;
use crate::rules::{Catalog, Decision, Kind, Rules};
use crate::{GuardError, Policy};

/// One authorizer decision, as an audit sink receives it. Borrowed: a sink that keeps
/// it copies what it needs. Never holds a secret or a statement's values: SQLite asks
/// about names, not data.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// The principal the connection acts for.
    pub principal: &'a str,
    /// The principal's role.
    pub role: &'a str,
    /// `read`, `insert`, `update`, `delete`, `function`, `pragma`, `transaction`,
    /// `schema`, `temp`, `attach`, `select` or `other`.
    pub action: &'static str,
    /// The table, function, pragma or object the action is on.
    pub object: Option<&'a str>,
    /// The column (reads and updates), or the pragma's value.
    pub detail: Option<&'a str>,
    /// The view or trigger whose body asked, if any.
    pub accessor: Option<&'a str>,
    /// Allowed, masked or denied.
    pub decision: Decision,
    /// Why it was masked or denied.
    pub reason: Option<&'a str>,
}

/// Where a guard reports its decisions: every allowed, masked and denied action, with
/// the principal. Called while a statement is prepared, on the preparing thread: keep
/// it quick (queue to a writer rather than write to disk inline).
pub trait AuditSink: Send + Sync {
    /// Receives one decision.
    fn record(&self, event: &AuditEvent<'_>);
}

impl<F: Fn(&AuditEvent<'_>) + Send + Sync> AuditSink for F {
    fn record(&self, event: &AuditEvent<'_>) {
        self(event)
    }
}

/// An audit sink that emits each decision as a `tracing` event (target
/// `sqlvault_policy::audit`): denials at WARN, the rest at DEBUG.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, e: &AuditEvent<'_>) {
        if e.decision == Decision::Deny {
            tracing::warn!(target: "sqlvault_policy::audit", principal = e.principal, role = e.role, action = e.action,
                object = e.object, detail = e.detail, accessor = e.accessor, reason = e.reason, "denied");
        } else {
            tracing::debug!(target: "sqlvault_policy::audit", principal = e.principal, role = e.role, action = e.action,
                object = e.object, detail = e.detail, accessor = e.accessor, decision = ?e.decision, "authorized");
        }
    }
}

/// Options for [`Policy::guard_with`].
#[derive(Clone, Default)]
pub struct GuardOptions {
    audit: Option<Arc<dyn AuditSink>>,
}

impl fmt::Debug for GuardOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardOptions")
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

impl GuardOptions {
    /// Reports every decision to `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }
}

/// Why a statement was refused: what it tried and the rule that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What was tried: `read users.password_hash`, `pragma writable_schema = 1`.
    pub action: String,
    /// Why not.
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.reason)
    }
}

struct Session {
    identity: Identity,
    rules: Rules,
    /// The guard reading the schema for itself.
    bypass: bool,
    last_denial: Option<Denial>,
    audit: Option<Arc<dyn AuditSink>>,
    /// Tables with the guard's delete trigger, and the trigger's name.
    guarded_tables: Vec<(String, String)>,
    /// `recursive_triggers` before the guard turned it on.
    recursive_triggers: bool,
}

fn describe(a: &AuthAction<'_>) -> (&'static str, Option<String>, Option<String>) {
    use AuthAction as A;
    let s = |x: &str| Some(x.to_string());
    match *a {
        A::Read {
            table_name,
            column_name,
        } => ("read", s(table_name), s(column_name)),
        A::Insert { table_name } => ("insert", s(table_name), None),
        A::Update {
            table_name,
            column_name,
        } => ("update", s(table_name), s(column_name)),
        A::Delete { table_name } => ("delete", s(table_name), None),
        A::Function { function_name } => ("function", s(function_name), None),
        A::Pragma {
            pragma_name,
            pragma_value,
        } => ("pragma", s(pragma_name), pragma_value.map(str::to_string)),
        A::Transaction { .. } | A::Savepoint { .. } => ("transaction", None, None),
        A::Attach { filename } => ("attach", s(filename), None),
        A::Detach { database_name } => ("detach", s(database_name), None),
        A::Select | A::Recursive => ("select", None, None),
        A::CreateTempIndex { table_name, .. } | A::CreateTempTable { table_name } => ("temp", s(table_name), None),
        A::CreateTempTrigger { trigger_name, .. } => ("temp", s(trigger_name), None),
        A::CreateTempView { view_name } => ("temp", s(view_name), None),
        A::DropTempIndex { index_name, .. } => ("temp", s(index_name), None),
        A::DropTempTable { table_name } => ("temp", s(table_name), None),
        A::DropTempTrigger { trigger_name, .. } => ("temp", s(trigger_name), None),
        A::DropTempView { view_name } => ("temp", s(view_name), None),
        A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::Analyze { table_name } => ("schema", s(table_name), None),
        A::CreateVtable {
            table_name,
            module_name,
        }
        | A::DropVtable {
            table_name,
            module_name,
        } => ("schema", s(table_name), s(module_name)),
        A::CreateIndex { index_name, .. } | A::DropIndex { index_name, .. } | A::Reindex { index_name } => {
            ("schema", s(index_name), None)
        }
        A::CreateTrigger { trigger_name, .. } | A::DropTrigger { trigger_name, .. } => {
            ("schema", s(trigger_name), None)
        }
        A::CreateView { view_name } | A::DropView { view_name } => ("schema", s(view_name), None),
        _ => ("other", None, None),
    }
}

fn action_words(a: &AuthAction<'_>) -> String {
    let (what, object, detail) = describe(a);
    let printable = |s: String| crate::hash::printable(&s);
    match (what, object.map(printable), detail.map(printable)) {
        ("read" | "update", Some(t), Some(c)) if !c.is_empty() => format!("{what} of {t}.{c}"),
        ("pragma", Some(p), Some(v)) => format!("pragma {p} = {v}"),
        ("attach", Some(f), _) if f.is_empty() => "VACUUM".into(),
        ("attach", _, _) => "ATTACH".into(),
        (w, Some(o), _) => format!("{w} {o}"),
        (w, None, _) => w.to_string(),
    }
}

impl Session {
    fn authorize(&mut self, ctx: AuthContext<'_>) -> Authorization {
        if self.bypass {
            return Authorization::Allow;
        }
        let v = self.rules.decide(&ctx);
        if v.decision == Decision::Deny {
            self.last_denial = Some(Denial {
                action: action_words(&ctx.action),
                reason: v.reason.clone().unwrap_or_default(),
            });
        }
        if let Some(sink) = &self.audit {
            let (action, object, detail) = describe(&ctx.action);
            sink.record(&AuditEvent {
                principal: &self.identity.principal,
                role: &self.identity.role,
                action,
                object: object.as_deref(),
                detail: detail.as_deref(),
                accessor: ctx.accessor,
                decision: v.decision,
                reason: match v.decision {
                    Decision::Mask => Some("masked"),
                    _ => v.reason.as_deref(),
                },
            });
        }
        match v.decision {
            Decision::Allow => Authorization::Allow,
            Decision::Mask => Authorization::Ignore,
            Decision::Deny => Authorization::Deny,
        }
    }
}

/// A connection acting for one principal: every statement prepared on it is checked
/// against the principal's role. Use it as a [`Connection`] (it dereferences to one);
/// it cannot be turned back into an unguarded connection through a shared reference,
/// since removing the authorizer needs `&mut Connection`.
pub struct Guarded {
    // Before `session`: the connection closes (no more callbacks) before the session
    // the callback points to is freed.
    conn: Connection,
    // Boxed: SQLite holds its address. A `RefCell`, not a lock: a `Guarded` is not
    // `Sync` (its `Connection` is not), so the callback and the methods below all run on
    // the thread that holds it, and never at once (no method runs SQL while borrowing).
    session: Box<RefCell<Session>>,
}

/// Whether the database name SQLite passed is none (a table named without one) or
/// `main`, read byte by byte up to its NUL.
///
/// # Safety
/// `db` is null or a NUL-terminated string.
unsafe fn is_main(db: *const c_char) -> bool {
    if db.is_null() {
        return true;
    }
    let p = db.cast::<u8>();
    // SAFETY: each byte is read only if every byte before it matched a non-NUL byte.
    unsafe { *p == b'm' && *p.add(1) == b'a' && *p.add(2) == b'i' && *p.add(3) == b'n' && *p.add(4) == 0 }
}

/// The C authorizer: the session behind `p`, the arguments as UTF-8 (a name that is
/// not is denied), the rules' answer. A panic is answered with a denial, never unwound
/// into SQLite.
unsafe extern "C" fn authorize_raw(
    p: *mut c_void,
    code: c_int,
    a1: *const c_char,
    a2: *const c_char,
    db: *const c_char,
    accessor: *const c_char,
) -> c_int {
    // SAFETY: `p` is the `RefCell<Session>` of the `Guarded` that installed this
    // callback, alive while it is installed (see `Guarded`).
    let session = unsafe { &*(p as *const RefCell<Session>) };
    // The common case first, converting nothing (nothing here can panic): a SELECT, a
    // read or write of a table the role uses whole, a built-in function.
    if let Ok(s) = session.try_borrow()
        && !s.bypass
        && s.audit.is_none()
    {
        // SAFETY: SQLite passes NUL-terminated strings valid for the call.
        unsafe {
            match code {
                ffi::SQLITE_SELECT => return ffi::SQLITE_OK,
                ffi::SQLITE_READ if !a1.is_null() && is_main(db) => {
                    // A role with column rules reads most through the column memory;
                    // one without, through the table's.
                    if !a2.is_null() && s.rules.has_column_rules() {
                        match s.rules.read_decided_at(a1, a2) {
                            Some(Decision::Allow) => return ffi::SQLITE_OK,
                            Some(Decision::Mask) => return ffi::SQLITE_IGNORE,
                            _ => {}
                        }
                    }
                    if s.rules.allowed_outright_at(code, a1) {
                        return ffi::SQLITE_OK;
                    }
                }
                ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE
                    if !a1.is_null() && is_main(db) && s.rules.allowed_outright_at(code, a1) =>
                {
                    return ffi::SQLITE_OK;
                }
                ffi::SQLITE_FUNCTION if !a2.is_null() && s.rules.allowed_outright_at(code, a2) => {
                    return ffi::SQLITE_OK;
                }
                _ => {}
            }
        }
    }
    // SAFETY: the caller's (SQLite's) promises, passed on.
    unsafe { authorize_slow(session, code, a1, a2, db, accessor) }
}

/// Everything the fast path does not answer: the arguments as UTF-8 (a name that is not
/// is denied), the rules' decision, what it teaches the memory of recent answers. Out
/// of line, so the fast path stays a small function.
///
/// # Safety
/// The strings are null or NUL-terminated and valid for the call.
#[cold]
#[inline(never)]
unsafe fn authorize_slow(
    session: &RefCell<Session>,
    code: c_int,
    a1: *const c_char,
    a2: *const c_char,
    db: *const c_char,
    accessor: *const c_char,
) -> c_int {
    let (raw_a1, raw_a2) = (a1, a2);
    let run = std::panic::AssertUnwindSafe(|| {
        let text = |x: *const c_char| -> Result<Option<&str>, ()> {
            if x.is_null() {
                return Ok(None);
            }
            // SAFETY: SQLite passes NUL-terminated strings valid for the call.
            std::str::from_utf8(unsafe { CStr::from_ptr(x) }.to_bytes())
                .map(Some)
                .map_err(|_| ())
        };
        let (Ok(a1), Ok(a2), Ok(db), Ok(accessor)) = (text(a1), text(a2), text(db), text(accessor)) else {
            return ffi::SQLITE_DENY;
        };
        let Ok(mut s) = session.try_borrow_mut() else {
            return ffi::SQLITE_DENY;
        };
        let ctx = AuthContext {
            action: crate::action::action_of(code, a1, a2),
            database_name: db,
            accessor,
        };
        let answer = s.authorize(ctx);
        match ctx.action {
            // A column of a table in the schema (not a count, not a name the catalog does
            // not know), decided without a denial: the same every time until the rules
            // change.
            AuthAction::Read {
                table_name,
                column_name,
            } if !column_name.is_empty()
                && matches!(db, None | Some("main"))
                && s.rules.catalog.kinds.contains_key(&table_name.to_ascii_lowercase())
                && !s.bypass =>
            {
                let decided = match answer {
                    Authorization::Allow => Some(Decision::Allow),
                    Authorization::Ignore => Some(Decision::Mask),
                    _ => None,
                };
                if let Some(d) = decided {
                    // SAFETY: non-null (the action has both names), NUL-terminated, valid
                    // for the call.
                    unsafe { s.rules.remember_read(raw_a1, raw_a2, d) };
                }
            }
            AuthAction::Read { .. }
            | AuthAction::Insert { .. }
            | AuthAction::Update { .. }
            | AuthAction::Delete { .. }
            | AuthAction::Function { .. }
            | AuthAction::Select
            | AuthAction::Recursive
            | AuthAction::Pragma { .. }
            | AuthAction::Transaction { .. }
            | AuthAction::Savepoint { .. } => {}
            // Creating or dropping may change what the rules know.
            _ => s.rules.forget_recent(),
        }
        match answer {
            Authorization::Allow => ffi::SQLITE_OK,
            Authorization::Ignore => ffi::SQLITE_IGNORE,
            _ => ffi::SQLITE_DENY,
        }
    });
    std::panic::catch_unwind(run).unwrap_or(ffi::SQLITE_DENY)
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        write!(f, "Guarded({:?})", s.identity)
    }
}

impl Deref for Guarded {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// `s` as an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Rows of a PRAGMA statement, each as its columns `cols` (positions).
fn pragma_rows<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    cols: &[usize],
) -> rusqlite::Result<Vec<Vec<Option<T>>>> {
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([], |r| cols.iter().map(|&i| r.get::<_, Option<T>>(i)).collect())?;
    rows.collect()
}

/// Reads what the rules need of the main schema. Only PRAGMA statements and
/// `main.sqlite_schema`, never the table-valued `pragma_*` forms: a table the
/// principal (or anyone) names `pragma_table_list` would take their place and feed the
/// guard a schema of its choosing.
pub(crate) fn read_catalog(conn: &Connection) -> rusqlite::Result<Catalog> {
    let mut c = Catalog::default();
    for row in pragma_rows::<String>(conn, "PRAGMA main.table_list", &[1, 2])? {
        let (Some(name), Some(ty)) = (row[0].clone(), row[1].clone()) else {
            continue;
        };
        let kind = match ty.as_str() {
            "view" => Kind::View,
            "virtual" => Kind::Virtual,
            "shadow" => Kind::Shadow { owner: String::new() },
            _ => Kind::Table,
        };
        let lower = name.to_ascii_lowercase();
        if lower != name {
            c.declared.insert(lower.clone(), name);
        }
        c.kinds.insert(lower, kind);
    }
    c.link_shadows();
    let tables: Vec<(String, Option<String>)> = conn
        .prepare("SELECT name, sql FROM main.sqlite_schema WHERE type = 'table'")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?
        .collect::<Result<_, _>>()?;
    for (table, sql) in tables {
        let t = table.to_ascii_lowercase();
        // Any CHECK makes a table's updates an oracle on what it reads; the word
        // anywhere in its definition is taken for one (a false positive only denies).
        if sql.is_some_and(|s| s.to_ascii_lowercase().contains("check")) {
            c.checks.insert(t.clone());
        }
        // table_xinfo: cid, name, type, notnull, dflt_value, pk, hidden.
        let generated: crate::names::NameSet = pragma_rows::<rusqlite::types::Value>(
            conn,
            &format!("PRAGMA main.table_xinfo({})", literal(&table)),
            &[1, 6],
        )?
        .into_iter()
        .filter(|r| matches!(r[1], Some(rusqlite::types::Value::Integer(2 | 3))))
        .filter_map(|r| match &r[0] {
            Some(rusqlite::types::Value::Text(n)) => Some(n.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
        if !generated.is_empty() {
            c.generated.insert(t.clone(), generated);
        }
        // index_list: seq, name, unique, origin, partial.
        let indexes = pragma_rows::<String>(conn, &format!("PRAGMA main.index_list({})", literal(&table)), &[1])?;
        let mut keys = Vec::new();
        for index in indexes.into_iter().filter_map(|r| r[0].clone()) {
            c.indexes.insert(index.to_ascii_lowercase(), t.clone());
            // index_xinfo: seqno, cid, name, desc, coll, key (rows in seqno order).
            for r in pragma_rows::<rusqlite::types::Value>(
                conn,
                &format!("PRAGMA main.index_xinfo({})", literal(&index)),
                &[2, 5],
            )? {
                if matches!(r[1], Some(rusqlite::types::Value::Integer(1))) {
                    let col = match &r[0] {
                        Some(rusqlite::types::Value::Text(n)) => Some(n.to_ascii_lowercase()),
                        _ => None,
                    };
                    keys.push((index.clone(), col));
                }
            }
        }
        if !keys.is_empty() {
            c.index_keys.insert(t, keys);
        }
    }
    for row in pragma_rows::<String>(conn, "PRAGMA module_list", &[0])? {
        if let Some(m) = &row[0] {
            c.modules.insert(m.to_ascii_lowercase());
        }
    }
    Ok(c)
}

/// SQLite's settings for a connection that runs SQL it did not write: no writes to its
/// own schema or shadow tables, no functions with side effects in the schema, no
/// extensions, no FTS3 tokenizer pointers, no attached databases.
fn harden(conn: &Connection) -> Result<(), GuardError> {
    let set = |c: DbConfig, on: bool, what: &str| -> Result<(), GuardError> {
        match conn.set_db_config(c, on) {
            Ok(v) if v == on => Ok(()),
            Ok(_) => Err(GuardError::Setting(what.into())),
            Err(e) => Err(GuardError::Sqlite(e)),
        }
    };
    set(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true, "SQLITE_DBCONFIG_DEFENSIVE")?;
    set(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false, "trusted_schema=OFF")?;
    set(DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA, false, "writable_schema=OFF")?;
    set(
        DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER,
        false,
        "fts3_tokenizer off",
    )?;
    // SAFETY: the handle is the live connection's; ENABLE_LOAD_EXTENSION takes an int
    // and an optional int* (null: the new value is not reported back).
    let rc = unsafe {
        ffi::sqlite3_db_config(
            conn.handle(),
            ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0 as std::os::raw::c_int,
            std::ptr::null_mut::<std::os::raw::c_int>(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Setting("extension loading off".into()));
    }
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(GuardError::Sqlite)?;
    if conn.limit(Limit::SQLITE_LIMIT_ATTACHED).map_err(GuardError::Sqlite)? != 0 {
        return Err(GuardError::Setting("no attached databases".into()));
    }
    Ok(())
}

/// `INSERT OR REPLACE` and `UPDATE OR REPLACE` delete the rows they conflict with, and
/// SQLite does not ask the authorizer about those deletes: a role that may insert could
/// overwrite or remove any row through a UNIQUE or primary-key conflict. For each table
/// the role may insert into or update but not delete from, a temporary trigger refuses
/// every delete, and `recursive_triggers` (which a principal cannot change: pragma writes
/// are denied) makes SQLite fire delete triggers for REPLACE's deletes. The triggers are
/// this connection's own and a principal can neither drop nor replace them.
fn guard_deletes(conn: &Connection, rules: &Rules, done: &mut Vec<(String, String)>) -> Result<(), GuardError> {
    let tables: Vec<String> = rules
        .tables_needing_delete_guard()
        .into_iter()
        .filter(|t| !done.iter().any(|(d, _)| d == t))
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    conn.execute_batch("PRAGMA recursive_triggers = ON")
        .map_err(GuardError::Sqlite)?;
    for t in tables {
        let name = format!("{}nodelete_{}", crate::rules::GUARD_TRIGGER_PREFIX, done.len() + 1);
        let quoted = t.replace('"', "\"\"");
        let message = format!(
            "sqlvault-policy: deleting rows of {} is not granted",
            crate::hash::printable(&t)
        )
        .replace('\'', "''");
        conn.execute_batch(&format!(
            "CREATE TEMP TRIGGER \"{name}\" BEFORE DELETE ON main.\"{quoted}\" BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ))
        .map_err(GuardError::Sqlite)?;
        done.push((t, name));
    }
    Ok(())
}

impl Policy {
    /// Guards `conn` for `who` with no audit sink. See [`Policy::guard_with`].
    pub fn guard(&self, conn: Connection, who: &Identity) -> Result<Guarded, GuardError> {
        self.guard_with(conn, who, GuardOptions::default())
    }

    /// Guards `conn` for `who` (from [`Policy::authenticate`] on this policy): turns
    /// on `SQLITE_DBCONFIG_DEFENSIVE`, `trusted_schema=OFF`, no extension loading, no
    /// FTS3 tokenizer, no attached databases (refused if the connection has any), reads
    /// the schema, and installs the authorizer. Key a SQLCipher connection first.
    pub fn guard_with(&self, conn: Connection, who: &Identity, opts: GuardOptions) -> Result<Guarded, GuardError> {
        let role = match self.principals.get(&who.principal) {
            Some(p) if p.role == who.role => self.roles.get(&p.role),
            _ => None,
        }
        .ok_or_else(|| GuardError::Identity(crate::hash::printable(&who.principal)))?;
        // database_list: seq, name, file.
        let attached: Vec<String> = pragma_rows::<String>(&conn, "PRAGMA database_list", &[1])
            .map_err(GuardError::Sqlite)?
            .into_iter()
            .filter_map(|r| r[0].clone())
            .filter(|n| n != "main" && n != "temp")
            .collect();
        if !attached.is_empty() {
            return Err(GuardError::Attached(attached.join(", ")));
        }
        // Temporary objects already there would be the application's: a table the
        // principal could count or read as its own, a trigger that runs under its
        // statements. Everything temporary on a guarded connection is the principal's
        // or the guard's, and `into_inner` removes it all.
        let temp: i64 = conn
            .query_row("SELECT count(*) FROM temp.sqlite_schema", [], |r| r.get(0))
            .map_err(GuardError::Sqlite)?;
        if temp > 0 {
            return Err(GuardError::TempObjects(temp as u64));
        }
        let recursive: i64 = conn
            .query_row("PRAGMA recursive_triggers", [], |r| r.get(0))
            .map_err(GuardError::Sqlite)?;
        harden(&conn)?;
        let catalog = read_catalog(&conn).map_err(GuardError::Sqlite)?;
        let rules = Rules::new(&who.role, role, catalog);
        let mut guarded_tables = Vec::new();
        guard_deletes(&conn, &rules, &mut guarded_tables)?;
        let session = Box::new(RefCell::new(Session {
            identity: who.clone(),
            rules,
            bypass: false,
            last_denial: None,
            audit: opts.audit,
            guarded_tables,
            recursive_triggers: recursive != 0,
        }));
        // SAFETY: the handle is live; the pointer is the session this `Guarded` keeps
        // until after the authorizer is removed (`into_inner`) or the connection is
        // closed (the `conn` field drops before `session`).
        let rc = unsafe {
            ffi::sqlite3_set_authorizer(
                conn.handle(),
                Some(authorize_raw),
                &*session as *const RefCell<Session> as *mut c_void,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(GuardError::Setting("the authorizer".into()));
        }
        Ok(Guarded { conn, session })
    }
}

impl Guarded {
    fn lock(&self) -> std::cell::RefMut<'_, Session> {
        self.session.borrow_mut()
    }

    /// The principal and role this connection acts for.
    pub fn identity(&self) -> Identity {
        self.lock().identity.clone()
    }

    /// The most recent denial on this connection: what a statement that failed with
    /// "not authorized" tried, and the rule that stopped it.
    pub fn last_denial(&self) -> Option<Denial> {
        self.lock().last_denial.clone()
    }

    /// Takes the most recent denial, leaving none.
    pub fn take_denial(&self) -> Option<Denial> {
        self.lock().last_denial.take()
    }

    /// Reads the schema again. Call it after another connection changed the schema:
    /// until then, a table made since is granted through `"*"` like any other unless
    /// its name looks like a shadow table; its indexes, CHECK constraints and generated
    /// columns are known only after it, and tables new since get the REPLACE guard.
    pub fn refresh(&self) -> Result<(), GuardError> {
        self.lock().bypass = true;
        // The new rules take effect only once the delete triggers they call for are in
        // place: on any failure the guard keeps the catalog it had.
        let read = read_catalog(&self.conn).map_err(GuardError::Sqlite).and_then(|c| {
            let s = self.lock();
            let mut rules = s.rules.clone();
            let mut done = s.guarded_tables.clone();
            drop(s);
            rules.set_catalog(c);
            guard_deletes(&self.conn, &rules, &mut done)?;
            let mut s = self.lock();
            s.rules = rules;
            s.guarded_tables = done;
            Ok(())
        });
        self.lock().bypass = false;
        read
    }

    /// Removes the authorizer and returns the connection (its defensive settings
    /// stay). For the application's own use, never for the principal's.
    pub fn into_inner(self) -> Result<Connection, GuardError> {
        // SAFETY: removing the callback; the handle is live.
        let rc = unsafe { ffi::sqlite3_set_authorizer(self.conn.handle(), None, std::ptr::null_mut()) };
        if rc != ffi::SQLITE_OK {
            return Err(GuardError::Setting("removing the authorizer".into()));
        }
        // Every temporary object is the principal's or the guard's (the guard refuses a
        // connection that has any): a trigger left behind would run under the
        // application's own statements.
        let objects: Vec<(String, String)> = self
            .conn
            .prepare("SELECT type, name FROM temp.sqlite_schema WHERE type IN ('trigger', 'view', 'table')")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(GuardError::Sqlite)?;
        for kind in ["trigger", "view", "table"] {
            for (_, name) in objects.iter().filter(|(k, _)| k == kind) {
                self.conn
                    .execute_batch(&format!(
                        "DROP {} IF EXISTS temp.\"{}\"",
                        kind.to_uppercase(),
                        name.replace('"', "\"\"")
                    ))
                    .map_err(GuardError::Sqlite)?;
            }
        }
        let recursive = self.lock().recursive_triggers;
        self.conn
            .execute_batch(if recursive {
                "PRAGMA recursive_triggers = ON"
            } else {
                "PRAGMA recursive_triggers = OFF"
            })
            .map_err(GuardError::Sqlite)?;
        Ok(self.conn)
    }
}
