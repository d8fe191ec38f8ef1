//! Object storage for sqlvault, on top of [`object_store`].
//!
//! A [`Store`] is one repository location: a backend plus a key prefix. It adds what
//! the engine's crash contract needs (create-if-absent puts), retries of transient
//! failures with jittered exponential backoff, one error type with
//! [`StoreError::is_not_found`] / [`StoreError::is_transient`], and per-kind request
//! counters so that commands can report what they cost.
//!
//! Supported URLs: a plain path or `file:///abs/path`, `s3://bucket/prefix` (standard
//! `AWS_*` variables, including `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for S3-compatible
//! servers), `gs://bucket/prefix` (`GOOGLE_*`), `az://container/prefix` (`AZURE_*`,
//! `AZURE_STORAGE_USE_EMULATOR`), and `memory://` for tests.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
pub use object_store;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Errors from a [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The repository URL cannot be used.
    #[error("invalid repository url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials are never part of it).
        url: String,
        /// Why.
        reason: String,
    },
    /// The object does not exist.
    #[error("object {key} not found in {repo}")]
    NotFound {
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
    },
    /// A local repository directory that does not exist (only `init` creates one:
    /// a mistyped path must not leave directories behind).
    #[error("no sqlvault repository at {}: no such directory", path.display())]
    MissingDirectory {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// A create-if-absent put found an object already there.
    #[error("object {key} already exists in {repo}")]
    AlreadyExists {
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
    },
    /// The backend refused or failed, after retries if the failure looked transient.
    #[error("{op} {key} on {repo} failed")]
    Backend {
        /// Operation (GET, PUT, …).
        op: &'static str,
        /// Key relative to the repository.
        key: String,
        /// Repository description.
        repo: String,
        /// Whether retrying later might help.
        transient: bool,
        /// Backend error.
        #[source]
        source: Box<object_store::Error>,
    },
}

impl StoreError {
    /// The object is missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Retrying may succeed (network, throttling, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { transient: true, .. })
    }
}

fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        e,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// Requests made, by kind (attempts, retries included).
#[derive(Debug, Default)]
pub struct RequestStats {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    head: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of [`RequestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// GET requests (whole or ranged).
    pub get: u64,
    /// PUT requests.
    pub put: u64,
    /// LIST requests (one per listing call).
    pub list: u64,
    /// DELETE requests.
    pub delete: u64,
    /// HEAD requests.
    pub head: u64,
    /// Attempts that were retries of an earlier failed attempt.
    pub retries: u64,
}

impl std::ops::Add for RequestCounts {
    type Output = RequestCounts;
    fn add(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get + o.get,
            put: self.put + o.put,
            list: self.list + o.list,
            delete: self.delete + o.delete,
            head: self.head + o.head,
            retries: self.retries + o.retries,
        }
    }
}

impl std::iter::Sum for RequestCounts {
    fn sum<I: Iterator<Item = RequestCounts>>(iter: I) -> RequestCounts {
        iter.fold(RequestCounts::default(), |a, b| a + b)
    }
}

impl RequestCounts {
    /// Requests made since `before` (an earlier snapshot of the same counters).
    pub fn since(&self, before: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - before.get,
            put: self.put - before.put,
            list: self.list - before.list,
            delete: self.delete - before.delete,
            head: self.head - before.head,
            retries: self.retries - before.retries,
        }
    }
}

impl RequestStats {
    fn counter(&self, op: &'static str) -> &AtomicU64 {
        match op {
            "GET" => &self.get,
            "PUT" => &self.put,
            "LIST" => &self.list,
            "DELETE" => &self.delete,
            _ => &self.head,
        }
    }

    /// Current counts.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            get: self.get.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// Retry policy for transient failures: `attempts` tries in all, sleeping
/// `base × 4^n` with ±50% jitter between them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    /// First backoff.
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// Sets the number of tries.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }
    /// Sets the first backoff.
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }
}

/// One repository location.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    repo: String,
    location: String,
    stats: Arc<RequestStats>,
    retry: RetryPolicy,
    local: Option<std::path::PathBuf>,
}

/// `scheme://bucket/prefix`, with the endpoint or account the environment selects: a
/// bucket name alone does not say which service holds it.
fn cloud_location(scheme: &str, bucket: &str, prefix: &str) -> String {
    let env = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let service = match scheme {
        "s3" => env(&["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]).map(|e| e.trim_end_matches('/').to_string()),
        "az" => env(&["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"]).map(|a| {
            if env(&["AZURE_STORAGE_USE_EMULATOR"]).is_some_and(|v| v == "true" || v == "1") {
                format!("{a}@emulator")
            } else {
                a
            }
        }),
        _ => None,
    };
    match service {
        Some(s) => format!("{scheme}://{bucket}/{prefix}?service={s}"),
        None => format!("{scheme}://{bucket}/{prefix}"),
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.repo)
    }
}

/// Retries inside object_store's HTTP clients: short, so an unreachable server gives a
/// clear error in seconds; our own layer retries whole operations on top.
fn client_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    }
}

impl Store {
    /// Opens the repository at `url`. A local directory must exist (see
    /// [`Store::create_url`]).
    pub fn from_url(url: &str) -> Result<Store, StoreError> {
        Self::open_url(url, false)
    }

