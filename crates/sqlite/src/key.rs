//! SQLCipher keys and settings, and opening a database that may be encrypted: the low
//! layer every other module uses ([`DbKey`], [`CipherSettings`], [`Unlock`],
//! `apply_key`, `open_db`), plus what the first bytes and the lock bytes of a file say
//! about it (`head`, hot journals, other openers). Nothing here dumps or loads; the
//! in-place conversions that do live in `convert`, above dump and load.
//!
//! With the `sqlvault-sqlite/sqlcipher` feature this crate links SQLCipher in place of
//! SQLite (rusqlite's `bundled-sqlcipher`): a database opened without a key behaves
//! exactly as with plain SQLite. A key is handed to SQLCipher through `sqlite3_key_v2`
//! or a bound `ATTACH … KEY ?` parameter, never through SQL text, so it cannot surface
//! in an error message that quotes a statement. Without the feature, every operation
//! that needs a key fails with [`SqliteError::NoSqlcipher`].

use std::ffi::c_int;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use crate::SqliteError;

const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A database key: a passphrase, or a raw 256-bit key written as SQLCipher writes it,
/// `x'<64 hex digits>'` (96 digits: key then salt).
///
/// The bytes are zeroed when the key is dropped and never printed: `Debug` shows
/// `DbKey(<redacted>)`. A bare 64-digit hex string is a passphrase, as in SQLCipher's
/// `PRAGMA key = '…'`, so a key means the same here as in the application.
#[derive(Clone)]
pub struct DbKey {
    bytes: Zeroizing<Vec<u8>>,
    raw: bool,
    /// Keys derived from this passphrase, shared by every clone: each (salt, KDF)
    /// costs one PBKDF2 run per process, not one per connection. (Unused without
    /// SQLCipher, which is what derives them.)
    #[cfg_attr(not(feature = "sqlcipher"), allow(dead_code))]
    derived: Arc<Mutex<Vec<Derived>>>,
}

