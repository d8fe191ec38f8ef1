//! S3 Object Lock, which object_store 0.14 has no API for: three requests sqlvault signs
//! itself (SigV4 through object_store's own [`AwsAuthorizer`], with the credentials the
//! store's client resolved, so every credential source works the same):
//!
//! - `GET /bucket?object-lock`: whether the bucket has Object Lock and its default
//!   retention (mode and days), which is what protects every object sqlvault writes;
//! - `HEAD /bucket/key`: an object's own `x-amz-object-lock-retain-until-date`;
//! - `PUT /bucket/key?retention`: a later retain-until date for an object that kept
//!   snapshots still need (a lock can be extended, never shortened).
//!
//! Uploads need no request of their own: the bucket's default retention locks each new
//! object version. S3 requires a checksum on uploads to a bucket with a default
//! retention; every S3 client sqlvault builds sends `x-amz-checksum-sha256` (the SHA-256
//! object_store computes anyway to sign the payload) with
//! `x-amz-sdk-checksum-algorithm: SHA256`, which is also what moto insists on.
//!
//! [`AwsAuthorizer`]: object_store::aws::AwsAuthorizer

#[cfg(feature = "s3")]
pub(crate) use imp::S3Admin;

/// Not built without the `s3` feature: never constructed.
#[cfg(not(feature = "s3"))]
#[derive(Debug)]
pub(crate) struct S3Admin;

use crate::{Store, StoreError};

/// The retention mode of a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may shorten or remove the lock.
    Governance,
    /// Nobody can shorten or remove the lock, the root account included.
    Compliance,
}

impl LockMode {
    /// As S3 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BucketLock {
    /// Object Lock is enabled on the bucket (it can only be enabled, never disabled).
    pub enabled: bool,
    /// The default retention's mode, when the bucket has a default rule.
    pub mode: Option<LockMode>,
    /// The default retention in days (years count as 365 days), when it has one.
    pub days: Option<u32>,
    /// Why the configuration could not be read (`AccessDenied` without
    /// `s3:GetBucketObjectLockConfiguration`, `NotImplemented` on an S3-compatible store
    /// without Object Lock): then nothing is known of a lock and `enabled` is false.
    pub unreadable: Option<String>,
}