    /// Like [`Store::from_url`], creating a local directory that does not exist yet
    /// (for `init`).
    pub fn create_url(url: &str) -> Result<Store, StoreError> {
        Self::open_url(url, true)
    }

    fn open_url(url: &str, create: bool) -> Result<Store, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let mut local = None;
        let location;
        let (inner, prefix): (Arc<dyn ObjectStore>, ObjPath) = if let Some(rest) = url.strip_prefix("memory://") {
            let _ = rest;
            location = url.to_string();
            (Arc::new(object_store::memory::InMemory::new()), ObjPath::default())
        } else if url.starts_with("s3://") || url.starts_with("gs://") || url.starts_with("az://") {
            let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
            let bucket = parsed.host_str().unwrap_or_default();
            if bucket.is_empty() {
                return Err(invalid("missing bucket or container name".into()));
            }
            let prefix = ObjPath::from(parsed.path().trim_matches('/'));
            location = cloud_location(parsed.scheme(), bucket, prefix.as_ref());
            let store: Arc<dyn ObjectStore> = match parsed.scheme() {
                "s3" => Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(client_retry())
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                ),
                "gs" => Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(client_retry())
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                ),
                _ => Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .with_retry(client_retry())
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                ),
            };
            (store, prefix)
        } else {
            let path = match url.strip_prefix("file://") {
                Some(p) if p.starts_with('/') => std::path::PathBuf::from(p),
                Some(_) => return Err(invalid("file:// URLs need an absolute path".into())),
                None if url.contains("://") => return Err(invalid("unknown scheme".into())),
                None => std::path::PathBuf::from(url),
            };
            if create {
                std::fs::create_dir_all(&path).map_err(|e| invalid(format!("cannot create directory: {e}")))?;
            } else if !path.is_dir() {
                return Err(StoreError::MissingDirectory { path });
            }
            let canonical = std::fs::canonicalize(&path).map_err(|e| invalid(e.to_string()))?;
            location = format!("file://{}", canonical.display());
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| invalid(e.to_string()))?
                .with_automatic_cleanup(true);
            local = Some(path);
            (Arc::new(fs), ObjPath::default())
        };
        let mut store = Store::new(inner, prefix, url.to_string());
        store.local = local;
        store.location = location;
        Ok(store)
    }

    /// Wraps an existing object store (e.g. a fault-injecting one in tests).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: ObjPath, description: String) -> Store {
        Store {
            inner,
            prefix,
            location: description.clone(),
            repo: description,
            stats: Arc::new(RequestStats::default()),
            retry: RetryPolicy::default(),
            local: None,
        }
    }

    /// The directory of a local-disk repository (`None` for object stores), so that
    /// its permissions can be audited.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The canonical name of this location: what a restore host pins a repository's
    /// identity to. Two spellings of one place give one name (a relative and an
    /// absolute path, a trailing slash), and the same bucket name on another endpoint
    /// or account gives another.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What this store is, for messages.
    pub fn describe(&self) -> &str {
        &self.repo
    }

    /// Request counters.
    pub fn stats(&self) -> RequestCounts {
        self.stats.counts()
    }

    /// Whether `other` counts its requests in the same counters (it is a clone of this
    /// store): a caller summing several stores' requests counts each once.
    pub fn same_counters(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.stats, &other.stats)
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.as_ref().is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
                repo: self.repo.clone(),
            },
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists {
                key: key.to_string(),
                repo: self.repo.clone(),
            },
            e => StoreError::Backend {
                op,
                key: key.to_string(),
                repo: self.repo.clone(),
                transient: is_transient(&e),
                source: Box::new(e),
            },
        }
    }

    async fn retrying<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            self.stats.counter(op).fetch_add(1, Ordering::Relaxed);
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = self.map_err(op, key, e);
                    attempt += 1;
                    if !err.is_transient() || attempt >= self.retry.attempts {
                        return Err(err);
                    }
                    let base = self.retry.base.as_secs_f64() * 4f64.powi(attempt as i32 - 1);
                    let sleep = base * rand::random_range(0.5..1.5);
                    tracing::debug!(op, key, attempt, "transient store error, retrying in {sleep:.2}s");
                    tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
                }
            }
        }
    }

    /// Writes `key`, replacing any existing object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        self.retrying("PUT", key, || self.inner.put(&path, PutPayload::from(data.clone())))
            .await
            .map(|_| ())
    }

    /// Writes `key` only if no object exists there ([`StoreError::AlreadyExists`]
    /// otherwise). This is the commit point of every snapshot.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key);
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let r = self
            .retrying("PUT", key, || {
                self.inner.put_opts(&path, PutPayload::from(data.clone()), opts())
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // A retried create whose first attempt landed reports AlreadyExists; the
            // caller's random names make a foreign object at the same key implausible,
            // so compare content to tell the two apart.
            Err(StoreError::AlreadyExists { .. }) if self.stats.retries.load(Ordering::Relaxed) > 0 => {
                match self.get(key).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                        repo: self.repo.clone(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        self.retrying("GET", key, || async { self.inner.get(&path).await?.bytes().await })
            .await
    }

    /// Reads a byte range.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.path(key);
        self.retrying("GET", key, || self.inner.get_range(&path, range.clone()))
            .await
    }

    /// Size of the object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key);
        match self.retrying("HEAD", key, || self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists the objects under directory `dir` as `(name, size)`, names relative to `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let path = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .retrying("LIST", dir, || self.inner.list(Some(&path)).try_collect())
            .await?;
        let base = format!("{path}/");
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                full.strip_prefix(&base).map(|n| (n.to_string(), m.size))
            })
            // Leftover temporary files of the local backend are not objects.
            .filter(|(n, _)| !n.contains('#') && !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes `key`; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match self.retrying("DELETE", key, || self.inner.delete(&path)).await {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn contract(store: &Store) {
        store.put("a/x", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(store.get("a/x").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.get_range("a/x", 0..1).await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.head("a/x").await.unwrap(), Some(1));
        assert_eq!(store.head("a/missing").await.unwrap(), None);
        assert!(store.get("a/missing").await.unwrap_err().is_not_found());
        store.put_if_absent("a/y", Bytes::from_static(b"2")).await.unwrap();
        let e = store.put_if_absent("a/y", Bytes::from_static(b"3")).await.unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        assert_eq!(store.get("a/y").await.unwrap(), Bytes::from_static(b"2"));
        let names: Vec<_> = store.list("a").await.unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["x", "y"]);
        store.delete("a/x").await.unwrap();
        store.delete("a/x").await.unwrap();
        assert_eq!(store.list("a").await.unwrap().len(), 1);
        let c = store.stats();
        assert!(c.put >= 3 && c.get >= 3 && c.list == 2 && c.delete == 2);
    }

    #[tokio::test]
    async fn memory_store_contract() {
        contract(&Store::from_url("memory://").unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        contract(&Store::create_url(&url).unwrap()).await;
        contract(&Store::create_url(dir.path().join("plain").to_str().unwrap()).unwrap()).await;
    }

    #[test]
    fn opening_a_missing_local_directory_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("reop").join("deeper");
        let e = Store::from_url(typo.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, StoreError::MissingDirectory { .. }), "{e}");
        assert!(!dir.path().join("reop").exists(), "a read must not create the path");
    }

    #[test]
    fn one_place_has_one_location_name() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().join("repo");
        let a = Store::create_url(abs.to_str().unwrap()).unwrap();
        let b = Store::from_url(&format!("file://{}/", abs.display())).unwrap();
        let c = Store::from_url(&format!("{}/../repo", abs.display())).unwrap();
        assert_eq!(a.location(), b.location());
        assert_eq!(a.location(), c.location());
        let other = Store::create_url(dir.path().join("other").to_str().unwrap()).unwrap();
        assert_ne!(a.location(), other.location());
        assert_eq!(cloud_location("gs", "b", "p/q"), "gs://b/p/q");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(Store::from_url("ftp://x/y").is_err());
        assert!(Store::from_url("file://relative").is_err());
        assert!(Store::from_url("s3:///nobucket").is_err());
    }
}
