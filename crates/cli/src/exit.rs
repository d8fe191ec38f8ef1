//! Exit codes, and the hint line that tells the user which flag gets past an error.
//!
//! Library messages say what failed; what to type next is the CLI's business, because
//! only the CLI knows its flags. Every error code whose way out is a flag (or a
//! variable standing in for one) has its hint here, keyed by the code and, where the
//! flag differs between commands, by the command.

use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};

use crate::cmd::Ctx;

/// The code of a command that needs an identity or passphrase and got neither.
pub const IDENTITY_REQUIRED: &str = "usage.identity-required";

/// Exit codes; documented in README.md.
pub fn kind_code(kind: ErrorKind) -> u8 {
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

/// The exit code of `e`. A missing identity is told apart from a wrong one (5): the
/// engine files its own check (a write key asked to decrypt data) under `Auth`, yet
/// the user gave no key at all, so retrying with another key file is the wrong advice.
pub fn exit_code(e: &Error) -> u8 {
    match e.code() {
        IDENTITY_REQUIRED | "crypt.identity-required" => 16,
        _ => kind_code(e.kind()),
    }
}

/// A usage error (exit 2).
pub fn usage(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Usage, "usage", msg)
}

/// The hint for error `code` raised by `command` (its words, as typed: `restore`,
/// `db encrypt`, `key add`).
pub fn hint(code: &str, command: &str) -> Option<&'static str> {
    let db_convert = command.starts_with("db ");
    Some(match code {
        IDENTITY_REQUIRED | "crypt.identity-required" => {
            "pass -i KEYFILE (or set SQLVAULT_IDENTITY_FILE), or --passphrase (or set SQLVAULT_PASSPHRASE) for a passphrase repository"
        }
        "backup.name-taken" => {
            "pass --name NAME to back this database up under a name of its own, or --adopt-name if the database moved"
        }
        "backup.name-claim-unreadable" => "pass --adopt-name to replace the unreadable name claim",
        "backup.outlived-grace" | "copy.outlived-grace" => {
            "run it again; if it always runs this long, raise the grace period with `sqlvault prune REPO --grace DURATION`"
        }
        "prune.grace-too-short" => {
            "pass --grace of at least 1h; to delete marked data now, stop every backup and copy and pass --no-running-backups"
        }
        "forget.would-remove-all" => "give a --keep-* rule, or pass --remove-all to remove every snapshot of it",
        "snapshot.name-required" => "pass --name NAME to take the newest snapshot of one database, or --snapshot ID",
        "snapshot.only-future-dated" => "name one with --snapshot ID if you trust it",
        "restore.db-key-required" | "source.key-required" if db_convert => {
            "pass --key-file FILE (or set SQLVAULT_DB_KEY), or run it on a terminal to be asked"
        }
        "restore.db-key-required" | "source.key-required" => {
            "pass --db-key-file FILE (or set SQLVAULT_DB_KEY), or run it on a terminal to be asked"
        }
        "restore.destination-exists" | "load.destination-exists" | "dump.output-exists" | "snapshot.output-exists" => {
            "pass --force to replace it"
        }
        "restore.stale-side-files" | "load.stale-side-files" => "remove them, or pass --force to have them removed",
        "restore.destination-in-use" | "load.destination-in-use" => {
            "stop every process that has it open, then run the command again with --force"
        }
        "destination.not-replaceable" => "give the real path of a regular file",
        "restore.source-damaged" if command == "load" => "pass --accept-damaged-source to keep these exact contents",
        "restore.source-damaged" if command == "restore" => {
            "pass --accept-damaged-source --snapshot ID to install these exact bytes of that snapshot"
        }
        "restore.source-damaged" => {
            "`sqlvault restore REPO DEST --accept-damaged-source --snapshot ID` installs these exact bytes"
        }
        "db.other-links" => "remove the other links first, or pass --force to convert this name anyway",
        "db.page-size" => "choose another page size with --page-size (1024, or 4096 for SQLCipher 4's default)",
        "source.busy" if matches!(command, "backup" | "dump") || db_convert => {
            "stop the writer, or wait longer with --busy-timeout SECONDS"
        }
        "usage.bad-host" => "give --host NAME (or SQLVAULT_HOST) of 1 to 253 printable ASCII characters without spaces",
        "repo.unpinned" => "set SQLVAULT_REPO_FINGERPRINT to the fingerprint `sqlvault init` printed",
        "repo.no-write-key" => {
            "run `sqlvault join REPO -i KEYFILE` on this host once (or `sqlvault init` for a new repository)"
        }
        "prune.state-damaged" => {
            "`sqlvault prune REPO --reset-damaged-state` starts the prune state afresh (its marks are lost)"
        }
        _ => return None,
    })
}

/// Reports a failed command once: the error line and its hint on stderr, and with
/// `--json` the same as a document on stdout. Returns the exit code.
pub fn report(e: &Error, ctx: &Ctx) -> u8 {
    let line = e.one_line();
    let hint = hint_for(e, ctx.command);
    if ctx.json {
        crate::render::print_json(&json!({"error": error_json(e, ctx)}));
    }
    eprintln!("sqlvault: error: {line}");
    if let Some(h) = hint {
        eprintln!("hint: {h}");
    }
    exit_code(e)
}

/// An error as `--json` documents carry it: `code`, `message`, and `hint` when there is one.
pub fn error_json(e: &Error, ctx: &Ctx) -> serde_json::Value {
    let mut v = json!({"code": e.code(), "message": e.one_line()});
    if let Some(h) = hint_for(e, ctx.command) {
        v["hint"] = json!(h);
    }
    if let Some(id) = e.snapshot() {
        v["snapshot"] = json!(id);
    }
    v
}

/// [`hint`] for `e`, with the snapshot it concerns in place of `ID` when it names one:
/// the command to run next, ready to paste.
pub fn hint_for(e: &Error, command: &str) -> Option<String> {
    let h = hint(e.code(), command)?;
    Some(match e.snapshot() {
        Some(id) => h.replace("--snapshot ID", &format!("--snapshot {}", &id[..id.len().min(8)])),
        None => h.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_hints_follow_the_command() {
        assert!(hint("source.key-required", "db rekey").unwrap().contains("--key-file"));
        assert!(hint("source.key-required", "backup").unwrap().contains("--db-key-file"));
        assert!(
            hint("restore.source-damaged", "restore")
                .unwrap()
                .contains("--snapshot")
        );
        assert!(!hint("restore.source-damaged", "load").unwrap().contains("--snapshot"));
        assert_eq!(hint("crypt.no-matching-identity", "restore"), None);
    }

    #[test]
    fn a_missing_identity_is_not_a_wrong_one() {
        let e = Error::new(ErrorKind::Usage, IDENTITY_REQUIRED, "x");
        assert_eq!(exit_code(&e), 16);
        let e = Error::new(ErrorKind::Auth, "crypt.identity-required", "x");
        assert_eq!(exit_code(&e), 16);
        let e = Error::new(ErrorKind::Auth, "crypt.no-matching-identity", "x");
        assert_eq!(exit_code(&e), 5);
    }
}
