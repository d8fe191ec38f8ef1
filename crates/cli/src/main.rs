//! `sqlvault`: clap arguments → engine calls → text or JSON output and exit codes.
//! Every capability lives in the library crates; this binary is glue. This file sets
//! the process up and hands the command to `cmd`.

// First: its print macros shadow std's in every module declared after it.
#[macro_use]
mod render;
mod cmd;
mod exit;
#[allow(dead_code, reason = "drawn for the engine's progress trait once it lands")]
mod progress;
mod secrets;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

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
    /// Print one JSON document on stdout (errors too, with a stable `code`).
    #[arg(long, global = true)]
    json: bool,
    /// Log lines on stderr as text or as one JSON object each (for journald, Loki…).
    #[arg(long, global = true, env = "SQLVAULT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// No progress and no informational lines on stderr; warnings and errors still print.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// This host's identity in snapshots, name claims, retention groups and evidence,
    /// instead of the machine's host name: for containers and Kubernetes CronJobs,
    /// whose host name changes at every run (printable ASCII, no spaces, at most 253).
    #[arg(long, global = true, env = "SQLVAULT_HOST", value_name = "NAME")]
    host: Option<String>,
    #[command(subcommand)]
    cmd: cmd::Cmd,
}

/// SIGINT, SIGTERM and SIGHUP: every temporary file and directory this process made
/// (restores, loads, dumps, conversions, verify and drill scratch: plaintext) is
/// removed, then the process exits with 128 + the signal number: 130, 143, 129.
///
/// The signals are blocked in this thread before any other thread exists, so every
/// thread inherits the mask and only the `signals` thread takes them, with `sigwait`:
/// the cleanup runs in an ordinary thread, not in a signal handler. It holds the
/// temporary-file registry until `_exit`, so no new temporary appears after it.
/// Set by a command that stops gracefully on SIGINT/SIGTERM (see `handle_signals`).
pub static GRACEFUL: std::sync::OnceLock<sqlvault_engine::Cancel> = std::sync::OnceLock::new();
/// Set by a command that reloads on SIGHUP (the daemon) instead of exiting.
pub static RELOAD: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

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
        let mut stopping = false;
        loop {
            // SAFETY: `set` is a valid signal set and `sig` a valid out-parameter.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            // The daemon reads its configuration again on SIGHUP.
            if sig == libc::SIGHUP
                && let Some(r) = RELOAD.get()
            {
                r.store(true, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            // A command that stops gracefully (replicate, daemon: ship what is
            // committed, exit 0) takes the first SIGINT or SIGTERM; a second one ends
            // the process as below.
            if sig != libc::SIGHUP
                && !stopping
                && let Some(stop) = GRACEFUL.get()
            {
                stopping = true;
                stop.cancel();
                let line = "stopping: shipping what is committed (send the signal again to exit at once)\n";
                // SAFETY: a write of a valid buffer to stderr.
                unsafe {
                    libc::write(2, line.as_ptr().cast(), line.len());
                }
                continue;
            }
            break;
        }
        // A command `freeze` runs is stopped first (SIGTERM, then SIGKILL): never left
        // running unsupervised once the database is let go.
        cmd::freeze::stop_child_for_exit();
        let removed = sqlvault_sqlite::remove_all_for_exit();
        let name = match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let line = format!(
            "interrupted by {name}; removed {} this run had made",
            render::count(removed, "temporary file", "temporary files")
        );
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
    // peak RSS flat (measured in docs/benchmarks.md). Two arenas instead of eight per
    // core: the pipeline recycles its buffers, so threads rarely contend in malloc,
    // while every extra arena keeps its own freed chunks (copy's peak RSS at 1 GiB:
    // 120 MiB with the default, 109 with two; backup's wall time unchanged).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    // The daemon says what it does (chains started, reloads) by default; a command
    // only warns.
    let daemon = matches!(cli.cmd, cmd::Cmd::Daemon(_));
    let filter = std::env::var("SQLVAULT_LOG").unwrap_or_else(|_| {
        match (cli.verbose, daemon) {
            (0, false) => "warn",
            (0, true) | (1, _) => "info",
            _ => "debug",
        }
        .to_string()
    });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter));
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        // Colour codes only on a terminal: cron mail, journald and log files get text.
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let ctx = cmd::Ctx {
        json: cli.json,
        quiet: cli.quiet,
        command: cli.cmd.name(),
    };
    handle_signals(ctx.json);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sqlvault: error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let progress = progress::TerminalProgress::for_command(&ctx);
    let host = cmd::init_session(cli.host.clone(), progress);
    match host.and_then(|()| rt.block_on(cmd::run(cli.cmd, &ctx))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(exit::report(&e, &ctx)),
    }
}
