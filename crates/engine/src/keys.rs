//! Changing who can read a repository: `key add`, `key remove` (a new, signed recipient
//! set that every backup host adopts at its next backup) and `key rewrap` (re-encrypting
//! every existing object to the current set, so that a removed key truly loses access
//! to the data; resumable).

use std::collections::HashSet;
use std::io::Write;

use bytes::Bytes;
use futures::StreamExt;
use sqlvault_crypt::Recipient;
use sqlvault_format::{AdminKey, RecipientSet, RepoConfig, layout};

use crate::error::{Error, ErrorKind, Result, crypt_err, io_err};
use crate::local::{self, WriteKey};
use crate::repo::{Repo, now_ms};

/// What a recipient change did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyChange {
    /// Generation of the recipient set now in force.
    pub generation: u64,
    /// Recipients now in force.
    pub recipients: Vec<String>,
    /// Recipients added by this call.
    pub added: Vec<String>,
    /// Recipients removed by this call.
    pub removed: Vec<String>,
}

/// Two spellings of one recipient: SSH keys compare without their comment.
fn same_recipient(a: &str, b: &str) -> bool {
    let key = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    a.trim() == b.trim() || (a.starts_with("ssh-") && key(a) == key(b))
}

/// Adds `add` and removes `remove` from the repository's recipients: rewrites the config
/// (encrypted to the new set, so a removed key can no longer open the repository) and
/// publishes the signed set that backup hosts adopt. Needs read access. Idempotent: run
/// again after an interruption, it finishes the publication.
pub async fn change_recipients(repo: &Repo, add: &[Recipient], remove: &[String]) -> Result<KeyChange> {
    repo.require_data_access("changing the recipients")?;
    repo.require_pinned("change the recipients")?;
    let cfg = repo.read_config().await?;
    if cfg.data_identity.is_some() {
        // The config of a passphrase repository is sealed with the passphrase, which
        // age cannot combine with recipients: a recipient could decrypt data but never
        // open the repository. Refuse rather than pretend.
        return Err(Error::new(
            ErrorKind::Usage,
            "key.passphrase-repo",
            format!(
                "{} is protected by a passphrase and has no recipients to change: create a repository with recipients",
                repo.store.describe()
            ),
        ));
    }
    let mut set = cfg.recipients.clone();
    let mut added = Vec::new();
    for r in add {
        if !set.iter().any(|s| same_recipient(s, r.as_str())) {
            set.push(r.as_str().to_string());
            added.push(r.as_str().to_string());
        }
    }
    let mut removed = Vec::new();
    for r in remove {
        let before = set.len();
        set.retain(|s| {
            let hit = same_recipient(s, r);
            if hit {
                removed.push(s.clone());
            }
            !hit
        });
        if set.len() == before && !removed.iter().any(|s| same_recipient(s, r)) {
            return Err(Error::new(
                ErrorKind::NotFound,
                "key.not-a-recipient",
                format!("{r} is not a recipient of {}", repo.store.describe()),
            ));
        }
    }
    if set.is_empty() {
        return Err(Error::new(
            ErrorKind::Usage,
            "key.no-recipients",
            "refusing to remove every recipient: nobody could restore new snapshots",
        ));
    }
    let changed = !added.is_empty() || !removed.is_empty();
    tracing::info!(
        added = added.len(),
        removed = removed.len(),
        generation = cfg.generation,
        "changing the recipient set"
    );
    let old_admin = cfg.admin_key.as_deref().and_then(AdminKey::from_hex);
    // The key that signed the set of `generation` (for this host's write key).
    let signer_pub = if changed {
        old_admin.as_ref().map(AdminKey::public_hex)
    } else {
        WriteKey::load(repo.session.state_dir(), &repo.repo_id)?.and_then(|wk| wk.set_signer)
    };
    let generation = if changed { cfg.generation + 1 } else { cfg.generation };
    // Every change rotates the admin key: whoever could open the config until now (a
    // recipient removed now among them) knows the old one, and hosts that adopt this
    // set trust only the new one. The set is signed by the old key, which hosts trust,
    // and kept in the config, so an interrupted publication is finished by a rerun.
    let (admin, published) = if let (false, Some(admin)) = (changed, &old_admin) {
        // Nothing to change: finish a publication an earlier run may not have made.
        let published = cfg.published_set.clone().filter(|s| s.generation == cfg.generation);
        (admin.clone(), published)
    } else {
        let next = AdminKey::generate();
        let published = changed.then(|| {
            let signer = old_admin.as_ref().unwrap_or(&next);
            RecipientSet::signed(&repo.repo_id, generation, set.clone(), now_ms(), signer, Some(&next))
        });
        let new_cfg = RepoConfig {
            recipients: set.clone(),
            admin_key: Some(next.to_hex()),
            generation,
            published_set: published.clone(),
            ..cfg.clone()
        };
        let pt = zeroize::Zeroizing::new(serde_json::to_vec(&new_cfg).expect("serialises"));
        let rs: Vec<Recipient> = set
            .iter()
            .map(|r| r.parse().map_err(|e| crypt_err("repository recipients", e)))
            .collect::<Result<_>>()?;
        let ct = sqlvault_crypt::encrypt_to_vec(rs.iter(), &pt).map_err(|e| crypt_err("repository config", e))?;
        // Config first: from here on a removed key cannot open the repository. If the
        // publication below is interrupted, running the command again publishes.
        repo.store.put(layout::CONFIG, Bytes::from(ct)).await?;
        (next, published)
    };
    if let Some(signed) = &published {
        publish_set(repo, signed).await?;
    }
    if let Some(mut wk) = WriteKey::load(repo.session.state_dir(), &repo.repo_id)? {
        wk.recipients = set.clone();
        wk.generation = generation;
        wk.admin_pub = Some(admin.public_hex());
        wk.set_signer = signer_pub;
        wk.save(repo.session.state_dir())?;
    }
    if let Some(pin) = local::LocationPin::load(repo.session.state_dir(), repo.store.location())? {
        local::LocationPin {
            generation,
            admin_pub: Some(admin.public_hex()),
            ..pin
        }
        .save(repo.session.state_dir())?;
    }
    Ok(KeyChange {
        generation,
        recipients: set,
        added,
        removed,
    })
}

