//! Round trips against real object-store APIs on 127.0.0.1: moto (S3) and azurite
//! (Azure Blob). Both fail, never skip, when their server cannot be started.

use std::path::Path;

use crate::support::{World, content, kit};

/// The same scenario on any backend: init (twice: the second must refuse), a full and
/// an incremental backup without LIST, listing, restore, verify, check --read-data.
fn round_trip(w: &World, repo: &str, env: &[(String, String)]) -> String {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    w.run_env(&["init", repo, "-r", &rcpt], &env).ok();
    w.run_env(&["init", repo, "-r", &rcpt], &env).fails(8);
    let db = w.s("app.db");
    let opts = kit::GenOptions {
        target_bytes: 3 << 20,
        seed: 5,
        wal: true,
    };
    kit::generate(Path::new(&db), &opts).unwrap();
    let first = w.run_env(&["backup", &db, repo, "--json"], &env).ok().json();
    kit::update_random(Path::new(&db), 0.005, 1).unwrap();
    let second = w.run_env(&["backup", &db, repo, "--json"], &env).ok().json();
    assert_eq!(second["map_kind"], "delta");
    assert_eq!(second["requests"]["list"], 0, "a backup never lists the bucket");
    assert!(second["chunks_new"].as_u64().unwrap() < first["chunks_new"].as_u64().unwrap() / 3);
    let list = w.run_env(&["snapshots", repo, "--json"], &env).ok().json()["snapshots"].clone();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let out = w.s("out.db");
    w.run_env(&["restore", repo, &out, "-i", &key], &env).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run_env(&["verify", repo, "-i", &key, "--all"], &env).ok();
    w.run_env(&["check", repo, "-i", &key, "--read-data"], &env).ok();
    key
}

#[test]
fn s3_round_trip_on_a_real_server() {
    let moto = kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("backups").unwrap();
    let w = World::new();
    let repo = "s3://backups/prod/app";
    let key = round_trip(&w, repo, &moto.env());
    let env = moto.env();
    drop(moto);
    // The server is gone: a clear store error, not a hang or a panic.
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.run_env(&["snapshots", repo, "-i", &key], &env).fails(3);
}

#[test]
fn azure_round_trip_on_azurite() {
    let az = kit::AzuriteServer::start().expect("azurite-blob must be installed: npm install -g azurite");
    az.create_container("backups").expect("container");
    round_trip(&World::new(), "az://backups/prod/app", &az.env());
}
