//! `sqlvault daemon`, `status` and `config check|example`: the service, from the
//! `sqlvault-service` crate.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use sqlvault_engine::{Error, ErrorKind, Repo};
use sqlvault_service::status::{Status, status_path};

use super::Ctx;
use crate::render::{print_json, to_json};

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The configuration file (TOML; `sqlvault config example` writes one).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Serve /metrics and /healthz here instead of the configuration's address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {}

#[derive(Args, Debug)]
pub struct RunbookArgs {
    /// The configuration file.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Where the Markdown runbook goes (stdout when not given).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Also write it as one self-contained HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Where the runbook's restore commands put their files.
    #[arg(long, default_value = "/var/tmp/sqlvault-restore")]
    restore_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a configuration and probe every destination; prints the expected
    /// store requests per month.
    Check {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Print a commented configuration protecting one database, runnable as it is.
    Example {
        /// The database to protect.
        #[arg(long)]
        db: PathBuf,
        /// Its repository (path or URL).
        #[arg(long)]
        repo: String,
        /// Recipients a new repository is created with (age1… or ssh-…).
        #[arg(long = "recipient", short = 'r', value_name = "RECIPIENT")]
        recipients: Vec<String>,
    },
}

impl ConfigCmd {
    pub fn name(&self) -> &'static str {
        match self {
            ConfigCmd::Check { .. } => "config check",
            ConfigCmd::Example { .. } => "config example",
        }
    }
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// systemd readiness (`Type=notify`): READY=1 to `$NOTIFY_SOCKET`, when set.
fn notify_ready() {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = sock.to_string_lossy().into_owned();
    // An abstract socket is written with a leading '@'.
    let r = std::os::unix::net::UnixDatagram::unbound().and_then(|u| {
        if let Some(name) = sock.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            u.send_to_addr(b"READY=1", &addr)
        } else {
            u.send_to(b"READY=1", &sock)
        }
    });
    if let Err(e) = r {
        tracing::warn!("cannot tell systemd the service is ready: {e}");
    }
}

pub async fn daemon(a: DaemonArgs, _ctx: &Ctx) -> Result<u8, Error> {
    let stop = sqlvault_engine::Cancel::default();
    let _ = crate::GRACEFUL.set(stop.clone());
    let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = crate::RELOAD.set(reload.clone());
    sqlvault_service::daemon::run(sqlvault_service::daemon::DaemonOptions {
        config: a.config,
        session: super::session().clone(),
        env: env_vars(),
        stop,
        reload,
        metrics_addr: a.metrics_addr,
        ready: Some(Box::new(notify_ready)),
    })
    .await?;
    Ok(0)
}

