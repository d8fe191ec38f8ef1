//! The daemon: one process for every configured database.
//!
//! Each database file gets a worker task of its own. The worker opens the database's
//! destinations (creating a repository that does not exist yet, when the destination
//! names its recipients), runs `replicate` to all of them that opened (as a task, its
//! report published live), and runs the scheduled jobs beside it: a full snapshot,
//! `forget` by the destination's policy and PITR window followed by `prune`, and
//! `verify` of the newest snapshot (these two need the destination's identity file).
//! A destination that cannot be opened is retried every `rescan`; replication then
//! restarts with it (its first base uploads only what changed). A worker that fails
//! records why and tries again; it never stops another.
//!
//! Every `rescan`, and at once when `reload` is set (SIGHUP), the configuration is read
//! again and globs listed: new databases get a worker, removed ones are stopped (what
//! is committed is shipped first), changed ones are restarted. A configuration that
//! no longer parses leaves the running one in force and says so in the status.
//! `stop` (SIGTERM) stops every worker the same way and returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlvault_engine::{Access, BackupOptions, Cancel, Error, ErrorKind, InitKeys, ReplicateOptions, Repo, Session};
use sqlvault_store::{Store, StoreEnv};

use crate::config::{Config, DatabaseSpec, DestinationSpec, KeySource};
use crate::now_ms;
use crate::status::{DbStatus, DestStatus, Status, status_path};

/// What [`run`] needs from the binary.
pub struct DaemonOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// The engine session (state directory, host).
    pub session: Session,
    /// The process environment: `$VAR` expansion, store clients, `db_key_env`.
    pub env: Vec<(String, String)>,
    /// Set on SIGTERM/SIGINT: ship what is committed, stop.
    pub stop: Cancel,
    /// Set on SIGHUP: read the configuration again.
    pub reload: Arc<AtomicBool>,
    /// Overrides the configuration's metrics address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Called once the metrics address is bound and every worker started (systemd
    /// readiness).
    pub ready: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One database file as a worker runs it.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    path: PathBuf,
    name: Option<String>,
    spec: DatabaseSpec,
    dests: Vec<DestinationSpec>,
}

struct Worker {
    job: Job,
    stop: Cancel,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the daemon until `opts.stop`; the configuration must load at start.
pub async fn run(mut opts: DaemonOptions) -> Result<(), Error> {
    let vars: BTreeMap<String, String> = opts.env.iter().cloned().collect();
    let lookup = move |k: &str| vars.get(k).cloned();
    let mut config = crate::config::load(&opts.config, &lookup)?;
    let state_dir = opts.session.state_dir().to_path_buf();
    let status_file = status_path(&state_dir);
    let status = Arc::new(Mutex::new(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_ms: now_ms(),
        running: true,
        config: opts.config.display().to_string(),
        config_loaded_ms: now_ms(),
        ..Default::default()
    }));
    let addr = opts.metrics_addr.or(config.service.metrics_addr);
    if let Some(a) = addr {
        let l = tokio::net::TcpListener::bind(a).await.map_err(|e| {
            Error::new(
                ErrorKind::Usage,
                "daemon.metrics-bind",
                format!("cannot listen on {a} for metrics: {e}"),
            )
        })?;
        tracing::info!("metrics and health on http://{a}/metrics and /healthz");
        tokio::spawn(crate::metrics::serve(l, status.clone(), opts.stop.clone()));
    }
    let shared = Arc::new(Shared {
        init: tokio::sync::Mutex::new(()),
        session: opts.session.clone(),
        env: opts.env.clone(),
        status: status.clone(),
    });
    let mut workers: BTreeMap<PathBuf, Worker> = BTreeMap::new();
    reconcile(&config, &mut workers, &shared).await;
    if let Some(r) = opts.ready.take() {
        r();
    }
    let mut last_scan = Instant::now();
    let mut last_write = Instant::now() - Duration::from_secs(60);
    while !opts.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hup = opts.reload.swap(false, Ordering::SeqCst);
        if hup || last_scan.elapsed() >= config.service.rescan {
            last_scan = Instant::now();
            if hup {
                match crate::config::load(&opts.config, &lookup) {
                    Ok(c) => {
                        tracing::info!("configuration reloaded from {}", opts.config.display());
                        config = c;
                        let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
                        st.reloads += 1;
                        st.reload_error = None;
                        st.config_loaded_ms = now_ms();
                    }
                    Err(e) => {
                        tracing::error!("configuration not reloaded, the running one stays: {e}");
                        status.lock().unwrap_or_else(|e| e.into_inner()).reload_error = Some(e.to_string());
                    }
                }
            }
            reconcile(&config, &mut workers, &shared).await;
        }
        if last_write.elapsed() >= Duration::from_secs(2) {
            last_write = Instant::now();
            write_status(&status, &status_file, true);
        }
    }
    tracing::info!("stopping: every database ships what is committed");
    for w in workers.values() {
        w.stop.cancel();
    }
    for (_, w) in std::mem::take(&mut workers) {
        let _ = w.task.await;
    }
    write_status(&status, &status_file, false);
    Ok(())
}

