use std::path::Path;
use std::process::Command;

use crate::support::{World, content, kit};

#[test]
fn wrong_identity_is_refused_without_output() {
    let w = World::new();
    let repo = w.s("repo");
    let (_key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let other = w.s("other.txt");
    w.run(&["key", "generate", "-o", &other]).ok();
    let dest = w.s("out.db");
    let r = w.run(&["restore", &repo, &dest, "-i", &other]).fails(5);
    assert!(r.stderr.contains("identity"), "{}", r.stderr);
    assert!(!Path::new(&dest).exists());
    let j = w.run(&["verify", &repo, "-i", &other, "--json"]).fails(5).json();
    assert_eq!(j["error"]["code"], "crypt.no-matching-identity");
}

#[test]
fn a_write_only_host_backs_up_and_lists_but_cannot_read() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    // The host holds no identity at all.
    let moved = w.s("offline-key.txt");
    std::fs::rename(&key, &moved).unwrap();
    w.run(&["backup", &db, &repo, "--name", "orders"]).ok();
    let list = w.run(&["snapshots", &repo, "--json"]).ok().json()["snapshots"].clone();
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(
        list[0]["page_count"].as_u64().unwrap() * 4096,
        list[0]["size"].as_u64().unwrap()
    );
    let r = w.run(&["restore", &repo, &w.s("out.db")]).fails(16);
    assert!(r.stderr.contains("identity"), "{}", r.stderr);
    // Nothing in the repository is readable without the identity: every object is age.
    for f in crate::support::files(&w.path("repo")) {
        if f.ends_with("sqlvault.json") {
            continue;
        }
        assert!(
            std::fs::read(&f).unwrap().starts_with(b"age-encryption.org/v1\n"),
            "{}",
            f.display()
        );
    }
    w.run(&["restore", &repo, &w.s("out.db"), "-i", &moved, "--name", "orders"])
        .ok();
}

#[test]
fn bad_inputs_get_one_line_errors_and_documented_codes() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    let text = w.s("notes.txt");
    std::fs::write(&text, "just some text, long enough to have a header").unwrap();
    let r = w.run(&["backup", &text, &repo]).fails(7);
    assert!(
        r.stderr.contains("notes.txt") && r.stderr.contains("not an SQLite database"),
        "{}",
        r.stderr
    );
    let r = w.run(&["backup", &w.s("missing.db"), &repo]).fails(4);
    assert!(r.stderr.contains("missing.db"), "{}", r.stderr);
    w.run(&["backup", &db, &repo]).ok();
    let r = w
        .run(&["restore", &repo, &w.s("o.db"), "-i", &key, "--snapshot", "deadbeef"])
        .fails(4);
    assert!(r.stderr.contains("deadbeef"), "{}", r.stderr);
    let r = w.run(&["snapshots", &w.s("nowhere"), "-i", &key]).fails(4);
    assert!(r.stderr.contains("no sqlvault repository"), "{}", r.stderr);
    w.run(&[
        "init",
        &repo,
        "-r",
        "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
    ])
    .fails(8);
    w.run(&["init", &w.s("r2"), "-r", "age1nonsense"]).fails(2);
    w.run(&["restore", &repo, &w.s("o.db"), "-i", &text]).fails(2);
    w.run(&["restore", &repo, &w.s("no/such/dir/o.db"), "-i", &key])
        .fails(4);
    // An unreachable S3 endpoint: a store error, quickly.
    let port = kit::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "y"),
        ("AWS_REGION", "us-east-1"),
    ];
    let t = std::time::Instant::now();
    let r = w.run_env(&["backup", &db, "s3://bucket/prefix"], &env).fails(3);
    assert!(r.stderr.contains("s3://bucket/prefix"), "{}", r.stderr);
    assert!(t.elapsed().as_secs() < 60);
    // A host that never joined the repository cannot back up into it.
    let stranger = World::new();
    let r = stranger.run(&["backup", &db, &repo]).fails(5);
    assert!(r.stderr.contains("write key"), "{}", r.stderr);
    // Busy: an exclusive lock held by the application longer than the timeout.
    let locked = w.s("locked.db");
    kit::generate(
        Path::new(&locked),
        &kit::GenOptions {
            target_bytes: 1 << 20,
            seed: 2,
            wal: false,
        },
    )
    .unwrap();
    let c = rusqlite::Connection::open(&locked).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE; UPDATE orders SET amount = 0 WHERE id = 1;")
        .unwrap();
    let r = w.run(&["backup", &locked, &repo, "--busy-timeout", "0.5"]).fails(7);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    c.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn passphrase_repositories_round_trip() {
    let w = World::new();
    let repo = w.s("repo");
    let pass = [("SQLVAULT_PASSPHRASE", "correct horse battery staple")];
    w.run_env(&["init", &repo, "--passphrase"], &pass).ok();
    let db = w.s("app.db");
    kit::generate(Path::new(&db), &Default::default()).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    let out = w.s("out.db");
    w.run_env(&["restore", &repo, &out, "--passphrase"], &pass).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run_env(
        &["restore", &repo, &w.s("o2.db"), "--passphrase"],
        &[("SQLVAULT_PASSPHRASE", "wrong")],
    )
    .fails(5);
}

#[test]
fn ssh_ed25519_and_rsa_recipients_work() {
    for kind in ["ed25519", "rsa"] {
        let w = World::new();
        let key = w.s(&format!("id_{kind}"));
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f", &key])
            .status()
            .expect("ssh-keygen is installed");
        assert!(st.success());
        let pubkey = std::fs::read_to_string(format!("{key}.pub")).unwrap();
        assert!(pubkey.starts_with(&format!("ssh-{kind}")), "{pubkey}");
        let repo = w.s("repo");
        w.run(&["init", &repo, "-r", pubkey.trim()]).ok();
        let db = w.s("app.db");
        kit::generate(Path::new(&db), &Default::default()).unwrap();
        w.run(&["backup", &db, &repo]).ok();
        let out = w.s("out.db");
        w.run_env(&["restore", &repo, &out], &[("SQLVAULT_IDENTITY_FILE", key.as_str())])
            .ok();
        assert_eq!(content(Path::new(&out)), content(Path::new(&db)), "{kind}");
    }
}