/// Publishes the signed set of one generation, once: create-if-absent, so a bucket
/// writer with create-only credentials cannot replace it. An identical object already
/// there is a rerun's; another one is a conflicting change (two administrators, or a
/// forgery racing this one) and is reported.
async fn publish_set(repo: &Repo, set: &RecipientSet) -> Result<()> {
    let key = layout::recipient_set(set.generation);
    let bytes = serde_json::to_vec_pretty(set).expect("serialises");
    match repo.store.put_if_absent(&key, Bytes::from(bytes)).await {
        Ok(()) => Ok(()),
        Err(sqlvault_store::StoreError::AlreadyExists { .. }) => {
            match crate::chain::read_set(&repo.store, set.generation).await? {
                Some(there) if &there == set => Ok(()),
                _ => Err(Error::new(
                    ErrorKind::Integrity,
                    "key.conflicting-set",
                    format!(
                        "another recipient set of generation {} is already published in {}: check `sqlvault key list`, then change the keys again",
                        set.generation,
                        repo.store.describe()
                    ),
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What a rewrap did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewrapReport {
    /// Generation of the recipient set objects are now encrypted to.
    pub generation: u64,
    /// Objects in the repository.
    pub objects: usize,
    /// Objects re-encrypted by this run.
    pub rewrapped: usize,
    /// Objects an earlier, interrupted run had already done.
    pub already_done: usize,
    /// Bytes re-encrypted by this run.
    pub bytes: u64,
}

/// Re-encrypts every pack, index, map, manifest and evidence object to the current
/// recipients (and the metadata key, for metadata). The plaintext of every object is
/// unchanged, so ids, MACs and caches stay valid. Progress is journaled on this host
/// (`repos/<id>/rewrap-g<generation>`): an interrupted run, run again, skips what is
/// done. Objects are replaced whole (a PUT is atomic), and each new ciphertext is
/// decrypted and compared before it replaces the old one when this host's key is still
/// among the recipients. Progress (bytes of ciphertext re-encrypted) goes to the
/// session's [`crate::Progress`]; its [`crate::Cancel`] stops the run between objects
/// (what is done stays journaled).
pub async fn rewrap(repo: &Repo) -> Result<RewrapReport> {
    repo.require_data_access("rewrap")?;
    repo.require_pinned("re-encrypt the repository")?;
    let cfg = repo.read_config().await?;
    if cfg.generation != repo.generation {
        return Err(Error::new(
            ErrorKind::Usage,
            "key.changed-meanwhile",
            "the recipients changed while this command ran; run it again",
        ));
    }
    let journal_path =
        local::repo_dir(repo.session.state_dir(), &repo.repo_id).join(format!("rewrap-g{}", cfg.generation));
    let done: HashSet<String> = std::fs::read_to_string(&journal_path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    local::mkdir_private(journal_path.parent().expect("in a directory"))?;
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode_private()
        .open(&journal_path)
        .map_err(|e| io_err(format!("cannot open {}", journal_path.display()), e))?;
    let mut keys = Vec::new();
    for dir in [
        layout::PACKS,
        layout::INDEX,
        layout::MAPS,
        layout::SNAPSHOTS,
        layout::EVIDENCE,
        layout::NAMES,
    ] {
        for (n, size) in repo.store.list(dir).await? {
            keys.push((dir, format!("{dir}/{n}"), size));
        }
    }
    let mut report = RewrapReport {
        generation: cfg.generation,
        objects: keys.len(),
        ..RewrapReport::default()
    };
    let todo: Vec<(&str, String, u64)> = keys.into_iter().filter(|(_, k, _)| !done.contains(k)).collect();
    report.already_done = report.objects - todo.len();
    let progress = repo.session.progress();
    progress.start("rewrapping", Some(todo.iter().map(|t| t.2).sum()));
    let mut results = futures::stream::iter(todo.into_iter().map(|(dir, key, _)| async move {
        repo.session.cancel().check()?;
        let ct = repo.store.get(&key).await?;
        let repo2 = repo.clone();
        let key2 = key.clone();
        let ct_len = ct.len() as u64;
        let (new_ct, n) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64)> {
            let pt = zeroize::Zeroizing::new(repo2.decrypt(&key2, &ct)?);
            let new_ct = if dir == layout::PACKS {
                sqlvault_crypt::encrypt_to_vec(repo2.data_recipients.iter(), &pt).map_err(|e| crypt_err(&key2, e))?
            } else {
                repo2.encrypt_meta(&pt)?
            };
            match sqlvault_crypt::decrypt_to_vec(&repo2.identities, &new_ct) {
                Ok(back) if back[..] != pt[..] => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        "key.rewrap-mismatch",
                        format!("re-encrypting {key2} did not round-trip; the object was left as it was"),
                    ));
                }
                _ => {}
            }
            Ok((new_ct, pt.len() as u64))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "internal.task", e.to_string()))??;
        repo.store.put(&key, Bytes::from(new_ct)).await?;
        Ok::<_, Error>((key, n, ct_len))
    }))
    .buffer_unordered(2);
    while let Some(r) = results.next().await {
        let (key, n, ct_len) = r?;
        tracing::trace!(object = %key, bytes = n, "re-encrypted");
        writeln!(journal, "{key}").map_err(|e| io_err(format!("cannot write {}", journal_path.display()), e))?;
        report.rewrapped += 1;
        report.bytes += n;
        progress.advance(ct_len);
    }
    progress.finish();
    journal
        .sync_all()
        .map_err(|e| io_err(format!("cannot write {}", journal_path.display()), e))?;
    Ok(report)
}

trait PrivateOpen {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateOpen for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}
