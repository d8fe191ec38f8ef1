//! The disaster-recovery runbook, written from the configuration and the
//! repositories' own facts: what is protected where, the recovery point measured from
//! the replication timeline, the recovery time measured by the last drill, key
//! custody (recipients and who holds which identity, never a secret), copy-paste
//! restore commands, the stock-tool path, roles and a checklist.
//!
//! Gathering ([`gather`]) reads the repositories; rendering ([`render`]) is pure, so a
//! given configuration and repository state give the same document, byte for byte.
//! It is stamped VERIFIED only when, for every database and destination, the newest
//! drill recorded in the repository passed after the configuration file last
//! changed; otherwise NEEDS VERIFICATION, with each reason.
//!
//! Commands are fenced `sh` blocks whose first line names them
//! (`# runbook: newest app.db primary`), so that they can be run as written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sqlvault_engine::{Access, Repo, Session};
use sqlvault_store::{Store, StoreEnv};

use crate::config::{Config, DestinationSpec};

/// What one repository says about one database.
#[derive(Debug, Clone, Default)]
pub struct DestFacts {
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    /// Its fingerprint and the recipients its data is encrypted to.
    pub fingerprint: String,
    pub recipients: Vec<String>,
    /// Snapshots of this database, the newest's time and size in bytes.
    pub snapshots: usize,
    pub newest_snapshot_ms: i64,
    pub newest_bytes: u64,
    /// The restorable span, and the newest chain's spacing of states (ms).
    pub from_ms: i64,
    pub to_ms: i64,
    pub resolution_ms: Option<i64>,
    /// The newest drill recorded: when, whether it passed, restore and check seconds.
    pub drill: Option<(i64, bool, f64)>,
}

/// One database file: its path, its name in the repositories, and per destination name
/// what that repository says.
pub type DatabaseFacts = (PathBuf, String, Vec<(String, DestFacts)>);

/// Everything the runbook is written from.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Per database file (path, name in the repositories), per destination name.
    pub databases: Vec<DatabaseFacts>,
    /// When the configuration file last changed (unix ms).
    pub config_changed_ms: i64,
}

