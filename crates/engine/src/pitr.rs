//! Point-in-time restore: the newest state of a database shipped at or before a time
//! (or after a given transaction), rebuilt from a base snapshot and the segments of
//! its replication chain (docs/format.md, "Segments").
//!
//! A point is chosen among every snapshot of the database (a plain backup taken after
//! the chain's last segment wins) and the segments of the newest replication base at
//! or before the time. The chain is read in order from segment 1, each segment's MAC,
//! its `prev` link and its identity checked; the restore applies the base's maps and
//! every segment's delta, then refuses unless the rebuilt page table has exactly the
//! state checksum the point's segment records. A missing segment before the point,
//! or a time with no state at or before it, is a named error, never an older state
//! passed off as the one asked for.

use serde::Serialize;
use sqlvault_format::{Manifest, ObjectId, Segment, StateChecksum, kind, layout};

use crate::error::{Error, ErrorKind, Result, corrupt};
use crate::repo::{Repo, get_or};
use crate::restore::{PointCheck, RestoreOptions, RestoreReport, restore_snapshot};
use crate::retention::iso_time;

/// Which state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PointSpec {
    /// The newest state observed at or before this instant (unix ms).
    At(i64),
    /// The state right after this transaction of the newest chain (counted from its
    /// base, as the segments record it).
    Txid(u64),
}

/// The plan of a point-in-time restore (`restore --at … --dry-run` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct PointPlan {
    /// Database name, host and source path.
    pub name: String,
    /// Host.
    pub host: String,
    /// Source path.
    pub source_path: String,
    /// The snapshot the state is rebuilt from.
    pub base: String,
    /// When that snapshot was taken (unix ms).
    pub base_created_ms: i64,
    /// Segments applied on top of it (0: the snapshot itself is the point).
    pub segments: u64,
    /// When the chosen state was observed (unix ms).
    pub observed_ms: i64,
    /// The chosen state's transaction count in its chain, when it is a segment.
    pub txid: Option<u64>,
    /// Pages and page size of the state.
    pub page_count: u32,
    /// Page size.
    pub page_size: u32,
    /// Segments' bytes stored (what the segments uploaded, maps included).
    pub segment_bytes: u64,
    #[serde(skip)]
    manifest: Manifest,
    #[serde(skip)]
    check: Option<PointCheck>,
}