fn write_status(status: &Mutex<Status>, file: &Path, running: bool) {
    let mut st = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    st.running = running;
    st.written_ms = now_ms();
    if let Err(e) = st.write(file) {
        tracing::warn!("cannot write {}: {e}", file.display());
    }
}

/// Starts, stops and restarts workers so that they match `config` and the files its
/// globs name now.
async fn reconcile(config: &Config, workers: &mut BTreeMap<PathBuf, Worker>, shared: &Arc<Shared>) {
    let mut want: BTreeMap<PathBuf, Job> = BTreeMap::new();
    for spec in &config.databases {
        for (path, name) in spec.source.files() {
            let dests = spec
                .destinations
                .iter()
                .filter_map(|n| config.destinations.get(n).cloned())
                .collect();
            want.entry(path.clone()).or_insert(Job {
                path,
                name,
                spec: spec.clone(),
                dests,
            });
        }
    }
    let gone: Vec<PathBuf> = workers
        .iter()
        // Removed, changed, or ended (a worker only ends when stopped, or on a panic:
        // it is started again).
        .filter(|(p, w)| want.get(*p) != Some(&w.job) || w.task.is_finished())
        .map(|(p, _)| p.clone())
        .collect();
    for p in gone {
        let w = workers.remove(&p).expect("listed");
        tracing::info!("{}: stopping (removed or changed in the configuration)", p.display());
        w.stop.cancel();
        let _ = w.task.await;
        shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .databases
            .remove(&p.display().to_string());
    }
    for (p, job) in want {
        if workers.contains_key(&p) {
            continue;
        }
        tracing::info!("{}: protecting, to {}", p.display(), job.spec.destinations.join(", "));
        let stop = Cancel::default();
        let task = tokio::spawn(worker(job.clone(), shared.clone(), stop.clone()));
        workers.insert(p, Worker { job, stop, task });
    }
}

struct Shared {
    /// Held while a repository is created: two databases of one destination start
    /// together.
    init: tokio::sync::Mutex<()>,
    session: Session,
    env: Vec<(String, String)>,
    status: Arc<Mutex<Status>>,
}

impl Shared {
    fn with_db<R>(&self, path: &Path, f: impl FnOnce(&mut DbStatus) -> R) -> R {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(st.databases.entry(path.display().to_string()).or_default())
    }

    fn with_dest<R>(&self, path: &Path, dest: &str, f: impl FnOnce(&mut DestStatus) -> R) -> R {
        self.with_db(path, |d| f(d.destinations.entry(dest.to_string()).or_default()))
    }

    fn success(&self, path: &Path, dest: &str, kind: &str) {
        self.with_dest(path, dest, |t| {
            t.last_success_ms.insert(kind.to_string(), now_ms());
        });
    }

