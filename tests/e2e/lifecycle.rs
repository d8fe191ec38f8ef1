//! forget and prune through the CLI: plans, refusals, exit codes, request counts.

use std::path::Path;

use crate::support::{World, content, files, kit};

fn snapshot_ids(w: &World, repo: &str) -> Vec<String> {
    let v = w.run(&["snapshots", repo, "--json"]).ok().json();
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_plans_by_policy_and_prune_frees_space_in_two_phases() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let mut contents = Vec::new();
    for seed in 0..4 {
        w.run(&["backup", &db, &repo]).ok();
        contents.push(content(Path::new(&db)));
        kit::update_random(Path::new(&db), 0.05, seed).unwrap();
    }
    let ids = snapshot_ids(&w, &repo);
    assert_eq!(ids.len(), 4);

    // No policy, or one that keeps nothing: refused, nothing removed.
    let r = w.run(&["forget", &repo]).fails(2);
    assert!(r.stderr.contains("no policy"), "{}", r.stderr);
    let r = w.run(&["forget", &repo, "--keep-daily", "0"]).fails(2);
    assert!(r.stderr.contains("no policy"), "{}", r.stderr);
    let r = w.run(&["forget", &repo, "--keep-last", "1", "--name", "nope"]).fails(4);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);

    // The plan: newest first, the rule that kept each; nothing removed by a dry run.
    let plan = w
        .run(&["forget", &repo, "--keep-last", "2", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!((plan["kept"].as_u64(), plan["removed"].as_u64()), (Some(2), Some(2)));
    let group = &plan["groups"][0];
    assert_eq!(group["name"], "app.db");
    let snaps = group["snapshots"].as_array().unwrap();
    assert_eq!(snaps[0]["id"].as_str().unwrap(), ids[3], "newest first");
    assert_eq!(snaps[0]["reasons"][0], "last snapshot");
    assert_eq!(snaps[2]["keep"], false);
    assert!(plan["requests"]["list"].as_u64().unwrap() >= 1, "{plan}");
    assert_eq!(plan["requests"]["delete"], 0);
    let text = w.run(&["forget", &repo, "--keep-last", "2", "--dry-run"]).ok().stdout;
    assert!(
        text.contains("keep") && text.contains("remove") && text.contains("last snapshot"),
        "{text}"
    );
    assert_eq!(snapshot_ids(&w, &repo).len(), 4);

    // For real, with prune: the manifests go at once, the data is only marked.
    let size = |dir: &str| -> u64 {
        files(&w.path("repo").join(dir))
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    let before = size("packs");
    let pack_files = files(&w.path("repo").join("packs"));
    let f = w
        .run(&[
            "forget",
            &repo,
            "--keep-last",
            "2",
            "--prune",
            "--no-running-backups",
            "-i",
            &key,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(f["removed"], 2);
    assert_eq!(f["requests"]["delete"], 3, "two manifests and the prune lock: {f}");
    assert_eq!(f["prune"]["deleted"]["packs"], 0);
    assert_eq!(snapshot_ids(&w, &repo), ids[2..].to_vec());
    assert!(pack_files.iter().all(|p| p.exists()), "marking deletes nothing");

    // A backup host holds no identity: it can forget and prune (delete, mark) but not
    // repack; the reason is reported.
    // No backup runs: the marks are deleted at once.
    let p = w
        .run(&[
            "prune",
            &repo,
            "--json",
            "--repack-below",
            "0.99",
            "--no-running-backups",
        ])
        .ok()
        .json();
    assert!(
        p["deleted"]["bytes"].as_u64().unwrap() > 0 || p["deleted"]["indexes"].as_u64().unwrap() > 0,
        "{p}"
    );
    assert!(p["requests"]["delete"].as_u64().unwrap() > 0, "{p}");
    let why = p["repack_skipped"].as_str().unwrap_or_else(|| panic!("{p}"));
    assert!(why.contains("identity"), "{why}");

    // Repack with an identity, then delete what it marked (no backup runs).
    let p = w
        .run(&["prune", &repo, "-i", &key, "--repack-below", "0.99", "--json"])
        .ok()
        .json();
    assert!(p["repacked"].as_u64().unwrap() > 0, "{p}");
    let p = w.run(&["prune", &repo, "-i", &key, "--no-running-backups"]).ok().stdout;
    assert!(p.contains("deleted"), "{p}");
    assert!(size("packs") < before, "{} >= {before}", size("packs"));

    // Both remaining snapshots restore to the content they were taken from.
    for (i, id) in ids[2..].iter().enumerate() {
        let out = w.s(&format!("out{i}.db"));
        w.run(&["restore", &repo, &out, "-i", &key, "--snapshot", id]).ok();
        assert_eq!(content(Path::new(&out)), contents[2 + i]);
    }
    let c = w
        .run(&["check", &repo, "-i", &key, "--read-data", "--json"])
        .ok()
        .json();
    assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c}");
    assert!(c["requests"]["get"].as_u64().unwrap() > 0);

    // After the keys change, prune's state (written for the old set, and not part of
    // `key rewrap`) is still readable by the new key.
    let old = w.run(&["key", "list", &repo, "--json"]).ok().json()["recipients"][0]
        .as_str()
        .unwrap()
        .to_string();
    let key3 = w.s("key3.txt");
    let rcpt3 = w.run(&["key", "generate", "-o", &key3]).ok().stdout.trim().to_string();
    w.run(&["key", "add", &repo, "-r", &rcpt3, "-i", &key]).ok();
    w.run(&["key", "remove", &repo, "-r", &old, "-i", &key3]).ok();
    w.run(&["prune", &repo, "-i", &key3, "--dry-run"]).ok();
}

#[test]
fn one_backup_writes_several_repositories_and_reports_partial_failure() {
    let w = World::new();
    let (r1, r2) = (w.s("r1"), w.s("r2"));
    let (key1, db) = w.setup(&r1, 1 << 20, true);
    // The second repository has a recipient of its own.
    let key2 = w.s("key2.txt");
    let rcpt2 = w.run(&["key", "generate", "-o", &key2]).ok().stdout.trim().to_string();
    w.run(&["init", &r2, "-r", &rcpt2]).ok();
    let missing = w.s("not-a-repo");

    let j = w.run(&["backup", &db, &r1, &r2, "--json"]).ok().json();
    assert_eq!((j["ok"].as_bool(), j["succeeded"].as_u64()), (Some(true), Some(2)));
    let d = j["destinations"].as_array().unwrap();
    assert_eq!(d[0]["repo"].as_str(), Some(r1.as_str()));
    assert_eq!(d[1]["report"]["requests"]["list"], 0, "a backup never lists");
    assert_eq!(d[0]["report"]["chunks_total"], d[1]["report"]["chunks_total"]);
    // Same database state in both (read once), different keys.
    let before = content(Path::new(&db));

    kit::update_random(Path::new(&db), 0.02, 9).unwrap();
    let r = w.run(&["backup", &db, &r1, &missing, &r2, "--json"]).fails(10);
    let j = r.json();
    assert_eq!((j["succeeded"].as_u64(), j["failed"].as_u64()), (Some(2), Some(1)));
    let d = j["destinations"].as_array().unwrap();
    assert_eq!(
        (d[0]["ok"].as_bool(), d[1]["ok"].as_bool(), d[2]["ok"].as_bool()),
        (Some(true), Some(false), Some(true))
    );
    assert_eq!(d[1]["error"]["code"], "repo.not-found");
    assert!(
        r.stderr.contains("partial backup") && r.stderr.contains("not-a-repo"),
        "{}",
        r.stderr
    );
    assert!(
        d[2]["report"]["chunks_new"].as_u64().unwrap() < d[2]["report"]["chunks_total"].as_u64().unwrap() / 2,
        "incremental in each repository"
    );
    let after = content(Path::new(&db));

    // Total failure: the first destination's error and its exit code.
    let r = w.run(&["backup", &db, &missing, &w.s("also-missing")]).fails(4);
    assert!(r.stderr.contains("all 2 destinations"), "{}", r.stderr);
    // A source that is not a database fails before any destination is touched.
    let junk = w.s("junk.db");
    std::fs::write(&junk, b"not a database at all, just bytes").unwrap();
    w.run(&["backup", &junk, &r1, &r2]).fails(7);

    for (repo, key) in [(&r1, &key1), (&r2, &key2)] {
        let snaps = snapshot_ids(&w, repo);
        assert_eq!(snaps.len(), 2, "{repo}");
        for (id, want) in snaps.iter().zip([&before, &after]) {
            let out = w.s("out.db");
            w.run(&["restore", repo, &out, "-i", key, "--snapshot", id, "--force"])
                .ok();
            assert_eq!(&content(Path::new(&out)), want);
        }
    }
    // Each repository's key opens only its own repository.
    w.run(&["snapshots", &r2, "-i", &key1]).fails(5);
}

#[test]
fn copy_moves_snapshots_to_a_repository_with_other_keys() {
    let w = World::new();
    let (r1, r2) = (w.s("r1"), w.s("r2"));
    let (key1, db) = w.setup(&r1, 1 << 20, true);
    let key2 = w.s("key2.txt");
    let rcpt2 = w.run(&["key", "generate", "-o", &key2]).ok().stdout.trim().to_string();
    let fp2 = w.run(&["init", &r2, "-r", &rcpt2, "--json"]).ok().json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let mut contents = Vec::new();
    for seed in 0..2 {
        w.run(&["backup", &db, &r1]).ok();
        contents.push(content(Path::new(&db)));
        kit::update_random(Path::new(&db), 0.05, seed).unwrap();
    }
    let ids = snapshot_ids(&w, &r1);

    // Reading the source needs its identity (a usage error without one); the wrong one
    // is refused.
    w.run(&["copy", &r1, &r2]).fails(16);
    w.run(&["copy", &r1, &r2, "-i", &key2]).fails(5);
    let r = w
        .run(&["copy", &r1, &r2, "-i", &key1, "--snapshot", "ffffffff"])
        .fails(4);
    assert!(r.stderr.contains("ffffffff"), "{}", r.stderr);
    // A host without the destination's write key is told how to get one.
    let other = World::new();
    let r = other.run(&["copy", &r1, &r2, "-i", &key1]).fails(5);
    assert!(r.stderr.contains("join"), "{}", r.stderr);

    let j = w.run(&["copy", &r1, &r2, "-i", &key1, "--json"]).ok().json();
    let copied = j["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 2, "{j}");
    assert!(
        copied[1]["chunks_sent"].as_u64().unwrap() < copied[1]["chunks_total"].as_u64().unwrap() / 2,
        "the second snapshot sends only what changed: {j}"
    );
    assert!(j["requests"]["put"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(snapshot_ids(&w, &r2), ids, "same ids, same order");
    for (id, want) in ids.iter().zip(&contents) {
        let out = w.s("out.db");
        w.run(&["restore", &r2, &out, "-i", &key2, "--snapshot", id, "--force"])
            .ok();
        assert_eq!(&content(Path::new(&out)), want);
    }
    // The destination's key cannot read the source, and the other way round.
    w.run(&["snapshots", &r1, "-i", &key2]).fails(5);
    w.run(&["restore", &r2, &w.s("x.db"), "-i", &key1]).fails(5);

    // Run again: nothing to send.
    let j = w.run(&["copy", &r1, &r2, "-i", &key1, "--json"]).ok().json();
    assert_eq!(j["copied"].as_array().unwrap().len(), 0, "{j}");
    assert_eq!(j["already_present"].as_array().unwrap().len(), 2, "{j}");
    assert_eq!(j["requests"]["put"], 0, "{j}");
    let text = w.run(&["copy", &r1, &r2, "-i", &key1]).ok().stdout;
    assert!(text.contains("0 snapshots copied, 2 already in"), "{text}");
    w.run(&["check", &r2, "-i", &key2, "--read-data"]).ok();

    // The other host joins the destination and can copy into it too.
    let j = other
        .run_env(
            &["join", &r2, "-i", &key2, "--json"],
            &[("SQLVAULT_REPO_FINGERPRINT", &fp2)],
        )
        .ok()
        .json();
    assert!(j["requests"]["get"].as_u64().unwrap() >= 2, "{j}");
    let j = other.run(&["copy", &r1, &r2, "-i", &key1, "--json"]).ok().json();
    assert_eq!(j["already_present"].as_array().unwrap().len(), 2, "{j}");
}

#[test]
fn two_backups_of_one_database_at_once_both_commit_valid_snapshots() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 6 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    kit::update_random(Path::new(&db), 0.1, 3).unwrap();
    // Two processes, same database name, same repository, same host caches.
    let spawn = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sqlvault"));
        c.args(["backup", &db, &repo, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in &w.env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut committed = 0;
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if out.status.success() {
            committed += 1;
        } else {
            // Failing is allowed only cleanly: one error line.
            assert_eq!(
                stderr.lines().filter(|l| l.starts_with("sqlvault: error:")).count(),
                1,
                "{stderr}"
            );
        }
    }
    assert!(committed >= 1);
    let ids = snapshot_ids(&w, &repo);
    assert_eq!(ids.len(), 1 + committed);
    // Every snapshot restores to the content it was taken of; the next backup (whose
    // parent cache one of the two wrote) too.
    let now = content(Path::new(&db));
    kit::update_random(Path::new(&db), 0.02, 4).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    let last = content(Path::new(&db));
    let ids = snapshot_ids(&w, &repo);
    for (i, id) in ids.iter().enumerate() {
        let out = w.s("out.db");
        w.run(&["restore", &repo, &out, "-i", &key, "--snapshot", id, "--force"])
            .ok();
        if i > 0 && i < ids.len() - 1 {
            assert_eq!(content(Path::new(&out)), now);
        }
    }
    let out = w.s("out.db");
    w.run(&["restore", &repo, &out, "-i", &key, "--force"]).ok();
    assert_eq!(content(Path::new(&out)), last);
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
}

#[test]
fn a_damaged_prune_state_stops_prune_until_reset_while_backups_go_on() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 256 << 10, true);
    for seed in 0..2 {
        w.run(&["backup", &db, &repo]).ok();
        kit::update_random(Path::new(&db), 0.3, seed).unwrap();
    }
    // Forget one snapshot and repack what it leaves half-used: the old packs are marked.
    w.run(&["forget", &repo, "--keep-last", "1"]).ok();
    let f = w
        .run(&["prune", &repo, "-i", &key, "--repack-below", "0.99", "--json"])
        .ok()
        .json();
    let marked = f["marked"].clone();
    assert!(marked["packs"].as_u64().unwrap() > 0, "{f}");

    let state = w.path("repo/prune/pending");
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    let r = w.run(&["prune", &repo, "-i", &key]).fails(6);
    assert!(
        r.stderr.contains("prune/pending") && r.stderr.contains("--reset-damaged-state"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        good[..good.len() / 2],
        "refused, unchanged"
    );

    // Backups go on, trusting none of the stored data while they cannot read the marks.
    w.run(&["backup", &db, &repo]).ok();

    // Reset: a new state replaces the damaged one and nothing is deleted (the marks,
    // and with them any ripeness, are gone); prune works again without the flag.
    let p = w
        .run(&["prune", &repo, "-i", &key, "--reset-damaged-state", "--json"])
        .ok()
        .json();
    assert_eq!(p["deleted"]["packs"], 0, "{p} (marked before: {marked})");
    assert_ne!(
        std::fs::read(&state).unwrap(),
        good[..good.len() / 2],
        "state rewritten"
    );
    let p = w.run(&["prune", &repo, "-i", &key, "--json"]).ok().json();
    assert_eq!(p["deleted"]["packs"], 0, "{p}");
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();
    w.run(&["check", &repo, "-i", &key, "--read-data"]).ok();
}

#[test]
fn check_cost_counts_every_object_and_the_requests_incrementals_made() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 1 << 20, true);
    // Before any incremental: no typical backup to report, and no invented one.
    w.run(&["backup", &db, &repo]).ok();
    let v = w.run(&["check", "--cost", &repo, "--json"]).ok().json();
    assert!(v["typical_incremental"].is_null(), "{v}");

    let mut own: Vec<serde_json::Value> = Vec::new();
    for seed in 0..3 {
        kit::update_random(Path::new(&db), 0.02, seed).unwrap();
        own.push(w.run(&["backup", &db, &repo, "--json"]).ok().json());
    }
    // A write key is enough: no identity given.
    let v = w.run(&["check", "--cost", &repo, "--json"]).ok().json();
    assert_eq!(v["snapshots"], 4);
    assert_eq!(v["incremental_snapshots"], 3);

    // Every object counted once, by the kind its key starts with, bytes as stored.
    let root = w.path("repo");
    let on_disk = files(&root);
    assert_eq!(v["objects"].as_u64().unwrap(), on_disk.len() as u64, "{v}");
    let bytes: u64 = on_disk.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(v["bytes"].as_u64().unwrap(), bytes);
    let packs = v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "packs")
        .unwrap();
    let pack_files = on_disk.iter().filter(|p| p.starts_with(root.join("packs"))).count();
    assert_eq!(packs["objects"].as_u64().unwrap(), pack_files as u64);

    // The typical incremental is what the backups themselves reported, less opening the
    // repository (which `open_requests` gives), as the median of the three.
    let t = &v["typical_incremental"];
    assert_eq!(t["sampled"], 3);
    let open = &v["open_requests"];
    for kind in ["put", "get", "head", "list"] {
        let mut seen: Vec<u64> = own
            .iter()
            .map(|b| b["requests"][kind].as_u64().unwrap() - open[kind].as_u64().unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(t["requests"][kind].as_u64().unwrap(), seen[1], "{kind}: {v} vs {own:?}");
    }
    assert!(
        t["requests"]["put"].as_u64().unwrap() >= 3,
        "pack, index, map and manifest at least: {t}"
    );
    let mut uploaded: Vec<u64> = own.iter().map(|b| b["bytes_new"].as_u64().unwrap()).collect();
    uploaded.sort_unstable();
    // The manifest records what went before it; the backup's report adds the manifest.
    assert!(t["bytes_new"].as_u64().unwrap() < uploaded[2], "{t} vs {uploaded:?}");
    assert!(t["bytes_new"].as_u64().unwrap() > 0);

    let text = w.run(&["check", "--cost", &repo]).ok().stdout;
    assert!(
        text.contains("typical incremental backup (median of the newest 3)"),
        "{text}"
    );
    assert!(text.contains("hourly, a month"), "{text}");
}