/// Finds the state of database `name` (or the only one) that `spec` names.
pub async fn plan_point(repo: &Repo, name: Option<&str>, spec: PointSpec) -> Result<PointPlan> {
    let all = repo.snapshots().await?;
    let of_name: Vec<&Manifest> = all.iter().filter(|m| name.is_none_or(|n| m.name == n)).collect();
    let mut idents: Vec<(&str, &str, &str)> = of_name
        .iter()
        .map(|m| (m.name.as_str(), m.host.as_str(), m.source_path.as_str()))
        .collect();
    idents.sort();
    idents.dedup();
    let Some(&(n, h, p)) = idents.first() else {
        return Err(Error::new(
            ErrorKind::NotFound,
            "snapshot.not-found",
            match name {
                Some(n) => format!("no snapshot of {n} in the repository"),
                None => "the repository holds no snapshot".to_string(),
            },
        ));
    };
    if idents.len() > 1 {
        return Err(Error::new(
            ErrorKind::Usage,
            "restore.ambiguous",
            format!(
                "{} databases match ({}); name one with --name",
                idents.len(),
                idents
                    .iter()
                    .map(|(n, h, p)| format!("{n} from {h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut mine: Vec<&Manifest> = of_name
        .into_iter()
        .filter(|m| (m.name.as_str(), m.host.as_str(), m.source_path.as_str()) == (n, h, p))
        .collect();
    mine.sort_by_key(|m| (m.created_ms, m.id));
    let limit = match spec {
        PointSpec::At(t) => t,
        PointSpec::Txid(_) => i64::MAX,
    };
    let snap = mine.iter().rev().find(|m| m.created_ms <= limit).copied();
    let chain_base = mine
        .iter()
        .rev()
        .find(|m| m.replicated && m.kind == kind::PAGES && m.created_ms <= limit)
        .copied();
    let (segs, bytes, next_txid) = match chain_base {
        Some(b) => {
            let c = load_chain(repo, b, spec).await?;
            (c.segments, c.bytes, c.next_txid)
        }
        None => (Vec::new(), 0, None),
    };
    if let PointSpec::Txid(t) = spec {
        // Compactions continue a chain's transaction count under a new base: look back
        // through the bases until the one whose segments hold transaction t.
        let bases: Vec<&Manifest> = mine
            .iter()
            .rev()
            .filter(|m| m.replicated && m.kind == kind::PAGES)
            .copied()
            .collect();
        if bases.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "restore.no-point",
                format!("{n} has no replication chain: --txid names a transaction of one"),
            ));
        }
        let mut seen: Vec<Segment> = Vec::new();
        for (i, b) in bases.iter().enumerate() {
            let c = if i == 0 {
                Chain {
                    segments: segs.clone(),
                    bytes,
                    next_txid,
                }
            } else {
                load_chain(repo, b, spec).await?
            };
            if let Some(s) = c.segments.last()
                && s.txid == t
            {
                return Ok(plan_of(b, &c.segments, c.bytes));
            }
            let start = c.segments.first().map(|s| s.txid - s.commits).or(c.next_txid);
            if start == Some(t) {
                return Ok(plan_of(b, &[], 0));
            }
            seen.extend(c.segments.iter().cloned());
            if start.is_some_and(|s| s < t) || start.is_none() && i > 0 {
                break;
            }
        }
        seen.sort_by_key(|s| s.txid);
        let above = seen.iter().find(|s| s.txid > t).map(|s| s.txid).or(next_txid);
        return Err(Error::new(
            ErrorKind::NotFound,
            "restore.no-point",
            format!(
                "no state of {n} right after transaction {t}: {}",
                nearest_txids(&seen, above, t)
            ),
        ));
    }
    let seg_time = segs.last().map(|s| s.observed_ms);
    match (snap, chain_base, seg_time) {
        (Some(s), Some(b), Some(st)) if st >= s.created_ms => Ok(plan_of(b, &segs, bytes)),
        (Some(s), _, _) => Ok(plan_of(s, &[], 0)),
        (None, _, _) => {
            let earliest = mine.first().map(|m| iso_time(m.created_ms)).unwrap_or_default();
            Err(Error::new(
                ErrorKind::NotFound,
                "restore.no-point",
                format!(
                    "no state of {n} at or before {}: the earliest is {earliest}",
                    iso_time(limit)
                ),
            ))
        }
    }
}

fn nearest_txids(segs: &[Segment], above: Option<u64>, t: u64) -> String {
    let below = segs.iter().rev().find(|s| s.txid < t).map(|s| s.txid);
    match (below, above) {
        (None, None) => "the chain has no segment".into(),
        (b, a) => format!(
            "the nearest restorable transactions are {}",
            [b, a]
                .iter()
                .flatten()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

fn plan_of(base: &Manifest, segs: &[Segment], bytes: u64) -> PointPlan {
    let mut m = base.clone();
    let check = segs.last().map(|s| PointCheck {
        state: StateChecksum::from_hex(&s.state).expect("checked when decoded"),
        what: format!("segment {} of chain {}", s.seq, base.id.short()),
    });
    for s in segs {
        m.maps.extend(s.maps.iter().cloned());
    }
    if let Some(s) = segs.last() {
        m.page_count = s.page_count;
    }
    PointPlan {
        name: base.name.clone(),
        host: base.host.clone(),
        source_path: base.source_path.clone(),
        base: base.id.to_string(),
        base_created_ms: base.created_ms,
        segments: segs.len() as u64,
        observed_ms: segs.last().map_or(base.created_ms, |s| s.observed_ms),
        txid: segs.last().map(|s| s.txid),
        page_count: m.page_count,
        page_size: m.page_size,
        segment_bytes: bytes,
        manifest: m,
        check,
    }
}

/// The segments of `base`'s chain up to the point `spec` names, checked in order.
/// With [`PointSpec::At`], a segment missing before the time is an error; one missing
/// after it is not this restore's concern.
async fn load_chain(repo: &Repo, base: &Manifest, spec: PointSpec) -> Result<Chain> {
    let listed = repo.store.list(&layout::chain(&base.id)).await?;
    let mut seqs: Vec<(u64, u64)> = listed
        .iter()
        .filter(|(n, _)| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|(n, size)| Some((n.parse().ok()?, *size)))
        .collect();
    seqs.sort_unstable();
    let mut out: Vec<Segment> = Vec::new();
    let mut prev = Segment::first_prev(&base.id);
    let mut bytes = 0;
    let mut next = None;
    let mut want = 1u64;
    for &(seq, size) in &seqs {
        let (s, hash) = match read_segment(repo, &base.id, seq, size).await {
            Ok(r) => r,
            // Not sealed by this repository: junk a bucket writer put there, as if
            // absent (a segment it replaced is missing, and named so below).
            Err(e) if e.code() == "repo.foreign-object" => {
                tracing::warn!("skipping segment {seq} of chain {}: {}", base.id.short(), e.one_line());
                continue;
            }
            Err(e) => return Err(e),
        };
        if seq != want {
            // A gap, reached only when the point may lie in it or after it: the
            // missing segment's time is unknown, so no older state may stand in.
            return Err(Error::new(
                ErrorKind::Integrity,
                "restore.segment-missing",
                format!(
                    "segment {want} of chain {} ({}) is missing: states after {} cannot be restored from it",
                    base.id.short(),
                    base.name,
                    out.last()
                        .map_or(iso_time(base.created_ms), |s| iso_time(s.observed_ms))
                ),
            ));
        }
        match spec {
            PointSpec::At(t) if s.observed_ms > t => break,
            PointSpec::Txid(t) if s.txid > t => {
                next = Some(s.txid);
                break;
            }
            _ => {}
        }
        if s.prev != prev
            || (s.name.as_str(), s.host.as_str(), s.source_path.as_str())
                != (base.name.as_str(), base.host.as_str(), base.source_path.as_str())
            || s.page_size != base.page_size
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                "restore.chain-broken",
                format!(
                    "segment {seq} of chain {} does not follow segment {} (replayed or swapped)",
                    base.id.short(),
                    seq - 1
                ),
            ));
        }
        prev = hash;
        bytes += s.bytes_new;
        out.push(s);
        want += 1;
    }
    Ok(Chain {
        segments: out,
        bytes,
        next_txid: next,
    })
}

/// A chain read up to a point.
struct Chain {
    segments: Vec<Segment>,
    bytes: u64,
    /// With [`PointSpec::Txid`]: the transaction count of the first segment past it.
    next_txid: Option<u64>,
}

async fn read_segment(repo: &Repo, chain: &ObjectId, seq: u64, listed: u64) -> Result<(Segment, String)> {
    let key = layout::segment(chain, seq);
    let what = format!("segment {seq} of chain {}", chain.short());
    // age adds a little to the plaintext: anything far larger is not a segment, and is
    // not read into memory to find that out.
    let most = 2 * sqlvault_format::MAX_SEGMENT as u64;
    if listed > most {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("{what} is {listed} bytes, more than any segment ({most})"),
        ));
    }
    let ct = get_or(&repo.store, &key, || {
        Error::new(
            ErrorKind::Integrity,
            "restore.segment-missing",
            format!("{what} is missing"),
        )
    })
    .await?;
    if ct.len() > sqlvault_format::MAX_SEGMENT * 2 {
        return Err(Error::new(
            ErrorKind::Integrity,
            "repo.corrupt-object",
            format!("{what} is larger than any segment"),
        ));
    }
    let pt = repo.decrypt_meta(&what, &ct)?;
    Segment::decode(&repo.keys, &pt, chain, seq).map_err(|e| corrupt(&what, e))
}

/// One database's restorable span (`snapshots --timeline`).
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// Database name.
    pub name: String,
    /// Host.
    pub host: String,
    /// Source path.
    pub source_path: String,
    /// Snapshots (bases included).
    pub snapshots: usize,
    /// The oldest restorable state (unix ms).
    pub from_ms: i64,
    /// The newest restorable state (unix ms).
    pub to_ms: i64,
    /// Replication chains, oldest first.
    pub chains: Vec<ChainSpan>,
}