    fn failure(&self, path: &Path, dest: &str, kind: &str, e: &Error) {
        tracing::warn!("{} → {dest}: {kind} failed: {}", path.display(), e.one_line());
        self.with_dest(path, dest, |t| {
            *t.failures.entry(kind.to_string()).or_default() += 1;
            t.last_error = Some(format!("{kind}: {}", e.one_line()));
        });
    }

    /// Opens `d`'s repository for writing, creating it when it does not exist and the
    /// destination names its recipients.
    async fn open(&self, d: &DestinationSpec) -> Result<(Repo, Store), Error> {
        let env = StoreEnv::from_vars(self.env.iter().cloned().chain(d.env.iter().cloned()));
        // A local directory that does not exist yet is created only when this
        // destination may create its repository (it names recipients).
        let may_init = !d.recipients.is_empty() || d.recipients_file.is_some();
        let store = if may_init {
            Store::create_url(&d.repo, &env)?
        } else {
            Store::open_url(&d.repo, &env)?
        };
        self.session.register(&store);
        let _one_at_a_time = self.init.lock().await;
        match Repo::open_write(&self.session, store.clone()).await {
            Ok(r) => Ok((r, store)),
            Err(e) if e.code() == "repo.not-found" && (!d.recipients.is_empty() || d.recipients_file.is_some()) => {
                let mut rs = Vec::new();
                for r in &d.recipients {
                    rs.push(r.parse().map_err(|e: sqlvault_engine::crypt::CryptError| {
                        Error::new(
                            ErrorKind::Usage,
                            "config.recipient",
                            format!("destination {}: {e}", d.name),
                        )
                    })?);
                }
                if let Some(f) = &d.recipients_file {
                    rs.extend(sqlvault_engine::crypt::read_recipients_file(f).map_err(|e| {
                        Error::new(
                            ErrorKind::Usage,
                            "config.recipient",
                            format!("destination {}: {e}", d.name),
                        )
                    })?);
                }
                Repo::init(&self.session, &store, InitKeys::Recipients(rs)).await?;
                tracing::info!("created the repository {} (destination {})", d.repo, d.name);
                Ok((Repo::open_write(&self.session, store.clone()).await?, store))
            }
            Err(e) => Err(e),
        }
    }

    async fn reader(&self, d: &DestinationSpec, store: &Store) -> Result<Option<Repo>, Error> {
        let Some(f) = &d.identity_file else { return Ok(None) };
        let ids = sqlvault_engine::crypt::Identities::from_file(f).map_err(|e| {
            Error::new(
                ErrorKind::Auth,
                "config.identity",
                format!("destination {}: {e}", d.name),
            )
        })?;
        Ok(Some(
            Repo::open_read(&self.session, store.clone(), Access::Identities(ids)).await?,
        ))
    }
}

fn db_key(spec: &DatabaseSpec, env: &[(String, String)]) -> Result<Option<sqlvault_engine::sqlite::Unlock>, Error> {
    let key = match &spec.db_key {
        None => return Ok(None),
        Some(KeySource::File(p)) => std::fs::read_to_string(p).map_err(|e| {
            Error::new(
                ErrorKind::Usage,
                "config.db-key",
                format!("cannot read the key file {}: {e}", p.display()),
            )
        })?,
        Some(KeySource::Env(v)) => env
            .iter()
            .find(|(k, _)| k == v)
            .map(|(_, x)| x.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    "config.db-key",
                    format!("the database key variable named by db_key_env ({v}) is not set"),
                )
            })?,
    };
    let key = sqlvault_engine::sqlite::DbKey::from_text(&key)?;
    Ok(Some(sqlvault_engine::sqlite::Unlock::key(key)))
}

