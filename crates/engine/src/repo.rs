use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sqlvault_crypt::secrecy::SecretString;
use sqlvault_crypt::{Identities, Recipient};
use sqlvault_format::{
    AdminKey, ChunkId, ChunkSeq, FORMAT_VERSION, IndexEntry, IndexFile, Manifest, MapRef, ObjectId, PageMap,
    RecipientSet, RepoConfig, RepoKeys, RepoMarker, RepoSecret, decode_manifest, kind, layout,
};
use sqlvault_store::Store;

use crate::error::{Error, ErrorKind, Result, corrupt, crypt_err};
use crate::local::{self, WriteKey};

/// How a command proves it may read the repository.
#[derive(Debug)]
pub enum Access {
    /// Age identities or SSH private keys.
    Identities(Identities),
    /// The repository passphrase.
    Passphrase(SecretString),
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
    pub(crate) store: Store,
    pub(crate) repo_id: String,
    pub(crate) keys: Arc<RepoKeys>,
    pub(crate) secret: Arc<RepoSecret>,
    pub(crate) fingerprint: String,
    pub(crate) data_recipients: Arc<Vec<Recipient>>,
    pub(crate) meta_recipient: Arc<Recipient>,
    pub(crate) identities: Arc<Identities>,
    pub(crate) can_read_data: bool,
    /// Generation of `data_recipients`.
    pub(crate) generation: u64,
    /// Hex public half of the admin key that signs recipient sets (from the config, or
    /// pinned in the write key), which `join` pins in the new write key.
    pub(crate) admin_pub: Option<String>,
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

/// Before a backup: adopts a newer recipient set published by `key add`/`key remove`,
/// if its signature checks against the admin key pinned in the write key; returns the
/// write key to use (saved when it changed).
async fn adopt_recipient_set(store: &Store, mut wk: WriteKey) -> Result<WriteKey> {
    let bytes = match store.get(layout::RECIPIENTS).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(wk),
        Err(e) => return Err(e.into()),
    };
    let set: RecipientSet = serde_json::from_slice(&bytes).map_err(|e| corrupt("recipient set", e))?;
    let forged = || {
        Error::new(
            ErrorKind::Integrity,
            "repo.forged-recipients",
            format!(
                "the recipient set of {} (generation {}) is not signed by the repository's admin key: refusing to encrypt to it",
                store.describe(),
                set.generation
            ),
        )
    };
    if set.repo_id != wk.repo_id {
        return Err(forged());
    }
    // The signature is checked on every backup, even of a set this host already has or
    // will not adopt: a damaged or forged set is reported when it appears, not at the
    // next key change (an Ed25519 verification is microseconds).
    if let Some(public) = wk.admin_pub.as_deref()
        && !set.verify(public)
    {
        return Err(forged());
    }
    if set.generation < wk.generation {
        tracing::warn!(
            "recipient set of {} is generation {}, older than this host's {}: keeping this host's",
            store.describe(),
            set.generation,
            wk.generation
        );
        return Ok(wk);
    }
    if set.generation == wk.generation && set.recipients == wk.recipients {
        return Ok(wk);
    }
    // Without the admin key the signature (checked above when there is one) cannot be.
    if wk.admin_pub.is_none() {
        return Err(Error::new(
            ErrorKind::Auth,
            "repo.write-key-outdated",
            format!(
                "the recipients of {} changed (generation {}), and this host's write key predates signed recipient sets: run `sqlvault join` here again",
                store.describe(),
                set.generation
            ),
        ));
    }
    // Signed, but a different set under the same generation: equivocation.
    if set.generation == wk.generation {
        return Err(forged());
    }
    for r in &set.recipients {
        r.parse::<Recipient>()
            .map_err(|e| crypt_err("the signed recipient set", e))?;
    }
    tracing::info!(
        "adopting recipient set generation {} of {} ({} recipients)",
        set.generation,
        store.describe(),
        set.recipients.len()
    );
    wk.recipients = set.recipients;
    wk.generation = set.generation;
    wk.save()?;
    Ok(wk)
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
    pub async fn init(store: &Store, keys: InitKeys) -> Result<InitReport> {
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
        let marker = serde_json::to_vec_pretty(&RepoMarker::new(repo_id.clone())).expect("serialises");
        store.put_if_absent(layout::MARKER, Bytes::from(marker)).await?;
        let wk = WriteKey {
            repo_id: repo_id.clone(),
            recipients: recipients.clone(),
            secret: secret.to_hex(),
            admin_pub: Some(admin.public_hex()),
            generation: 0,
        };
        wk.save()?;
        local::save_pin(&repo_id, &secret.fingerprint())?;
        tracing::info!(repo = %repo_id, recipients = recipients.len(), "repository initialised; write key saved");
        Ok(InitReport {
            repo_id,
            fingerprint: secret.fingerprint(),
            recipients,
        })
    }