/// One replication chain in a [`Timeline`].
#[derive(Debug, Clone, Serialize)]
pub struct ChainSpan {
    /// Its base snapshot.
    pub base: String,
    /// The base's time (unix ms).
    pub from_ms: i64,
    /// Its newest segment's time (the base's when it has none).
    pub to_ms: i64,
    /// Segments.
    pub segments: u64,
    /// Mean time between segments (ms): the resolution of `restore --at` while the
    /// database was changing.
    pub resolution_ms: Option<i64>,
    /// Why the chain began (`start`, or the break that ended the previous one:
    /// `file-replaced`, `wal-truncated`, …), when its first segment says.
    pub started_by: Option<String>,
    /// Segment numbers missing below the newest: points past the first are not
    /// restorable from this chain.
    pub missing: Vec<u64>,
}

/// Every database's restorable span: one LIST of the segments, and per chain a GET of
/// its first and newest segment.
pub async fn timeline(repo: &Repo, name: Option<&str>) -> Result<Vec<Timeline>> {
    let all = repo.snapshots().await?;
    let listed = repo.store.list(layout::SEGMENTS).await?;
    let mut by_chain: std::collections::HashMap<ObjectId, Vec<(u64, u64)>> = std::collections::HashMap::new();
    for (n, size) in listed {
        let Some((c, q)) = n.split_once('/') else {
            continue;
        };
        if let (Ok(c), Ok(q)) = (c.parse::<ObjectId>(), q.parse::<u64>())
            && q.to_string().len() <= 20
        {
            by_chain.entry(c).or_default().push((q, size));
        }
    }
    let mut groups: std::collections::BTreeMap<(String, String, String), Vec<&Manifest>> = Default::default();
    for m in all.iter().filter(|m| name.is_none_or(|n| m.name == n)) {
        groups
            .entry((m.name.clone(), m.host.clone(), m.source_path.clone()))
            .or_default()
            .push(m);
    }
    let mut out = Vec::new();
    for ((n, h, p), mut ms) in groups {
        ms.sort_by_key(|m| (m.created_ms, m.id));
        let mut chains = Vec::new();
        for m in ms.iter().filter(|m| m.replicated) {
            let mut segs = by_chain.remove(&m.id).unwrap_or_default();
            segs.sort_unstable();
            let mut span = ChainSpan {
                base: m.id.to_string(),
                from_ms: m.created_ms,
                to_ms: m.created_ms,
                segments: segs.len() as u64,
                resolution_ms: None,
                started_by: None,
                missing: Vec::new(),
            };
            let newest = segs.last().map_or(0, |s| s.0);
            let present: std::collections::HashSet<u64> = segs.iter().map(|s| s.0).collect();
            span.missing = (1..newest).filter(|q| !present.contains(q)).take(100).collect();
            if let (Some(&(f, fs)), Some(&(l, ls))) = (segs.first(), segs.last())
                && let (Ok((first, _)), Ok((last, _))) = (
                    read_segment(repo, &m.id, f, fs).await,
                    read_segment(repo, &m.id, l, ls).await,
                )
            {
                span.started_by = first
                    .events
                    .iter()
                    .find_map(|e| e.strip_prefix("chain-started:").map(str::to_string));
                span.to_ms = last.observed_ms;
                if segs.len() > 1 {
                    span.resolution_ms = Some((last.observed_ms - first.observed_ms) / (segs.len() as i64 - 1));
                }
            }
            chains.push(span);
        }
        let to = ms
            .iter()
            .map(|m| m.created_ms)
            .chain(chains.iter().map(|c| c.to_ms))
            .max()
            .unwrap_or(0);
        out.push(Timeline {
            name: n,
            host: h,
            source_path: p,
            snapshots: ms.len(),
            from_ms: ms.first().map_or(0, |m| m.created_ms),
            to_ms: to,
            chains,
        });
    }
    Ok(out)
}

