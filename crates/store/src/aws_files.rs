//! The AWS shared configuration files, read as every AWS tool reads them: what users
//! set up with `aws configure` (static keys in `~/.aws/credentials`, the region and
//! an endpoint in `~/.aws/config`, a profile chosen by `AWS_PROFILE`). object_store's
//! S3 client reads only variables and then the EC2 instance metadata service, so a
//! user with a credentials file got an error about 169.254.169.254.
//!
//! Precedence follows the AWS SDKs: a variable set in the environment wins over the
//! files; in the files, `credentials` wins over `config` for the same key. Profiles that
//! get their keys from a program, SSO or another profile are refused with what to run
//! instead: sqlvault does not execute `credential_process` commands found in a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::StoreEnv;

/// Profile sections by name, each key → value.
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// What the files add to the environment, as `AWS_*` variables, and whether any
/// source of credentials is configured at all.
#[derive(Debug, Default)]
pub(crate) struct FromFiles {
    /// Variables to add (none the environment already sets).
    pub vars: Vec<(&'static str, String)>,
    /// Whether credentials come from somewhere other than the instance metadata
    /// service (variables, a profile, web identity, a container endpoint).
    pub has_credentials: bool,
    /// Whether an `AWS_SESSION_TOKEN` of the environment must be dropped (the keys
    /// come from a profile without a token).
    pub clear_token: bool,
}

/// Keys of a profile that mean "credentials from elsewhere", which sqlvault does not
/// resolve itself.
const INDIRECT: [&str; 5] = [
    "credential_process",
    "sso_session",
    "sso_start_url",
    "source_profile",
    "credential_source",
];

/// Reads the files `env` points at (or `$HOME/.aws/…`) for the selected profile.
/// `Err` carries the reason, in words, for [`crate::StoreError::InvalidUrl`].
pub(crate) fn resolve(env: &StoreEnv) -> Result<FromFiles, String> {
    let named = env.get("AWS_PROFILE").or_else(|| env.get("AWS_DEFAULT_PROFILE"));
    let profile = named.unwrap_or("default").to_string();
    let home = env.get("HOME").map(PathBuf::from);
    let path = |var: &str, leaf: &str| {
        env.get(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(leaf)))
    };
    let cred_path = path("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let conf_path = path("AWS_CONFIG_FILE", "config");
    // A file the user named must be readable; one found by default that cannot be
    // read is skipped, as the AWS tools skip it (variables may hold all that is needed).
    let read = |p: &Option<PathBuf>, var: &str| match p {
        Some(p) => match read_ini(p) {
            Ok(x) => Ok(x),
            Err(e) if env.get(var).is_some() => Err(e),
            Err(e) => {
                tracing::warn!("skipping {e}");
                Ok(None)
            }
        },
        None => Ok(None),
    };
    let creds = read(&cred_path, "AWS_SHARED_CREDENTIALS_FILE")?;
    let conf = read(&conf_path, "AWS_CONFIG_FILE")?;
    // `[name]` in credentials; `[profile name]` in config (`[default]` for the default).
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut found = false;
    if let Some(sections) = &conf {
        let section = if profile == "default" {
            sections.get("default").or_else(|| sections.get("profile default"))
        } else {
            sections.get(&format!("profile {profile}"))
        };
        if let Some(kv) = section {
            found = true;
            values.extend(kv.clone());
        }
    }
    if let Some(kv) = creds.as_ref().and_then(|s| s.get(&profile)) {
        found = true;
        values.extend(kv.clone());
    }
    let shown = |p: &Option<PathBuf>| p.as_ref().map_or("(no HOME)".to_string(), |p| p.display().to_string());
    if named.is_some() && !found {
        return Err(format!(
            "AWS profile {profile:?} (AWS_PROFILE) is in neither {} nor {}",
            shown(&cred_path),
            shown(&conf_path)
        ));
    }

    let mut out = FromFiles::default();
    let mut add = |name: &'static str, key: &str| {
        if let Some(v) = values.get(key).filter(|v| !v.is_empty()) {
            out.vars.push((name, v.clone()));
        }
    };
    let env_keys = env.get("AWS_ACCESS_KEY_ID").is_some();
    let env_other = env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    let mut has_credentials = env_keys || env_other;
    let mut clear_token = false;
    if !has_credentials {
        let id = values.get("aws_access_key_id").filter(|v| !v.is_empty());
        let secret = values.get("aws_secret_access_key").filter(|v| !v.is_empty());
        let web_identity = values.contains_key("web_identity_token_file") && values.contains_key("role_arn");
        // A role to assume wins over static keys in the same profile (as in the SDKs):
        // using the keys would act as another identity than the user configured.
        if !web_identity && let Some(k) = INDIRECT.iter().chain(&["role_arn"]).find(|k| values.contains_key(**k)) {
            return Err(format!(
                "AWS profile {profile:?} gets its credentials through {k}, which sqlvault does not run; \
                 export them first: eval \"$(aws configure export-credentials --profile {profile} --format env)\""
            ));
        }
        match (id, secret) {
            (Some(_), Some(_)) => {
                add("AWS_ACCESS_KEY_ID", "aws_access_key_id");
                add("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key");
                // The profile's token or none: a token left in the environment
                // belongs to other keys.
                clear_token = !values.contains_key("aws_session_token");
                add("AWS_SESSION_TOKEN", "aws_session_token");
                has_credentials = true;
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "AWS profile {profile:?} has only one of aws_access_key_id and aws_secret_access_key"
                ));
            }
            (None, None) => {
                if web_identity {
                    add("AWS_WEB_IDENTITY_TOKEN_FILE", "web_identity_token_file");
                    add("AWS_ROLE_ARN", "role_arn");
                    add("AWS_ROLE_SESSION_NAME", "role_session_name");
                    has_credentials = true;
                }
            }
        }
    }
    out.has_credentials = has_credentials;
    out.clear_token = clear_token;
    if env.get("AWS_REGION").is_none() && env.get("AWS_DEFAULT_REGION").is_none() {
        add("AWS_REGION", "region");
    }
    let env_endpoint = ["AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|n| env.get(n).is_some());
    if !env_endpoint {
        add("AWS_ENDPOINT", "endpoint_url");
    }
    Ok(out)
}