/// A key derived from a passphrase for one file (its salt) and KDF; zeroed on drop.
#[cfg_attr(not(feature = "sqlcipher"), allow(dead_code))]
struct Derived {
    salt: [u8; 16],
    kdf_algorithm: String,
    kdf_iter: u32,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

impl DbKey {
    /// A key from secret text (a key file's content, an environment variable, a
    /// prompt). One trailing newline is removed; an empty key or a malformed `x'…'`
    /// key is refused without quoting it.
    pub fn from_text(text: &str) -> Result<DbKey, SqliteError> {
        let t = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        if t.is_empty() {
            return Err(SqliteError::BadKey {
                what: "the database key is empty".into(),
            });
        }
        let lower = t.to_ascii_lowercase();
        let raw = lower.starts_with("x'") && lower.ends_with('\'') && t.len() >= 3;
        if raw {
            let hex = &t[2..t.len() - 1];
            if !(hex.len() == 64 || hex.len() == 96) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SqliteError::BadKey {
                    what: "a raw database key must be x' followed by 64 hex digits (96 with the salt) and '".into(),
                });
            }
        }
        Ok(DbKey {
            bytes: Zeroizing::new(t.as_bytes().to_vec()),
            raw,
            derived: Arc::default(),
        })
    }

    /// Reads a key file (the whole file, one trailing newline removed).
    pub fn from_file(path: &Path) -> Result<DbKey, SqliteError> {
        // A FIFO or device would block the read: only a regular file is a key file.
        let mut f = crate::open_regular(path, true).map_err(|e| match e {
            SqliteError::NotRegular { path, kind } => SqliteError::BadKey {
                what: format!(
                    "the database key file {} is a {kind}, not a regular file",
                    path.display()
                ),
            },
            other => other,
        })?;
        let mut buf = Zeroizing::new(Vec::new());
        f.read_to_end(&mut buf).map_err(|source| SqliteError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&buf).map_err(|_| SqliteError::BadKey {
            what: format!("the database key file {} is not UTF-8 text", path.display()),
        })?;
        DbKey::from_text(text)
    }

    /// Whether this is a raw key (`x'…'`) rather than a passphrase.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// The key as SQLCipher takes it (`sqlite3_key_v2`, `ATTACH … KEY ?`).
    pub(crate) fn sqlcipher_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// This passphrase as SQLCipher's raw key with salt, `x'<key><salt>'`, for a file
    /// whose salt is `salt`, under `settings`' KDF: what SQLCipher would derive itself
    /// (with the same OpenSSL `PKCS5_PBKDF2_HMAC` it calls), derived here once per
    /// (salt, KDF) and remembered. `None` for a KDF this code does not know, or a
    /// failure: SQLCipher then derives it itself.
    #[cfg(not(feature = "sqlcipher"))]
    fn raw_for(&self, _salt: &[u8; 16], _settings: &CipherSettings) -> Option<Zeroizing<Vec<u8>>> {
        None
    }

    /// See the other `raw_for`: with SQLCipher linked, derives with its OpenSSL.
    #[cfg(feature = "sqlcipher")]
    fn raw_for(&self, salt: &[u8; 16], settings: &CipherSettings) -> Option<Zeroizing<Vec<u8>>> {
        // SAFETY: these return pointers to OpenSSL's static digest descriptions.
        let md = unsafe {
            match settings.kdf_algorithm.as_str() {
                "PBKDF2_HMAC_SHA512" => openssl_sys::EVP_sha512(),
                "PBKDF2_HMAC_SHA256" => openssl_sys::EVP_sha256(),
                "PBKDF2_HMAC_SHA1" => openssl_sys::EVP_sha1(),
                _ => return None,
            }
        };
        let iter = c_int::try_from(settings.kdf_iter).ok().filter(|&i| i > 0)?;
        let pass_len = c_int::try_from(self.bytes.len()).ok()?;
        let mut cache = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        let pos = cache.iter().position(|d| {
            d.salt == *salt && d.kdf_algorithm == settings.kdf_algorithm && d.kdf_iter == settings.kdf_iter
        });
        let pos = match pos {
            Some(p) => p,
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                // SAFETY: every pointer is valid for the length passed with it; `md` is
                // a static digest; OpenSSL writes exactly 32 bytes into `key`.
                let ok = unsafe {
                    openssl_sys::PKCS5_PBKDF2_HMAC(
                        self.bytes.as_ptr().cast(),
                        pass_len,
                        salt.as_ptr(),
                        16,
                        iter,
                        md,
                        32,
                        key.as_mut_ptr(),
                    )
                };
                if ok != 1 {
                    return None;
                }
                tracing::debug!(target: "sqlvault_sqlite::kdf", kdf_iter = settings.kdf_iter, "key derived from the passphrase");
                cache.push(Derived {
                    salt: *salt,
                    kdf_algorithm: settings.kdf_algorithm.clone(),
                    kdf_iter: settings.kdf_iter,
                    key,
                });
                cache.len() - 1
            }
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new(Vec::with_capacity(3 + 2 * 48));
        out.extend_from_slice(b"x'");
        for &b in cache[pos].key.iter().chain(salt.iter()) {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
        out.push(b'\'');
        Some(out)
    }

    /// A check value: BLAKE3 keyed by a derivation of the key and `salt`. Lets a
    /// restore tell a wrong key from the right one without storing the key.
    pub fn check_value(&self, salt: &[u8; 16]) -> [u8; 32] {
        let mut k = Zeroizing::new([0u8; 32]);
        let mut h = blake3::Hasher::new_derive_key("sqlvault 2026 database key check v1");
        h.update(salt);
        h.update(&self.bytes);
        k.copy_from_slice(h.finalize().as_bytes());
        *blake3::keyed_hash(&k, b"check").as_bytes()
    }
}

/// The SQLCipher settings of an encrypted database: what a client must set, after the
/// key, to open it. A key is not part of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherSettings {
    /// The SQLCipher major version whose defaults the file uses (`PRAGMA
    /// cipher_compatibility`): 4 for files made by SQLCipher 4, 3 for SQLCipher 3.x.
    pub compatibility: u8,
    /// `cipher_page_size`.
    pub page_size: u32,
    /// `kdf_iter` (PBKDF2 iterations; unused with a raw key).
    pub kdf_iter: u32,
    /// `cipher_hmac_algorithm`, e.g. `HMAC_SHA512`.
    pub hmac_algorithm: String,
    /// `cipher_kdf_algorithm`, e.g. `PBKDF2_HMAC_SHA512`.
    pub kdf_algorithm: String,
}