/// The chains whose segments a point-in-time window starting at `start` (unix ms) no
/// longer needs, with their objects' keys and modification times: per database, every
/// chain but the newest whose successor base was taken at or before `start` (its
/// points are all older than the window, and the successor's reach it), and chains
/// whose base manifest is gone (unrestorable) once their objects are older than the
/// window and an hour (a base is written before its first segment, so a younger one
/// may belong to a chain committed after `snaps` was listed).
pub(crate) async fn expired_chains(
    repo: &Repo,
    snaps: &[Manifest],
    name: Option<&str>,
    start: i64,
) -> Result<Vec<(ObjectId, Vec<(String, i64)>)>> {
    let listed = repo.store.list_versions(layout::SEGMENTS).await?;
    let mut by_chain: std::collections::HashMap<ObjectId, Vec<(String, i64)>> = std::collections::HashMap::new();
    for o in listed {
        if let Some((c, _)) = o.name.split_once('/')
            && let Ok(c) = c.parse::<ObjectId>()
        {
            by_chain
                .entry(c)
                .or_default()
                .push((format!("{}/{}", layout::SEGMENTS, o.name), o.modified_ms));
        }
    }
    let mut bases: std::collections::BTreeMap<(&str, &str, &str), Vec<&Manifest>> = Default::default();
    for m in snaps.iter().filter(|m| m.replicated) {
        bases
            .entry((m.name.as_str(), m.host.as_str(), m.source_path.as_str()))
            .or_default()
            .push(m);
    }
    let mut out = Vec::new();
    for ((n, _, _), mut bs) in bases {
        if name.is_some_and(|w| w != n) {
            continue;
        }
        bs.sort_by_key(|m| (m.created_ms, m.id));
        for pair in bs.windows(2) {
            if pair[1].created_ms <= start
                && let Some(keys) = by_chain.remove(&pair[0].id)
            {
                out.push((pair[0].id, keys));
            }
        }
    }
    if name.is_none() {
        let known: std::collections::HashSet<ObjectId> = snaps.iter().map(|m| m.id).collect();
        for (c, keys) in by_chain {
            if !known.contains(&c) && keys.iter().all(|(_, t)| *t < start - 3_600_000) {
                out.push((c, keys));
            }
        }
    }
    Ok(out)
}