/// The sections of an INI file (names trimmed, keys lowercased), `None` when it does
/// not exist. Files over 1 MiB are refused (a credentials file is a few lines).
fn read_ini(path: &Path) -> Result<Option<Sections>, String> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {}", path.display(), e.kind())),
        Ok(m) if m.len() > 1 << 20 => return Err(format!("{} is over 1 MiB", path.display())),
        Ok(_) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?,
    };
    Ok(Some(parse_ini(&text)))
}

fn parse_ini(text: &str) -> Sections {
    let mut out: Sections = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut nested = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // `[name]`, possibly followed by a comment (`[work]  # the work account`).
        let header = line.strip_prefix('[').and_then(|l| {
            let (name, rest) = l.split_once(']')?;
            let rest = rest.trim();
            (rest.is_empty() || rest.starts_with('#') || rest.starts_with(';')).then_some(name)
        });
        if let Some(name) = header {
            // `[profile  x]` and `[profile x]` name the same profile.
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            nested = false;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        // An indented line under `s3 =` belongs to that service's sub-section.
        let indented = raw.starts_with([' ', '\t']);
        if indented && nested {
            continue;
        }
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        nested = v.is_empty();
        if let Some(sec) = &current
            && !nested
        {
            out.entry(sec.clone()).or_default().insert(k, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(dir: &Path, vars: &[(&str, &str)]) -> StoreEnv {
        let mut e = StoreEnv::default().with("HOME", dir.to_str().unwrap());
        for (k, v) in vars {
            e = e.with(k, v);
        }
        e
    }

    fn write(dir: &Path, leaf: &str, text: &str) {
        std::fs::create_dir_all(dir.join(".aws")).unwrap();
        std::fs::write(dir.join(".aws").join(leaf), text).unwrap();
    }

    fn var<'a>(f: &'a FromFiles, name: &str) -> Option<&'a str> {
        f.vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn profiles_come_from_both_files_and_the_environment_wins() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "credentials",
            "[default]\naws_access_key_id = AKD\naws_secret_access_key = skd\n\n[work]   # the work account\naws_access_key_id=AKW\naws_secret_access_key=skw\naws_session_token = tok\n[assume]\naws_access_key_id=AKA\naws_secret_access_key=ska\nrole_arn = arn:aws:iam::1:role/x\n",
        );
        write(
            d.path(),
            "config",
            "[default]\nregion = eu-west-1\n[profile  work]\nregion=us-east-2\nendpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\n  region = nope\n",
        );
        let f = resolve(&env_with(d.path(), &[])).unwrap();
        assert!(f.has_credentials);
        assert_eq!(
            var(&f, "AWS_ACCESS_KEY_ID"),
            Some("AKD"),
            "a commented header is still a header"
        );
        assert_eq!(var(&f, "AWS_REGION"), Some("eu-west-1"));
        let f = resolve(&env_with(d.path(), &[("AWS_PROFILE", "work")])).unwrap();
        assert_eq!(
            (var(&f, "AWS_ACCESS_KEY_ID"), var(&f, "AWS_SESSION_TOKEN")),
            (Some("AKW"), Some("tok"))
        );
        assert_eq!(
            var(&f, "AWS_REGION"),
            Some("us-east-2"),
            "the nested s3 section is not the profile's"
        );
        assert_eq!(var(&f, "AWS_ENDPOINT"), Some("http://127.0.0.1:9000"));
        // Variables win: no key, region or endpoint from the files.
        let f = resolve(&env_with(
            d.path(),
            &[
                ("AWS_PROFILE", "work"),
                ("AWS_ACCESS_KEY_ID", "ENV"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_ENDPOINT_URL", "https://s3.example"),
            ],
        ))
        .unwrap();
        assert!(f.vars.is_empty(), "{:?}", f.vars);
        assert!(f.has_credentials);
        // A role to assume is not replaced by the profile's static keys.
        let e = resolve(&env_with(d.path(), &[("AWS_PROFILE", "assume")])).unwrap_err();
        assert!(e.contains("role_arn"), "{e}");
        // Keys from a profile without a token: a token in the environment is dropped.
        let f = resolve(&env_with(d.path(), &[("AWS_SESSION_TOKEN", "stale")])).unwrap();
        assert!(f.clear_token && var(&f, "AWS_SESSION_TOKEN").is_none());
        // An unreadable default file is skipped; one named by a variable is an error.
        std::fs::create_dir_all(d.path().join("dir-not-file")).unwrap();
        let named = d.path().join("dir-not-file");
        let e = resolve(&env_with(
            d.path(),
            &[("AWS_CONFIG_FILE", named.to_str().unwrap()), ("AWS_PROFILE", "work")],
        ));
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn what_cannot_be_used_is_said_not_guessed() {
        let d = tempfile::tempdir().unwrap();
        // No files at all: nothing added, no credentials (the metadata service is next).
        let f = resolve(&env_with(d.path(), &[])).unwrap();
        assert!(f.vars.is_empty() && !f.has_credentials);
        let e = resolve(&env_with(d.path(), &[("AWS_PROFILE", "ghost")])).unwrap_err();
        assert!(e.contains("\"ghost\"") && e.contains(".aws/credentials"), "{e}");
        write(
            d.path(),
            "config",
            "[profile sso]\nsso_session = corp\n[profile half]\naws_access_key_id = AK\n[profile proc]\ncredential_process = /bin/echo secret\n",
        );
        for (p, says) in [
            ("sso", "sso_session"),
            ("proc", "credential_process"),
            ("half", "only one"),
        ] {
            let e = resolve(&env_with(d.path(), &[("AWS_PROFILE", p)])).unwrap_err();
            assert!(e.contains(says), "{p}: {e}");
            assert!(!e.contains("/bin/echo"), "the command is never echoed: {e}");
        }
        // Files named by variables are read instead of HOME's.
        let other = d.path().join("elsewhere");
        std::fs::write(&other, "[default]\naws_access_key_id=A\naws_secret_access_key=B\n").unwrap();
        let f = resolve(&env_with(
            d.path(),
            &[("AWS_SHARED_CREDENTIALS_FILE", other.to_str().unwrap())],
        ))
        .unwrap();
        assert_eq!(var(&f, "AWS_SECRET_ACCESS_KEY"), Some("B"));
    }
}
