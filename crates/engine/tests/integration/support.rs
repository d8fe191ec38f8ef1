//! What the engine-level tests share: a repository over a fault-injecting in-memory
//! store with its own session and keys, small generated databases, and a progress sink
//! that records what it is told.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlvault_engine::crypt::secrecy::SecretString;
use sqlvault_engine::crypt::{Identities, generate_x25519};
use sqlvault_engine::format::Manifest;
use sqlvault_engine::store::Store;
use sqlvault_engine::{Access, BackupOptions, Cancel, InitKeys, Progress, Repo, RestoreOptions, Session};
use sqlvault_testkit::flaky_store;

/// One repository (its own key) over an in-memory store, opened in one session.
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub session: Session,
    pub store: Store,
    pub writer: Repo,
    pub reader: Repo,
    pub secret: SecretString,
    pub public: String,
}

impl Bench {
    /// A bench whose session has every default.
    pub async fn new(name: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path().join("home"));
        Bench::in_session(dir, session, name).await
    }

    /// A bench whose session reports progress to `progress` and stops on `cancel`.
    pub async fn with(name: &str, progress: Arc<dyn Progress>, cancel: Cancel) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::builder(dir.path().join("home"))
            .progress(progress)
            .cancel(cancel)
            .build()
            .unwrap();
        Bench::in_session(dir, session, name).await
    }

    async fn in_session(dir: tempfile::TempDir, session: Session, name: &str) -> Bench {
        let (_flaky, store) = flaky_store(name, 0, 3);
        let (secret, public) = generate_x25519();
        Repo::init(&session, &store, InitKeys::Recipients(vec![public.parse().unwrap()]))
            .await
            .unwrap();
        let writer = Repo::open_write(&session, store.clone()).await.unwrap();
        let reader = open_reader(&session, &store, &secret).await;
        Bench {
            dir,
            session,
            store,
            writer,
            reader,
            secret,
            public,
        }
    }

    /// A path in the bench's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new session over another state directory (nothing cached, nothing pinned).
    pub fn fresh_session(&self, name: &str) -> Session {
        Session::new(self.path(name))
    }

    /// A reader of this bench's repository in `session`.
    pub async fn reader_in(&self, session: &Session) -> Repo {
        open_reader(session, &self.store, &self.secret).await
    }

    /// Object names under `dir` of the store (a LIST, counted in the store's stats).
    pub async fn names(&self, dir: &str) -> Vec<String> {
        self.store
            .list(dir)
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// Replaces the stored object `key` with `f` applied to its bytes.
    pub async fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.store.get(key).await.unwrap().to_vec();
        f(&mut bytes);
        self.store.put(key, bytes::Bytes::from(bytes)).await.unwrap();
    }
}

pub async fn open_reader(session: &Session, store: &Store, secret: &SecretString) -> Repo {
    Repo::open_read(
        session,
        store.clone(),
        Access::Identities(Identities::from_secret_string(secret).unwrap()),
    )
    .await
    .unwrap()
}

/// A generated database of about `bytes` (rollback journal, or WAL).
pub fn database(path: &Path, bytes: u64, seed: u64, wal: bool) {
    sqlvault_testkit::generate(
        path,
        &sqlvault_testkit::GenOptions {
            target_bytes: bytes,
            seed,
            wal,
        },
    )
    .unwrap();
}

/// The logical checksum of a database file (its content, not its bytes).
pub fn checksum(p: &Path) -> [u8; 32] {
    sqlvault_sqlite::verify_file(p).unwrap().logical_checksum
}

/// Small packs of small frames (16 pages, 64 KiB), so that a database of a few MiB
/// makes many packs and progress is reported often.
pub fn small_packs() -> BackupOptions {
    let mut o = BackupOptions::default().with_pack_target(64 << 10);
    o.frame_pages = 16;
    o
}

/// [`small_packs`] for a dump snapshot named `app.sql`.
pub fn small_dump() -> BackupOptions {
    small_packs()
        .with_kind(sqlvault_engine::BackupKind::Dump)
        .with_name(Some("app.sql".into()))
}

/// Restores `m` to a scratch file of the bench and returns that file's checksum.
pub async fn restored_checksum(b: &Bench, repo: &Repo, m: &Manifest) -> [u8; 32] {
    let out = b.path(&format!("restored-{}.db", m.id));
    sqlvault_engine::restore_snapshot(repo, m, &out, &RestoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("snapshot {} does not restore: {}", m.id.short(), e.one_line()));
    let sum = checksum(&out);
    std::fs::remove_file(&out).unwrap();
    sum
}

/// Files in `dir` (names), sorted: what a failed restore may have left behind.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A progress sink that records every phase started (with its announced total) and
/// the bytes advanced in each; optionally raises a cancellation flag once a phase has
/// advanced at least `cancel_after` bytes.
#[derive(Debug, Default)]
pub struct Recorder {
    current: Mutex<String>,
    pub started: Mutex<Vec<(String, Option<u64>)>>,
    advanced: Mutex<BTreeMap<String, u64>>,
    pub finished: AtomicU64,
    cancel: Option<(Cancel, String, u64)>,
}

impl Recorder {
    /// A recorder that cancels `cancel` once phase `phase` has advanced `after` bytes.
    pub fn cancelling(cancel: Cancel, phase: &str, after: u64) -> Recorder {
        Recorder {
            cancel: Some((cancel, phase.to_string(), after)),
            ..Recorder::default()
        }
    }

    /// Bytes advanced in `phase` (over every time it ran).
    pub fn advanced(&self, phase: &str) -> u64 {
        self.advanced.lock().unwrap().get(phase).copied().unwrap_or(0)
    }

    /// The totals announced by the starts of `phase`.
    pub fn totals(&self, phase: &str) -> Vec<Option<u64>> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == phase)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.started.lock().unwrap().clear();
        self.advanced.lock().unwrap().clear();
        self.finished.store(0, Ordering::SeqCst);
    }
}

impl Progress for Recorder {
    fn start(&self, phase: &str, total_bytes: Option<u64>) {
        *self.current.lock().unwrap() = phase.to_string();
        self.started.lock().unwrap().push((phase.to_string(), total_bytes));
    }

    fn advance(&self, bytes: u64) {
        let phase = self.current.lock().unwrap().clone();
        let done = {
            let mut a = self.advanced.lock().unwrap();
            let v = a.entry(phase.clone()).or_default();
            *v += bytes;
            *v
        };
        if let Some((cancel, p, after)) = &self.cancel
            && *p == phase
            && done >= *after
        {
            cancel.cancel();
        }
    }

    fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}
