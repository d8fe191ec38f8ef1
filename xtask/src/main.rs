//! `cargo xtask ci | demo | bench | drill | fuzz | gen` — project automation. Drives the real
//! `sqlvault` binary the way a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_daemon;
mod bench_policy;
mod bench_replicate;
mod bench_snapshot;
mod drill;
mod fuzz;
mod fuzz_seeds;
mod tidy;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Formatting, the architecture invariants (tidy), lints, docs, the leaf crates
    /// without their optional features, the whole test suite and the quick drill
    /// matrix (what .ci/run calls). Installs the
    /// test prerequisites (moto, azurite, age, zstd, sqlite3, sqlcipher, sqlcipher3)
    /// when they are missing.
    Ci,
    /// The main job on the embedded default: backup, incremental backup, a SQL-dump
    /// snapshot, restore, verify (every snapshot) and check of a generated database in a
    /// local-disk repository.
    Demo {
        /// Size of the generated database in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
    },
    /// Benchmarks against the sqlite3 .backup + zstd + age pipeline.
    Bench(bench::BenchArgs),
    /// The restore-drill matrix against the built binary: database sizes and journal
    /// modes, a concurrent writer, local disk, S3 (moto) and Azure (azurite), kill -9
    /// during backup, copy and prune, damaged objects, a wrong identity, a store failing
    /// 20% of requests. Writes a JSON report; exit non-zero on any failed scenario.
    Drill(drill::DrillArgs),
    /// Every fuzz target in fuzz/ (each decoder of stored or user-supplied bytes) for
    /// `--seconds` each, then a table of executions, exec/s, coverage and corpus.
    /// Exit non-zero on any crash, naming its input. Not part of `ci`.
    Fuzz(fuzz::FuzzArgs),
    /// The architecture invariants of docs/architecture.md, from `cargo metadata` and
    /// the sources: leaves independent, tokio and clap/anyhow only where allowed, no
    /// environment reads in libraries, no module circles, no overlong file without a
    /// reason. Part of `ci`.
    Tidy,
    /// Generate a realistic test database.
    Gen {
        /// Output path.
        path: PathBuf,
        /// Size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Rollback-journal mode instead of WAL.
        #[arg(long)]
        rollback: bool,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ci => ci(),
        Cmd::Demo { size_mib } => demo(size_mib),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Drill(a) => drill::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Tidy => tidy::run(),
        Cmd::Gen {
            path,
            size_mib,
            rollback,
            seed,
        } => {
            let n = sqlvault_testkit::generate(
                &path,
                &sqlvault_testkit::GenOptions {
                    target_bytes: size_mib << 20,
                    seed,
                    wal: !rollback,
                },
            )?;
            println!("generated {} with {n} orders", path.display());
            Ok(())
        }
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub(crate) fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs what the tests need, from Debian's packages and PyPI, when missing.
fn ensure_test_tools() -> Result<()> {
    let apt: Vec<&str> = [
        ("age", "age"),
        ("zstd", "zstd"),
        ("sqlite3", "sqlite3"),
        ("sqlcipher", "sqlcipher"),
        ("ssh-keygen", "openssh-client"),
        // The runbook's HTML is opened in a real browser (tests/e2e/service_dr.rs).
        ("chromium", "chromium"),
    ]
    .into_iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(_, pkg)| pkg)
    .collect();
    if !apt.is_empty() {
        eprintln!("xtask: installing {apt:?} from Debian's packages");
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        sh(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&apt))?;
    }
    if !have("moto_server") {
        eprintln!("xtask: installing moto[server] from PyPI");
        sh(Command::new("python3").args(["-m", "pip", "install", "-q", "moto[server]"]))?;
    }
    let py_has = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !py_has("azure.storage.blob") {
        eprintln!("xtask: installing azure-storage-blob from PyPI");
        sh(Command::new("python3").args(["-m", "pip", "install", "-q", "azure-storage-blob"]))?;
    }
    // An independent SQLCipher 4 client for the interoperability tests.
    if !py_has("sqlcipher3") {
        eprintln!("xtask: installing sqlcipher3-binary from PyPI");
        sh(Command::new("python3").args(["-m", "pip", "install", "-q", "sqlcipher3-binary"]))?;
    }
    if !have("azurite-blob") {
        eprintln!("xtask: installing azurite from npm");
        sh(Command::new("npm").args(["install", "-g", "--silent", "azurite"]))?;
    }
    if !have("python3") {
        bail!("python3 is required by the tests");
    }
    Ok(())
}

