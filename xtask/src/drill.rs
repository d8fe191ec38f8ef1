//! `cargo xtask drill`: the scenario matrix, run against the built `sqlvault` binary as
//! a user would run it, on every backend (local disk, S3 on moto and on SeaweedFS, GCS on
//! fake-gcs-server behind testkit's shim, Azure on azurite, each
//! started on 127.0.0.1 and stopped by pid).
//!
//! Every scenario either restores and verifies — integrity_check and the logical
//! checksum, and for backups taken under a concurrent writer, content equal to a state
//! the source had committed — or fails with the exit code expected. Anything else (a
//! silent success with wrong data, a wrong code, a panic) fails the drill. The seed makes
//! every kill moment, damaged byte and injected fault reproducible. Continuous
//! replication has its own part (`replicate.rs`).

// (tidy: long file — the scenario matrix, one function per scenario, listed together
// so the report and the code read in the same order.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sqlvault_testkit::Rng;

mod replicate;

/// The signed recipient set the damage scenario's `key add` publishes (generation 1).
const RECIPIENT_SET: &str = "keys/recipients-00000000000000000001";

#[derive(clap::Args)]
pub struct DrillArgs {
    /// The CI matrix: small databases, three kill points per command (a few minutes).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Larger databases (up to 256 MiB), ten kill points per command, release binary.
    #[arg(long)]
    full: bool,
    /// Seed for kill moments, damaged bytes, injected faults and data (default: from
    /// the clock; printed, so any failure can be rerun exactly).
    #[arg(long)]
    seed: Option<u64>,
    /// Backends to drill (default: all).
    #[arg(long, value_delimiter = ',', value_parser = ["local", "s3", "s3-seaweedfs", "gcs", "azure"])]
    backends: Vec<String>,
    /// Parts of the drill to run (default: all): the backup matrix, damaged objects,
    /// continuous replication.
    #[arg(long, value_delimiter = ',', value_parser = ["matrix", "damage", "replication"])]
    parts: Vec<String>,
    /// Where the JSON report goes (default: target/drill/report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Working directory for databases and local repositories, emptied first; one given
    /// here must be new, empty or made by an earlier drill (default: target/drill/work).
    #[arg(long)]
    work: Option<PathBuf>,
}

impl DrillArgs {
    /// What `cargo xtask ci` runs.
    pub fn quick() -> DrillArgs {
        DrillArgs {
            quick: true,
            full: false,
            seed: None,
            backends: Vec::new(),
            parts: Vec::new(),
            report: None,
            work: None,
        }
    }
}

/// A database shape of the matrix.
struct DbSpec {
    label: &'static str,
    mib: u64,
    wal: bool,
}

