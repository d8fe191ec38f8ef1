//! `cargo xtask bench --policy`: what the guard of sqlvault-policy costs, and whether a
//! login's time tells which principals exist.
//!
//! Prepare-heavy: six statements an application prepares over and over (point reads,
//! a join, an aggregate, an insert, an update, a read of a masked column), each
//! prepared and dropped with no statement cache, on an unguarded connection and on
//! guarded ones — a role without column rules, and one with masks (which also turns
//! off covering-index scans). Rounds alternate between the connections so drift hits
//! all alike; the figure is the median of the rounds' statements per second.
//!
//! Authentication: `authenticate` with OWASP's parameters for a known principal with a
//! wrong secret, an unknown principal, and a principal that authenticates by uid, in
//! alternation; medians and their ratios.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use rusqlite::Connection;
use sqlvault_policy::{Policy, hash_secret};

const STATEMENTS: &[&str] = &[
    "SELECT id, name, email FROM users WHERE id = ?1",
    "SELECT o.id, o.total, u.name FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = ?1",
    "SELECT count(*), sum(total) FROM orders WHERE user_id = ?1",
    "INSERT INTO orders(user_id, total, note) VALUES (?1, ?2, ?3)",
    "UPDATE orders SET total = ?1 WHERE id = ?2",
    "SELECT name, password_hash FROM users WHERE id = ?1",
];

fn fixture(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, email TEXT UNIQUE, password_hash TEXT, ssn TEXT);
         CREATE INDEX users_name ON users(name);
         CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INT REFERENCES users(id), total INT, note TEXT);
         CREATE INDEX orders_user ON orders(user_id);
         CREATE VIEW user_names AS SELECT id, name FROM users;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO users SELECT i, 'user' || i, 'u' || i || '@example.com', hex(randomblob(16)), 'ssn' || i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO orders(user_id, total, note) SELECT 1 + i % 1000, i, 'note' FROM n;",
    )?;
    Ok(())
}

const POLICY: &str = r#"
[roles.app]
select = ["*"]
insert = ["orders"]
update = ["orders"]
[roles.analyst]
select = ["users", "orders"]
insert = ["orders"]
update = ["orders"]
mask = ["users.password_hash", "users.ssn"]
[principals.app]
role = "app"
uid = 1
[principals.analyst]
role = "analyst"
uid = 2
"#;

/// Prepares every statement `n` times; statements per second.
fn round(c: &Connection, n: usize) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        for sql in STATEMENTS {
            let st = c.prepare(sql)?;
            std::hint::black_box(&st);
        }
    }
    Ok((n * STATEMENTS.len()) as f64 / t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(rounds: usize) -> Result<()> {
    let dir = crate::root().join("target/bench-policy");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("shop.db");
    fixture(&db)?;
    let policy = Policy::from_toml(POLICY)?;
    let plain = Connection::open(&db)?;
    let app = policy.guard(Connection::open(&db)?, &policy.trusted_identity("app")?)?;
    let analyst = policy.guard(Connection::open(&db)?, &policy.trusted_identity("analyst")?)?;
    // Warm the schema and the page cache of each.
    for c in [&plain, &*app, &*analyst] {
        round(c, 200)?;
    }
    let per_round = 3000;
    let (mut a, mut b, mut m) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(round(&plain, per_round)?);
        b.push(round(&app, per_round)?);
        m.push(round(&analyst, per_round)?);
    }
    let (a, b, m) = (median(a), median(b), median(m));
    println!(
        "prepare-heavy: {} statements × {per_round} per round, medians of {rounds} alternating rounds",
        STATEMENTS.len()
    );
    println!("| connection | statements prepared/s | overhead |");
    println!("|---|---|---|");
    println!("| unguarded (SQLite alone) | {a:.0} | — |");
    println!(
        "| guarded, role without column rules | {b:.0} | {:+.1}% |",
        (a / b - 1.0) * 100.0
    );
    println!("| guarded, role with masks | {m:.0} | {:+.1}% |", (a / m - 1.0) * 100.0);

    // Authentication time: known principal with a wrong secret, unknown, by-uid.
    let h = hash_secret(b"the real secret", None, None)?;
    let p = Policy::from_toml(&format!(
        "[roles.r]\nselect = [\"users\"]\n[principals.alice]\nrole = \"r\"\npassword_hash = \"{h}\"\n[principals.svc]\nrole = \"r\"\nuid = 5\n"
    ))?;
    let time = |who: &str| {
        let t = Instant::now();
        let _ = p.authenticate(who, b"a wrong guess");
        t.elapsed()
    };
    let (mut k, mut u, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        k.push(time("alice").as_secs_f64());
        u.push(time("mallory").as_secs_f64());
        s.push(time("svc").as_secs_f64());
    }
    let (k, u, s) = (median(k), median(u), median(s));
    println!();
    println!("authenticate, argon2id m=19456 KiB t=2 p=1, medians of 15 alternating calls");
    println!("| principal | time | ÷ wrong secret |");
    println!("|---|---|---|");
    println!("| known, wrong secret | {:.1} ms | 1.000 |", k * 1e3);
    println!("| unknown | {:.1} ms | {:.3} |", u * 1e3, u / k);
    println!("| known, authenticates by uid | {:.1} ms | {:.3} |", s * 1e3, s / k);
    Ok(())
}
