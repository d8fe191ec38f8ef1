//! The drill's replication scenarios: one `sqlvault replicate` shipping a database to
//! every destination at once (local disk, S3 on moto, Azure on azurite; the remote ones
//! through proxies of this drill's), while an application commits one row at a time,
//! logs when, and runs checkpoints of every mode, VACUUM and SQLite's own
//! autocheckpoint. The run goes through phases: clean; 20% of the remote requests
//! failing; one destination down for 30 s (refusing, then hanging); then 60 s idle;
//! then kill -9 at random
//! moments, each followed by a restart.
//!
//! For each destination:
//! - its newest state equals the final commit exactly once the replicator caught up,
//!   and after SIGTERM (exit 0);
//! - ≥ 20 random times T each restore to the state right after a logged commit that
//!   was made at or before T — and, while that destination was healthy, no older than
//!   T − interval − 0.2 s (with slack for a loaded 2-core machine);
//! - `verify --points` checks random points of its timeline;
//! - 60 s without a commit cost it zero requests (counted at its proxy; for local disk,
//!   no file added or changed);
//! - the application's checkpoints all completed without reporting busy, each within
//!   one interval.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use super::{Backend, Drill, FaultProxy, committed_state};
use crate::bench_replicate::iso_ms;

/// The replication interval the scenarios run at (the CLI's default).
const INTERVAL: f64 = 1.0;
/// Slack on top of the freshness bound, for a loaded 2-core machine and a debug binary.
const SLACK: f64 = 0.3;
/// The application's checkpoints, in turn; VACUUM rewrites every page in one transaction.
const MODES: [&str; 5] = ["PASSIVE", "FULL", "RESTART", "TRUNCATE", "VACUUM"];
/// How long an idle database is watched.
const IDLE: Duration = Duration::from_secs(60);
/// How long a destination stays down.
const DOWN: Duration = Duration::from_secs(30);

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One destination of the replicator.
struct Dest<'a> {
    b: &'a Backend,
    url: String,
    /// A proxy of this scenario's own in front of a remote store.
    proxy: Option<FaultProxy>,
    /// The environment the replicator reaches it with (through the proxy).
    rep_env: Vec<(String, String)>,
    /// Spans in which it was healthy, so that any point there must be fresh.
    healthy: Vec<(f64, f64)>,
}

/// A checkpoint the application ran: mode, the busy flag SQLite returned, seconds.
struct Checkpoint {
    mode: &'static str,
    busy: i64,
    secs: f64,
}

/// The application: commits row n of `drill_writes` with the time (ms) taken right
/// before its INSERT (so a state holding n was committed after `at`), on its own
/// connection at a fixed rate; every `ck_every` commits a checkpoint of the next mode.
struct LogWriter {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<Vec<Checkpoint>>>,
}

impl LogWriter {
    fn start(db: &Path, per_second: u64, ck_every: i64) -> LogWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let db = db.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<Vec<Checkpoint>> {
            let c = rusqlite::Connection::open(&db)?;
            c.busy_timeout(Duration::from_secs(10))?;
            let mut n: i64 = c.query_row("SELECT coalesce(max(n), 0) FROM drill_writes", [], |r| r.get(0))?;
            let every = Duration::from_micros(1_000_000 / per_second.max(1));
            let mut done = Vec::new();
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let at = (now() * 1000.0) as i64;
                c.execute(
                    "INSERT INTO drill_writes(n, at) VALUES (?1, ?2)",
                    rusqlite::params![n, at],
                )?;
                if n % ck_every == 0 {
                    let mode = MODES[(n / ck_every) as usize % MODES.len()];
                    let t = Instant::now();
                    let busy = if mode == "VACUUM" {
                        c.execute_batch("VACUUM")?;
                        0
                    } else {
                        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))?
                    };
                    done.push(Checkpoint {
                        mode,
                        busy,
                        secs: t.elapsed().as_secs_f64(),
                    });
                }
                std::thread::sleep(every);
            }
            Ok(done)
        });
        LogWriter { stop, handle }
    }

    fn stop(self) -> Result<Vec<Checkpoint>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow!("writer panicked"))?
    }
}

