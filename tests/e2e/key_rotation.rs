//! Key management: `key add`/`key remove` publish a signed recipient set that backup
//! hosts adopt; `key rewrap` re-encrypts every object so a removed key truly loses
//! access, resumably; a forged set is refused; no key-handling command ever prints a
//! secret, even with trace logging.

use std::path::Path;

use crate::support::{World, assert_no_secret, kit};

fn new_key(w: &World, name: &str) -> (String, String) {
    let p = w.s(name);
    let r = w.run(&["key", "generate", "-o", &p]).ok();
    (p, r.stdout.trim().to_string())
}

/// Whether `identity` can decrypt any object under `dir` of the repository.
fn readable_by(repo: &Path, dir: &str, identity: &str) -> usize {
    let ids = sqlvault_engine::crypt::Identities::from_file(Path::new(identity)).unwrap();
    std::fs::read_dir(repo.join(dir))
        .unwrap()
        .flatten()
        .filter(|e| sqlvault_engine::crypt::decrypt_to_vec(&ids, &std::fs::read(e.path()).unwrap()).is_ok())
        .count()
}

fn count(repo: &Path, dir: &str) -> usize {
    std::fs::read_dir(repo.join(dir)).unwrap().count()
}

#[test]
fn add_remove_rewrap_revoke_a_key_and_backup_hosts_follow() {
    let w = World::new();
    let (a_key, a_rcpt) = new_key(&w, "a.key");
    let (b_key, b_rcpt) = new_key(&w, "b.key");
    let repo = w.s("repo");
    let repo_p = w.path("repo");
    let fp = w.run(&["init", &repo, "-r", &a_rcpt, "--json"]).ok().json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 512 << 10,
            seed: 11,
            wal: true,
        },
    )
    .unwrap();
    // A second backup host, joined while A was the only recipient.
    let host2 = w.s("host2");
    let h2 = [("SQLVAULT_HOME", host2.as_str())];
    // A host that never used the repository joins with the fingerprint init printed.
    w.run_env(&["join", &repo, "-i", &a_key], &h2).fails(5);
    w.run_env(
        &["join", &repo, "-i", &a_key],
        &[("SQLVAULT_HOME", host2.as_str()), ("SQLVAULT_REPO_FINGERPRINT", &fp)],
    )
    .ok();
    w.run_env(&["backup", &db, &repo, "--name", "app"], &h2).ok();

    // Add B: generation 1. Existing data is still A's alone until rewrap.
    let r = w
        .run(&["key", "add", &repo, "-r", &b_rcpt, "-i", &a_key, "--json"])
        .ok();
    assert_eq!(r.json()["generation"], 1);
    assert_eq!(r.json()["added"][0], b_rcpt.as_str());
    w.run(&["key", "add", &repo, "-r", &b_rcpt, "-i", &a_key]).ok(); // idempotent
    let r = w.run(&["key", "list", &repo, "-i", &b_key, "--json"]).ok();
    assert_eq!(r.json()["generation"], 1, "B can open the config now");
    w.run(&["restore", &repo, &w.s("b0.db"), "-i", &b_key]).fails(5);

    // host2 adopts the signed set at its next backup: new packs are readable by B.
    kit::update_random(Path::new(&db), 0.05, 1).unwrap();
    let packs_before = count(&repo_p, "packs");
    let wk_of = |home: &str| -> serde_json::Value {
        let dir = std::fs::read_dir(Path::new(home).join("repos"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        serde_json::from_slice(&std::fs::read(dir.join("write-key.json")).unwrap()).unwrap()
    };
    assert_eq!(wk_of(&host2)["generation"], 0, "host2 has not seen the change yet");
    w.run_env(&["backup", &db, &repo, "--name", "app"], &h2).ok();
    let r = w.run_env(&["key", "list", &repo, "--json"], &h2).ok();
    assert_eq!(r.json()["generation"], 1);
    assert_eq!(
        readable_by(&repo_p, "packs", &b_key),
        count(&repo_p, "packs") - packs_before,
        "exactly the packs written after the change are B's"
    );

    // Rewrap: everything readable by B; B restores every snapshot.
    let r = w.run(&["key", "rewrap", &repo, "-i", &a_key, "--json"]).ok();
    let v1 = r.json();
    assert_eq!(v1["rewrapped"], v1["objects"]);
    assert_eq!(readable_by(&repo_p, "packs", &b_key), count(&repo_p, "packs"));
    w.run(&["verify", &repo, "-i", &b_key, "--all"]).ok();
    // Run again: the journal says everything is done but the two evidence records
    // verify just wrote.
    let v = w.run(&["key", "rewrap", &repo, "-i", &a_key, "--json"]).ok().json();
    assert_eq!(v["already_done"], v1["objects"]);
    assert_eq!(v["rewrapped"], 2);

    // Remove A: A cannot open the repository any more.
    let r = w.run(&["key", "remove", &repo, "-r", &a_rcpt, "-i", &b_key]).ok();
    assert!(r.stdout.contains("key rewrap"), "{}", r.stdout);
    w.run(&["snapshots", &repo, "-i", &a_key]).fails(5);
    w.run(&["key", "remove", &repo, "-r", &a_rcpt, "-i", &b_key]).fails(4);
    w.run(&["key", "remove", &repo, "-r", &b_rcpt, "-i", &b_key]).fails(2);
    kit::update_random(Path::new(&db), 0.05, 2).unwrap();
    w.run_env(&["backup", &db, &repo, "--name", "app"], &h2).ok();
    assert!(
        readable_by(&repo_p, "packs", &a_key) > 0,
        "old packs are A's until rewrap"
    );

    // An interrupted rewrap resumes: damage the manifests so the run fails after the
    // packs, then repair them and run again.
    let snaps: Vec<_> = std::fs::read_dir(repo_p.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let saved: Vec<Vec<u8>> = snaps.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut damaged = Vec::new();
    for p in &snaps {
        let mut b = std::fs::read(p).unwrap();
        let n = b.len();
        b[n - 20] ^= 0x55;
        std::fs::write(p, &b).unwrap();
        damaged.push(b);
    }
    let r = w.run(&["key", "rewrap", &repo, "-i", &b_key]);
    assert_eq!(r.code, 6, "a damaged object stops the rewrap: {}", r.stderr);
    for ((p, d), b) in snaps.iter().zip(&damaged).zip(&saved) {
        assert!(&std::fs::read(p).unwrap() == d, "a failed object is left as it was");
        std::fs::write(p, b).unwrap();
    }
    let v = w.run(&["key", "rewrap", &repo, "-i", &b_key, "--json"]).ok().json();
    assert!(
        v["already_done"].as_u64().unwrap() >= count(&repo_p, "packs") as u64,
        "{v}"
    );
    assert!(v["rewrapped"].as_u64().unwrap() >= snaps.len() as u64, "{v}");
    for dir in ["packs", "index", "maps", "snapshots", "evidence"] {
        assert_eq!(
            readable_by(&repo_p, dir, &a_key),
            0,
            "{dir}: A reads nothing after rewrap"
        );
    }
    w.run(&["verify", &repo, "-i", &b_key, "--all"]).ok();
    w.run(&["check", &repo, "-i", &b_key, "--read-data"]).ok();
}

#[test]
fn a_forged_recipient_set_is_refused_and_an_old_write_key_must_rejoin() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 128 << 10, false);
    let (_, evil) = new_key(&w, "evil.key");
    let rcpt = w.run(&["key", "list", &repo, "--json"]).ok().json()["recipients"][0]
        .as_str()
        .unwrap()
        .to_string();
    let repo_id = {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.path("repo/sqlvault.json")).unwrap()).unwrap();
        m["repo_id"].as_str().unwrap().to_string()
    };
    // Someone who can write to the bucket publishes a set with their own key, as the
    // next generation.
    let set1 = "repo/keys/recipients-00000000000000000001";
    std::fs::create_dir_all(w.path("repo/keys")).unwrap();
    std::fs::write(
        w.path(set1),
        serde_json::to_vec(&serde_json::json!({
            "repo_id": repo_id, "generation": 1, "recipients": [rcpt, evil], "created_ms": 1,
            "signature": "ab".repeat(64),
        }))
        .unwrap(),
    )
    .unwrap();
    let r = w.run(&["backup", &db, &repo, "--json"]).fails(6);
    assert!(r.stderr.contains("not signed"), "{}", r.stderr);
    assert!(std::fs::read_dir(w.path("repo/snapshots")).map_or(true, |d| d.count() == 0));
    // The real set, published by an identity holder, is adopted.
    std::fs::remove_file(w.path(set1)).unwrap();
    let (_, b) = new_key(&w, "b.key");
    w.run(&["key", "add", &repo, "-r", &b, "-i", &key]).ok();
    w.run(&["backup", &db, &repo]).ok();
    // Damage to the set this host already adopted is still refused, wherever it lands:
    // in a field the host would not otherwise compare, or making it look older.
    let good = std::fs::read(w.path(set1)).unwrap();
    let set: serde_json::Value = serde_json::from_slice(&good).unwrap();
    for (field, value) in [
        ("created_ms", serde_json::json!(2)),
        ("generation", serde_json::json!(0)),
    ] {
        let mut bad = set.clone();
        bad[field] = value;
        std::fs::write(w.path(set1), serde_json::to_vec(&bad).unwrap()).unwrap();
        let r = w.run(&["backup", &db, &repo]).fails(6);
        assert!(r.stderr.contains("not signed"), "{field}: {}", r.stderr);
    }
    std::fs::write(w.path(set1), &good).unwrap();
    w.run(&["backup", &db, &repo]).ok();

    // A write key from before signed sets (no admin key pinned) must not adopt
    // anything: it fails with a clear instruction instead.
    let wk_path = std::fs::read_dir(w.path("home/repos"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("write-key.json");
    let mut wk: serde_json::Value = serde_json::from_slice(&std::fs::read(&wk_path).unwrap()).unwrap();
    wk.as_object_mut().unwrap().remove("admin_pub");
    wk["generation"] = 0.into();
    std::fs::write(&wk_path, serde_json::to_vec(&wk).unwrap()).unwrap();
    let r = w.run(&["backup", &db, &repo]).fails(5);
    assert!(r.stderr.contains("sqlvault join"), "{}", r.stderr);
    w.run(&["join", &repo, "-i", &key]).ok();
    w.run(&["backup", &db, &repo]).ok();
}

#[test]
fn key_handling_commands_never_print_secrets_even_at_trace_level() {
    let w = World::new();
    let pass = "correct horse battery staple 8c1f";
    let wrong = "wrong passphrase 77e0";
    let trace = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("SQLVAULT_LOG", "trace")];
        v.extend_from_slice(extra);
        v
    };
    let p = [("SQLVAULT_LOG", "trace"), ("SQLVAULT_PASSPHRASE", pass)];
    let repo = w.s("prepo");
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 128 << 10,
            seed: 2,
            wal: false,
        },
    )
    .unwrap();
    let (idf, rcpt) = new_key(&w, "id.key");
    let id_secret = std::fs::read_to_string(&idf)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let (idf2, rcpt2) = new_key(&w, "id2.key");
    let id2_secret = std::fs::read_to_string(&idf2)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let secrets = [pass, wrong, id_secret.as_str(), id2_secret.as_str()];
    let rrepo = w.s("rrepo");
    let runs = vec![
        w.run_env(&["key", "generate", "-o", &w.s("id3.key")], &trace(&[])),
        w.run_env(&["init", &repo, "--passphrase"], &p),
        w.run_env(&["backup", &db, &repo], &trace(&[])),
        w.run_env(&["join", &repo, "--passphrase"], &p),
        w.run_env(&["check", &repo, "--passphrase"], &p),
        w.run_env(&["audit", &w.s(""), "--repo", &repo, "--passphrase"], &p),
        w.run_env(
            &["snapshots", &repo, "--passphrase"],
            &[("SQLVAULT_LOG", "trace"), ("SQLVAULT_PASSPHRASE", wrong)],
        ),
        w.run_env(&["key", "add", &repo, "-r", &rcpt, "--passphrase"], &p),
        w.run_env(&["init", &rrepo, "-r", &rcpt], &trace(&[])),
        w.run_env(&["backup", &db, &rrepo], &trace(&[])),
        w.run_env(&["key", "add", &rrepo, "-r", &rcpt2, "-i", &idf], &trace(&[])),
        w.run_env(&["key", "list", &rrepo, "-i", &idf], &trace(&[])),
        w.run_env(&["key", "rewrap", &rrepo, "-i", &idf], &trace(&[])),
        w.run_env(&["restore", &rrepo, &w.s("r.db"), "-i", &idf2], &trace(&[])),
        w.run_env(&["verify", &rrepo, "-i", &idf], &trace(&[])),
        w.run_env(&["key", "remove", &rrepo, "-r", &rcpt, "-i", &idf2], &trace(&[])),
        w.run_env(&["restore", &rrepo, &w.s("x.db"), "-i", &idf], &trace(&[])),
    ];
    let codes: Vec<i32> = runs.iter().map(|r| r.code).collect();
    // The audit finds a group-readable database (13); a wrong passphrase (5); key add on a
    // passphrase repository is refused (2); the removed identity cannot restore (5).
    assert_eq!(
        codes,
        vec![0, 0, 0, 0, 0, 13, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        "{:#?}",
        runs.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    for r in &runs {
        assert_no_secret(r, &secrets);
    }
    // Trace logging really was on, so the check above looked at logs of every command
    // that handled a key (rewrap logs every object at trace level).
    for i in [1, 3, 4, 5, 8, 10, 11, 12, 13, 14, 15] {
        assert!(
            runs[i].stderr.contains("DEBUG") || runs[i].stderr.contains("INFO"),
            "run {i} logged nothing: {}",
            runs[i].stderr
        );
    }
    assert!(runs[12].stderr.contains("TRACE"), "{}", runs[12].stderr);
}