/// Reads the repositories of `config` (with each destination's identity when it has
/// one: drills and evidence need it).
pub async fn gather(config: &Config, session: &Session, env: &[(String, String)]) -> Facts {
    let config_changed_ms = std::fs::metadata(&config.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let mut databases = Vec::new();
    for spec in &config.databases {
        for (path, name) in spec.source.files() {
            let name = name.unwrap_or_else(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let mut dests = Vec::new();
            for dn in &spec.destinations {
                let Some(d) = config.destinations.get(dn) else { continue };
                dests.push((dn.clone(), facts_of(d, &name, session, env).await));
            }
            databases.push((path, name, dests));
        }
    }
    Facts {
        databases,
        config_changed_ms,
    }
}

async fn facts_of(d: &DestinationSpec, name: &str, session: &Session, env: &[(String, String)]) -> DestFacts {
    let mut f = DestFacts::default();
    let r: Result<(), sqlvault_engine::Error> = async {
        let env = StoreEnv::from_vars(env.iter().cloned().chain(d.env.iter().cloned()));
        let store = Store::open_url(&d.repo, &env)?;
        let repo = match &d.identity_file {
            Some(p) => {
                let ids = sqlvault_engine::crypt::Identities::from_file(p).map_err(|e| {
                    sqlvault_engine::Error::new(sqlvault_engine::ErrorKind::Auth, "runbook.identity", e.to_string())
                })?;
                Repo::open_read(session, store, Access::Identities(ids)).await?
            }
            None => Repo::open_write(session, store).await?,
        };
        f.fingerprint = repo.fingerprint().to_string();
        f.recipients = repo.recipients();
        let snaps: Vec<_> = repo.snapshots().await?.into_iter().filter(|m| m.name == name).collect();
        f.snapshots = snaps.len();
        if let Some(m) = snaps.iter().max_by_key(|m| m.created_ms) {
            f.newest_snapshot_ms = m.created_ms;
            f.newest_bytes = m.page_count as u64 * m.page_size as u64;
        }
        if let Some(t) = sqlvault_engine::timeline(&repo, Some(name)).await?.into_iter().next() {
            f.from_ms = t.from_ms;
            f.to_ms = t.to_ms;
            f.resolution_ms = t.chains.iter().rev().find_map(|c| c.resolution_ms);
        }
        if d.identity_file.is_some()
            && let Ok((ev, _)) = sqlvault_engine::evidence::load_all(&repo).await
        {
            f.drill = ev
                .iter()
                .filter(|e| e.kind == "drill" && e.name == name)
                .max_by_key(|e| e.at_ms)
                .map(|e| (e.at_ms, e.ok, e.restore_seconds + e.check_seconds));
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        f.error = Some(e.one_line());
    }
    f
}

/// Options of the commands the runbook prints.
#[derive(Debug, Clone)]
pub struct RunbookOptions {
    /// Where restores go (a directory on the recovery host).
    pub restore_dir: PathBuf,
    /// The `sqlvault` command (a path, when it is not on PATH).
    pub sqlvault: String,
}

impl Default for RunbookOptions {
    fn default() -> Self {
        RunbookOptions {
            restore_dir: PathBuf::from("/var/tmp/sqlvault-restore"),
            sqlvault: "sqlvault".into(),
        }
    }
}

/// A document: what both renderings are made from.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Level (1–3) and text.
    Heading(u8, String),
    /// A paragraph.
    Para(String),
    /// Bulleted items.
    List(Vec<String>),
    /// Header and rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A shell block.
    Code(String),
}

/// Shell quoting: one argument, whatever it holds.
fn q(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:@=+,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn time(ms: i64) -> String {
    if ms <= 0 {
        "none".into()
    } else {
        sqlvault_engine::retention::iso_time(ms)
    }
}

/// RFC 3339 with milliseconds: a time a restore can be given exactly.
fn time_ms(ms: i64) -> String {
    let s = sqlvault_engine::retention::iso_time(ms - ms.rem_euclid(1000));
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms.rem_euclid(1000))
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Whether the runbook is VERIFIED, and why not.
pub fn verification(facts: &Facts) -> (bool, Vec<String>) {
    let mut why = Vec::new();
    for (path, name, dests) in &facts.databases {
        for (dn, f) in dests {
            match f.drill {
                None => why.push(format!("{name} ({}) → {dn}: no drill recorded", path.display())),
                Some((at, false, _)) => why.push(format!("{name} → {dn}: the last drill, {}, failed", time(at))),
                Some((at, true, _)) if at < facts.config_changed_ms => why.push(format!(
                    "{name} → {dn}: the configuration changed ({}) after the last drill ({})",
                    time(facts.config_changed_ms),
                    time(at)
                )),
                _ => {}
            }
        }
    }
    if facts.databases.is_empty() {
        why.push("no database is configured".into());
    }
    (why.is_empty(), why)
}

/// The runbook as blocks.
pub fn render(config: &Config, facts: &Facts, o: &RunbookOptions) -> Vec<Block> {
    use Block::*;
    let mut b = Vec::new();
    let (verified, why) = verification(facts);
    b.push(Heading(1, "Disaster-recovery runbook".into()));
    b.push(Para(format!(
        "Status: **{}**. Written by sqlvault from {} (changed {}) and what the repositories hold; write it again after every change (`sqlvault runbook --config {}`).",
        if verified { "VERIFIED" } else { "NEEDS VERIFICATION" },
        config.path.display(),
        time(facts.config_changed_ms),
        q(&config.path.display().to_string())
    )));
    if !verified {
        b.push(List(
            why.iter()
                .map(|w| format!("{w}: run a drill (`sqlvault drill REPO -i IDENTITY`), then write this runbook again"))
                .collect(),
        ));
    }

    b.push(Heading(2, "What is protected, where".into()));
    let mut rows = Vec::new();
    for (path, name, dests) in &facts.databases {
        let spec = config
            .databases
            .iter()
            .find(|s| s.source.files().iter().any(|(p, _)| p == path));
        for (dn, f) in dests {
            let d = &config.destinations[dn];
            let rpo = match (spec, f.resolution_ms) {
                (Some(s), Some(r)) => format!(
                    "≤ {:.1} s (interval {:?}; measured spacing {:.1} s)",
                    s.schedule.interval.as_secs_f64().max(r as f64 / 1000.0),
                    s.schedule.interval,
                    r as f64 / 1000.0
                ),
                (Some(s), None) => format!("≤ {:?} (interval; no replication measured yet)", s.schedule.interval),
                _ => "-".into(),
            };
            let rto = match f.drill {
                Some((_, true, secs)) if f.newest_bytes > 0 => format!(
                    "{secs:.1} s for {:.2} GiB ({:.1} s/GiB, last drill)",
                    gib(f.newest_bytes),
                    secs / gib(f.newest_bytes).max(1e-9)
                ),
                _ => "not measured (no passing drill)".into(),
            };
            rows.push(vec![
                format!("{name} (`{}`)", path.display()),
                format!("{dn}: `{}`", d.repo),
                f.error.clone().map_or_else(
                    || format!("{} → {}", time(f.from_ms), time(f.to_ms)),
                    |e| format!("unreadable: {e}"),
                ),
                d.pitr_window.map_or("-".into(), |w| format!("{w:?}")),
                rpo,
                rto,
            ]);
        }
    }
    b.push(Table(
        [
            "Database",
            "Destination",
            "Restorable span",
            "PITR window",
            "RPO",
            "RTO",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));

    b.push(Heading(2, "Key custody".into()));
    b.push(Para("Every repository is encrypted to the recipients below; restoring needs the matching identity. Identities are never on the database host. The fingerprint confirms you are reading the right repository.".into()));
    let mut rows = Vec::new();
    for (dn, d) in &config.destinations {
        let f = facts
            .databases
            .iter()
            .flat_map(|(_, _, ds)| ds.iter())
            .find(|(n, _)| n == dn)
            .map(|(_, f)| f);
        let rec = f.map(|f| f.recipients.join(", ")).unwrap_or_default();
        let holders: Vec<String> = config
            .identities
            .iter()
            .filter(|(_, i)| rec.contains(&i.recipient))
            .map(|(n, i)| {
                let who: Vec<&str> = config
                    .people
                    .iter()
                    .filter(|p| p.holds.contains(n))
                    .map(|p| p.name.as_str())
                    .collect();
                format!(
                    "{n} (held by {}; kept at {})",
                    if who.is_empty() {
                        "nobody listed".into()
                    } else {
                        who.join(", ")
                    },
                    i.location.as_deref().unwrap_or("not recorded")
                )
            })
            .collect();
        rows.push(vec![
            dn.clone(),
            format!("`{}`", d.repo),
            f.map(|f| f.fingerprint.clone()).unwrap_or_default(),
            rec,
            if holders.is_empty() {
                "no identity listed for these recipients".into()
            } else {
                holders.join("; ")
            },
        ]);
    }
    b.push(Table(
        ["Destination", "Repository", "Fingerprint", "Recipients", "Identity"]
            .map(String::from)
            .to_vec(),
        rows,
    ));

    b.push(Heading(2, "Restore".into()));
    let rd = o.restore_dir.display().to_string();
    let sv = &o.sqlvault;
    for (path, name, dests) in &facts.databases {
        b.push(Heading(3, format!("{name} (`{}`)", path.display())));
        // A SQLCipher database restores encrypted: the key as the daemon has it.
        let spec = config
            .databases
            .iter()
            .find(|s| s.source.files().iter().any(|(p, _)| p == path));
        let (kpre, karg) = match spec.and_then(|s| s.db_key.as_ref()) {
            Some(crate::config::KeySource::File(f)) => {
                (String::new(), format!(" --db-key-file {}", q(&f.display().to_string())))
            }
            Some(crate::config::KeySource::Env(v)) => (format!("SQLVAULT_DB_KEY=\"${v}\" "), String::new()),
            None => (String::new(), String::new()),
        };
        for (dn, f) in dests {
            let d = &config.destinations[dn];
            let id = d
                .identity_file
                .as_ref()
                .map_or("IDENTITY_FILE".to_string(), |p| q(&p.display().to_string()));
            let needs: Vec<&str> = d.env.iter().map(|(k, _)| k.as_str()).collect();
            let envline = if needs.is_empty() {
                String::new()
            } else {
                format!("# needs in the environment: {}\n", needs.join(", "))
            };
            let idline = if d.identity_file.is_none() {
                "IDENTITY_FILE=/path/to/identity.txt   # the identity of this repository (see Key custody)\n"
            } else {
                ""
            };
            let out = format!("{rd}/{name}");
            b.push(Para(format!("From {dn} (`{}`): the newest state.", d.repo)));
            b.push(Code(format!(
                "# runbook: newest {name} {dn}\n{envline}{idline}mkdir -p {}\nrm -f {}\n{kpre}{sv} restore {} {} -i {id} --name {} --at -0s{karg}",
                q(&rd),
                q(&out),
                q(&d.repo),
                q(&out),
                q(name)
            )));
            let at = if f.to_ms > f.from_ms {
                (f.from_ms + f.to_ms) / 2
            } else {
                f.to_ms
            };
            b.push(Para("A point in time: set AT to the moment to go back to (UTC, or an offset such as -15m); `--dry-run` shows the plan first.".into()));
            b.push(Code(format!(
                "# runbook: point {name} {dn}\n{envline}{idline}AT={}\nmkdir -p {}\nrm -f {}\n{sv} restore {} {} -i {id} --name {} --at \"$AT\" --dry-run\n{kpre}{sv} restore {} {} -i {id} --name {} --at \"$AT\"{karg}",
                q(&time_ms(at)),
                q(&rd),
                q(&format!("{out}.at")),
                q(&d.repo),
                q(&format!("{out}.at")),
                q(name),
                q(&d.repo),
                q(&format!("{out}.at")),
                q(name)
            )));
        }
        if let Some((dn, _)) = dests.first() {
            let d = &config.destinations[dn];
            let id = d
                .identity_file
                .as_ref()
                .map_or("IDENTITY_FILE".to_string(), |p| q(&p.display().to_string()));
            let p = path.display().to_string();
            b.push(Para("In place, after the application is stopped: the damaged files go to a quarantine directory, the restored file is renamed over the database in one step (same directory, same filesystem). The daemon then follows the new file (a new chain).".into()));
            b.push(Code(format!(
                "# runbook: in-place {name} {dn}\n# 1. stop the application, and everything else that opens {p}\nQ={}/quarantine-$(date +%Y%m%dT%H%M%S)\nmkdir -p \"$Q\"\nfor f in {} {} {} {}; do if [ -e \"$f\" ]; then cp -p \"$f\" \"$Q/\"; fi; done\nrm -f {} {} {} {}\n{kpre}{sv} restore {} {} -i {id} --name {} --at -0s{karg}\nmv {} {}\n# 2. start the application",
                q(&rd),
                q(&p),
                q(&format!("{p}-wal")),
                q(&format!("{p}-shm")),
                q(&format!("{p}-journal")),
                q(&format!("{p}-wal")),
                q(&format!("{p}-shm")),
                q(&format!("{p}-journal")),
                q(&format!("{p}.sqlvault-new")),
                q(&d.repo),
                q(&format!("{p}.sqlvault-new")),
                q(name),
                q(&format!("{p}.sqlvault-new")),
                q(&p)
            )));
        }
    }

    b.push(Heading(2, "Without sqlvault".into()));
    b.push(Para("If sqlvault itself is unavailable: the format is documented (docs/format.md in sqlvault's source) and docs/recover.py rebuilds a database, or a point in time, with age, zstd and Python only, from a local copy of the repository (for a bucket, copy it first, e.g. `aws s3 sync s3://bucket/prefix ./repo`).".into()));
    for (_, name, dests) in &facts.databases {
        let Some((dn, f)) = dests
            .iter()
            .find(|(dn, _)| !config.destinations[dn].repo.contains("://"))
        else {
            continue;
        };
        let d = &config.destinations[dn];
        let id = d
            .identity_file
            .as_ref()
            .map_or("IDENTITY_FILE".to_string(), |p| q(&p.display().to_string()));
        let out = format!("{rd}/{name}.stock");
        b.push(Code(format!(
            "# runbook: stock-tools {name} {dn}\n# (docs/recover.py of sqlvault's source; AT: the newest state, or any time of the span)\nmkdir -p {}\nrm -f {}\npython3 docs/recover.py {} {id} {} --name {} --at {}",
            q(&rd),
            q(&out),
            q(&d.repo),
            q(&out),
            q(name),
            q(&time_ms(f.to_ms.max(f.newest_snapshot_ms)))
        )));
    }

    b.push(Heading(2, "Roles and contacts".into()));
    if config.people.is_empty() {
        b.push(Para("No one is listed: add [[person]] entries to the configuration (who is called, who may restore, who holds which identity).".into()));
    } else {
        b.push(Table(
            ["Name", "Role", "Contact", "Holds", "May restore"]
                .map(String::from)
                .to_vec(),
            config
                .people
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.role.clone(),
                        p.contact.clone().unwrap_or_default(),
                        p.holds.join(", "),
                        if p.may_restore { "yes".into() } else { "no".into() },
                    ]
                })
                .collect(),
        ));
    }

    b.push(Heading(2, "Verification checklist".into()));
    b.push(List(
        [
            "sqlvault restore ended with \"integrity_check ok and checksum verified\" (it refuses a state whose checksum does not match).",
            "The restored state is the one wanted: `sqlite3 RESTORED 'SELECT max(rowid) FROM <a busy table>'`, or the application's own check, against what users last saw.",
            "`sqlite3 RESTORED 'PRAGMA integrity_check'` prints `ok` (again, on the recovery host).",
            "The application starts on the restored file and its smoke test passes.",
            "The daemon is running again (`sqlvault status`) and /healthz answers 200.",
            "Record what happened, then run a drill and write this runbook again.",
        ]
        .map(String::from)
        .to_vec(),
    ));
    b
}

/// Markdown.
pub fn to_markdown(blocks: &[Block]) -> String {
    let mut o = String::new();
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(o, "{} {t}\n", "#".repeat(*l as usize));
            }
            Block::Para(t) => {
                let _ = writeln!(o, "{t}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(o, "- {i}");
                }
                o.push('\n');
            }
            Block::Table(h, rows) => {
                let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
                let _ = writeln!(o, "| {} |", h.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
                let _ = writeln!(o, "|{}", "---|".repeat(h.len()));
                for r in rows {
                    let _ = writeln!(o, "| {} |", r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
                }
                o.push('\n');
            }
            Block::Code(c) => {
                let _ = writeln!(o, "```sh\n{c}\n```\n");
            }
        }
    }
    o
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Inline Markdown of a paragraph: `code` and **bold**, everything else escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", html_escape(part));
        } else {
            for (j, p) in html_escape(part).split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{p}</strong>");
                } else {
                    out.push_str(p);
                }
            }
        }
    }
    out
}

