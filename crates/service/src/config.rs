//! The service configuration: one TOML file declaring what to protect, where, and on
//! which schedules.
//!
//! Parsing is in two steps. The file is read into the raw shape ([`RawConfig`], unknown
//! keys refused) with every string's position kept; then each value is expanded
//! (`$VAR`, `${VAR}`, `$$` for a dollar), checked and resolved into [`Config`]. Every
//! error names the file's line. Expansion happens on parsed values, never on the text,
//! so a variable's content cannot add keys or tables. Secrets never appear in the file:
//! a SQLCipher key or a repository identity is named by file (`db_key_file`,
//! `identity_file`) or by environment variable (`db_key_env`), and an `env` entry whose
//! name looks like a credential must come from a variable (`"${OFFSITE_SECRET}"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ConfigError;

type S = Spanned<String>;

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    service: RawService,
    /// Schedules every database inherits.
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default, rename = "database")]
    databases: Vec<RawDatabase>,
    #[serde(default, rename = "destination")]
    destinations: BTreeMap<String, RawDestination>,
    #[serde(default, rename = "person")]
    people: Vec<RawPerson>,
    #[serde(default, rename = "identity")]
    identities: BTreeMap<String, RawIdentity>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawService {
    metrics_addr: Option<S>,
    rescan: Option<S>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    interval: Option<S>,
    max_lag: Option<S>,
    snapshot: Option<S>,
    snapshot_stale: Option<S>,
    verify: Option<S>,
    drill: Option<S>,
    prune: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: Option<S>,
    glob: Option<S>,
    name: Option<S>,
    destinations: Spanned<Vec<S>>,
    db_key_file: Option<S>,
    db_key_env: Option<S>,
    #[serde(default)]
    schedule: RawSchedule,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    repo: S,
    #[serde(default)]
    recipients: Vec<S>,
    recipients_file: Option<S>,
    identity_file: Option<S>,
    #[serde(default)]
    env: BTreeMap<String, S>,
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    pitr_window: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    name: S,
    role: S,
    contact: Option<S>,
    #[serde(default)]
    holds: Vec<S>,
    #[serde(default)]
    may_restore: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    recipient: S,
    location: Option<S>,
}

/// The configuration, checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Process-wide settings.
    pub service: ServiceSettings,
    /// What to protect, in file order.
    pub databases: Vec<DatabaseSpec>,
    /// Where to, by name.
    pub destinations: BTreeMap<String, DestinationSpec>,
    /// People and their roles, for the runbook.
    pub people: Vec<Person>,
    /// Identities (public facts only: recipient, where it is kept), by name.
    pub identities: BTreeMap<String, IdentitySpec>,
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Where `/metrics` and `/healthz` are served (None: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// How often globs are read again for new databases.
    pub rescan: Duration,
}

/// Schedules and thresholds of one database.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Replication interval (WAL) or change check (rollback journal).
    pub interval: Duration,
    /// `/healthz` fails when a destination lags more than this.
    pub max_lag: Duration,
    /// A full snapshot this often (None: never).
    pub snapshot: Option<Duration>,
    /// `/healthz` fails when the newest snapshot or shipped state is older than this
    /// while the database changed.
    pub snapshot_stale: Duration,
    /// `verify` of the newest snapshot this often (needs an identity).
    pub verify: Option<Duration>,
    /// A drill (restore the newest state and a random point) this often.
    pub drill: Option<Duration>,
    /// `forget` by the destination's policy, then `prune`, this often.
    pub prune: Option<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(1),
            max_lag: Duration::from_secs(60),
            snapshot: Some(Duration::from_secs(24 * 3600)),
            snapshot_stale: Duration::from_secs(36 * 3600),
            verify: Some(Duration::from_secs(24 * 3600)),
            drill: Some(Duration::from_secs(7 * 24 * 3600)),
            prune: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Which files a database entry names.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// One file, and its name in the repositories.
    Path(PathBuf, Option<String>),
    /// Every file of a directory whose name matches a pattern (`*`, `?`): a directory
    /// of per-tenant databases. Read again every `rescan`.
    Glob { dir: PathBuf, pattern: String },
}

/// Where a SQLCipher key comes from.
#[derive(Clone, PartialEq)]
pub enum KeySource {
    /// A file (first line).
    File(PathBuf),
    /// An environment variable of the service.
    Env(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Env(v) => write!(f, "${v}"),
        }
    }
}

