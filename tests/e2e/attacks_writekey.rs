//! Attacks by the holder of a backup host's write key (WK: the recipients and the
//! repository secret, no identity): it may add snapshots, and must not be able to read
//! old data, exhaust or mislead the restore host beyond a snapshot that fails
//! verification, or test guesses of a database key offline.

use std::path::Path;
use std::process::Command;

use sqlvault_engine::crypt::{CryptError, decrypt_to_vec};
use sqlvault_engine::format::{IndexFile, MapRef, ObjectId, PageMap, decode_manifest, layout};

use crate::attacks::forge_snapshot;
use crate::support::{Run, World, WriteKeyView, content, files};

fn repo_with_snapshot(w: &World) -> (String, String, String) {
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 512 << 10, true);
    w.run(&["backup", &db, &repo]).ok();
    (repo, key, db)
}

fn only_snapshot(w: &World) -> std::path::PathBuf {
    let snaps = files(&w.path("repo/snapshots"));
    assert_eq!(snaps.len(), 1);
    snaps[0].clone()
}

/// Runs sqlvault with its address space limited to `mib`: an allocation the input
/// could force beyond that aborts the process instead of passing unnoticed.
fn run_limited(w: &World, mib: u64, args: &[&str]) -> Run {
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", mib << 20))
        .arg(env!("CARGO_BIN_EXE_sqlvault"))
        .args(args)
        .env_remove("SQLVAULT_IDENTITY_FILE");
    for (k, v) in &w.env {
        c.env(k, v);
    }
    let o = c.output().expect("prlimit (util-linux)");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn attack_wk_the_database_key_check_is_no_offline_oracle() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 256 << 10, false);
    let kf = w.s("db.key");
    std::fs::write(&kf, "correct horse battery staple").unwrap();
    w.run(&["db", "encrypt", &db, "--key-file", &kf]).ok();
    w.run(&["backup", &db, &repo, "--db-key-file", &kf]).ok();
    // What the write key opens: the manifest. It holds no check value in the clear, and
    // the sealed one does not open with the metadata key.
    let wk = WriteKeyView::of(&w);
    let snap = only_snapshot(&w);
    let id: ObjectId = snap.file_name().unwrap().to_string_lossy().parse().unwrap();
    let m = decode_manifest(&wk.keys, &wk.open(&snap), &id).unwrap();
    let c = m.cipher.expect("a SQLCipher snapshot");
    assert!(c.key_check.is_empty() && c.key_check_salt.is_empty(), "{c:?}");
    let sealed = hex::decode(c.key_check_sealed.expect("sealed check")).unwrap();
    assert!(matches!(
        decrypt_to_vec(&wk.meta, &sealed),
        Err(CryptError::NoMatchingIdentity)
    ));
    // The identity holder still tells a wrong key from the right one before restoring.
    let bad = w.s("bad.key");
    std::fs::write(&bad, "correct horse battery stapler").unwrap();
    let r = w
        .run(&["restore", &repo, &w.s("x.db"), "-i", &key, "--db-key-file", &bad])
        .fails(5);
    assert!(r.stderr.contains("not the one"), "{}", r.stderr);
    assert!(!w.path("x.db").exists());
    w.run(&["restore", &repo, &w.s("y.db"), "-i", &key, "--db-key-file", &kf])
        .ok();
}

#[test]
fn attack_wk_an_index_that_repoints_chunks_does_not_break_a_sound_snapshot() {
    let w = World::new();
    let (repo, key, db) = repo_with_snapshot(&w);
    let wk = WriteKeyView::of(&w);
    // Every real entry, re-pointed: half at another frame, half with a frame length
    // of 512 MiB. Authenticated (the write key can MAC), named to be read first.
    let mut forged = IndexFile::default();
    for f in files(&w.path("repo/index")) {
        let (idx, _) = IndexFile::decode(&wk.open(&f), &wk.keys).unwrap();
        forged.packs.extend(idx.packs);
    }
    for (i, e) in forged.packs.iter_mut().flat_map(|p| p.entries.iter_mut()).enumerate() {
        if i % 2 == 0 {
            e.frame_len = 512 << 20;
        } else {
            e.offset = e.offset.wrapping_add(4096);
        }
    }
    std::fs::write(
        w.path(&format!("repo/index/{}", "0".repeat(32))),
        wk.seal(&forged.encode(&wk.keys)),
    )
    .unwrap();
    // Restore goes to the real entries, within a bounded address space.
    let out = w.s("out.db");
    let r = run_limited(&w, 2048, &["restore", &repo, &out, "-i", &key]).ok();
    assert!(r.stderr.contains("another index entry"), "{}", r.stderr);
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    // Prune keeps what the snapshot needs, with or without an identity.
    for args in [
        vec!["prune", &repo, "-i", &key, "--no-running-backups"],
        vec!["prune", &repo, "--no-running-backups"],
        vec!["prune", &repo, "-i", &key, "--no-running-backups"],
    ] {
        w.run(&args).ok();
    }
    w.run(&["verify", &repo, "-i", &key, "--all"]).ok();
}