/// One database: replication to every destination that opens, and the scheduled jobs.
async fn worker(job: Job, shared: Arc<Shared>, stop: Cancel) {
    let path = job.path.clone();
    let sch = job.spec.schedule.clone();
    shared.with_db(&path, |d| {
        d.max_lag_seconds = sch.max_lag.as_secs_f64();
        d.snapshot_stale_seconds = sch.snapshot_stale.as_secs_f64();
        for dest in &job.dests {
            d.destinations.entry(dest.name.clone()).or_default().repo = dest.repo.clone();
        }
    });
    let mut last_snapshot: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_prune: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_verify: BTreeMap<String, Instant> = BTreeMap::new();
    while !stop.is_cancelled() {
        let unlock = match db_key(&job.spec, &shared.env) {
            Ok(u) => u,
            Err(e) => {
                shared.with_db(&path, |d| d.error = Some(e.one_line()));
                wait(&stop, Duration::from_secs(30)).await;
                continue;
            }
        };
        let mut opened = Vec::new();
        for d in &job.dests {
            match shared.open(d).await {
                Ok((repo, store)) => opened.push((d.clone(), repo, store)),
                Err(e) => shared.failure(&path, &d.name, "open", &e),
            }
        }
        if opened.is_empty() {
            wait(&stop, Duration::from_secs(30)).await;
            continue;
        }
        let base = BackupOptions::default()
            .with_threads(1)
            .with_pack_target(8 << 20)
            .with_name(job.name.clone())
            .with_unlock(unlock.clone());
        let live = Arc::new(Mutex::new(sqlvault_engine::ReplicateReport::default()));
        let rstop = Cancel::default();
        let ropts = ReplicateOptions::default()
            .with_interval(sch.interval)
            .with_base(base.clone())
            .with_stop(rstop.clone())
            .with_live(live.clone());
        let repos: Vec<Repo> = opened.iter().map(|(_, r, _)| r.clone()).collect();
        let p = path.clone();
        let mut task = tokio::spawn(async move { sqlvault_engine::replicate(&repos, &p, ropts).await });
        let all_open = opened.len() == job.dests.len();
        let started = Instant::now();
        let mut readers: BTreeMap<String, Option<Repo>> = BTreeMap::new();
        let outcome = loop {
            tokio::select! {
                r = &mut task => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            absorb(&shared, &path, &live, &opened);
            if stop.is_cancelled() || (!all_open && started.elapsed() >= Duration::from_secs(30)) {
                rstop.cancel();
                continue;
            }
            // Scheduled jobs, one at a time, each destination on its own.
            for (d, repo, store) in &opened {
                let due = |m: &BTreeMap<String, Instant>, every: Option<Duration>| {
                    every.is_some_and(|e| m.get(&d.name).is_none_or(|t| t.elapsed() >= e))
                };
                if due(&last_snapshot, sch.snapshot) {
                    last_snapshot.insert(d.name.clone(), Instant::now());
                    match sqlvault_engine::backup_to_all(std::slice::from_ref(repo), &path, base.clone()).await {
                        Ok(r) => match r.into_iter().next() {
                            Some(Ok(_)) => shared.success(&path, &d.name, "snapshot"),
                            Some(Err(e)) => shared.failure(&path, &d.name, "snapshot", &e),
                            None => {}
                        },
                        Err(e) => shared.failure(&path, &d.name, "snapshot", &e),
                    }
                }
                if d.identity_file.is_none() {
                    continue;
                }
                if !readers.contains_key(&d.name) {
                    match shared.reader(d, store).await {
                        Ok(r) => {
                            readers.insert(d.name.clone(), r);
                        }
                        Err(e) => {
                            shared.failure(&path, &d.name, "open", &e);
                            continue;
                        }
                    }
                }
                let Some(Some(reader)) = readers.get(&d.name) else {
                    continue;
                };
                if due(&last_prune, sch.prune) && (!d.keep.is_empty() || d.pitr_window.is_some()) {
                    last_prune.insert(d.name.clone(), Instant::now());
                    let f = sqlvault_engine::ForgetOptions::new(d.keep)
                        .with_name(Some(db_name(&job)))
                        .with_pitr_window(d.pitr_window);
                    let r = async {
                        sqlvault_engine::forget(repo, &f).await?;
                        sqlvault_engine::prune(reader, &sqlvault_engine::PruneOptions::default()).await
                    }
                    .await;
                    match r {
                        Ok(_) => shared.success(&path, &d.name, "prune"),
                        Err(e) => shared.failure(&path, &d.name, "prune", &e),
                    }
                }
                if due(&last_verify, sch.verify) {
                    last_verify.insert(d.name.clone(), Instant::now());
                    match verify_newest(reader, &db_name(&job)).await {
                        Ok(()) => shared.success(&path, &d.name, "verify"),
                        Err(e) => shared.failure(&path, &d.name, "verify", &e),
                    }
                }
            }
        };
        absorb(&shared, &path, &live, &opened);
        match outcome {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => {
                tracing::warn!("{}: replication stopped: {}", path.display(), e.one_line());
                shared.with_db(&path, |d| d.error = Some(e.one_line()));
                wait(&stop, Duration::from_secs(10)).await;
            }
            Some(Err(e)) => {
                shared.with_db(&path, |d| d.error = Some(format!("replication task failed: {e}")));
                wait(&stop, Duration::from_secs(10)).await;
            }
            None => {}
        }
    }
}

fn db_name(job: &Job) -> String {
    job.name.clone().unwrap_or_else(|| {
        job.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "database".into())
    })
}

