//! A fault-injecting [`ObjectStore`]: every `n`th request fails with a transient error,
//! or every request fails with a permanent one, or everything after the `n`th request
//! fails (a crash at that point), or deletes are refused (append-only credentials). Proves the retry and crash claims
//! against the real engine without a network.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// See the module docs.
#[derive(Debug)]
pub struct FlakyStore {
    inner: Arc<dyn ObjectStore>,
    every: u64,
    calls: AtomicU64,
    injected: AtomicU64,
    permanent: AtomicBool,
    /// Requests still allowed before every request fails (u64::MAX: no limit).
    budget: AtomicU64,
    deny_deletes: AtomicBool,
}

/// An in-memory store failing every `every`th request (0: never), as a sqlvault
/// `Store` named `flaky://{name}` that retries `attempts` times with a 1 ms base delay;
/// the handle sets further faults.
pub fn flaky_store(name: &str, every: u64, attempts: u32) -> (Arc<FlakyStore>, sqlvault_store::Store) {
    let flaky = Arc::new(FlakyStore::new(Arc::new(object_store::memory::InMemory::new()), every));
    let store = sqlvault_store::Store::new(flaky.clone(), Default::default(), format!("flaky://{name}")).with_retry(
        sqlvault_store::RetryPolicy::default()
            .with_attempts(attempts)
            .with_base(std::time::Duration::from_millis(1)),
    );
    (flaky, store)
}

impl FlakyStore {
    /// Fails every `every`th request (0 = never) with a transient error.
    pub fn new(inner: Arc<dyn ObjectStore>, every: u64) -> Self {
        FlakyStore {
            inner,
            every,
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            permanent: AtomicBool::new(false),
            budget: AtomicU64::new(u64::MAX),
            deny_deletes: AtomicBool::new(false),
        }
    }

    /// Lets `n` more requests through, then fails every one permanently, as if the
    /// process had been killed after its `n`th request (`None`: no limit).
    pub fn crash_after(&self, n: Option<u64>) {
        self.budget.store(n.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Refuses every delete with a permission error, like append-only credentials.
    pub fn deny_deletes(&self, yes: bool) {
        self.deny_deletes.store(yes, Ordering::SeqCst);
    }

    /// From now on every request fails with a permanent error (or not).
    pub fn set_permanent(&self, yes: bool) {
        self.permanent.store(yes, Ordering::SeqCst);
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn gate(&self) -> Result<()> {
        let left = self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
            (b != u64::MAX && b > 0).then(|| b - 1)
        });
        if left == Err(0) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::PermissionDenied {
                path: "flaky".into(),
                source: "injected crash: no request gets through any more".into(),
            });
        }
        if self.permanent.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::PermissionDenied {
                path: "flaky".into(),
                source: "injected permanent failure".into(),
            });
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.every > 0 && n.is_multiple_of(self.every) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected transient failure".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlakyStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.gate()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.gate()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        if self.deny_deletes.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return futures::stream::once(async {
                Err(object_store::Error::PermissionDenied {
                    path: "flaky".into(),
                    source: "injected: these credentials cannot delete".into(),
                })
            })
            .boxed();
        }
        if let Err(e) = self.gate() {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self.gate() {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate()?;
        self.inner.copy_opts(from, to, options).await
    }
}
