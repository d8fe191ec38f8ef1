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

    use super::{BucketLock, LockMode};
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

    impl S3Admin {
        async fn send(
            &self,
            op: &'static str,
            key: &str,
            repo: &str,
            url: &str,
            body: Vec<u8>,
            headers: &[(&str, String)],
        ) -> Result<(u16, http::HeaderMap, String), StoreError> {
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
            for (k, v) in headers {
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
            let body = resp
                .into_body()
                .bytes()
                .await
                .map_err(|e| failed(op, key, repo, true, format!("reading the answer failed: {e}")))?;
            // Answers are small XML documents; anything bigger is not one of them.
            let text = String::from_utf8_lossy(&body[..body.len().min(64 << 10)]).into_owned();
            Ok((status, headers, text))
        }

        pub(crate) async fn bucket_lock(&self, repo: &str) -> Result<BucketLock, StoreError> {
            let url = format!("{}?object-lock", self.bucket_url);
            let (status, _, body) = self.send("GET", "?object-lock", repo, &url, Vec::new(), &[]).await?;
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
                    })
                }
                404 if code_of(status, &body) == "ObjectLockConfigurationNotFoundError" => Ok(BucketLock {
                    enabled: false,
                    mode: None,
                    days: None,
                }),
                404 if code_of(status, &body) == "NoSuchBucket" => Err(StoreError::MissingBucket {
                    bucket: self.bucket_url.rsplit('/').next().unwrap_or_default().to_string(),
                    repo: repo.to_string(),
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

        fn object_url(&self, path: &str) -> String {
            format!("{}/{path}", self.bucket_url)
        }

        pub(crate) async fn retained_until(
            &self,
            repo: &str,
            key: &str,
            path: &str,
        ) -> Result<Option<i64>, StoreError> {
            let (status, headers, body) = self
                .send("HEAD", key, repo, &self.object_url(path), Vec::new(), &[])
                .await?;
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
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S.000Z");
            let body = format!(
                "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>",
                mode.as_str()
            )
            .into_bytes();
            let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body));
            let url = format!("{}?retention", self.object_url(path));
            let (status, _, text) = self
                .send(
                    "PUT",
                    key,
                    repo,
                    &url,
                    body,
                    &[
                        ("x-amz-sdk-checksum-algorithm", "SHA256".into()),
                        ("x-amz-checksum-sha256", sum),
                        ("content-type", "application/xml".into()),
                    ],
                )
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
