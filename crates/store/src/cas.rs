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
use futures::StreamExt;
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
        ObjectVersion::of_hash(blake3::hash(data))
    }

    fn of_hash(h: blake3::Hash) -> ObjectVersion {
        ObjectVersion {
            e_tag: Some(format!("b3:{}", h.to_hex())),
            version: None,
        }
    }
}

impl Store {
    /// Reads `key` and its version; `None` when it does not exist. An object larger
    /// than `max` bytes comes back empty (with its version, so that a conditional
    /// update can still replace it): its bytes are never held in memory.
    pub async fn get_versioned(&self, key: &str, max: u64) -> Result<Option<(Bytes, ObjectVersion)>, StoreError> {
        let path = self.path(key);
        let local = self.local.is_some();
        let r = self
            .retrying("GET", key, || async {
                let got = self.inner.get(&path).await?;
                let too_big = got.meta.size > max;
                let (e_tag, version) = (got.meta.e_tag.clone(), got.meta.version.clone());
                if local {
                    // The version is the hash of all of it, hashed as it streams.
                    let mut h = blake3::Hasher::new();
                    let mut data = Vec::new();
                    let mut stream = got.into_stream();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk?;
                        h.update(&chunk);
                        if !too_big {
                            data.extend_from_slice(&chunk);
                        }
                    }
                    return Ok((Bytes::from(data), ObjectVersion::of_hash(h.finalize())));
                }
                let data = if too_big { Bytes::new() } else { got.bytes().await? };
                Ok((data, ObjectVersion { e_tag, version }))
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
        let r = self.create(key, &data).await?;
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
            .retrying("PUT", key, || async {
                // A missing object fails the condition: said before the store's own
                // mapping reads a 404 on a PUT as a missing bucket.
                match self.inner.put_opts(&path, PutPayload::from(data.clone()), opts()).await {
                    Err(object_store::Error::NotFound { path, source }) => {
                        Err(object_store::Error::Precondition { path, source })
                    }
                    r => r,
                }
            })
            .await;
        match r {
            Ok(r) => Ok(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(StoreError::Backend { source, .. }) if matches!(*source, object_store::Error::Precondition { .. }) => {
                Err(StoreError::Conflict {
                    key: key.to_string(),
                    repo: self.repo.clone(),
                })
            }
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
            let current = match std::fs::File::open(&file) {
                Ok(f) => {
                    let mut h = blake3::Hasher::new();
                    h.update_reader(f).map_err(&io)?;
                    h.finalize()
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(conflict()),
                Err(e) => return Err(io(e)),
            };
            if ObjectVersion::of_hash(current) != expected {
                return Err(conflict());
            }
            // `#` and digits, like object_store's own staging files: not objects.
            let tmp = dir.join(format!(
                "{}#{}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                rand::random::<u32>()
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
