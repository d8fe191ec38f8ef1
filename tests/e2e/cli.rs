//! The command line itself: global flags, exit codes, hints and wording.

use std::path::Path;

use crate::support::{World, kit};

#[test]
fn json_is_global_before_or_after_the_command() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 256 << 10, false);
    let before = w.run(&["--json", "backup", &db, &repo]).ok().json();
    assert!(before["snapshot_id"].is_string(), "{before}");
    let after = w.run(&["backup", &db, &repo, "--json"]).ok().json();
    assert!(after["snapshot_id"].is_string(), "{after}");
    let list = w.run(&["--json", "snapshots", &repo]).ok().json();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2, "{list}");
    // Errors too: a JSON document with the stable code.
    let e = w.run(&["--json", "snapshots", &w.s("nowhere")]).json();
    assert!(e["error"]["code"].is_string(), "{e}");
}

#[test]
fn a_missing_identity_is_a_usage_error_of_its_own() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 256 << 10, false);
    w.run(&["backup", &db, &repo]).ok();
    let r = w.run(&["restore", &repo, &w.s("out.db"), "--json"]).fails(16);
    let j = r.json();
    assert_eq!(j["error"]["code"], "usage.identity-required", "{j}");
    assert!(j["error"]["hint"].as_str().unwrap().contains("-i"), "{j}");
    assert!(r.stderr.lines().any(|l| l.starts_with("hint: ")), "{}", r.stderr);
    assert!(!w.path("out.db").exists());
    // A backup host's write key is no identity either.
    w.run(&["check", &repo]).fails(16);
}

#[test]
fn sqlvault_passphrase_alone_opens_a_passphrase_repository() {
    let w = World::new();
    let repo = w.s("repo");
    let pass = [("SQLVAULT_PASSPHRASE", "correct horse battery staple")];
    w.run_env(&["init", &repo], &pass).ok();
    let db = w.s("app.db");
    kit::generate(Path::new(&db), &Default::default()).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("out.db");
    w.run_env(&["restore", &repo, &out], &pass).ok();
    assert_eq!(
        crate::support::content(Path::new(&out)),
        crate::support::content(Path::new(&db))
    );
    w.run_env(&["verify", &repo, "--no-evidence"], &pass).ok();
    // A host without the write key lists the snapshots with the passphrase alone.
    let other = World::new();
    other.run_env(&["snapshots", &repo], &pass).ok();
    other.run(&["snapshots", &repo]).fails(5);
    // Set, but wrong: a wrong key (5), not a missing one.
    w.run_env(&["restore", &repo, &w.s("o2.db")], &[("SQLVAULT_PASSPHRASE", "wrong")])
        .fails(5);
}

#[test]
fn an_error_a_flag_gets_past_prints_its_hint() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 256 << 10, false);
    w.run(&["backup", &db, &repo]).ok();
    let stranger = w.s("elsewhere/app.db");
    std::fs::create_dir_all(w.path("elsewhere")).unwrap();
    kit::generate(Path::new(&stranger), &Default::default()).unwrap();
    let r = w.run(&["backup", &stranger, &repo]).fails(8);
    let lines: Vec<&str> = r.stderr.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("sqlvault: error:")).unwrap();
    assert!(
        lines
            .get(at + 1)
            .is_some_and(|l| l.starts_with("hint: ") && l.contains("--adopt-name")),
        "{}",
        r.stderr
    );
    let j = w.run(&["backup", &stranger, &repo, "--json"]).fails(8).json();
    assert!(j["error"]["hint"].as_str().unwrap().contains("--adopt-name"), "{j}");
}

#[test]
fn counts_are_singular_for_one_and_times_are_utc() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 256 << 10, false);
    w.run(&["backup", &db, &repo]).ok();
    let r = w.run(&["snapshots", &repo]).ok();
    assert_eq!(r.stdout.lines().last(), Some("1 snapshot"), "{}", r.stdout);
    let j = w.run(&["snapshots", &repo, "--json"]).ok().json();
    let t = j["snapshots"][0]["time"].as_str().unwrap();
    assert!(
        t.ends_with('Z') && t.len() == 20 && r.stdout.contains(t),
        "{t}: {}",
        r.stdout
    );
}

#[test]
fn quiet_keeps_stderr_for_errors() {
    let w = World::new();
    let r = w.run(&["key", "generate", "-o", &w.s("k.txt"), "--quiet"]).ok();
    assert!(r.stdout.starts_with("age1"), "{}", r.stdout);
    assert_eq!(r.stderr, "", "nothing but errors on stderr with --quiet");
    w.run(&["-q", "key", "generate", "-o", &w.s("k.txt")]).fails(8);
}
