//! `cargo xtask bench --replicate`: continuous replication of the bench database under
//! a steady writer, sqlvault against Litestream's daemon on the same workload in the
//! same run, and the writer alone as the baseline.
//!
//! The writer is a thread of this process (its own connection, so its locks are real
//! against both replicators' processes): `rate` transactions a second, each inserting
//! a numbered row and updating a random order (pages all over the database), its
//! commit latency timed; a TRUNCATE checkpoint (busy timeout 5 s) every 20 s, timed.
//! Lag is measured the same way for both replicators: a poller lists the replica every
//! 20 ms and notes when each new object appears; a commit's lag is the time from its
//! COMMIT to the first object that appeared after it (an upper bound for the
//! replicator's own definition, the same for both). CPU and peak RSS come from the
//! replicator's `/proc` entries, over the writer's run (base or snapshot excluded).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::bench::{BenchArgs, copy_db, proc_cpu, publish, sh, tree};

/// Files under `p`, tolerating files that vanish during the walk (a replicator's
/// compaction deletes some while the poller counts).
fn count_files(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += count_files(&e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// What the writer saw.
#[derive(Default)]
struct Written {
    /// (n, time right after COMMIT returned).
    commits: Vec<(i64, f64)>,
    /// Commit latencies, seconds.
    latency: Vec<f64>,
    /// TRUNCATE checkpoints: (seconds, busy).
    truncates: Vec<(f64, i64)>,
}

fn writer(db: &Path, rate: u32, seconds: u64) -> Result<Written> {
    let c = rusqlite::Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS bench_tx(n INTEGER PRIMARY KEY, t REAL);",
    )?;
    let orders: i64 = c.query_row("SELECT max(id) FROM orders", [], |r| r.get(0))?;
    let mut ins = c.prepare("INSERT INTO bench_tx VALUES(?1, ?2)")?;
    let mut upd = c.prepare("UPDATE orders SET amount = amount + 1 WHERE id = ?1")?;
    let mut w = Written {
        commits: Vec::new(),
        latency: Vec::new(),
        truncates: Vec::new(),
    };
    let t0 = Instant::now();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let total = rate as u64 * seconds;
    let mut next_truncate = 20.0;
    for n in 1..=total as i64 {
        let due = Duration::from_secs_f64((n - 1) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = Instant::now();
        c.execute_batch("BEGIN")?;
        ins.execute(rusqlite::params![n, now()])?;
        upd.execute([(x % orders as u64) as i64 + 1])?;
        c.execute_batch("COMMIT")?;
        w.latency.push(s.elapsed().as_secs_f64());
        w.commits.push((n, now()));
        if t0.elapsed().as_secs_f64() >= next_truncate {
            next_truncate += 20.0;
            let s = Instant::now();
            let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            w.truncates.push((s.elapsed().as_secs_f64(), busy));
        }
    }
    Ok(w)
}

/// Notes when new objects appear under `dir` (every 20 ms) until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<f64>>>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(dir: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let h = std::thread::spawn(move || {
            let mut last = count_files(&dir);
            while !s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let n = count_files(&dir);
                if n > last {
                    seen2.lock().unwrap().push(now());
                }
                last = n;
            }
        });
        Poller { stop, seen, h: Some(h) }
    }

    fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// Each commit's lag: from its COMMIT to the first new object after it.