impl Store {
    /// The bucket's Object Lock configuration; `None` for a store that is not S3. A
    /// bucket without Object Lock reports `enabled: false`.
    pub async fn object_lock(&self) -> Result<Option<BucketLock>, StoreError> {
        match &self.s3_admin {
            #[cfg(feature = "s3")]
            Some(a) => {
                self.stats
                    .counter("GET")
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                a.bucket_lock(&self.repo).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// When the lock on `key`'s current version ends (unix ms); `None` when it has no
    /// lock, does not exist, or the store is not S3.
    pub async fn retained_until(&self, key: &str) -> Result<Option<i64>, StoreError> {
        match &self.s3_admin {
            #[cfg(feature = "s3")]
            Some(a) => {
                self.stats
                    .counter("HEAD")
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                a.retained_until(&self.repo, key, self.path(key).as_ref()).await
            }
            _ => {
                let _ = key;
                Ok(None)
            }
        }
    }

    /// Locks `key`'s current version until `until_ms` (unix ms) in `mode`. Only ever
    /// asked to lengthen a lock; S3 refuses to shorten one (an error here).
    pub async fn extend_lock(&self, key: &str, mode: LockMode, until_ms: i64) -> Result<(), StoreError> {
        match &self.s3_admin {
            #[cfg(feature = "s3")]
            Some(a) => {
                self.stats
                    .counter("PUT")
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                a.extend(&self.repo, key, self.path(key).as_ref(), mode, until_ms).await
            }
            _ => {
                let _ = (mode, until_ms);
                Err(StoreError::Backend {
                    op: "PUT",
                    key: key.to_string(),
                    repo: self.repo.clone(),
                    transient: false,
                    source: Box::new(object_store::Error::NotSupported {
                        source: "Object Lock retention needs an s3:// repository".into(),
                    }),
                })
            }
        }
    }
}

#[cfg(feature = "s3")]
mod imp {
    use base64::Engine;
    use object_store::aws::{AmazonS3, AwsAuthorizer};
    use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
    use sha2::Digest;

    use futures::StreamExt;

    use super::{BucketLock, LockMode};

    const ANSWER_MAX: usize = 64 << 10;
    use crate::StoreError;

    /// What the signed requests need: the client's credentials, where the bucket is,
    /// and an HTTP client with the same transport settings.
    #[derive(Debug)]
    pub(crate) struct S3Admin {
        pub(crate) s3: AmazonS3,
        /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host` (virtual
        /// hosted), without a trailing slash.
        pub(crate) bucket_url: String,
        pub(crate) region: String,
        pub(crate) client: HttpClient,
    }

    fn failed(op: &'static str, key: &str, repo: &str, transient: bool, msg: String) -> StoreError {
        StoreError::Backend {
            op,
            key: key.to_string(),
            repo: repo.to_string(),
            transient,
            source: Box::new(object_store::Error::Generic {
                store: "S3",
                source: msg.into(),
            }),
        }
    }

    /// The text between `<tag>` and `</tag>`, first occurrence.
    fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
        let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
        let len = xml[start..].find(&format!("</{tag}>"))?;
        Some(xml[start..start + len].trim())
    }

    /// The error code of an S3 error body (`<Code>…</Code>`), or the status.
    fn code_of(status: u16, body: &str) -> String {
        element(body, "Code")
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"))
    }

    /// One signed request: the operation (also its HTTP method), the key and repository
    /// it concerns (for errors), where it goes, and what it carries.
    struct Call<'a> {
        op: &'static str,
        key: &'a str,
        repo: &'a str,
        url: String,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    }

    impl<'a> Call<'a> {
        /// A request without a body (GET, HEAD).
        fn get(op: &'static str, key: &'a str, repo: &'a str, url: String) -> Call<'a> {
            Call {
                op,
                key,
                repo,
                url,
                body: Vec::new(),
                headers: Vec::new(),
            }
        }
    }

    impl S3Admin {
        async fn send_once(&self, c: &Call<'_>) -> Result<(u16, http::HeaderMap, String), StoreError> {
            let Call {
                op,
                key,
                repo,
                url,
                body,
                headers,
            } = c;
            let (op, key, repo) = (*op, *key, *repo);
            let body = body.clone();
            let cred = self
                .s3
                .credentials()
                .get_credential()
                .await
                .map_err(|e| StoreError::Backend {
                    op,
                    key: key.to_string(),
                    repo: repo.to_string(),
                    transient: true,
                    source: Box::new(e),
                })?;
            let mut req: HttpRequest = http::Request::new(HttpRequestBody::from(body));
            *req.method_mut() = op.parse().expect("a method name");
            *req.uri_mut() = url
                .parse()
                .map_err(|e| failed(op, key, repo, false, format!("cannot form the request URL {url}: {e}")))?;
            for (k, v) in headers.iter() {
                req.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                    http::HeaderValue::from_str(v).expect("an ASCII header value"),
                );
            }
            AwsAuthorizer::new(&cred, "s3", &self.region)
                .try_authorize(&mut req, None)
                .map_err(|e| StoreError::Backend {
                    op,
                    key: key.to_string(),
                    repo: repo.to_string(),
                    transient: false,
                    source: Box::new(e),
                })?;
            let resp = self
                .client
                .execute(req)
                .await
                .map_err(|e| failed(op, key, repo, true, format!("request failed: {e}")))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            // Answers are small XML documents: read at most 64 KiB of one.
            let mut body = Vec::new();
            let mut stream = resp.into_body().bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| failed(op, key, repo, true, format!("reading the answer failed: {e}")))?;
                body.extend_from_slice(&chunk[..chunk.len().min(ANSWER_MAX - body.len().min(ANSWER_MAX))]);
                if body.len() >= ANSWER_MAX {
                    break;
                }
            }
            Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
        }

        /// [`S3Admin::send_once`] with the store's retry rule: a network failure or a 5xx
        /// (throttling included) is tried again, 3 times in all, 0.2 s then 0.8 s apart.
        async fn send(&self, c: Call<'_>) -> Result<(u16, http::HeaderMap, String), StoreError> {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let r = self.send_once(&c).await;
                let again = match &r {
                    Ok((status, ..)) => *status >= 500,
                    Err(e) => e.is_transient(),
                };
                if !again || attempt >= 3 {
                    return r;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200 << (2 * (attempt - 1)))).await;
            }
        }

        pub(crate) async fn bucket_lock(&self, repo: &str) -> Result<BucketLock, StoreError> {
            let url = format!("{}?object-lock", self.bucket_url);
            let (status, _, body) = self.send(Call::get("GET", "?object-lock", repo, url)).await?;
            match status {
                200..=299 => {
                    let enabled = element(&body, "ObjectLockEnabled") == Some("Enabled");
                    let mode = match element(&body, "Mode") {
                        Some("GOVERNANCE") => Some(LockMode::Governance),
                        Some("COMPLIANCE") => Some(LockMode::Compliance),
                        _ => None,
                    };
                    let num = |t| element(&body, t).and_then(|v| v.parse::<u32>().ok()).filter(|n| *n > 0);
                    let days = match (num("Days"), num("Years")) {
                        (Some(d), _) => Some(d),
                        (None, Some(y)) => Some(y.saturating_mul(365)),
                        _ => None,
                    };
                    Ok(BucketLock {
                        enabled,
                        mode: mode.filter(|_| days.is_some()),
                        days: days.filter(|_| mode.is_some()),
                        unreadable: None,
                    })
                }
                404 if code_of(status, &body) == "ObjectLockConfigurationNotFoundError" => Ok(BucketLock {
                    enabled: false,
                    mode: None,
                    days: None,
                    unreadable: None,
                }),
                404 if code_of(status, &body) == "NoSuchBucket" => Err(StoreError::MissingBucket {
                    bucket: self.bucket_url.rsplit('/').next().unwrap_or_default().to_string(),
                    repo: repo.to_string(),
                }),
                // Not allowed to read it, or a store without the API: nothing is known.
                400 | 403 | 405 | 501 => Ok(BucketLock {
                    enabled: false,
                    mode: None,
                    days: None,
                    unreadable: Some(code_of(status, &body)),
                }),
                _ => Err(failed(
                    "GET",
                    "?object-lock",
                    repo,
                    status >= 500,
                    format!(
                        "the bucket's Object Lock configuration was refused: {}",
                        code_of(status, &body)
                    ),
                )),
            }
        }

        /// The URL of the object at `path` (object_store's form of the key, which is
        /// the key S3 stores): every byte but unreserved ones and `/` percent-encoded, as
        /// object_store's own requests do and as SigV4's canonical URI expects.
        fn object_url(&self, path: &str) -> String {
            let mut out = String::with_capacity(path.len() + self.bucket_url.len() + 8);
            out.push_str(&self.bucket_url);
            out.push('/');
            for b in path.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }

        pub(crate) async fn retained_until(
            &self,
            repo: &str,
            key: &str,
            path: &str,
        ) -> Result<Option<i64>, StoreError> {
            // GetObjectRetention first: a HEAD omits the retain-until date without
            // s3:GetObjectRetention, which would read as "not locked". A store that
            // answers it with the object itself (moto) is asked with a HEAD instead.
            let url = self.object_url(path);
            let (status, _, body) = self
                .send(Call::get("GET", key, repo, format!("{url}?retention")))
                .await?;
            let date = |v: &str| {
                chrono::DateTime::parse_from_rfc3339(v.trim())
                    .ok()
                    .map(|t| t.timestamp_millis())
            };
            match status {
                200..=299 if body.contains("<Retention") => {
                    return Ok(element(&body, "RetainUntilDate").and_then(date));
                }
                200..=299 => {}
                404 => {
                    return match code_of(status, &body).as_str() {
                        "NoSuchKey" | "NoSuchObjectLockConfiguration" | "NoSuchVersion" => Ok(None),
                        other => Err(failed(
                            "GET",
                            key,
                            repo,
                            false,
                            format!("reading the object's lock failed: {other}"),
                        )),
                    };
                }
                _ => {
                    return Err(failed(
                        "GET",
                        key,
                        repo,
                        status >= 500,
                        format!("reading the object's lock was refused: {}", code_of(status, &body)),
                    ));
                }
            }
            let (status, headers, body) = self.send(Call::get("HEAD", key, repo, url)).await?;
            match status {
                200..=299 => Ok(headers
                    .get("x-amz-object-lock-retain-until-date")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                    .map(|t| t.timestamp_millis())),
                404 => Ok(None),
                _ => Err(failed(
                    "HEAD",
                    key,
                    repo,
                    status >= 500,
                    format!("reading the object's lock was refused: {}", code_of(status, &body)),
                )),
            }
        }

        pub(crate) async fn extend(
            &self,
            repo: &str,
            key: &str,
            path: &str,
            mode: LockMode,
            until_ms: i64,
        ) -> Result<(), StoreError> {
            let until = chrono::DateTime::from_timestamp_millis(until_ms)
                .filter(|t| t.timestamp() > 0 && t.timestamp() < 4_102_444_800)
                .ok_or_else(|| {
                    failed(
                        "PUT",
                        key,
                        repo,
                        false,
                        format!("lock end {until_ms} ms is out of range"),
                    )
                })?
                .format("%Y-%m-%dT%H:%M:%S.000Z");
            let body = format!(
                "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>",
                mode.as_str()
            )
            .into_bytes();
            let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body));
            let url = format!("{}?retention", self.object_url(path));
            let (status, _, text) = self
                .send(Call {
                    op: "PUT",
                    key,
                    repo,
                    url,
                    body,
                    headers: vec![
                        ("x-amz-sdk-checksum-algorithm", "SHA256".into()),
                        ("x-amz-checksum-sha256", sum),
                        ("content-type", "application/xml".into()),
                    ],
                })
                .await?;
            match status {
                200..=299 => Ok(()),
                _ => Err(failed(
                    "PUT",
                    key,
                    repo,
                    status >= 500,
                    format!("extending the object's lock was refused: {}", code_of(status, &text)),
                )),
            }
        }
    }
}