/// Verifies the newest snapshot of `name` (restored into scratch and checked).
async fn verify_newest(reader: &Repo, name: &str) -> Result<(), Error> {
    let snaps = reader.snapshots().await?;
    let Some(m) = snaps
        .into_iter()
        .filter(|m| m.name == name)
        .max_by_key(|m| m.created_ms)
    else {
        return Ok(());
    };
    let reps = sqlvault_engine::verify(reader, vec![m], &sqlvault_engine::RestoreOptions::default()).await?;
    match reps.iter().find(|r| !r.ok) {
        None => Ok(()),
        Some(r) => Err(Error::new(
            ErrorKind::Integrity,
            "daemon.verify-failed",
            format!(
                "snapshot {} failed verification: {}",
                r.snapshot_id,
                r.error.as_deref().unwrap_or("(no detail)")
            ),
        )),
    }
}

/// Copies the live replication report into the status.
fn absorb(
    shared: &Shared,
    path: &Path,
    live: &Mutex<sqlvault_engine::ReplicateReport>,
    opened: &[(DestinationSpec, Repo, Store)],
) {
    let rep = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
    shared.with_db(path, |d| {
        if !rep.name.is_empty() {
            d.name = rep.name.clone();
        }
        d.commits = rep.commits;
        d.breaks = rep.breaks.clone();
        if rep.bases > 0 {
            d.error = None;
        }
        for ((spec, _, store), r) in opened.iter().zip(&rep.destinations) {
            let t = d.destinations.entry(spec.name.clone()).or_default();
            if r.last_observed_ms > t.newest_state_ms {
                t.newest_state_ms = r.last_observed_ms;
                t.last_success_ms.insert("replicate".into(), now_ms());
                if t.pitr_from_ms == 0 {
                    t.pitr_from_ms = r.last_observed_ms;
                }
            }
            t.pending_since_ms = r.pending_since_ms;
            t.segments = r.segments;
            t.bytes = r.bytes_new;
            if let Some(e) = &r.last_error {
                t.last_error = Some(format!("replicate: {e}"));
            }
            let c = store.stats();
            t.requests = [
                ("get", c.get),
                ("put", c.put),
                ("list", c.list),
                ("delete", c.delete),
                ("head", c.head),
                ("retry", c.retries),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        }
    });
}

async fn wait(stop: &Cancel, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
