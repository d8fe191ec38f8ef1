//! The signed chain of recipient sets: every change of a repository's recipients is a
//! set signed by the admin key in force before it, so a host that pinned one
//! generation can follow the chain to the current one and refuse a config a removed
//! recipient (who knows the repository secret) sealed on their own.

use sqlvault_format::{RecipientSet, RepoConfig, layout};
use sqlvault_store::Store;

use sqlvault_crypt::Recipient;

use crate::error::{Error, ErrorKind, Result, crypt_err};
use crate::local::{self, WriteKey};
use crate::session::Session;

fn forged_set(store: &Store, generation: u64) -> Error {
    Error::new(
        ErrorKind::Integrity,
        "repo.forged-recipients",
        format!(
            "the recipient set of {} (generation {generation}) is not signed by the repository's admin key: refusing to use it",
            store.describe()
        ),
    )
}

/// The signed recipient set of `generation`, `None` if it was never published.
pub(crate) async fn read_set(store: &Store, generation: u64) -> Result<Option<RecipientSet>> {
    match store.get(&layout::recipient_set(generation)).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| forged_set(store, generation).with_source(e)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Checks that `set` is generation `generation` of `repo_id`, signed by the admin key
/// `signer`, and names usable recipients.
fn check_set(store: &Store, set: &RecipientSet, repo_id: &str, generation: u64, signer: &str) -> Result<()> {
    if set.repo_id != repo_id || set.generation != generation || !set.verify(signer) {
        return Err(forged_set(store, generation));
    }
    for r in &set.recipients {
        r.parse::<Recipient>()
            .map_err(|e| crypt_err("the signed recipient set", e))?;
    }
    Ok(())
}

/// Where a walk along the signed recipient sets ended.
pub(crate) struct ChainEnd {
    pub generation: u64,
    pub recipients: Vec<String>,
    /// The admin key trusted from here on (named by the last set).
    pub admin_pub: String,
    /// The key that signed the last set.
    pub signer: String,
}

/// Follows the signed sets published after `generation`: each must be signed by the
/// admin key the one before handed on (`admin` for the first). `None` when nothing
/// newer was published. Only holders of the current admin key can extend the chain,
/// and every change rotates that key, so a removed recipient cannot.
pub(crate) async fn follow_chain(
    store: &Store,
    repo_id: &str,
    mut generation: u64,
    mut admin: String,
    first: Option<RecipientSet>,
) -> Result<Option<ChainEnd>> {
    let mut end = None;
    let mut next = first;
    loop {
        let set = match next.take() {
            Some(s) => s,
            None => match read_set(store, generation + 1).await? {
                Some(s) => s,
                None => return Ok(end),
            },
        };
        generation += 1;
        check_set(store, &set, repo_id, generation, &admin)?;
        let next_admin = set.admin_after(&admin).to_string();
        let signer = std::mem::replace(&mut admin, next_admin);
        end = Some(ChainEnd {
            generation,
            recipients: set.recipients,
            admin_pub: admin.clone(),
            signer,
        });
    }
}

/// Before a backup: adopts the newer recipient sets published by `key add`/`key
/// remove`, each signed by the admin key the host trusts (pinned at `init`/`join`,
/// rotated by every change); returns the write key to use (saved when it changed).
/// The set this host adopted last is read and checked again too, so damage or a
/// forgery is reported when it appears. Two GETs, issued together.
pub(crate) async fn adopt_recipient_set(session: &Session, store: &Store, mut wk: WriteKey) -> Result<WriteKey> {
    let (current, next) = futures::try_join!(
        async {
            match (&wk.set_signer, wk.generation) {
                (Some(_), g) if g > 0 => read_set(store, g).await,
                _ => Ok(None),
            }
        },
        read_set(store, wk.generation + 1)
    )?;
    let Some(admin) = wk.admin_pub.clone() else {
        // A write key from before signed sets cannot check any change.
        if next.is_some() {
            return Err(Error::new(
                ErrorKind::Auth,
                "repo.write-key-outdated",
                format!(
                    "the recipients of {} changed (generation {}), and this host's write key predates signed recipient sets: run `sqlvault join` here again",
                    store.describe(),
                    wk.generation + 1
                ),
            ));
        }
        return Ok(wk);
    };
    if let Some(signer) = &wk.set_signer
        && wk.generation > 0
    {
        let ok = current.is_some_and(|set| {
            check_set(store, &set, &wk.repo_id, wk.generation, signer).is_ok()
                && set.recipients == wk.recipients
                && set.admin_after(signer) == admin
        });
        if !ok {
            return Err(forged_set(store, wk.generation));
        }
    }
    let Some(end) = follow_chain(store, &wk.repo_id, wk.generation, admin, next).await? else {
        return Ok(wk);
    };
    tracing::info!(
        "adopting recipient set generation {} of {} ({} recipients)",
        end.generation,
        store.describe(),
        end.recipients.len()
    );
    wk.recipients = end.recipients;
    wk.generation = end.generation;
    wk.admin_pub = Some(end.admin_pub);
    wk.set_signer = Some(end.signer);
    wk.save(session.state_dir())?;
    Ok(wk)
}

/// Checks a config against what this host saw of the location before: the same
/// generation with the same admin key, or a newer one reached along the signed
/// recipient sets from the pinned admin key (the config's own `published_set` counts
/// as the last step when its publication was interrupted). A removed recipient knows
/// the repository secret and could seal a config of their own; they cannot sign a step
/// of the chain after their removal. Returns whether the config is newer than the pin.
pub(crate) async fn check_config_chain(
    store: &Store,
    repo_id: &str,
    pin: &local::LocationPin,
    cfg: &RepoConfig,
    cfg_admin: &str,
) -> Result<bool> {
    let Some(pinned_admin) = pin.admin_pub.clone() else {
        return Ok(true);
    };
    let forged = |why: &str| {
        Error::new(
            ErrorKind::Integrity,
            "repo.forged-config",
            format!(
                "the config of {} {why}: it was not written by a holder of the repository's admin key (this host last saw generation {})",
                store.describe(),
                pin.generation
            ),
        )
    };
    if cfg.generation < pin.generation {
        return Err(forged(&format!(
            "is of generation {}, older than this host saw",
            cfg.generation
        )));
    }
    if cfg.generation == pin.generation {
        return if cfg_admin == pinned_admin {
            Ok(false)
        } else {
            Err(forged("names another admin key under the same generation"))
        };
    }
    let end = follow_chain(store, repo_id, pin.generation, pinned_admin.clone(), None).await?;
    let (generation, admin) = end.as_ref().map_or((pin.generation, pinned_admin.as_str()), |e| {
        (e.generation, e.admin_pub.as_str())
    });
    let end = match (&cfg.published_set, generation + 1 == cfg.generation) {
        // The last step is in the config only: its publication was interrupted.
        (Some(set), true) => {
            check_set(store, set, repo_id, cfg.generation, admin)?;
            Some(ChainEnd {
                generation: cfg.generation,
                recipients: set.recipients.clone(),
                admin_pub: set.admin_after(admin).to_string(),
                signer: admin.to_string(),
            })
        }
        _ => end,
    };
    match end {
        Some(e) if e.generation == cfg.generation && e.recipients == cfg.recipients && e.admin_pub == cfg_admin => {
            Ok(true)
        }
        _ => Err(forged(&format!(
            "(generation {}) is not reached by the signed recipient sets",
            cfg.generation
        ))),
    }
}
