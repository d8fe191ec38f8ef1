//! `sqlvault drill`: the newest snapshot of each database restored, verified, timed and
//! logged, failures included, with the exit code saying whether all went well.

use std::path::Path;

use crate::support::{World, files, kit, mode};

fn log_lines(p: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn drill_restores_the_newest_snapshot_of_each_database_and_logs_every_outcome() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    kit::update_random(Path::new(&db), 0.05, 1).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    w.run(&["backup", &db, &repo, "--kind", "dump", "--name", "app.sql"])
        .ok();
    let snaps = w.run(&["snapshots", &repo, "--json"]).ok().json();
    let newest_pages = snaps["snapshots"][1]["id"].as_str().unwrap().to_string();
    let log = w.s("logs/drill.jsonl");
    let scratch = w.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let scratch = scratch.display().to_string();

    let audit = || w.run(&["audit", &db, "--repo", &repo, "-i", &key, "--json"]).stdout;
    assert!(audit().contains("repo.never-verified"));

    let j = w
        .run(&[
            "drill",
            &repo,
            "-i",
            &key,
            "--log",
            &log,
            "--scratch",
            &scratch,
            "--record",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(j["ok"], true, "{j}");
    let recs = j["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "one per database name: {j}");
    assert_eq!(
        (recs[0]["name"].as_str(), recs[0]["snapshot_id"].as_str()),
        (Some("app.db"), Some(newest_pages.as_str())),
        "the newest snapshot of app.db"
    );
    assert_eq!(recs[1]["name"], "app.sql");
    assert!(recs[0]["bytes"].as_u64().unwrap() > 0);
    assert!(recs[0]["evidence_object"].as_str().unwrap().starts_with("evidence/"));
    assert!(j["requests"]["get"].as_u64().unwrap() > 0);
    // The log: one line per database, 0600, with the RPO, RTO and checks.
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 2);
    assert_eq!(mode(Path::new(&log)), 0o600);
    for l in &lines {
        assert_eq!(
            (l["kind"].as_str(), l["ok"].as_bool()),
            (Some("drill"), Some(true)),
            "{l}"
        );
        assert!(l["rpo_seconds"].as_f64().unwrap() >= 0.0, "{l}");
        assert!(l["restore_seconds"].as_f64().unwrap() > 0.0, "{l}");
        let checks: Vec<&str> = l["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(
            checks.contains(&"integrity_check") && checks.contains(&"logical_checksum"),
            "{l}"
        );
    }
    assert!(
        files(Path::new(&scratch)).is_empty(),
        "nothing left in the scratch directory"
    );
    // The repository's evidence counts for the audit: verified recently.
    let after = audit();
    assert!(!after.contains("repo.never-verified"), "{after}");

    let text = w
        .run(&["drill", &repo, "-i", &key, "--name", "app.db", "--log", &log])
        .ok()
        .stdout;
    assert!(
        text.contains("app.db") && text.contains(": ok") && !text.contains("app.sql"),
        "{text}"
    );
    assert_eq!(log_lines(&log).len(), 3);

    // Failures exit non-zero and are logged too: no such name, wrong identity.
    w.run(&["drill", &repo, "-i", &key, "--name", "nope", "--log", &log])
        .fails(4);
    let other = w.s("other.txt");
    w.run(&["key", "generate", "-o", &other]).ok();
    w.run(&["drill", &repo, "-i", &other, "--log", &log]).fails(5);
    w.run(&[
        "drill",
        &repo,
        "-i",
        &key,
        "--log",
        &log,
        "--scratch",
        &w.s("no/such/dir"),
    ])
    .fails(9);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["code"], "io", "{}", lines[5]);
    assert_eq!(
        (lines[3]["ok"].as_bool(), lines[3]["code"].as_str()),
        (Some(false), Some("snapshot.not-found"))
    );
    assert_eq!(lines[4]["ok"], false);

    // A damaged pack: the drill fails with exit 6, the log says which snapshot and why.
    for p in files(&w.path("repo/packs")) {
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    }
    let r = w
        .run(&["drill", &repo, "-i", &key, "--log", &log, "--scratch", &scratch])
        .fails(6);
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
    let lines = log_lines(&log);
    let last = &lines[lines.len() - 1];
    assert_eq!(last["ok"], false);
    assert!(last["error"].as_str().unwrap().contains("pack"), "{last}");
    assert!(
        files(Path::new(&scratch)).is_empty(),
        "a failed drill leaves nothing behind"
    );
}
