//! `cargo xtask tidy`: the architecture invariants of docs/architecture.md, checked
//! from `cargo metadata` and the sources, so that a change that breaks one fails CI
//! instead of waiting for a reviewer to notice.
//!
//! - the leaf crates (format, sqlite, compress, crypt, store, policy) depend on no other
//!   sqlvault crate, and no library depends on the binary or on xtask;
//! - tokio only in the crates allowed to be async (store, engine, service, the binary, test
//!   support and xtask);
//! - clap and anyhow only in binaries (the CLI and xtask);
//! - no library reads the process environment (`std::env::var`, `temp_dir`,
//!   `current_dir`, …): the binary builds the engine's `Session`;
//! - no source file longer than [`MAX_LINES`] unless it says why, in a comment
//!   holding `tidy: long file` and the reason;
//! - no import circle between the modules of a library crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The crates at the bottom of the graph: reusable alone.
const LEAVES: &[&str] = &[
    "sqlvault-format",
    "sqlvault-sqlite",
    "sqlvault-compress",
    "sqlvault-crypt",
    "sqlvault-store",
    "sqlvault-policy",
];

/// Library crates: no environment reads, no clap or anyhow.
const LIBRARIES: &[&str] = &[
    "sqlvault-format",
    "sqlvault-sqlite",
    "sqlvault-compress",
    "sqlvault-crypt",
    "sqlvault-store",
    "sqlvault-engine",
    "sqlvault-policy",
];

/// Where tokio may appear as a normal dependency.
const ASYNC_ALLOWED: &[&str] = &[
    "sqlvault-store",
    "sqlvault-engine",
    "sqlvault-service",
    "sqlvault-cli",
    "sqlvault-testkit",
    "xtask",
];

/// Where clap and anyhow may appear as normal dependencies.
const BINARIES: &[&str] = &["sqlvault-cli", "xtask"];

/// Longer files must say why.
pub const MAX_LINES: usize = 1000;

/// Environment reads a library must not make.
const ENV_READS: &[&str] = &[
    "env::var",
    "env::temp_dir",
    "env::current_dir",
    "env::home_dir",
    "env::set_var",
    "env::remove_var",
    // object_store's builders read AWS_*, GOOGLE_*, AZURE_* themselves.
    "::from_env(",
];

pub fn run() -> Result<()> {
    let problems = check(&crate::root())?;
    if problems.is_empty() {
        println!("tidy: every architecture invariant holds");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    bail!(
        "{} architecture invariant(s) broken (docs/architecture.md)",
        problems.len()
    )
}

/// Every broken invariant, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let mut src_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default().to_string();
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
        src_dirs.insert(name.clone(), manifest.parent().unwrap_or(root).join("src"));
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            // Normal and build dependencies: what a user of the crate pulls in.
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            let d = dep["name"].as_str().unwrap_or_default();
            if LEAVES.contains(&name.as_str()) && d.starts_with("sqlvault-") {
                problems.push(format!("{name} is a leaf crate but depends on {d}"));
            }
            if (d == "sqlvault-cli" || d == "xtask") && name != "xtask" {
                problems.push(format!("{name} depends on the binary crate {d}"));
            }
            if d == "tokio" && !ASYNC_ALLOWED.contains(&name.as_str()) {
                problems.push(format!("{name} depends on tokio; only {ASYNC_ALLOWED:?} may"));
            }
            if (d == "clap" || d == "anyhow") && !BINARIES.contains(&name.as_str()) {
                problems.push(format!("{name} depends on {d}; only the binaries {BINARIES:?} may"));
            }
        }
    }
    for lib in LIBRARIES {
        let Some(dir) = src_dirs.get(*lib) else {
            problems.push(format!("library {lib} is not in the workspace"));
            continue;
        };
        for file in rust_files(dir)? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
            for (n, line) in non_test_lines(&text) {
                let code = line.split("//").next().unwrap_or("");
                if let Some(r) = ENV_READS.iter().find(|r| code.contains(*r)) {
                    problems.push(format!(
                        "{shown}:{n}: a library reads the environment ({}…): take it from the caller (the engine's Session)",
                        r.trim_end_matches('(').trim_start_matches("::")
                    ));
                }
            }
        }
        problems.extend(module_cycles(lib, dir)?);
    }
    for dir in ["crates", "xtask", "tests"] {
        for file in rust_files(&root.join(dir))? {
            let text = std::fs::read_to_string(&file)?;
            let lines = text.lines().count();
            if lines > MAX_LINES && !text.contains("tidy: long file") {
                problems.push(format!(
                    "{} has {lines} lines (more than {MAX_LINES}): split it, or say why in a `tidy: long file` comment",
                    file.strip_prefix(root).unwrap_or(&file).display()
                ));
            }
        }
    }
    Ok(problems)
}