fn lags(commits: &[(i64, f64)], appeared: &[f64]) -> Vec<f64> {
    commits
        .iter()
        .filter_map(|&(_, t)| appeared.iter().find(|&&a| a >= t).map(|a| a - t))
        .collect()
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn proc_hwm_mib(pid: u32) -> Result<f64> {
    Ok(crate::bench::proc_hwm_kib(pid)? as f64 / 1024.0)
}

/// One replicator's run.
struct Run {
    written: Written,
    lags: Vec<f64>,
    cpu: f64,
    rss_mib: f64,
    objects: u64,
    bytes: u64,
    restore_newest: f64,
    restore_half: f64,
    /// Objects written during 30 s without a commit.
    idle_objects: u64,
    /// A restore of the run's base snapshot, a full snapshot of the same size (sqlvault).
    restore_full: Option<f64>,
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn iso_ms(t: f64) -> String {
    let ms = (t * 1000.0) as i64;
    let secs = sqlvault_engine::retention::iso_time(ms - ms % 1000);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms % 1000)
}

/// Objects a replicator adds under `dir` during 30 s in which nothing commits.
fn idle(dir: &Path) -> u64 {
    let before = count_files(dir);
    std::thread::sleep(Duration::from_secs(30));
    count_files(dir).saturating_sub(before)
}

/// The highest numbered row of a restored database.
fn last_tx(db: &Path) -> Result<i64> {
    let c = rusqlite::Connection::open(db)?;
    Ok(c.query_row("SELECT coalesce(max(n), 0) FROM bench_tx", [], |r| r.get(0))?)
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).status()?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The writer's run against a replicator (`child`, writing under `dir`, whose new
/// objects appear under `watch`): lag, CPU, objects and bytes, then 30 s idle, peak
/// RSS; the replicator is stopped (SIGTERM) before returning.
fn under_writer(
    child: &mut std::process::Child,
    dir: &Path,
    watch: &Path,
    db: &Path,
    rate: u32,
    seconds: u64,
) -> Result<Run> {
    let pid = child.id();
    let (bytes0, objects0) = tree(dir);
    let cpu0 = proc_cpu(pid)?;
    let poller = Poller::start(watch.to_path_buf());
    let written = writer(db, rate, seconds)?;
    std::thread::sleep(Duration::from_secs(3));
    let appeared = poller.finish();
    let cpu = proc_cpu(pid)? - cpu0;
    let (bytes1, objects1) = tree(dir);
    let idle_objects = idle(dir);
    let rss_mib = proc_hwm_mib(pid)?;
    // SAFETY: our child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;
    Ok(Run {
        lags: lags(&written.commits, &appeared),
        written,
        cpu,
        rss_mib,
        objects: objects1 - objects0,
        bytes: bytes1 - bytes0,
        restore_newest: 0.0,
        restore_half: 0.0,
        idle_objects,
        restore_full: None,
    })
}

fn sqlvault_run(bin: &Path, work: &Path, db: &Path, rate: u32, seconds: u64) -> Result<Run> {
    let home = work.join("home");
    let repo = work.join("repo");
    let key = work.join("key.txt");
    let sv = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args).env("SQLVAULT_HOME", &home);
        c
    };
    let out = sv(&["key", "generate", "-o", key.to_str().unwrap()]).output()?;
    let rcpt = String::from_utf8(out.stdout)?.trim().to_string();
    if !sv(&["init", repo.to_str().unwrap(), "-r", &rcpt]).status()?.success() {
        bail!("init failed");
    }
    let mut child = sv(&[
        "replicate",
        db.to_str().unwrap(),
        repo.to_str().unwrap(),
        "--interval",
        "1s",
    ])
    .stdout(Stdio::null())
    .spawn()?;
    let t = Instant::now();
    while fs::read_dir(repo.join("snapshots")).map_or(0, |d| d.count()) == 0 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("no base snapshot after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench: sqlvault's base took {:.1}s", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));
    let mut m = under_writer(&mut child, &repo, &repo.join("segments"), db, rate, seconds)?;
    let written = std::mem::take(&mut m.written);
    let last = written.commits.last().map_or(0, |c| c.0);
    let out = work.join("restored.db");
    // One restore of the run's repository to `out`, by `--at TIME` or `--snapshot ID`.
    let restore = |how: &str, what: &str| -> Result<f64> {
        let _ = fs::remove_file(&out);
        timed(&mut sv(&[
            "restore",
            repo.to_str().unwrap(),
            out.to_str().unwrap(),
            "-i",
            key.to_str().unwrap(),
            how,
            what,
        ]))
    };
    let base_id = fs::read_dir(repo.join("snapshots"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .min()
        .context("no snapshot")?;
    let restore_newest = restore("--at", "-0s")?;
    let got = last_tx(&out)?;
    if got != last {
        bail!("sqlvault's newest state holds transaction {got}, the writer's last was {last}");
    }
    let half = written.commits[written.commits.len() / 2];
    let restore_half = restore("--at", &iso_ms(half.1))?;
    let got = last_tx(&out)?;
    if got > half.0 || got + (rate as i64) * 3 < half.0 {
        bail!(
            "sqlvault's state at the halfway time holds transaction {got}, expected about {}",
            half.0
        );
    }
    let restore_full = Some(restore("--snapshot", &base_id)?);
    Ok(Run {
        restore_full,
        written,
        restore_newest,
        restore_half,
        ..m
    })
}

fn litestream_run(work: &Path, db: &Path, rate: u32, seconds: u64) -> Result<Run> {
    let replica = work.join("replica");
    let url = format!("file://{}", replica.display());
    let mut child = crate::bench::spawn_litestream(db, &url)?;
    // Its first snapshot: until the replica stops changing for 3 s.
    let t = Instant::now();
    let (mut last, mut changed) = (tree(&replica), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = tree(&replica);
        if now != last {
            (last, changed) = (now, Instant::now());
        }
        if last.1 > 0 && changed.elapsed() > Duration::from_secs(3) {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("Litestream made no snapshot in 10 minutes");
        }
    }
    eprintln!("bench: Litestream's snapshot took {:.1}s", t.elapsed().as_secs_f64());
    let mut m = under_writer(&mut child, &replica, &replica.join("ltx").join("0"), db, rate, seconds)?;
    let written = std::mem::take(&mut m.written);
    let last = written.commits.last().map_or(0, |c| c.0);
    let out = work.join("restored.db");
    let restore_newest =
        timed(sh(&format!("litestream restore -o '{}' '{url}'", out.display())).env_remove("AWS_CA_BUNDLE"))?;
    let got = last_tx(&out)?;
    if got != last {
        eprintln!("bench: Litestream's newest state holds transaction {got}, the writer's last was {last}");
    }
    let half = written.commits[written.commits.len() / 2];
    for f in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{f}", out.display()));
    }
    let restore_half = timed(
        sh(&format!(
            "litestream restore -timestamp {} -o '{}' '{url}'",
            iso_ms(half.1),
            out.display()
        ))
        .env_remove("AWS_CA_BUNDLE"),
    )?;
    Ok(Run {
        written,
        restore_newest,
        restore_half,
        ..m
    })
}