#[test]
fn attack_wk_crafted_maps_cannot_exhaust_the_restore_host() {
    let w = World::new();
    let (repo, key, _) = repo_with_snapshot(&w);
    let wk = WriteKeyView::of(&w);
    let real = only_snapshot(&w);
    let real_id = real.file_name().unwrap().to_string_lossy().to_string();
    // A 17-byte delta claiming 2^32-1 pages, MAC'd as the write key can, and snapshots
    // whose manifests claim that many pages (or a page size SQLite never uses).
    let mut delta = b"SQLVMAP1".to_vec();
    delta.push(1);
    delta.extend_from_slice(&u32::MAX.to_le_bytes());
    delta.extend_from_slice(&0u32.to_le_bytes());
    assert!(PageMap::decode(&delta).is_ok(), "a well-formed map");
    let map_id = ObjectId::random();
    std::fs::write(w.path(&format!("repo/{}", layout::map(&map_id))), wk.seal(&delta)).unwrap();
    let mac = hex::encode(wk.keys.mac(&delta));
    let huge = forge_snapshot(&w, Path::new(&repo), &real_id[..8], |m| {
        m.maps.push(MapRef {
            id: map_id,
            mac: mac.clone(),
        });
        m.page_count = u32::MAX;
        m.name = "huge.db".into();
    });
    let odd = forge_snapshot(&w, Path::new(&repo), &real_id[..8], |m| {
        m.page_size = u32::MAX;
        m.name = "odd.db".into();
    });
    for id in [&huge, &odd] {
        let out = w.s("x.db");
        let r = run_limited(&w, 1024, &["restore", &repo, &out, "-i", &key, "--snapshot", id]);
        assert_eq!(r.code, 6, "{id}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked") && !r.stderr.contains("memory allocation"));
        assert!(!Path::new(&out).exists());
    }
    // The sound snapshot is untouched by them.
    let r = run_limited(
        &w,
        1024,
        &["restore", &repo, &w.s("ok.db"), "-i", &key, "--snapshot", &real_id],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn attack_wk_forged_sqlcipher_settings_are_refused_before_any_key_derivation() {
    let w = World::new();
    let repo = w.s("repo");
    let (key, db) = w.setup(&repo, 128 << 10, false);
    let kf = w.s("db.key");
    std::fs::write(&kf, "correct horse battery staple").unwrap();
    w.run(&["db", "encrypt", &db, "--key-file", &kf]).ok();
    w.run(&["backup", &db, &repo, "--db-key-file", &kf]).ok();
    let real = only_snapshot(&w);
    let real_id = real.file_name().unwrap().to_string_lossy().to_string();
    // The write key re-signs the manifest with settings that would keep the restore
    // host in PBKDF2 for hours, or that SQLCipher has no use for.
    let slow = forge_snapshot(&w, Path::new(&repo), &real_id[..8], |m| {
        m.cipher.as_mut().unwrap().kdf_iter = i32::MAX as u32;
    });
    let odd_page = forge_snapshot(&w, Path::new(&repo), &real_id[..8], |m| {
        m.cipher.as_mut().unwrap().page_size = 3000;
    });
    let odd_alg = forge_snapshot(&w, Path::new(&repo), &real_id[..8], |m| {
        m.cipher.as_mut().unwrap().kdf_algorithm = "PBKDF2_HMAC_MD5".into();
    });
    for (id, what) in [
        (&slow, "kdf_iter"),
        (&odd_page, "cipher_page_size"),
        (&odd_alg, "cipher_kdf_algorithm"),
    ] {
        let out = w.s("x.db");
        // A CPU limit only so that a restore that did start deriving ends (killed, not
        // exit 6) instead of running for hours.
        let mut c = Command::new("prlimit");
        c.arg("--cpu=120")
            .arg(env!("CARGO_BIN_EXE_sqlvault"))
            .args([
                "restore",
                &repo,
                &out,
                "-i",
                &key,
                "--db-key-file",
                &kf,
                "--snapshot",
                id,
            ])
            .env_remove("SQLVAULT_IDENTITY_FILE");
        for (k, v) in &w.env {
            c.env(k, v);
        }
        let o = c.output().expect("prlimit (util-linux)");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(6), "{id}: {stderr}");
        assert!(
            stderr.contains("repo.corrupt-object") || stderr.contains(what),
            "{stderr}"
        );
        assert!(stderr.contains(what), "{stderr}");
        assert!(!Path::new(&out).exists());
    }
    // The sound snapshot restores.
    w.run(&[
        "restore",
        &repo,
        &w.s("ok.db"),
        "-i",
        &key,
        "--db-key-file",
        &kf,
        "--snapshot",
        &real_id,
    ])
    .ok();
}