    fn assemble(
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
        Ok(Repo {
            store,
            repo_id,
            fingerprint,
            keys: Arc::new(keys),
            secret: Arc::new(secret),
            data_recipients: Arc::new(data_recipients),
            meta_recipient: Arc::new(meta_recipient),
            identities: Arc::new(identities),
            can_read_data,
            generation: set.generation,
            admin_pub: set.admin_pub,
        })
    }

    /// Opens for backup with this host's write key: can write snapshots and read
    /// metadata (names, times, sizes), cannot decrypt any data.
    pub async fn open_write(store: Store) -> Result<Repo> {
        let marker = read_marker(&store).await?;
        let wk = WriteKey::load(&marker.repo_id)?.ok_or_else(|| {
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
        let wk = adopt_recipient_set(&store, wk).await?;
        let secret = wk.secret()?;
        let meta = Identities::from_x25519_bytes(&secret.keys().metadata_identity_bytes());
        Repo::assemble(
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
    }

    /// Opens for reading with an identity or passphrase. Checks the repository secret
    /// against this host's write key or pin (trust on first use otherwise, or against
    /// `SQLVAULT_REPO_FINGERPRINT` when set), so that a bucket writer cannot swap in a
    /// config of their own.
    pub async fn open_read(store: Store, access: Access) -> Result<Repo> {
        let marker = read_marker(&store).await?;
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
        let expected = std::env::var("SQLVAULT_REPO_FINGERPRINT")
            .ok()
            .filter(|s| !s.is_empty());
        let pinned = match WriteKey::load(&marker.repo_id)? {
            Some(wk) => Some(wk.secret()?.fingerprint()),
            None => local::load_pin(&marker.repo_id),
        };
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
        if pinned.is_none() {
            // Trust on first use; best effort, a read-only home must not block restores.
            if let Err(e) = local::save_pin(&marker.repo_id, &fp) {
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
            store,
            marker.repo_id,
            secret,
            RecipientsInForce {
                recipients: &cfg.recipients,
                generation: cfg.generation,
                admin_pub: cfg
                    .admin_key
                    .as_deref()
                    .and_then(AdminKey::from_hex)
                    .map(|k| k.public_hex()),
            },
            ids,
            true,
        )
    }

    /// [`Repo::open_read`] with `access`, else [`Repo::open_write`].
    pub async fn open(store: Store, access: Option<Access>) -> Result<Repo> {
        match access {
            Some(a) => Repo::open_read(store, a).await,
            None => Repo::open_write(store).await,
        }
    }

    /// Writes this host's write key from a repository opened with an identity, so that
    /// this host can back up into it (`sqlvault join`). The write key holds the
    /// recipients and the repository secret, never the identity.
    pub fn save_write_key(&self) -> Result<()> {
        // Everything comes from the config `open_read` just decrypted and checked; no
        // second read (for a passphrase repository, a second scrypt).
        self.require_data_access("joining a repository")?;
        tracing::info!(repo = %self.repo_id, generation = self.generation, "saving this host's write key");
        WriteKey {
            repo_id: self.repo_id.clone(),
            recipients: self.recipients(),
            secret: self.secret.to_hex(),
            admin_pub: self.admin_pub.clone(),
            generation: self.generation,
        }
        .save()
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
        let pt = self.decrypt(what, ct)?;
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

    /// Every snapshot, oldest first (by the creation time recorded in the manifest).
    pub async fn snapshots(&self) -> Result<Vec<Manifest>> {
        let names = self.store.list(layout::SNAPSHOTS).await?;
        let mut out: Vec<Manifest> = futures::stream::iter(names.into_iter().map(|(n, _)| async move {
            let id: ObjectId = n
                .parse()
                .map_err(|e| corrupt(format!("snapshot object name {n:?}"), e))?;
            self.load_manifest(&id).await
        }))
        .buffer_unordered(8)
        .try_collect()
        .await?;
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Loads and authenticates one manifest.
    pub async fn load_manifest(&self, id: &ObjectId) -> Result<Manifest> {
        let key = layout::snapshot(id);
        let ct = get_or(&self.store, &key, || {
            Error::new(
                ErrorKind::NotFound,
                "snapshot.not-found",
                format!("snapshot {id} not found"),
            )
        })
        .await?;
        let pt = self.decrypt(&format!("snapshot {}", id.short()), &ct)?;
        decode_manifest(&self.keys, &pt, id).map_err(|e| corrupt(format!("snapshot {}", id.short()), e))
    }

    /// Finds a snapshot by id prefix, or the newest one (of `name`, if given).
    pub async fn find_snapshot(&self, id: Option<&str>, name: Option<&str>) -> Result<Manifest> {
        let all = self.snapshots().await?;
        self.pick_snapshot(&all, id, name).cloned()
    }

    /// [`Repo::find_snapshot`] over snapshots already listed (oldest first): the one a
    /// unique id prefix names, or the newest, among those of `name` if given. The newest
    /// is never a future-dated snapshot ([`crate::retention::is_future_dated`]): one
    /// dated years ahead would otherwise be restored in place of every real one. Named
    /// by id, a future-dated snapshot is found like any other.
    pub(crate) fn pick_snapshot<'a>(
        &self,
        all: &'a [Manifest],
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<&'a Manifest> {
        let now = now_ms();
        let (matching, future): (Vec<&Manifest>, Vec<&Manifest>) = all
            .iter()
            .filter(|m| name.is_none_or(|n| m.name == n))
            .filter(|m| id.is_none_or(|p| m.id.to_string().starts_with(&p.to_lowercase())))
            .partition(|m| id.is_some() || !crate::retention::is_future_dated(m.created_ms, now));
        match (id, matching.len()) {
            (None, 0) if !future.is_empty() => Err(Error::new(
                ErrorKind::NotFound,
                "snapshot.only-future-dated",
                format!(
                    "the only snapshots{} in {} are future-dated (more than {} ahead of this host's clock); name one with --snapshot if you trust it",
                    name.map(|n| format!(" of {n}")).unwrap_or_default(),
                    self.store.describe(),
                    crate::retention::describe(crate::retention::CLOCK_SKEW)
                ),
            )),
            (_, 0) => Err(Error::new(
                ErrorKind::NotFound,
                "snapshot.not-found",
                match (id, name) {
                    (Some(i), _) => format!("snapshot {i} not found in {}", self.store.describe()),
                    (None, Some(n)) => format!("no snapshot of {n} in {}", self.store.describe()),
                    (None, None) => format!("no snapshots in {}", self.store.describe()),
                },
            )),
            (Some(i), n) if n > 1 => Err(Error::new(
                ErrorKind::Usage,
                "snapshot.ambiguous",
                format!("snapshot id prefix {i} matches {n} snapshots"),
            )),
            _ => Ok(matching[matching.len() - 1]),
        }
    }

    /// Fetches, decrypts and authenticates each map object a manifest lists, in order,
    /// handing its plaintext to `apply`.
    async fn each_map(&self, m: &Manifest, mut apply: impl FnMut(&MapRef, &[u8]) -> Result<()>) -> Result<()> {
        for r in &m.maps {
            let ct = get_or(&self.store, &layout::map(&r.id), || {
                Error::new(
                    ErrorKind::Integrity,
                    "repo.missing-object",
                    format!("page map {} of snapshot {} is missing", r.id.short(), m.id.short()),
                )
            })
            .await?;
            let pt = self.decrypt(&format!("page map {}", r.id.short()), &ct)?;
            drop(ct);
            let mut mac = [0u8; 32];
            if hex::decode_to_slice(&r.mac, &mut mac).is_err() || !self.keys.verify_mac(&pt, &mac) {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!(
                        "page map {} of snapshot {} fails authentication",
                        r.id.short(),
                        m.id.short()
                    ),
                ));
            }
            apply(r, &pt)?;
        }
        Ok(())
    }

    /// The page map of a snapshot: chunk id by page (index = pgno − 1).
    pub async fn page_map(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        // Decoded straight into the table: at 4 GiB a full map is 32 MiB, and holding
        // its ciphertext, plaintext and a decoded copy at once would triple that.
        let mut pages: Vec<ChunkId> = Vec::new();
        let mut mapped: Vec<bool> = Vec::new();
        self.each_map(m, |r, pt| {
            PageMap::apply_encoded(pt, &mut pages, &mut mapped)
                .map_err(|e| corrupt(format!("page map {}", r.id.short()), e))
        })
        .await?;
        if pages.len() != m.page_count as usize {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                format!(
                    "page maps of snapshot {} give {} pages, manifest says {}",
                    m.id.short(),
                    pages.len(),
                    m.page_count
                ),
            ));
        }
        if let Some(i) = mapped.iter().position(|m| !m) {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                format!("page maps of snapshot {} leave page {} unmapped", m.id.short(), i + 1),
            ));
        }
        Ok(pages)
    }

    /// The chunk sequence of a dump snapshot: its SQL stream, chunk by chunk.
    pub async fn chunk_seq(&self, m: &Manifest) -> Result<ChunkSeq> {
        let mut seq = ChunkSeq::default();
        self.each_map(m, |r, pt| {
            seq.apply_encoded(pt)
                .map_err(|e| corrupt(format!("chunk sequence {}", r.id.short()), e))
        })
        .await?;
        if m.dump.is_none() || m.stats.bytes_read != seq.total_bytes() || m.stats.chunks_total != seq.len() as u64 {
            return Err(Error::new(
                ErrorKind::Integrity,
                "repo.corrupt-object",
                format!(
                    "chunk sequences of snapshot {} do not give the dump its manifest describes",
                    m.id.short()
                ),
            ));
        }
        Ok(seq)
    }

    /// Every chunk a snapshot references, in order, whatever its kind.
    pub async fn chunk_ids(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        match m.kind.as_str() {
            kind::PAGES => self.page_map(m).await,
            kind::DUMP => Ok(self.chunk_seq(m).await?.ids),
            other => Err(unknown_kind(m, other)),
        }
    }

    /// Ids of the packs that exist (one LIST).
    pub(crate) async fn pack_ids(&self) -> Result<std::collections::HashSet<ObjectId>> {
        Ok(self
            .store
            .list(layout::PACKS)
            .await?
            .into_iter()
            .filter_map(|(n, _)| n.parse().ok())
            .collect())
    }

    /// Hands every index entry of a pack that exists to `f`, index by index in listing
    /// order (fetched a few at a time). Entries of packs that are gone are skipped: an
    /// index can outlive a pack a killed prune deleted, and another pack then holds the
    /// chunk.
    pub(crate) async fn each_live_index_entry(&self, mut f: impl FnMut(ObjectId, IndexEntry)) -> Result<()> {
        let existing = self.pack_ids().await?;
        let names = self.index_names().await?;
        let mut loaded = futures::stream::iter(names.into_iter().map(|n| async move {
            let pt = self.index_plaintext(&n).await?;
            Ok::<_, Error>((n, pt))
        }))
        .buffered(8);
        while let Some((name, pt)) = loaded.try_next().await? {
            IndexFile::decode_with(&pt, |pack, e| {
                if existing.contains(&pack) {
                    f(pack, e);
                }
            })
            .map_err(|e| corrupt(format!("index {name} of {}", self.store.describe()), e))?;
        }
        Ok(())
    }

    /// Names of the index objects.
    pub async fn index_names(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// One index object, decrypted but not decoded.
    pub async fn index_plaintext(&self, name: &str) -> Result<Vec<u8>> {
        let key = format!("{}/{name}", layout::INDEX);
        let ct = self.store.get(&key).await?;
        self.decrypt(&format!("index {name}"), &ct)
    }

    /// One index object, decoded.
    pub async fn load_index(&self, name: &str) -> Result<IndexFile> {
        let pt = self.index_plaintext(name).await?;
        IndexFile::decode(&pt).map_err(|e| corrupt(format!("index {name}"), e))
    }

    /// Every index object, decoded.
    pub async fn load_indexes(&self) -> Result<Vec<IndexFile>> {
        let names = self.index_names().await?;
        futures::stream::iter(names.iter().map(|n| self.load_index(n)))
            .buffer_unordered(8)
            .try_collect()
            .await
    }
}