impl CipherSettings {
    /// The defaults of a SQLCipher major version (1 to 4), which a client of that
    /// version opens with the key alone.
    pub fn defaults(compatibility: u8) -> Result<CipherSettings, SqliteError> {
        match compatibility {
            4 => Ok(CipherSettings {
                compatibility: 4,
                page_size: 4096,
                kdf_iter: 256_000,
                hmac_algorithm: "HMAC_SHA512".into(),
                kdf_algorithm: "PBKDF2_HMAC_SHA512".into(),
            }),
            3 => Ok(CipherSettings {
                compatibility: 3,
                page_size: 1024,
                kdf_iter: 64_000,
                hmac_algorithm: "HMAC_SHA1".into(),
                kdf_algorithm: "PBKDF2_HMAC_SHA1".into(),
            }),
            // Legacy SQLCipher 2.x and 1.x files (1.x has no page MAC at all: SQLCipher's
            // `cipher_compatibility = 1` turns it off, and the algorithm named here is
            // then unused).
            2 | 1 => Ok(CipherSettings {
                compatibility,
                page_size: 1024,
                kdf_iter: 4_000,
                hmac_algorithm: "HMAC_SHA1".into(),
                kdf_algorithm: "PBKDF2_HMAC_SHA1".into(),
            }),
            n => Err(SqliteError::BadKey {
                what: format!("SQLCipher compatibility {n} is not supported (1 to 4)"),
            }),
        }
    }

    /// The pragmas that select these settings on schema `schema`, run after the key.
    fn pragmas(&self, schema: &str) -> String {
        // Every value is ours or validated (numbers, and algorithm names checked by
        // `validate`), so formatting them into SQL is safe.
        format!(
            "PRAGMA {schema}.cipher_compatibility = {}; PRAGMA {schema}.cipher_page_size = {}; \
             PRAGMA {schema}.kdf_iter = {}; PRAGMA {schema}.cipher_hmac_algorithm = {}; \
             PRAGMA {schema}.cipher_kdf_algorithm = {};",
            self.compatibility, self.page_size, self.kdf_iter, self.hmac_algorithm, self.kdf_algorithm
        )
    }

    /// Bytes SQLCipher reserves at the end of every page: the IV, and the MAC unless
    /// the settings are SQLCipher 1's, rounded up to the AES block.
    pub fn reserve(&self) -> u32 {
        let mac: u32 = match (self.compatibility, self.hmac_algorithm.as_str()) {
            (1, _) => 0,
            (_, "HMAC_SHA1") => 20,
            (_, "HMAC_SHA256") => 32,
            _ => 64,
        };
        (16 + mac).div_ceil(16) * 16
    }

    /// Whether SQLite can use pages of `page_size` bytes under these settings: what
    /// the reserve leaves must be at least the 480 bytes SQLite needs of a page.
    pub fn fits_page_size(&self, page_size: u32) -> bool {
        page_size.is_power_of_two()
            && (512..=65536).contains(&page_size)
            && page_size.saturating_sub(self.reserve()) >= 480
    }

