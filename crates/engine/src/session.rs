//! The session: everything an engine operation needs from its surroundings, passed
//! in as a value instead of read from the process environment.
//!
//! A command-line run makes one [`Session`]; a long-running service makes one per
//! repository or per job, with its own state directory, host identity, cancellation and
//! progress sink. Tests make one per test, so they run in parallel in one binary without
//! touching environment variables. The engine never reads `SQLVAULT_HOME`,
//! `SQLVAULT_HOST`, `SQLVAULT_REPO_FINGERPRINT` or `TMPDIR` itself: the binary decides
//! what they mean and builds the session.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sqlvault_store::{RequestCounts, Store};

use crate::error::{Error, ErrorKind, Result};

/// Where a long operation reports how far it got: bytes of a phase, with the phase's
/// total when it is known in advance. Implementations must be cheap (called per chunk
/// or per pack) and must not block; the CLI draws a line on a terminal, a service
/// updates its metrics.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A phase begins (`"reading"`, `"uploading"`, `"downloading"`, `"verifying"` …),
    /// with the bytes it will process when known.
    fn start(&self, phase: &str, total_bytes: Option<u64>);
    /// `bytes` more of the current phase are done.
    fn advance(&self, bytes: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Raises its flag when dropped: how a dropped future tells its blocking threads to
/// stop.
pub(crate) struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A reader or writer that reports the bytes passing through it to a [`Progress`].
pub(crate) struct Metered<'a, T> {
    pub inner: T,
    pub progress: &'a dyn Progress,
}

impl<T: std::io::Write> std::io::Write for Metered<'_, T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: std::io::Read> std::io::Read for Metered<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<T: std::io::BufRead> std::io::BufRead for Metered<'_, T> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.progress.advance(amt as u64);
        self.inner.consume(amt)
    }
}

/// A progress sink that ignores everything: the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// A cancellation flag shared by a session's operations. Cancelling makes the next
/// check point of every running operation fail with [`ErrorKind::Cancelled`]; nothing
/// is committed after it, and what was uploaded is garbage that prune collects (the
/// same contract as a `kill -9`).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks every operation holding this flag to stop at its next check point.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled: the check point long loops call.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::new(
                ErrorKind::Cancelled,
                "cancelled",
                "the operation was cancelled",
            ))
        } else {
            Ok(())
        }
    }
}

/// The surroundings of engine operations: local state directory, temporary directory,
/// host identity, the repository fingerprint the caller expects, cancellation, a
/// progress sink and the request count of every store opened through it.
///
/// Cheap to clone (one `Arc`); clones share cancellation, progress and counts.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state_dir: PathBuf,
    temp_dir: PathBuf,
    host: String,
    fingerprint: Option<String>,
    cancel: Cancel,
    progress: Arc<dyn Progress>,
    stores: Mutex<Vec<Store>>,
}

/// Builds a [`Session`]; see [`Session::builder`].
#[derive(Debug)]
#[must_use]
pub struct SessionBuilder {
    state_dir: PathBuf,
    temp_dir: Option<PathBuf>,
    host: Option<String>,
    fingerprint: Option<String>,
    cancel: Cancel,
    progress: Arc<dyn Progress>,
}

impl SessionBuilder {
    /// The directory for scratch files (verify copies, private dump copies, drills):
    /// by default the state directory's `tmp/`.
    pub fn temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = Some(dir.into());
        self
    }

    /// This host's identity in manifests, name claims, retention groups and evidence,
    /// instead of the machine's host name (containers whose host name changes at every
    /// run). Checked by [`check_host`] in [`SessionBuilder::build`].
    pub fn host(mut self, host: Option<String>) -> Self {
        self.host = host;
        self
    }

    /// The repository fingerprint the caller expects (what `init` printed): a
    /// repository that does not carry it is refused, and it makes a first contact safe.
    pub fn fingerprint(mut self, fp: Option<String>) -> Self {
        self.fingerprint = fp.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        self
    }

    /// The cancellation flag operations of this session check.
    pub fn cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// Where operations report progress.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The session; fails only on a host identity [`check_host`]
    /// refuses.
    pub fn build(self) -> Result<Session> {
        let host = match self.host {
            Some(h) => {
                check_host(&h)?;
                h
            }
            None => machine_hostname(),
        };
        let temp_dir = self.temp_dir.unwrap_or_else(|| self.state_dir.join("tmp"));
        Ok(Session {
            inner: Arc::new(Inner {
                state_dir: self.state_dir,
                temp_dir,
                host,
                fingerprint: self.fingerprint,
                cancel: self.cancel,
                progress: self.progress,
                stores: Mutex::new(Vec::new()),
            }),
        })
    }
}

