//! `sqlvault freeze`: hold a database still while a command (a filesystem snapshot)
//! runs.
//!
//! The lock is taken before the command starts and released the moment it exits,
//! seen with `waitid(WNOWAIT)` in a waiting thread (the command is reaped only
//! afterwards, by this thread, so its pid stays ours to signal until then). The whole
//! run — taking the lock and the command — is bounded by `--timeout`: past it the
//! command gets SIGTERM, then SIGKILL 2 s later, and the lock is released once it is
//! gone. SIGINT/SIGTERM to sqlvault stop the command the same way before sqlvault
//! exits ([`stop_child_for_exit`], called by the signal thread); the process's exit
//! releases the lock.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind};
use sqlvault_sqlite::{Freeze, SqliteError};

use super::Ctx;
use crate::exit::usage;
use crate::render::print_json;
use crate::secrets::{DbKeyArgs, source_unlock};

/// The exit code of a freeze whose command failed, was killed at the timeout, or
/// never ran because the database could not be held in time (README.md, exit codes).
pub const FREEZE_FAILED: u8 = 19;

/// How long a command has to exit after SIGTERM before it gets SIGKILL (and after
/// SIGKILL before sqlvault gives up waiting for it).
const GRACE: Duration = Duration::from_secs(2);

/// Variables holding secrets that the command must not inherit from sqlvault.
const SECRET_VARS: [&str; 3] = ["SQLVAULT_DB_KEY", "SQLVAULT_NEW_DB_KEY", "SQLVAULT_PASSPHRASE"];

#[derive(Args, Debug)]
pub struct FreezeArgs {
    /// The database to hold still.
    db: PathBuf,
    /// Longest time, in seconds, for taking the lock plus running the command; past
    /// it the command is killed (SIGTERM, then SIGKILL after 2 s) and sqlvault exits 19.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    timeout: f64,
    #[command(flatten)]
    db_key: DbKeyArgs,
    /// The command to run while the database is held, after `--`: run directly (no
    /// shell), with sqlvault's standard input, output and error (with --json its
    /// output goes to standard error, leaving standard output to the JSON document).
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The command's pid while it may run (the signal thread stops it): set under the
/// lock together with the spawn, cleared under it together with the reaping.
static CHILD: Mutex<Option<u32>> = Mutex::new(None);

/// Called by the signal thread before the process exits on SIGINT/SIGTERM/SIGHUP:
/// stops a command `freeze` is running (SIGTERM, SIGKILL after 2 s), so it is never
/// left running, unsupervised, after the lock is gone. Keeps the lock on the pid, so
/// the command is not reaped (and its pid not reused) before the process exits.
/// Returns the pid it stopped.
pub fn stop_child_for_exit() -> Option<u32> {
    let guard = CHILD.lock().unwrap_or_else(|e| e.into_inner());
    let pid = (*guard)?;
    if stop(pid) != Stopped::Stuck {
        // Reaped here: the main thread cannot (it needs the lock), and a zombie left
        // to an init that does not reap would look like a command still running.
        let mut status = 0;
        // SAFETY: `pid` is our exited, unreaped child; `status` a valid out-parameter.
        unsafe {
            libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
        }
    }
    std::mem::forget(guard);
    Some(pid)
}

/// Whether process `pid` (our child) has exited, without reaping it.
fn exited(pid: u32, block: bool) -> bool {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid out-parameter; waitid writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
        // SAFETY: `info` is a valid siginfo_t; WNOWAIT leaves the child waitable.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if rc == 0 {
            // SAFETY: waitid filled `info`; si_pid is 0 when WNOHANG found no exit.
            return unsafe { info.si_pid() } != 0;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // ECHILD: already reaped, or not ours; either way it does not run.
            return true;
        }
    }
}

