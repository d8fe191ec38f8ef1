use std::sync::Arc;

use bytes::Bytes;
use sqlvault_crypt::secrecy::SecretString;
use sqlvault_crypt::{Identities, Recipient};
use sqlvault_format::{
    AdminKey, FORMAT_VERSION, Manifest, ObjectId, RepoConfig, RepoKeys, RepoMarker, RepoSecret, layout,
};
use sqlvault_store::{RequestCounts, Store};

use crate::chain::{adopt_recipient_set, check_config_chain};
use crate::error::{Error, ErrorKind, Result, corrupt, crypt_err};
use crate::local::{self, WriteKey};
use crate::session::Session;

/// How a command proves it may read the repository.
#[derive(Debug)]
pub enum Access {
    /// Age identities or SSH private keys.
    Identities(Identities),
    /// The repository passphrase.
    Passphrase(SecretString),
}

/// How a reader decides to trust the identity a repository location presents.
///
/// A restore host pins each location (URL → repository id and secret fingerprint) the
/// first time it opens it, or when `init`/`join` run there; a known location that
/// presents another identity is refused (`repo.identity-changed`, exit 6).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Trust {
    /// The fingerprint `init` printed: required to match, and makes a first use safe.
    pub fingerprint: Option<String>,
    /// Refuse a location this host has not pinned unless `fingerprint` is given: for
    /// operations that hand out keys or re-encrypt data (`join`, `key add`, `key
    /// remove`, `key rewrap`), trusting a bucket on first use would let its writer
    /// choose who can read the owner's data.
    pub require_pinned: bool,
}

impl Trust {
    /// Sets [`Trust::require_pinned`].
    pub fn with_require_pinned(mut self, yes: bool) -> Trust {
        self.require_pinned = yes;
        self
    }

    /// Sets [`Trust::fingerprint`].
    pub fn with_fingerprint(mut self, fp: Option<String>) -> Trust {
        self.fingerprint = fp;
        self
    }
}

/// Keys given to `init`.
#[derive(Debug)]
pub enum InitKeys {
    /// Public recipients: the backup host never needs a private key.
    Recipients(Vec<Recipient>),
    /// A passphrase: protects the repository's own data identity.
    Passphrase(SecretString),
}

/// Result of `init`.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// New repository id.
    pub repo_id: String,
    /// Public fingerprint of the repository secret, to pin on restore hosts.
    pub fingerprint: String,
    /// Recipients data is encrypted to.
    pub recipients: Vec<String>,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The session it was opened in: state directory, host identity, cancellation,
    /// progress and request counting for every operation on it.
    pub(crate) session: Session,
    pub(crate) store: Store,
    pub(crate) repo_id: String,
    pub(crate) keys: Arc<RepoKeys>,
    pub(crate) secret: Arc<RepoSecret>,
    pub(crate) fingerprint: String,
    pub(crate) data_recipients: Arc<Vec<Recipient>>,
    pub(crate) meta_recipient: Arc<Recipient>,
    pub(crate) identities: Arc<Identities>,
    /// The metadata identity alone: every object sqlvault writes as metadata is sealed
    /// to it, and only holders of the repository secret can seal to it (its public key
    /// is derived from the secret and never stored). Metadata is opened with this
    /// identity only, so an object a bucket writer made with the public recipients is
    /// recognised as foreign instead of being read.
    pub(crate) meta_identities: Arc<Identities>,
    pub(crate) can_read_data: bool,
    /// Generation of `data_recipients`.
    pub(crate) generation: u64,
    /// Hex public half of the admin key that signs recipient sets (from the config, or
    /// pinned in the write key), which `join` pins in the new write key.
    pub(crate) admin_pub: Option<String>,
    /// Whether this host knew the repository's identity before this open (a pin, a
    /// write key, or a fingerprint given), rather than trusting it on first use.
    pub(crate) pinned: bool,
    /// The requests opening it took (marker, keys, config): what every command that
    /// opens a repository pays besides its own work.
    pub(crate) open_requests: RequestCounts,
    /// Days `init --immutable-days` declared (from the marker).
    pub(crate) declared_lock_days: Option<u32>,
}

