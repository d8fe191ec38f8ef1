//! Which source a database name belongs to in a repository.
//!
//! `--name` defaults to the file's base name, so two unrelated `app.db` files (another
//! directory, another host) would otherwise share one history: the newest of either is
//! what restore and drill take, and `forget --keep-last 1` keeps only it. A repository
//! therefore records, per name, the source that owns it: a **name claim**
//! `names/<keyed hash of the name>` holding the host and canonical source path (sealed
//! with the metadata key and MAC'd like evidence; the object name is keyed by the
//! repository secret, so the bucket learns no name). A backup reads the claim of its
//! name with one GET (no LIST on the hot path): absent, it creates it just before its
//! manifest (create-if-absent); another source's, it refuses (`backup.name-taken`)
//! unless told that the database moved (`--adopt-name`), which rewrites the claim.
//!
//! The claim is a guard against mistakes, not an access control: any write-key holder
//! may adopt a name. Retention never depends on it; it groups by the host and path
//! every manifest records ([`SourceId::of`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlvault_format::layout;
use sqlvault_store::StoreError;

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Repo, now_ms};

pub use crate::source::SourceId;

/// The body of a `names/<id>` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    version: u32,
    /// The name claimed; checked on read, so a claim moved to another name's key is
    /// refused rather than obeyed.
    name: String,
    host: String,
    source_path: String,
    claimed_ms: i64,
}

/// What a backup learnt from the claim of its name, for [`commit`] to act on just
/// before the manifest.
#[derive(Debug, Clone)]
pub(crate) enum ClaimPlan {
    /// The claim names this source already.
    Held,
    /// No claim yet: create one.
    Create { name: String, source: SourceId },
    /// Another source's (or an unreadable) claim that the caller adopts.
    Adopt { name: String, source: SourceId },
}

fn claim_key(repo: &Repo, name: &str) -> String {
    let mut input = b"sqlvault v1 name claim\0".to_vec();
    input.extend_from_slice(name.as_bytes());
    let h = repo.keys.mac(&input);
    format!("{}/{}", layout::NAMES, hex::encode(&h[..16]))
}

/// Reads the claim of `name`: `Held` when it names `source`, `Create` when there is
/// none; another source's claim is refused (`backup.name-taken`, exit 8) unless `adopt`.
/// A claim that cannot be read (damaged, or foreign) is refused the same way
/// (`backup.name-claim-unreadable`, exit 6) unless `adopt`, which replaces it.
pub(crate) async fn check(repo: &Repo, name: &str, source: &SourceId, adopt: bool) -> Result<ClaimPlan> {
    let key = claim_key(repo, name);
    let ct = match repo.store.get(&key).await {
        Ok(ct) => ct,
        Err(e) if e.is_not_found() => {
            return Ok(ClaimPlan::Create {
                name: name.into(),
                source: source.clone(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let adopt_plan = || ClaimPlan::Adopt {
        name: name.into(),
        source: source.clone(),
    };
    let what = format!("name claim of {name} ({key})");
    let claim = repo
        .unseal_meta(&what, &ct)
        .and_then(|body| serde_json::from_str::<Claim>(&body).map_err(|e| crate::error::corrupt(&what, e)));
    let claim = match claim {
        Ok(c) if c.name == name => c,
        Ok(_) | Err(_) if adopt => return Ok(adopt_plan()),
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Integrity,
                "backup.name-claim-unreadable",
                format!("{what} names another database: refusing to use it unless asked to adopt the name"),
            ));
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Integrity,
                "backup.name-claim-unreadable",
                format!("the claim of database name {name} cannot be read: refusing to use it unless asked to adopt the name"),
            )
            .with_source(e));
        }
    };
    let owner = SourceId {
        host: claim.host,
        path: claim.source_path,
    };
    if &owner == source {
        return Ok(ClaimPlan::Held);
    }
    if adopt {
        tracing::warn!(
            "database name {name} moves from {} to {} (adopted)",
            owner.describe(),
            source.describe()
        );
        return Ok(adopt_plan());
    }
    Err(taken(name, &owner, source))
}

fn taken(name: &str, owner: &SourceId, source: &SourceId) -> Error {
    Error::new(
        ErrorKind::Exists,
        "backup.name-taken",
        format!(
            "database name {name} in this repository belongs to {}, not {}: give this database another name, or adopt the name if the database moved",
            owner.describe(),
            source.describe()
        ),
    )
}

/// Writes what `plan` says, just before the manifest: a new claim (create-if-absent;
/// one that appeared meanwhile is checked like in [`check`]) or the adopted one.
pub(crate) async fn commit(repo: &Repo, plan: &ClaimPlan) -> Result<()> {
    let (name, source, adopt) = match plan {
        ClaimPlan::Held => return Ok(()),
        ClaimPlan::Create { name, source } => (name, source, false),
        ClaimPlan::Adopt { name, source } => (name, source, true),
    };
    let body = serde_json::to_string(&Claim {
        version: 1,
        name: name.clone(),
        host: source.host.clone(),
        source_path: source.path.clone(),
        claimed_ms: now_ms(),
    })
    .expect("serialises");
    let ct = Bytes::from(repo.seal_meta(&body)?);
    let key = claim_key(repo, name);
    if adopt {
        repo.store.put(&key, ct).await?;
        return Ok(());
    }
    match repo.store.put_if_absent(&key, ct).await {
        Ok(()) => Ok(()),
        // Another backup claimed the name between our read and now: its claim decides.
        Err(StoreError::AlreadyExists { .. }) => match check(repo, name, source, false).await? {
            ClaimPlan::Held => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Exists,
                "backup.name-taken",
                format!(
                    "database name {name} was claimed by another source during this backup: give this database another name"
                ),
            )),
        },
        Err(e) => Err(e.into()),
    }
}
