//! The snapshot catalog of a repository: listing its manifests, authenticating each,
//! keeping those this host has seen in a local catalog, and picking one by id prefix,
//! name or age.

use futures::StreamExt;
use sqlvault_format::{Manifest, ObjectId, decode_manifest, layout};

use crate::error::{Error, ErrorKind, Result, corrupt};
use crate::local;
use crate::repo::{MAX_SMALL_OBJECT, Repo, Skipped, escape_name, get_or, now_ms, too_large};

impl Repo {
    /// Every snapshot, oldest first (by the creation time recorded in the manifest).
    /// Objects under `snapshots/` that are not authentic manifests are skipped with a
    /// warning (see [`Repo::snapshots_checked`]): one junk object must not hide the
    /// real snapshots.
    pub async fn snapshots(&self) -> Result<Vec<Manifest>> {
        let (out, skipped) = self.snapshots_checked().await?;
        for s in &skipped {
            tracing::warn!("skipping {}: {}", s.key, s.message);
        }
        Ok(out)
    }

    /// Every authentic snapshot, oldest first, and the objects under `snapshots/`
    /// that are not (foreign, damaged, or misnamed). Store failures are errors: a
    /// listing that could not be read is not a list of snapshots.
    pub async fn snapshots_checked(&self) -> Result<(Vec<Manifest>, Vec<Skipped>)> {
        self.snapshots_matching("").await
    }