/// The `.rs` files under `dir`, recursively, skipping build output.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target" || n == "fuzz") {
                    continue;
                }
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Numbered lines of `text` outside `#[cfg(test)]` modules (unit tests may set up
/// whatever they need).
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut skip_from_brace: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if skip_from_brace.is_none() {
            if t.starts_with("#[cfg(test)]") {
                pending_test = true;
                continue;
            }
            if pending_test && t.starts_with("mod ") && t.ends_with('{') {
                skip_from_brace = Some(depth);
                depth += 1;
                pending_test = false;
                continue;
            }
            pending_test = false;
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        if let Some(base) = skip_from_brace {
            depth = (depth + opens).saturating_sub(closes);
            if depth <= base {
                skip_from_brace = None;
            }
            continue;
        }
        depth = (depth + opens).saturating_sub(closes);
        out.push((i + 1, line));
    }
    out
}

/// Import circles between the top-level modules of a crate (`a` uses `crate::b`, which
/// uses `crate::a`, directly or through others).
fn module_cycles(krate: &str, src: &Path) -> Result<Vec<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(src)? {
        let p = e?.path();
        if let Some(stem) = p.file_stem().and_then(|s| s.to_str())
            && p.extension().is_some_and(|x| x == "rs")
            && stem != "lib"
            && stem != "main"
        {
            modules.insert(stem.to_string());
        }
    }
    for m in &modules {
        let text = std::fs::read_to_string(src.join(format!("{m}.rs")))?;
        let mut uses = BTreeSet::new();
        for (_, line) in non_test_lines(&text) {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != *m && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
        graph.insert(m.clone(), uses);
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first from each module, reporting each circle once (by its members).
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in &graph[&at] {
                if next == start {
                    let mut members = path.clone();
                    members.sort();
                    found.insert(members);
                } else if !path.contains(next) && path.len() < 8 {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|members| {
            format!(
                "{krate}: modules {} import each other in a circle: move what they share below them",
                members.join(", ")
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_modules_are_not_scanned() {
        let text = "fn a() { std::env::var(\"X\"); }\n#[cfg(test)]\nmod tests {\n    fn b() {\n        std::env::set_var(\"X\", \"1\");\n    }\n}\nfn c() {}\n";
        let lines: Vec<usize> = non_test_lines(text).into_iter().map(|(n, _)| n).collect();
        assert_eq!(lines, vec![1, 8]);
    }

    #[test]
    fn a_circle_is_found_and_a_chain_is_not() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
        std::fs::write(dir.join("a.rs"), "use crate::b::X;").unwrap();
        std::fs::write(dir.join("b.rs"), "use crate::c::Y;").unwrap();
        std::fs::write(dir.join("c.rs"), "pub struct Y;").unwrap();
        assert!(module_cycles("k", &dir).unwrap().is_empty());
        std::fs::write(dir.join("c.rs"), "use crate::a::Z;").unwrap();
        let found = module_cycles("k", &dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a, b, c"), "{found:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xtask-tidy-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
