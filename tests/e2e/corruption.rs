use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{World, files};

fn objects(w: &World, dir: &str) -> Vec<PathBuf> {
    files(&w.path(&format!("repo/{dir}")))
}

fn flip(p: &Path, at: f64) {
    let mut b = std::fs::read(p).unwrap();
    let i = ((b.len() as f64) * at) as usize;
    let last = b.len() - 1;
    b[i.min(last)] ^= 0x40;
    std::fs::write(p, b).unwrap();
}

fn truncate(p: &Path) {
    let b = std::fs::read(p).unwrap();
    std::fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
}

/// Every kind of stored object, damaged two ways, is caught by restore, verify and
/// check, with exit code 6 and no output file.
#[test]
fn byte_flips_and_truncations_are_detected_everywhere() {
    for kind in ["packs", "index", "snapshots", "maps"] {
        for damage in ["flip", "truncate"] {
            let w = World::new();
            let repo = w.s("repo");
            let (key, db) = w.setup(&repo, 1 << 20, true);
            w.run(&["backup", &db, &repo]).ok();
            let objs = objects(&w, kind);
            assert!(!objs.is_empty());
            for o in &objs {
                match damage {
                    "flip" => flip(o, 0.6),
                    _ => truncate(o),
                }
            }
            let dest = w.s("out.db");
            let what = format!("{damage} in {kind}");
            let r = w.run(&["restore", &repo, &dest, "-i", &key]).fails(6);
            assert!(!Path::new(&dest).exists(), "{what}: partial output left behind");
            assert!(
                r.stderr.contains("corrupt") || r.stderr.contains("authentic"),
                "{what}: {}",
                r.stderr
            );
            w.run(&["verify", &repo, "-i", &key]).fails(6);
            w.run(&["check", &repo, "-i", &key, "--read-data"]).fails(6);
            crate::support::assert_no_leftovers(w.dir.path(), &what);
        }
    }
}

#[test]
fn a_deleted_pack_is_named_by_check_and_restore() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    for p in objects(&w, "packs") {
        std::fs::remove_file(p).unwrap();
    }
    let r = w.run(&["check", &repo, "-i", &key]).fails(6);
    assert!(r.stdout.contains("missing"), "{}", r.stdout);
    w.run(&["restore", &repo, &w.s("out.db"), "-i", &key]).fails(6);
    assert!(!w.path("out.db").exists());
}

fn age(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new("age")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the age CLI is installed (apt-get install age)");
    c.stdin.take().unwrap().write_all(input).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "age {args:?} failed");
    o.stdout
}

/// Someone with write access to the bucket and the public recipient writes a
/// snapshot of their own: restore refuses it, because it lacks the repository MAC.
#[test]
fn a_forged_snapshot_is_rejected() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 1 << 20, true);
    w.run(&["backup", &db, &repo]).ok();
    let rcpt = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    let real = objects(&w, "snapshots").pop().unwrap();
    let pt = String::from_utf8(age(&["-d", "-i", &key], &std::fs::read(&real).unwrap())).unwrap();
    let forged_id = "00000000000000000000000000000001";
    let real_id = real.file_name().unwrap().to_string_lossy().to_string();
    let body = pt
        .lines()
        .next()
        .unwrap()
        .replace(&real_id, forged_id)
        .replace("\"user_version\":7", "\"user_version\":666");
    // Keep the old MAC line: the forger cannot compute a new one.
    let forged = format!("{body}\n{}\n", pt.lines().nth(1).unwrap());
    std::fs::write(
        w.path(&format!("repo/snapshots/{forged_id}")),
        age(&["-r", &rcpt], forged.as_bytes()),
    )
    .unwrap();
    let r = w
        .run(&["restore", &repo, &w.s("out.db"), "-i", &key, "--snapshot", forged_id])
        .fails(6);
    assert!(
        r.stderr.contains("tampered") || r.stderr.contains("forged"),
        "{}",
        r.stderr
    );
    assert!(!w.path("out.db").exists());
}

/// Someone replaces the repository config with one holding a secret of their own:
/// hosts that know the repository refuse it, and so does a new host given the
/// fingerprint that init printed.
#[test]
fn a_replaced_config_is_rejected() {
    let w = World::new();
    let repo = w.s("repo");
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let init = w.run(&["init", &repo, "-r", &rcpt, "--json"]).ok().json();
    let fingerprint = init["fingerprint"].as_str().unwrap().to_string();
    let db = w.s("app.db");
    crate::support::kit::generate(Path::new(&db), &Default::default()).unwrap();
    w.run(&["backup", &db, &repo]).ok();

    let cfg_path = w.path("repo/config");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&age(&["-d", "-i", &key], &std::fs::read(&cfg_path).unwrap())).unwrap();
    cfg["secret"] = serde_json::Value::String("11".repeat(32));
    std::fs::write(&cfg_path, age(&["-r", &rcpt], cfg.to_string().as_bytes())).unwrap();

    let r = w.run(&["snapshots", &repo, "-i", &key]).fails(6);
    assert!(
        r.stderr.contains("fingerprint") && r.stderr.contains(&fingerprint),
        "{}",
        r.stderr
    );
    let fresh = World::new();
    fresh
        .run_env(
            &["restore", &repo, &fresh.s("o.db"), "-i", &key],
            &[("SQLVAULT_REPO_FINGERPRINT", &fingerprint)],
        )
        .fails(6);
    assert!(!fresh.path("o.db").exists());
}