/// One database entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSpec {
    /// The file or files.
    pub source: Source,
    /// Destination names.
    pub destinations: Vec<String>,
    /// SQLCipher key, when encrypted.
    pub db_key: Option<KeySource>,
    /// Schedules.
    pub schedule: Schedule,
    /// Line of the entry in the file.
    pub line: usize,
}

/// One destination.
#[derive(Clone, PartialEq)]
pub struct DestinationSpec {
    /// Its name in the file.
    pub name: String,
    /// Repository URL or path.
    pub repo: String,
    /// Recipients a new repository is created with.
    pub recipients: Vec<String>,
    /// …or a file of them.
    pub recipients_file: Option<PathBuf>,
    /// Identity for the jobs that read (verify, drill, prune).
    pub identity_file: Option<PathBuf>,
    /// Store client settings (`AWS_*`, `AZURE_*`, `GOOGLE_*`), on top of the
    /// service's environment. Values may be credentials: never shown.
    pub env: Vec<(String, String)>,
    /// Retention policy.
    pub keep: sqlvault_engine::retention::Policy,
    /// Every shipped state restorable within this long.
    pub pitr_window: Option<Duration>,
}

impl std::fmt::Debug for DestinationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationSpec")
            .field("name", &self.name)
            .field("repo", &self.repo)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("identity_file", &self.identity_file)
            .finish_non_exhaustive()
    }
}

/// A person of the runbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// How to reach them.
    pub contact: Option<String>,
    /// Identity names they hold.
    pub holds: Vec<String>,
    /// Whether they may restore.
    pub may_restore: bool,
}

/// An identity's public facts.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySpec {
    /// Its recipient (`age1…`): the fingerprint the runbook shows.
    pub recipient: String,
    /// Where it is kept (a vault, a safe): never the secret.
    pub location: Option<String>,
}

/// Reads and checks the configuration at `path`, expanding variables from `vars`.
pub fn load(path: &Path, vars: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, 0, format!("cannot read: {e}")))?;
    parse(path, &text, vars)
}

/// [`load`] of text already read.
pub fn parse(path: &Path, text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        ConfigError::new(path, line, e.message().to_string())
    })?;
    Resolver { path, text, vars }.resolve(raw)
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

