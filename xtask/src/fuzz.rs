//! `cargo xtask fuzz`: every fuzz target in `fuzz/` (cargo-fuzz layout, its own
//! workspace) for a fixed time each, then one table: executions, executions a second,
//! coverage and corpus per target. Exits non-zero on any crash, naming its artifact.
//!
//! The targets need libFuzzer's `-Z` flags, which this stable toolchain accepts only
//! with `RUSTC_BOOTSTRAP=1`: that variable is set on the `cargo fuzz` child processes
//! and nowhere else, so the normal build never sees it.
//!
//! libFuzzer grows its corpus in `fuzz/work/corpus/<target>/` (ignored by git) and reads
//! the committed seeds in `fuzz/corpus/<target>/` (valid encodings made by the real
//! encoders; `--write-seeds` regenerates them). Crashes land in
//! `fuzz/artifacts/<target>/`; each one found becomes a regression test in the crate
//! that owns the decoder.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{root, sh};

/// Every target, and the feature of the fuzz crate it needs: `sqlite` (SQLCipher and
/// OpenSSL) or `engine` (that and the object-store clients), long first builds kept in
/// `fuzz/target-engine/`, run last.
const TARGETS: &[(&str, Option<&str>)] = &[
    ("marker", None),
    ("config", None),
    ("recipient_set", None),
    ("manifest", None),
    ("pagemap", None),
    ("index", None),
    ("pack_trailer", None),
    ("entries", None),
    ("chunkseq", None),
    ("ids_keys", None),
    ("cdc", None),
    ("load", Some("sqlite")),
    ("wal", Some("sqlite")),
    ("evidence", Some("engine")),
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fuzz only this target (repeatable); the default is all of them.
    #[arg(long)]
    target: Vec<String>,
    /// libFuzzer's limit on one input, in seconds: a slower input is reported as a hang.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Rewrite the committed seed corpus (fuzz/corpus/) from the real encoders, then stop.
    #[arg(long)]
    write_seeds: bool,
}

/// What libFuzzer said about one run.
#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    exec_per_sec: u64,
    cov: u64,
    features: u64,
    corpus_units: u64,
    corpus_bytes: String,
    peak_rss_mb: u64,
}

struct Outcome {
    target: &'static str,
    stats: Stats,
    /// `None` when the run ended cleanly; else what went wrong (with the artifact).
    failure: Option<String>,
}

