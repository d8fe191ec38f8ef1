//! Attacks from the bucket (BW: writes and lists the bucket, knows the public
//! recipients, holds no identity and no repository secret; BW-c: the same with
//! create-only credentials) and from a removed recipient (RK). Every forged object here
//! is built with the project's own format and crypt crates from exactly what that
//! attacker holds, and each test asserts the outcome the owner relies on.

use std::path::Path;

use sqlvault_engine::crypt::{Identities, Recipient, decrypt_to_vec, encrypt_to_vec};
use sqlvault_engine::format::{
    AdminKey, ChunkId, IndexEntry, IndexFile, ObjectId, PackSection, RecipientSet, RepoSecret,
};

use crate::support::{World, content, files, kit};

/// An owner's repository with one snapshot: (key file, public recipient, database,
/// fingerprint `init` printed).
fn owner(w: &World, repo: &str) -> (String, String, String, String) {
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let init = w.run(&["init", repo, "-r", &rcpt, "--json"]).ok().json();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 7,
            wal: true,
        },
    )
    .unwrap();
    w.run(&["backup", &db, repo]).ok();
    (key, rcpt, db, init["fingerprint"].as_str().unwrap().to_string())
}

fn seal(plaintext: &[u8], recipients: &[&str]) -> Vec<u8> {
    let rs: Vec<Recipient> = recipients.iter().map(|r| r.parse().unwrap()).collect();
    encrypt_to_vec(rs.iter(), plaintext).unwrap()
}

fn random_name() -> String {
    ObjectId::random().to_string()
}

fn copy_over(from: &Path, to: &Path) {
    for f in files(from) {
        let rel = f.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap();
    }
}

#[test]
fn attack_bw_a_swapped_marker_and_config_are_refused_where_the_location_was_used() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, rcpt, db, fingerprint) = owner(&w, &repo);
    // The owner's restore host has used the repository: it is pinned.
    w.run(&["restore", &repo, &w.s("first.db"), "-i", &key]).ok();

    // The attacker makes a repository of their own, readable by the victim's key and
    // their own, with a snapshot of their choosing, and copies it over the victim's.
    let atk = World::new();
    let atk_key = atk.s("atk.key");
    let atk_rcpt = atk
        .run(&["key", "generate", "-o", &atk_key])
        .ok()
        .stdout
        .trim()
        .to_string();
    let evil = atk.s("evil");
    atk.run(&["init", &evil, "-r", &rcpt, "-r", &atk_rcpt]).ok();
    let forged_db = atk.s("app.db");
    kit::generate(
        Path::new(&forged_db),
        &kit::GenOptions {
            target_bytes: 128 << 10,
            seed: 99,
            wal: true,
        },
    )
    .unwrap();
    atk.run(&["backup", &forged_db, &evil]).ok();
    copy_over(Path::new(&evil), Path::new(&repo));

    let out = w.s("forged.db");
    let r = w.run(&["restore", &repo, &out, "-i", &key]).fails(6);
    assert!(r.stderr.contains("marker was replaced"), "{}", r.stderr);
    assert!(!Path::new(&out).exists());
    w.run(&["verify", &repo, "-i", &key, "--all"]).fails(6);
    w.run(&["drill", &repo, "-i", &key]).fails(6);
    // The owner's key commands do not re-encrypt to, or hand out, the forged set.
    w.run(&["key", "rewrap", &repo, "-i", &key]).fails(6);
    w.run(&["key", "add", &repo, "-i", &key, "-r", &atk_rcpt]).fails(6);
    // A new backup host cannot be joined to it: without the fingerprint it is refused,
    // with the owner's it does not match.
    let fresh = w.s("fresh-home");
    let r = w
        .run_env(&["join", &repo, "-i", &key], &[("SQLVAULT_HOME", &fresh)])
        .fails(5);
    assert!(r.stderr.contains("SQLVAULT_REPO_FINGERPRINT"), "{}", r.stderr);
    w.run_env(
        &["join", &repo, "-i", &key],
        &[("SQLVAULT_HOME", &fresh), ("SQLVAULT_REPO_FINGERPRINT", &fingerprint)],
    )
    .fails(6);
    assert!(
        !Path::new(&fresh).join("repos").exists(),
        "no write key for the forged repository"
    );
    // The backup host still writes only into what it knows.
    w.run(&["backup", &db, &repo]).fails(6);
}

