//! One module per command: its clap arguments and its `run`. What they share — the
//! command context, opening stores and repositories, parsing durations — lives here.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use sqlvault_engine::{Access, Error, Repo, Session, Trust};
use sqlvault_store::Store;

use crate::secrets::ReadKeys;

mod audit;
mod backup;
mod check;
mod copy;
mod db;
mod drill;
mod dump;
mod forget;
pub(crate) mod freeze;
mod init;
mod join;
mod key;
mod load;
pub(crate) mod policy;
mod prune;
mod replicate;
mod restore;
mod service;
mod snapshot;
mod snapshots;
mod sql;
mod verify;

/// What every command is told besides its arguments.
#[derive(Debug)]
pub struct Ctx {
    /// `--json`: one JSON document on stdout, errors included.
    pub json: bool,
    /// `--quiet`: no progress and no informational lines on stderr.
    pub quiet: bool,
    /// The command's words as typed (`restore`, `db encrypt`), for hints.
    pub command: &'static str,
}

impl Ctx {
    /// Whether informational lines (not results, warnings or errors) go to stderr.
    pub fn chatty(&self) -> bool {
        !self.quiet && !self.json
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Manage age keys.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Create a repository encrypted to recipients (or a passphrase).
    Init(init::InitArgs),
    /// Let this host back up into an existing repository (needs an identity once).
    Join(join::JoinArgs),
    /// Take a hot, consistent snapshot of a database into a repository.
    Backup(backup::BackupArgs),
    Replicate(replicate::ReplicateArgs),
    /// List snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// Restore a snapshot to a new file.
    Restore(restore::RestoreArgs),
    /// Restore snapshots to a temporary place and check them.
    Verify(verify::VerifyArgs),
    /// Restore drill: restore the newest snapshot of each database to a scratch
    /// directory, verify it, time it, and append the evidence to a JSON-lines log.
    /// Exit 0 only when every one restored and verified.
    Drill(drill::DrillArgs),
    /// Check the repository's structure (and, with --read-data, every byte).
    Check(check::CheckArgs),
    /// Write a lossless SQL dump of a database (stdout, or a 0600 file).
    Dump(dump::DumpArgs),
    /// Build a database from a SQL dump; verified before it appears.
    Load(load::LoadArgs),
    /// Copy a live database to a new local file: one consistent state, verified
    /// (integrity_check and logical checksum), 0600, atomic; --vacuum compacts it and
    /// drops what the application deleted.
    Snapshot(snapshot::SnapshotArgs),
    /// Hold a database still (no commit, no checkpoint) while a command runs, e.g.
    /// `zfs snapshot`, so that a filesystem snapshot of it is consistent. Exit 19 when
    /// the command fails or runs past --timeout.
    Freeze(freeze::FreezeArgs),
    /// Database access control: hash a principal's secret, or check a policy against
    /// a database's schema.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// An operator's shell on a database as one principal of a policy: every statement
    /// goes through the policy's authorizer. Exit 20 when a statement is denied (naming
    /// what), 21 when SQLite refuses it.
    Sql(sql::SqlArgs),
    /// SQLCipher at rest: encrypt, decrypt, rekey or migrate a database in place.
    #[command(subcommand)]
    Db(db::DbCmd),
    /// Copy snapshots into another repository, re-encrypted to its recipients, sending
    /// only the data it lacks; interrupted, a rerun resumes.
    Copy(copy::CopyArgs),
    /// Remove snapshots by a retention policy (restic's --keep-* semantics), per
    /// database (name, host and source path); the data they used is freed by `prune`.
    Forget(forget::ForgetArgs),
    /// Delete data no snapshot references and repack mostly-unused packs, in two
    /// phases: what one run marks, a later run deletes once the grace period has passed.
    Prune(prune::PruneArgs),
    /// Audit databases, their files and directories, keys and repositories; --fix
    /// tightens permissions. Exit code: 0 clean, 11 low, 12 medium, 13 high.
    Audit(audit::AuditArgs),
    /// Run as a service: every database of a configuration file replicated, with
    /// snapshots, retention and verification on their schedules, /metrics and
    /// /healthz; SIGHUP reloads the configuration, SIGTERM ships what is committed.
    Daemon(service::DaemonArgs),
    /// The daemon's status, from its local state (running or not). Exit 17 when it
    /// runs but is unhealthy, 18 when it does not run.
    Status(service::StatusArgs),
    /// Write (`example`) or validate (`check`) a service configuration.
    #[command(subcommand)]
    Config(service::ConfigCmd),
    /// Write the disaster-recovery runbook (Markdown, and HTML with --html) from the
    /// configuration and the repositories' facts: VERIFIED only when a drill passed
    /// after the last configuration change.
    Runbook(service::RunbookArgs),
}

impl Cmd {
    /// The command's words as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Key(c) => c.name(),
            Cmd::Init(_) => "init",
            Cmd::Join(_) => "join",
            Cmd::Backup(_) => "backup",
            Cmd::Replicate(_) => "replicate",
            Cmd::Snapshots(_) => "snapshots",
            Cmd::Restore(_) => "restore",
            Cmd::Verify(_) => "verify",
            Cmd::Drill(_) => "drill",
            Cmd::Check(_) => "check",
            Cmd::Dump(_) => "dump",
            Cmd::Load(_) => "load",
            Cmd::Snapshot(_) => "snapshot",
            Cmd::Freeze(_) => "freeze",
            Cmd::Policy(c) => c.name(),
            Cmd::Sql(_) => "sql",
            Cmd::Db(c) => c.name(),
            Cmd::Copy(_) => "copy",
            Cmd::Forget(_) => "forget",
            Cmd::Prune(_) => "prune",
            Cmd::Audit(_) => "audit",
            Cmd::Daemon(_) => "daemon",
            Cmd::Status(_) => "status",
            Cmd::Config(c) => c.name(),
            Cmd::Runbook(_) => "runbook",
        }
    }
}