    /// Checks the settings are ones SQLCipher can use and cost a bounded derivation:
    /// compatibility 1 to 4, a page size SQLite allows (a power of two, 512 to 65536),
    /// `kdf_iter` from 1 to [`MAX_KDF_ITER`], and algorithms SQLCipher names. Settings
    /// read from a manifest are checked before any key is derived from them: a forged
    /// `kdf_iter` of 2^31 would keep a restore in PBKDF2 for hours.
    pub fn validate(&self) -> Result<(), SqliteError> {
        let bad = |what: String| {
            Err(SqliteError::BadKey {
                what: format!("invalid SQLCipher settings: {what}"),
            })
        };
        if !matches!(self.compatibility, 1..=4) {
            return bad(format!("cipher_compatibility {} (1 to 4)", self.compatibility));
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return bad(format!(
                "cipher_page_size {} (a power of two from 512 to 65536)",
                self.page_size
            ));
        }
        if !(1..=MAX_KDF_ITER).contains(&self.kdf_iter) {
            return bad(format!("kdf_iter {} (1 to {MAX_KDF_ITER})", self.kdf_iter));
        }
        if !matches!(
            self.hmac_algorithm.as_str(),
            "HMAC_SHA1" | "HMAC_SHA256" | "HMAC_SHA512"
        ) {
            return bad("cipher_hmac_algorithm (HMAC_SHA1, HMAC_SHA256 or HMAC_SHA512)".into());
        }
        if !matches!(
            self.kdf_algorithm.as_str(),
            "PBKDF2_HMAC_SHA1" | "PBKDF2_HMAC_SHA256" | "PBKDF2_HMAC_SHA512"
        ) {
            return bad("cipher_kdf_algorithm (PBKDF2_HMAC_SHA1, PBKDF2_HMAC_SHA256 or PBKDF2_HMAC_SHA512)".into());
        }
        Ok(())
    }
}

/// The most PBKDF2 iterations sqlvault derives a key with: 39 times SQLCipher 4's
/// default of 256,000 (seconds of one core, not hours). A database set to more cannot be
/// backed up; a manifest recording more is refused as forged.
pub const MAX_KDF_ITER: u32 = 10_000_000;

/// Version of SQLCipher linked into this build (`PRAGMA cipher_version`).
pub fn sqlcipher_version() -> String {
    quiet_sqlcipher();
    Connection::open_in_memory()
        .and_then(|c| c.query_row("PRAGMA cipher_version", [], |r| r.get::<_, String>(0)))
        .unwrap_or_else(|_| "unknown".into())
}

/// SQLCipher logs failed page decryptions (every wrong-key attempt) to stderr by
/// default; sqlvault reports those itself, as one line naming the file.
pub(crate) fn quiet_sqlcipher() {
    crate::guard_sqlite_opens();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(c) = Connection::open_in_memory() {
            let _ = c.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()));
        }
    });
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// Zero bytes.
    Empty,
    /// Starts with the plaintext SQLite header.
    Plain,
    /// No header, but sized like whole pages: a SQLCipher database, or noise.
    Opaque,
    /// Neither: not a database of any kind.
    NotDb,
}

/// Reads the start of `path` to tell a plaintext database from a possibly encrypted
/// one. An encrypted file is whole pages of at least 512 bytes. Anything but a regular
/// file (a FIFO, socket or device) is [`SqliteError::NotRegular`], found without
/// blocking.
pub(crate) fn head(path: &Path) -> Result<Head, SqliteError> {
    use std::os::unix::fs::FileExt;
    let io = |source| SqliteError::io_at(path, source);
    // Through the descriptor this process holds when it has connections on the file:
    // closing another would drop their locks (regular.rs, `hold_file`).
    let f = match crate::held(path) {
        Some(f) => f,
        None => std::sync::Arc::new(crate::open_regular(path, true)?),
    };
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(Head::Empty);
    }
    let mut head = [0u8; 16];
    if len >= 16 {
        f.read_exact_at(&mut head, 0).map_err(io)?;
        if &head == HEADER {
            return Ok(Head::Plain);
        }
    }
    if len >= 512 && len % 512 == 0 {
        Ok(Head::Opaque)
    } else {
        Ok(Head::NotDb)
    }
}

/// How to unlock a database: its key, and its SQLCipher settings when known (otherwise
/// SQLCipher 4 defaults are tried, then SQLCipher 3's, then the legacy 2.x and 1.x
/// ones).
#[derive(Debug, Clone)]
pub struct Unlock {
    /// The key.
    pub key: DbKey,
    /// Settings to use instead of detecting them.
    pub settings: Option<CipherSettings>,
}

impl Unlock {
    /// A key with detected settings.
    pub fn key(key: DbKey) -> Unlock {
        Unlock { key, settings: None }
    }
    /// A key with the defaults of one SQLCipher major version.
    pub fn with_compatibility(key: DbKey, compatibility: u8) -> Result<Unlock, SqliteError> {
        Ok(Unlock {
            key,
            settings: Some(CipherSettings::defaults(compatibility)?),
        })
    }
}