struct Backend {
    name: &'static str,
    /// `{prefix}` → repository URL.
    base: String,
    /// Environment of every sqlvault run against it.
    env: Vec<(String, String)>,
    /// The same through a proxy that fails 20% of requests (not for local disk).
    faulty_env: Option<Vec<(String, String)>>,
    /// Requests that proxy failed so far.
    injected: Option<Arc<AtomicU64>>,
    /// The environment variable naming the endpoint, and the server's port (remote
    /// backends), for scenarios that put a proxy of their own in front.
    upstream: Option<(&'static str, u16)>,
}

impl Backend {
    fn url(&self, prefix: &str) -> String {
        format!("{}/{prefix}", self.base)
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

struct Drill {
    bin: PathBuf,
    dir: PathBuf,
    rng: Rng,
    key: String,
    rcpt: String,
    other_key: String,
    other_rcpt: String,
    kills: usize,
    outcomes: Vec<Value>,
    rt: tokio::runtime::Runtime,
}

pub fn run(a: DrillArgs) -> Result<()> {
    let full = a.full;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("drill: seed {seed} (rerun with --seed {seed})");
    let bin = if full {
        crate::build_release()?
    } else {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        crate::sh(
            Command::new(cargo)
                .current_dir(crate::root())
                .args(["build", "--quiet", "--workspace", "--bins"]),
        )?;
        crate::root().join("target/debug/sqlvault")
    };
    let dir = a
        .work
        .clone()
        .unwrap_or_else(|| crate::root().join("target/drill/work"));
    // A directory given by hand is emptied only if a drill made it (or it is empty):
    // `--work ~` must not cost anyone their home directory.
    const MADE_BY_DRILL: &str = ".sqlvault-drill-work";
    if a.work.is_some()
        && dir.exists()
        && !dir.join(MADE_BY_DRILL).exists()
        && std::fs::read_dir(&dir)?.next().is_some()
    {
        bail!(
            "{} is not empty and was not made by a drill: give an empty or new directory",
            dir.display()
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(MADE_BY_DRILL), b"")?;
    let dbs: Vec<DbSpec> = if full {
        vec![
            DbSpec {
                label: "wal-16m",
                mib: 16,
                wal: true,
            },
            DbSpec {
                label: "rollback-16m",
                mib: 16,
                wal: false,
            },
            DbSpec {
                label: "wal-256m",
                mib: 256,
                wal: true,
            },
        ]
    } else {
        vec![
            DbSpec {
                label: "wal-3m",
                mib: 3,
                wal: true,
            },
            DbSpec {
                label: "rollback-2m",
                mib: 2,
                wal: false,
            },
        ]
    };
    let wanted = |b: &str| a.backends.is_empty() || a.backends.iter().any(|x| x == b);

    // Servers first; each backend's environment is handed to the commands and to the
    // in-process store that damages objects (never set in this process's own).
    let moto = if wanted("s3") {
        let m = sqlvault_testkit::MotoServer::start().map_err(anyhow::Error::msg)?;
        m.create_bucket("drill").map_err(anyhow::Error::msg)?;
        Some(m)
    } else {
        None
    };
    let azurite = if wanted("azure") {
        let z = sqlvault_testkit::AzuriteServer::start().map_err(anyhow::Error::msg)?;
        z.create_container("drill").map_err(anyhow::Error::msg)?;
        Some(z)
    } else {
        None
    };
    let weed = if wanted("s3-seaweedfs") {
        let w = sqlvault_testkit::SeaweedServer::start().map_err(anyhow::Error::msg)?;
        w.create_bucket("drill").map_err(anyhow::Error::msg)?;
        Some(w)
    } else {
        None
    };
    let gcs = if wanted("gcs") {
        let g = sqlvault_testkit::GcsServer::start().map_err(anyhow::Error::msg)?;
        g.create_bucket("drill").map_err(anyhow::Error::msg)?;
        Some(g)
    } else {
        None
    };
    let mut proxies = Vec::new();
    let mut backends = Vec::new();
    if wanted("local") {
        backends.push(Backend {
            name: "local",
            base: dir.join("repos").display().to_string(),
            env: Vec::new(),
            faulty_env: None,
            injected: None,
            upstream: None,
        });
    }
    // A remote backend: its environment, and the same with its endpoint variable
    // pointing at a proxy that fails 20% of requests.
    let mut remote =
        |name: &'static str, base: &str, env: Vec<(String, String)>, endpoint: &'static str, port: u16, seed: u64| {
            let p = FaultProxy::start(port, 0.2, seed)?;
            let faulty = env
                .iter()
                .map(|(k, v)| {
                    let v = if k == endpoint {
                        format!("http://127.0.0.1:{}", p.port)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            backends.push(Backend {
                name,
                base: base.into(),
                env,
                faulty_env: Some(faulty),
                injected: Some(p.injected.clone()),
                upstream: Some((endpoint, port)),
            });
            proxies.push(p);
            anyhow::Ok(())
        };
    if let Some(m) = &moto {
        remote("s3", "s3://drill", m.env(), "AWS_ENDPOINT", m.port, seed)?;
    }
    if let Some(w) = &weed {
        remote(
            "s3-seaweedfs",
            "s3://drill",
            w.env(),
            "AWS_ENDPOINT",
            w.port,
            seed ^ 0x3c3c,
        )?;
    }
    if let Some(g) = &gcs {
        // The fault proxy sits in front of the XML-PUT shim (testkit::GcsServer).
        remote(
            "gcs",
            "gs://drill",
            g.env(),
            "GOOGLE_BASE_URL",
            g.shim_port,
            seed ^ 0x6969,
        )?;
    }
    if let Some(z) = &azurite {
        remote(
            "azure",
            "az://drill",
            z.env(),
            "AZURITE_BLOB_STORAGE_URL",
            z.port,
            seed ^ 0x5a5a,
        )?;
    }

    let mut d = Drill {
        bin,
        rng: Rng::new(seed),
        key: dir.join("key.txt").display().to_string(),
        other_key: dir.join("other.txt").display().to_string(),
        other_rcpt: String::new(),
        rcpt: String::new(),
        dir,
        kills: if full { 10 } else { 3 },
        outcomes: Vec::new(),
        rt: tokio::runtime::Runtime::new()?,
    };
    let no_extra_env: Vec<(String, String)> = Vec::new();
    let g = d.sv(&["key", "generate", "-o", &d.key.clone()], &no_extra_env)?;
    ensure!(g.code == 0, "key generate failed: {}", g.stderr);
    d.rcpt = g.stdout.trim().to_string();
    let g = d.sv(&["key", "generate", "-o", &d.other_key.clone()], &no_extra_env)?;
    ensure!(g.code == 0, "key generate failed: {}", g.stderr);
    d.other_rcpt = g.stdout.trim().to_string();

    let t0 = Instant::now();
    let part = |p: &str| a.parts.is_empty() || a.parts.iter().any(|x| x == p);
    for b in &backends {
        if part("matrix") {
            for (i, spec) in dbs.iter().enumerate() {
                d.matrix(b, spec, seed.wrapping_add(i as u64))?;
            }
        }
        if part("damage") {
            d.damage(b)?;
        }
    }
    if part("replication") {
        d.replication(&backends, full, seed)?;
    }
    drop(proxies);
    drop(moto);
    drop(weed);
    drop(gcs);
    drop(azurite);

    let failed: Vec<&Value> = d.outcomes.iter().filter(|o| o["outcome"] != "pass").collect();
    let report = json!({
        "seed": seed,
        "mode": if full { "full" } else { "quick" },
        "seconds": t0.elapsed().as_secs_f64(),
        "passed": d.outcomes.len() - failed.len(),
        "failed": failed.len(),
        "scenarios": d.outcomes,
    });
    let path = a
        .report
        .unwrap_or_else(|| crate::root().join("target/drill/report.json"));
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!();
    println!(
        "{:<8} {:<14} {:<34} {:<5} {:>8}  detail",
        "BACKEND", "DATABASE", "SCENARIO", "OK", "SECONDS"
    );
    for o in report["scenarios"].as_array().expect("array") {
        println!(
            "{:<8} {:<14} {:<34} {:<5} {:>8.2}  {}",
            o["backend"].as_str().unwrap_or(""),
            o["db"].as_str().unwrap_or(""),
            o["scenario"].as_str().unwrap_or(""),
            if o["outcome"] == "pass" { "pass" } else { "FAIL" },
            o["seconds"].as_f64().unwrap_or(0.0),
            o["detail"].as_str().unwrap_or("")
        );
    }
    println!(
        "drill: {} passed, {} failed in {:.0}s (seed {seed}); report: {}",
        report["passed"],
        report["failed"],
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    if !failed.is_empty() {
        bail!("{} drill scenarios failed (seed {seed})", failed.len());
    }
    Ok(())
}

impl Drill {
    /// Runs sqlvault with this drill's home and `env`.
    fn sv(&self, args: &[&str], env: &[(String, String)]) -> Result<Out> {
        let t = Instant::now();
        let o = self
            .cmd(args, env)
            .output()
            .with_context(|| format!("cannot run sqlvault {args:?}"))?;
        Ok(Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            secs: t.elapsed().as_secs_f64(),
        })
    }

    fn cmd(&self, args: &[&str], env: &[(String, String)]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("SQLVAULT_HOME", self.dir.join("home"))
            .env_remove("SQLVAULT_IDENTITY_FILE")
            .env_remove("SQLVAULT_PASSPHRASE")
            .env_remove("SQLVAULT_LOG")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Runs `args`, which must succeed.
    fn ok(&self, args: &[&str], env: &[(String, String)]) -> Result<Out> {
        let o = self.sv(args, env)?;
        ensure!(
            o.code == 0,
            "sqlvault {} exited {}: {}",
            args.first().unwrap_or(&""),
            o.code,
            o.stderr.trim()
        );
        Ok(o)
    }

    /// Runs `args`, which must fail with one of `codes` and one error line, and no panic.
    fn fails(&self, args: &[&str], env: &[(String, String)], codes: &[i32]) -> Result<Out> {
        let o = self.sv(args, env)?;
        ensure!(
            codes.contains(&o.code),
            "sqlvault {} exited {} instead of {codes:?}: {}",
            args.first().unwrap_or(&""),
            o.code,
            o.stderr.trim()
        );
        ensure!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
        let lines = o.stderr.lines().filter(|l| l.starts_with("sqlvault: error:")).count();
        ensure!(lines == 1, "expected one error line, got {lines}: {}", o.stderr);
        Ok(o)
    }

    fn record(&mut self, backend: &str, db: &str, scenario: &str, t: Instant, r: Result<Value>) {
        let secs = t.elapsed().as_secs_f64();
        let o = match r {
            Ok(mut v) => {
                if let Some(m) = v.as_object_mut() {
                    m.insert("outcome".into(), json!("pass"));
                }
                v
            }
            Err(e) => json!({"outcome": "fail", "detail": format!("{e:#}")}),
        };
        let mut o = o;
        let m = o.as_object_mut().expect("object");
        m.insert("backend".into(), json!(backend));
        m.insert("db".into(), json!(db));
        m.insert("scenario".into(), json!(scenario));
        m.insert("seconds".into(), json!(secs));
        // A line per scenario as it ends: a --full run takes the better part of an hour.
        if m.get("outcome") != Some(&json!("pass")) {
            eprintln!("drill: FAIL {backend} {db} {scenario}: {}", m["detail"]);
        } else {
            eprintln!("drill: pass {backend} {db} {scenario} ({secs:.1} s)");
        }
        self.outcomes.push(o);
    }

    /// Every snapshot of `repo` restores and verifies (none at all is fine too).
    fn verify_all(&self, repo: &str, env: &[(String, String)], key: &str) -> Result<usize> {
        let s = self.ok(&["snapshots", repo, "--json"], env)?.json();
        let n = s["snapshots"].as_array().map(Vec::len).unwrap_or(0);
        if n > 0 {
            let v = self.ok(&["verify", repo, "-i", key, "--all", "--no-evidence", "--json"], env)?;
            ensure!(v.json()["ok"] == true, "verify --all: {}", v.stdout);
        }
        Ok(n)
    }

    /// Restores the newest snapshot of `repo` to a file and returns its path and the
    /// restore report.
    fn restore_newest(&self, repo: &str, env: &[(String, String)], out: &Path) -> Result<Value> {
        let o = self.ok(
            &[
                "restore",
                repo,
                out.to_str().unwrap(),
                "-i",
                &self.key,
                "--force",
                "--json",
            ],
            env,
        )?;
        Ok(o.json())
    }

    /// Starts `args` and kills it (SIGKILL) after a random moment within `window`.
    /// Returns whether it was still running when killed.
    fn kill_during(&mut self, args: &[&str], env: &[(String, String)], window: f64) -> Result<bool> {
        let delay = Duration::from_millis(self.rng.below((window * 1000.0) as u64 + 1));
        let mut child = self
            .cmd(args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn")?;
        std::thread::sleep(delay);
        let running = child.try_wait()?.is_none();
        if running {
            child.kill()?;
        }
        child.wait()?;
        Ok(running)
    }

    /// The matrix for one backend and database shape.
    fn matrix(&mut self, b: &Backend, spec: &DbSpec, seed: u64) -> Result<()> {
        let tag = format!("{}-{}", b.name, spec.label);
        let repo = b.url(&tag);
        let copy_dst = b.url(&format!("{tag}-copy"));
        let env = b.env.clone();
        let db = self.dir.join(format!("{tag}.db"));
        sqlvault_testkit::generate(
            &db,
            &sqlvault_testkit::GenOptions {
                target_bytes: spec.mib << 20,
                seed,
                wal: spec.wal,
            },
        )?;
        {
            let c = rusqlite::Connection::open(&db)?;
            c.execute_batch("CREATE TABLE drill_writes(n INTEGER PRIMARY KEY, at INTEGER NOT NULL);")?;
        }
        let dbs = db.display().to_string();
        let out = self.dir.join(format!("{tag}.restored.db"));
        let rcpt = self.rcpt.clone();
        let key = self.key.clone();
        let label = spec.label;

        let t = Instant::now();
        let r = (|| {
            self.ok(&["init", &repo, "-r", &rcpt], &env)?;
            self.ok(&["init", &copy_dst, "-r", &rcpt], &env)?;
            Ok(json!({}))
        })();
        let failed = r.is_err();
        self.record(b.name, label, "init", t, r);
        if failed {
            return Ok(());
        }

        // Full, then incremental, backups while a writer commits at a fixed rate; each
        // restores to a state the source committed.
        let mut backup_secs = 1.0;
        for (scenario, fraction) in [("backup-under-writes", 0.0), ("incremental-under-writes", 0.01)] {
            let t = Instant::now();
            if fraction > 0.0 {
                sqlvault_testkit::update_random(&db, fraction, seed)?;
            }
            let r = (|| {
                let w = Writer::start(&db, 200)?;
                let o = self.sv(&["backup", &dbs, &repo, "--json"], &env);
                let written = w.stop()?;
                let o = o?;
                ensure!(o.code == 0, "backup exited {}: {}", o.code, o.stderr.trim());
                backup_secs = o.secs;
                let rep = o.json();
                let restored = self.restore_newest(&repo, &env, &out)?;
                let k = committed_state(&out, &db, &self.dir.join("expected.db"))?;
                Ok(json!({
                    "detail": format!("restored the state after write {k} of {written}"),
                    "db_bytes": rep["bytes_read"],
                    "bytes_new": rep["bytes_new"],
                    "chunks_new": rep["chunks_new"],
                    "backup_seconds": o.secs,
                    "restore_seconds": restored["restore_seconds"],
                    "requests": {"backup": rep["requests"], "restore": restored["requests"]},
                }))
            })();
            self.record(b.name, label, scenario, t, r);
        }

        // kill -9 during a backup: every listed snapshot still restores; a rerun works.
        let t = Instant::now();
        let r = (|| {
            let mut interrupted = 0;
            for i in 0..self.kills {
                sqlvault_testkit::update_random(&db, 0.02, seed + 100 + i as u64)?;
                if self.kill_during(&["backup", &dbs, &repo], &env, backup_secs * 1.5)? {
                    interrupted += 1;
                }
                self.verify_all(&repo, &env, &key)?;
            }
            self.ok(&["backup", &dbs, &repo], &env)?;
            self.restore_newest(&repo, &env, &out)?;
            same_content(&out, &db)?;
            Ok(json!({"detail": format!("{interrupted} of {} runs killed mid-way; all snapshots restore", self.kills)}))
        })();
        self.record(b.name, label, "kill-9-during-backup", t, r);

        // kill -9 during copy into another repository (same recipients here; copy
        // between keys is covered by the test suite): each attempt copies into a fresh
        // destination and is killed within the time a whole copy takes; the destination
        // stays valid, and a rerun completes it.
        let t = Instant::now();
        let r = (|| {
            let whole = self.ok(&["copy", &repo, &copy_dst, "-i", &key, "--json"], &env)?;
            let n = self.verify_all(&copy_dst, &env, &key)?;
            ensure!(n == self.verify_all(&repo, &env, &key)?, "copy left out snapshots");
            let mut interrupted = 0;
            for i in 0..self.kills {
                let dst = b.url(&format!("{tag}-copy-{i}"));
                self.ok(&["init", &dst, "-r", &rcpt], &env)?;
                if self.kill_during(&["copy", &repo, &dst, "-i", &key], &env, whole.secs * 0.9)? {
                    interrupted += 1;
                }
                self.verify_all(&dst, &env, &key)?;
                self.ok(&["copy", &repo, &dst, "-i", &key], &env)?;
                ensure!(
                    self.verify_all(&dst, &env, &key)? == n,
                    "a resumed copy left out snapshots"
                );
            }
            Ok(json!({
                "detail": format!("{interrupted} of {} copies killed mid-way and resumed; {n} snapshots each", self.kills),
                "requests": whole.json()["requests"],
            }))
        })();
        self.record(b.name, label, "kill-9-during-copy", t, r);

        // kill -9 during prune: before each attempt a new backup and forget make fresh
        // garbage; the repository stays valid, and the next prune takes over the dead
        // run's lock and finishes.
        let t = Instant::now();
        let r = (|| {
            let prune = [
                "prune",
                &repo,
                "-i",
                &key,
                "--no-running-backups",
                "--repack-below",
                "0.9",
            ];
            let mut interrupted = 0;
            // No backup runs while prune does, so marks are ripe at once
            // (--no-running-backups). Each attempt: new garbage, one whole prune that
            // marks it, then the killed prune, which has them to delete.
            let mut ripe = 0;
            for i in 0..self.kills {
                sqlvault_testkit::update_random(&db, 0.05, seed + 200 + i as u64)?;
                self.ok(&["backup", &dbs, &repo], &env)?;
                self.ok(&["forget", &repo, "--keep-last", "2"], &env)?;
                self.ok(&prune, &env)?;
                let dry = self.ok(
                    &[
                        "prune",
                        &repo,
                        "-i",
                        &key,
                        "--dry-run",
                        "--no-running-backups",
                        "--json",
                    ],
                    &env,
                )?;
                ripe += dry.json()["deleted"]["packs"].as_u64().unwrap_or(0);
                if self.kill_during(&prune, &env, dry.secs * 2.0)? {
                    interrupted += 1;
                }
                self.verify_all(&repo, &env, &key)?;
            }
            ensure!(ripe > 0, "no killed prune had anything to delete");
            let o = self.ok(&[&prune[..], &["--json"]].concat(), &env)?.json();
            let n = self.verify_all(&repo, &env, &key)?;
            ensure!(n == 2, "{n} snapshots after forget --keep-last 2");
            self.restore_newest(&repo, &env, &out)?;
            same_content(&out, &db)?;
            Ok(json!({
                "detail": format!(
                    "{interrupted} of {} runs killed, with {ripe} packs ripe for deletion between them; {n} snapshots restore",
                    self.kills
                ),
                "requests": o["requests"],
            }))
        })();
        self.record(b.name, label, "kill-9-during-prune", t, r);

        // A wrong identity: refused with exit 5, nothing written.
        let t = Instant::now();
        let r = (|| {
            let wrong = self.dir.join("wrong.db");
            let o = self.fails(
                &["restore", &repo, wrong.to_str().unwrap(), "-i", &self.other_key.clone()],
                &env,
                &[5],
            )?;
            ensure!(!wrong.exists(), "a refused restore left {}", wrong.display());
            Ok(json!({"detail": o.stderr.trim().to_string()}))
        })();
        self.record(b.name, label, "wrong-identity", t, r);

        // 20% of requests fail at a proxy: backup, restore and verify get through.
        if let Some(fenv) = b.faulty_env.clone() {
            let t = Instant::now();
            let injected = || b.injected.as_ref().map(|i| i.load(Ordering::SeqCst)).unwrap_or(0);
            let before = injected();
            let r = (|| {
                let frepo = b.url(&format!("{tag}-faulty"));
                self.ok(&["init", &frepo, "-r", &rcpt], &fenv)?;
                let bk = self.ok(&["backup", &dbs, &frepo, "--json"], &fenv)?.json();
                let rs = self.restore_newest(&frepo, &fenv, &out)?;
                same_content(&out, &db)?;
                self.verify_all(&frepo, &fenv, &key)?;
                let retries =
                    bk["requests"]["retries"].as_u64().unwrap_or(0) + rs["requests"]["retries"].as_u64().unwrap_or(0);
                let failed = injected() - before;
                ensure!(failed > 0, "the proxy failed no request");
                Ok(json!({
                    "detail": format!("{failed} requests failed at the proxy, retried by the client ({retries} by sqlvault's own layer)"),
                    "requests": {"backup": bk["requests"], "restore": rs["requests"]},
                    "restore_seconds": rs["restore_seconds"],
                }))
            })();
            self.record(b.name, label, "20%-failing-store", t, r);
        }
        let _ = std::fs::remove_file(&out);
        Ok(())
    }

    /// One flipped bit and one truncation in each kind of stored object, and a deleted
    /// pack, each met by the command that reads that kind:
    /// - marker, config, manifests, maps, indexes, packs: verify and check refuse with
    ///   exit 6;
    /// - the signed recipient set (`keys/recipients-<generation>`): backup refuses to
    ///   encrypt to it (exit 6);
    /// - prune's state (`prune/pending`): backup warns and uploads everything (exit 0,
    ///   and its snapshot verifies); prune refuses (exit 6) until run with
    ///   `--reset-damaged-state`;
    /// - prune's lock (`prune/lock`): prune replaces an unreadable lock (exit 0);
    /// - evidence records: `audit --repo` ignores the record and reports it as a high
    ///   finding (exit 13).
    ///
    /// The repository verifies again once the object is put back.
    fn damage(&mut self, b: &Backend) -> Result<()> {
        let tag = format!("{}-damage", b.name);
        let repo = b.url(&tag);
        let env = b.env.clone();
        let key = self.key.clone();
        let rcpt = self.rcpt.clone();
        let other = self.other_rcpt.clone();
        let db = self.dir.join(format!("{tag}.db"));
        sqlvault_testkit::generate(
            &db,
            &sqlvault_testkit::GenOptions {
                target_bytes: 1 << 20,
                seed: 3,
                wal: true,
            },
        )?;
        let dbs = db.display().to_string();
        let t = Instant::now();
        let setup = (|| {
            self.ok(&["init", &repo, "-r", &rcpt], &env)?;
            self.ok(&["backup", &dbs, &repo], &env)?;
            sqlvault_testkit::update_random(&db, 0.05, 4)?;
            self.ok(&["backup", &dbs, &repo], &env)?;
            self.ok(&["backup", &dbs, &repo, "--kind", "dump", "--name", "app.sql"], &env)?;
            // One object of each remaining kind: a signed recipient set, evidence of
            // a verification, and prune's state.
            self.ok(&["key", "add", &repo, "-i", &key, "-r", &other], &env)?;
            // Two databases (the page snapshots' and app.sql): verify needs to be told
            // which; the pages are named after the file.
            let pages = format!("{tag}.db");
            self.ok(&["verify", &repo, "-i", &key, "--name", &pages], &env)?;
            self.ok(&["prune", &repo, "-i", &key], &env)?;
            Ok(json!({}))
        })();
        let failed = setup.is_err();
        self.record(b.name, "1m", "damage-setup", t, setup);
        if failed {
            return Ok(());
        }
        let store = sqlvault_store::Store::open_url(&repo, &sqlvault_store::StoreEnv::from_vars(env.clone()))?;
        let kinds = [
            "sqlvault.json",
            "config",
            "snapshots",
            "maps",
            "index",
            "packs",
            RECIPIENT_SET,
            "prune/pending",
            "prune/lock",
            "evidence",
        ];
        for dir in kinds {
            for how in ["flip", "truncate", "delete"] {
                if how == "delete" && dir != "packs" {
                    continue;
                }
                let t = Instant::now();
                let r = (|| {
                    // Single objects by name; of the others, the largest of its kind
                    // (referenced by some snapshot).
                    let single = !matches!(dir, "snapshots" | "maps" | "index" | "packs" | "evidence");
                    let k = if single {
                        dir.to_string()
                    } else {
                        let list = self.rt.block_on(store.list(dir))?;
                        let (name, _) = list
                            .iter()
                            .max_by_key(|(n, s)| (*s, n.clone()))
                            .with_context(|| format!("no {dir} objects"))?
                            .clone();
                        format!("{dir}/{name}")
                    };
                    // A lock exists only while a prune runs: its stand-in is another
                    // object sealed the same way (prune's state), damaged below.
                    let source = if dir == "prune/lock" { "prune/pending" } else { &k };
                    let original = self.rt.block_on(store.get(source))?;
                    let mut bad = original.to_vec();
                    let mut in_stanza = false;
                    // Damage inside the age header of a snapshot manifest makes it
                    // indistinguishable from junk a bucket writer left (the metadata
                    // key no longer opens it): readers go around it, `check` reports it.
                    let mut in_header = false;
                    match how {
                        "flip" => {
                            let i = self.rng.below(bad.len() as u64) as usize;
                            bad[i] ^= 1 << self.rng.below(8);
                            in_stanza = i < age_stanzas_end(&original);
                            in_header = i < age_header_end(&original);
                        }
                        "truncate" => {
                            let cut = self.rng.below(bad.len() as u64) as usize;
                            bad.truncate(cut);
                            in_header = cut < age_header_end(&original);
                        }
                        _ => {}
                    }
                    if how == "delete" {
                        self.rt.block_on(store.delete(&k))?;
                    } else {
                        self.rt.block_on(store.put(&k, bad.into()))?;
                    }
                    // age cannot tell a damaged recipient stanza from a wrong key when
                    // no other stanza opens (the config and packs are encrypted to the
                    // user's recipients alone): a flip there may say either.
                    let codes: &[i32] = if in_stanza { &[5, 6] } else { &[6] };
                    let refused = match dir {
                        RECIPIENT_SET => self.fails(&["backup", &dbs, &repo], &env, codes),
                        "prune/pending" => {
                            let b = self.ok(&["backup", &dbs, &repo], &env);
                            let p = self.fails(&["prune", &repo, "-i", &key], &env, codes);
                            // The way out the refusal names.
                            let r = self.ok(&["prune", &repo, "-i", &key, "--reset-damaged-state"], &env);
                            b.and(r).and(p)
                        }
                        "prune/lock" => self.ok(&["prune", &repo, "-i", &key], &env),
                        // An evidence record that does not authenticate is ignored
                        // and reported as a high finding (exit 13), not a stop.
                        "evidence" => self
                            .sv(&["audit", &dbs, "--repo", &repo, "-i", &key, "--json"], &env)
                            .and_then(|o| {
                                ensure!(
                                    o.code == 13 && o.stdout.contains("repo.unauthenticated-object"),
                                    "audit exited {} without reporting the damaged record: {}",
                                    o.code,
                                    o.stderr.trim()
                                );
                                Ok(o)
                            }),
                        _ => {
                            let verify = ["verify", &repo, "-i", &key, "--all", "--no-evidence", "--json"];
                            let v = if dir == "snapshots" && in_header {
                                self.sv(&verify, &env).and_then(|o| {
                                    ensure!(
                                        [0, 5, 6].contains(&o.code) && !o.stderr.contains("panicked"),
                                        "verify exited {}: {}",
                                        o.code,
                                        o.stderr.trim()
                                    );
                                    Ok(o)
                                })
                            } else {
                                self.fails(&verify, &env, codes)
                            };
                            let c = self.fails(&["check", &repo, "-i", &key, "--read-data"], &env, codes);
                            v.and_then(|v| c.map(|_| v))
                        }
                    };
                    if dir == "prune/lock" {
                        // The prune replaced the stand-in and removed its own lock; a
                        // failed one leaves it, which the next scenarios must not meet.
                        let left = !self.rt.block_on(store.get(&k)).is_err_and(|e| e.is_not_found());
                        if left {
                            self.rt.block_on(store.delete(&k))?;
                        }
                        ensure!(refused.is_err() || !left, "prune left {k} behind");
                    } else {
                        self.rt.block_on(store.put(&k, original))?;
                    }
                    let o = refused?;
                    self.verify_all(&repo, &env, &key)?;
                    let code = o.json()["snapshots"]
                        .as_array()
                        .and_then(|s| s.iter().find_map(|x| x["code"].as_str().map(String::from)))
                        .or_else(|| o.json()["error"]["code"].as_str().map(String::from))
                        .or_else(|| {
                            o.stderr
                                .lines()
                                .find(|l| l.starts_with("sqlvault: error:"))
                                .map(String::from)
                        })
                        .unwrap_or_default();
                    let detail = if code.is_empty() {
                        format!("exit {}", o.code)
                    } else {
                        format!("exit {} ({code})", o.code)
                    };
                    Ok(json!({"detail": detail, "error_code": code}))
                })();
                let kind = match dir {
                    "sqlvault.json" => "marker",
                    RECIPIENT_SET => "recipient-set",
                    "prune/pending" => "prune-state",
                    "prune/lock" => "prune-lock",
                    d => d,
                };
                self.record(b.name, "1m", &format!("{how}-{kind}"), t, r);
            }
        }
        Ok(())
    }
}

/// Where the recipient stanzas of an age object end (the `---` MAC line starts): a flip
/// before it may make the object undecryptable with any key rather than corrupt.
fn age_stanzas_end(obj: &[u8]) -> usize {
    obj.windows(5).position(|w| w == b"\n--- ").unwrap_or(0)
}

/// Where the encrypted payload of an age object starts: after the `--- <header MAC>`
/// line and the 16-byte payload nonce (without which the header cannot be used either).
fn age_header_end(obj: &[u8]) -> usize {
    let mac_line = age_stanzas_end(obj) + 1;
    obj[mac_line..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(0, |n| mac_line + n + 1 + 16)
}

/// A writer committing one row at a time into `drill_writes` (n = 1, 2, …) at a fixed
/// rate, on its own connection, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<i64>>,
}

impl Writer {
    fn start(db: &Path, per_second: u64) -> Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let db = db.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<i64> {
            let c = rusqlite::Connection::open(&db)?;
            c.busy_timeout(Duration::from_secs(30))?;
            let mut n: i64 = c.query_row("SELECT coalesce(max(n), 0) FROM drill_writes", [], |r| r.get(0))?;
            let every = Duration::from_micros(1_000_000 / per_second.max(1));
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                c.execute(
                    "INSERT INTO drill_writes(n, at) VALUES (?1, ?2)",
                    rusqlite::params![n, at],
                )?;
                std::thread::sleep(every);
            }
            Ok(n)
        });
        Ok(Writer { stop, handle })
    }

    fn stop(self) -> Result<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow::anyhow!("writer panicked"))?
    }
}

fn checksum(p: &Path) -> Result<[u8; 32]> {
    let r = sqlvault_sqlite::verify_file(p)?;
    ensure!(r.problems.is_empty(), "{}: {:?}", p.display(), r.problems);
    Ok(r.logical_checksum)
}

/// The restored database equals the source as it was after its writer's k-th commit,
/// for the k it holds: rows 1..=k and nothing after, every other table as now.
fn committed_state(restored: &Path, source: &Path, scratch: &Path) -> Result<i64> {
    let (count, k): (i64, i64) = rusqlite::Connection::open(restored)?.query_row(
        "SELECT count(*), coalesce(max(n), 0) FROM drill_writes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    ensure!(count == k, "restored writes are not a prefix: {count} rows, last {k}");
    let _ = std::fs::remove_file(scratch);
    {
        let src = rusqlite::Connection::open(source)?;
        src.execute("VACUUM INTO ?1", [scratch.to_str().unwrap()])?;
    }
    let c = rusqlite::Connection::open(scratch)?;
    c.execute("DELETE FROM drill_writes WHERE n > ?1", [k])?;
    drop(c);
    ensure!(
        checksum(scratch)? == checksum(restored)?,
        "restored content is no committed state of the source (writes 1..={k})"
    );
    Ok(k)
}

fn same_content(restored: &Path, source: &Path) -> Result<()> {
    ensure!(
        checksum(restored)? == checksum(source)?,
        "restored content differs from the source"
    );
    Ok(())
}

/// An HTTP/1.1 proxy on 127.0.0.1 that answers a fraction of requests itself with
/// 503 and forwards the rest, one request per connection (it asks both sides to close).
/// The fraction can be changed while it runs, and it can be taken down: every
/// connection closed at once (a host that went away), or held unanswered until it is
/// up again (a host that hangs). It counts what it is asked.
struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    injected: Arc<AtomicU64>,
    /// Failure rate in parts per million.
    rate_ppm: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    /// Connections accepted (one request each).
    requests: Arc<AtomicU64>,
}

impl FaultProxy {
    fn start(upstream: u16, rate: f64, seed: u64) -> Result<FaultProxy> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicU64::new(0));
        let rate_ppm = Arc::new(AtomicU64::new((rate * 1_000_000.0) as u64));
        let down = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, inj, ppm, dn, hg, reqs) = (
            stop.clone(),
            injected.clone(),
            rate_ppm.clone(),
            down.clone(),
            hang.clone(),
            requests.clone(),
        );
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        if dn.load(Ordering::SeqCst) {
                            drop(c);
                            continue;
                        }
                        if hg.load(Ordering::SeqCst) {
                            let (hg, s) = (hg.clone(), s.clone());
                            std::thread::spawn(move || {
                                while hg.load(Ordering::SeqCst) && !s.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                                drop(c);
                            });
                            continue;
                        }
                        let fail = rng.below(1_000_000) < ppm.load(Ordering::SeqCst);
                        if fail {
                            inj.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::spawn(move || {
                            let _ = proxy_one(c, upstream, fail);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(FaultProxy {
            port,
            stop,
            injected,
            rate_ppm,
            down,
            hang,
            requests,
        })
    }

    fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    fn set_rate(&self, rate: f64) {
        self.rate_ppm.store((rate * 1_000_000.0) as u64, Ordering::SeqCst);
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn proxy_one(mut c: TcpStream, upstream: u16, fail: bool) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    // The request head, byte by byte up to the blank line (heads are small).
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b)? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    let len: u64 = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if fail {
        std::io::copy(&mut (&mut c).take(len), &mut std::io::sink())?;
        c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut fwd = lines.join("\r\n");
    fwd.push_str("\r\nConnection: close\r\n\r\n");
    up.write_all(fwd.as_bytes())?;
    std::io::copy(&mut (&mut c).take(len), &mut up)?;
    // The response, up to the server closing, told to the client as the last on this
    // connection (so its pool does not reuse a connection the proxy closes).
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return c.write_all(&resp);
    };
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let mut out: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    c.write_all(out.join("\r\n").as_bytes())?;
    c.write_all(b"\r\n\r\n")?;
    c.write_all(&resp[end + 4..])
}