struct Resolver<'a> {
    path: &'a Path,
    text: &'a str,
    vars: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    fn err(&self, s: &S, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path, line_of(self.text, s.span().start), msg.into())
    }

    /// `$VAR`, `${VAR}` and `$$` expanded; an unset variable is an error.
    fn expand(&self, s: &S) -> Result<String, ConfigError> {
        let v = s.get_ref();
        let mut out = String::with_capacity(v.len());
        let mut chars = v.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            let name: String = match chars.peek().map(|&(_, c)| c) {
                Some('$') => {
                    chars.next();
                    out.push('$');
                    continue;
                }
                Some('{') => {
                    chars.next();
                    let mut n = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => n.push(c),
                            None => return Err(self.err(s, "unclosed ${ in a value")),
                        }
                    }
                    n
                }
                _ => {
                    let mut n = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            n.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    n
                }
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(s, format!("{name:?} is not a variable name (write $$ for a dollar)")));
            }
            match (self.vars)(&name) {
                Some(v) => out.push_str(&v),
                None => return Err(self.err(s, format!("${name} is not set"))),
            }
        }
        Ok(out)
    }

    fn duration(&self, s: &S) -> Result<Duration, ConfigError> {
        let v = self.expand(s)?;
        parse_duration(&v).ok_or_else(|| self.err(s, format!("{v:?} is not a duration (e.g. 500ms, 30s, 5m, 24h, 7d)")))
    }

    /// A schedule entry: a duration of at least a second, or "off".
    fn every(&self, s: &S) -> Result<Option<Duration>, ConfigError> {
        if s.get_ref() == "off" {
            return Ok(None);
        }
        let d = self.duration(s)?;
        if d < Duration::from_secs(1) {
            return Err(self.err(s, "a schedule is at least 1s (or \"off\")"));
        }
        Ok(Some(d))
    }

    fn schedule(&self, base: &Schedule, r: &RawSchedule) -> Result<Schedule, ConfigError> {
        let mut s = base.clone();
        if let Some(v) = &r.interval {
            s.interval = self.duration(v)?;
            if s.interval < Duration::from_millis(10) || s.interval > Duration::from_secs(3600) {
                return Err(self.err(v, "interval must be between 10ms and 1h"));
            }
        }
        if let Some(v) = &r.max_lag {
            s.max_lag = self.duration(v)?;
        }
        if let Some(v) = &r.snapshot {
            s.snapshot = self.every(v)?;
        }
        if let Some(v) = &r.snapshot_stale {
            s.snapshot_stale = self.duration(v)?;
        }
        if let Some(v) = &r.verify {
            s.verify = self.every(v)?;
        }
        if let Some(v) = &r.drill {
            s.drill = self.every(v)?;
        }
        if let Some(v) = &r.prune {
            s.prune = self.every(v)?;
        }
        Ok(s)
    }

    fn path_value(&self, s: &S) -> Result<PathBuf, ConfigError> {
        let v = self.expand(s)?;
        let p = PathBuf::from(&v);
        if !p.is_absolute() {
            return Err(self.err(
                s,
                format!("{v:?} must be an absolute path (the daemon's directory is not yours)"),
            ));
        }
        Ok(p)
    }

    fn resolve(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let service = ServiceSettings {
            metrics_addr: match &raw.service.metrics_addr {
                None => Some(SocketAddr::from(([127, 0, 0, 1], 9877))),
                Some(s) if s.get_ref().is_empty() => None,
                Some(s) => {
                    let v = self.expand(s)?;
                    Some(
                        v.parse()
                            .map_err(|_| self.err(s, format!("{v:?} is not an address (e.g. 127.0.0.1:9877)")))?,
                    )
                }
            },
            rescan: match &raw.service.rescan {
                None => Duration::from_secs(30),
                Some(s) => {
                    let d = self.duration(s)?;
                    if d < Duration::from_millis(100) {
                        return Err(self.err(s, "rescan is at least 100ms"));
                    }
                    d
                }
            },
        };
        let defaults = self.schedule(&Schedule::default(), &raw.schedule)?;

        let mut destinations = BTreeMap::new();
        for (name, d) in &raw.destinations {
            let repo = self.expand(&d.repo)?;
            if repo.is_empty() {
                return Err(self.err(&d.repo, format!("destination {name}: repo is empty")));
            }
            let mut env = Vec::new();
            for (k, v) in &d.env {
                // Only what a store client reads: anything else would be dropped
                // silently (a typo must not look like a setting that took effect).
                let store_setting = ["AWS_", "GOOGLE_", "AZURE_", "AZURITE_"]
                    .iter()
                    .any(|p| k.starts_with(p))
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !store_setting {
                    return Err(self.err(
                        v,
                        format!("destination {name}: {k:?} is not a store setting (AWS_*, GOOGLE_*, AZURE_*)"),
                    ));
                }
                let looks_secret = [
                    "SECRET",
                    "KEY",
                    "TOKEN",
                    "PASSWORD",
                    "SAS",
                    "CREDENTIAL",
                    "CONNECTION_STRING",
                ]
                .iter()
                .any(|w| k.contains(w))
                    && k != "AWS_ACCESS_KEY_ID"
                    && k != "AZURE_STORAGE_ACCOUNT_NAME";
                // The whole value one variable: `secret$$` or `x${A}` is not that.
                let one_var = |v: &str| {
                    let n = v
                        .strip_prefix("${")
                        .and_then(|r| r.strip_suffix('}'))
                        .or_else(|| v.strip_prefix('$'));
                    n.is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                };
                if looks_secret && !one_var(v.get_ref()) {
                    return Err(self.err(
                        v,
                        format!(
                            "destination {name}: {k} holds a credential: give it as \"${{VARIABLE}}\" from the service's environment, never in the file"
                        ),
                    ));
                }
                env.push((k.clone(), self.expand(v)?));
            }
            let keep = sqlvault_engine::retention::Policy::new()
                .with_last(d.keep_last.unwrap_or(0))
                .with_hourly(d.keep_hourly.unwrap_or(0))
                .with_daily(d.keep_daily.unwrap_or(0))
                .with_weekly(d.keep_weekly.unwrap_or(0))
                .with_monthly(d.keep_monthly.unwrap_or(0))
                .with_yearly(d.keep_yearly.unwrap_or(0));
            destinations.insert(
                name.clone(),
                DestinationSpec {
                    name: name.clone(),
                    repo,
                    recipients: d.recipients.iter().map(|r| self.expand(r)).collect::<Result<_, _>>()?,
                    recipients_file: d.recipients_file.as_ref().map(|s| self.path_value(s)).transpose()?,
                    identity_file: d.identity_file.as_ref().map(|s| self.path_value(s)).transpose()?,
                    env,
                    keep,
                    pitr_window: d.pitr_window.as_ref().map(|s| self.duration(s)).transpose()?,
                },
            );
        }

        let mut databases = Vec::new();
        let mut seen_paths: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for d in &raw.databases {
            let line = line_of(self.text, d.destinations.span().start);
            let source = match (&d.path, &d.glob) {
                (Some(p), None) => {
                    let path = self.path_value(p)?;
                    if let Some(first) = seen_paths.insert(path.clone(), line_of(self.text, p.span().start)) {
                        return Err(self.err(p, format!("{} is already protected (line {first})", path.display())));
                    }
                    let name = d.name.as_ref().map(|n| self.expand(n)).transpose()?;
                    Source::Path(path, name)
                }
                (None, Some(g)) => {
                    if let Some(n) = &d.name {
                        return Err(self.err(n, "name is for a single path; a glob's databases are named by file"));
                    }
                    let full = self.path_value(g)?;
                    let dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
                    let pattern = full
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if dir.to_string_lossy().contains(['*', '?', '[']) || pattern.is_empty() {
                        return Err(self.err(g, "a glob may have wildcards (* ?) in its last component only"));
                    }
                    Source::Glob { dir, pattern }
                }
                _ => {
                    return Err(ConfigError::new(
                        self.path,
                        line,
                        "a database needs exactly one of path or glob".into(),
                    ));
                }
            };
            if d.destinations.get_ref().is_empty() {
                return Err(ConfigError::new(
                    self.path,
                    line,
                    "a database needs at least one destination".into(),
                ));
            }
            let mut names = Vec::new();
            for n in d.destinations.get_ref() {
                let v = self.expand(n)?;
                if !destinations.contains_key(&v) {
                    return Err(self.err(n, format!("no [destination.{v}] in this file")));
                }
                if names.contains(&v) {
                    return Err(self.err(n, format!("destination {v} is listed twice")));
                }
                names.push(v);
            }
            let db_key = match (&d.db_key_file, &d.db_key_env) {
                (Some(f), None) => Some(KeySource::File(self.path_value(f)?)),
                // The variable's name, not expanded: `${DB_KEY}` here would make the
                // key itself the name, and it would then be quoted in errors.
                (None, Some(e)) => {
                    let v = e.get_ref();
                    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(self.err(
                            e,
                            "db_key_env is the name of a variable (e.g. APP_DB_KEY), not its value",
                        ));
                    }
                    Some(KeySource::Env(v.clone()))
                }
                (None, None) => None,
                (Some(f), Some(_)) => return Err(self.err(f, "give db_key_file or db_key_env, not both")),
            };
            databases.push(DatabaseSpec {
                source,
                destinations: names,
                db_key,
                schedule: self.schedule(&defaults, &d.schedule)?,
                line,
            });
        }
        let mut identities = BTreeMap::new();
        for (n, i) in &raw.identities {
            let recipient = self.expand(&i.recipient)?;
            if !recipient.starts_with("age1") && !recipient.starts_with("ssh-") {
                // Not quoted: what was written there may be a secret key.
                return Err(self.err(
                    &i.recipient,
                    format!("identity {n}: the recipient is not one (age1… or ssh-…): public facts only"),
                ));
            }
            identities.insert(
                n.clone(),
                IdentitySpec {
                    recipient,
                    location: i.location.as_ref().map(|l| self.expand(l)).transpose()?,
                },
            );
        }
        let mut people = Vec::new();
        for p in &raw.people {
            let mut holds = Vec::new();
            for h in &p.holds {
                let v = self.expand(h)?;
                if !identities.contains_key(&v) {
                    return Err(self.err(h, format!("no [identity.{v}] in this file")));
                }
                holds.push(v);
            }
            people.push(Person {
                name: self.expand(&p.name)?,
                role: self.expand(&p.role)?,
                contact: p.contact.as_ref().map(|c| self.expand(c)).transpose()?,
                holds,
                may_restore: p.may_restore,
            });
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            service,
            databases,
            destinations,
            people,
            identities,
        })
    }
}