/// The salt of the database `conn` opened: the first 16 bytes of an existing
/// encrypted file, or a fresh random one for a file that does not exist yet or is
/// empty (SQLCipher writes the salt given with a raw key into a new file). `None`
/// otherwise (no file, a plaintext header): SQLCipher is left to do what it does.
fn salt_for(conn: &Connection) -> Option<[u8; 16]> {
    let path = conn.path().filter(|p| !p.is_empty())?;
    let mut salt = [0u8; 16];
    // Through the descriptor this process holds when it has connections on the file:
    // closing another would drop their locks (regular.rs, `hold_file`).
    let opened = match crate::held(Path::new(path)) {
        Some(f) => Ok(f),
        None => crate::open_regular(Path::new(path), true).map(std::sync::Arc::new),
    };
    match opened {
        Ok(f) => {
            use std::os::unix::fs::FileExt;
            let len = f.metadata().ok()?.len();
            if len == 0 {
                return random_salt();
            }
            if len < 512 || f.read_exact_at(&mut salt, 0).is_err() || &salt == HEADER {
                return None;
            }
            Some(salt)
        }
        Err(SqliteError::Missing { .. }) => random_salt(),
        Err(_) => None,
    }
}

fn random_salt() -> Option<[u8; 16]> {
    let mut salt = [0u8; 16];
    // SAFETY: the buffer is 16 writable bytes; getrandom writes at most that many.
    let n = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) };
    (n == 16).then_some(salt)
}

/// Gives a fresh connection its key and settings: must run before its first read.
///
/// A passphrase is handed to SQLCipher as the raw key it derives from it for this
/// file (`x'<key><salt>'`), derived here once per key, file and KDF: SQLCipher runs
/// PBKDF2 (256,000 iterations of HMAC-SHA512 with SQLCipher 4 settings) at every
/// connection it is given a passphrase on, and a conversion or a verified restore opens
/// several. The result is the same key SQLCipher would derive.
pub(crate) fn apply_key(conn: &Connection, key: &DbKey, settings: &CipherSettings) -> rusqlite::Result<()> {
    settings.validate().map_err(|_| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
            Some("invalid SQLCipher settings".into()),
        )
    })?;
    let derived = match key.raw {
        true => None,
        false => salt_for(conn).and_then(|salt| key.raw_for(&salt, settings)),
    };
    let b: &[u8] = match &derived {
        Some(d) => d,
        None => key.sqlcipher_bytes(),
    };
    // What SQLCipher does with a passphrase costs one PBKDF2 run at the first read:
    // counted in the debug log (`SQLVAULT_LOG=sqlvault_sqlite::kdf=debug`) with the
    // derivations made here, never with the key.
    if !key.raw && derived.is_none() {
        tracing::debug!(target: "sqlvault_sqlite::kdf", kdf_iter = settings.kdf_iter, "SQLCipher derives a key from the passphrase");
    }
    key_v2(conn, b)?;
    conn.execute_batch(&settings.pragmas("main"))
}

/// Whether this build links SQLCipher (the `sqlcipher` feature). Without it, every
/// operation that needs a database key fails with [`SqliteError::NoSqlcipher`], and an
/// encrypted database can only be recognised ([`probe`] says
/// [`AtRest::Encrypted`]), never opened.
pub fn has_sqlcipher() -> bool {
    cfg!(feature = "sqlcipher")
}

/// [`SqliteError::NoSqlcipher`] unless this build links SQLCipher: the check every
/// public operation that would key a connection makes before touching any file.
pub(crate) fn require_sqlcipher(op: &'static str) -> Result<(), SqliteError> {
    if has_sqlcipher() {
        Ok(())
    } else {
        Err(SqliteError::NoSqlcipher { op })
    }
}

