use std::path::Path;

use crate::support::{World, content, kit};

/// Round trip against a real S3 API server (moto) on 127.0.0.1. Fails, never skips,
/// when the server cannot be started.
#[test]
fn s3_round_trip_on_a_real_server() {
    let moto = kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("backups").unwrap();
    let env: Vec<(String, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = World::new();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let repo = "s3://backups/prod/app";
    w.run_env(&["init", repo, "-r", &rcpt], &env).ok();
    w.run_env(&["init", repo, "-r", &rcpt], &env).fails(8);
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 3 << 20,
            seed: 5,
            wal: true,
        },
    )
    .unwrap();
    let first = w.run_env(&["backup", &db, repo, "--json"], &env).ok().json();
    kit::update_random(Path::new(&db), 0.005, 1).unwrap();
    let second = w.run_env(&["backup", &db, repo, "--json"], &env).ok().json();
    assert_eq!(second["map_kind"], "delta");
    assert_eq!(second["requests"]["list"], 0);
    assert!(second["chunks_new"].as_u64().unwrap() < first["chunks_new"].as_u64().unwrap() / 3);
    let list = w.run_env(&["snapshots", repo, "--json"], &env).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let out = w.s("out.db");
    w.run_env(&["restore", repo, &out, "-i", &key], &env).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run_env(&["verify", repo, "-i", &key, "--all"], &env).ok();
    w.run_env(&["check", repo, "-i", &key, "--read-data"], &env).ok();
    drop(moto);
    // The server is gone: a clear store error, not a hang or a panic.
    w.run_env(&["snapshots", repo, "-i", &key], &env).fails(3);
}

/// The same round trip against azurite, a real Azure Blob API server, on 127.0.0.1.
#[test]
fn azure_round_trip_on_azurite() {
    let az = kit::AzuriteServer::start().expect("azurite-blob must be installed: npm install -g azurite");
    az.create_container("backups").expect("container");
    let env: Vec<(String, String)> = az.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = World::new();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    let repo = "az://backups/prod/app";
    w.run_env(&["init", repo, "-r", &rcpt], &env).ok();
    w.run_env(&["init", repo, "-r", &rcpt], &env).fails(8);
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 2 << 20,
            seed: 6,
            wal: true,
        },
    )
    .unwrap();
    w.run_env(&["backup", &db, repo], &env).ok();
    kit::update_random(Path::new(&db), 0.005, 2).unwrap();
    let second = w.run_env(&["backup", &db, repo, "--json"], &env).ok().json();
    assert_eq!(second["map_kind"], "delta");
    assert_eq!(second["requests"]["list"], 0);
    let out = w.s("out.db");
    w.run_env(&["restore", repo, &out, "-i", &key], &env).ok();
    assert_eq!(content(Path::new(&out)), content(Path::new(&db)));
    w.run_env(&["check", repo, "-i", &key, "--read-data"], &env).ok();
}
