/// A byte string does not decode as the object kind it claims to be.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The object does not start or end with the expected magic bytes.
    #[error("{kind}: bad magic, not a sqlvault v1 object")]
    BadMagic {
        /// Which object kind was being decoded.
        kind: &'static str,
    },
    /// The object ends early or its lengths do not add up.
    #[error("{kind}: truncated or malformed ({detail})")]
    Malformed {
        /// Which object kind was being decoded.
        kind: &'static str,
        /// What did not add up.
        detail: String,
    },
    /// A MAC or digest did not match: the object was altered or forged.
    #[error("{kind}: authentication failed, the object was altered or forged")]
    Unauthentic {
        /// Which object kind was being decoded.
        kind: &'static str,
    },
    /// The object was written by an unsupported format version.
    #[error("{kind}: unsupported format version {version}")]
    Version {
        /// Which object kind was being decoded.
        kind: &'static str,
        /// The version found.
        version: u32,
    },
    /// JSON body does not parse.
    #[error("{kind}: invalid json")]
    Json {
        /// Which object kind was being decoded.
        kind: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl FormatError {
    pub(crate) fn malformed(kind: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            kind,
            detail: detail.into(),
        }
    }
}