/// Hands `key` to SQLCipher for the main schema of `conn`.
#[cfg(feature = "sqlcipher")]
fn key_v2(conn: &Connection, b: &[u8]) -> rusqlite::Result<()> {
    // SAFETY: the connection is open and owned by the caller; SQLCipher copies the key
    // bytes before returning.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_key_v2(
            conn.handle(),
            c"main".as_ptr(),
            b.as_ptr().cast(),
            c_int::try_from(b.len()).unwrap_or(c_int::MAX),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None));
    }
    Ok(())
}

/// Plain SQLite has no `sqlite3_key_v2`: a key would be silently ignored, so it is an
/// error (public callers have already returned [`SqliteError::NoSqlcipher`]).
#[cfg(not(feature = "sqlcipher"))]
fn key_v2(_conn: &Connection, _b: &[u8]) -> rusqlite::Result<()> {
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some("built without SQLCipher support".into()),
    ))
}

/// Reads the settings SQLCipher is using on `schema` of a keyed connection.
fn read_settings(conn: &Connection, schema: &str, compatibility: u8) -> rusqlite::Result<CipherSettings> {
    let get = |p: &str| conn.query_row(&format!("PRAGMA {schema}.{p}"), [], |r| r.get::<_, String>(0));
    let num = |p: &str| -> rusqlite::Result<u32> {
        get(p)?
            .trim()
            .parse()
            .map_err(|_| rusqlite::Error::InvalidColumnType(0, p.into(), rusqlite::types::Type::Text))
    };
    Ok(CipherSettings {
        compatibility,
        page_size: num("cipher_page_size")?,
        kdf_iter: num("kdf_iter")?,
        hmac_algorithm: get("cipher_hmac_algorithm")?,
        kdf_algorithm: get("cipher_kdf_algorithm")?,
    })
}

/// The settings detection tries, in order: SQLCipher 4's defaults, then 3's, then the
/// legacy 2.x and 1.x ones; each first with its default page size, then with every
/// other page size SQLCipher can use that divides the file's length (an encrypted
/// file's page size cannot be read from it). The key is derived once per KDF (see
/// [`apply_key`]), so a page size costs one read of page 1, not a PBKDF2 run.
fn candidates(len: u64) -> Result<Vec<CipherSettings>, SqliteError> {
    let mut out = Vec::new();
    for compat in (1..=4).rev() {
        let d = CipherSettings::defaults(compat)?;
        out.push(d.clone());
        for p in (9..=16).map(|b| 1u32 << b) {
            if p != d.page_size && d.fits_page_size(p) && len.is_multiple_of(u64::from(p)) {
                out.push(CipherSettings {
                    page_size: p,
                    ..d.clone()
                });
            }
        }
    }
    Ok(out)
}

/// Opens an existing database as an application would — read-write when `writable`,
/// else read-only — plaintext, or SQLCipher with `unlock` (the key proven here). Never
/// creates a file: a missing path, or a file that is not a database, is an error naming
/// it. For tools that run the user's SQL on a database (`sqlvault sql`, `policy check`).
pub fn open_database(
    path: &Path,
    unlock: Option<&Unlock>,
    writable: bool,
    busy_timeout: Duration,
) -> Result<Connection, SqliteError> {
    let flags = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    open_db(path, unlock, flags, busy_timeout).map(|(c, _)| c)
}

/// A connection to a database that may be encrypted, and its settings (`None` when
/// the file is plaintext).
pub(crate) fn open_db(
    path: &Path,
    unlock: Option<&Unlock>,
    flags: OpenFlags,
    timeout: Duration,
) -> Result<(Connection, Option<CipherSettings>), SqliteError> {
    open_db_as(path, &path.to_string_lossy(), unlock, flags, timeout)
}