impl Session {
    /// A builder for a session keeping its local state (write keys, pins, caches) in
    /// `state_dir`.
    pub fn builder(state_dir: impl Into<PathBuf>) -> SessionBuilder {
        SessionBuilder {
            state_dir: state_dir.into(),
            temp_dir: None,
            host: None,
            fingerprint: None,
            cancel: Cancel::default(),
            progress: Arc::new(NoProgress),
        }
    }

    /// A session with every default, keeping its state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Session {
        Session::builder(state_dir)
            .build()
            .expect("the machine host name is always valid")
    }

    /// The local state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The scratch directory.
    pub fn temp_dir(&self) -> &Path {
        &self.inner.temp_dir
    }

    /// This host's identity as recorded in repositories.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The repository fingerprint the caller expects, if any.
    pub fn fingerprint(&self) -> Option<&str> {
        self.inner.fingerprint.as_deref()
    }

    /// The session's cancellation flag.
    pub fn cancel(&self) -> &Cancel {
        &self.inner.cancel
    }

    /// The session's progress sink.
    pub fn progress(&self) -> &dyn Progress {
        &*self.inner.progress
    }

    /// The session's progress sink, shared (for options that keep it).
    pub fn progress_handle(&self) -> Arc<dyn Progress> {
        self.inner.progress.clone()
    }

    /// Counts `store`'s requests in [`Session::requests`] (repositories opened through
    /// the session are registered by the engine; a caller registers stores it uses
    /// directly).
    pub fn register(&self, store: &Store) {
        let mut stores = self.inner.stores.lock().unwrap_or_else(|e| e.into_inner());
        if !stores.iter().any(|s| s.same_counters(store)) {
            stores.push(store.clone());
        }
    }

    /// Requests made so far through every store registered with this session
    /// (retries included).
    pub fn requests(&self) -> RequestCounts {
        let stores = self.inner.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.iter().map(Store::stats).sum()
    }

    /// Creates the temporary directory (0700) if it does not exist yet.
    pub(crate) fn ensure_temp_dir(&self) -> Result<()> {
        let base = self.temp_dir();
        if !base.exists() {
            crate::local::mkdir_private(base)?;
        }
        Ok(())
    }

    /// A private scratch directory of `kind` in the session's temporary directory
    /// (created 0700 when it is the default one under the state directory), removed
    /// when dropped or when the process is interrupted.
    pub(crate) fn scratch(&self, kind: &str) -> Result<tempfile::TempDir> {
        self.ensure_temp_dir()?;
        let base = self.temp_dir();
        sqlvault_sqlite::scratch_dir(base, kind)
            .map_err(|e| crate::error::io_err(format!("cannot create a temporary directory in {}", base.display()), e))
    }
}

/// The longest host identity (a DNS name's limit).
pub const MAX_HOST_LEN: usize = 253;

/// Checks a host identity (`--host`, `SQLVAULT_HOST`): 1 to [`MAX_HOST_LEN`] printable
/// ASCII characters, no spaces.
pub fn check_host(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_HOST_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorKind::Usage,
            "usage.bad-host",
            format!(
                "host identity {:?} must be 1 to {MAX_HOST_LEN} printable ASCII characters without spaces",
                name.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// The machine's host name (`gethostname`): what a prune lock records, whose process
/// id only means something on this machine.
/// Whether no process `pid` exists on this machine (a lock or lease it left is stale).
pub(crate) fn process_gone(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

pub(crate) fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    #[allow(unsafe_code)]
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Request counts for reports: the store's counters, serialisable.
pub type Requests = RequestCounts;
