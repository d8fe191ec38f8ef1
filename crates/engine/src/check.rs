//! `check`: the repository's structure is sound — every snapshot authenticates, every
//! page map authenticates, every referenced chunk is indexed, every indexed pack
//! exists; with `read_data`, every pack is downloaded, decrypted and every chunk in it
//! re-hashed.

use std::collections::{HashMap, HashSet};

use crate::packer::PackReader;
use serde::Serialize;
use sqlvault_format::{ChunkId, IndexEntry, ObjectId, layout};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repo;
use crate::session::Requests;

/// Options for [`check`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Download and authenticate every pack.
    pub read_data: bool,
}

impl CheckOptions {
    /// Sets read_data.
    pub fn with_read_data(mut self, yes: bool) -> Self {
        self.read_data = yes;
        self
    }
}

/// One problem found by check.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Stable code.
    pub code: String,
    /// What is wrong, naming the object.
    pub message: String,
}

/// What check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Snapshots examined.
    pub snapshots: usize,
    /// Packs in the repository.
    pub packs: usize,
    /// Packs downloaded and authenticated.
    pub packs_read: usize,
    /// Distinct chunks referenced by snapshots.
    pub chunks_referenced: usize,
    /// Problems; empty means healthy.
    pub problems: Vec<Problem>,
    /// Store requests.
    pub requests: Requests,
}

fn problem(e: &Error) -> Problem {
    Problem {
        code: e.code().to_string(),
        message: e.one_line(),
    }
}

/// Checks the repository.
pub async fn check(repo: &Repo, opts: CheckOptions) -> Result<CheckReport> {
    repo.require_data_access("check")?;
    let before = repo.store.stats();
    let mut problems = Vec::new();

    // Snapshots and their maps.
    let names = repo.store.list(layout::SNAPSHOTS).await?;
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let mut snapshots = 0;
    for (n, _) in &names {
        let id: ObjectId = match n.parse() {
            Ok(id) => id,
            Err(_) => {
                problems.push(Problem {
                    code: "repo.stray-object".into(),
                    message: format!("snapshots/{} is not a snapshot name", crate::repo::escape_name(n)),
                });
                continue;
            }
        };
        snapshots += 1;
        let m = match repo.load_manifest(&id).await {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::Store => return Err(e),
            Err(e) => {
                problems.push(problem(&e));
                continue;
            }
        };
        match repo.chunk_ids(&m).await {
            Ok(pages) => referenced.extend(pages),
            Err(e) if e.kind() == ErrorKind::Store => return Err(e),
            Err(e) => problems.push(problem(&e)),
        }
    }

    // Indexes and packs.
    // Every index that cannot be read or authenticated is reported, and the rest
    // still checked.
    let (indexes, skipped) = repo.load_indexes_checked().await?;
    problems.extend(skipped.into_iter().map(|s| Problem {
        code: s.code.to_string(),
        message: s.message,
    }));
    let packs: HashMap<String, u64> = repo.store.list(layout::PACKS).await?.into_iter().collect();
    let mut located: HashSet<ChunkId> = HashSet::new();
    let mut by_pack: HashMap<ObjectId, Vec<IndexEntry>> = HashMap::new();
    for (_, idx) in indexes {
        for sec in idx.packs {
            if !packs.contains_key(&sec.pack.to_string()) {
                if sec.entries.iter().any(|e| referenced.contains(&e.id)) {
                    problems.push(Problem {
                        code: "repo.missing-object".into(),
                        message: format!(
                            "pack {} is listed in an index but missing from the repository",
                            sec.pack.short()
                        ),
                    });
                }
                continue;
            }
            located.extend(sec.entries.iter().map(|e| e.id));
            by_pack.entry(sec.pack).or_default().extend(sec.entries);
        }
    }
    let missing = referenced.iter().filter(|id| !located.contains(id)).count();
    if missing > 0 {
        problems.push(Problem {
            code: "repo.missing-chunk".into(),
            message: format!("{missing} referenced chunks are in no existing pack"),
        });
    }

    let mut packs_read = 0;
    if opts.read_data {
        let mut names: Vec<&String> = packs.keys().collect();
        names.sort();
        let progress = repo.session.progress();
        progress.start("reading packs", Some(names.iter().map(|n| packs[*n]).sum()));
        for name in names {
            packs_read += 1;
            progress.advance(packs[name]);
            if let Err(e) = read_pack(repo, name, by_pack.get(&name.parse().unwrap_or(ObjectId([0; 16])))).await {
                if e.kind() == ErrorKind::Store {
                    return Err(e);
                }
                problems.push(problem(&e));
            }
        }
        progress.finish();
    }

    Ok(CheckReport {
        snapshots,
        packs: packs.len(),
        packs_read,
        chunks_referenced: referenced.len(),
        problems,
        requests: repo.store.stats().since(before),
    })
}

/// Reads every chunk of pack `name` through the one pack reader, checks each against
/// its id, and its trailer against what the indexes say it holds.
async fn read_pack(repo: &Repo, name: &str, indexed: Option<&Vec<IndexEntry>>) -> Result<()> {
    let Ok(pack) = name.parse::<ObjectId>() else {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.foreign-object",
            format!("packs/{} is not a pack name", crate::repo::escape_name(name)),
        ));
    };
    let ct = crate::packer::fetch_pack(repo, &pack).await?;
    let (ids, keys) = (repo.identities.clone(), repo.keys.clone());
    let indexed = indexed.cloned();
    crate::packer::on_cpu(move || {
        let mut r = PackReader::open(&ids, &pack, ct)?;
        let mut entries = r.trailer()?;
        if let Some(ix) = indexed {
            let mut a: Vec<_> = ix.iter().map(|e| (e.id, e.frame_offset, e.offset)).collect();
            let mut b: Vec<_> = entries.iter().map(|e| (e.id, e.frame_offset, e.offset)).collect();
            a.sort();
            b.sort();
            if a != b {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    "repo.corrupt-object",
                    format!("pack {}: index and pack trailer disagree", pack.short()),
                ));
            }
        }
        entries.sort_by_key(|e| (e.frame_offset, e.offset));
        for e in &entries {
            r.chunk(&keys, e)?;
        }
        Ok(())
    })
    .await
}