/// Runs the command; `Ok` carries the exit code of a command that reported its own
/// outcome (audit's findings, verify's failures, a partial backup).
pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<u8, Error> {
    match cmd {
        Cmd::Key(c) => key::run(c, ctx).await,
        Cmd::Init(a) => init::run(a, ctx).await,
        Cmd::Join(a) => join::run(a, ctx).await,
        Cmd::Backup(a) => backup::run(a, ctx).await,
        Cmd::Replicate(a) => replicate::run(a, ctx).await,
        Cmd::Snapshots(a) => snapshots::run(a, ctx).await,
        Cmd::Restore(a) => restore::run(a, ctx).await,
        Cmd::Verify(a) => verify::run(a, ctx).await,
        Cmd::Drill(a) => drill::run(a, ctx).await,
        Cmd::Check(a) => check::run(a, ctx).await,
        Cmd::Dump(a) => dump::run(a, ctx).await,
        Cmd::Load(a) => load::run(a, ctx).await,
        Cmd::Snapshot(a) => snapshot::run(a, ctx).await,
        Cmd::Freeze(a) => freeze::run(a, ctx).await,
        Cmd::Policy(c) => policy::run(c, ctx).await,
        Cmd::Sql(a) => sql::run(a, ctx).await,
        Cmd::Db(c) => db::run(c, ctx).await,
        Cmd::Copy(a) => copy::run(a, ctx).await,
        Cmd::Forget(a) => forget::run(a, ctx).await,
        Cmd::Prune(a) => prune::run(a, ctx).await,
        Cmd::Audit(a) => audit::run(a, ctx).await,
        Cmd::Daemon(a) => service::daemon(a, ctx).await,
        Cmd::Status(a) => service::status(a, ctx).await,
        Cmd::Config(c) => service::config(c, ctx).await,
        Cmd::Runbook(a) => service::runbook(a, ctx).await,
    }
}

static SESSION: std::sync::OnceLock<Session> = std::sync::OnceLock::new();

/// The engine session of this run, built by `main` ([`init_session`]).
pub fn session() -> &'static Session {
    SESSION.get().expect("main builds the session before running a command")
}

/// The local state directory: `$SQLVAULT_HOME`, else `$XDG_CONFIG_HOME/sqlvault`,
/// else `~/.config/sqlvault`.
fn state_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("SQLVAULT_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(x).join("sqlvault");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("sqlvault")
}

/// Builds this run's engine session: the one place the binary turns `SQLVAULT_HOME`,
/// `XDG_CONFIG_HOME`, `HOME`, `TMPDIR`, `--host`/`SQLVAULT_HOST` and
/// `SQLVAULT_REPO_FINGERPRINT` into values (the libraries read no environment).
pub fn init_session(
    host: Option<String>,
    progress: std::sync::Arc<dyn sqlvault_engine::Progress>,
) -> Result<(), Error> {
    let s = Session::builder(state_dir())
        .temp_dir(std::env::temp_dir())
        .host(host)
        .fingerprint(std::env::var("SQLVAULT_REPO_FINGERPRINT").ok())
        .progress(progress)
        .build()?;
    let _ = SESSION.set(s);
    Ok(())
}

/// The cloud clients' configuration, from this process's environment (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`, …): the binary reads it, the store crate does not.
pub fn store_env() -> sqlvault_store::StoreEnv {
    sqlvault_store::StoreEnv::from_vars(std::env::vars_os())
}

pub fn store(url: &str) -> Result<Store, Error> {
    opened(Store::open_url(url, &store_env())?)
}

/// Counts `s`'s requests in what `--json` reports for the command.
pub fn opened(s: Store) -> Result<Store, Error> {
    session().register(&s);
    Ok(s)
}

/// Requests made by this command so far, over every store it opened (none when the
/// session's own settings were refused).
pub fn command_requests() -> sqlvault_store::RequestCounts {
    SESSION.get().map(Session::requests).unwrap_or_default()
}

/// Opens `url` for an operation that hands out the repository's keys or re-encrypts
/// its data: refused on a location this host never pinned, without the fingerprint.
pub async fn open_pinned(url: &str, acc: Access) -> Result<Repo, Error> {
    Repo::open_read_trusting(session(), store(url)?, acc, Trust::default().with_require_pinned(true)).await
}

/// Opens `url` for a command that works with either key: the identity or passphrase
/// given, else this host's write key. A host without a write key falls back to
/// SQLVAULT_PASSPHRASE, so that it alone opens a passphrase repository there; where a
/// write key exists it is used as before, whatever the environment holds.
pub async fn open_either(url: &str, keys: &ReadKeys) -> Result<Repo, Error> {
    let s = store(url)?;
    if let Some(acc) = crate::secrets::access(keys)? {
        return Repo::open_read(session(), s, acc).await;
    }
    match Repo::open_write(session(), s.clone()).await {
        Err(e) if e.code() == "repo.no-write-key" => match crate::secrets::env_passphrase() {
            Some(p) => Repo::open_read(session(), s, Access::Passphrase(p)).await,
            None => Err(e),
        },
        r => r,
    }
}

pub fn busy(secs: f64) -> Result<Duration, Error> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(crate::exit::usage(
            "--busy-timeout must be a non-negative number of seconds",
        ))
    }
}

/// "90s", "30m", "24h", "7d", "2w" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90m, 24h or 7d"))?;
    let secs = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        "y" => 365.0 * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h, d, w or y)")),
    };
    if !(n * secs).is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(n * secs))
}