/// A self-contained HTML page (no script, no external resource).
pub fn to_html(blocks: &[Block]) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n<title>Disaster-recovery runbook</title>\n<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#1d1d1f}table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border:1px solid #ccc;padding:.35rem .5rem;text-align:left;vertical-align:top;font-size:.92rem;overflow-wrap:anywhere}th{background:#f2f2f2}pre{background:#f6f8fa;border:1px solid #ddd;padding:.75rem;overflow-x:auto}code{font-family:ui-monospace,monospace;font-size:.9em}h1{border-bottom:2px solid #333}.stamp-ok{color:#0a6b2d}.stamp-no{color:#a10e0e}</style>\n</head><body>\n",
    );
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let id: String = t
                    .to_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let _ = writeln!(o, "<h{l} id=\"{}\">{}</h{l}>", html_escape(&id), inline(t));
            }
            Block::Para(t) => {
                let class = if t.contains("**VERIFIED**") {
                    " class=\"stamp-ok\""
                } else if t.contains("**NEEDS VERIFICATION**") {
                    " class=\"stamp-no\""
                } else {
                    ""
                };
                let _ = writeln!(o, "<p{class}>{}</p>", inline(t));
            }
            Block::List(items) => {
                o.push_str("<ul>\n");
                for i in items {
                    let _ = writeln!(o, "<li>{}</li>", inline(i));
                }
                o.push_str("</ul>\n");
            }
            Block::Table(h, rows) => {
                o.push_str("<table><thead><tr>");
                for c in h {
                    let _ = write!(o, "<th>{}</th>", inline(c));
                }
                o.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    o.push_str("<tr>");
                    for c in r {
                        let _ = write!(o, "<td>{}</td>", inline(c));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody></table>\n");
            }
            Block::Code(c) => {
                let _ = writeln!(o, "<pre><code>{}</code></pre>", html_escape(c));
            }
        }
    }
    o.push_str("</body></html>\n");
    o
}

/// The named command blocks of a Markdown runbook: (name, script).
pub fn commands(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + 6..];
        let Some(j) = body.find("\n```") else { break };
        let script = &body[..j];
        if let Some(name) = script.lines().next().and_then(|l| l.strip_prefix("# runbook: ")) {
            out.push((name.to_string(), script.to_string()));
        }
        rest = &body[j + 4..];
    }
    out
}

/// Writes `text` to `path` atomically (0644: a runbook holds no secret, and the people
/// who need it at 3 a.m. must be able to read it).
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
