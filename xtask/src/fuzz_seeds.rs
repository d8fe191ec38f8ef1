//! `cargo xtask fuzz --write-seeds`: the committed seed corpus of each fuzz target, a
//! handful of valid encodings made by the real encoders (so the fuzzer starts from
//! inputs that pass every check and mutates from there). MAC'd and signed seeds use the
//! fixed secret and admin key of `fuzz/fuzz_targets/common.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use sqlvault_engine::evidence::Evidence;
use sqlvault_engine::format::{
    AdminKey, ChunkId, ChunkSeq, CipherFacts, DumpFacts, IndexEntry, IndexFile, Manifest, MapRef, ObjectId,
    PackSection, PageMap, RecipientSet, RepoConfig, RepoKeys, RepoMarker, RepoSecret, SnapshotStats, encode_entries,
    encode_manifest, encode_pack_trailer,
};

use crate::fuzz::seed_dir;

/// The repository secret of every MAC'd seed (common.rs: 32 × 0x07).
fn keys() -> RepoKeys {
    RepoSecret::from_bytes([7; 32]).keys()
}

/// The admin key that signs the recipient-set seeds (common.rs: 32 × 0x08).
fn admin() -> AdminKey {
    AdminKey::from_hex(&"08".repeat(32)).expect("hex")
}