pub(crate) fn run(a: &BenchArgs, rate: u32, seconds: u64) -> Result<()> {
    let command = format!(
        "cargo xtask bench --replicate --size-mib {} --rate {rate} --seconds {seconds}",
        a.size_mib
    );
    let bin = crate::build_release()?;
    let (dir, pristine, _) = crate::bench::bench_databases(a.dir.clone(), a.size_mib)?;
    let work = dir.join("replicate");
    let db = work.join("app.db");
    let fresh = |sub: &str| -> Result<PathBuf> {
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(work.join(sub))?;
        copy_db(&pristine, &db)?;
        Ok(work.join(sub))
    };
    fresh("alone")?;
    eprintln!("bench: the writer alone, {seconds}s at {rate}/s");
    let alone = writer(&db, rate, seconds)?;
    let w = fresh("sqlvault")?;
    eprintln!("bench: sqlvault replicate");
    let ours = sqlvault_run(&bin, &w, &db, rate, seconds)?;
    let w = fresh("litestream")?;
    eprintln!("bench: Litestream");
    let theirs = litestream_run(&w, &db, rate, seconds)?;
    let _ = fs::remove_dir_all(&work);

    let mut o = String::new();
    let line = |o: &mut String, s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    let p99a = pct(&alone.latency, 0.99);
    line(
        &mut o,
        format!(
            "The {} MiB bench database, a writer at {rate} transactions/s for {seconds} s (an insert and an update of a random order each; synchronous=NORMAL; a TRUNCATE checkpoint every 20 s), replicated with `--interval 1s` to a local directory. Lag: from COMMIT to the first replica object written after it (polled every 20 ms, the same for both).\n",
            a.size_mib
        ),
    );
    line(
        &mut o,
        "| | writer alone | sqlvault replicate | Litestream 0.5 |".into(),
    );
    line(&mut o, "|---|---|---|---|".into());
    let both = |o: &mut String, what: &str, f: &dyn Fn(&Run) -> String, alone: String| {
        line(o, format!("| {what} | {alone} | {} | {} |", f(&ours), f(&theirs)));
    };
    both(
        &mut o,
        "lag p50 / p99",
        &|r| format!("{:.2} s / {:.2} s", pct(&r.lags, 0.5), pct(&r.lags, 0.99)),
        "—".into(),
    );
    both(
        &mut o,
        "replicator CPU (share of one core)",
        &|r| format!("{:.1}%", r.cpu / seconds as f64 * 100.0),
        "—".into(),
    );
    both(
        &mut o,
        "replicator peak RSS",
        &|r| format!("{:.1} MiB", r.rss_mib),
        "—".into(),
    );
    both(
        &mut o,
        "writer commit latency p50 / p99",
        &|r| {
            format!(
                "{:.2} ms / {:.2} ms ({:+.0}%)",
                pct(&r.written.latency, 0.5) * 1e3,
                pct(&r.written.latency, 0.99) * 1e3,
                (pct(&r.written.latency, 0.99) / p99a - 1.0) * 100.0
            )
        },
        format!("{:.2} ms / {:.2} ms", pct(&alone.latency, 0.5) * 1e3, p99a * 1e3),
    );
    both(
        &mut o,
        "TRUNCATE checkpoints: longest wait, busy",
        &|r| {
            let worst = r.written.truncates.iter().map(|t| t.0).fold(0.0, f64::max);
            let busy = r.written.truncates.iter().filter(|t| t.1 != 0).count();
            format!("{:.3} s, {busy} of {} busy", worst, r.written.truncates.len())
        },
        {
            let worst = alone.truncates.iter().map(|t| t.0).fold(0.0, f64::max);
            format!("{worst:.3} s")
        },
    );
    both(
        &mut o,
        "objects written per minute (PUTs)",
        &|r| format!("{:.0}", r.objects as f64 / seconds as f64 * 60.0),
        "—".into(),
    );
    both(
        &mut o,
        "bytes stored for the run",
        &|r| format!("{:.1} MiB", r.bytes as f64 / 1048576.0),
        "—".into(),
    );
    both(
        &mut o,
        "objects written in 30 s without a commit",
        &|r| r.idle_objects.to_string(),
        "—".into(),
    );
    both(
        &mut o,
        "restore: newest state / halfway back",
        &|r| format!("{:.1} s / {:.1} s", r.restore_newest, r.restore_half),
        "—".into(),
    );
    if let Some(full) = ours.restore_full {
        line(
            &mut o,
            format!(
                "| restore of a full snapshot of the same size (sqlvault's base) | — | {full:.1} s (newest state: {:.2}×) | — |",
                ours.restore_newest / full
            ),
        );
    }
    line(
        &mut o,
        "\nsqlvault's objects are encrypted (age) and compressed; Litestream's replica is plaintext LTX. The restores are of the same run's replica on this machine's disk.\n".into(),
    );
    publish(&format!("replicate-{}m", a.size_mib), &command, &o)
}