pub fn run(a: FuzzArgs) -> Result<()> {
    let fuzz = root().join("fuzz");
    if a.write_seeds {
        return crate::fuzz_seeds::write(&fuzz.join("corpus"));
    }
    for t in &a.target {
        if !TARGETS.iter().any(|(n, _)| n == t) {
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            bail!("no fuzz target {t:?}; there are {}", names.join(", "));
        }
    }
    ensure_cargo_fuzz()?;
    let mut outcomes = Vec::new();
    for &(target, feature) in TARGETS {
        if !a.target.is_empty() && !a.target.iter().any(|t| t == target) {
            continue;
        }
        outcomes.push(run_one(&fuzz, target, feature, &a)?);
    }
    println!();
    println!(
        "{:<14} {:>12} {:>9} {:>6} {:>7} {:>16} {:>8}  result",
        "target", "executions", "exec/s", "cov", "ft", "corpus", "rss MB"
    );
    for o in &outcomes {
        let s = &o.stats;
        println!(
            "{:<14} {:>12} {:>9} {:>6} {:>7} {:>16} {:>8}  {}",
            o.target,
            s.execs,
            s.exec_per_sec,
            s.cov,
            s.features,
            format!("{} / {}", s.corpus_units, s.corpus_bytes),
            s.peak_rss_mb,
            if o.failure.is_some() { "CRASH" } else { "ok" }
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if !failed.is_empty() {
        for o in &failed {
            eprintln!("{}: {}", o.target, o.failure.as_deref().unwrap_or_default());
        }
        bail!(
            "{} fuzz target(s) crashed: reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT`, \
             then add the input as a regression test in the crate that owns the decoder",
            failed.len()
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("xtask: installing cargo-fuzz");
        sh(Command::new(&cargo).args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn run_one(fuzz: &Path, target: &'static str, feature: Option<&str>, a: &FuzzArgs) -> Result<Outcome> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Absolute paths throughout: the load target changes its working directory.
    let work = fuzz.join("work");
    let grown = work.join("corpus").join(target);
    let seeds = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    let logs = work.join("logs");
    for d in [&grown, &seeds, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let sandbox = work.join("sandbox").join(target);
    let log_path = logs.join(format!("{target}.log"));
    eprintln!(
        "xtask: fuzzing {target} for {} s (log: {})",
        a.seconds,
        log_path.display()
    );
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root())
        .args(["fuzz", "run", "--fuzz-dir"])
        .arg(fuzz)
        .arg(target);
    if let Some(feature) = feature {
        // Their own target directory, so switching features never rebuilds the others.
        cmd.args(["--features", feature, "--target-dir"])
            .arg(fuzz.join("target-engine"));
    }
    cmd.arg(&grown)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", a.seconds))
        .arg(format!("-timeout={}", a.timeout))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // Only this child: libFuzzer's flags need it on the stable toolchain.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("SQLVAULT_FUZZ_SANDBOX", &sandbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    // libFuzzer reports on stderr, cargo's build too; the target's own stdout is
    // merged into the same log.
    let stdout = child.stdout.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut log = std::fs::File::create(&log_path).with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut stats = Stats::default();
    let mut artifact = None;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        parse_line(&line, &mut stats);
        if let Some(p) = line.split("Test unit written to ").nth(1) {
            artifact = Some(p.trim().to_string());
        }
        if line.starts_with("error") || line.starts_with("==") && line.contains("ERROR") {
            eprintln!("  {line}");
        }
        tail.push(line);
        if tail.len() > 60 {
            tail.remove(0);
        }
    }
    for line in out_thread.join().unwrap_or_default() {
        writeln!(log, "{line}")?;
    }
    let status = child.wait()?;
    let failure = if status.success() {
        None
    } else {
        eprintln!("---- last lines of {} ----", log_path.display());
        for l in &tail {
            eprintln!("{l}");
        }
        Some(match artifact {
            Some(p) => format!("crashed ({status}); input saved as {p}"),
            None if stats.execs == 0 && stats.cov == 0 => {
                format!("did not run ({status}): see {}", log_path.display())
            }
            None => format!("failed ({status}) without an artifact: see {}", log_path.display()),
        })
    };
    Ok(Outcome { target, stats, failure })
}

/// Reads libFuzzer's status lines (`#N DONE cov: C ft: F corp: U/Sb … exec/s: E rss: RMb`)
/// and its final `stat::` lines.
fn parse_line(line: &str, s: &mut Stats) {
    let num = |v: &str| v.trim().trim_end_matches("Mb").parse::<u64>().unwrap_or(0);
    if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
        s.execs = num(v);
    } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
        s.exec_per_sec = num(v);
    } else if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
        s.peak_rss_mb = num(v);
    } else if line.starts_with('#') && line.contains(" cov: ") {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "cov:" => s.cov = words.next().map(num).unwrap_or(s.cov),
                "ft:" => s.features = words.next().map(num).unwrap_or(s.features),
                "corp:" => {
                    if let Some((units, bytes)) = words.next().and_then(|c| c.split_once('/')) {
                        s.corpus_units = num(units);
                        s.corpus_bytes = bytes.to_string();
                    }
                }
                _ => {}
            }
        }
        if let Some(n) = line.split_whitespace().next().and_then(|w| w.strip_prefix('#')) {
            s.execs = s.execs.max(num(n));
        }
    }
}

/// An empty `corpus/<target>` directory for the seeds writer.
pub(crate) fn seed_dir(corpus: &Path, target: &str) -> Result<PathBuf> {
    let d = corpus.join(target);
    if d.exists() {
        std::fs::remove_dir_all(&d).with_context(|| format!("cannot clear {}", d.display()))?;
    }
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_status_and_final_stats_are_read() {
        let mut s = Stats::default();
        for l in [
            "#1048576\tpulse  cov: 120 ft: 300 corp: 40/2048b lim: 4096 exec/s: 349525 rss: 60Mb",
            "#2000000\tDONE   cov: 131 ft: 342 corp: 52/3Kb lim: 4096 exec/s: 33333 rss: 61Mb",
            "Done 2000000 runs in 61 second(s)",
            "stat::number_of_executed_units: 2000001",
            "stat::average_exec_per_sec:     32786",
            "stat::new_units_added:          12",
            "stat::peak_rss_mb:              61",
        ] {
            parse_line(l, &mut s);
        }
        assert_eq!((s.execs, s.exec_per_sec, s.cov, s.features), (2000001, 32786, 131, 342));
        assert_eq!(
            (s.corpus_units, s.corpus_bytes.as_str(), s.peak_rss_mb),
            (52, "3Kb", 61)
        );
    }
}
