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
//! Every `rescan` the globs are listed again, and when `reload` is set (SIGHUP) the
//! configuration is read again too: new databases get a worker, removed ones are
//! stopped (what is committed is shipped first), changed ones are restarted, and a
//! worker that ended (a panic) is started again. A configuration that no longer
//! parses leaves the running one in force and says so in the status. Jobs are spread
//! over their period (by path and destination) so that a restart, or a thousand
//! tenants, do not run them all at once; the snapshot clock starts from the newest
//! snapshot the repository holds. One daemon per state directory (a lock file).
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
    /// The job as the worker reads it: schedules, thresholds and retention change
    /// through it without a restart.
    tx: tokio::sync::watch::Sender<Job>,
    stop: Cancel,
    task: tokio::task::JoinHandle<()>,
}

/// Whether two versions of a job replicate the same way (same file, name, key,
/// interval and destinations): then a reload hands the new one to the running worker,
/// and its chains go on.
fn same_replication(a: &Job, b: &Job) -> bool {
    let same_dests = a.dests.len() == b.dests.len()
        && a.dests.iter().zip(&b.dests).all(|(x, y)| {
            (
                &x.name,
                &x.repo,
                &x.env,
                &x.recipients,
                &x.recipients_file,
                &x.identity_file,
            ) == (
                &y.name,
                &y.repo,
                &y.env,
                &y.recipients,
                &y.recipients_file,
                &y.identity_file,
            )
        });
    a.path == b.path
        && a.name == b.name
        && a.spec.db_key == b.spec.db_key
        && a.spec.schedule.interval == b.spec.schedule.interval
        && same_dests
}

/// Runs the daemon until `opts.stop`; the configuration must load at start.
pub async fn run(mut opts: DaemonOptions) -> Result<(), Error> {
    let vars: BTreeMap<String, String> = opts.env.iter().cloned().collect();
    let lookup = move |k: &str| vars.get(k).cloned();
    let mut config = crate::config::load(&opts.config, &lookup)?;
    let state_dir = opts.session.state_dir().to_path_buf();
    let status_file = status_path(&state_dir);
    let _lock = lock_state_dir(&state_dir)?;
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
        starts: Arc::new(tokio::sync::Semaphore::new(2)),
        jobs: Arc::new(tokio::sync::Semaphore::new(2)),
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
    let mut last_write: Option<Instant> = None;
    while !opts.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(250)).await;
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
        if last_write.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            last_write = Some(Instant::now());
            write_status(&status, &status_file, true);
        }
    }
    tracing::info!("stopping: every database ships what is committed");
    for w in workers.values() {
        w.stop.cancel();
    }
    for (p, mut w) in std::mem::take(&mut workers) {
        if tokio::time::timeout(Duration::from_secs(120), &mut w.task)
            .await
            .is_err()
        {
            tracing::warn!("{}: its worker did not stop within 2 minutes; aborted", p.display());
            w.task.abort();
        }
    }
    write_status(&status, &status_file, false);
    Ok(())
}

/// One daemon per state directory: an exclusive lock on `service/daemon.lock`, held
/// for the process's life (two daemons would overwrite each other's status).
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let dir = state_dir.join("service");
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, "daemon.state", format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join("daemon.lock"))
        .map_err(io)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::new(
            ErrorKind::Busy,
            "daemon.running",
            format!("another daemon runs with the state directory {}", state_dir.display()),
        ));
    }
    Ok(f)
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
            // The entry's line is not part of the job: a comment added above it
            // restarts nothing.
            let mut spec = spec.clone();
            spec.line = 0;
            want.entry(path.clone()).or_insert(Job {
                path,
                name,
                spec,
                dests,
            });
        }
    }
    for (p, w) in workers.iter_mut() {
        if let Some(j) = want.get(p)
            && *j != w.job
            && same_replication(j, &w.job)
            && !w.task.is_finished()
        {
            tracing::info!(
                "{}: schedules, thresholds or retention changed; replication goes on",
                p.display()
            );
            w.tx.send_replace(j.clone());
            w.job = j.clone();
        }
    }
    let gone: Vec<PathBuf> = workers
        .iter()
        // Removed, changed, or ended (a worker only ends when stopped, or on a panic:
        // it is started again).
        .filter(|(p, w)| want.get(*p) != Some(&w.job) || w.task.is_finished())
        .map(|(p, _)| p.clone())
        .collect();
    // Stopped together (each ships what is committed), each given two minutes.
    let stopping: Vec<(PathBuf, Worker)> = gone
        .into_iter()
        .map(|p| {
            let w = workers.remove(&p).expect("listed");
            tracing::info!("{}: stopping (removed, changed or ended)", p.display());
            w.stop.cancel();
            (p, w)
        })
        .collect();
    for (p, mut w) in stopping {
        if tokio::time::timeout(Duration::from_secs(120), &mut w.task)
            .await
            .is_err()
        {
            tracing::warn!("{}: its worker did not stop within 2 minutes; aborted", p.display());
            w.task.abort();
        }
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
        let (tx, rx) = tokio::sync::watch::channel(job.clone());
        let task = tokio::spawn(worker(rx, shared.clone(), stop.clone()));
        workers.insert(p, Worker { job, tx, stop, task });
    }
}

