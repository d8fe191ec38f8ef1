//! Immutable repositories on an S3 bucket with Object Lock (moto): init checks the
//! bucket, forget and prune never delete what is locked, prune extends the locks of
//! what kept snapshots reference, audit reports the lock.

use std::path::Path;

use crate::support::{World, kit};

fn until_ms(rfc3339: &str) -> i64 {
    // `2026-12-01T06:11:18Z` or with `.000Z`: seconds precision is all that matters.
    let s = rfc3339.trim().trim_end_matches('Z');
    let s = s.split('.').next().unwrap();
    let (d, t) = s.split_once('T').unwrap();
    let d: Vec<i64> = d.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = t.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    ((days * 86400) + t[0] * 3600 + t[1] * 60 + t[2]) * 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const DAY: i64 = 86_400_000;

#[test]
fn immutable_repositories_on_s3_object_lock_and_attack_bw_a_marker_cannot_unlock() {
    let moto = kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("plain").unwrap();
    moto.create_locked_bucket("nodefault", "GOVERNANCE", 0).unwrap();
    moto.create_locked_bucket("vault", "GOVERNANCE", 1).unwrap();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = World::new();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();

    // init refuses what cannot hold the promise, naming why; nothing is created.
    for (repo, why) in [
        (w.s("local"), "s3://"),
        ("s3://plain/r".to_string(), "Object Lock enabled"),
        ("s3://nodefault/r".to_string(), "no default retention"),
        ("s3://vault/too-long".to_string(), "default retention is 1 days"),
    ] {
        let days = if repo.ends_with("too-long") { "2" } else { "1" };
        let r = w
            .run_env(&["init", &repo, "-r", &rcpt, "--immutable-days", days], &env)
            .fails(2);
        assert!(r.stderr.contains(why), "{repo}: {}", r.stderr);
        assert!(
            r.stderr.contains("init.lock-unavailable") || r.stderr.contains("immutable"),
            "{}",
            r.stderr
        );
    }
    assert!(
        kit::http_raw(
            moto.port,
            "HEAD",
            "/vault/too-long/sqlvault.json",
            &[kit::MOTO_AUTH],
            b""
        )
        .unwrap()
        .0 == 404
    );

    let repo = "s3://vault/app";
    w.run_env(&["init", repo, "-r", &rcpt, "--immutable-days", "1"], &env)
        .ok();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 5,
            wal: true,
        },
    )
    .unwrap();
    for seed in 0..3 {
        w.run_env(&["backup", &db, repo], &env).ok();
        kit::update_random(Path::new(&db), 0.05, seed).unwrap();
    }
    let first_pack = {
        let (_, _, body) = kit::http_raw(moto.port, "GET", "/vault?list-type=2&prefix=app/packs/", &[], b"").unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        let k = body
            .split("<Key>")
            .nth(1)
            .unwrap()
            .split("</Key>")
            .next()
            .unwrap()
            .to_string();
        k.strip_prefix("vault/").unwrap_or(&k).to_string()
    };
    let before = until_ms(
        &moto
            .retain_until("vault", &first_pack)
            .unwrap()
            .expect("locked by default"),
    );
    assert!((before - (now_ms() + DAY)).abs() < 120_000, "default lock: {before}");

    // forget: the two older snapshots are due, but locked: kept and reported, not hidden
    // behind delete markers.
    let v = w
        .run_env(&["forget", repo, "--keep-last", "1", "--json"], &env)
        .ok()
        .json();
    assert_eq!(v["removed"], 0, "{v}");
    assert_eq!(v["locked"], 2, "{v}");
    let entries = v["groups"][0]["snapshots"].as_array().unwrap();
    let locked: Vec<i64> = entries.iter().filter_map(|e| e["locked_until_ms"].as_i64()).collect();
    assert_eq!(locked.len(), 2, "{v}");
    assert!(locked.iter().all(|u| *u > now_ms() + DAY - 300_000), "{locked:?}");
    let text = w.run_env(&["forget", repo, "--keep-last", "1"], &env).ok().stdout;
    assert!(text.contains("under S3 Object Lock until"), "{text}");
    let snaps = w.run_env(&["snapshots", repo, "--json"], &env).ok().json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 3, "{snaps}");

    // Attack: a bucket writer rewrites the marker without the declaration. forget and
    // prune go by the bucket's lock, not by the marker: nothing becomes deletable.
    let (_, _, marker) = kit::http_raw(moto.port, "GET", "/vault/app/sqlvault.json", &[kit::MOTO_AUTH], b"").unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&marker).unwrap();
    assert_eq!(m["immutable_days"], 1, "{m}");
    m.as_object_mut().unwrap().remove("immutable_days");
    let (st, _, _) = kit::http_raw(
        moto.port,
        "PUT",
        "/vault/app/sqlvault.json",
        &[("x-amz-sdk-checksum-algorithm", "SHA256"), kit::MOTO_AUTH],
        &serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    assert_eq!(st, 200);
    let v = w
        .run_env(&["forget", repo, "--keep-last", "1", "--json"], &env)
        .ok()
        .json();
    assert_eq!((v["removed"].as_u64(), v["locked"].as_u64()), (Some(0), Some(2)), "{v}");
    let snaps = w.run_env(&["snapshots", repo, "--json"], &env).ok().json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 3, "{snaps}");

    // An object nobody references (a killed backup's pack): marked, never extended.
    let stray = "app/packs/0123456789abcdef0123456789abcdef";
    let (st, _, _) = kit::http_raw(
        moto.port,
        "PUT",
        &format!("/vault/{stray}"),
        &[("x-amz-sdk-checksum-algorithm", "SHA256"), kit::MOTO_AUTH],
        b"junk",
    )
    .unwrap();
    assert_eq!(st, 200);
    let stray_until = moto.retain_until("vault", stray).unwrap().unwrap();

    // prune: every referenced object's lock is pushed to now + 1.5 P; again, nothing
    // more to do (this host recorded it).
    let v = w.run_env(&["prune", repo, "-i", &key, "--json"], &env).ok().json();
    let ext = &v["object_lock"]["extended"];
    assert!(ext["objects"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(ext["failed"], 0, "{v}");
    let after = until_ms(&moto.retain_until("vault", &first_pack).unwrap().unwrap());
    assert!(after > now_ms() + DAY + DAY / 3, "extended: {after} vs {before}");
    for k in ["app/config", "app/sqlvault.json"] {
        let u = until_ms(&moto.retain_until("vault", k).unwrap().unwrap());
        assert!(u > now_ms() + DAY + DAY / 3, "{k}");
    }
    assert_eq!(
        moto.retain_until("vault", stray).unwrap().unwrap(),
        stray_until,
        "unreferenced: not extended"
    );
    let v = w.run_env(&["prune", repo, "-i", &key, "--json"], &env).ok().json();
    assert_eq!(v["object_lock"]["extended"]["objects"], 0, "{v}");
    assert!(v["object_lock"]["extended"]["already"].as_u64().unwrap() >= 5, "{v}");

    // The stray's mark is ripe now (no backup runs), but it is locked: held, not deleted.
    let v = w
        .run_env(&["prune", repo, "-i", &key, "--no-running-backups", "--json"], &env)
        .ok()
        .json();
    assert_eq!(v["object_lock"]["held"]["packs"], 1, "{v}");
    assert_eq!(v["deleted"]["packs"], 0, "{v}");
    assert!(
        v["object_lock"]["held_until_ms"].as_i64().unwrap() > now_ms() + DAY - 300_000,
        "{v}"
    );
    let (st, hs, _) = kit::http_raw(moto.port, "HEAD", &format!("/vault/{stray}"), &[kit::MOTO_AUTH], b"").unwrap();
    assert_eq!(st, 200, "still there, no delete marker: {hs:?}");
    let text = w
        .run_env(&["prune", repo, "-i", &key, "--no-running-backups"], &env)
        .ok()
        .stdout;
    assert!(text.contains("held by S3 Object Lock"), "{text}");

    // A prefix with characters URLs escape: the objects are under the prefix as written
    // (not a literal `%20`), and the lock requests reach them.
    let odd = "s3://vault/équipe odd+=@,x";
    w.run_env(&["init", odd, "-r", &rcpt], &env).ok();
    w.run_env(&["backup", &db, odd, "--name", "odd.db"], &env).ok();
    let v = w.run_env(&["prune", odd, "-i", &key, "--json"], &env).ok().json();
    assert_eq!(v["object_lock"]["extended"]["failed"], 0, "{v}");
    assert!(v["object_lock"]["extended"]["objects"].as_u64().unwrap() >= 4, "{v}");
    let u = moto
        .retain_until("vault", "%C3%A9quipe%20odd%2B%3D%40%2Cx/config")
        .unwrap()
        .expect("the config under the odd prefix is locked");
    assert!(until_ms(&u) > now_ms() + DAY + DAY / 3, "extended: {u}");

    // Everything still restores.
    w.run_env(&["restore", repo, &w.s("out.db"), "-i", &key], &env).ok();

    // audit: the lock covers the declaration; GOVERNANCE is named as liftable.
    let r = w.run_env(&["audit", &db, "--repo", repo, "-i", &key, "--json"], &env);
    let v = r.json();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"repo.lock-covers"), "{v}");
    assert!(codes.contains(&"repo.lock-governance"), "{v}");

    // A marker that claims immutability on a bucket without Object Lock (a bucket
    // writer can write one) is reported, not believed.
    let plain = "s3://plain/app";
    w.run_env(&["init", plain, "-r", &rcpt], &env).ok();
    w.run_env(&["backup", &db, plain], &env).ok();
    let (_, _, marker) = kit::http_raw(moto.port, "GET", "/plain/app/sqlvault.json", &[kit::MOTO_AUTH], b"").unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&marker).unwrap();
    m["immutable_days"] = serde_json::json!(30);
    let body = serde_json::to_vec(&m).unwrap();
    let (st, _, _) = kit::http_raw(moto.port, "PUT", "/plain/app/sqlvault.json", &[kit::MOTO_AUTH], &body).unwrap();
    assert_eq!(st, 200);
    let r = w.run_env(&["audit", &db, "--repo", plain, "-i", &key, "--json"], &env);
    assert_eq!(r.code, 13, "{}", r.stderr);
    let v = r.json();
    assert!(v.to_string().contains("repo.lock-missing"), "{v}");
}