#[test]
fn attack_bw_join_and_key_changes_need_a_pin_or_the_fingerprint() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _, db, fingerprint) = owner(&w, &repo);
    let fresh = w.s("fresh-home");
    let h = [("SQLVAULT_HOME", fresh.as_str())];
    w.run_env(&["join", &repo, "-i", &key], &h).fails(5);
    w.run_env(&["key", "rewrap", &repo, "-i", &key], &h).fails(5);
    let (_, other) = new_key(&w, "other.key");
    w.run_env(&["key", "add", &repo, "-i", &key, "-r", &other], &h).fails(5);
    // Refused means nothing was trusted either: the same command still refuses.
    w.run_env(&["join", &repo, "-i", &key], &h).fails(5);
    let with_fp = [
        ("SQLVAULT_HOME", fresh.as_str()),
        ("SQLVAULT_REPO_FINGERPRINT", fingerprint.as_str()),
    ];
    w.run_env(&["join", &repo, "-i", &key], &with_fp).ok();
    w.run_env(&["backup", &db, &repo], &h).ok();
    // Pinned now: no fingerprint needed any more.
    w.run_env(&["key", "rewrap", &repo, "-i", &key], &h).ok();
}

fn new_key(w: &World, name: &str) -> (String, String) {
    let path = w.s(name);
    let r = w.run(&["key", "generate", "-o", &path]).ok().stdout.trim().to_string();
    (path, r)
}

#[test]
fn attack_bw_a_repository_id_never_becomes_a_path() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _, db, _) = owner(&w, &repo);
    let abs = w.s("abs-target");
    for bad in ["../../../escaped", abs.as_str(), "..", "."] {
        std::fs::write(
            w.path("repo/sqlvault.json"),
            serde_json::to_vec(&serde_json::json!({"format": "sqlvault", "version": 1, "repo_id": bad})).unwrap(),
        )
        .unwrap();
        w.run(&["backup", &db, &repo]).fails(6);
        w.run(&["restore", &repo, &w.s("out.db"), "-i", &key]).fails(6);
        w.run_env(&["join", &repo, "-i", &key], &[("SQLVAULT_HOME", &w.s("h2/a/b"))])
            .fails(6);
    }
    let outside = w.dir.path().parent().unwrap().join("escaped");
    assert!(!w.path("escaped").exists() && !w.path("h2/escaped").exists() && !outside.exists());
    assert!(!Path::new(&abs).exists());
    assert!(!w.path("out.db").exists());
}

#[test]
fn attack_bwc_forged_indexes_cannot_make_prune_delete_live_data() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, rcpt, db, _) = owner(&w, &repo);
    let packs: Vec<String> = files(&w.path("repo/packs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!packs.is_empty());
    // For every real pack, indexes that say it holds only junk: format 2 with a MAC
    // under a secret of the attacker's, and format 1 without a MAC, each sealed to the
    // victim's public recipient.
    let attacker_keys = RepoSecret::generate().keys();
    for p in &packs {
        let idx = IndexFile {
            packs: vec![PackSection {
                pack: p.parse().unwrap(),
                entries: vec![IndexEntry {
                    id: ChunkId(rand_bytes()),
                    frame_offset: 0,
                    frame_len: 10,
                    offset: 0,
                    len: 4096,
                }],
            }],
        };
        let v2 = idx.encode(&attacker_keys);
        let mut v1 = v2[..v2.len() - 32].to_vec();
        v1[..8].copy_from_slice(b"SQLVIDX1");
        for bytes in [v2, v1] {
            std::fs::write(w.path(&format!("repo/index/{}", random_name())), seal(&bytes, &[&rcpt])).unwrap();
        }
    }
    // Three prunes that need not wait for the grace: mark, delete, and once more.
    for _ in 0..3 {
        let p = w
            .run(&["prune", &repo, "-i", &key, "--no-running-backups", "--json"])
            .ok()
            .json();
        assert_eq!(p["deleted"]["packs"], 0, "{p}");
        assert_eq!(p["skipped"].as_array().unwrap().len(), packs.len() * 2, "{p}");
    }
    // And without an identity (a write-key prune, as a cron job on a backup host).
    w.run(&["prune", &repo, "--no-running-backups"]).ok();
    for p in &packs {
        assert!(w.path(&format!("repo/packs/{p}")).exists(), "pack {p} was deleted");
    }
    let out = w.s("restored.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    // check names every forged index.
    let c = w.run(&["check", &repo, "-i", &key, "--json"]).fails(6).json();
    assert_eq!(c["problems"].as_array().unwrap().len(), packs.len() * 2, "{c}");
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&ObjectId::random().0);
    b[16..].copy_from_slice(&ObjectId::random().0);
    b
}

#[test]
fn attack_bwc_junk_objects_do_not_deny_service() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, rcpt, db, _) = owner(&w, &repo);
    let real = w.run(&["snapshots", &repo, "--json"]).ok().json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Garbage, and well-formed age objects sealed to the public recipient, under every
    // directory readers list.
    for dir in ["snapshots", "index", "evidence", "maps"] {
        std::fs::create_dir_all(w.path(&format!("repo/{dir}"))).unwrap();
        std::fs::write(w.path(&format!("repo/{dir}/{}", random_name())), b"garbage").unwrap();
        std::fs::write(
            w.path(&format!("repo/{dir}/{}", random_name())),
            seal(b"{\"body\":\"{}\",\"mac\":\"00\"}\n", &[&rcpt]),
        )
        .unwrap();
    }
    std::fs::write(w.path("repo/snapshots/not-an-id"), b"x").unwrap();
    // And one far larger than any manifest: never read into memory.
    let big = std::fs::File::create(w.path(&format!("repo/snapshots/{}", random_name()))).unwrap();
    big.set_len(64 << 20).unwrap();

    let snaps = w.run(&["snapshots", &repo, "--json"]).ok().json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1, "{snaps}");
    let out = w.s("a.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run(&["restore", &repo, &w.s("b.db"), "-i", &key, "--snapshot", &real[..8]])
        .ok();
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();
    w.run(&["drill", &repo, "-i", &key]).ok();
    w.run(&["backup", &db, &repo]).ok();
    w.run(&["prune", &repo, "-i", &key]).ok();
    // The audit goes on and reports the junk it ignored as a finding.
    let a = w.run(&["audit", &db, "--repo", &repo, "-i", &key, "--json"]).json();
    let junk = a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "repo.unauthenticated-object")
        .count();
    assert_eq!(junk, 6, "{a}");
    // check reports every one of them.
    let c = w.run(&["check", &repo, "-i", &key, "--json"]).fails(6).json();
    let text = c["problems"].to_string();
    for dir in ["snapshots", "index"] {
        assert!(text.contains(dir), "{dir}: {c}");
    }
}

