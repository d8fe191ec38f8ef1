//! Authentication: wrong secrets and unknown principals fail alike, in the same time,
//! and no hash reaches a message or a debug print.

use std::time::{Duration, Instant};

use sqlvault_policy::{AuthError, Policy, hash_secret};

/// Cheap parameters so the tests run fast; the timing test uses these for every
/// principal, as a policy from `sqlvault policy hash` does.
fn quick_hash(secret: &str) -> String {
    hash_secret(secret.as_bytes(), Some(8 * 1024), Some(1)).unwrap()
}

fn policy_with(hash: &str) -> Policy {
    Policy::from_toml(&format!(
        "[roles.r]\nselect = [\"t\"]\n[principals.alice]\nrole = \"r\"\npassword_hash = \"{hash}\"\n[principals.svc]\nrole = \"r\"\nuid = 4242\n"
    ))
    .unwrap()
}

#[test]
fn right_secret_accepted_wrong_ones_rejected_alike() {
    let p = policy_with(&quick_hash("s3cret"));
    let id = p.authenticate("alice", b"s3cret").unwrap();
    assert_eq!((id.principal(), id.role()), ("alice", "r"));
    let wrong = p.authenticate("alice", b"s3cret ").unwrap_err().to_string();
    let unknown = p.authenticate("mallory", b"s3cret").unwrap_err().to_string();
    let by_uid = p.authenticate("svc", b"s3cret").unwrap_err().to_string();
    assert_eq!(wrong, "authentication failed for principal alice");
    assert_eq!(unknown, "authentication failed for principal mallory");
    assert_eq!(by_uid, "authentication failed for principal svc");
    assert!(p.authenticate("alice", b"").is_err());
    assert!(p.authenticate_uid("svc", 4242).is_ok());
    assert!(p.authenticate_uid("svc", 4243).is_err());
    assert!(
        p.authenticate_uid("alice", 0).is_err(),
        "a password principal is not accepted by uid"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Not a speed target: a security property. A miss that skipped the hash would be
/// hundreds of times faster than a wrong secret; the bound is loose enough for a busy
/// two-core machine and tight enough to catch that. `cargo xtask bench --policy`
/// measures it precisely.
#[test]
fn a_miss_costs_what_a_wrong_secret_costs() {
    let p = policy_with(&quick_hash("s3cret"));
    let time = |who: &str| {
        let t = Instant::now();
        let _ = p.authenticate(who, b"guess");
        t.elapsed()
    };
    let (mut known, mut unknown, mut uid) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        known.push(time("alice"));
        unknown.push(time("nobody"));
        uid.push(time("svc"));
    }
    let (k, u, s) = (median(known), median(unknown), median(uid));
    for (what, x) in [("unknown principal", u), ("uid principal", s)] {
        let ratio = x.as_secs_f64() / k.as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "{what}: {x:?} against {k:?} for a wrong secret"
        );
    }
}

#[test]
fn hashes_never_appear_in_errors_or_debug_output() {
    let h = quick_hash("s3cret");
    let tail = &h[h.len() - 20..];
    let p = policy_with(&h);
    assert!(!format!("{p:?}").contains(tail));
    assert!(!format!("{:?}", p.authenticate("alice", b"x")).contains(tail));
    // A hash where a uid belongs, a hash of another algorithm, a truncated one.
    for bad in [
        format!("[roles.r]\n[principals.a]\nrole = \"r\"\nuid = \"{h}\"\n"),
        format!(
            "[roles.r]\n[principals.a]\nrole = \"r\"\npassword_hash = \"{}\"\n",
            h.replace("argon2id", "argon2i")
        ),
        format!(
            "[roles.r]\n[principals.a]\nrole = \"r\"\npassword_hash = \"{}\"\n",
            &h[..h.len() - 40]
        ),
        format!("[roles.r]\n[principals.a]\nrole = \"nope\"\npassword_hash = \"{h}\"\n"),
        format!("[roles.r]\n[principals.a]\nrole = \"r\"\npassword_hash = \"{h}\"\nuid = 3\n"),
        format!("[roles.r]\n[principals.a]\nrole = \"r\"\npasword_hash = \"{h}\"\n"),
        format!("[roles.r]\nselect = [\"{h}\"\n"),
    ] {
        let e = Policy::from_toml(&bad).unwrap_err().to_string();
        assert!(!e.contains(tail) && !e.contains("$argon2"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn hash_parameters_are_bounded() {
    assert!(matches!(
        hash_secret(b"x", Some(1024), None),
        Err(AuthError::Parameters(_))
    ));
    assert!(matches!(
        hash_secret(b"x", None, Some(0)),
        Err(AuthError::Parameters(_))
    ));
    // A policy cannot make a login take the host's memory.
    let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let e = Policy::from_toml(&format!(
        "[roles.r]\n[principals.a]\nrole = \"r\"\npassword_hash = \"{huge}\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("outside"), "{e}");
}

#[test]
fn policy_shape_errors_name_what_is_wrong() {
    for (text, needle) in [
        ("[roles.r]\npragmas = [\"writable_schema\"]\n", "writable_schema"),
        ("[roles.r]\nfunctions = [\"load_extension\"]\n", "load_extension"),
        ("[roles.r]\nmask = [\"nodot\"]\n", "table.column"),
        ("[roles.r]\nselekt = [\"t\"]\n", "selekt"),
        ("[principals.a]\nrole = \"r\"\nuid = 1\n", "role \"r\" is not defined"),
        ("[roles.r]\n[principals.a]\nrole = \"r\"\n", "no credential"),
    ] {
        let e = Policy::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}