/// Waits up to `d` for `pid` to exit (polling: used only where no waiting thread
/// reports it).
fn exits_within(pid: u32, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if exited(pid, false) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a command was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Term,
    Kill,
    /// It had not exited even 2 s after SIGKILL (stuck in the kernel).
    Stuck,
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; `pid` is our unreaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, then SIGKILL after [`GRACE`] (for the signal thread, which has no waiting
/// thread to tell it).
fn stop(pid: u32) -> Stopped {
    signal(pid, libc::SIGTERM);
    if exits_within(pid, GRACE) {
        return Stopped::Term;
    }
    signal(pid, libc::SIGKILL);
    if exits_within(pid, GRACE) {
        Stopped::Kill
    } else {
        Stopped::Stuck
    }
}

fn seconds(secs: f64) -> Result<Duration, Error> {
    if secs.is_finite() && secs > 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(usage("--timeout must be a positive number of seconds"))
    }
}

/// What happened to the command.
struct Outcome {
    status: Option<ExitStatus>,
    stopped: Option<Stopped>,
    ran: Duration,
}

pub async fn run(a: FreezeArgs, ctx: &Ctx) -> Result<u8, Error> {
    let timeout = seconds(a.timeout)?;
    let unlock = source_unlock(&a.db, &a.db_key)?;
    let program = a.command[0].to_string_lossy().into_owned();
    let start = Instant::now();
    let deadline = start + timeout;
    let db = a.db.display().to_string();
    let report = |held: Option<Duration>, acquired: Option<Duration>, mode: Option<&str>, o: Option<&Outcome>| {
        json!({
            "database": db,
            "journal_mode": mode,
            "command": program,
            "held_seconds": held.map(|d| d.as_secs_f64()),
            "acquire_seconds": acquired.map(|d| d.as_secs_f64()),
            "command_seconds": o.map(|o| o.ran.as_secs_f64()),
            "exit_code": o.and_then(|o| o.status).and_then(|s| s.code()),
            "signal": o.and_then(|o| o.status).and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
            "timed_out": o.is_some_and(|o| o.stopped.is_some()),
        })
    };
    let fail = |mut doc: serde_json::Value, code: &str, message: String| -> u8 {
        if ctx.json {
            doc["ok"] = json!(false);
            doc["error"] = json!({"code": code, "message": message});
            print_json(&doc);
        }
        eprintln!("sqlvault: error: {message}");
        FREEZE_FAILED
    };

    let freeze = match Freeze::acquire(&a.db, unlock.as_ref(), timeout) {
        Ok(f) => f,
        Err(SqliteError::Busy { .. }) => {
            return Ok(fail(
                report(None, Some(start.elapsed()), None, None),
                "freeze.lock-timeout",
                format!(
                    "could not hold {db} still within --timeout {}s: another connection kept its write or checkpoint lock; {program} was not run",
                    a.timeout
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let acquired = freeze.acquired_in();
    let mode = freeze.journal_mode().to_string();

    // The command: no shell, argv as given, none of sqlvault's secrets.
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    for v in SECRET_VARS {
        cmd.env_remove(v);
    }
    // sqlvault blocks SIGINT, SIGTERM and SIGHUP in every thread (its signal thread
    // takes them with sigwait), and a child inherits the mask: unblocked for the
    // command, so that a timeout's SIGTERM (or the terminal's Ctrl-C) reaches it.
    // SAFETY: between fork and exec only sigemptyset and sigprocmask run, both
    // async-signal-safe, on a local set; nothing is allocated or locked.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if ctx.json {
        use std::os::fd::AsFd;
        let err = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::new(ErrorKind::Io, "io", "cannot duplicate standard error").with_source(e))?;
        cmd.stdout(Stdio::from(err));
    }
    let t_cmd = Instant::now();
    let spawned = {
        let mut slot = CHILD.lock().unwrap_or_else(|e| e.into_inner());
        cmd.spawn().inspect(|c| *slot = Some(c.id()))
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let held = freeze.release();
            return Ok(fail(
                report(Some(held), Some(acquired), Some(&mode), None),
                "freeze.command-failed",
                format!(
                    "cannot run {program}: {e}; {db} was held {:.3}s and is released",
                    held.as_secs_f64()
                ),
            ));
        }
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // Only tells that the command exited; the reaping is ours, below.
    std::thread::spawn(move || {
        exited(pid, true);
        let _ = tx.send(());
    });
    let mut stopped = None;
    if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        signal(pid, libc::SIGTERM);
        stopped = Some(Stopped::Term);
        if rx.recv_timeout(GRACE).is_err() {
            signal(pid, libc::SIGKILL);
            stopped = Some(Stopped::Kill);
            if rx.recv_timeout(GRACE).is_err() {
                stopped = Some(Stopped::Stuck);
            }
        }
    }
    let ran = t_cmd.elapsed();
    // Released the moment the command is gone.
    let held = freeze.release();
    let status = {
        let mut slot = CHILD.lock().unwrap_or_else(|e| e.into_inner());
        let st = match stopped {
            Some(Stopped::Stuck) => child.try_wait().ok().flatten(),
            _ => child.wait().ok(),
        };
        if st.is_some() {
            *slot = None;
        }
        st
    };
    let outcome = Outcome { status, stopped, ran };
    let mut doc = report(Some(held), Some(acquired), Some(&mode), Some(&outcome));
    let held_s = held.as_secs_f64();
    let how = match status {
        Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_string(),
        },
        None => "did not exit".to_string(),
    };
    if let Some(st) = stopped {
        let what = match st {
            Stopped::Term => "was stopped with SIGTERM".to_string(),
            Stopped::Kill => "did not stop on SIGTERM and was killed with SIGKILL".to_string(),
            Stopped::Stuck => format!("did not exit even after SIGKILL (pid {pid} may still run)"),
        };
        return Ok(fail(
            doc,
            "freeze.timeout",
            format!(
                "{program} ran past --timeout {}s and {what}; {db} was held {held_s:.3}s and is released: a snapshot it took may be inconsistent",
                a.timeout
            ),
        ));
    }
    if !status.is_some_and(|s| s.success()) {
        return Ok(fail(
            doc,
            "freeze.command-failed",
            format!(
                "{program} {how} while {db} was held ({held_s:.3}s): a snapshot it took may be inconsistent or missing"
            ),
        ));
    }
    if ctx.json {
        doc["ok"] = json!(true);
        print_json(&doc);
    } else if !ctx.quiet {
        eprintln!(
            "froze {db} ({mode} mode) for {held_s:.3}s, the longest any writer waited (lock taken in {:.3}s); {program} {how} after {:.3}s",
            acquired.as_secs_f64(),
            ran.as_secs_f64()
        );
    }
    Ok(0)
}