pub async fn status(_a: StatusArgs, ctx: &Ctx) -> Result<u8, Error> {
    let path = status_path(super::session().state_dir());
    let st = Status::read(&path).map_err(|e| {
        Error::new(
            ErrorKind::Usage,
            "status.none",
            format!(
                "no daemon status at {} ({e}): the daemon has not run with this state directory",
                path.display()
            ),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // A status written by a daemon that is gone (killed) is not "running".
    // SAFETY: signal 0 only checks that the process exists (EPERM: it does, under
    // another user).
    let exists = st.pid > 0
        && (unsafe { libc::kill(st.pid as i32, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    let alive = st.running && exists && now - st.written_ms < 30_000;
    let unhealthy = st.unhealthy(now);
    if ctx.json {
        let mut v = to_json(&st);
        v["alive"] = json!(alive);
        v["unhealthy"] = json!(unhealthy);
        print_json(&v);
    } else {
        println!(
            "daemon {} (pid {}, config {}), written {}",
            if alive { "running" } else { "not running" },
            st.pid,
            st.config,
            sqlvault_engine::retention::iso_time(st.written_ms)
        );
        for (path, d) in &st.databases {
            println!("{path} ({}): {} transactions followed", d.name, d.commits);
            for (n, t) in &d.destinations {
                println!(
                    "  → {n} ({}): lag {:.1}s, newest state {}, {} segments{}",
                    t.repo,
                    t.lag_seconds(now),
                    if t.newest_state_ms > 0 {
                        sqlvault_engine::retention::iso_time(t.newest_state_ms)
                    } else {
                        "none".into()
                    },
                    t.segments,
                    t.last_error
                        .as_ref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
        for u in &unhealthy {
            println!("unhealthy: {u}");
        }
    }
    Ok(if !alive {
        18
    } else if unhealthy.is_empty() {
        0
    } else {
        17
    })
}

pub async fn config(c: ConfigCmd, ctx: &Ctx) -> Result<u8, Error> {
    match c {
        ConfigCmd::Example { db, repo, recipients } => {
            print!("{}", sqlvault_service::config::example(&db, &repo, &recipients));
            Ok(0)
        }
        ConfigCmd::Check { config } => {
            let vars: std::collections::BTreeMap<String, String> = env_vars().into_iter().collect();
            let cfg = sqlvault_service::config::load(&config, &|k| vars.get(k).cloned())?;
            let mut probes = Vec::new();
            let mut failed = 0;
            for d in cfg.destinations.values() {
                let env = sqlvault_store::StoreEnv::from_vars(env_vars().into_iter().chain(d.env.iter().cloned()));
                let r = async {
                    let store = sqlvault_store::Store::open_url(&d.repo, &env)?;
                    super::session().register(&store);
                    Repo::open_write(super::session(), store).await.map(|_| ())
                }
                .await;
                let (state, detail) = match &r {
                    Ok(()) => ("ok", String::new()),
                    // The daemon creates it (a local directory included): it names recipients.
                    Err(e)
                        if (!d.recipients.is_empty() || d.recipients_file.is_some())
                            && (e.code() == "repo.not-found"
                                || (!d.repo.contains("://") && !std::path::Path::new(&d.repo).exists())) =>
                    {
                        ("will be created", String::new())
                    }
                    Err(e) => {
                        failed += 1;
                        ("unreachable", e.one_line())
                    }
                };
                probes.push(json!({"destination": d.name, "repo": d.repo, "state": state, "detail": detail}));
            }
            let est = sqlvault_service::config::requests_per_month(&cfg);
            if ctx.json {
                print_json(&json!({"ok": failed == 0, "destinations": probes, "requests_per_month": est}));
            } else {
                println!(
                    "{}: valid; {} database entries, {} destinations",
                    config.display(),
                    cfg.databases.len(),
                    cfg.destinations.len()
                );
                for p in &probes {
                    println!(
                        "  {} ({}): {}{}",
                        p["destination"].as_str().unwrap_or(""),
                        p["repo"].as_str().unwrap_or(""),
                        p["state"].as_str().unwrap_or(""),
                        p["detail"]
                            .as_str()
                            .filter(|d| !d.is_empty())
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    );
                }
                println!(
                    "expected requests per month per database file: {} while idle, up to {} when it changes every interval",
                    est["idle"], est["busy"]
                );
            }
            Ok(if failed == 0 { 0 } else { 10 })
        }
    }
}

pub async fn runbook(a: RunbookArgs, ctx: &Ctx) -> Result<u8, Error> {
    use sqlvault_service::runbook;
    let vars: std::collections::BTreeMap<String, String> = env_vars().into_iter().collect();
    let cfg = sqlvault_service::config::load(&a.config, &|k| vars.get(k).cloned())?;
    let facts = runbook::gather(&cfg, super::session(), &env_vars()).await;
    let opts = runbook::RunbookOptions {
        restore_dir: a.restore_dir.clone(),
        ..Default::default()
    };
    let blocks = runbook::render(&cfg, &facts, &opts);
    let md = runbook::to_markdown(&blocks);
    let io = |p: &std::path::Path, e: std::io::Error| {
        Error::new(
            ErrorKind::Io,
            "runbook.write",
            format!("cannot write {}: {e}", p.display()),
        )
    };
    match &a.output {
        Some(p) => runbook::write(p, &md).map_err(|e| io(p, e))?,
        None if !ctx.json => print!("{md}"),
        None => {}
    }
    if let Some(p) = &a.html {
        runbook::write(p, &runbook::to_html(&blocks)).map_err(|e| io(p, e))?;
    }
    let (verified, why) = runbook::verification(&facts);
    if ctx.json {
        print_json(&json!({"verified": verified, "reasons": why, "markdown": a.output, "html": a.html}));
    } else if a.output.is_some() && !ctx.quiet {
        eprintln!(
            "runbook: {}",
            if verified {
                "VERIFIED".to_string()
            } else {
                format!("NEEDS VERIFICATION ({})", why.len())
            }
        );
    }
    Ok(0)
}
