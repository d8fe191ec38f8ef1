//! `sqlvault daemon`, `status` and `config check|example`: one process protecting a
//! glob of databases (WAL and rollback journal), metrics and health served from local
//! state, SIGHUP picking up a changed configuration, a destination that goes away
//! seen by /healthz and /metrics, SIGTERM shipping what is committed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{World, kit};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`: status code and body.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split(' ').nth(1)?.parse().ok()?;
    Some((code, r.split_once("\r\n\r\n")?.1.to_string()))
}

/// The value of the metric line starting with `prefix` (labels included).
fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn commit(db: &Path, n: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS svc(n INTEGER)").unwrap();
    c.execute("INSERT INTO svc VALUES (?1)", [n]).unwrap();
}

fn start(w: &World, config: &str) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlvault"));
    c.args(["--log-format", "json", "daemon", "--config", config])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &w.env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a signal to a child this test spawned and still owns.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

#[test]
fn daemon_protects_a_glob_serves_metrics_reloads_and_stops_cleanly() {
    let w = World::new();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let tenants = w.path("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    for (name, wal) in [("a.db", true), ("b.db", false)] {
        kit::generate(
            &tenants.join(name),
            &kit::GenOptions {
                target_bytes: 64 << 10,
                seed: 3,
                wal,
            },
        )
        .unwrap();
    }
    let repo = w.s("repo");
    let gone = w.s("gone/repo");
    let port = free_port();
    let config = w.s("sqlvault.toml");
    let text = format!(
        r#"
[service]
metrics_addr = "127.0.0.1:{port}"
rescan = "1s"

[schedule]
interval = "200ms"
max_lag = "3s"
snapshot = "off"

[destination.local]
repo = "{repo}"
recipients = ["$RCPT"]
identity_file = "{key}"
keep_last = 3
pitr_window = "1h"

[[database]]
glob = "{tenants}/*.db"
destinations = ["local"]
"#,
        tenants = tenants.display()
    );
    write_config(Path::new(&config), &text);
    // A missing variable is named with its line.
    let r = w.run(&["config", "check", "--config", &config]).fails(2);
    assert!(
        r.stderr.contains(":13:") && r.stderr.contains("$RCPT is not set"),
        "{}",
        r.stderr
    );

    let mut env = w.env.clone();
    env.push(("RCPT".into(), rcpt.clone()));
    let w = World { env, ..w };
    let chk = w.run(&["--json", "config", "check", "--config", &config]).ok().json();
    assert_eq!(chk["destinations"][0]["state"], "will be created", "{chk}");
    assert!(chk["requests_per_month"]["idle"].as_u64().unwrap() > 0, "{chk}");

    let mut child = start(&w, &config);
    until("healthy", 60, || get(port, "/healthz").is_some_and(|(c, _)| c == 200));
    for i in 0..5 {
        commit(&tenants.join("a.db"), i);
        commit(&tenants.join("b.db"), i);
    }
    until("both databases shipped", 60, || {
        get(port, "/metrics").is_some_and(|(_, b)| {
            ["a.db", "b.db"].iter().all(|n| {
                b.lines().any(|l| {
                    l.starts_with("sqlvault_newest_state_timestamp_seconds")
                        && l.contains(&format!("/{n}\""))
                        && !l.ends_with(" 0.000")
                })
            })
        })
    });
    let (_, m) = get(port, "/metrics").unwrap();
    assert_eq!(metric(&m, "sqlvault_up"), Some(1.0), "{m}");
    // One daemon per state directory.
    let second = w.run(&["daemon", "--config", &config, "--metrics-addr", "127.0.0.1:0"]);
    assert_eq!(second.code, 14, "{}", second.stderr);
    assert!(second.stderr.contains("another daemon"), "{}", second.stderr);
    assert!(m.contains("sqlvault_requests_total{"), "{m}");

    // A database appearing under the glob is picked up.
    kit::generate(
        &tenants.join("c.db"),
        &kit::GenOptions {
            target_bytes: 32 << 10,
            seed: 5,
            wal: true,
        },
    )
    .unwrap();
    until("c.db picked up", 60, || {
        get(port, "/metrics").is_some_and(|(_, b)| b.contains("/c.db\""))
    });

    // SIGHUP with a changed configuration: a second destination that cannot be
    // reached; health and metrics say so, the first keeps going.
    let text2 = text.replace("destinations = [\"local\"]", "destinations = [\"local\", \"gone\"]")
        + &format!("\n[destination.gone]\nrepo = \"{gone}\"\n");
    write_config(Path::new(&config), &text2);
    signal(&child, libc::SIGHUP);
    until("unhealthy with a destination gone", 60, || {
        get(port, "/healthz").is_some_and(|(c, b)| c == 503 && b.contains("gone"))
    });
    let (_, m) = get(port, "/metrics").unwrap();
    assert_eq!(metric(&m, "sqlvault_config_reloads_total"), Some(1.0), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("sqlvault_failures_total{") && l.contains("destination=\"gone\"")),
        "{m}"
    );
    commit(&tenants.join("a.db"), 99);

    // status reads the daemon's state file.
    // (Written every 5 s: the restarted workers appear in it within a few.)
    until("status with the three databases", 30, || {
        let st = w.run(&["--json", "status"]).json();
        st["alive"] == true && st["databases"].as_object().is_some_and(|d| d.len() == 3)
    });

    signal(&child, libc::SIGTERM);
    let t = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(code, Some(0), "{err}");
    // --log-format json: every log line one JSON object; the daemon says what it does.
    let logs: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logs.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("protecting"))),
        "{err}"
    );
    assert!(!err.contains(&rcpt_secretless_marker()), "{err}");
    let st = w.run(&["--json", "status"]).json();
    assert_eq!(st["alive"], false, "{st}");

    // The runbook before any drill: NEEDS VERIFICATION, saying why; the same bytes
    // twice for the same configuration and repository state.
    let (md1, md2) = (w.s("DR1.md"), w.s("DR2.md"));
    for md in [&md1, &md2] {
        let r = w.run(&["--json", "runbook", "--config", &config, "-o", md]).ok().json();
        assert_eq!(r["verified"], false, "{r}");
        assert!(r["reasons"].to_string().contains("no drill recorded"), "{r}");
    }
    let (a, b) = (std::fs::read(&md1).unwrap(), std::fs::read(&md2).unwrap());
    assert_eq!(a, b, "the runbook must be deterministic");
    assert!(String::from_utf8_lossy(&a).contains("**NEEDS VERIFICATION**"));

    // Every database restores at its newest state, the last commit included.
    for n in ["a.db", "b.db"] {
        let out = w.s(&format!("restored-{n}"));
        w.run(&["restore", &repo, &out, "-i", &key, "--name", n, "--at", "-0s"])
            .ok();
        let c = rusqlite::Connection::open(&out).unwrap();
        let max: i64 = c.query_row("SELECT max(n) FROM svc", [], |r| r.get(0)).unwrap();
        assert_eq!(max, if n == "a.db" { 99 } else { 4 }, "{n}");
    }
}