    /// [`Repo::snapshots_checked`] for the snapshots whose id starts with `prefix`
    /// (lowercase hex; `""` for all): only those manifests are read.
    ///
    /// Manifests are immutable, so each one this host has authenticated is kept in its
    /// local catalog (`cache/manifests/<id>`: the listed object's version and size,
    /// then the plaintext; 0600) and read from there while the listing shows that very
    /// object: listing a repository costs one LIST and a GET per snapshot this host has
    /// not seen, not a GET per snapshot. An entry is used only when the listing reports
    /// the same version (entity tag and modification time) and size as when it was
    /// fetched — an object put back under a forgotten snapshot's name, or damaged in
    /// place, is another object and is fetched and authenticated like a new one; a
    /// store that reports no version is never served from the catalog. A cached
    /// plaintext is authenticated again (its MAC) on every use.
    pub(crate) async fn snapshots_matching(&self, prefix: &str) -> Result<(Vec<Manifest>, Vec<Skipped>)> {
        let mut listed = self.store.list_versions(layout::SNAPSHOTS).await?;
        if prefix.is_empty() {
            self.forget_uncatalogued(&listed);
        } else {
            listed.retain(|o| o.name.starts_with(prefix));
        }
        let results: Vec<(String, Result<Manifest>)> = futures::stream::iter(listed.into_iter().map(|o| async move {
            let (n, size) = (o.name.clone(), o.size);
            let r = match n.parse::<ObjectId>() {
                // A manifest is a few KiB (its maps are separate objects): anything
                // far larger is not one, and is not read into memory.
                Ok(_) if size > MAX_SMALL_OBJECT => Err(too_large(&self.store, "snapshots", &n, size)),
                Ok(id) => self.load_listed_manifest(&id, &o).await,
                Err(e) => Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.foreign-object",
                    format!(
                        "{} holds {}, which is not a snapshot name",
                        self.store.describe(),
                        escape_name(&n)
                    ),
                )
                .with_source(e)),
            };
            (n, r)
        }))
        .buffer_unordered(8)
        .collect()
        .await;
        let (mut out, mut skipped) = (Vec::new(), Vec::new());
        for (n, r) in results {
            match r {
                Ok(m) => out.push(m),
                Err(e) if e.kind() == ErrorKind::Store => return Err(e),
                // Deleted by a forget between the listing and the read.
                Err(e) if e.code() == "snapshot.not-found" => {}
                Err(e) => skipped.push(Skipped::new(format!("{}/{}", layout::SNAPSHOTS, escape_name(&n)), &e)),
            }
        }
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        skipped.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, skipped))
    }

    fn catalog_dir(&self) -> std::path::PathBuf {
        local::repo_dir(self.session.state_dir(), &self.repo_id)
            .join("cache")
            .join("manifests")
    }

    /// Drops catalogued manifests the listing no longer shows (forgotten snapshots).
    /// Best effort: the catalog is an optimisation.
    fn forget_uncatalogued(&self, listed: &[sqlvault_store::Listed]) {
        let Ok(dir) = std::fs::read_dir(self.catalog_dir()) else {
            return;
        };
        let listed: std::collections::HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
        for e in dir.flatten() {
            if !listed.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// A manifest the listing shows: from the catalog when it holds an authentic copy,
    /// else fetched, authenticated and catalogued.
    async fn load_listed_manifest(&self, id: &ObjectId, listed: &sqlvault_store::Listed) -> Result<Manifest> {
        let path = self.catalog_dir().join(id.to_string());
        // `<version> <size>\n`, then the plaintext.
        let tag = listed.version.as_ref().map(|v| format!("{v} {}\n", listed.size));
        if let (Some(tag), Ok(entry)) = (&tag, std::fs::read(&path)) {
            let cached = entry
                .strip_prefix(tag.as_bytes())
                .and_then(|pt| decode_manifest(&self.keys, pt, id).ok());
            match cached {
                Some(m) => return Ok(m),
                // Another object now, or a damaged entry: fetched again.
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (m, pt) = self.fetch_manifest(id).await?;
        let Some(tag) = tag else {
            return Ok(m);
        };
        // No fsync: a torn copy fails its MAC and is fetched again.
        let saved = local::mkdir_private(&self.catalog_dir()).and_then(|()| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(tag.as_bytes()).and_then(|()| f.write_all(&pt)))
                .map_err(|e| crate::error::io_err(format!("cannot write {}", path.display()), e))
        });
        if let Err(e) = saved {
            tracing::debug!("manifest catalog not updated: {}", e.one_line());
        }
        Ok(m)
    }

    /// Loads and authenticates one manifest (always from the repository: whether it
    /// still exists is part of the answer).
    pub async fn load_manifest(&self, id: &ObjectId) -> Result<Manifest> {
        self.fetch_manifest(id).await.map(|(m, _)| m)
    }

    async fn fetch_manifest(&self, id: &ObjectId) -> Result<(Manifest, Vec<u8>)> {
        let key = layout::snapshot(id);
        let ct = get_or(&self.store, &key, || {
            Error::new(
                ErrorKind::NotFound,
                "snapshot.not-found",
                format!("snapshot {id} not found"),
            )
        })
        .await?;
        let pt = self.decrypt_meta(&format!("snapshot {}", id.short()), &ct)?;
        let m = decode_manifest(&self.keys, &pt, id).map_err(|e| corrupt(format!("snapshot {}", id.short()), e))?;
        Ok((m, pt))
    }

    /// Finds a snapshot by id prefix, or the newest one (of `name`, if given). Junk
    /// under `snapshots/` is gone around; when nothing matches and a manifest the
    /// repository wrote is damaged, that damage is the error (it may be the one asked
    /// for).
    pub async fn find_snapshot(&self, id: Option<&str>, name: Option<&str>) -> Result<Manifest> {
        // By id, only the manifests the prefix can name are read.
        let prefix = id.map(str::to_lowercase).unwrap_or_default();
        let (all, skipped) = self.snapshots_matching(&prefix).await?;
        // What was skipped is warned about only when it does not become the error
        // itself: a failure is reported once.
        let warn_skipped = || {
            for s in &skipped {
                tracing::warn!("skipping {}: {}", s.key, s.message);
            }
        };
        if id.is_none()
            && name.is_none()
            && let Some(e) = self.ambiguous_newest(&all)
        {
            warn_skipped();
            return Err(e);
        }
        match self.pick_snapshot(&all, id, name) {
            Ok(m) => {
                warn_skipped();
                Ok(m.clone())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The object asked for by id exists but is not an authentic snapshot.
                let named = id.and_then(|p| {
                    let key = format!("{}/{}", layout::SNAPSHOTS, p.to_lowercase());
                    skipped.iter().find(|s| s.key.starts_with(&key))
                });
                Err(match named {
                    Some(s) => Error::new(ErrorKind::Integrity, s.code, s.message.clone()),
                    None => Skipped::damage(&skipped).unwrap_or(e),
                })
            }
            Err(e) => {
                warn_skipped();
                Err(e)
            }
        }
    }

    /// "The newest snapshot" with neither an id nor a name is a guess when the
    /// repository holds more than one database (names, or sources under one name): it
    /// would hand back whichever was backed up last, maybe another database. Then the
    /// caller must say which (`snapshot.ambiguous`, usage), and is told the names.
    /// Future-dated snapshots are not counted: they are never taken as the newest.
    pub(crate) fn ambiguous_newest(&self, all: &[Manifest]) -> Option<Error> {
        let now = now_ms();
        let mut dbs: Vec<(&str, crate::source::SourceId)> = all
            .iter()
            .filter(|m| !crate::retention::is_future_dated(m.created_ms, now))
            .map(|m| (m.name.as_str(), crate::source::SourceId::of(m)))
            .collect();
        dbs.sort();
        dbs.dedup();
        if dbs.len() < 2 {
            return None;
        }
        let mut names: Vec<&str> = dbs.iter().map(|(n, _)| *n).collect();
        names.dedup();
        let message = if names.len() > 1 {
            format!(
                "{} holds snapshots of {} databases ({}): say which database, or which snapshot",
                self.store.describe(),
                names.len(),
                names.join(", ")
            )
        } else {
            format!(
                "the snapshots of {} in {} come from {} sources ({}): name the database {} to take the newest of them, or say which snapshot",
                names[0],
                self.store.describe(),
                dbs.len(),
                dbs.iter().map(|(_, s)| s.describe()).collect::<Vec<_>>().join(", "),
                names[0]
            )
        };
        Some(Error::new(ErrorKind::Usage, "snapshot.name-required", message))
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
                    "the only snapshots{} in {} are future-dated (more than {} ahead of this host's clock); name one by id if you trust it",
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
}