#[test]
fn attack_rk_a_removed_key_cannot_sign_itself_back_in() {
    let w = World::new();
    let repo = w.s("repo");
    let (a_key, a) = new_key(&w, "a.key");
    let (b_key, b) = new_key(&w, "b.key");
    w.run(&["init", &repo, "-r", &a, "-r", &b]).ok();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 128 << 10,
            seed: 5,
            wal: true,
        },
    )
    .unwrap();
    w.run(&["backup", &db, &repo]).ok();
    w.run(&["restore", &repo, &w.s("pin.db"), "-i", &a_key]).ok();
    // B, still a recipient, reads the config: the secret and the admin key.
    let b_ids = Identities::from_file(Path::new(&b_key)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&decrypt_to_vec(&b_ids, &std::fs::read(w.path("repo/config")).unwrap()).unwrap())
            .unwrap();
    let old_admin = AdminKey::from_hex(cfg["admin_key"].as_str().unwrap()).unwrap();
    let old_cfg_ct = std::fs::read(w.path("repo/config")).unwrap();
    let repo_id = cfg["repo_id"].as_str().unwrap().to_string();

    // The owner removes B; the backup host adopts the new set.
    w.run(&["key", "remove", &repo, "-r", &b, "-i", &a_key]).ok();
    w.run(&["backup", &db, &repo]).ok();

    // B signs the next generation with the admin key it knew, naming itself.
    let evil_admin = AdminKey::generate();
    let set2 = RecipientSet::signed(
        &repo_id,
        2,
        vec![a.clone(), b.clone()],
        1,
        &old_admin,
        Some(&evil_admin),
    );
    let set2_path = w.path("repo/keys/recipients-00000000000000000002");
    std::fs::write(&set2_path, serde_json::to_vec(&set2).unwrap()).unwrap();
    let r = w.run(&["backup", &db, &repo]).fails(6);
    assert!(r.stderr.contains("not signed"), "{}", r.stderr);
    std::fs::remove_file(&set2_path).unwrap();
    // Replacing generation 1 itself (with delete rights) is refused too.
    let set1_path = w.path("repo/keys/recipients-00000000000000000001");
    let good = std::fs::read(&set1_path).unwrap();
    let set1 = RecipientSet::signed(
        &repo_id,
        1,
        vec![a.clone(), b.clone()],
        1,
        &old_admin,
        Some(&evil_admin),
    );
    std::fs::write(&set1_path, serde_json::to_vec(&set1).unwrap()).unwrap();
    w.run(&["backup", &db, &repo]).fails(6);
    std::fs::write(&set1_path, &good).unwrap();

    // B seals a config of its own with the secret it knows: the owner's restore host,
    // which followed the signed sets, refuses it, and nothing is re-encrypted to B.
    let mut forged = cfg.clone();
    forged["generation"] = 2.into();
    forged["recipients"] = serde_json::json!([a, b]);
    forged["admin_key"] = evil_admin.to_hex().into();
    forged["published_set"] = serde_json::to_value(&set2).unwrap();
    let good_cfg = std::fs::read(w.path("repo/config")).unwrap();
    std::fs::write(
        w.path("repo/config"),
        seal(&serde_json::to_vec(&forged).unwrap(), &[&a, &b]),
    )
    .unwrap();
    let r = w.run(&["key", "rewrap", &repo, "-i", &a_key]).fails(6);
    assert!(r.stderr.contains("admin key"), "{}", r.stderr);
    w.run(&["restore", &repo, &w.s("x.db"), "-i", &a_key]).fails(6);
    std::fs::write(w.path("repo/config"), &good_cfg).unwrap();

    // Nor does the owner's own config from before the removal, put back by someone who
    // kept a copy of its ciphertext.
    std::fs::write(w.path("repo/config"), &old_cfg_ct).unwrap();
    let r = w.run(&["key", "rewrap", &repo, "-i", &a_key]).fails(6);
    assert!(r.stderr.contains("older"), "{}", r.stderr);
    std::fs::write(w.path("repo/config"), &good_cfg).unwrap();

    // What hosts adopt is the owner's set, and B reads nothing new.
    let list = w.run(&["key", "list", &repo, "--json"]).ok().json();
    assert_eq!(list["recipients"], serde_json::json!([a]), "{list}");
    assert_eq!(list["generation"], 1);
    w.run(&["key", "rewrap", &repo, "-i", &a_key]).ok();
    for f in files(&w.path("repo/packs")) {
        assert!(decrypt_to_vec(&b_ids, &std::fs::read(f).unwrap()).is_err());
    }
}

