//! `cargo xtask bench --snapshot`: a plain copy and a filesystem-level copy of a live
//! database, under a writer committing 200 transactions per second.
//!
//! - `sqlvault snapshot DB OUT` (and `--vacuum`), against `sqlite3 DB "VACUUM INTO …"`
//!   and `sqlite3 DB ".backup …"` (the shell's backup steps 100 pages at a time and
//!   restarts at every commit), each bounded by 120 s; time, and whether it finished.
//! - `sqlvault freeze DB -- sh -c 'sleep 0.5; cp …'`: how long the database was held,
//!   the writer's longest wait (its busy handler sleeps 1 ms, so the wait is measured,
//!   not rounded up to SQLite's back-off steps), the command's own duration, and
//!   whether the copy opens and passes integrity_check.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

/// A writer committing one row per transaction at `rate` per second until stopped;
/// records its longest commit (µs).
struct Writer {
    stop: Arc<AtomicBool>,
    longest_us: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Writer {
    fn start(db: &Path, rate: u32) -> Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let longest_us = Arc::new(AtomicU64::new(0));
        let (s, l, db) = (Arc::clone(&stop), Arc::clone(&longest_us), db.to_path_buf());
        let thread = std::thread::spawn(move || -> Result<u64> {
            let mut c = Connection::open(&db)?;
            c.busy_handler(Some(|_| {
                std::thread::sleep(Duration::from_millis(1));
                true
            }))?;
            c.execute_batch("CREATE TABLE IF NOT EXISTS bench_writes(id INTEGER PRIMARY KEY, at INT, pad BLOB)")?;
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut next = Instant::now();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO bench_writes(at, pad) VALUES (?1, randomblob(200))",
                    [n as i64],
                )?;
                tx.commit()?;
                l.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                n += 1;
                next += period;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(n)
        });
        Ok(Writer {
            stop,
            longest_us,
            thread: Some(thread),
        })
    }

    fn reset_longest(&self) {
        self.longest_us.store(0, Ordering::Relaxed);
    }

    fn longest(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }

    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("writer")?
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
    }
}

/// Runs `cmd` with a deadline: `(seconds, finished)`.
fn timed(cmd: &mut Command, limit: Duration) -> Result<(f64, bool)> {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((t.elapsed().as_secs_f64(), st.success()));
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((t.elapsed().as_secs_f64(), false));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn integrity_ok(db: &Path) -> Result<bool> {
    let c = Connection::open(db)?;
    Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))? == "ok")
}

pub fn run(size_mib: u64) -> Result<()> {
    let bin = crate::build_release()?;
    let dir = crate::root().join("target/bench-snapshot");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("live.db");
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: size_mib << 20,
            seed: 21,
            wal: true,
        },
    )?;
    let writer = Writer::start(&db, 200)?;
    std::thread::sleep(Duration::from_secs(1));
    let limit = Duration::from_secs(120);
    let out = |n: &str| dir.join(n);
    let mut rows = Vec::new();
    for (name, mut cmd, file) in [
        (
            "sqlvault snapshot",
            {
                let mut c = Command::new(&bin);
                c.arg("snapshot").arg(&db).arg(out("a.db"));
                c
            },
            out("a.db"),
        ),
        (
            "sqlvault snapshot --vacuum",
            {
                let mut c = Command::new(&bin);
                c.arg("snapshot").arg(&db).arg(out("b.db")).arg("--vacuum");
                c
            },
            out("b.db"),
        ),
        (
            "sqlite3 VACUUM INTO (peer)",
            {
                let mut c = Command::new("sqlite3");
                c.arg(&db).arg(format!("VACUUM INTO '{}'", out("c.db").display()));
                c
            },
            out("c.db"),
        ),
        (
            "sqlite3 .backup (peer)",
            {
                let mut c = Command::new("sqlite3");
                c.arg(&db).arg(format!(".backup '{}'", out("d.db").display()));
                c
            },
            out("d.db"),
        ),
    ] {
        let (secs, ok) = timed(&mut cmd, limit)?;
        let sound = ok && file.exists() && integrity_ok(&file).unwrap_or(false);
        rows.push(format!(
            "| {name} | {} | {} |",
            if ok {
                format!("{secs:.2} s")
            } else {
                format!("did not finish in {secs:.0} s")
            },
            if sound { "yes" } else { "no" }
        ));
    }
    // Freeze around a half-second copy.
    let copy = out("frozen.db");
    let stamp = out("cmd.txt");
    let script = format!(
        "s=$(date +%s.%N); sleep 0.5; cp '{db}' '{copy}'; [ -f '{db}-wal' ] && cp '{db}-wal' '{copy}-wal'; e=$(date +%s.%N); echo \"$s $e\" > '{stamp}'",
        db = db.display(),
        copy = copy.display(),
        stamp = stamp.display()
    );
    writer.reset_longest();
    let o = Command::new(&bin)
        .args(["--json", "freeze"])
        .arg(&db)
        .args(["--timeout", "30", "--", "sh", "-c", &script])
        .output()?;
    if !o.status.success() {
        bail!("freeze failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let wait = writer.longest();
    let commits = writer.stop()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let held = v["held_seconds"].as_f64().unwrap_or(f64::NAN);
    let times = std::fs::read_to_string(&stamp)?;
    let mut it = times.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    let command = it.next().zip(it.next()).map_or(f64::NAN, |(s, e)| e - s);
    let copy_ok = integrity_ok(&copy).unwrap_or(false);
    println!(
        "plain copies of a {size_mib} MiB WAL database while a writer commits 200 transactions/s ({commits} commits in all)"
    );
    println!("| copy | time | finished and passes integrity_check |");
    println!("|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!("freeze around `sleep 0.5; cp DB COPY; cp DB-wal COPY-wal`");
    println!(
        "| command ran | database held | writer's longest commit | held − command | copy passes integrity_check |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {command:.3} s | {held:.3} s | {:.3} s | {:+.0} ms | {} |",
        wait.as_secs_f64(),
        (held - command) * 1e3,
        if copy_ok { "yes" } else { "no" }
    );
    Ok(())
}
