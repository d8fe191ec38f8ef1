//! `sqlvault sql`: an operator's shell on a database under a policy, as one principal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use fallible_iterator::FallibleIterator;
use serde_json::{Value, json};
use sqlvault_engine::{Error, ErrorKind};
use sqlvault_policy::rusqlite::{self, types::ValueRef};
use sqlvault_policy::{AuditEvent, GuardOptions, Guarded};

use super::{Ctx, busy};
use crate::exit::usage;
use crate::render::print_json;
use crate::secrets::{DbKeyArgs, source_unlock};

/// Exit code of a statement the policy denied.
pub const DENIED: u8 = 20;
/// Exit code of a statement SQLite refused (syntax, constraint, missing table).
pub const SQL_FAILED: u8 = 21;

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The database (never created).
    db: PathBuf,
    /// The policy file (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The principal to act as. A principal declared with `uid` is proven by this
    /// process's real uid; others by their secret (--secret-file, SQLVAULT_SECRET, or a
    /// prompt on a terminal).
    #[arg(long, value_name = "NAME")]
    principal: String,
    /// Run these statements and exit (otherwise statements are read from stdin).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    command: Option<String>,
    /// File holding the principal's secret (one line).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Append every authorizer decision (allowed, masked, denied) as a JSON line to this
    /// file (created 0600).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Longest wait for another connection's lock, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    #[command(flatten)]
    db_key: DbKeyArgs,
}

fn read_secret(a: &SqlArgs) -> Result<zeroize::Zeroizing<String>, Error> {
    if let Some(f) = &a.secret_file {
        let mut s = zeroize::Zeroizing::new(String::new());
        std::fs::File::open(f)
            .and_then(|file| file.take(64 * 1024).read_to_string(&mut s))
            .map_err(|e| usage(format!("cannot read the secret file {}: {e}", f.display())))?;
        let t = s.strip_suffix('\n').unwrap_or(&s);
        let t = t.strip_suffix('\r').unwrap_or(t);
        return Ok(zeroize::Zeroizing::new(t.to_string()));
    }
    if let Ok(v) = std::env::var("SQLVAULT_SECRET")
        && !v.is_empty()
    {
        return Ok(zeroize::Zeroizing::new(v));
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("secret for {}: ", a.principal))
            .map_err(|e| usage(format!("cannot read the secret: {e}")))?;
        return Ok(zeroize::Zeroizing::new(p));
    }
    Err(Error::new(
        ErrorKind::Usage,
        "policy.secret-required",
        format!(
            "principal {} needs a secret: --secret-file FILE, SQLVAULT_SECRET, or a terminal to prompt on",
            a.principal
        ),
    ))
}

/// An audit sink writing JSON lines; a write error is reported once on stderr and the
/// statement goes on (the decision is the guard's, not the log's).
struct JsonLines {
    file: Mutex<(std::fs::File, bool)>,
}

impl JsonLines {
    fn open(path: &PathBuf) -> Result<JsonLines, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "sql.audit-log",
                    format!("cannot open {}: {e}", path.display()),
                )
            })?;
        Ok(JsonLines {
            file: Mutex::new((file, false)),
        })
    }
}

impl sqlvault_policy::AuditSink for JsonLines {
    fn record(&self, e: &AuditEvent<'_>) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line = json!({
            "time_ms": ms,
            "principal": e.principal,
            "role": e.role,
            "action": e.action,
            "object": e.object,
            "detail": e.detail,
            "accessor": e.accessor,
            "decision": format!("{:?}", e.decision).to_lowercase(),
            "reason": e.reason,
        });
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if writeln!(f.0, "{line}").is_err() && !f.1 {
            f.1 = true;
            eprintln!("sqlvault: warning: cannot write the audit log");
        }
    }
}

fn json_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(r) => json!(r),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!({ "blob": hex::encode(b) }),
    }
}

fn text_value(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => crate::render::terminal_safe(&String::from_utf8_lossy(t)).into_owned(),
        ValueRef::Blob(b) => format!("x'{}'", hex::encode(b)),
    }
}

/// A failed statement: denied by the policy (exit 20), or refused by SQLite (exit 21).
struct Failure {
    code: &'static str,
    exit: u8,
    message: String,
}