/// [`open_db`], opening `name` (a path, or a `file:` URI with `SQLITE_OPEN_URI`) for
/// the file `path`.
pub(crate) fn open_db_as(
    path: &Path,
    name: &str,
    unlock: Option<&Unlock>,
    flags: OpenFlags,
    timeout: Duration,
) -> Result<(Connection, Option<CipherSettings>), SqliteError> {
    quiet_sqlcipher();
    let err = |e| SqliteError::from_sqlite(path, timeout, e);
    // A read-only connection cannot roll back a crashed writer's journal, and SQLite
    // then fails every read with "attempt to write a readonly database": say what it is.
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_WRITE)
        && let Some(journal) = hot_journal_beside(path)
    {
        return Err(SqliteError::HotJournal {
            path: path.to_path_buf(),
            journal,
        });
    }
    match (head(path)?, unlock) {
        (Head::Plain, Some(_)) => Err(SqliteError::NotEncrypted {
            path: path.to_path_buf(),
        }),
        (Head::Empty | Head::NotDb, _) => Err(SqliteError::NotADatabase {
            path: path.to_path_buf(),
        }),
        (Head::Plain, None) => {
            let conn = Connection::open_with_flags(name, flags).map_err(err)?;
            conn.busy_timeout(timeout).map_err(err)?;
            Ok((conn, None))
        }
        (Head::Opaque, None) => Err(SqliteError::Encrypted {
            path: path.to_path_buf(),
        }),
        (Head::Opaque, Some(u)) => {
            require_sqlcipher("opening an encrypted database")?;
            let tries = match &u.settings {
                Some(s) => vec![s.clone()],
                None => candidates(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))?,
            };
            for s in tries {
                let conn = Connection::open_with_flags(name, flags).map_err(err)?;
                conn.busy_timeout(timeout).map_err(err)?;
                apply_key(&conn, &u.key, &s).map_err(err)?;
                match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
                    Ok(()) => {
                        let settings = read_settings(&conn, "main", s.compatibility).map_err(err)?;
                        return Ok((conn, Some(settings)));
                    }
                    Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => continue,
                    Err(e) => return Err(err(e)),
                }
            }
            Err(SqliteError::WrongKey {
                path: path.to_path_buf(),
            })
        }
    }
}

const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// A `-journal` is hot when it starts with a journal header and no writer is live on
/// the database: SQLite rolls it back at the next read-write open, and a read-only open
/// cannot read the database. A live writer's journal is not hot, only busy. Decided as
/// SQLite decides it (`hasHotJournal`): by probing the database's lock bytes, which
/// sees the locks of every process on this kernel, whatever its user or PID namespace.
///
/// A live writer's journal comes and goes between two probes: read the header, then
/// find no lock, and a writer that committed in between (deleting its journal, then
/// unlocking) looks like a crashed one. So the lock is probed before and after the
/// header is read, and a journal is only called hot when it looks hot in
/// [`HOT_ROUNDS`] rounds a few milliseconds apart: a crashed writer's journal stays,
/// a live one's does not keep lining up with unlocked moments.
pub(crate) fn hot_journal(db: &Path, journal: &Path) -> bool {
    (0..HOT_ROUNDS).all(|round| {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        !writer_is_live(db) && journal_has_header(journal) && !writer_is_live(db)
    })
}

/// Consecutive rounds in which a journal must look hot (see [`hot_journal`]).
const HOT_ROUNDS: usize = 3;

/// Whether `journal` starts with a rollback journal's header.
fn journal_has_header(journal: &Path) -> bool {
    let mut magic = [0u8; 8];
    // Never through a link, never blocking on a FIFO swapped in since it was judged.
    let ok = crate::open_regular(journal, false).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok());
    ok && magic == JOURNAL_MAGIC
}

/// SQLite's lock bytes (`os_unix.c`): a writer write-locks `RESERVED_BYTE` from its
/// first write to its commit; one about to write the file write-locks `PENDING_BYTE`
/// and then the shared range (EXCLUSIVE), as does one rolling a hot journal back.
const PENDING_BYTE: i64 = 0x4000_0000;
const RESERVED_BYTE: i64 = PENDING_BYTE + 1;
const SHARED_FIRST: i64 = PENDING_BYTE + 2;
const SHARED_SIZE: i64 = 510;

/// Whether a process (this one included) holds `db` RESERVED or more: a write lock on
/// RESERVED_BYTE, PENDING_BYTE or the shared range. When the lock bytes cannot be
/// probed, whether any process this user can see has `db` open.
fn writer_is_live(db: &Path) -> bool {
    match write_locked(db) {
        Some(live) => live,
        None => std::fs::metadata(db).is_ok_and(|m| !openers(&m, true).is_empty()),
    }
}