#[test]
fn attack_local_state_files_others_could_have_written_are_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let repo = w.s("repo");
    let (key, _, db, _) = owner(&w, &repo);
    let wk = files(&w.path("home/repos"))
        .into_iter()
        .find(|p| p.ends_with("write-key.json"))
        .unwrap();
    // Writable by others: someone could have swapped in their own recipients.
    std::fs::set_permissions(&wk, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = w.run(&["backup", &db, &repo]).fails(9);
    assert!(r.stderr.contains("refusing to trust"), "{}", r.stderr);
    // A symbolic link in its place is not followed either.
    std::fs::set_permissions(&wk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let real = w.path("elsewhere.json");
    std::fs::rename(&wk, &real).unwrap();
    std::os::unix::fs::symlink(&real, &wk).unwrap();
    w.run(&["backup", &db, &repo]).fails(9);
    std::fs::remove_file(&wk).unwrap();
    std::fs::rename(&real, &wk).unwrap();
    w.run(&["backup", &db, &repo]).ok();
    // The same for a location pin.
    let pin = files(&w.path("home/locations")).pop().unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o646)).unwrap();
    w.run(&["restore", &repo, &w.s("x.db"), "-i", &key]).fails(9);
    assert!(!w.path("x.db").exists());
}

/// BW: a snapshot forgotten (its manifest deleted) while a reader host still has it in
/// its local manifest catalog. The bucket writer puts junk back under the same name:
/// the listing shows the name again, but it is another object, so the reader fetches
/// and authenticates it instead of serving the catalogued plaintext. The forgotten
/// snapshot stays forgotten: not listed, not restored as the newest, not counted by
/// retention.
#[test]
fn attack_bw_a_forgotten_snapshot_does_not_come_back_from_the_readers_catalog() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, _, db, _) = owner(&w, &repo);
    let first = content(Path::new(&db));
    kit::update_random(Path::new(&db), 0.05, 3).unwrap();
    let newest = w.run(&["backup", &db, &repo, "--json"]).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The reader catalogues both manifests.
    let listed = w.run(&["snapshots", &repo, "-i", &key, "--json"]).ok().json();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2, "{listed}");
    // Forgotten elsewhere, then a 1-byte object under its name.
    let manifest = Path::new(&repo).join("snapshots").join(&newest);
    std::fs::remove_file(&manifest).unwrap();
    std::fs::write(&manifest, b"x").unwrap();

    let listed = w.run(&["snapshots", &repo, "-i", &key, "--json"]).ok().json();
    let ids: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&newest.as_str()),
        "the forgotten snapshot is listed again: {listed}"
    );
    assert_eq!(ids.len(), 1, "{listed}");
    // The newest restorable state is the older snapshot's, and no catalogued copy of
    // the forgotten one is restored by id either.
    let out = w.s("out.db");
    w.run(&["restore", &repo, &out, "-i", &key]).ok();
    assert_eq!(content(Path::new(&out)), first);
    w.run(&[
        "restore",
        &repo,
        &w.s("gone.db"),
        "-i",
        &key,
        "--snapshot",
        &newest[..8],
    ])
    .fails(6);
}