/// `500ms`, `30s`, `5m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e10).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Whether `name` matches a pattern of `*` (any run) and `?` (one character), in
/// O(pattern × name) whatever the input (a hostile file name cannot stall the daemon).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

impl Source {
    /// The database files this entry names now, with their names in the repositories.
    /// A glob skips SQLite's own `-wal`, `-shm` and `-journal` files.
    pub fn files(&self) -> Vec<(PathBuf, Option<String>)> {
        match self {
            Source::Path(p, n) => vec![(p.clone(), n.clone())],
            Source::Glob { dir, pattern } => {
                let mut out: Vec<(PathBuf, Option<String>)> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let sidecar = ["-wal", "-shm", "-journal"].iter().any(|s| n.ends_with(s));
                        (!sidecar && glob_match(pattern, &n)).then(|| (e.path(), None))
                    })
                    .collect();
                out.sort();
                out
            }
        }
    }
}

/// A commented configuration protecting `db` into `repo` (created with `recipients`
/// when it does not exist), runnable as it is.
pub fn example(db: &Path, repo: &str, recipients: &[String]) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let rcpt = if recipients.is_empty() {
        "# recipients = [\"age1…\"]       # a new repository is created with these (or recipients_file)".to_string()
    } else {
        format!(
            "recipients = [{}]   # a new repository is created with these",
            recipients.iter().map(|r| q(r)).collect::<Vec<_>>().join(", ")
        )
    };
    format!(
        r#"# sqlvault service configuration (sqlvault daemon --config THIS_FILE).
# Values may use $VAR or ${{VAR}} from the daemon's environment ($$ is a dollar).
# Secrets never go in this file: keys by file (db_key_file, identity_file) or by
# environment (db_key_env, env = {{ AWS_SECRET_ACCESS_KEY = "${{OFFSITE_SECRET}}" }}).

[service]
metrics_addr = "127.0.0.1:9877"   # /metrics (Prometheus) and /healthz; "" turns them off
rescan = "30s"                    # how often globs are listed again for new databases

# Schedules every database inherits ([database.schedule] overrides them).
[schedule]
interval = "1s"          # replication: longest time from a commit to its segment
max_lag = "60s"          # /healthz fails when a destination lags more than this
snapshot = "24h"         # a full snapshot this often ("off": never)
snapshot_stale = "36h"   # /healthz fails when the newest state is older while changes wait
verify = "24h"           # verify the newest snapshot (needs identity_file)
drill = "168h"           # restore drill (needs identity_file)
prune = "24h"            # forget by the policy below, then prune (needs identity_file)

[destination.primary]
repo = {repo}
{rcpt}
# identity_file = "/etc/sqlvault/identity.txt"   # for verify, drill and prune
keep_last = 7
keep_daily = 30
keep_monthly = 12
pitr_window = "24h"      # every shipped state restorable within this long

[[database]]
path = {db}              # or glob = "/srv/tenants/*.db"
destinations = ["primary"]
# db_key_file = "/etc/sqlvault/app.key"   # a SQLCipher database's key

# People and key custody, for the runbook (public facts only).
# [identity.ops]
# recipient = "age1…"
# location = "the ops vault"
# [[person]]
# name = "A. Operator"
# role = "on-call DBA"
# contact = "+1 555 0100"
# holds = ["ops"]
# may_restore = true
"#,
        repo = q(repo),
        db = q(&db.display().to_string()),
    )
}