struct Shared {
    /// Held while a repository is created: two databases of one destination start
    /// together.
    init: tokio::sync::Mutex<()>,
    /// Workers taking their first base snapshot, and scheduled jobs, at most two at a
    /// time each: a daemon starting with hundreds of databases (or running their jobs)
    /// reads and compresses two at once, not all of them, so its memory stays flat.
    starts: Arc<tokio::sync::Semaphore>,
    jobs: Arc<tokio::sync::Semaphore>,
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
            t.failing.remove(kind);
        });
    }

    fn failure(&self, path: &Path, dest: &str, kind: &str, e: &Error) {
        tracing::warn!("{} → {dest}: {kind} failed: {}", path.display(), e.one_line());
        self.with_dest(path, dest, |t| {
            *t.failures.entry(kind.to_string()).or_default() += 1;
            t.failing.insert(kind.to_string(), e.one_line());
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
        match Repo::open_write(&self.session, store.clone()).await {
            Ok(r) => Ok((r, store)),
            Err(e) if e.code() == "repo.not-found" && may_init => {
                // One creation at a time (two databases of one destination start
                // together); held only here, so a hung store holds up no other open.
                let _one_at_a_time = self.init.lock().await;
                if let Ok(r) = Repo::open_write(&self.session, store.clone()).await {
                    return Ok((r, store));
                }
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

/// The scheduled jobs' clocks of one worker: when each last ran per destination, and
/// when a failed identity may be opened again.
#[derive(Default)]
struct Clocks {
    ran: BTreeMap<(String, &'static str), Instant>,
    reader_retry: BTreeMap<String, Instant>,
}

impl Clocks {
    /// Whether `kind` is due for `dest` every `every`. A job that never ran here is due
    /// after a spread fraction of its period (0.1–0.6, by path and destination), so
    /// that a restart or a thousand tenants do not run every job at once.
    fn due(&mut self, dest: &str, kind: &'static str, every: Option<Duration>, spread: f64) -> bool {
        let Some(every) = every else { return false };
        let now = Instant::now();
        let last = *self
            .ran
            .entry((dest.to_string(), kind))
            .or_insert_with(|| now.checked_sub(every.mul_f64(1.0 - spread)).unwrap_or(now));
        if last.elapsed() >= every {
            self.ran.insert((dest.to_string(), kind), now);
            return true;
        }
        false
    }

    /// Sets when `kind` last ran for `dest` (a snapshot found in the repository).
    fn seed(&mut self, dest: &str, kind: &'static str, at: Instant) {
        self.ran.insert((dest.to_string(), kind), at);
    }
}

/// A number in 0.1..0.6 from `key` (stable across restarts).
fn spread(key: &str) -> f64 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    0.1 + (h % 1000) as f64 / 2000.0
}

/// Runs `f` unless `stop` is set first (then `None`: the job is dropped where it is,
/// as a kill would leave it; every job's crash contract holds).
async fn unless_stopped<T>(stop: &Cancel, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = f => Some(r),
        _ = async { while !stop.is_cancelled() { tokio::time::sleep(Duration::from_millis(100)).await; } } => None,
    }
}

/// [`unless_stopped`] for a scheduled job: it waits for one of the daemon's job slots.
async fn gated<T>(shared: &Shared, stop: &Cancel, f: impl std::future::Future<Output = T>) -> Option<T> {
    let _slot = unless_stopped(stop, shared.jobs.acquire()).await?.ok()?;
    unless_stopped(stop, f).await
}

/// One database: replication to every destination that opens, and the scheduled jobs.
async fn worker(mut rx: tokio::sync::watch::Receiver<Job>, shared: Arc<Shared>, stop: Cancel) {
    let job = rx.borrow_and_update().clone();
    let path = job.path.clone();
    let name = db_name(&job);
    let sch = job.spec.schedule.clone();
    let thresholds = |shared: &Shared, job: &Job| {
        let sch = &job.spec.schedule;
        shared.with_db(&job.path, |d| {
            d.max_lag_seconds = sch.max_lag.as_secs_f64();
            d.snapshot_stale_seconds = sch.snapshot.map(|_| sch.snapshot_stale.as_secs_f64());
        });
    };
    shared.with_db(&path, |d| {
        d.name = name.clone();
        d.since_ms = now_ms();
        for dest in &job.dests {
            d.destinations.entry(dest.name.clone()).or_default().repo = dest.repo.clone();
        }
    });
    thresholds(&shared, &job);
    let mut clocks = Clocks::default();
    let mut seeded: std::collections::BTreeSet<String> = Default::default();
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
        let mut missing = Vec::new();
        for d in &job.dests {
            match unless_stopped(&stop, shared.open(d)).await {
                Some(Ok((repo, store))) => opened.push((d.clone(), repo, store)),
                Some(Err(e)) => {
                    shared.failure(&path, &d.name, "open", &e);
                    // Whatever it lacks, it has lacked since now at the latest.
                    shared.with_dest(&path, &d.name, |t| {
                        t.pending_since_ms.get_or_insert(now_ms());
                    });
                    missing.push(d.clone());
                }
                None => return,
            }
        }
        if opened.is_empty() {
            wait(&stop, Duration::from_secs(30)).await;
            continue;
        }
        // What each repository already holds: the newest snapshot sets the snapshot
        // clock, the timeline the restorable window.
        for (d, repo, _) in &opened {
            if seeded.insert(d.name.clone()) {
                seed_from_repo(&shared, &path, &name, d, repo, &mut clocks, sch.snapshot).await;
            }
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
        let Some(Ok(mut start_permit)) = unless_stopped(&stop, shared.starts.clone().acquire_owned())
            .await
            .map(|p| p.map(Some))
        else {
            return;
        };
        let mut task = tokio::spawn(async move { sqlvault_engine::replicate(&repos, &p, ropts).await });
        let started = Instant::now();
        // The replication report reaches the status on its own clock: a job that
        // waits on a slow store must not freeze the lag the metrics show.
        let absorber = {
            let (shared, path, live, opened) = (shared.clone(), path.clone(), live.clone(), opened.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                    absorb(&shared, &path, &live, &opened);
                }
            })
        };
        let mut readers: BTreeMap<String, Repo> = BTreeMap::new();
        let mut last_reopen = Instant::now();
        let outcome = loop {
            tokio::select! {
                r = &mut task => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(2000)) => {}
            }
            // The start is over once the first base landed (or after two minutes).
            if start_permit.is_some()
                && (live.lock().unwrap_or_else(|e| e.into_inner()).bases > 0
                    || started.elapsed() > Duration::from_secs(120))
            {
                start_permit = None;
            }
            if stop.is_cancelled() || rstop.is_cancelled() {
                rstop.cancel();
                continue;
            }
            // A destination that did not open is tried again every 30 s, beside
            // replication; once it opens, replication restarts with it (its first
            // base uploads only what changed).
            if !missing.is_empty() && last_reopen.elapsed() >= Duration::from_secs(30) {
                last_reopen = Instant::now();
                for d in &missing {
                    match unless_stopped(&stop, shared.open(d)).await {
                        Some(Ok(_)) => {
                            tracing::info!(
                                "{} → {}: reachable again; replication restarts with it",
                                path.display(),
                                d.name
                            );
                            rstop.cancel();
                        }
                        Some(Err(e)) => shared.failure(&path, &d.name, "open", &e),
                        None => {}
                    }
                }
                continue;
            }
            // The newest schedules and retention (a reload may have changed them).
            if rx.has_changed().unwrap_or(false) {
                thresholds(&shared, &rx.borrow_and_update());
            }
            let current = rx.borrow().clone();
            run_jobs(
                &shared,
                &current,
                &name,
                &base,
                &opened,
                &mut readers,
                &mut clocks,
                &stop,
            )
            .await;
        };
        absorber.abort();
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

/// Reads what `repo` holds for database `name`: its newest snapshot (the snapshot
/// clock starts from it) and the start of its restorable timeline.
async fn seed_from_repo(
    shared: &Shared,
    path: &Path,
    name: &str,
    d: &DestinationSpec,
    repo: &Repo,
    clocks: &mut Clocks,
    every: Option<Duration>,
) {
    match repo.snapshots().await {
        Ok(snaps) => {
            if let Some(newest) = snaps.iter().filter(|m| m.name == name).map(|m| m.created_ms).max() {
                shared.with_dest(path, &d.name, |t| {
                    let e = t.last_success_ms.entry("snapshot".into()).or_insert(0);
                    *e = (*e).max(newest);
                });
                if every.is_some() {
                    let age = Duration::from_millis((now_ms() - newest).max(0) as u64);
                    let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    clocks.seed(&d.name, "snapshot", at);
                }
            }
        }
        Err(e) => shared.failure(path, &d.name, "open", &e),
    }
    refresh_window(shared, path, name, d, repo).await;
}

/// The restorable window: from the oldest state of the timeline.
async fn refresh_window(shared: &Shared, path: &Path, name: &str, d: &DestinationSpec, repo: &Repo) {
    if let Ok(t) = sqlvault_engine::timeline(repo, Some(name)).await
        && let Some(from) = t.iter().map(|x| x.from_ms).min()
    {
        shared.with_dest(path, &d.name, |t| t.pitr_from_ms = from);
    }
}

/// The jobs due now, one at a time, each destination on its own; each stops with the
/// daemon.
#[allow(clippy::too_many_arguments)]
async fn run_jobs(
    shared: &Shared,
    job: &Job,
    name: &str,
    base: &BackupOptions,
    opened: &[(DestinationSpec, Repo, Store)],
    readers: &mut BTreeMap<String, Repo>,
    clocks: &mut Clocks,
    stop: &Cancel,
) {
    let path = &job.path;
    let sch = &job.spec.schedule;
    for (opened_as, repo, store) in opened {
        // Retention as configured now (the repository and identity are as opened).
        let d = job.dests.iter().find(|x| x.name == opened_as.name).unwrap_or(opened_as);
        let sp = spread(&format!("{}\0{}", path.display(), d.name));
        if clocks.due(&d.name, "snapshot", sch.snapshot, sp) {
            let r = gated(
                shared,
                stop,
                sqlvault_engine::backup_to_all(std::slice::from_ref(repo), path, base.clone()),
            )
            .await;
            match r.map(|r| r.map(|v| v.into_iter().next())) {
                Some(Ok(Some(Ok(_)))) => shared.success(path, &d.name, "snapshot"),
                Some(Ok(Some(Err(e)))) | Some(Err(e)) => shared.failure(path, &d.name, "snapshot", &e),
                Some(Ok(None)) | None => {}
            }
        }
        if d.identity_file.is_none() {
            continue;
        }
        if !readers.contains_key(&d.name) {
            if clocks.reader_retry.get(&d.name).is_some_and(|t| *t > Instant::now()) {
                continue;
            }
            match unless_stopped(stop, shared.reader(d, store)).await {
                Some(Ok(Some(r))) => {
                    readers.insert(d.name.clone(), r);
                }
                Some(Err(e)) => {
                    // Tried again in a minute, not at every turn.
                    clocks
                        .reader_retry
                        .insert(d.name.clone(), Instant::now() + Duration::from_secs(60));
                    shared.failure(path, &d.name, "open", &e);
                    continue;
                }
                _ => continue,
            }
        }
        let reader = &readers[&d.name];
        if (!d.keep.is_empty() || d.pitr_window.is_some()) && clocks.due(&d.name, "prune", sch.prune, sp) {
            let f = sqlvault_engine::ForgetOptions::new(d.keep)
                .with_name(Some(name.to_string()))
                .with_pitr_window(d.pitr_window);
            let r = gated(shared, stop, async {
                sqlvault_engine::forget(repo, &f).await?;
                sqlvault_engine::prune(reader, &sqlvault_engine::PruneOptions::default()).await
            })
            .await;
            match r {
                Some(Ok(_)) => {
                    shared.success(path, &d.name, "prune");
                    refresh_window(shared, path, name, d, repo).await;
                }
                Some(Err(e)) => shared.failure(path, &d.name, "prune", &e),
                None => {}
            }
        }
        if clocks.due(&d.name, "verify", sch.verify, sp) {
            match gated(shared, stop, verify_newest(reader, name)).await {
                Some(Ok(true)) => shared.success(path, &d.name, "verify"),
                Some(Ok(false)) | None => {}
                Some(Err(e)) => shared.failure(path, &d.name, "verify", &e),
            }
        }
        if clocks.due(&d.name, "drill", sch.drill, sp) {
            let key = base.unlock.as_ref().map(|u| u.key.clone());
            match gated(shared, stop, drill(reader, name, key)).await {
                Some(Ok(Some((secs, bytes)))) => {
                    shared.success(path, &d.name, "drill");
                    shared.with_dest(path, &d.name, |t| {
                        t.drill_seconds = secs;
                        t.drill_bytes = bytes;
                    });
                }
                Some(Ok(None)) | None => {}
                Some(Err(e)) => shared.failure(path, &d.name, "drill", &e),
            }
        }
    }
}

/// A drill: the newest snapshot restored and verified (with evidence in the
/// repository), then one random point of the timeline checked by its state checksum.
/// Its restore and check time and size (the measured RTO), or None when there is
/// nothing to drill yet.
async fn drill(
    reader: &Repo,
    name: &str,
    key: Option<sqlvault_engine::sqlite::DbKey>,
) -> Result<Option<(f64, u64)>, Error> {
    let opts = sqlvault_engine::DrillOptions::default()
        .with_name(Some(name.to_string()))
        .with_db_key(key.clone())
        .with_record_in_repo(true);
    let rep = sqlvault_engine::drill(reader, &opts).await?;
    if let Some(e) = rep.failure {
        return Err(e);
    }
    let Some(r) = rep.records.first() else { return Ok(None) };
    if !rep.ok {
        return Err(Error::new(
            ErrorKind::Integrity,
            "daemon.drill-failed",
            format!(
                "the drill of {name} failed: {}",
                r.error.as_deref().unwrap_or("(no detail)")
            ),
        ));
    }
    let (secs, bytes) = (r.evidence.restore_seconds + r.evidence.check_seconds, r.bytes);
    let t = sqlvault_engine::timeline(reader, Some(name)).await?;
    if let Some(tl) = t.first()
        && tl.to_ms > tl.from_ms
    {
        let x = (now_ms() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % (tl.to_ms - tl.from_ms) as u64;
        let at = sqlvault_engine::PointSpec::At(tl.from_ms + x as i64);
        let plan = sqlvault_engine::plan_point(reader, Some(name), at).await?;
        let ropts = sqlvault_engine::RestoreOptions::default().with_db_key(key);
        let reps = sqlvault_engine::verify_points(reader, vec![plan], &ropts).await?;
        if let Some(bad) = reps.iter().find(|r| !r.ok) {
            return Err(Error::new(
                ErrorKind::Integrity,
                "daemon.drill-failed",
                format!(
                    "a point of {name}'s timeline failed: {}",
                    bad.error.as_deref().unwrap_or("(no detail)")
                ),
            ));
        }
    }
    Ok(Some((secs, bytes)))
}

fn db_name(job: &Job) -> String {
    job.name.clone().unwrap_or_else(|| {
        job.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "database".into())
    })
}

/// Verifies the newest snapshot of `name` (restored into scratch and checked);
/// false when there is none yet.
async fn verify_newest(reader: &Repo, name: &str) -> Result<bool, Error> {
    let snaps = reader.snapshots().await?;
    let Some(m) = snaps
        .into_iter()
        .filter(|m| m.name == name)
        .max_by_key(|m| m.created_ms)
    else {
        return Ok(false);
    };
    let reps = sqlvault_engine::verify(reader, vec![m], &sqlvault_engine::RestoreOptions::default()).await?;
    match reps.iter().find(|r| !r.ok) {
        None => Ok(true),
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
