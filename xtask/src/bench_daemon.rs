//! `cargo xtask bench --daemon`: the service's overhead with many idle databases.
//!
//! N small WAL databases behind one glob, the daemon (release build) replicating all of
//! them to a local repository with every scheduled job off; once each database's base
//! is shipped, nothing commits for `--seconds`: the daemon's store requests (from its
//! own `/metrics`, and files added to the repository), CPU (user + system, from /proc)
//! and resident memory over that stretch. Litestream's daemon follows the same
//! databases to file replicas in the same run, measured the same way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{BenchArgs, proc_cpu, proc_hwm_kib};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

fn files(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

fn metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    Some(r.split_once("\r\n\r\n")?.1.to_string())
}

fn sum(m: &str, name: &str) -> f64 {
    m.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one daemon cost over the idle stretch.
struct Idle {
    cpu_percent: f64,
    rss_mib: f64,
    hwm_mib: f64,
    requests: Option<f64>,
    files_added: u64,
}

fn measure(pid: u32, repo: &Path, port: Option<u16>, secs: u64) -> Result<Idle> {
    let (c0, f0) = (proc_cpu(pid)?, files(repo));
    let r0 = port.and_then(metrics).map(|m| sum(&m, "sqlvault_requests_total"));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, f1) = (proc_cpu(pid)?, files(repo));
    let r1 = port.and_then(metrics).map(|m| sum(&m, "sqlvault_requests_total"));
    Ok(Idle {
        cpu_percent: (c1 - c0) / t.elapsed().as_secs_f64() * 100.0,
        rss_mib: rss_kib(pid)? as f64 / 1024.0,
        hwm_mib: proc_hwm_kib(pid)? as f64 / 1024.0,
        requests: r0.zip(r1).map(|(a, b)| b - a),
        files_added: f1.saturating_sub(f0),
    })
}

pub(crate) fn run(a: &BenchArgs, n: usize, secs: u64) -> Result<()> {
    let bin = crate::build_release()?;
    let work = a
        .dir
        .clone()
        .unwrap_or_else(|| crate::root().join("target/bench-daemon"));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let tenants = work.join("tenants");
    std::fs::create_dir_all(&tenants)?;
    for i in 0..n {
        sqlvault_testkit::generate(
            &tenants.join(format!("t{i:03}.db")),
            &sqlvault_testkit::GenOptions {
                target_bytes: 64 << 10,
                seed: i as u64,
                wal: true,
            },
        )?;
    }
    let home = work.join("home");
    let key = work.join("key.txt");
    let out = Command::new(&bin)
        .env("SQLVAULT_HOME", &home)
        .args(["key", "generate", "-o"])
        .arg(&key)
        .output()?;
    let rcpt = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let repo = work.join("repo");
    let config = work.join("sqlvault.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nmetrics_addr = \"127.0.0.1:{port}\"\n\n[schedule]\ninterval = \"1s\"\nsnapshot = \"off\"\nverify = \"off\"\ndrill = \"off\"\nprune = \"off\"\n\n[destination.local]\nrepo = \"{}\"\nrecipients = [\"{rcpt}\"]\n\n[[database]]\nglob = \"{}/*.db\"\ndestinations = [\"local\"]\n",
            repo.display(),
            tenants.display()
        ),
    )?;
    let mut daemon = Command::new(&bin)
        .env("SQLVAULT_HOME", &home)
        .args(["daemon", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    loop {
        let shipped = metrics(port).map_or(0, |m| {
            m.lines()
                .filter(|l| l.starts_with("sqlvault_newest_state_timestamp_seconds{") && !l.ends_with(" 0.000"))
                .count()
        });
        if shipped == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(900) {
            let _ = daemon.kill();
            bail!("only {shipped} of {n} databases shipped after 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let startup = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let ours = measure(daemon.id(), &repo, Some(port), secs)?;
    // SAFETY: our child, not yet reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();

    // Litestream on the same databases, each to a file replica.
    let ls_dir = work.join("litestream");
    let mut yml = String::from("dbs:\n");
    for i in 0..n {
        yml.push_str(&format!(
            "  - path: {}\n    replicas:\n      - url: file://{}\n",
            tenants.join(format!("t{i:03}.db")).display(),
            ls_dir.join(format!("t{i:03}")).display()
        ));
    }
    let ls_config = work.join("litestream.yml");
    std::fs::write(&ls_config, yml)?;
    let peer = (|| -> Result<Idle> {
        let mut ls = crate::bench::sh(&format!("exec litestream replicate -config '{}'", ls_config.display()))
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start litestream")?;
        std::thread::sleep(Duration::from_secs(30));
        let r = measure(ls.id(), &ls_dir, None, secs);
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(ls.id() as i32, libc::SIGTERM) };
        let _ = ls.wait();
        r
    })();

    println!("daemon overhead, {n} idle WAL databases, {secs} s without a commit (first bases took {startup:.1} s)");
    println!("| | requests | files added | CPU (% of one core) | RSS | peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| sqlvault daemon | {} | {} | {:.2} | {:.1} MiB | {:.1} MiB |",
        ours.requests.map_or("?".into(), |r| format!("{r:.0}")),
        ours.files_added,
        ours.cpu_percent,
        ours.rss_mib,
        ours.hwm_mib
    );
    match peer {
        Ok(p) => println!(
            "| Litestream | (not counted) | {} | {:.2} | {:.1} MiB | {:.1} MiB |",
            p.files_added, p.cpu_percent, p.rss_mib, p.hwm_mib
        ),
        Err(e) => println!("| Litestream | failed: {e:#} | | | | |"),
    }
    if ours.requests != Some(0.0) || ours.files_added > 0 || ours.cpu_percent >= 1.0 || ours.hwm_mib > 64.0 {
        bail!("target missed: zero requests, CPU < 1% of a core, RSS ≤ 64 MiB");
    }
    Ok(())
}
