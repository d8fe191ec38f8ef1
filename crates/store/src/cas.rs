//! Compare-and-swap on one object: read it with its version, replace it only if it is
//! still that version. What a lease needs (one holder, renewed in place, taken over
//! only by whoever saw it stale), on every backend:
//!
//! - **S3**: `If-Match: <ETag>` (object_store's `PutMode::Update`, S3's conditional
//!   writes; SeaweedFS, moto and MinIO honour it too);
//! - **GCS**: `x-goog-if-generation-match: <generation>`;
//! - **Azure**: `If-Match: <ETag>`;
//! - **local disk**: object_store's local backend has no conditional update, so this
//!   module does it: an exclusive `flock` on the object's directory (`File::lock`), the content hash
//!   compared, a 0600 temporary file renamed over it. Every sqlvault process on the
//!   machine takes the same lock; a network file system must honour `flock` for two
//!   hosts to exclude each other (NFSv4 does).
//!
//! The version of a local object is the BLAKE3 hash of its content: what is compared is
//! exactly what was read.

use std::io::Write;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::{Store, StoreError};

/// The version of an object as read: what a conditional update must still find there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    e_tag: Option<String>,
    version: Option<String>,
}

impl ObjectVersion {
    fn update(&self) -> UpdateVersion {
        UpdateVersion {
            e_tag: self.e_tag.clone(),
            version: self.version.clone(),
        }
    }

    fn local(data: &[u8]) -> ObjectVersion {
        ObjectVersion {
            e_tag: Some(format!("b3:{}", blake3::hash(data).to_hex())),
            version: None,
        }
    }
}

impl Store {
    /// Reads `key` and its version; `None` when it does not exist.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>, StoreError> {
        let path = self.path(key);
        let local = self.local.is_some();
        let r = self
            .retrying("GET", key, || async {
                let got = self.inner.get(&path).await?;
                let (e_tag, version) = (got.meta.e_tag.clone(), got.meta.version.clone());
                let data = got.bytes().await?;
                let v = if local {
                    ObjectVersion::local(&data)
                } else {
                    ObjectVersion { e_tag, version }
                };
                Ok((data, v))
            })
            .await;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `key` if no object is there, returning its version
    /// ([`StoreError::AlreadyExists`] otherwise).
    pub async fn create_versioned(&self, key: &str, data: Bytes) -> Result<ObjectVersion, StoreError> {
        let path = self.path(key);
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let r = self
            .retrying("PUT", key, || {
                self.inner.put_opts(&path, PutPayload::from(data.clone()), opts())
            })
            .await?;
        Ok(if self.local.is_some() {
            ObjectVersion::local(&data)
        } else {
            ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            }
        })
    }

    /// Replaces `key` with `data` only if it is still at version `expected`; returns
    /// the new version. [`StoreError::Conflict`] when another writer replaced or
    /// removed it since it was read. Never retried on a conflict: a conflict is the
    /// answer.
    pub async fn put_if_version(
        &self,
        key: &str,
        data: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, StoreError> {
        if let Some(root) = self.local.clone() {
            return self.local_swap(root, key, data, expected).await;
        }
        let path = self.path(key);
        let opts = || PutOptions {
            mode: PutMode::Update(expected.update()),
            ..Default::default()
        };
        let r = self
            .retrying("PUT", key, || {
                self.inner.put_opts(&path, PutPayload::from(data.clone()), opts())
            })
            .await;
        match r {
            Ok(r) => Ok(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(StoreError::Backend { source, .. })
                if matches!(
                    *source,
                    object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }
                ) =>
            {
                Err(StoreError::Conflict {
                    key: key.to_string(),
                    repo: self.repo.clone(),
                })
            }
            Err(StoreError::NotFound { .. }) => Err(StoreError::Conflict {
                key: key.to_string(),
                repo: self.repo.clone(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn local_swap(
        &self,
        root: std::path::PathBuf,
        key: &str,
        data: Bytes,
        expected: &ObjectVersion,
    ) -> Result<ObjectVersion, StoreError> {
        self.stats
            .counter("PUT")
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = root.join(key);
        let expected = expected.clone();
        let (k, repo) = (key.to_string(), self.repo.clone());
        let conflict = {
            let (k, repo) = (k.clone(), repo.clone());
            move || StoreError::Conflict { key: k, repo }
        };
        let io = move |e: std::io::Error| StoreError::Backend {
            op: "PUT",
            key: k.clone(),
            repo: repo.clone(),
            transient: false,
            source: Box::new(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            }),
        };
        tokio::task::spawn_blocking(move || {
            let dir = file.parent().expect("a key names a file under the root");
            let dir_fd = match std::fs::File::open(dir) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(conflict()),
                Err(e) => return Err(io(e)),
            };
            // `File::lock` is flock(2) on Unix: on a directory, as here.
            dir_fd.lock().map_err(&io)?;
            // Unlocked when `dir_fd` closes, on every path out.
            let current = match std::fs::read(&file) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(conflict()),
                Err(e) => return Err(io(e)),
            };
            if ObjectVersion::local(&current) != expected {
                return Err(conflict());
            }
            // A `#` in the name, like object_store's own staging files: never listed.
            let tmp = dir.join(format!(
                "{}#swap{:016x}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                rand::random::<u64>()
            ));
            let written = (|| {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &file)?;
                dir_fd.sync_all()
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
            drop(dir_fd);
            Ok(ObjectVersion::local(&data))
        })
        .await
        .map_err(|e| StoreError::Backend {
            op: "PUT",
            key: key.to_string(),
            repo: self.repo.clone(),
            transient: false,
            source: Box::new(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            }),
        })?
    }
}
