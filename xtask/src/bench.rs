//! `cargo xtask bench`: sqlvault against the `sqlite3 .backup` + `zstd -3 -T0` + `age`
//! pipeline, on a generated WAL-mode database, in one run.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Size of the generated database in MiB (the headline rows use ≥ 1024).
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Working directory (databases are reused between runs when present).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Fraction of order rows updated at random for the incremental row.
    #[arg(long, default_value_t = 0.01)]
    update_fraction: f64,
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

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
        }
    }
    total
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
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
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
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
    let compressed = enc.finish()?.len() as u64;
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

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

pub fn run(a: BenchArgs) -> Result<()> {
    for tool in ["sqlite3", "zstd", "age"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} is needed for the peer pipeline (apt-get install {tool})");
        }
    }
    let bin = crate::build_release()?;
    let dir = a.dir.unwrap_or_else(|| crate::root().join("target/bench"));
    fs::create_dir_all(&dir)?;
    let db = dir.join(format!("bench-{}m.db", a.size_mib));
    let pristine = dir.join(format!("bench-{}m.pristine.db", a.size_mib));
    if !pristine.exists() {
        eprintln!("bench: generating a {} MiB WAL-mode database (once)", a.size_mib);
        let t = Instant::now();
        sqlvault_testkit::generate(
            &pristine,
            &sqlvault_testkit::GenOptions {
                target_bytes: a.size_mib << 20,
                seed: 2026,
                wal: true,
            },
        )?;
        eprintln!("bench: generated in {:.1}s", t.elapsed().as_secs_f64());
    }
    fs::copy(&pristine, &db)?;
    let _ = fs::remove_file(dir.join(format!("bench-{}m.db-wal", a.size_mib)));
    let db_size = fs::metadata(&db)?.len();
    let work = dir.join("work");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let home = work.join("home");
    let sv = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).env("SQLVAULT_HOME", &home);
        c
    };
    let key = work.join("key.txt");
    let recipient = measure(sv(&["key", "generate", "-o", key.to_str().unwrap()]).stderr(Stdio::null()))?
        .stdout
        .trim()
        .to_string();
    let (dbs, keys, w) = (db.to_str().unwrap(), key.to_str().unwrap(), work.to_str().unwrap());

    // Peer: sqlite3 .backup, then zstd -3 -T0 | age.
    let peer_backup = measure(&mut sh(&format!("sqlite3 '{dbs}' \".backup '{w}/tmp.db'\"")))?;
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
    let full = measure(&mut sv(&["backup", dbs, repos, "--json"]))?;
    let full_j: Value = serde_json::from_str(&full.stdout)?;
    let repo_size = dir_size(&repo);
    let page_size = full_j["page_size"].as_u64().unwrap_or(4096) as usize;

    // 1% of rows updated at random; the pages that really changed, compressed.
    fs::copy(&db, work.join("before.db"))?;
    let rows = sqlvault_testkit::update_random(&db, a.update_fraction, 99)?;
    checkpoint(&db)?;
    let (changed, total_pages, changed_zstd) = changed_pages(&work.join("before.db"), &db, page_size)?;
    fs::remove_file(work.join("before.db"))?;
    let inc = measure(&mut sv(&["backup", dbs, repos, "--json"]))?;
    let inc_j: Value = serde_json::from_str(&inc.stdout)?;
    let inc_new = inc_j["bytes_new"].as_u64().unwrap_or(0);
    let inc_budget = (changed_zstd as f64 * 1.25) as u64 + (1 << 20);

    // Restore: sqlvault against age -d | zstd -d of the pipeline's output.
    let restored = work.join("restored.db");
    let rest = measure(&mut sv(&[
        "restore",
        repos,
        restored.to_str().unwrap(),
        "-i",
        keys,
        "--json",
    ]))?;
    let rest_j: Value = serde_json::from_str(&rest.stdout)?;
    let peer_restore = measure(&mut sh(&format!(
        "age -d -i '{keys}' '{w}/peer.age' | zstd -q -d -T0 > '{w}/peer.db'"
    )))?;
    fs::remove_file(&restored)?;
    fs::remove_file(work.join("peer.db"))?;
    fs::remove_file(work.join("peer.age"))?;

    let restore_s = rest_j["restore_seconds"].as_f64().unwrap_or(f64::NAN);
    let check_s = rest_j["check_seconds"].as_f64().unwrap_or(f64::NAN);
    let results = json!({
        "db_bytes": db_size,
        "peer": {"backup_wall": peer_backup.wall, "compress_encrypt_wall": peer_compress.wall, "wall": peer_wall, "cpu": peer_cpu, "size": peer_size, "restore_wall": peer_restore.wall, "restore_cpu": peer_restore.cpu},
        "full": {"wall": full.wall, "cpu": full.cpu, "rss_kib": full.rss_kib, "repo_bytes": repo_size, "report": full_j},
        "incremental": {"rows_updated": rows, "pages_changed": changed, "pages_total": total_pages, "changed_zstd_bytes": changed_zstd, "budget_bytes": inc_budget, "wall": inc.wall, "cpu": inc.cpu, "rss_kib": inc.rss_kib, "report": inc_j},
        "restore": {"wall": rest.wall, "cpu": rest.cpu, "rss_kib": rest.rss_kib, "restore_seconds": restore_s, "check_seconds": check_s},
    });
    fs::write(
        dir.join(format!("results-{}m.json", a.size_mib)),
        serde_json::to_vec_pretty(&results)?,
    )?;

    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    println!(
        "## sqlvault bench: {} database ({} pages of {page_size} B), WAL mode\n",
        mib(db_size),
        total_pages
    );
    println!("| measure | sqlvault | peer | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| full backup wall | {:.2} s | {:.2} s (.backup {:.2} s + zstd\\|age {:.2} s) | {:.2}× | ≤ 0.70× ({}) |",
        full.wall,
        peer_wall,
        peer_backup.wall,
        peer_compress.wall,
        full.wall / peer_wall,
        verdict(full.wall <= 0.7 * peer_wall)
    );
    println!(
        "| full backup CPU | {:.2} s | {:.2} s | {:.2}× | |",
        full.cpu,
        peer_cpu,
        full.cpu / peer_cpu
    );
    println!(
        "| stored size | {} | {} | {:.3}× | within 10% ({}) |",
        mib(repo_size),
        mib(peer_size),
        repo_size as f64 / peer_size as f64,
        verdict((repo_size as f64) <= 1.1 * peer_size as f64)
    );
    println!(
        "| incremental stored ({rows} rows updated, {changed} of {total_pages} pages changed) | {} | changed pages zstd -3: {} | {:.2}× | ≤ 1.25× + 1 MiB = {} ({}) |",
        mib(inc_new),
        mib(changed_zstd),
        inc_new as f64 / changed_zstd.max(1) as f64,
        mib(inc_budget),
        verdict(inc_new <= inc_budget)
    );
    println!(
        "| incremental wall | {:.2} s | full backup {:.2} s | {:.2}× | ≤ 0.50× ({}) |",
        inc.wall,
        full.wall,
        inc.wall / full.wall,
        verdict(inc.wall <= 0.5 * full.wall)
    );
    println!(
        "| restore (fetch, decrypt, decompress, write, fsync) | {:.2} s | age -d \\| zstd -d {:.2} s | {:.2}× | ≤ 1.0× ({}) |",
        restore_s,
        peer_restore.wall,
        restore_s / peer_restore.wall,
        verdict(restore_s <= peer_restore.wall)
    );
    println!("| restore integrity_check + logical checksum | {check_s:.2} s | | | timed separately |");
    println!(
        "| peak RSS backup / incremental / restore | {} / {} / {} MiB | | | ≤ 128 MiB ({}) |",
        full.rss_kib / 1024,
        inc.rss_kib / 1024,
        rest.rss_kib / 1024,
        verdict(full.rss_kib.max(inc.rss_kib).max(rest.rss_kib) <= 128 * 1024)
    );
    Ok(())
}