fn write_locked(db: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::metadata(db).ok()?;
    // Closing any descriptor of a file drops every POSIX lock this process holds on
    // it, SQLite's included: a descriptor this process already has on `db` is probed
    // as it is, never closed. Only when there is none is one opened (and closed).
    let mine = std::fs::read_dir("/proc/self/fd").ok().and_then(|fds| {
        fds.flatten().find_map(|fd| {
            let m = std::fs::metadata(fd.path()).ok()?;
            (m.dev() == meta.dev() && m.ino() == meta.ino())
                .then(|| fd.file_name().to_str()?.parse::<c_int>().ok())
                .flatten()
        })
    });
    let opened;
    let fd = match mine {
        Some(fd) => fd,
        None => {
            opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(db)
                .ok()?;
            let m = opened.metadata().ok()?;
            if !m.is_file() || (m.dev(), m.ino()) != (meta.dev(), meta.ino()) {
                return None;
            }
            opened.as_raw_fd()
        }
    };
    let held = |ty: c_int, start: i64, len: i64| -> Option<bool> {
        // SAFETY: an all-zero flock is valid (l_pid must be 0 for an OFD query).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        // Open-file-description locks conflict with every POSIX lock, this
        // process's own included (a connection of another thread may be the writer).
        // SAFETY: `fd` is open (ours, or one of this process's), `fl` is a valid flock.
        let rc = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
        (rc == 0).then_some(fl.l_type != libc::F_UNLCK as libc::c_short)
    };
    // Only writers lock RESERVED_BYTE (any lock there counts); readers read-lock
    // PENDING_BYTE in passing and the shared range while they read (only a write lock
    // there counts).
    Some(
        held(libc::F_WRLCK, RESERVED_BYTE, 1)?
            || held(libc::F_RDLCK, PENDING_BYTE, 1)?
            || held(libc::F_RDLCK, SHARED_FIRST, SHARED_SIZE)?,
    )
}

/// The hot `-journal` beside `db`, if there is one (see [`hot_journal`]).
pub(crate) fn hot_journal_beside(db: &Path) -> Option<PathBuf> {
    let mut j = db.as_os_str().to_os_string();
    j.push("-journal");
    let j = PathBuf::from(j);
    let m = std::fs::symlink_metadata(&j).ok()?;
    (m.is_file() && m.len() > 0 && hot_journal(db, &j)).then_some(j)
}

/// Processes other than this one that hold `path` open (Linux: `/proc/*/fd`): the
/// file named `path` itself, never a symbolic link's target (a rename replaces the
/// link). Only processes this user may inspect are seen; the exclusive lock covers the
/// rest.
pub(crate) fn other_openers(path: &Path) -> Vec<u32> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => openers(&m, false),
        Err(_) => Vec::new(),
    }
}

/// Processes that hold the file of `meta` open, this one only when `include_self`.
fn openers(meta: &std::fs::Metadata, include_self: bool) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me && !include_self {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(m) = std::fs::metadata(fd.path())
                && m.dev() == meta.dev()
                && m.ino() == meta.ino()
            {
                pids.push(pid);
                break;
            }
        }
    }
    pids
}

/// What a database is at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtRest {
    /// A plaintext SQLite database.
    Plaintext,
    /// Encrypted with SQLCipher; the settings are known when the key was given.
    Encrypted(Option<CipherSettings>),
}

/// Tells whether `path` is plaintext or encrypted; with `unlock`, proves the key and
/// returns the settings.
pub fn probe(path: &Path, unlock: Option<&Unlock>) -> Result<AtRest, SqliteError> {
    match (head(path)?, unlock) {
        (Head::Empty | Head::NotDb, _) => Err(SqliteError::NotADatabase {
            path: path.to_path_buf(),
        }),
        (Head::Plain, _) => Ok(AtRest::Plaintext),
        (Head::Opaque, None) => Ok(AtRest::Encrypted(None)),
        (Head::Opaque, Some(_)) => {
            let (_, s) = open_db(path, unlock, OpenFlags::SQLITE_OPEN_READ_ONLY, Duration::from_secs(5))?;
            Ok(AtRest::Encrypted(s))
        }
    }
}
