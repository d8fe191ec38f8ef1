//! `sqlvault`: clap arguments → engine calls → text or JSON output and exit codes.
//! Every capability lives in `sqlvault-engine`; this file is glue.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sqlvault_engine::crypt::secrecy::SecretString;
use sqlvault_engine::crypt::{Identities, Recipient};
use sqlvault_engine::format::Manifest;
use sqlvault_engine::sqlite::{AtRest, CipherSettings, ConvertOptions, DbKey, Unlock};
use sqlvault_engine::store::Store;
use sqlvault_engine::{Access, Error, ErrorKind, InitKeys, Repo, Session, Trust};

// Text output. Names, paths and messages printed here come from repositories (a write
// key chooses a snapshot's database name, host and source path), from databases and
// from error messages that quote them: every line goes through [`terminal_safe`], so
// none can carry a terminal escape sequence or break the line it is printed in. These
// shadow std's macros in this file; JSON goes through `print_json`.
macro_rules! println {
    () => { ::std::println!() };
    ($($arg:tt)*) => { ::std::println!("{}", $crate::terminal_safe(&::std::format!($($arg)*))) };
}
macro_rules! eprintln {
    () => { ::std::eprintln!() };
    ($($arg:tt)*) => { ::std::eprintln!("{}", $crate::terminal_safe(&::std::format!($($arg)*))) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { ::std::eprint!("{}", $crate::terminal_safe(&::std::format!($($arg)*))) };
}

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL, C1: ESC
/// starts escape sequences, CR and LF break lines) and the bidirectional controls that
/// reorder what is displayed.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character [`unsafe_on_terminal`] written as `\u{..}`, as
/// `escape_debug` writes it: one printed line, and what it shows is what it holds.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_on_terminal) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_on_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[derive(Parser, Debug)]
#[command(
    name = "sqlvault",
    version,
    about = "Encrypted, deduplicated, verified backups of SQLite databases"
)]
struct Cli {
    /// Log detail on stderr: -v info, -vv debug (or SQLVAULT_LOG=filter).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// This host's identity in snapshots, name claims, retention groups and evidence,
    /// instead of the machine's host name: for containers and Kubernetes CronJobs,
    /// whose host name changes at every run (printable ASCII, no spaces, at most 253).
    #[arg(long, global = true, env = "SQLVAULT_HOST", value_name = "NAME")]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Manage age keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Create a repository encrypted to recipients (or a passphrase).
    Init(InitArgs),
    /// Let this host back up into an existing repository (needs an identity once).
    Join(JoinArgs),
    /// Take a hot, consistent snapshot of a database into a repository.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot to a new file.
    Restore(RestoreArgs),
    /// Restore snapshots to a temporary place and check them.
    Verify(VerifyArgs),
    /// Restore drill: restore the newest snapshot of each database to a scratch
    /// directory, verify it, time it, and append the evidence to a JSON-lines log.
    /// Exit 0 only when every one restored and verified.
    Drill(DrillArgs),
    /// Check the repository's structure (and, with --read-data, every byte).
    Check(CheckArgs),
    /// Write a lossless SQL dump of a database (stdout, or a 0600 file).
    Dump(DumpArgs),
    /// Build a database from a SQL dump; verified before it appears.
    Load(LoadArgs),
    /// SQLCipher at rest: encrypt, decrypt, rekey or migrate a database in place.
    #[command(subcommand)]
    Db(DbCmd),
    /// Copy snapshots into another repository, re-encrypted to its recipients, sending
    /// only the data it lacks; interrupted, a rerun resumes.
    Copy(CopyArgs),
    /// Remove snapshots by a retention policy (restic's --keep-* semantics), per
    /// database (name, host and source path); the data they used is freed by `prune`.
    Forget(ForgetArgs),
    /// Delete data no snapshot references and repack mostly-unused packs, in two
    /// phases: what one run marks, a later run deletes once the grace period has passed.
    Prune(PruneArgs),
    /// Audit databases, their files and directories, keys and repositories; --fix
    /// tightens permissions. Exit code: 0 clean, 11 low, 12 medium, 13 high.
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
struct ForgetArgs {
    /// Repository URL or path.
    repo: String,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// … of each of the last N days (local time) that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// … of each of the last N ISO weeks that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// … of each of the last N months that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// … of each of the last N years that have snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every snapshot made within this long before the newest one (e.g. 36h, 14d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    /// Show the plan (keep/remove, and the rule that kept each) without removing.
    #[arg(long)]
    dry_run: bool,
    /// Allow a policy that removes every snapshot of a database name.
    #[arg(long)]
    remove_all: bool,
    /// Run `prune` afterwards.
    #[arg(long)]
    prune: bool,
    /// With --prune: grace period to record (see `prune --grace`).
    #[arg(long, value_parser = parse_duration, requires = "prune")]
    grace: Option<Duration>,
    /// With --prune: see `prune --no-running-backups`.
    #[arg(long, requires = "prune")]
    no_running_backups: bool,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct PruneArgs {
    /// Repository URL or path.
    repo: String,
    /// Show what would be deleted, marked and repacked without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Grace period between marking and deleting, recorded in the repository (default:
    /// the repository's, 24h at first; at least 1h). It is also the longest a backup or
    /// copy may run, on every host: one that runs longer fails (exit 14) instead of
    /// committing, so it must exceed your longest backup. Lowering it applies to marks
    /// made from now on, and to backups only after the old grace has passed (unless
    /// --no-running-backups).
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Repack packs whose referenced bytes are below this fraction (0 disables).
    #[arg(long, default_value_t = 0.5)]
    repack_below: f64,
    /// Assert that no backup or copy is running against the repository now: marks
    /// already made are deleted in this run (when still unreferenced) without waiting
    /// for the grace, and a lowered --grace applies at once. New garbage is only marked.
    /// Wrong, it can delete data a running backup is about to commit.
    #[arg(long)]
    no_running_backups: bool,
    /// Replace prune's stored state when it cannot be read (exit 6 otherwise). Its marks
    /// are lost: unreferenced objects are marked again and wait a new grace period, but
    /// packs an earlier repack had made redundant are not reclaimed. Give --grace again
    /// if you had raised it.
    #[arg(long)]
    reset_damaged_state: bool,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AuditArgs {
    /// Database files, key files or directories to scan (symbolic links are not followed).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Remove group/other permission bits from what is found (0600 files, 0700
    /// directories); never changes content or ownership.
    #[arg(long)]
    fix: bool,
    /// Repository whose newest snapshot and newest verification to check (needs -i or
    /// --passphrase: evidence is encrypted metadata).
    #[arg(long)]
    repo: Option<String>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Database names to check in --repo (default: the file names of the databases found).
    #[arg(long = "name")]
    names: Vec<String>,
    /// A newest snapshot older than this is a finding (e.g. 90m, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_snapshot_age: Duration,
    /// A newest successful verification older than this is a finding.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    max_verify_age: Duration,
    /// File holding the key of SQLCipher databases (or SQLVAULT_DB_KEY), to check their
    /// content too.
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// "90s", "30m", "24h", "7d", "2w" (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90m, 24h or 7d"))?;
    let secs = match unit {
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

/// The key of a SQLCipher database given to commands that read one. Never on the
/// command line: a file, the SQLVAULT_DB_KEY variable, or a prompt.
#[derive(Args, Debug)]
struct DbKeyArgs {
    /// File holding the database's SQLCipher key: a passphrase, or x'<64 hex digits>'
    /// for a raw key (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// SQLCipher major version of the database's settings, instead of detecting it
    /// (4, then 3, then the legacy 2 and 1).
    #[arg(long = "cipher-compat", value_name = "1-4")]
    cipher_compat: Option<u8>,
}

#[derive(Subcommand, Debug)]
enum DbCmd {
    /// Encrypt a plaintext database in place with SQLCipher (verified, atomic).
    Encrypt(DbConvertArgs),
    /// Decrypt a SQLCipher database in place to plaintext (verified, atomic).
    Decrypt(DbConvertArgs),
    /// Change the key of a SQLCipher database (new key from --new-key-file,
    /// SQLVAULT_NEW_DB_KEY or a prompt).
    Rekey(DbConvertArgs),
    /// Upgrade a SQLCipher 3 database to SQLCipher 4 settings, same key.
    Migrate(DbConvertArgs),
}

#[derive(Args, Debug)]
struct DbConvertArgs {
    /// The database file.
    db: PathBuf,
    /// File holding the key (encrypt: the new key; otherwise the current one); else
    /// SQLVAULT_DB_KEY, else a prompt on a terminal.
    #[arg(long = "key-file", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// rekey: file holding the new key; else SQLVAULT_NEW_DB_KEY, else a prompt.
    #[arg(long = "new-key-file", value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// encrypt: SQLCipher settings to write (4, the default, or 3 for legacy
    /// clients); otherwise the current file's (1 to 4), instead of detecting them.
    #[arg(long = "cipher-compat", value_name = "1-4")]
    cipher_compat: Option<u8>,
    /// Longest wait for another connection's lock, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    /// Convert even when the file has other hard links: they keep the old bytes (after
    /// encrypt, the plaintext) and stop being the same database (exit 8 otherwise).
    #[arg(long)]
    force: bool,
    /// Page size of the converted file (512 to 65536, a power of two). Default: the
    /// original's (encrypt, decrypt, rekey), SQLCipher 4's 4096 (migrate).
    #[arg(long = "page-size", value_name = "BYTES")]
    page_size: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Write a new age identity (mode 0600) and print its recipient.
    Generate {
        /// Where to write the identity; refuses to overwrite.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Add recipients: snapshots taken from now on are encrypted to them too (backup
    /// hosts adopt the signed set at their next backup).
    Add(KeyChangeArgs),
    /// Remove recipients: they can no longer open the repository or read new
    /// snapshots; run `key rewrap` so they cannot read old ones either.
    Remove(KeyChangeArgs),
    /// Show the recipients in force (from the config with -i/--passphrase, else from
    /// this host's write key).
    List(KeyListArgs),
    /// Re-encrypt every object to the current recipients (resumable: run it again
    /// after an interruption).
    Rewrap(KeyListArgs),
}

#[derive(Args, Debug)]
struct KeyChangeArgs {
    /// Repository URL or path.
    repo: String,
    /// Recipient (age1…, ssh-ed25519 …, ssh-rsa …); repeatable.
    #[arg(short = 'r', long = "recipient")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(short = 'R', long = "recipients-file")]
    recipients_file: Vec<PathBuf>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct KeyListArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReadKeys {
    /// Identity file (age identity or OpenSSH private key).
    #[arg(short = 'i', long = "identity", env = "SQLVAULT_IDENTITY_FILE")]
    identity: Option<Vec<PathBuf>>,
    /// Use the repository passphrase (from SQLVAULT_PASSPHRASE or a prompt).
    #[arg(long)]
    passphrase: bool,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Repository URL or path.
    repo: String,
    /// Recipient public key (age1…, ssh-ed25519 …, ssh-rsa …); repeatable.
    #[arg(short = 'r', long = "recipient")]
    recipients: Vec<String>,
    /// File of recipients, one per line.
    #[arg(short = 'R', long = "recipients-file")]
    recipients_file: Vec<PathBuf>,
    /// Protect the repository with a passphrase (from SQLVAULT_PASSPHRASE or a prompt).
    #[arg(long)]
    passphrase: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct JoinArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BackupArgs {
    /// The SQLite database to back up.
    db: PathBuf,
    /// Repository URL or path; several write one snapshot (the database is read once)
    /// to each, in parallel. Exit 10 when some succeed and others fail.
    #[arg(required = true, value_name = "REPO")]
    repos: Vec<String>,
    /// Database name in the repository (default: the file name). A name belongs to the
    /// host and path that first backed up under it: another source is refused (exit 8,
    /// `backup.name-taken`).
    #[arg(long)]
    name: Option<String>,
    /// The database moved (another path or host): take over its name from the source
    /// the repository records. Snapshots of the old source stay, in a retention group
    /// of their own.
    #[arg(long)]
    adopt_name: bool,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Seal and upload packs at this many MiB.
    #[arg(long, default_value_t = 16)]
    pack_size: usize,
    /// What the snapshot holds: the database's pages (restores byte for byte), or a
    /// lossless SQL dump (readable, portable, deduplicated between dumps).
    #[arg(long, value_enum, default_value_t = KindArg::Pages)]
    kind: KindArg,
    /// Also run SQLite's integrity_check on exactly the state the snapshot holds (page
    /// snapshots; it reads the database once more): a failure is warned about and
    /// recorded in the snapshot, and the backup is still taken. `auto` (the default)
    /// checks databases of at most 64 MiB, where it costs little; `--integrity-check`
    /// alone means `always`.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CheckArg::Auto, num_args = 0..=1, default_missing_value = "always")]
    integrity_check: CheckArg,
    #[command(flatten)]
    db_key: DbKeyArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CheckArg {
    Auto,
    Always,
    Never,
}

/// `--integrity-check auto` checks databases up to this size (main file and `-wal`):
/// integrity_check reads about 80 MB/s of plaintext here (13 s for 1 GiB), so a
/// small database pays well under a second while a large one's backups keep their pace.
const AUTO_CHECK_MAX: u64 = 64 << 20;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum KindArg {
    Pages,
    Dump,
}

#[derive(Args, Debug)]
struct DrillArgs {
    /// Repository URL or path.
    repo: String,
    /// Only this database name (each host and path it was backed up from).
    #[arg(long, conflicts_with = "all")]
    name: Option<String>,
    /// Every database in the repository (the default): each name, and each host and
    /// path a name was backed up from.
    #[arg(long)]
    all: bool,
    /// JSON-lines log to append to (default: drill.jsonl in the state directory).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Also record each result as evidence in the repository (seen by `audit --repo`).
    #[arg(long)]
    record: bool,
    /// Directory to restore into (needs room for the largest database; default: the
    /// system temporary directory).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// File holding the key of snapshots of SQLCipher databases (or SQLVAULT_DB_KEY).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// Source repository URL or path (read with -i or --passphrase).
    src: String,
    /// Destination repository URL or path (written with this host's write key: run
    /// `sqlvault init` or `sqlvault join` for it here first).
    dst: String,
    /// Snapshot id or unique prefix to copy; repeatable (default: every snapshot).
    #[arg(long = "snapshot", value_name = "ID")]
    snapshots: Vec<String>,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SnapshotsArgs {
    /// Repository URL or path.
    repo: String,
    /// Only snapshots of this database name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    keys: ReadKeys,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// Repository URL or path.
    repo: String,
    /// Destination database file.
    dest: PathBuf,
    #[command(flatten)]
    keys: ReadKeys,
    /// Snapshot id or unique prefix (default: newest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Newest snapshot of this database name (needed, or --snapshot, when the repository
    /// holds several databases: exit 2 otherwise).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing destination and remove its stale -wal/-shm. Refused while
    /// another process holds it open (exit 7): stop the application first. The new file
    /// keeps the replaced one's owner and group (unless others may write to its
    /// directory) and at most its permissions, never group/other write; a symbolic link
    /// is refused (exit 8).
    #[arg(long)]
    force: bool,
    /// Install the database even though it fails integrity_check, when the snapshot
    /// is proven intact (every page hash and the logical checksum match): the source
    /// was already damaged when it was backed up (exit 15 without this flag). Needs
    /// --snapshot: it accepts that one snapshot.
    #[arg(long)]
    accept_damaged_source: bool,
    /// File holding the database key of a snapshot of a SQLCipher database
    /// (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Snapshot id or unique prefix (default: newest).
    #[arg(long, conflicts_with = "all")]
    snapshot: Option<String>,
    /// Only snapshots of this database name (without --all: its newest; needed, or
    /// --snapshot, when the repository holds several databases).
    #[arg(long)]
    name: Option<String>,
    /// Every snapshot.
    #[arg(long)]
    all: bool,
    /// File holding the database key of snapshots of SQLCipher databases
    /// (otherwise SQLVAULT_DB_KEY, or a prompt on a terminal).
    #[arg(long = "db-key-file", value_name = "FILE")]
    db_key_file: Option<PathBuf>,
    /// Do not record the results as evidence in the repository (by default each
    /// result is written to evidence/, read by `audit --repo`).
    #[arg(long)]
    no_evidence: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Repository URL or path.
    repo: String,
    #[command(flatten)]
    keys: ReadKeys,
    /// Download and authenticate every pack.
    #[arg(long)]
    read_data: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DumpArgs {
    /// The SQLite database to dump.
    db: PathBuf,
    /// Write to this file (mode 0600, complete or not at all) instead of stdout.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long, requires = "output")]
    force: bool,
    /// Longest wait for the application's locks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    busy_timeout: f64,
    #[command(flatten)]
    db_key: DbKeyArgs,
    /// Print a JSON summary (with -o).
    #[arg(long, requires = "output")]
    json: bool,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// The SQL dump (`-` for standard input).
    input: PathBuf,
    /// The database to create.
    db: PathBuf,
    /// Replace a destination that exists and is not empty (refused while another
    /// process holds it open, exit 7; a symbolic link is refused, exit 8; the new file
    /// keeps its owner and group unless others may write to the directory, and at most
    /// its permissions, never group/other write).
    #[arg(long)]
    force: bool,
    /// Keep a result that fails integrity_check when its content is proven to be
    /// exactly what was dumped (the dumped database was already damaged; exit 15
    /// without this flag).
    #[arg(long)]
    accept_damaged_source: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn busy(secs: f64) -> Result<Duration, Error> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(usage("--busy-timeout must be a non-negative number of seconds"))
    }
}

/// Exit codes; documented in README.md.
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Usage => 2,
        ErrorKind::Store => 3,
        ErrorKind::NotFound => 4,
        ErrorKind::Auth => 5,
        ErrorKind::Integrity => 6,
        ErrorKind::Source => 7,
        ErrorKind::Exists => 8,
        ErrorKind::Io => 9,
        ErrorKind::Partial => 10,
        ErrorKind::Busy => 14,
        ErrorKind::SourceDamaged => 15,
        _ => 1,
    }
}

/// One warning line when `backup --integrity-check` found the source damaged (the
/// snapshot was taken and records it).
fn warn_source_check(db: &std::path::Path, rep: &sqlvault_engine::BackupReport) {
    if let Some(c) = rep.source_check.as_ref().filter(|c| !c.ok) {
        tracing::warn!(
            "{} fails integrity_check ({}); snapshot {} holds it as it is and records this",
            db.display(),
            c.problems
                .iter()
                .take(3)
                .map(|l| l.replace('\n', " "))
                .collect::<Vec<_>>()
                .join("; "),
            &rep.snapshot_id[..8]
        );
    }
}

/// One warning line for a database installed with `--accept-damaged-source` that
/// fails integrity_check, as its source did.
fn damaged_source_warning(what: &str, problems: &[String]) {
    if let Some(first) = problems.first() {
        tracing::warn!(
            "{what} is exactly what was backed up and fails integrity_check as its source did ({} lines; first: {})",
            problems.len(),
            first.replace('\n', " ")
        );
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Usage, "usage", msg)
}

fn read_passphrase(confirm: bool) -> Result<SecretString, Error> {
    if let Ok(p) = std::env::var("SQLVAULT_PASSPHRASE")
        && !p.is_empty()
    {
        tracing::debug!("repository passphrase taken from SQLVAULT_PASSPHRASE");
        return Ok(SecretString::from(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "--passphrase needs SQLVAULT_PASSPHRASE or a terminal to prompt on",
        ));
    }
    let p = prompt_secret(
        "repository passphrase",
        "passphrase",
        "passphrases do not match",
        confirm,
    )?;
    if p.is_empty() {
        return Err(usage("empty passphrase"));
    }
    Ok(SecretString::from(p.as_str()))
}

/// Asks for a secret on the terminal (twice with `confirm`); the text lives in a
/// zeroized buffer. `what` names it in a read error, `mismatch` is the error when the
/// two entries differ.
fn prompt_secret(
    label: &str,
    what: &str,
    mismatch: &'static str,
    confirm: bool,
) -> Result<zeroize::Zeroizing<String>, Error> {
    let ask = |p: &str| {
        rpassword::prompt_password(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| usage(format!("cannot read {what}: {e}")))
    };
    let first = ask(&format!("{label}: "))?;
    if confirm && *ask("again: ")? != *first {
        return Err(usage(mismatch));
    }
    Ok(first)
}

/// A database key from `file`, else the variable `var`, else (when `prompt` is set and
/// stdin is a terminal) a prompt. The key's text never reaches argv, logs or errors.
fn read_db_key(file: Option<&PathBuf>, var: &str, prompt: Option<&str>, confirm: bool) -> Result<Option<DbKey>, Error> {
    if let Some(f) = file {
        tracing::debug!(file = %f.display(), "database key taken from a file");
        return DbKey::from_file(f).map(Some).map_err(Error::from);
    }
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        tracing::debug!("database key taken from {var}");
        let v = zeroize::Zeroizing::new(v);
        return DbKey::from_text(&v).map(Some).map_err(Error::from);
    }
    let Some(prompt) = prompt else { return Ok(None) };
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let p = prompt_secret(prompt, "the key", "the keys do not match", confirm)?;
    DbKey::from_text(&p).map(Some).map_err(Error::from)
}

/// The unlock for a source database: a key only when one is given, or when the file
/// is encrypted and a terminal can be asked.
fn source_unlock(db: &std::path::Path, a: &DbKeyArgs) -> Result<Option<Unlock>, Error> {
    let encrypted = matches!(sqlvault_engine::sqlite::probe(db, None), Ok(AtRest::Encrypted(_)));
    let key = read_db_key(
        a.db_key_file.as_ref(),
        "SQLVAULT_DB_KEY",
        encrypted.then_some("database key"),
        false,
    )?;
    key.map(|k| match a.cipher_compat {
        Some(c) => Unlock::with_compatibility(k, c).map_err(Error::from),
        None => Ok(Unlock::key(k)),
    })
    .transpose()
}

fn access(keys: &ReadKeys, required: bool) -> Result<Option<Access>, Error> {
    if keys.passphrase {
        return Ok(Some(Access::Passphrase(read_passphrase(false)?)));
    }
    match &keys.identity {
        Some(paths) if !paths.is_empty() => {
            let mut ids: Option<Identities> = None;
            for p in paths {
                tracing::debug!(file = %p.display(), "reading identity file");
                let i = Identities::from_file(p)
                    .map_err(|e| Error::new(ErrorKind::Usage, "crypt.bad-key", e.to_string()))?;
                match ids.as_mut() {
                    Some(all) => all.extend(i),
                    None => ids = Some(i),
                }
            }
            Ok(ids.map(Access::Identities))
        }
        _ if required => Err(Error::new(
            ErrorKind::Auth,
            "crypt.identity-required",
            "this command needs an identity: -i KEYFILE, SQLVAULT_IDENTITY_FILE, or --passphrase",
        )),
        _ => Ok(None),
    }
}

/// Every store this command opened: `--json` output reports the requests the whole
/// command made (opening included), by kind.
static SESSION: std::sync::OnceLock<Session> = std::sync::OnceLock::new();

/// The engine session of this run, built by `main` from the environment: the one
/// place the binary turns `SQLVAULT_HOME`, `XDG_CONFIG_HOME`, `HOME`, `TMPDIR`,
/// `SQLVAULT_HOST` and `SQLVAULT_REPO_FINGERPRINT` into values.
fn session() -> &'static Session {
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

fn build_session(host: Option<String>) -> Result<Session, Error> {
    Session::builder(state_dir())
        .temp_dir(std::env::temp_dir())
        .host(host)
        .fingerprint(std::env::var("SQLVAULT_REPO_FINGERPRINT").ok())
        .build()
}

fn store(url: &str) -> Result<Store, Error> {
    opened(Store::from_url(url)?)
}

fn opened(s: Store) -> Result<Store, Error> {
    session().register(&s);
    Ok(s)
}

/// Opens `url` for an operation that hands out the repository's keys or re-encrypts
/// its data: refused on a location this host never pinned, without the fingerprint.
async fn open_pinned(url: &str, acc: Access) -> Result<Repo, Error> {
    Repo::open_read_trusting(session(), store(url)?, acc, Trust::default().with_require_pinned(true)).await
}

/// Requests made by this command so far, over every store it opened.
fn command_requests() -> sqlvault_engine::store::RequestCounts {
    // No session when its own settings were refused: no request was made.
    SESSION.get().map(Session::requests).unwrap_or_default()
}

fn time_str(ms: i64) -> String {
    // UTC, RFC 3339, without pulling a date crate into the binary.
    let c = sqlvault_engine::retention::utc_civil(ms);
    let secs = ms.div_euclid(1000).rem_euclid(60 * 60);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        secs / 60,
        secs % 60
    )
}

/// Whether `m` is dated beyond this host's clock and [`sqlvault_engine::retention::CLOCK_SKEW`].
fn future_dated(m: &Manifest) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    sqlvault_engine::retention::is_future_dated(m.created_ms, now)
}

fn snapshot_json(m: &Manifest) -> serde_json::Value {
    json!({
        "future_dated": future_dated(m),
        "id": m.id.to_string(),
        "short_id": m.id.short(),
        "name": m.name,
        "time": time_str(m.created_ms),
        "created_ms": m.created_ms,
        "host": m.host,
        "source_path": m.source_path,
        "kind": m.kind,
        "page_size": m.page_size,
        "page_count": m.page_count,
        "size": m.db_size(),
        "journal_mode": m.journal_mode,
        "parent": m.parent.map(|p| p.to_string()),
        "bytes_new": m.stats.bytes_new,
        "dump_bytes": m.dump.as_ref().map(|_| m.stats.bytes_read),
        "source_check": m.source_check,
    })
}

/// Prints a command's JSON document, with the requests the command made (`requests`:
/// GET, PUT, LIST, DELETE, HEAD and retries), replacing any per-operation count.
fn print_json(v: &serde_json::Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("requests".into(), json!(command_requests()));
    }
    let text = serde_json::to_string_pretty(&v).expect("json");
    // serde_json escapes C0 controls; the others (DEL, C1, bidi) can only occur inside
    // strings, where `\uXXXX` means the same character.
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && unsafe_on_terminal(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    ::std::println!("{out}");
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

async fn run(cmd: Cmd) -> Result<u8, Error> {
    match cmd {
        // One SQLite connection streaming through a file.
        Cmd::Dump(a) => dump(a),
        Cmd::Load(a) => load(a),
        Cmd::Db(c) => db(c),
        Cmd::Audit(a) => audit(a).await,
        Cmd::Forget(a) => forget(a).await,
        Cmd::Copy(a) => copy(a).await,
        Cmd::Drill(a) => drill(a).await,
        Cmd::Prune(a) => {
            let repo = Repo::open(session(), store(&a.repo)?, access(&a.keys, false)?).await?;
            let opts = prune_options(a.dry_run, a.grace, a.repack_below, a.no_running_backups)?
                .with_reset_damaged_state(a.reset_damaged_state);
            let rep = sqlvault_engine::prune(&repo, &opts).await?;
            if a.json {
                print_json(&serde_json::to_value(&rep).expect("json"));
            } else {
                print_prune(&rep);
            }
            Ok(0)
        }
        Cmd::Key(KeyCmd::Generate { output }) => {
            let r = sqlvault_engine::crypt::generate_identity_file(&output).map_err(|e| match e {
                sqlvault_engine::crypt::CryptError::IdentityFile { .. } => Error::new(
                    ErrorKind::Exists,
                    "key.exists",
                    format!("cannot create {}: {e}", output.display()),
                ),
                other => {
                    Error::new(ErrorKind::Io, "io", format!("cannot write {}", output.display())).with_source(other)
                }
            })?;
            println!("{r}");
            eprintln!(
                "wrote identity to {} (mode 0600); the line above is its public recipient",
                output.display()
            );
            Ok(0)
        }
        Cmd::Key(KeyCmd::Add(a)) => key_change(a, true).await,
        Cmd::Key(KeyCmd::Remove(a)) => key_change(a, false).await,
        Cmd::Key(KeyCmd::List(a)) => {
            let repo = Repo::open(session(), store(&a.repo)?, access(&a.keys, false)?).await?;
            if a.json {
                print_json(&json!({"generation": repo.generation(), "recipients": repo.recipients()}));
            } else {
                println!("recipient set generation {}", repo.generation());
                for r in repo.recipients() {
                    println!("{r}");
                }
            }
            Ok(0)
        }
        Cmd::Key(KeyCmd::Rewrap(a)) => {
            let acc = access(&a.keys, true)?.expect("required");
            let repo = open_pinned(&a.repo, acc).await?;
            let quiet = a.json || !std::io::stderr().is_terminal();
            let rep = sqlvault_engine::rewrap(&repo, |done, total| {
                if !quiet {
                    ::std::eprint!("\r");
                    eprint!("rewrapped {done}/{total}");
                }
            })
            .await?;
            if !quiet && rep.rewrapped > 0 {
                eprintln!();
            }
            if a.json {
                print_json(&json!(rep));
            } else {
                println!(
                    "re-encrypted {} of {} objects ({}) to recipient set generation {}{}",
                    rep.rewrapped,
                    rep.objects,
                    human(rep.bytes),
                    rep.generation,
                    if rep.already_done > 0 {
                        format!("; {} done by an earlier run", rep.already_done)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(0)
        }
        Cmd::Init(a) => {
            let s = opened(Store::create_url(&a.repo)?)?;
            let keys = if a.passphrase {
                if !a.recipients.is_empty() || !a.recipients_file.is_empty() {
                    return Err(usage("--passphrase cannot be combined with recipients"));
                }
                InitKeys::Passphrase(read_passphrase(true)?)
            } else {
                let rs = parse_recipients(&a.recipients, &a.recipients_file)?;
                if rs.is_empty() {
                    return Err(usage("init needs -r RECIPIENT, -R FILE or --passphrase"));
                }
                InitKeys::Recipients(rs)
            };
            let rep = Repo::init(session(), &s, keys).await?;
            if a.json {
                print_json(
                    &json!({"repo_id": rep.repo_id, "fingerprint": rep.fingerprint, "recipients": rep.recipients}),
                );
            } else {
                println!("created repository {} at {}", rep.repo_id, a.repo);
                println!(
                    "fingerprint {} (keep it with your identity; restore hosts can pin it with SQLVAULT_REPO_FINGERPRINT)",
                    rep.fingerprint
                );
            }
            Ok(0)
        }
        Cmd::Join(a) => {
            let acc = access(&a.keys, true)?.expect("required");
            let repo = open_pinned(&a.repo, acc).await?;
            repo.save_write_key()?;
            if a.json {
                print_json(&json!({"repo_id": repo.id(), "fingerprint": repo.fingerprint()}));
            } else {
                println!(
                    "this host can now back up into repository {} (fingerprint {})",
                    repo.id(),
                    repo.fingerprint()
                );
            }
            Ok(0)
        }
        Cmd::Backup(a) => backup(a).await,
        Cmd::Snapshots(a) => {
            let repo = Repo::open(session(), store(&a.repo)?, access(&a.keys, false)?).await?;
            let snaps: Vec<Manifest> = repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n))
                .collect();
            if a.json {
                print_json(&json!({"snapshots": snaps.iter().map(snapshot_json).collect::<Vec<_>>()}));
            } else {
                println!(
                    "{:<10} {:<21} {:<24} {:<6} {:>10} {:>12}  {}",
                    "ID", "TIME", "NAME", "KIND", "PAGES", "SIZE", "SOURCE"
                );
                for m in &snaps {
                    println!(
                        "{:<10} {:<21} {:<24} {:<6} {:>10} {:>12}  {}{}",
                        m.id.short(),
                        time_str(m.created_ms),
                        m.name,
                        m.kind,
                        m.page_count,
                        human(m.db_size()),
                        sqlvault_engine::names::SourceId::of(m).describe(),
                        if future_dated(m) { "  FUTURE-DATED" } else { "" }
                    );
                    if let Some(c) = m.source_check.as_ref().filter(|c| !c.ok) {
                        println!(
                            "{:<10} the source failed integrity_check when backed up: {}",
                            "",
                            c.problems.first().map(|l| l.replace('\n', " ")).unwrap_or_default()
                        );
                    }
                }
                println!("{} snapshots", snaps.len());
                let future = snaps.iter().filter(|m| future_dated(m)).count();
                if future > 0 {
                    println!(
                        "{future} future-dated (more than {} ahead of this host's clock): never picked as the newest, kept by no retention rule; see README, Retention",
                        sqlvault_engine::retention::describe(sqlvault_engine::retention::CLOCK_SKEW)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Restore(a) => {
            let acc = access(&a.keys, true)?.expect("required");
            let repo = Repo::open_read(session(), store(&a.repo)?, acc).await?;
            let m = repo.find_snapshot(a.snapshot.as_deref(), a.name.as_deref()).await?;
            let db_key = read_db_key(
                a.db_key_file.as_ref(),
                "SQLVAULT_DB_KEY",
                m.cipher.is_some().then_some("database key"),
                false,
            )?;
            // Accepting a damaged source is a decision about one snapshot, seen in its
            // error: never a blanket flag a script could carry past a different one.
            if a.accept_damaged_source && a.snapshot.is_none() {
                return Err(usage(
                    "--accept-damaged-source needs --snapshot ID: the snapshot whose source damage you accept",
                ));
            }
            let opts = sqlvault_engine::RestoreOptions::default()
                .with_force(a.force)
                .with_db_key(db_key)
                .with_accept_damaged_source(a.accept_damaged_source);
            let rep = sqlvault_engine::restore_snapshot(&repo, &m, &a.dest, &opts).await?;
            damaged_source_warning(&format!("snapshot {}", &rep.snapshot_id[..8]), &rep.source_problems);
            if a.json {
                print_json(&serde_json::to_value(&rep).expect("json"));
            } else {
                println!(
                    "restored snapshot {} of {} to {} ({}) in {:.2}s; {} and checksum verified in {:.2}s",
                    &rep.snapshot_id[..8],
                    rep.name,
                    rep.path,
                    human(rep.bytes),
                    rep.restore_seconds,
                    if rep.source_problems.is_empty() {
                        "integrity_check ok"
                    } else {
                        "integrity_check FAILED as the source's did"
                    },
                    rep.check_seconds
                );
                for l in &rep.not_checked {
                    println!("  note: {l}");
                }
            }
            Ok(0)
        }
        Cmd::Verify(a) => {
            let acc = access(&a.keys, true)?.expect("required");
            let repo = Repo::open_read(session(), store(&a.repo)?, acc).await?;
            // With --all, a manifest the repository wrote that is damaged fails the
            // verification (after the others are verified); junk is only warned about.
            let mut damage = None;
            let snaps = if a.all {
                let (all, skipped) = repo.snapshots_checked().await?;
                for s in &skipped {
                    tracing::warn!("skipping {}: {}", s.key, s.message);
                }
                damage = sqlvault_engine::Skipped::damage(&skipped);
                let all: Vec<Manifest> = all
                    .into_iter()
                    .filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n))
                    .collect();
                if all.is_empty() {
                    if let Some(e) = damage {
                        return Err(e);
                    }
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        "snapshot.not-found",
                        "no snapshots to verify",
                    ));
                }
                all
            } else {
                vec![repo.find_snapshot(a.snapshot.as_deref(), a.name.as_deref()).await?]
            };
            let db_key = read_db_key(
                a.db_key_file.as_ref(),
                "SQLVAULT_DB_KEY",
                snaps.iter().any(|m| m.cipher.is_some()).then_some("database key"),
                false,
            )?;
            let reports = sqlvault_engine::verify(
                &repo,
                snaps,
                &sqlvault_engine::RestoreOptions::default()
                    .with_db_key(db_key)
                    .with_evidence(!a.no_evidence),
            )
            .await?;
            let failed: Vec<_> = reports.iter().filter(|r| !r.ok).collect();
            if a.json {
                print_json(&json!({"ok": failed.is_empty() && damage.is_none(), "snapshots": reports}));
            } else {
                for r in &reports {
                    if r.ok {
                        println!(
                            "snapshot {} of {}: ok (restore {:.2}s, integrity_check + checksum {:.2}s)",
                            &r.snapshot_id[..8],
                            r.name,
                            r.restore_seconds,
                            r.check_seconds
                        );
                        for l in &r.not_checked {
                            println!("  note: {l}");
                        }
                    } else {
                        println!(
                            "snapshot {} of {}: FAILED: {}",
                            &r.snapshot_id[..8],
                            r.name,
                            r.error.as_deref().unwrap_or("")
                        );
                    }
                }
            }
            if let Some(f) = failed.first() {
                eprintln!(
                    "sqlvault: error: verification failed for snapshot {}: {}",
                    &f.snapshot_id[..8],
                    f.error.as_deref().unwrap_or("")
                );
                // A snapshot proven intact whose source was already damaged is not a
                // damaged backup: it has its own exit code, unless a backup failed too.
                let only_sources = failed
                    .iter()
                    .all(|r| r.code.as_deref() == Some("restore.source-damaged"));
                return Ok(if only_sources {
                    exit_code(ErrorKind::SourceDamaged)
                } else {
                    exit_code(ErrorKind::Integrity)
                });
            }
            if let Some(e) = damage {
                return Err(e);
            }
            Ok(0)
        }
        Cmd::Check(a) => {
            let acc = access(&a.keys, true)?.expect("required");
            let repo = Repo::open_read(session(), store(&a.repo)?, acc).await?;
            let rep = sqlvault_engine::check(
                &repo,
                sqlvault_engine::CheckOptions::default().with_read_data(a.read_data),
            )
            .await?;
            if a.json {
                print_json(&serde_json::to_value(&rep).expect("json"));
            } else {
                println!(
                    "{} snapshots, {} packs ({} read), {} chunks referenced: {}",
                    rep.snapshots,
                    rep.packs,
                    rep.packs_read,
                    rep.chunks_referenced,
                    if rep.problems.is_empty() {
                        "no problems"
                    } else {
                        "PROBLEMS FOUND"
                    }
                );
                for p in &rep.problems {
                    println!("  [{}] {}", p.code, p.message);
                }
            }
            if let Some(p) = rep.problems.first() {
                eprintln!(
                    "sqlvault: error: check found {} problem(s); first: {}",
                    rep.problems.len(),
                    p.message
                );
                return Ok(6);
            }
            Ok(0)
        }
    }
}

fn dump(a: DumpArgs) -> Result<u8, Error> {
    let opts = sqlvault_engine::DumpOptions::default()
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_force(a.force)
        .with_unlock(source_unlock(&a.db, &a.db_key)?)
        .with_temp_dir(Some(session().temp_dir().to_path_buf()));
    match &a.output {
        None => {
            sqlvault_engine::dump_to_writer(&a.db, std::io::stdout().lock(), &opts)?;
        }
        Some(file) => {
            let s = sqlvault_engine::dump_to_file(&a.db, file, &opts)?;
            if a.json {
                print_json(&serde_json::to_value(&s).expect("json"));
            } else {
                println!(
                    "dumped {} to {}: {} tables, {} rows, {} in {:.2}s; logical checksum {}",
                    s.source,
                    file.display(),
                    s.tables,
                    s.rows,
                    human(s.bytes),
                    s.seconds,
                    &s.logical_checksum[..16]
                );
            }
        }
    }
    Ok(0)
}

fn load(a: LoadArgs) -> Result<u8, Error> {
    let s = sqlvault_engine::load_file(&a.input, &a.db, a.force, a.accept_damaged_source)?;
    damaged_source_warning("the loaded database", &s.source_problems);
    if a.json {
        print_json(&serde_json::to_value(&s).expect("json"));
    } else {
        println!(
            "loaded {} into {} ({} statements) in {:.2}s; integrity_check ok{} in {:.2}s",
            a.input.display(),
            s.path,
            s.statements,
            s.load_seconds,
            if s.checksum_verified {
                ", logical checksum matches the dump"
            } else {
                " (a plain SQL file: no checksum to match)"
            },
            s.check_seconds
        );
    }
    Ok(0)
}

fn db(c: DbCmd) -> Result<u8, Error> {
    let (verb, a) = match &c {
        DbCmd::Encrypt(a) => ("encrypted", a),
        DbCmd::Decrypt(a) => ("decrypted", a),
        DbCmd::Rekey(a) => ("rekeyed", a),
        DbCmd::Migrate(a) => ("migrated", a),
    };
    let opts = ConvertOptions::default()
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_allow_other_links(a.force)
        .with_page_size(a.page_size);
    let need = |k: Option<DbKey>, what: &str, var: &str, flag: &str| {
        k.ok_or_else(|| {
            Error::new(
                ErrorKind::Usage,
                "db.key-required",
                format!("{what} is needed: {flag} FILE, {var}, or a terminal to prompt on"),
            )
        })
    };
    let current = |a: &DbConvertArgs| -> Result<Unlock, Error> {
        let k = read_db_key(a.key_file.as_ref(), "SQLVAULT_DB_KEY", Some("database key"), false)?;
        let k = need(k, "the database key", "SQLVAULT_DB_KEY", "--key-file")?;
        match a.cipher_compat {
            Some(n) => Ok(Unlock::with_compatibility(k, n)?),
            None => Ok(Unlock::key(k)),
        }
    };
    let rep = match &c {
        DbCmd::Encrypt(a) => {
            let k = read_db_key(a.key_file.as_ref(), "SQLVAULT_DB_KEY", Some("new database key"), true)?;
            let k = need(k, "the new database key", "SQLVAULT_DB_KEY", "--key-file")?;
            let compat = a.cipher_compat.unwrap_or(4);
            // 1.x and 2.x settings are there to read legacy files: 1.x pages carry no
            // MAC at all. New files get 3 or 4.
            if compat < 3 {
                return Err(usage(format!(
                    "--cipher-compat {compat}: encrypt writes SQLCipher 4 or 3 settings; 1 and 2 are for reading legacy files"
                )));
            }
            let settings = CipherSettings::defaults(compat)?;
            sqlvault_engine::sqlite::encrypt(&a.db, k, settings, &opts)?
        }
        DbCmd::Decrypt(a) => sqlvault_engine::sqlite::decrypt(&a.db, &current(a)?, &opts)?,
        DbCmd::Rekey(a) => {
            let old = current(a)?;
            let new = read_db_key(
                a.new_key_file.as_ref(),
                "SQLVAULT_NEW_DB_KEY",
                Some("new database key"),
                true,
            )?;
            let new = need(new, "the new database key", "SQLVAULT_NEW_DB_KEY", "--new-key-file")?;
            sqlvault_engine::sqlite::rekey(&a.db, &old, new, &opts)?
        }
        DbCmd::Migrate(a) => sqlvault_engine::sqlite::migrate(&a.db, &current(a)?, &opts)?,
    };
    if rep.other_links > 0 {
        let old = match &c {
            DbCmd::Encrypt(_) => "the old plaintext bytes",
            DbCmd::Rekey(_) => "the old bytes, readable with the old key",
            _ => "the old bytes",
        };
        eprintln!(
            "sqlvault: warning: {} has {} other hard link(s): those names still hold {old}; only this name was {verb}",
            terminal_safe(&rep.path.display().to_string()),
            rep.other_links
        );
    }
    let describe = |s: &Option<CipherSettings>| match s {
        None => "plaintext".to_string(),
        Some(s) => format!("SQLCipher {} settings", s.compatibility),
    };
    // A SQLCipher file whose page size is not its version's default opens only for a
    // client told `PRAGMA cipher_page_size` after the key: say so, with the way out.
    let page_note = match &rep.after {
        Some(s)
            if !rep.unchanged
                && CipherSettings::defaults(s.compatibility).is_ok_and(|d| d.page_size != s.page_size) =>
        {
            Some(format!(
                "note: the {}-byte page size was kept, which is not SQLCipher {}'s default: clients must run `PRAGMA cipher_page_size = {}` after the key to open it (or convert with --page-size {} for the default)",
                s.page_size,
                s.compatibility,
                s.page_size,
                CipherSettings::defaults(s.compatibility)
                    .map(|d| d.page_size)
                    .unwrap_or(4096)
            ))
        }
        _ => None,
    };
    if a.json {
        let settings = |s: &Option<CipherSettings>| {
            s.as_ref().map(|s| {
                json!({"compatibility": s.compatibility, "page_size": s.page_size, "kdf_iter": s.kdf_iter,
                       "hmac_algorithm": s.hmac_algorithm, "kdf_algorithm": s.kdf_algorithm})
            })
        };
        print_json(&json!({
            "path": rep.path.display().to_string(),
            "before": settings(&rep.before),
            "after": settings(&rep.after),
            "logical_checksum": hex::encode(rep.logical_checksum),
            "page_count": rep.page_count,
            "seconds": rep.seconds,
            "other_links": rep.other_links,
            "page_size": {"before": rep.page_size.0, "after": rep.page_size.1},
            "unchanged": rep.unchanged,
            "note": page_note,
        }));
    } else if rep.unchanged {
        println!(
            "{} is already {} (page size {}): left untouched",
            terminal_safe(&rep.path.display().to_string()),
            describe(&rep.after).replace(" settings", ""),
            rep.page_size.1
        );
    } else {
        if let Some(n) = &page_note {
            eprintln!("sqlvault: {n}");
        }
        println!(
            "{verb} {} ({} → {}, page size {}) in {:.2}s; integrity_check ok, logical checksum {} unchanged",
            rep.path.display(),
            describe(&rep.before),
            describe(&rep.after),
            if rep.page_size.0 == rep.page_size.1 {
                format!("{} kept", rep.page_size.1)
            } else {
                format!("{} → {}", rep.page_size.0, rep.page_size.1)
            },
            rep.seconds,
            &hex::encode(rep.logical_checksum)[..16]
        );
    }
    Ok(0)
}

fn parse_recipients(list: &[String], files: &[PathBuf]) -> Result<Vec<Recipient>, Error> {
    let mut rs: Vec<Recipient> = Vec::new();
    for r in list {
        rs.push(
            r.parse()
                .map_err(|e: sqlvault_engine::crypt::CryptError| usage(e.to_string()))?,
        );
    }
    for f in files {
        rs.extend(sqlvault_engine::crypt::read_recipients_file(f).map_err(|e| usage(e.to_string()))?);
    }
    Ok(rs)
}

async fn key_change(a: KeyChangeArgs, add: bool) -> Result<u8, Error> {
    if a.recipients.is_empty() && a.recipients_file.is_empty() {
        return Err(usage("give the recipients with -r RECIPIENT or -R FILE"));
    }
    let acc = access(&a.keys, true)?.expect("required");
    let repo = open_pinned(&a.repo, acc).await?;
    let ch = if add {
        let rs = parse_recipients(&a.recipients, &a.recipients_file)?;
        sqlvault_engine::change_recipients(&repo, &rs, &[]).await?
    } else {
        // Removal matches text, so a recipient that no longer parses can still go.
        let mut names = a.recipients.clone();
        for f in &a.recipients_file {
            let mut text = String::new();
            sqlvault_engine::sqlite::open_regular(f, true)
                .map_err(|e| usage(format!("cannot read recipients file: {e}")))
                .and_then(|mut r| {
                    std::io::Read::read_to_string(&mut r, &mut text)
                        .map_err(|e| usage(format!("cannot read recipients file {}: {e}", f.display())))
                })?;
            names.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        sqlvault_engine::change_recipients(&repo, &[], &names).await?
    };
    if a.json {
        print_json(&json!(ch));
    } else {
        for r in &ch.added {
            println!("added {r}");
        }
        for r in &ch.removed {
            println!("removed {r}");
        }
        println!(
            "recipient set generation {}: {} recipient(s); backup hosts adopt it at their next backup",
            ch.generation,
            ch.recipients.len()
        );
        if !ch.removed.is_empty() {
            println!(
                "existing objects are still encrypted to the removed key(s): run `sqlvault key rewrap {}` (after every backup host has run once)",
                a.repo
            );
        }
    }
    Ok(0)
}

async fn audit(a: AuditArgs) -> Result<u8, Error> {
    use sqlvault_engine::sqlite::Severity;
    let repo = match &a.repo {
        Some(url) => {
            let acc = access(&a.keys, true)?.expect("required");
            Some(Repo::open_read(session(), store(url)?, acc).await?)
        }
        None => None,
    };
    let unlock = read_db_key(a.db_key_file.as_ref(), "SQLVAULT_DB_KEY", None, false)?.map(Unlock::key);
    let req = sqlvault_engine::AuditRequest::new(a.paths.clone())
        .with_fix(a.fix)
        .with_unlock(unlock)
        .with_repo(repo, a.names.clone())
        .with_max_ages(a.max_snapshot_age, a.max_verify_age);
    let mut rep = sqlvault_engine::audit(session(), req).await?;
    rep.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let worst = rep.worst();
    let code = match worst {
        None | Some(Severity::Info) => 0,
        Some(Severity::Low) => 11,
        Some(Severity::Medium) => 12,
        Some(Severity::High) => 13,
    };
    let count = |s: Severity| rep.findings.iter().filter(|f| f.severity == s && !f.fixed).count();
    let fixed = rep.findings.iter().filter(|f| f.fixed).count();
    if a.json {
        let findings: Vec<serde_json::Value> = rep
            .findings
            .iter()
            .map(|f| {
                json!({
                    "severity": f.severity.as_str(),
                    "code": f.code,
                    "path": f.path,
                    "message": f.message,
                    "fix": f.fix,
                    "fixed": f.fixed,
                })
            })
            .collect();
        print_json(&json!({
            "worst": worst.map(|s| s.as_str()),
            "exit_code": code,
            "databases": rep.databases,
            "stats": {"databases": rep.databases.len(), "files": rep.stats.files, "dirs": rep.stats.dirs},
            "fixed": fixed,
            "findings": findings,
        }));
    } else {
        for f in &rep.findings {
            println!(
                "{:<6} {}: {} [{}]{}",
                f.severity.as_str().to_uppercase(),
                f.path.display(),
                f.message,
                f.code,
                if f.fixed { " (fixed)" } else { "" }
            );
            if !f.fix.is_empty() && !f.fixed {
                println!("       fix: {}", f.fix);
            }
        }
        println!(
            "audit: {} databases, {} files, {} directories: {} high, {} medium, {} low{}",
            rep.databases.len(),
            rep.stats.files,
            rep.stats.dirs,
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low),
            if fixed > 0 {
                format!(" ({fixed} fixed)")
            } else {
                String::new()
            }
        );
    }
    Ok(code)
}

async fn backup(a: BackupArgs) -> Result<u8, Error> {
    let dump = matches!(a.kind, KindArg::Dump);
    if a.integrity_check == CheckArg::Always && dump {
        return Err(usage(
            "--integrity-check is for page snapshots (a dump snapshot is loaded and checked when restored)",
        ));
    }
    let check = match a.integrity_check {
        CheckArg::Always => true,
        CheckArg::Never => false,
        CheckArg::Auto => {
            let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len());
            let mut wal = a.db.as_os_str().to_owned();
            wal.push("-wal");
            let size = len(&a.db)
                .unwrap_or(u64::MAX)
                .saturating_add(len(std::path::Path::new(&wal)).unwrap_or(0));
            !dump && size <= AUTO_CHECK_MAX
        }
    };
    let opts = sqlvault_engine::BackupOptions::default()
        .with_integrity_check(check)
        .with_name(a.name.clone())
        .with_adopt_name(a.adopt_name)
        .with_level(a.level)
        .with_pack_target(a.pack_size << 20)
        .with_busy_timeout(busy(a.busy_timeout)?)
        .with_kind(match a.kind {
            KindArg::Pages => sqlvault_engine::BackupKind::Pages,
            KindArg::Dump => sqlvault_engine::BackupKind::Dump,
        })
        .with_unlock(source_unlock(&a.db, &a.db_key)?);
    let summary = |rep: &sqlvault_engine::BackupReport, to: &str| {
        format!(
            "snapshot {} of {} saved to {to} ({}): {} chunks read ({}), {} new chunks, {} stored, {:.2}s",
            &rep.snapshot_id[..8],
            rep.name,
            rep.kind,
            rep.chunks_total,
            human(rep.bytes_read),
            rep.chunks_new,
            human(rep.bytes_new),
            rep.seconds
        )
    };
    if a.repos.len() == 1 {
        let repo = Repo::open_write(session(), store(&a.repos[0])?).await?;
        let rep = sqlvault_engine::backup(&repo, &a.db, opts).await?;
        warn_source_check(&a.db, &rep);
        if a.json {
            print_json(&serde_json::to_value(&rep).expect("json"));
        } else {
            println!("{}", summary(&rep, &a.repos[0]));
        }
        return Ok(0);
    }
    // Several destinations: each opened, written and reported on its own.
    let opened = futures::future::join_all(a.repos.iter().map(|url| async move {
        let s = store(url)?;
        Repo::open_write(session(), s).await
    }))
    .await;
    let mut repos = Vec::new();
    let mut results: Vec<Option<Result<sqlvault_engine::BackupReport, Error>>> = Vec::new();
    for r in opened {
        match r {
            Ok(repo) => {
                repos.push(repo);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut written = sqlvault_engine::backup_to_all(&repos, &a.db, opts).await?.into_iter();
    let results: Vec<Result<sqlvault_engine::BackupReport, Error>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| written.next().expect("one result per opened repository")))
        .collect();
    if let Some(rep) = results.iter().find_map(|r| r.as_ref().ok()) {
        warn_source_check(&a.db, rep);
    }
    let failed: Vec<(&String, &Error)> = a
        .repos
        .iter()
        .zip(&results)
        .filter_map(|(u, r)| r.as_ref().err().map(|e| (u, e)))
        .collect();
    if a.json {
        let dests: Vec<serde_json::Value> = a
            .repos
            .iter()
            .zip(&results)
            .map(|(u, r)| match r {
                Ok(rep) => json!({"repo": u, "ok": true, "report": rep}),
                Err(e) => json!({"repo": u, "ok": false, "error": {"code": e.code(), "message": e.one_line()}}),
            })
            .collect();
        print_json(&json!({
            "ok": failed.is_empty(),
            "succeeded": results.len() - failed.len(),
            "failed": failed.len(),
            "destinations": dests,
        }));
    } else {
        for (u, r) in a.repos.iter().zip(&results) {
            match r {
                Ok(rep) => println!("{}", summary(rep, u)),
                Err(e) => println!("{u}: FAILED: {}", e.one_line()),
            }
        }
    }
    match failed.as_slice() {
        [] => Ok(0),
        // Nothing written anywhere: the error of the first destination, its exit code.
        [(_, e), ..] if failed.len() == results.len() => {
            eprintln!(
                "sqlvault: error: backup failed for all {} destinations; first: {}",
                results.len(),
                e.one_line()
            );
            Ok(exit_code(e.kind()))
        }
        _ => {
            let names: Vec<String> = failed.iter().map(|(u, e)| format!("{u} ({})", e.code())).collect();
            eprintln!(
                "sqlvault: error: partial backup: {} of {} destinations written; failed: {}",
                results.len() - failed.len(),
                results.len(),
                names.join(", ")
            );
            Ok(exit_code(ErrorKind::Partial))
        }
    }
}

fn prune_options(
    dry_run: bool,
    grace: Option<Duration>,
    repack_below: f64,
    no_running_backups: bool,
) -> Result<sqlvault_engine::PruneOptions, Error> {
    if !(0.0..=1.0).contains(&repack_below) {
        return Err(usage("--repack-below is a fraction between 0 and 1"));
    }
    if let Some(g) = grace {
        sqlvault_engine::check_grace(g)?;
    }
    Ok(sqlvault_engine::PruneOptions::default()
        .with_dry_run(dry_run)
        .with_grace(grace)
        .with_repack_below(repack_below)
        .with_no_running_backups(no_running_backups))
}

fn print_prune(r: &sqlvault_engine::PruneReport) {
    let (would, would_paren) = if r.dry_run {
        ("would be ", " (would be)")
    } else {
        ("", "")
    };
    println!(
        "{} snapshots, {} packs ({}) in the repository",
        r.snapshots,
        r.packs,
        human(r.pack_bytes)
    );
    let t = |t: &sqlvault_engine::Tally| {
        format!(
            "{} packs, {} maps, {} indexes ({})",
            t.packs,
            t.maps,
            t.indexes,
            human(t.bytes)
        )
    };
    println!("deleted{would_paren}: {}", t(&r.deleted));
    if r.repacked > 0 {
        println!(
            "repacked{would_paren}: {} mostly-unused packs ({} chunks into {} new packs)",
            r.repacked, r.repacked_chunks, r.repack_packs_written
        );
    }
    if let Some(why) = &r.repack_skipped {
        println!("repack skipped: {why}");
    }
    if r.kept_in_doubt > 0 {
        println!(
            "kept: {} packs due for deletion, because no pack trailer proved their referenced chunks are held elsewhere (prune with -i to check), or an index could not be read",
            r.kept_in_doubt
        );
    }
    for s in &r.skipped {
        println!("skipped {}: {}", s.key, s.message);
    }
    println!("{would}marked for deletion: {}", t(&r.marked));
    if r.waiting.packs + r.waiting.maps + r.waiting.indexes > 0 {
        println!("still waiting for the grace period: {}", t(&r.waiting));
    }
    if let Some(at) = r.next_deletion_ms {
        println!(
            "marked objects are deleted by a prune run after {} (grace {})",
            time_str(at),
            sqlvault_engine::retention::describe(Duration::from_secs(r.grace_seconds))
        );
    }
}

async fn drill(a: DrillArgs) -> Result<u8, Error> {
    let db_key = read_db_key(a.db_key_file.as_ref(), "SQLVAULT_DB_KEY", None, false)?;
    let opts = sqlvault_engine::DrillOptions::default()
        .with_name(a.name)
        .with_db_key(db_key)
        .with_record_in_repo(a.record)
        .with_scratch(a.scratch)
        .with_log(a.log);
    let opened = async { Repo::open_read(session(), store(&a.repo)?, access(&a.keys, true)?.expect("required")).await };
    let repo = match opened.await {
        Ok(r) => r,
        Err(e) => {
            // The log shows a drill that could not even start.
            sqlvault_engine::append_drill_failure(&opts.log_path(session()), session().host(), &a.repo, &e);
            return Err(e);
        }
    };
    let rep = sqlvault_engine::drill(&repo, &opts).await?;
    if a.json {
        print_json(&serde_json::to_value(&rep).expect("json"));
    } else {
        for r in &rep.records {
            let e = &r.evidence;
            if e.ok {
                println!(
                    "{}: snapshot {} ({} old) restored in {:.2}s, {} verified in {:.2}s: ok",
                    e.name,
                    &e.snapshot_id[..8],
                    sqlvault_engine::retention::describe(Duration::from_secs_f64(r.rpo_seconds)),
                    e.restore_seconds,
                    e.checks.join(", "),
                    e.check_seconds
                );
                for l in &r.not_checked {
                    println!("  note: {l}");
                }
            } else {
                println!(
                    "{}: snapshot {}: FAILED: {}",
                    e.name,
                    &e.snapshot_id[..8],
                    r.error.as_deref().unwrap_or("")
                );
            }
        }
        println!("evidence appended to {}", rep.log);
    }
    match rep.failure {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

async fn copy(a: CopyArgs) -> Result<u8, Error> {
    let acc = access(&a.keys, true)?.expect("required");
    let src = Repo::open_read(session(), store(&a.src)?, acc).await?;
    let dst = Repo::open_write(session(), store(&a.dst)?).await?;
    let opts = sqlvault_engine::CopyOptions::default()
        .with_snapshots(a.snapshots)
        .with_name(a.name);
    let rep = sqlvault_engine::copy(&src, &dst, &opts).await?;
    if a.json {
        print_json(&serde_json::to_value(&rep).expect("json"));
        return Ok(0);
    }
    for c in &rep.copied {
        println!(
            "copied snapshot {} of {}: {} chunks, {} read from the source, {} sent ({})",
            &c.id[..8],
            c.name,
            c.chunks_total,
            c.chunks_read,
            c.chunks_sent,
            human(c.bytes_sent)
        );
    }
    println!(
        "{} snapshots copied, {} already in {}",
        rep.copied.len(),
        rep.already_present.len(),
        a.dst
    );
    Ok(0)
}

async fn forget(a: ForgetArgs) -> Result<u8, Error> {
    let repo = Repo::open(session(), store(&a.repo)?, access(&a.keys, false)?).await?;
    let policy = sqlvault_engine::retention::Policy::new()
        .with_last(a.keep_last)
        .with_hourly(a.keep_hourly)
        .with_daily(a.keep_daily)
        .with_weekly(a.keep_weekly)
        .with_monthly(a.keep_monthly)
        .with_yearly(a.keep_yearly)
        .with_within(a.keep_within);
    if policy.is_empty() && !a.remove_all {
        return Err(usage(
            "no policy given: use --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly/--keep-within (or --remove-all)",
        ));
    }
    // Prune's options are checked before forget removes anything.
    let prune_opts = prune_options(a.dry_run, a.grace, 0.5, a.no_running_backups)?;
    let opts = sqlvault_engine::ForgetOptions::new(policy)
        .with_name(a.name.clone())
        .with_dry_run(a.dry_run)
        .with_allow_remove_all(a.remove_all);
    let rep = sqlvault_engine::forget(&repo, &opts).await?;
    let pruned = if a.prune {
        Some(sqlvault_engine::prune(&repo, &prune_opts).await?)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&rep).expect("json");
        if let Some(p) = &pruned {
            v["prune"] = serde_json::to_value(p).expect("json");
        }
        print_json(&v);
        return Ok(0);
    }
    for g in &rep.groups {
        let source = sqlvault_engine::names::SourceId {
            host: g.host.clone(),
            path: g.source_path.clone(),
        };
        println!("{} from {}: {} snapshots", g.name, source.describe(), g.snapshots.len());
        for s in &g.snapshots {
            println!(
                "  {} {:<8} {}  {}",
                if s.keep { "keep  " } else { "remove" },
                &s.id[..8],
                time_str(s.created_ms),
                s.reasons.join(", ")
            );
        }
    }
    println!(
        "{} kept, {} {}",
        rep.kept,
        rep.removed,
        if rep.dry_run {
            "would be removed (dry run)"
        } else {
            "removed"
        }
    );
    if rep.future_dated > 0 {
        println!(
            "{} future-dated snapshot(s) kept by no rule and not removed: look at them (README, Retention)",
            rep.future_dated
        );
    }
    if let Some(p) = &pruned {
        print_prune(p);
    }
    Ok(0)
}

fn wants_json(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Forget(a) => a.json,
        Cmd::Prune(a) => a.json,
        Cmd::Key(KeyCmd::Add(a) | KeyCmd::Remove(a)) => a.json,
        Cmd::Key(KeyCmd::List(a) | KeyCmd::Rewrap(a)) => a.json,
        Cmd::Audit(a) => a.json,
        Cmd::Db(DbCmd::Encrypt(a) | DbCmd::Decrypt(a) | DbCmd::Rekey(a) | DbCmd::Migrate(a)) => a.json,
        Cmd::Init(a) => a.json,
        Cmd::Backup(a) => a.json,
        Cmd::Snapshots(a) => a.json,
        Cmd::Restore(a) => a.json,
        Cmd::Verify(a) => a.json,
        Cmd::Check(a) => a.json,
        Cmd::Dump(a) => a.json,
        Cmd::Load(a) => a.json,
        _ => false,
    }
}

/// SIGINT, SIGTERM and SIGHUP: every temporary file and directory this process made
/// (restores, loads, dumps, conversions, verify and drill scratch: plaintext) is
/// removed, then the process exits with 128 + the signal number: 130, 143, 129.
///
/// The signals are blocked in this thread before any other thread exists, so every
/// thread inherits the mask and only the `signals` thread takes them, with `sigwait`:
/// the cleanup runs in an ordinary thread, not in a signal handler. It holds the
/// temporary-file registry until `_exit`, so no new temporary appears after it.
fn handle_signals(json: bool) {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    // SAFETY: sigset functions on a local, zero-initialised set; pthread_sigmask
    // changes only this thread's mask (and, through inheritance, its future threads').
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set and `sig` a valid out-parameter.
        while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
        let removed = sqlvault_engine::sqlite::remove_all_for_exit();
        let name = match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let line = format!("interrupted by {name}; removed {removed} temporary file(s) this run had made");
        let out = json!({"error": {"code": "interrupted", "message": line}}).to_string() + "\n";
        let err = format!("sqlvault: error: {line}\n");
        // Raw writes: another thread may hold the std handles' locks, and nothing
        // else of this process runs to completion after this point.
        // SAFETY: writes of valid buffers to the standard descriptors, then _exit,
        // which ends every thread without unwinding or running destructors.
        unsafe {
            if json {
                libc::write(1, out.as_ptr().cast(), out.len());
            }
            libc::write(2, err.as_ptr().cast(), err.len());
            libc::_exit(128 + sig);
        }
    });
    if spawned.is_err() {
        // No thread to take them: back to the default actions.
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    // Everything sqlvault creates (state, caches, restored files, local repository
    // objects) is private to the user.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    // Keys and passphrases pass through this process's memory: no core dump of it
    // should carry them to disk.
    // SAFETY: setrlimit only lowers this process's own core-file limit.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    // glibc raises its mmap threshold after freeing large blocks and then serves the
    // pipeline's MiB-sized buffers from arenas it never returns; a fixed threshold keeps
    // peak RSS flat (measured in docs/benchmarks.md).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    let cli = Cli::parse();
    let filter = std::env::var("SQLVAULT_LOG").unwrap_or_else(|_| {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
        .to_string()
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: cron mail, journald and log files get text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
    let json = wants_json(&cli.cmd);
    handle_signals(json);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sqlvault: error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let host = build_session(cli.host.clone()).map(|s| {
        let _ = SESSION.set(s);
    });
    match host.and_then(|()| rt.block_on(run(cli.cmd))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let line = e.one_line();
            if json {
                print_json(&json!({"error": {"code": e.code(), "message": line}}));
            }
            eprintln!("sqlvault: error: {line}");
            ExitCode::from(exit_code(e.kind()))
        }
    }
}