/// The largest manifest or evidence record a reader will fetch (they are a few KiB).
pub(crate) const MAX_SMALL_OBJECT: u64 = 16 << 20;

/// An object listed where only small ones belong: a bucket writer's junk.
pub(crate) fn too_large(store: &Store, dir: &str, name: &str, size: u64) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "repo.foreign-object",
        format!(
            "{dir}/{} in {} is {size} bytes, far larger than any object sqlvault writes there: not read",
            escape_name(name),
            store.describe()
        ),
    )
}

/// A stored object a reader could not authenticate or decode, and went on without.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct Skipped {
    /// Its key under the repository prefix (escaped).
    pub key: String,
    /// The error code: `repo.foreign-object` (not sealed with the repository's secret),
    /// `repo.corrupt-object` (sealed, but damaged), …
    pub code: &'static str,
    /// Why, one line.
    pub message: String,
}

impl Skipped {
    pub(crate) fn new(key: String, e: &Error) -> Skipped {
        Skipped {
            key,
            code: e.code(),
            message: e.one_line(),
        }
    }

    /// Whether a bucket writer without the secret could have made it (the metadata key
    /// does not open it): junk to go around. Anything else skipped is damage to an
    /// object the repository wrote.
    pub fn is_foreign(&self) -> bool {
        self.code == "repo.foreign-object"
    }

    /// The first damaged object among `skipped` (not foreign junk), as an error.
    pub fn damage(skipped: &[Skipped]) -> Option<Error> {
        skipped
            .iter()
            .find(|s| !s.is_foreign())
            .map(|s| Error::new(ErrorKind::Integrity, "repo.corrupt-object", s.message.clone()))
    }
}

/// `s` with control characters and other non-printing characters escaped, for names
/// read from a repository that end up in messages or on a terminal.
pub fn escape_name(s: &str) -> String {
    if s.chars().all(|c| !c.is_control() && c != '\\') {
        return s.to_string();
    }
    s.chars().flat_map(char::escape_debug).collect()
}

pub(crate) fn unknown_kind(m: &Manifest, kind: &str) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "snapshot.unknown-kind",
        format!(
            "snapshot {} is of kind {kind:?}, which this sqlvault cannot read",
            m.id.short()
        ),
    )
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads `key`; a missing object becomes the caller's error (which names what is
/// missing and why that matters), every other failure the store's.
pub(crate) async fn get_or(store: &Store, key: &str, missing: impl FnOnce() -> Error) -> Result<Bytes> {
    match store.get(key).await {
        Ok(b) => Ok(b),
        Err(e) if e.is_not_found() => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// The recipient set a repository handle encrypts to, where it came from (the config
/// or this host's write key).
struct RecipientsInForce<'a> {
    recipients: &'a [String],
    generation: u64,
    admin_pub: Option<String>,
}

fn decrypt_config(ids: &Identities, ct: &[u8]) -> Result<RepoConfig> {
    let pt = zeroize::Zeroizing::new(
        sqlvault_crypt::decrypt_to_vec(ids, ct).map_err(|e| crypt_err("the repository config", e))?,
    );
    serde_json::from_slice(&pt).map_err(|e| corrupt("repository config", e))
}
/// The marker, checked against this host's pin of the location: a location that
/// presented another repository before is refused.
async fn read_pinned_marker(session: &Session, store: &Store) -> Result<(RepoMarker, Option<local::LocationPin>)> {
    let marker = read_marker(store).await?;
    let pin = local::LocationPin::load(session.state_dir(), store.location())?;
    if let Some(p) = &pin
        && p.repo_id != marker.repo_id
    {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.identity-changed",
            format!(
                "{} was repository {} when this host pinned it and now presents repository {}: its marker was replaced (if the repository was really recreated, delete {})",
                store.describe(),
                p.repo_id,
                marker.repo_id,
                local::location_pin_path(session.state_dir(), store.location()).display()
            ),
        ));
    }
    Ok((marker, pin))
}

