//! Running the real binary in an isolated home.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use sqlvault_testkit as kit;

/// A scratch world: its own SQLVAULT_HOME, a key, a repository path.
pub struct World {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not json ({e}): {}", self.stdout))
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn fails(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("sqlvault: error:"))
            .collect();
        assert_eq!(lines.len(), 1, "exactly one error line expected: {}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        self
    }
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        World {
            env: vec![("SQLVAULT_HOME".into(), home.display().to_string())],
            dir,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn s(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
        c.args(args)
            .env_remove("SQLVAULT_IDENTITY_FILE")
            .env_remove("SQLVAULT_PASSPHRASE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        let Output { status, stdout, stderr } = c.output().expect("run sqlvault");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// A key, a sample database and an initialised repository at `repo`.
    pub fn setup(&self, repo: &str, db_bytes: u64, wal: bool) -> (String, String) {
        let key = self.s("key.txt");
        let rcpt = self
            .run(&["key", "generate", "-o", &key])
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(rcpt.starts_with("age1"), "{rcpt}");
        self.run(&["init", repo, "-r", &rcpt]).ok();
        let db = self.s("app.db");
        kit::generate(
            Path::new(&db),
            &kit::GenOptions {
                target_bytes: db_bytes,
                seed: 7,
                wal,
            },
        )
        .unwrap();
        (key, db)
    }
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Files in a directory tree.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Logical content summary through plain SQL, independent of sqlvault's checksum.
pub fn content(db: &Path) -> (i64, i64, String) {
    let c = rusqlite::Connection::open(db).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM orders", [], |r| r.get(0)).unwrap();
    let s: i64 = c
        .query_row(
            "SELECT sum(length(note)) + sum(CAST(amount*100 AS INTEGER)) FROM orders",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (n, s, ok)
}

/// No temporary restore files (`.NAME.sqlvault-*.tmp`) are left anywhere under `dir`.
#[track_caller]
pub fn assert_no_leftovers(dir: &Path, what: &str) {
    let leftovers: Vec<_> = files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".sqlvault-"))
        .collect();
    assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
}

/// Every secret in `secrets` is absent from the run's stdout and stderr.
#[track_caller]
pub fn assert_no_secret(r: &Run, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !r.stdout.contains(s) && !r.stderr.contains(s),
            "secret leaked:\nstdout: {}\nstderr: {}",
            r.stdout,
            r.stderr
        );
    }
}

/// What a backup host's write key gives whoever holds it (the WK attacker): the
/// repository keys, the metadata identity that opens manifests, maps and indexes, and
/// the recipients new objects are sealed to.
pub struct WriteKeyView {
    pub keys: sqlvault_engine::format::RepoKeys,
    pub meta: sqlvault_engine::crypt::Identities,
    pub recipients: Vec<sqlvault_engine::crypt::Recipient>,
}

impl WriteKeyView {
    /// The write key of the one repository this world's host knows.
    pub fn of(w: &World) -> WriteKeyView {
        let dirs: Vec<PathBuf> = std::fs::read_dir(w.path("home/repos"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "one repository known to this host");
        let wk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dirs[0].join("write-key.json")).unwrap()).unwrap();
        let keys = sqlvault_engine::format::RepoSecret::from_hex(wk["secret"].as_str().unwrap())
            .unwrap()
            .keys();
        let meta_bytes = keys.metadata_identity_bytes();
        let mut recipients: Vec<sqlvault_engine::crypt::Recipient> = wk["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().parse().unwrap())
            .collect();
        recipients.push(sqlvault_engine::crypt::x25519_recipient_from_bytes(&meta_bytes));
        WriteKeyView {
            meta: sqlvault_engine::crypt::Identities::from_x25519_bytes(&meta_bytes),
            keys,
            recipients,
        }
    }

    /// Opens a metadata object.
    pub fn open(&self, path: &Path) -> Vec<u8> {
        sqlvault_engine::crypt::decrypt_to_vec(&self.meta, &std::fs::read(path).unwrap()).unwrap()
    }

    /// Seals metadata as the repository does (recipients and the metadata key).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        sqlvault_engine::crypt::encrypt_to_vec(self.recipients.iter(), plaintext).unwrap()
    }
}