#[test]
fn config_errors_name_their_line_and_refuse_secrets_in_the_file() {
    let w = World::new();
    let config = w.s("bad.toml");
    for (text, line, needle) in [
        ("[service]\nmetrics_addr = \"everywhere\"\n", 2, "not an address"),
        (
            "[destination.s3]\nrepo = \"s3://b/r\"\nenv = { AWS_SECRET_ACCESS_KEY = \"hunter2$$\" }\n",
            3,
            "holds a credential",
        ),
        (
            "[destination.s3]\nrepo = \"s3://b/r\"\nenv = { S3_KEY_ID = \"x\" }\n",
            3,
            "not a store setting",
        ),
        ("[schedule]\nverify = \"0s\"\n", 2, "at least 1s"),
        (
            "[destination.d]\nrepo = \"/r\"\n[[database]]\npath = \"/x.db\"\ndestinations = [\"d\"]\ndb_key_env = \"hunter2 is the key\"\n",
            6,
            "name of a variable",
        ),
        (
            "[[database]]\npath = \"/x.db\"\ndestinations = [\"nowhere\"]\n",
            3,
            "no [destination.nowhere]",
        ),
        (
            "[destination.s3]\nrepo = \"s3://b/r\"\nenv = { AWS_SECRET_ACCESS_KEY = \"hunter2\" }\n",
            3,
            "holds a credential",
        ),
        ("[schedule]\ninterval = \"soon\"\n", 2, "not a duration"),
        ("[surprise]\n", 1, "unknown field"),
    ] {
        write_config(Path::new(&config), text);
        let r = w.run(&["config", "check", "--config", &config]).fails(2);
        assert!(
            r.stderr.contains(&format!("bad.toml:{line}:")) && r.stderr.contains(needle),
            "{text}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("hunter2"), "a secret in an error: {}", r.stderr);
    }
    // The example is valid as it is.
    let ex = w
        .run(&[
            "config",
            "example",
            "--db",
            "/srv/app.db",
            "--repo",
            "/backups/repo",
            "-r",
            "age1qqqq",
        ])
        .ok()
        .stdout;
    write_config(Path::new(&config), &ex);
    let r = w.run(&["--json", "config", "check", "--config", &config]);
    assert!(
        !r.stderr.contains("bad.toml:"),
        "the example does not parse: {}",
        r.stderr
    );
}

/// Nothing the daemon logs is a secret here; a marker that must never appear.
fn rcpt_secretless_marker() -> String {
    "AGE-SECRET-KEY-".to_string()
}