/// Every segment in the repository, authenticated, with the chain it belongs to.
/// Objects under `segments/` that are not named like segments are skipped; one that
/// is named like one but does not authenticate is an error (prune must not act on
/// partial knowledge).
pub(crate) async fn all_segments(repo: &Repo) -> Result<Vec<Segment>> {
    let listed = repo.store.list(layout::SEGMENTS).await?;
    let mut out = Vec::with_capacity(listed.len());
    for (name, size) in listed {
        let Some((chain, seq)) = name.split_once('/') else {
            continue;
        };
        let (Ok(chain), Ok(seq)) = (chain.parse::<ObjectId>(), seq.parse::<u64>()) else {
            continue;
        };
        if seq.to_string().len() > 20 || name.len() != chain.to_string().len() + 21 {
            continue;
        }
        match read_segment(repo, &chain, seq, size).await {
            Ok((seg, _)) => out.push(seg),
            // Junk a bucket writer put there: never a reason to stop prune.
            Err(e) if e.code() == "repo.foreign-object" => {
                tracing::warn!("prune skips segments/{name}: {}", e.one_line());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Restores the state `plan` names to `dest` (as [`crate::restore_snapshot`] does a
/// snapshot), checking the state checksum of a segment's state.
pub async fn restore_point(
    repo: &Repo,
    plan: &PointPlan,
    dest: &std::path::Path,
    opts: RestoreOptions,
) -> Result<RestoreReport> {
    let mut opts = opts;
    opts.point = plan.check.clone();
    restore_snapshot(repo, &plan.manifest, dest, &opts).await
}

/// Verifies points in time as [`crate::verify`] verifies snapshots: each restored into a
/// scratch directory, its state checksum (or logical checksum, for a plain snapshot)
/// and `integrity_check` checked, then deleted; with evidence when asked.
pub async fn verify_points(
    repo: &Repo,
    plans: Vec<PointPlan>,
    opts: &RestoreOptions,
) -> Result<Vec<crate::restore::VerifyReport>> {
    let items = plans
        .into_iter()
        .map(|p| {
            let label = format!(
                "{} ({})",
                iso_time(p.observed_ms),
                match p.segments {
                    0 => format!("snapshot {}", &p.base[..8]),
                    n => format!("snapshot {} + {n} segments", &p.base[..8]),
                }
            );
            (p.manifest, p.check, Some(label))
        })
        .collect();
    crate::restore::verify_each(repo, items, opts).await
}

/// Parses a time for `--at`: RFC 3339 in UTC (`2026-11-28T14:03:07Z`, fractions of a
/// second allowed, `+00:00` for `Z`), or an offset back from `now_ms` (`-15m`, `-90s`,
/// `-2h`, `-1d`). Returns unix milliseconds.
pub fn parse_time(s: &str, now_ms: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit() && c != '.')?);
        let n: f64 = num.parse().ok()?;
        let ms = match unit {
            "ms" => 1.0,
            "s" => 1e3,
            "m" | "min" => 60e3,
            "h" => 3600e3,
            "d" => 86_400e3,
            _ => return None,
        };
        return Some(now_ms - (n * ms) as i64);
    }
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms_frac = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let f = format!("{frac:0<3}");
        f[..3].parse::<i64>().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms_frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc_or_offsets() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Some(0));
        assert_eq!(parse_time("2026-11-28T14:03:07Z", 0), Some(1_795_874_587_000));
        assert_eq!(parse_time("2026-11-28T14:03:07.25Z", 0), Some(1_795_874_587_250));
        assert_eq!(parse_time("2026-11-28T14:03:07+00:00", 0), Some(1_795_874_587_000));
        assert_eq!(parse_time("-15m", 1_000_000), Some(100_000));
        assert_eq!(parse_time("-1.5s", 10_000), Some(8_500));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-28T14:03:07",
            "-5y",
            "-m",
        ] {
            assert_eq!(parse_time(bad, 0), None, "{bad}");
        }
        assert_eq!(iso_time(1_795_874_587_000).get(..19), Some("2026-11-28T14:03:07"));
    }
}