/// Store requests a month per database file: idle (nothing changes: scheduled jobs
/// only) and busy (a change every interval: 4 PUTs a segment, plus compaction).
/// Rough by design: `config check` prints it so a bill has no surprise.
pub fn requests_per_month(c: &Config) -> serde_json::Value {
    const MONTH: f64 = 30.0 * 86400.0;
    let mut idle = 0.0;
    let mut busy = 0.0;
    for d in &c.databases {
        let per = |every: Option<Duration>, n: f64| every.map_or(0.0, |e| MONTH / e.as_secs_f64().max(1.0) * n);
        let s = &d.schedule;
        // A snapshot of an unchanged database: LISTs, the manifest, an index (~8);
        // verify and drill read it back (~10); forget and prune list and read (~20).
        let jobs = per(s.snapshot, 8.0) + per(s.verify, 10.0) + per(s.drill, 10.0) + per(s.prune, 20.0);
        let dests = d.destinations.len() as f64;
        idle += jobs * dests;
        busy += (jobs + MONTH / s.interval.as_secs_f64() * 4.0 * 1.01) * dests;
    }
    serde_json::json!({"idle": idle.round() as u64, "busy": busy.round() as u64})
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_as_a_shell_does_and_never_backtracks_exponentially() {
        assert!(glob_match("*.db", "tenant-1.db"));
        assert!(glob_match("t?.db", "t1.db"));
        assert!(!glob_match("t?.db", "t12.db"));
        assert!(!glob_match("*.db", "x.db-wal"));
        assert!(glob_match("*-*-*.db", "a-b-c.db"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*", ""));
        let hostile = "-".repeat(5000) + "x";
        assert!(!glob_match("*-*-*-*-*-*-*-*.db", &hostile));
    }
}
