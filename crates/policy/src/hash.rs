//! Argon2id hashes: making them, checking a policy's, and the decoy that makes a miss
//! cost what a wrong secret costs.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::AuthError;

/// Argon2id with OWASP's first recommended setting (19 MiB, 2 passes, 1 lane): what
/// [`hash_secret`] uses unless told otherwise.
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// Passes of [`DEFAULT_MEMORY_KIB`]'s setting.
pub const DEFAULT_ITERATIONS: u32 = 2;

/// Limits on a hash's parameters, checked when a policy is loaded: below them a hash is
/// too cheap to stand a stolen policy file; above them one login could take the host's
/// memory or minutes of CPU.
const MIN_MEMORY_KIB: u32 = 8 * 1024;
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_LANES: u32 = 16;

/// The decoy when no principal has a password: default parameters, an output no
/// secret is known to produce.
pub(crate) const DECOY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3FsdmF1bHRkZWNveXNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Hashes `secret` with argon2id and a fresh random salt, in the PHC form a policy's
/// `password_hash` takes. `memory_kib` and `iterations` default to OWASP's setting.
pub fn hash_secret(secret: &[u8], memory_kib: Option<u32>, iterations: Option<u32>) -> Result<String, AuthError> {
    let m = memory_kib.unwrap_or(DEFAULT_MEMORY_KIB);
    let t = iterations.unwrap_or(DEFAULT_ITERATIONS);
    if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&m) || !(1..=MAX_ITERATIONS).contains(&t) {
        return Err(AuthError::Parameters(format!(
            "memory must be {MIN_MEMORY_KIB}..={MAX_MEMORY_KIB} KiB and iterations 1..={MAX_ITERATIONS}"
        )));
    }
    let params = Params::new(m, t, 1, None).map_err(|e| AuthError::Parameters(e.to_string()))?;
    let salt = SaltString::generate(&mut OsRng);
    let h = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret, &salt)
        .map_err(|e| AuthError::Parameters(e.to_string()))?;
    Ok(h.to_string())
}

/// Checks that `h` is an argon2id PHC string with sane parameters. The reason never
/// quotes the hash.
pub(crate) fn check_hash(h: &str) -> Result<(), String> {
    let p = PasswordHash::new(h)
        .map_err(|_| "password_hash is not a PHC string (from `sqlvault policy hash`)".to_string())?;
    if p.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "password_hash uses {}, not argon2id",
            if p.algorithm.as_str().len() <= 16 {
                p.algorithm.as_str()
            } else {
                "another algorithm"
            }
        ));
    }
    if p.salt.is_none() || p.hash.is_none() {
        return Err("password_hash has no salt or no hash".into());
    }
    let params = Params::try_from(&p).map_err(|_| "password_hash has unreadable parameters".to_string())?;
    if params.m_cost() < MIN_MEMORY_KIB
        || params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_ITERATIONS
        || params.p_cost() > MAX_LANES
    {
        return Err(format!(
            "password_hash parameters m={},t={},p={} are outside m={MIN_MEMORY_KIB}..={MAX_MEMORY_KIB} KiB, t<={MAX_ITERATIONS}, p<={MAX_LANES}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// The parameters of a valid hash, as `(memory KiB, iterations, lanes)`.
pub fn hash_parameters(h: &str) -> Option<(u32, u32, u32)> {
    let p = PasswordHash::new(h).ok()?;
    let params = Params::try_from(&p).ok()?;
    Some((params.m_cost(), params.t_cost(), params.p_cost()))
}

/// A decoy costing what the first password principal's hash costs: its parameters and
/// output length, a salt of its own.
pub(crate) fn decoy_for(first: Option<&str>) -> String {
    let Some(h) = first else {
        return DECOY.to_string();
    };
    let mut parts: Vec<&str> = h.split('$').collect();
    // "", "argon2id", "v=19", params, salt, hash: checked by check_hash already.
    if parts.len() != 6 {
        return DECOY.to_string();
    }
    parts[4] = "c3FsdmF1bHRkZWNveXNhbHQ";
    let zeros = "A".repeat(parts[5].len());
    parts[5] = &zeros;
    parts.join("$")
}

pub(crate) fn verify(hash: &str, secret: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(p) => Argon2::default().verify_password(secret, &p).is_ok(),
        Err(_) => false,
    }
}

/// A name safe to print in one line.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}