/// Every commit of the source: (n, at in ms).
fn commits(db: &Path) -> Result<Vec<(i64, i64)>> {
    let c = rusqlite::Connection::open(db)?;
    let mut st = c.prepare("SELECT n, at FROM drill_writes ORDER BY n")?;
    let v = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(v)
}

/// Every file under `dir` with its length and modification time, sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH))),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// The check of one point: restored at T, the state of commit k, made at or before T;
/// when `fresh`, the next commit (if any) was made after T − interval − 0.2 s − slack.
fn check_point(commits: &[(i64, i64)], k: i64, t: f64, fresh: bool) -> Result<()> {
    let t_ms = (t * 1000.0).floor() as i64;
    if k > 0 {
        let at = commits
            .get(k as usize - 1)
            .filter(|c| c.0 == k)
            .ok_or_else(|| anyhow!("restored commit {k} is not in the source"))?
            .1;
        ensure!(
            at <= t_ms,
            "--at {}: restored commit {k}, made at {}, after T",
            iso_ms(t),
            iso_ms(at as f64 / 1000.0)
        );
    }
    if fresh && let Some(&(next, at)) = commits.get(k as usize) {
        let bound = t_ms - ((INTERVAL + 0.2 + SLACK) * 1000.0) as i64;
        ensure!(
            at > bound,
            "--at {}: restored commit {k}, but commit {next} was made {:.3} s before T",
            iso_ms(t),
            (t_ms - at) as f64 / 1000.0
        );
    }
    Ok(())
}

impl Drill {
    /// The replication scenarios over the local, S3 and Azure backends that are drilled.
    pub(super) fn replication(&mut self, backends: &[Backend], full: bool, seed: u64) -> Result<()> {
        let chosen: Vec<&Backend> = backends
            .iter()
            .filter(|b| matches!(b.name, "local" | "s3" | "azure"))
            .collect();
        if chosen.is_empty() {
            return Ok(());
        }
        let mut dests = Vec::new();
        for (i, b) in chosen.into_iter().enumerate() {
            let (proxy, rep_env) = match b.upstream {
                Some((var, port)) => {
                    let p = FaultProxy::start(port, 0.0, seed ^ (0x7e57 + i as u64))?;
                    let env = b
                        .env
                        .iter()
                        .map(|(k, v)| {
                            let v = if k == var {
                                format!("http://127.0.0.1:{}", p.port)
                            } else {
                                v.clone()
                            };
                            (k.clone(), v)
                        })
                        .collect();
                    (Some(p), env)
                }
                None => (None, b.env.clone()),
            };
            dests.push(Dest {
                b,
                url: b.url("replicate"),
                proxy,
                rep_env,
                healthy: Vec::new(),
            });
        }
        let db = self.dir.join("replicate.db");
        let label = "wal-2m";
        let t = Instant::now();
        let setup = (|| {
            sqlvault_testkit::generate(
                &db,
                &sqlvault_testkit::GenOptions {
                    target_bytes: 2 << 20,
                    seed,
                    wal: true,
                },
            )?;
            rusqlite::Connection::open(&db)?
                .execute_batch("CREATE TABLE drill_writes(n INTEGER PRIMARY KEY, at INTEGER NOT NULL);")?;
            for d in &dests {
                self.ok(&["init", &d.url, "-r", &self.rcpt.clone()], &d.b.env)?;
            }
            anyhow::Ok(())
        })();
        if let Err(e) = setup {
            for d in &dests {
                self.record(d.b.name, label, "replicate-init", t, Err(anyhow!("{e:#}")));
            }
            return Ok(());
        }

        // Writer, faults, an outage, catching up; then idle.
        let (phased, idle) = match self.phases(&mut dests, &db, full) {
            Ok(r) => r,
            Err(e) => {
                let e = format!("{e:#}");
                (
                    dests.iter().map(|_| Err(anyhow!("{e}"))).collect(),
                    dests.iter().map(|_| Err(anyhow!("{e}"))).collect(),
                )
            }
        };
        for (d, r) in dests.iter().zip(phased) {
            self.record(d.b.name, label, "replicate-faults-outage-points", t, r);
        }
        for (d, r) in dests.iter().zip(idle) {
            self.record(d.b.name, label, "replicate-idle-60s", t, r);
        }

        let t = Instant::now();
        let killed = match self.kill_loop(&dests, &db) {
            Ok(r) => r,
            Err(e) => {
                let e = format!("{e:#}");
                dests.iter().map(|_| Err(anyhow!("{e}"))).collect()
            }
        };
        for (d, r) in dests.iter().zip(killed) {
            self.record(d.b.name, label, "replicate-kill-9", t, r);
        }
        Ok(())
    }

