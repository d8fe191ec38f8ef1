//! `sqlvault policy hash|check`, `sqlvault sql` and `audit --policy`, as an operator
//! and as someone holding only a principal's name (and a guess at its secret).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rusqlite::Connection;

use crate::support::{Run, World, mode};

const SECRET: &str = "correct horse battery";

fn with_stdin(w: &World, args: &[&str], input: &str, extra: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &w.env {
        c.env(k, v);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn shop(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, password_hash TEXT, ssn TEXT);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT, total INT);
         CREATE TABLE forgotten(x);
         INSERT INTO users VALUES (1, 'ada', 'HASH-OF-ADA', 'SSN-OF-ADA');
         INSERT INTO orders VALUES (1, 1, 42);",
    )
    .unwrap();
}

/// A world with shop.db, a policy (alice: analyst by password; root: app by uid 0) and
/// alice's hash made by `policy hash`.
fn world() -> (World, String, String) {
    let w = World::new();
    std::fs::create_dir_all(w.path("home")).unwrap();
    let db = w.s("shop.db");
    shop(Path::new(&db));
    let hash = with_stdin(
        &w,
        &["policy", "hash", "--memory-kib", "8192", "--iterations", "1"],
        &format!("{SECRET}\n"),
        &[],
    )
    .ok();
    let hash = hash.stdout.trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{hash}");
    let policy = w.s("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"sensitive = ["users.password_hash", "users.ssn"]
[roles.analyst]
select = ["orders", "users"]
mask = ["users.password_hash"]
deny = ["users.ssn"]
[roles.app]
select = ["*"]
insert = ["orders"]
[principals.alice]
role = "analyst"
password_hash = "{hash}"
[principals.ops]
role = "app"
uid = 0
[principals.other]
role = "app"
uid = 54321
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    (w, db, policy)
}

#[test]
fn a_principal_reads_what_its_role_allows_and_a_denial_names_what_was_denied() {
    let (w, db, policy) = world();
    let secret_file = w.path("alice.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let sf = secret_file.display().to_string();
    let base = [
        "sql",
        &db,
        "--policy",
        &policy,
        "--principal",
        "alice",
        "--secret-file",
        &sf,
    ];
    let r = w
        .run(
            &[
                &base[..],
                &["-c", "SELECT name, password_hash FROM users; SELECT total FROM orders"],
            ]
            .concat(),
        )
        .ok();
    assert_eq!(r.stdout, "ada|\n42\n");
    // Denied: exit 20, one line naming the action, the rule, principal and role.
    let r = w.run(&[&base[..], &["-c", "SELECT ssn FROM users"]].concat()).fails(20);
    assert!(
        r.stderr
            .contains("read of users.ssn: column users.ssn is denied for role analyst (principal alice, role analyst)"),
        "{}",
        r.stderr
    );
    let r = w.run(&[&base[..], &["-c", "DELETE FROM orders"]].concat()).fails(20);
    assert!(r.stderr.contains("delete on orders is not granted"), "{}", r.stderr);
    // The statements before a denial ran; the ones after did not.
    let r = w
        .run(&[&base[..], &["-c", "SELECT 1; ATTACH 'x.db' AS x; SELECT 2"]].concat())
        .fails(20);
    assert_eq!(r.stdout, "1\n");
    assert!(!w.path("x.db").exists());
    // SQLite's own refusal is told apart: exit 21.
    w.run(&[&base[..], &["-c", "SELEKT 1"]].concat()).fails(21);
    w.run(&[&base[..], &["-c", "SELECT * FROM nowhere"]].concat()).fails(21);
    // Statements from stdin, SQLVAULT_SECRET instead of the file.
    let r = with_stdin(
        &w,
        &["sql", &db, "--policy", &policy, "--principal", "alice"],
        "SELECT count(*) FROM orders;\nSELECT id FROM users;\n",
        &[("SQLVAULT_SECRET", SECRET)],
    )
    .ok();
    assert_eq!(r.stdout, "1\n1\n");
    // JSON: the results so far and the error, in one document.
    let r = w
        .run(
            &[
                &["--json"][..],
                &base[..],
                &["-c", "SELECT id, password_hash FROM users; PRAGMA user_version = 9"],
            ]
            .concat(),
        )
        .fails(20);
    let v = r.json();
    assert_eq!(v["principal"], "alice");
    assert_eq!(v["statements"][0]["rows"], serde_json::json!([[1, null]]));
    assert_eq!(v["error"]["code"], "policy.denied");
    let c = Connection::open(&db).unwrap();
    assert_eq!(
        c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(),
        0
    );
}

#[test]
fn wrong_secrets_and_unknown_principals_fail_alike_and_nothing_secret_is_printed() {
    let (w, db, policy) = world();
    let hash = std::fs::read_to_string(&policy).unwrap();
    let hash_tail = hash.lines().find(|l| l.starts_with("password_hash")).unwrap();
    let hash_tail = &hash_tail[hash_tail.len() - 20..hash_tail.len() - 1];
    let run = |who: &str, secret: &str| {
        w.run_env(
            &["sql", &db, "--policy", &policy, "--principal", who, "-c", "SELECT 1"],
            &[("SQLVAULT_SECRET", secret), ("RUST_LOG", "trace")],
        )
    };
    let wrong = run("alice", "correct horse").fails(5);
    let unknown = run("mallory", SECRET).fails(5);
    for (r, who) in [(&wrong, "alice"), (&unknown, "mallory")] {
        let line = r.stderr.lines().find(|l| l.starts_with("sqlvault: error:")).unwrap();
        assert_eq!(
            line,
            format!("sqlvault: error: authentication failed for principal {who}")
        );
        crate::support::assert_no_secret(r, &[SECRET, "correct horse", hash_tail, "$argon2"]);
    }
    let ok = run("alice", SECRET).ok();
    crate::support::assert_no_secret(&ok, &[SECRET, hash_tail, "$argon2", "HASH-OF-ADA"]);
    // No secret given, no terminal: a usage error that says how to give one.
    let r = w
        .run(&[
            "sql",
            &db,
            "--policy",
            &policy,
            "--principal",
            "alice",
            "-c",
            "SELECT 1",
        ])
        .fails(2);
    assert!(r.stderr.contains("--secret-file"), "{}", r.stderr);
}

#[test]
fn uid_principals_are_proven_by_the_process_uid() {
    let (w, db, policy) = world();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let r = w.run(&[
        "sql",
        &db,
        "--policy",
        &policy,
        "--principal",
        "ops",
        "-c",
        "INSERT INTO orders(user_id, total) VALUES (1, 5); SELECT count(*) FROM orders",
    ]);
    if uid == 0 {
        assert_eq!(r.ok().stdout, "2\n");
    } else {
        r.fails(5);
    }
    w.run(&[
        "sql",
        &db,
        "--policy",
        &policy,
        "--principal",
        "other",
        "-c",
        "SELECT 1",
    ])
    .fails(5);
}

#[test]
fn the_audit_log_records_every_decision_with_the_principal() {
    let (w, db, policy) = world();
    let log = w.s("audit.jsonl");
    w.run_env(
        &[
            "sql",
            &db,
            "--policy",
            &policy,
            "--principal",
            "alice",
            "--audit-log",
            &log,
            "-c",
            "SELECT name, password_hash FROM users; SELECT * FROM forgotten",
        ],
        &[("SQLVAULT_SECRET", SECRET)],
    )
    .fails(20);
    assert_eq!(mode(Path::new(&log)), 0o600);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |object: &str, detail: &str, decision: &str| {
        lines.iter().any(|l| {
            l["principal"] == "alice"
                && l["object"] == object
                && (detail.is_empty() || l["detail"] == detail)
                && l["decision"] == decision
        })
    };
    assert!(has("users", "name", "allow"));
    assert!(has("users", "password_hash", "mask"));
    assert!(has("forgotten", "", "deny"));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("HASH-OF-ADA"));
}

#[test]
fn policy_check_reads_the_policy_against_the_schema() {
    let (w, db, policy) = world();
    let r = w.run(&["--json", "policy", "check", &policy, &db]);
    assert_eq!(r.code, 12, "{}", r.stdout);
    let v = r.json();
    let messages: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["severity"].as_str().unwrap(), f["message"].as_str().unwrap()))
        .collect();
    let text = messages.join("\n");
    assert!(
        text.contains("medium role app can read sensitive column users.password_hash (principals: ops, other)"),
        "{text}"
    );
    assert!(!text.contains("role analyst can read sensitive"), "{text}");
    // A typo in a grant or a mask is high; a table no role covers is low.
    std::fs::write(
        &policy,
        "[roles.r]\nselect = [\"ordrs\", \"users\"]\nmask = [\"users.pasword_hash\"]\n[principals.p]\nrole = \"r\"\nuid = 7\n",
    )
    .unwrap();
    let r = w.run(&["policy", "check", &policy, &db]);
    assert_eq!(r.code, 13, "{}", r.stdout);
    assert!(
        r.stdout.contains("HIGH   role r: select names unknown table ordrs"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("HIGH   role r: mask names unknown column users.pasword_hash"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("LOW    table forgotten is covered by no role"),
        "{}",
        r.stdout
    );
    // A clean policy exits 0.
    std::fs::write(
        &policy,
        "[roles.r]\nselect = [\"*\"]\n[principals.p]\nrole = \"r\"\nuid = 7\n",
    )
    .unwrap();
    let r = w.run(&["policy", "check", &policy, &db]).ok();
    assert!(r.stdout.contains("0 high, 0 medium, 0 low"), "{}", r.stdout);
    // The file's own permissions.
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = w.run(&["policy", "check", &policy, &db]);
    assert_eq!(r.code, 13);
    assert!(r.stdout.contains("is writable by every user"), "{}", r.stdout);
    // A policy that does not parse: one line, exit 2, naming the file and line.
    std::fs::write(&policy, "[roles.r]\nselect = \"orders\"\n").unwrap();
    let r = w.run(&["policy", "check", &policy, &db]).fails(2);
    assert!(r.stderr.contains("policy.toml: line 2"), "{}", r.stderr);
}

#[test]
fn bad_inputs_fail_in_one_line_naming_the_thing() {
    let (w, db, policy) = world();
    let env = [("SQLVAULT_SECRET", SECRET)];
    let not_db = w.s("notes.txt");
    std::fs::write(&not_db, "hello, not a database\n".repeat(100)).unwrap();
    let r = w.run_env(
        &[
            "sql",
            &not_db,
            "--policy",
            &policy,
            "--principal",
            "alice",
            "-c",
            "SELECT 1",
        ],
        &env,
    );
    let code = r.code;
    assert_ne!(code, 0);
    let r = r.fails(code);
    assert!(r.stderr.contains("notes.txt"), "{}", r.stderr);
    let missing = w.s("missing.db");
    let r = w.run_env(
        &[
            "sql",
            &missing,
            "--policy",
            &policy,
            "--principal",
            "alice",
            "-c",
            "SELECT 1",
        ],
        &env,
    );
    let code = r.code;
    assert_ne!(code, 0);
    let r = r.fails(code);
    assert!(r.stderr.contains("missing.db"), "{}", r.stderr);
    assert!(!w.path("missing.db").exists(), "sql created the database");
    let r = w
        .run_env(
            &[
                "sql",
                &db,
                "--policy",
                &w.s("nope.toml"),
                "--principal",
                "alice",
                "-c",
                "SELECT 1",
            ],
            &env,
        )
        .fails(2);
    assert!(r.stderr.contains("nope.toml"), "{}", r.stderr);
    let r = with_stdin(&w, &["policy", "hash"], "", &[]).fails(2);
    assert!(r.stderr.contains("empty secret"), "{}", r.stderr);
}

#[test]
fn audit_reports_what_lets_others_around_a_policy_and_fix_closes_it() {
    let (w, db, policy) = world();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o646)).unwrap();
    let r = w.run(&["--json", "audit", &db, "--policy", &policy]);
    assert_eq!(r.code, 13);
    let v = r.json();
    let codes: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(codes.contains(&("policy.bypass".into(), "high".into())), "{codes:?}");
    assert!(
        codes.contains(&("policy.file-permissions".into(), "high".into())),
        "{codes:?}"
    );
    assert!(
        codes.contains(&("policy.file-permissions".into(), "medium".into())),
        "{codes:?}"
    );
    w.run(&["audit", &db, "--policy", &policy, "--fix"]);
    assert_eq!(mode(Path::new(&db)), 0o600);
    assert_eq!(mode(Path::new(&policy)), 0o600);
    let r = w.run(&["--json", "audit", &db, "--policy", &policy]);
    let v = r.json();
    assert!(
        !v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"].as_str().unwrap().starts_with("policy.")),
        "{}",
        r.stdout
    );
}