fn ci() -> Result<()> {
    ensure_test_tools()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let r = root();
    sh(Command::new(&cargo).current_dir(&r).args(["fmt", "--all", "--check"]))?;
    tidy::run()?;
    // Every library's docs (their examples run with the tests below) warning-free.
    sh(Command::new(&cargo)
        .current_dir(&r)
        .env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "--workspace", "--no-deps", "--quiet"]))?;
    // The leaf crates as another team reuses them: no cloud SDK, no SQLCipher (the
    // workspace build below unifies every feature on).
    sh(Command::new(&cargo).current_dir(&r).args([
        "test",
        "--quiet",
        "-p",
        "sqlvault-store",
        "-p",
        "sqlvault-sqlite",
    ]))?;
    sh(Command::new(&cargo)
        .current_dir(&r)
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Run the suite, echo it, and close with one summary line over every test binary
    // (cargo's own last line is that of the last binary, often a doc-test with none).
    let mut child = Command::new(&cargo)
        .current_dir(&r)
        .args(["test", "--workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped"))) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .trim()
                        })
                    })
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    // The drill matrix against the built binary, every backend, a fresh seed each run
    // (printed, and in target/drill/report.json, to reproduce a failure).
    drill::run(drill::DrillArgs::quick())
}

pub(crate) fn build_release() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let bin = root().join("target/release/sqlvault");
    if !bin.exists() {
        eprintln!(
            "xtask: building sqlvault in release mode (the first build compiles SQLCipher and OpenSSL: about 5 minutes on 2 cores)"
        );
    }
    // Cargo's own progress (crates compiled, the one building) stays visible: a first
    // build is minutes long and must not look hung.
    sh(Command::new(cargo)
        .current_dir(root())
        .args(["build", "--release", "-p", "sqlvault-cli"]))?;
    Ok(bin)
}

fn demo(size_mib: u64) -> Result<()> {
    let bin = build_release()?;
    let dir = root().join(".sqlvault-demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let home = dir.join("home");
    let run = |args: &[&str]| -> Result<String> {
        println!("$ sqlvault {}", args.join(" "));
        let o = Command::new(&bin)
            .args(args)
            .env("SQLVAULT_HOME", &home)
            .env_remove("SQLVAULT_IDENTITY_FILE")
            .stderr(Stdio::inherit())
            .output()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        print!("{out}");
        if !o.status.success() {
            bail!("sqlvault {} failed with {}", args.join(" "), o.status);
        }
        Ok(out)
    };
    let db = dir.join("shop.db");
    let t = Instant::now();
    sqlvault_testkit::generate(
        &db,
        &sqlvault_testkit::GenOptions {
            target_bytes: size_mib << 20,
            seed: 42,
            wal: true,
        },
    )?;
    println!(
        "generated sample database {} ({size_mib} MiB) in {:.1}s",
        db.display(),
        t.elapsed().as_secs_f64()
    );
    let (key, repo, restored) = (dir.join("key.txt"), dir.join("repo"), dir.join("restored.db"));
    let (key, repo, restored, db) = (
        key.to_str().unwrap(),
        repo.to_str().unwrap(),
        restored.to_str().unwrap(),
        db.to_str().unwrap(),
    );
    let recipient = run(&["key", "generate", "-o", key])?.trim().to_string();
    run(&["init", repo, "-r", &recipient])?;
    run(&["backup", db, repo])?;
    let changed = sqlvault_testkit::update_random(Path::new(db), 0.01, 7)?;
    println!("updated {changed} rows at random");
    run(&["backup", db, repo])?;
    run(&["backup", db, repo, "--kind", "dump"])?;
    run(&["snapshots", repo])?;
    run(&["restore", repo, restored, "-i", key])?;
    run(&["verify", repo, "-i", key, "--all"])?;
    run(&["check", repo, "-i", key, "--read-data"])?;
    println!("demo complete: everything is under {}", dir.display());
    Ok(())
}