/// Runs every statement of `sql` in order, stopping at the first failure. Rows go to
/// stdout as they come (text) or into `results` (JSON).
fn run_script(g: &Guarded, sql: &str, json_out: bool, results: &mut Vec<Value>) -> Result<(), Failure> {
    let who = g.identity();
    let fail = |e: rusqlite::Error| match g.take_denial() {
        Some(d) => Failure {
            code: "policy.denied",
            exit: DENIED,
            message: format!("denied: {d} (principal {}, role {})", who.principal(), who.role()),
        },
        None => Failure {
            code: "sql.failed",
            exit: SQL_FAILED,
            message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
        },
    };
    // Another connection may have changed the schema since the last statement. A guard
    // that cannot read it keeps the rules it had; the statement is not run blind.
    if let Err(e) = g.refresh() {
        return Err(Failure {
            code: "policy.guard",
            exit: SQL_FAILED,
            message: format!("cannot read the schema again: {e}"),
        });
    }
    let mut batch = rusqlite::Batch::new(g, sql);
    let stdout = std::io::stdout();
    loop {
        let mut st = match batch.next() {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        let text = st.expanded_sql().unwrap_or_default();
        let columns: Vec<String> = st.column_names().map(str::to_string).collect();
        let mut rows_json = Vec::new();
        let mut rows = st.raw_query();
        let mut out = stdout.lock();
        loop {
            match rows.next() {
                Ok(Some(r)) => {
                    if json_out {
                        rows_json.push(Value::Array(
                            (0..columns.len()).map(|i| json_value(r.get_ref_unwrap(i))).collect(),
                        ));
                    } else {
                        let line: Vec<String> = (0..columns.len()).map(|i| text_value(r.get_ref_unwrap(i))).collect();
                        let _ = writeln!(out, "{}", line.join("|"));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(fail(e)),
            }
        }
        drop(rows);
        if json_out {
            results.push(json!({
                "sql": text,
                "columns": columns,
                "rows": rows_json,
                "changes": g.changes(),
            }));
        }
    }
}

pub async fn run(a: SqlArgs, ctx: &Ctx) -> Result<u8, Error> {
    let policy = super::policy::load(&a.policy)?;
    let who = if policy.uses_uid(&a.principal) {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        policy.authenticate_uid(&a.principal, uid)
    } else {
        let secret = read_secret(&a)?;
        policy.authenticate(&a.principal, secret.as_bytes())
    }
    .map_err(|e| Error::new(ErrorKind::Auth, "policy.auth-failed", e.to_string()))?;
    let unlock = source_unlock(&a.db, &a.db_key)?;
    let conn = sqlvault_sqlite::open_database(&a.db, unlock.as_ref(), true, busy(a.busy_timeout)?)?;
    let mut opts = GuardOptions::default();
    if let Some(path) = &a.audit_log {
        opts = opts.with_audit(Arc::new(JsonLines::open(path)?));
    }
    let g = policy
        .guard_with(conn, &who, opts)
        .map_err(|e| Error::new(ErrorKind::Source, "policy.guard", format!("{}: {e}", a.db.display())))?;
    tracing::debug!(
        principal = who.principal(),
        role = who.role(),
        "guarded connection open"
    );
    let mut results = Vec::new();
    let interactive = a.command.is_none() && std::io::stdin().is_terminal();
    let outcome = if let Some(sql) = &a.command {
        run_script(&g, sql, ctx.json, &mut results)
    } else if interactive {
        repl(&g);
        Ok(())
    } else {
        let mut sql = String::new();
        std::io::stdin()
            .read_to_string(&mut sql)
            .map_err(|e| usage(format!("cannot read statements from stdin: {e}")))?;
        run_script(&g, &sql, ctx.json, &mut results)
    };
    let (exit, error) = match outcome {
        Ok(()) => (0, None),
        Err(f) => {
            eprintln!("sqlvault: error: {}", f.message);
            (f.exit, Some(json!({"code": f.code, "message": f.message})))
        }
    };
    if ctx.json {
        let mut doc = json!({
            "principal": who.principal(),
            "role": who.role(),
            "statements": results,
        });
        if let Some(e) = error {
            doc["error"] = e;
        }
        print_json(&doc);
    }
    Ok(exit)
}

/// Reads statements from the terminal until EOF, running each once it is complete;
/// a failure is reported and the shell goes on.
fn repl(g: &Guarded) {
    let who = g.identity();
    eprintln!(
        "sqlvault sql: acting as {} (role {}); end with Ctrl-D",
        who.principal(),
        who.role()
    );
    let stdin = std::io::stdin();
    let mut buf = String::new();
    loop {
        eprint!("{}", if buf.is_empty() { "sql> " } else { "...> " });
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        buf.push_str(&line);
        if !complete(&buf) {
            continue;
        }
        if let Err(f) = run_script(g, &buf, false, &mut Vec::new()) {
            eprintln!("error: {}", f.message);
        }
        buf.clear();
    }
}

/// Whether `sql` ends with a complete statement (SQLite's own test: a `;` outside
/// strings, comments and trigger bodies).
fn complete(sql: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(sql) else {
        return true;
    };
    // SAFETY: sqlite3_complete reads the NUL-terminated string and nothing else.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}