fn put(corpus: &Path, target: &str, seeds: Vec<Vec<u8>>) -> Result<()> {
    let dir = seed_dir(corpus, target)?;
    for (i, s) in seeds.iter().enumerate() {
        let p = dir.join(format!("seed-{i}"));
        std::fs::write(&p, s).with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{target}: {} seeds", seeds.len());
    Ok(())
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

const REPO_ID: &str = "0123456789abcdef0123456789abcdef";

fn manifest(kind: &str) -> Manifest {
    Manifest {
        version: sqlvault_engine::format::FORMAT_VERSION,
        id: ObjectId([1; 16]),
        name: "app.db".into(),
        kind: kind.into(),
        created_ms: 1_700_000_000_000,
        host: "host".into(),
        source_path: "/srv/app.db".into(),
        page_size: 4096,
        page_count: 3,
        journal_mode: "wal".into(),
        user_version: 7,
        application_id: 0,
        text_encoding: "UTF-8".into(),
        sqlite_version: "3.50.0".into(),
        tool_version: "0.1.0".into(),
        logical_checksum: "ab".repeat(32),
        maps: vec![MapRef {
            id: ObjectId([2; 16]),
            mac: "cd".repeat(32),
        }],
        parent: (kind == "pages").then_some(ObjectId([3; 16])),
        stats: SnapshotStats {
            bytes_read: 12288,
            bytes_new: 500,
            chunks_total: 3,
            chunks_new: 1,
            requests: Some(sqlvault_engine::format::StoredRequests {
                get: 2,
                put: 5,
                list: 0,
                delete: 0,
                head: 3,
            }),
        },
        dump: (kind == "dump").then(|| DumpFacts {
            chunker: sqlvault_engine::format::DUMP_CHUNKER.describe(),
        }),
        cipher: (kind == "dump").then(|| CipherFacts {
            compatibility: 4,
            page_size: 4096,
            kdf_iter: 256000,
            hmac_algorithm: "HMAC_SHA512".into(),
            kdf_algorithm: "PBKDF2_HMAC_SHA512".into(),
            sqlcipher_version: "4.6.1".into(),
            key_check_salt: "00".repeat(16),
            key_check: "11".repeat(32),
            key_check_sealed: Some("22".repeat(200)),
        }),
        source_check: (kind == "dump")
            .then(|| sqlvault_engine::format::SourceCheck::of(&["row 1 missing from index i".into()])),
        replicated: kind == "pages",
        state: None,
    }
}

fn id(b: u8) -> ChunkId {
    ChunkId([b; 32])
}

fn page_entries() -> Vec<IndexEntry> {
    (0..3)
        .map(|i| IndexEntry {
            id: id(i + 1),
            frame_offset: 0,
            frame_len: 40,
            offset: 4096 * i as u32,
            len: 4096,
        })
        .collect()
}

fn variable_entries() -> Vec<IndexEntry> {
    vec![
        IndexEntry {
            id: id(1),
            frame_offset: 0,
            frame_len: 9,
            offset: 0,
            len: 100,
        },
        IndexEntry {
            id: id(2),
            frame_offset: 0,
            frame_len: 9,
            offset: 100,
            len: 7,
        },
        IndexEntry {
            id: id(3),
            frame_offset: 9,
            frame_len: 3,
            offset: 0,
            len: 1000,
        },
    ]
}

/// The base sequence the chunkseq target builds from its first byte `n`.
fn base_seq(n: u8) -> ChunkSeq {
    ChunkSeq {
        ids: (0..n).map(id).collect(),
        lens: (0..n).map(|i| 100 + i as u32).collect(),
    }
}

/// A small database with what a dump has to carry (rowid and WITHOUT ROWID tables,
/// every storage class, an index, a view, a trigger, AUTOINCREMENT), dumped by the real
/// dumper; and a plain SQL file as a user would hand to `sqlvault load`.
/// A WAL as SQLite writes it: three commits on 512-byte pages, copied while the writer
/// holds it open (closing would checkpoint it away).
fn wal_seed() -> Result<Vec<u8>> {
    let dir = sqlvault_engine::sqlite::tempfile::tempdir()?;
    let db = dir.path().join("seed.db");
    let c = rusqlite::Connection::open(&db)?;
    c.execute_batch(
        "PRAGMA page_size=512; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(x); INSERT INTO t VALUES('row0'); INSERT INTO t VALUES('row1');",
    )?;
    let wal = std::fs::read(dir.path().join("seed.db-wal"))?;
    drop(c);
    Ok(wal)
}

fn sql_seeds() -> Result<Vec<Vec<u8>>> {
    let dir = sqlvault_engine::sqlite::tempfile::tempdir()?;
    let db = dir.path().join("seed.db");
    let c = rusqlite::Connection::open(&db)?;
    c.execute_batch(
        "PRAGMA journal_mode=DELETE; PRAGMA user_version=3;
         CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, price REAL, img BLOB, n);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE INDEX t_name ON t(name);
         CREATE VIEW cheap AS SELECT id, name FROM t WHERE price < 10;
         CREATE TRIGGER t_kv AFTER INSERT ON t BEGIN INSERT OR REPLACE INTO kv VALUES('last', new.id); END;
         INSERT INTO t(name, price, img, n) VALUES('it''s', 1.5, x'00ff10', NULL), ('b', 1e300, x'', 42),
           ('naïve 🚀', -0.0, NULL, 'text'), ('d', 9.99, zeroblob(4), 9223372036854775807);",
    )?;
    drop(c);
    let mut src = sqlvault_engine::sqlite::Source::open(&db, Default::default())?;
    let mut dump = Vec::new();
    src.dump(&mut dump)?;
    let plain = b"CREATE TABLE a(x INTEGER PRIMARY KEY, y TEXT);\n\
        INSERT INTO a VALUES(1,'one');\nINSERT INTO \"a\"(\"x\",\"y\") VALUES(2,X'74776f');\n\
        BEGIN;\nUPDATE a SET y = upper(y) WHERE x = 1;\nCOMMIT;\nSELECT count(*) FROM a;\n"
        .to_vec();
    Ok(vec![dump, plain])
}

pub fn write(corpus: &Path) -> Result<()> {
    let keys = keys();
    let admin = admin();
    let next = AdminKey::from_hex(&"09".repeat(32)).expect("hex");

    put(
        corpus,
        "marker",
        vec![serde_json::to_vec(&RepoMarker::new(REPO_ID.into()))?],
    )?;

    let set = RecipientSet::signed(REPO_ID, 0, vec!["age1recipient".into()], 1, &admin, None);
    let rotated = RecipientSet::signed(
        REPO_ID,
        1,
        vec!["age1a".into(), "ssh-ed25519 AAAAC3 b".into()],
        2,
        &admin,
        Some(&next),
    );
    put(
        corpus,
        "recipient_set",
        vec![serde_json::to_vec(&set)?, serde_json::to_vec_pretty(&rotated)?],
    )?;

    let config = |full: bool| RepoConfig {
        version: 1,
        repo_id: REPO_ID.into(),
        created_ms: 1,
        recipients: vec!["age1recipient".into()],
        secret: RepoSecret::from_bytes([7; 32]).to_hex(),
        data_identity: full.then(|| "AGE-SECRET-KEY-1XYZ".into()),
        admin_key: full.then(|| admin.to_hex()),
        generation: full as u64,
        published_set: full.then(|| rotated.clone()),
    };
    put(
        corpus,
        "config",
        vec![serde_json::to_vec(&config(false))?, serde_json::to_vec(&config(true))?],
    )?;

    let mut manifests = Vec::new();
    for kind in ["pages", "dump"] {
        let m = manifest(kind);
        manifests.push(with_mode(0, &encode_manifest(&keys, &m)));
        manifests.push(with_mode(1, &serde_json::to_vec(&m)?));
    }
    put(corpus, "manifest", manifests)?;

    let base = [id(1), id(2), id(3)];
    let current = [id(1), id(9), id(3), id(4)];
    put(
        corpus,
        "pagemap",
        vec![
            PageMap::encode_full(&base),
            PageMap::delta(&base, &current).encode(),
            PageMap::delta(&current, &base).encode(),
            PageMap::encode_full(&[]),
        ],
    )?;

    let idx = IndexFile {
        packs: vec![
            PackSection {
                pack: ObjectId([7; 16]),
                entries: page_entries(),
            },
            PackSection {
                pack: ObjectId([8; 16]),
                entries: variable_entries(),
            },
        ],
    };
    let v2 = idx.encode(&keys);
    let mut v1 = v2[..v2.len() - 32].to_vec();
    v1[..8].copy_from_slice(b"SQLVIDX1");
    put(
        corpus,
        "index",
        vec![with_mode(0, &v2), with_mode(1, &v2[..v2.len() - 32]), with_mode(0, &v1)],
    )?;

    let pack = |frames: usize, entries: &[IndexEntry]| {
        let mut p = vec![0x28; frames];
        p.extend_from_slice(&encode_pack_trailer(entries));
        p
    };
    put(
        corpus,
        "pack_trailer",
        vec![pack(40, &page_entries()), pack(12, &variable_entries())],
    )?;
    put(
        corpus,
        "entries",
        vec![encode_entries(&page_entries()), encode_entries(&variable_entries())],
    )?;

    let cur = ChunkSeq {
        ids: vec![id(0), id(1), id(20), id(3), id(4), id(21), id(7)],
        lens: vec![100, 101, 5, 103, 104, 6, 107],
    };
    let mut seqs = vec![with_mode(0, &cur.encode_full())];
    seqs.push(with_mode(
        8,
        &cur.edit_from(&base_seq(8), usize::MAX).expect("no limit"),
    ));
    seqs.push(with_mode(
        3,
        &base_seq(2).edit_from(&base_seq(3), usize::MAX).expect("no limit"),
    ));
    put(corpus, "chunkseq", seqs)?;

    let msg = b"sqlvault seed message";
    let mut signed = format!("{}|{}|", admin.public_hex(), admin.sign(msg)).into_bytes();
    signed.extend_from_slice(msg);
    put(
        corpus,
        "ids_keys",
        vec![
            ObjectId([0xa5; 16]).to_string().into_bytes(),
            serde_json::to_vec(&ObjectId([0x5a; 16]))?,
            admin.to_hex().into_bytes(),
            signed,
        ],
    )?;

    let sql = sql_seeds()?;
    put(corpus, "cdc", vec![sql[0].clone()])?;
    put(corpus, "load", sql)?;
    put(corpus, "wal", vec![wal_seed()?])?;

    let evidence = |ok: bool| Evidence {
        kind: if ok { "verify" } else { "drill" }.into(),
        at_ms: 1_700_000_100_000,
        snapshot_id: ObjectId([1; 16]).to_string(),
        name: "app.db".into(),
        snapshot_created_ms: 1_700_000_000_000,
        ok,
        checks: vec!["integrity_check".into(), "logical_checksum".into()],
        code: (!ok).then(|| "restore.integrity".into()),
        restore_seconds: 0.25,
        check_seconds: 1.5e-3,
        host: "host".into(),
    };
    put(
        corpus,
        "evidence",
        vec![
            serde_json::to_vec(&evidence(true))?,
            serde_json::to_vec(&evidence(false))?,
        ],
    )?;
    Ok(())
}