    /// `sqlvault --json replicate DB DEST…`, its report and log into files named `tag`.
    fn spawn_replicator(&self, db: &Path, dests: &[Dest], tag: &str) -> Result<Child> {
        let dbs = db.display().to_string();
        let mut args = vec!["--json", "replicate", dbs.as_str()];
        args.extend(dests.iter().map(|d| d.url.as_str()));
        args.extend(["--interval", "1s", "--compact-segments", "20"]);
        let env: Vec<(String, String)> = dests.iter().flat_map(|d| d.rep_env.clone()).collect();
        let out = File::create(self.dir.join(format!("{tag}.json")))?;
        let err = File::create(self.dir.join(format!("{tag}.log")))?;
        self.cmd(&args, &env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start sqlvault replicate")
    }

    /// The last lines of a replicator's log, for an error.
    fn log_tail(&self, tag: &str) -> String {
        let s = std::fs::read_to_string(self.dir.join(format!("{tag}.log"))).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGTERM; it must ship what is committed and exit 0 within a minute. Its report.
    fn sigterm(&self, mut child: Child, tag: &str) -> Result<Value> {
        // SAFETY: a signal to a child this drill spawned and still owns.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("replicate did not stop within 60 s of SIGTERM: {}", self.log_tail(tag));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        ensure!(
            st.code() == Some(0),
            "replicate exited {st} after SIGTERM: {}",
            self.log_tail(tag)
        );
        let out = std::fs::read_to_string(self.dir.join(format!("{tag}.json")))?;
        serde_json::from_str(&out).with_context(|| format!("replicate's report: {out}"))
    }

    /// Waits until every destination holds a snapshot (the first base).
    fn wait_bases(&self, dests: &[Dest], child: &mut Child, tag: &str) -> Result<()> {
        let t = Instant::now();
        for d in dests {
            loop {
                let s = self.ok(&["snapshots", &d.url, "--json"], &d.b.env)?.json();
                if s["snapshots"].as_array().is_some_and(|a| !a.is_empty()) {
                    break;
                }
                if let Some(st) = child.try_wait()? {
                    bail!("replicate exited {st} before its first base: {}", self.log_tail(tag));
                }
                ensure!(
                    t.elapsed() < Duration::from_secs(90),
                    "no base in {} after 90 s: {}",
                    d.url,
                    self.log_tail(tag)
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(())
    }

    /// Restores `d`'s state at `at` ("-0s": the newest) into a scratch file.
    fn restore_at(&self, d: &Dest, at: &str) -> Result<PathBuf> {
        let out = self.dir.join("replicate.point.db");
        let _ = std::fs::remove_file(&out);
        self.ok(
            &["restore", &d.url, out.to_str().unwrap(), "-i", &self.key, "--at", at],
            &d.b.env,
        )?;
        Ok(out)
    }

    /// `d`'s newest state is the source's state now, its writer stopped: the
    /// content of the final commit (compared with the source read through SQLite, WAL
    /// included — the replicator's own connections keep the WAL from being folded in).
    fn newest_is_final(&self, d: &Dest, db: &Path) -> Result<()> {
        let out = self.restore_at(d, "-0s")?;
        let k = committed_state(&out, db, &self.dir.join("replicate.expected.db"))?;
        let last = commits(db)?.last().map_or(0, |c| c.0);
        ensure!(k == last, "the newest state holds commit {k}, the final one is {last}");
        Ok(())
    }

    /// Waits until `d`'s newest state is the source's final state; seconds waited.
    fn caught_up(&self, d: &Dest, db: &Path, last_at_ms: i64, limit: Duration) -> Result<f64> {
        let t = Instant::now();
        let plan_to = self.dir.join("replicate.plan.db");
        loop {
            // The plan first (no download): the newest state must have been observed
            // after the last commit began; then the content itself.
            let plan = self
                .ok(
                    &[
                        "--json",
                        "restore",
                        &d.url,
                        plan_to.to_str().unwrap(),
                        "-i",
                        &self.key,
                        "--at",
                        "-0s",
                        "--dry-run",
                    ],
                    &d.b.env,
                )?
                .json();
            let last = if plan["observed_ms"].as_i64().unwrap_or(0) >= last_at_ms {
                match self.newest_is_final(d, db) {
                    Ok(()) => return Ok(t.elapsed().as_secs_f64()),
                    Err(e) => e,
                }
            } else {
                anyhow!("its newest state was observed at {}", plan["observed_ms"])
            };
            ensure!(
                t.elapsed() < limit,
                "{} did not catch up within {} s: {last:#}",
                d.url,
                limit.as_secs()
            );
            std::thread::sleep(Duration::from_millis(1000));
        }
    }

    /// Clean, faulty, one destination down, catching up, idle; then SIGTERM and the
    /// points. Per destination: the scenario's result and the idle check's.
    #[allow(clippy::type_complexity)]
    fn phases(
        &mut self,
        dests: &mut [Dest],
        db: &Path,
        full: bool,
    ) -> Result<(Vec<Result<Value>>, Vec<Result<Value>>)> {
        let tag = "replicate-1";
        let mut child = self.spawn_replicator(db, dests, tag)?;
        let (idle, catch) = match self.phases_with(dests, db, full, &mut child, tag) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let report = self.sigterm(child, tag)?;
        let all = commits(db)?;
        let last_at = all.last().map_or(0, |c| c.1);
        let first_at = all.first().map_or(0, |c| c.1) as f64 / 1000.0;
        let end = last_at as f64 / 1000.0;
        let points = if full { 40 } else { 20 };
        let mut results = Vec::new();
        for (i, d) in dests.iter().enumerate() {
            let r = (|| {
                self.newest_is_final(d, db).context("the newest state after SIGTERM")?;
                let dr = &report["destinations"][i];
                // Random points over the whole run, and two inside the outage.
                let mut times: Vec<f64> = (0..points)
                    .map(|_| first_at + 0.5 + (end - first_at - 0.5) * self.rng.below(1_000_000) as f64 / 1e6)
                    .collect();
                if let Some(&(c0, c1)) = d.healthy.get(2) {
                    times.extend([c0 + (c1 - c0) * 0.3, c0 + (c1 - c0) * 0.9]);
                }
                let mut fresh = 0;
                for &t in &times {
                    let f = d.healthy.iter().any(|&(a, b)| t >= a && t <= b);
                    let out = self.restore_at(d, &iso_ms(t))?;
                    let k = committed_state(&out, db, &self.dir.join("replicate.expected.db"))?;
                    check_point(&all, k, t, f)?;
                    fresh += f as usize;
                }
                let v = self.ok(
                    &["verify", &d.url, "-i", &self.key, "--points", "5", "--json"],
                    &d.b.env,
                )?;
                ensure!(v.json()["ok"] == true, "verify --points 5: {}", v.stdout);
                Ok(json!({
                    "detail": format!(
                        "{} random points restored to logged commits ({fresh} checked fresh), newest = final commit {}; caught up {:.1} s after the writer stopped",
                        times.len(),
                        all.len(),
                        catch[i]
                    ),
                    "segments": dr["segments"],
                    "compactions": dr["compactions"],
                    "errors": dr["errors"],
                    "catch_up_seconds": catch[i],
                    "breaks": report["breaks"],
                    "wal_restarts": report["wal_restarts"],
                }))
            })();
            results.push(r);
        }
        Ok((results, idle))
    }

    /// The phases while the replicator runs: per destination the idle result, and how
    /// long it took to catch up after the writer stopped.
    #[allow(clippy::type_complexity)]
    fn phases_with(
        &mut self,
        dests: &mut [Dest],
        db: &Path,
        full: bool,
        child: &mut Child,
        tag: &str,
    ) -> Result<(Vec<Result<Value>>, Vec<f64>)> {
        self.wait_bases(dests, child, tag)?;
        let writer = LogWriter::start(db, 50, 60);
        let stretch = if full { 30.0 } else { 10.0 };
        let alive = |child: &mut Child| -> Result<()> {
            if let Some(st) = child.try_wait()? {
                bail!("replicate exited {st}: {}", self.log_tail(tag));
            }
            Ok(())
        };
        // Clean.
        let a0 = now();
        std::thread::sleep(Duration::from_secs_f64(stretch + 2.0));
        let a1 = now();
        alive(child)?;
        // 20% of the remote requests fail.
        for d in dests.iter() {
            if let Some(p) = &d.proxy {
                p.set_rate(0.2);
            }
        }
        let b0 = now();
        std::thread::sleep(Duration::from_secs_f64(stretch));
        let b1 = now();
        for d in dests.iter() {
            if let Some(p) = &d.proxy {
                p.set_rate(0.0);
            }
        }
        alive(child)?;
        // The first remote destination down — refusing, then hanging every request
        // unanswered — while the others must stay fresh.
        let down = dests.iter().position(|d| d.proxy.is_some());
        let c0 = now();
        if let Some(i) = down {
            let p = dests[i].proxy.as_ref().expect("remote");
            p.set_down(true);
            std::thread::sleep(DOWN / 2);
            p.set_hang(true);
            p.set_down(false);
            std::thread::sleep(DOWN / 2);
            p.set_hang(false);
        } else {
            std::thread::sleep(DOWN);
        }
        let c1 = now();
        alive(child)?;
        std::thread::sleep(Duration::from_secs(5));
        let checkpoints = writer.stop()?;
        alive(child)?;
        // Bounds shrink by an interval and the slack at each start: a state shipped
        // before the phase began may still be the newest for that long.
        let settle = INTERVAL + 0.2 + SLACK;
        for (i, d) in dests.iter_mut().enumerate() {
            d.healthy.push((a0 + settle, a1));
            d.healthy.push(if d.proxy.is_none() {
                (b0 + settle, b1)
            } else {
                (0.0, 0.0)
            });
            if Some(i) != down {
                d.healthy.push((c0 + settle, c1));
            }
        }
        // The application never waited on the replicator.
        let ck: Vec<String> = checkpoints
            .iter()
            .filter(|c| c.mode != "VACUUM" && (c.busy != 0 || c.secs > INTERVAL))
            .map(|c| format!("{} busy={} {:.3}s", c.mode, c.busy, c.secs))
            .collect();
        ensure!(
            ck.is_empty(),
            "the application's checkpoints waited on the replicator: {ck:?}"
        );
        ensure!(
            checkpoints.len() >= MODES.len(),
            "only {} checkpoints ran",
            checkpoints.len()
        );
        let last_at = commits(db)?.last().map_or(0, |c| c.1);
        let mut catch = Vec::new();
        for d in dests.iter() {
            catch.push(self.caught_up(d, db, last_at, Duration::from_secs(180))?);
        }
        alive(child)?;

        // Idle: nothing commits for 60 s; no destination may see a request.
        std::thread::sleep(Duration::from_secs(3));
        let before: Vec<(u64, usize)> = dests
            .iter()
            .map(|d| match &d.proxy {
                Some(p) => (p.requests(), 0),
                None => (0, listing(Path::new(&d.url)).len()),
            })
            .collect();
        let local_before: Vec<_> = dests
            .iter()
            .map(|d| d.proxy.is_none().then(|| listing(Path::new(&d.url))))
            .collect();
        std::thread::sleep(IDLE);
        alive(child)?;
        let idle = dests
            .iter()
            .zip(before)
            .zip(local_before)
            .map(|((d, (reqs, _)), files)| match (&d.proxy, files) {
                (Some(p), _) => {
                    let n = p.requests() - reqs;
                    ensure!(n == 0, "{n} requests in {} s without a commit", IDLE.as_secs());
                    Ok(json!({"detail": format!("0 requests in {} s without a commit", IDLE.as_secs())}))
                }
                (None, Some(files)) => {
                    let after = listing(Path::new(&d.url));
                    ensure!(
                        after == files,
                        "the repository changed in {} s without a commit ({} files before, {} after)",
                        IDLE.as_secs(),
                        files.len(),
                        after.len()
                    );
                    Ok(json!({"detail": format!("no file added or changed in {} s without a commit", IDLE.as_secs())}))
                }
                (None, None) => unreachable!("a local destination has a listing"),
            })
            .collect();
        Ok((idle, catch))
    }

    /// kill -9 at random moments while the application writes, each followed by a
    /// restart; then a clean stop. Every destination's newest state is the final
    /// commit, and random points of the span restore to logged commits.
    fn kill_loop(&mut self, dests: &[Dest], db: &Path) -> Result<Vec<Result<Value>>> {
        let writer = LogWriter::start(db, 50, 60);
        let t0 = now();
        let mut killed = 0;
        for i in 0..self.kills {
            let tag = format!("replicate-kill-{i}");
            let mut child = self.spawn_replicator(db, dests, &tag)?;
            let wait = 0.3 + self.rng.below(3000) as f64 / 1000.0;
            std::thread::sleep(Duration::from_secs_f64(wait));
            if child.try_wait()?.is_none() {
                killed += 1;
            }
            child.kill()?;
            child.wait()?;
        }
        let tag = "replicate-2";
        let mut child = self.spawn_replicator(db, dests, tag)?;
        std::thread::sleep(Duration::from_secs(4));
        let stopped = writer.stop();
        let r = (|| {
            stopped?;
            if let Some(st) = child.try_wait()? {
                bail!("replicate exited {st}: {}", self.log_tail(tag));
            }
            let last_at = commits(db)?.last().map_or(0, |c| c.1);
            for d in dests {
                self.caught_up(d, db, last_at, Duration::from_secs(120))?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.sigterm(child, tag)?;
        let all = commits(db)?;
        let end = all.last().map_or(t0, |c| c.1 as f64 / 1000.0);
        let mut out = Vec::new();
        for d in dests {
            let r = (|| {
                self.newest_is_final(d, db)
                    .context("the newest state after the kills")?;
                let n = 5;
                for _ in 0..n {
                    let t = t0 + (end - t0) * self.rng.below(1_000_000) as f64 / 1e6;
                    let p = self.restore_at(d, &iso_ms(t))?;
                    let k = committed_state(&p, db, &self.dir.join("replicate.expected.db"))?;
                    check_point(&all, k, t, false)?;
                }
                let v = self.ok(
                    &["verify", &d.url, "-i", &self.key, "--points", "3", "--json"],
                    &d.b.env,
                )?;
                ensure!(v.json()["ok"] == true, "verify --points 3: {}", v.stdout);
                Ok(json!({
                    "detail": format!(
                        "{killed} of {} runs killed mid-way; newest = final commit, {n} points across the kills restore to logged commits",
                        self.kills
                    ),
                }))
            })();
            out.push(r);
        }
        Ok(out)
    }
}