async fn read_marker(store: &Store) -> Result<RepoMarker> {
    let bytes = get_or(store, layout::MARKER, || {
        Error::new(
            ErrorKind::NotFound,
            "repo.not-found",
            format!("no sqlvault repository at {}", store.describe()),
        )
    })
    .await?;
    RepoMarker::decode(&bytes).map_err(|e| corrupt(format!("repository marker of {}", store.describe()), e))
}

impl Repo {
    /// Creates a repository at `store`, and this host's write key for it.
    pub async fn init(session: &Session, store: &Store, keys: InitKeys) -> Result<InitReport> {
        Repo::init_declaring(session, store, keys, None).await
    }

    /// [`Repo::init`], recording `immutable_days` in the marker (checked by the
    /// caller: [`Repo::init_immutable`]).
    pub(crate) async fn init_declaring(
        session: &Session,
        store: &Store,
        keys: InitKeys,
        immutable_days: Option<u32>,
    ) -> Result<InitReport> {
        session.register(store);
        let home = session.state_dir();
        if store.head(layout::MARKER).await?.is_some() {
            return Err(Error::new(
                ErrorKind::Exists,
                "repo.exists",
                format!("{} is already a sqlvault repository", store.describe()),
            ));
        }
        let repo_id = hex::encode(ObjectId::random().0);
        let secret = RepoSecret::generate();
        let admin = AdminKey::generate();
        let (recipients, config_ct) = match keys {
            InitKeys::Recipients(rs) => {
                if rs.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        "init.no-recipients",
                        "init needs at least one recipient",
                    ));
                }
                let texts: Vec<String> = rs.iter().map(|r| r.as_str().to_string()).collect();
                let cfg = RepoConfig {
                    version: FORMAT_VERSION,
                    repo_id: repo_id.clone(),
                    created_ms: now_ms(),
                    recipients: texts.clone(),
                    secret: secret.to_hex(),
                    data_identity: None,
                    admin_key: Some(admin.to_hex()),
                    generation: 0,
                    published_set: None,
                };
                let pt = serde_json::to_vec(&cfg).expect("serialises");
                let ct =
                    sqlvault_crypt::encrypt_to_vec(rs.iter(), &pt).map_err(|e| crypt_err("repository config", e))?;
                (texts, ct)
            }
            InitKeys::Passphrase(pass) => {
                let (sk, pk) = sqlvault_crypt::generate_x25519();
                let cfg = RepoConfig {
                    version: FORMAT_VERSION,
                    repo_id: repo_id.clone(),
                    created_ms: now_ms(),
                    recipients: vec![pk.clone()],
                    secret: secret.to_hex(),
                    data_identity: Some(sqlvault_crypt::secrecy::ExposeSecret::expose_secret(&sk).to_string()),
                    admin_key: Some(admin.to_hex()),
                    generation: 0,
                    published_set: None,
                };
                let pt = serde_json::to_vec(&cfg).expect("serialises");
                let mut w = sqlvault_crypt::EncryptWriter::with_passphrase(pass, Vec::new())
                    .map_err(|e| crypt_err("repository config", e))?;
                std::io::Write::write_all(&mut w, &pt).map_err(|e| crate::error::io_err("encrypting config", e))?;
                let ct = w.finish().map_err(|e| crate::error::io_err("encrypting config", e))?;
                (vec![pk], ct)
            }
        };
        // Config first, marker last: a repository exists once its marker does.
        store.put_if_absent(layout::CONFIG, Bytes::from(config_ct)).await?;
        let marker = RepoMarker {
            immutable_days,
            ..RepoMarker::new(repo_id.clone())
        };
        let marker = serde_json::to_vec_pretty(&marker).expect("serialises");
        store.put_if_absent(layout::MARKER, Bytes::from(marker)).await?;
        let wk = WriteKey {
            repo_id: repo_id.clone(),
            recipients: recipients.clone(),
            secret: secret.to_hex(),
            admin_pub: Some(admin.public_hex()),
            generation: 0,
            set_signer: None,
        };
        wk.save(home)?;
        local::save_pin(home, &repo_id, &secret.fingerprint())?;
        local::LocationPin {
            location: store.location().to_string(),
            repo_id: repo_id.clone(),
            fingerprint: secret.fingerprint(),
            generation: 0,
            admin_pub: Some(admin.public_hex()),
        }
        .save(home)?;
        tracing::info!(repo = %repo_id, recipients = recipients.len(), "repository initialised; write key saved");
        Ok(InitReport {
            repo_id,
            fingerprint: secret.fingerprint(),
            recipients,
        })
    }

    fn assemble(
        session: &Session,
        store: Store,
        repo_id: String,
        secret: RepoSecret,
        set: RecipientsInForce<'_>,
        identities: Identities,
        can_read_data: bool,
    ) -> Result<Repo> {
        let keys = secret.keys();
        let fingerprint = secret.fingerprint();
        let data_recipients: Vec<Recipient> = set
            .recipients
            .iter()
            .map(|r| r.parse().map_err(|e| crypt_err("repository recipients", e)))
            .collect::<Result<_>>()?;
        let meta_recipient = sqlvault_crypt::x25519_recipient_from_bytes(&keys.metadata_identity_bytes());
        let meta_identities = Identities::from_x25519_bytes(&keys.metadata_identity_bytes());
        session.register(&store);
        Ok(Repo {
            session: session.clone(),
            store,
            repo_id,
            fingerprint,
            keys: Arc::new(keys),
            secret: Arc::new(secret),
            data_recipients: Arc::new(data_recipients),
            meta_recipient: Arc::new(meta_recipient),
            identities: Arc::new(identities),
            meta_identities: Arc::new(meta_identities),
            open_requests: RequestCounts::default(),
            declared_lock_days: None,
            can_read_data,
            generation: set.generation,
            admin_pub: set.admin_pub,
            pinned: true,
        })
    }

    /// Opens for backup with this host's write key: can write snapshots and read
    /// metadata (names, times, sizes), cannot decrypt any data.
    pub async fn open_write(session: &Session, store: Store) -> Result<Repo> {
        let at_start = store.stats();
        session.register(&store);
        let (marker, pin) = read_pinned_marker(session, &store).await?;
        let marker_days = marker.immutable_days;
        let wk = WriteKey::load(session.state_dir(), &marker.repo_id)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Auth,
                "repo.no-write-key",
                format!(
                    "this host has no write key for repository {} at {} (run `sqlvault init` here, or `sqlvault join` with an identity)",
                    marker.repo_id,
                    store.describe()
                ),
            )
        })?;
        tracing::debug!(repo = %marker.repo_id, generation = wk.generation, recipients = wk.recipients.len(), "opening repository with this host's write key");
        let wk = adopt_recipient_set(session, &store, wk).await?;
        let secret = wk.secret()?;
        if pin.is_none() {
            // A write key made before locations were pinned: this location is where it
            // is used, from now on.
            local::LocationPin {
                location: store.location().to_string(),
                repo_id: marker.repo_id.clone(),
                fingerprint: secret.fingerprint(),
                generation: wk.generation,
                admin_pub: wk.admin_pub.clone(),
            }
            .save(session.state_dir())?;
        }
        let meta = Identities::from_x25519_bytes(&secret.keys().metadata_identity_bytes());
        Repo::assemble(
            session,
            store,
            marker.repo_id,
            secret,
            RecipientsInForce {
                recipients: &wk.recipients,
                generation: wk.generation,
                admin_pub: wk.admin_pub.clone(),
            },
            meta,
            false,
        )
        .map(|mut r| {
            r.declared_lock_days = marker_days;
            r.opened_since(at_start)
        })
    }

    /// Opens for reading with an identity or passphrase, trusting the session's
    /// expected fingerprint, if any, and this host's pins (see
    /// [`Repo::open_read_trusting`]).
    pub async fn open_read(session: &Session, store: Store, access: Access) -> Result<Repo> {
        Repo::open_read_trusting(session, store, access, Trust::default()).await
    }

    /// Opens for reading with an identity or passphrase. Checks the repository's id and
    /// secret against this host's pin of the location, its write key or an older pin
    /// (trust on first use otherwise, unless `trust` requires a pin or gives the
    /// fingerprint, or the session does), so that a bucket writer cannot swap in a
    /// marker and config of their own.
    pub async fn open_read_trusting(session: &Session, store: Store, access: Access, trust: Trust) -> Result<Repo> {
        let at_start = store.stats();
        session.register(&store);
        let home = session.state_dir();
        let (marker, loc_pin) = read_pinned_marker(session, &store).await?;
        let marker_days = marker.immutable_days;
        let ct = get_or(&store, layout::CONFIG, || {
            Error::new(
                ErrorKind::Integrity,
                "repo.config-missing",
                format!("repository {} has no config object", store.describe()),
            )
        })
        .await?;
        tracing::debug!(
            repo = %marker.repo_id,
            access = match &access {
                Access::Identities(_) => "identity",
                Access::Passphrase(_) => "passphrase",
            },
            "opening repository for reading"
        );
        let mut ids = match access {
            Access::Identities(i) => i,
            Access::Passphrase(p) => Identities::from_passphrase(p),
        };
        let cfg = decrypt_config(&ids, &ct)?;
        tracing::debug!(
            generation = cfg.generation,
            recipients = cfg.recipients.len(),
            passphrase_repo = cfg.data_identity.is_some(),
            "config decrypted"
        );
        if cfg.repo_id != marker.repo_id {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.config-mismatch",
                format!(
                    "repository config of {} belongs to another repository",
                    store.describe()
                ),
            ));
        }
        let secret = RepoSecret::from_hex(&cfg.secret).ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                "repository config holds no valid secret",
            )
        })?;
        let fp = secret.fingerprint();
        let expected = trust
            .fingerprint
            .clone()
            .or_else(|| session.fingerprint().map(str::to_string));
        let pinned = match (&loc_pin, WriteKey::load(home, &marker.repo_id)?) {
            (Some(p), _) => Some(p.fingerprint.clone()),
            (None, Some(wk)) => Some(wk.secret()?.fingerprint()),
            (None, None) => local::load_pin(home, &marker.repo_id),
        };
        if pinned.is_none() && expected.is_none() && trust.require_pinned {
            return Err(Error::new(
                ErrorKind::Auth,
                "repo.unpinned",
                format!(
                    "this host has never used the repository at {} and cannot tell it from a forgery without the fingerprint `init` printed",
                    store.describe()
                ),
            ));
        }
        for want in expected.iter().chain(pinned.iter()) {
            if want != &fp {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.fingerprint-mismatch",
                    format!(
                        "repository {} presents secret fingerprint {fp}, but this host trusts {want}: the config was replaced",
                        store.describe()
                    ),
                ));
            }
        }
        let known = pinned.is_some() || expected.is_some();
        let cfg_admin = cfg
            .admin_key
            .as_deref()
            .and_then(AdminKey::from_hex)
            .map(|k| k.public_hex());
        let advanced = match (&loc_pin, &cfg_admin) {
            (Some(p), Some(admin)) => check_config_chain(&store, &marker.repo_id, p, &cfg, admin).await?,
            _ => false,
        };
        if let (Some(p), true) = (&loc_pin, advanced) {
            let pin = local::LocationPin {
                generation: cfg.generation,
                admin_pub: cfg_admin.clone(),
                ..p.clone()
            };
            if let Err(e) = pin.save(home) {
                tracing::warn!("could not update the pin of {}: {}", store.describe(), e.one_line());
            }
        }
        if loc_pin.is_none() {
            // Trust on first use (or on the fingerprint given); best effort, a
            // read-only home must not block restores.
            if !known {
                tracing::warn!(
                    "first use of {}: trusting repository {} with fingerprint {fp} (compare it with what `init` printed)",
                    store.describe(),
                    marker.repo_id
                );
            }
            let pin = local::LocationPin {
                location: store.location().to_string(),
                repo_id: marker.repo_id.clone(),
                fingerprint: fp.clone(),
                generation: cfg.generation,
                admin_pub: cfg_admin.clone(),
            };
            if let Err(e) = pin.save(home) {
                tracing::warn!("could not pin repository fingerprint: {}", e.one_line());
            }
        }
        if let Some(d) = &cfg.data_identity {
            let sid = SecretString::from(d.clone());
            ids.extend(Identities::from_secret_string(&sid).map_err(|e| crypt_err("repository data identity", e))?);
        }
        // The metadata key too (derived from the secret this reader now holds): metadata
        // written for an older recipient set that `key rewrap` does not re-encrypt
        // (prune's state and lock) stays readable after the user's keys change.
        ids.extend(Identities::from_x25519_bytes(&secret.keys().metadata_identity_bytes()));
        Repo::assemble(
            session,
            store,
            marker.repo_id,
            secret,
            RecipientsInForce {
                recipients: &cfg.recipients,
                generation: cfg.generation,
                admin_pub: cfg_admin,
            },
            ids,
            true,
        )
        .map(|mut r| {
            r.pinned = known;
            r.declared_lock_days = marker_days;
            r.opened_since(at_start)
        })
    }

    fn opened_since(mut self, at_start: RequestCounts) -> Repo {
        self.open_requests = self.store.stats().since(at_start);
        self
    }

    /// The requests opening this repository took.
    pub fn open_requests(&self) -> RequestCounts {
        self.open_requests
    }

    /// [`Repo::open_read`] with `access`, else [`Repo::open_write`].
    pub async fn open(session: &Session, store: Store, access: Option<Access>) -> Result<Repo> {
        match access {
            Some(a) => Repo::open_read(session, store, a).await,
            None => Repo::open_write(session, store).await,
        }
    }

    /// Writes this host's write key from a repository opened with an identity, so that
    /// this host can back up into it (`sqlvault join`). The write key holds the
    /// recipients and the repository secret, never the identity.
    pub fn save_write_key(&self) -> Result<()> {
        // Everything comes from the config `open_read` just decrypted and checked; no
        // second read (for a passphrase repository, a second scrypt).
        self.require_data_access("joining a repository")?;
        self.require_pinned("join")?;
        tracing::info!(repo = %self.repo_id, generation = self.generation, "saving this host's write key");
        WriteKey {
            repo_id: self.repo_id.clone(),
            recipients: self.recipients(),
            secret: self.secret.to_hex(),
            admin_pub: self.admin_pub.clone(),
            generation: self.generation,
            set_signer: None,
        }
        .save(self.session.state_dir())
    }

    /// The decrypted config (needs read access).
    pub(crate) async fn read_config(&self) -> Result<RepoConfig> {
        let ct = get_or(&self.store, layout::CONFIG, || {
            Error::new(
                ErrorKind::Integrity,
                "repo.config-missing",
                format!("repository {} has no config object", self.store.describe()),
            )
        })
        .await?;
        let cfg = decrypt_config(&self.identities, &ct)?;
        if cfg.repo_id != self.repo_id {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.config-mismatch",
                format!(
                    "repository config of {} belongs to another repository",
                    self.store.describe()
                ),
            ));
        }
        Ok(cfg)
    }

    /// Recipients new objects are encrypted to.
    pub fn recipients(&self) -> Vec<String> {
        self.data_recipients.iter().map(|r| r.as_str().to_string()).collect()
    }

    /// Generation of the recipient set.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Repository id.
    pub fn id(&self) -> &str {
        &self.repo_id
    }

    /// Public fingerprint of the repository secret.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Refuses `what` on a repository this host trusted on first use in this very open:
    /// handing out its keys or re-encrypting to its recipients would let whoever wrote
    /// the bucket choose them.
    pub(crate) fn require_pinned(&self, what: &str) -> Result<()> {
        if self.pinned {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Auth,
            "repo.unpinned",
            format!(
                "refusing to {what}: this host had never used the repository at {} and cannot tell it from a forgery without the fingerprint `init` printed",
                self.store.describe()
            ),
        ))
    }

    pub(crate) fn require_data_access(&self, what: &str) -> Result<()> {
        if self.can_read_data {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Auth,
                "crypt.identity-required",
                format!("{what} needs an identity (-i KEYFILE) or the passphrase; a write key cannot decrypt data"),
            ))
        }
    }

    pub(crate) fn encrypt_meta(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let rs = self
            .data_recipients
            .iter()
            .chain(std::iter::once(self.meta_recipient.as_ref()));
        sqlvault_crypt::encrypt_to_vec(rs, plaintext).map_err(|e| crypt_err("metadata", e))
    }

    /// A writer encrypting to the recipients and the metadata key, for metadata too
    /// large to build in memory first.
    pub(crate) fn meta_writer(&self, capacity: usize) -> Result<sqlvault_crypt::EncryptWriter<Vec<u8>>> {
        let rs = self
            .data_recipients
            .iter()
            .chain(std::iter::once(self.meta_recipient.as_ref()));
        sqlvault_crypt::EncryptWriter::new(rs, Vec::with_capacity(capacity)).map_err(|e| crypt_err("metadata", e))
    }

    /// Small metadata that must not be forged by a bucket writer (evidence, prune
    /// state): age (to the recipients and the metadata key) of `{"body", "mac"}`, the
    /// MAC under the repository key over exactly `body`.
    pub(crate) fn seal_meta(&self, body: &str) -> Result<Vec<u8>> {
        let sealed = serde_json::json!({"body": body, "mac": hex::encode(self.keys.mac(body.as_bytes()))});
        self.encrypt_meta(&serde_json::to_vec(&sealed).expect("serialises"))
    }

    /// Decrypts and authenticates what [`Repo::seal_meta`] wrote; returns the body.
    pub(crate) fn unseal_meta(&self, what: &str, ct: &[u8]) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct Sealed {
            body: String,
            mac: String,
        }
        let pt = self.decrypt_meta(what, ct)?;
        let sealed: Sealed = serde_json::from_slice(&pt).map_err(|e| corrupt(what, e))?;
        let mut mac = [0u8; 32];
        if hex::decode_to_slice(&sealed.mac, &mut mac).is_err() || !self.keys.verify_mac(sealed.body.as_bytes(), &mac) {
            return Err(corrupt(what, std::io::Error::other("MAC mismatch")));
        }
        Ok(sealed.body)
    }

    pub(crate) fn decrypt(&self, what: &str, ct: &[u8]) -> Result<Vec<u8>> {
        sqlvault_crypt::decrypt_to_vec(&self.identities, ct).map_err(|e| crypt_err(what, e))
    }

    /// Decrypts a metadata object (manifest, map, index, evidence, prune state) with
    /// the metadata identity only. One that identity cannot open was not written by a
    /// holder of the repository secret: `repo.foreign-object`.
    pub(crate) fn decrypt_meta(&self, what: &str, ct: &[u8]) -> Result<Vec<u8>> {
        use std::io::Read;
        // A header the metadata key does not open (not an age object at all, sealed to
        // other keys, or a damaged header) is foreign; a payload that fails after the
        // header opened is damage to an object the repository wrote.
        let mut r = sqlvault_crypt::decrypt_reader(&self.meta_identities, ct).map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                "repo.foreign-object",
                format!(
                    "{what} of {} is forged or its header is damaged: this repository's key does not open it",
                    self.store.describe()
                ),
            )
            .with_source(e)
        })?;
        let mut out = Vec::with_capacity(ct.len());
        r.read_to_end(&mut out).map_err(|e| corrupt(what, e))?;
        Ok(out)
    }
}
