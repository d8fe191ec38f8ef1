//! Principals proving who they are: argon2id password hashes, or the OS user.
//!
//! A miss must cost what a wrong secret costs, or the time of an answer tells an
//! attacker which principals exist: an unknown principal (or one that does not use a
//! password) is checked against a decoy hash with the same parameters as the policy's
//! own, and the answer is the same error either way.

use std::fmt;

use crate::hash::{printable, verify};
use crate::policy::Credential;
use crate::{AuthError, Policy};

/// Who a connection acts for: made only by authenticating against a policy (or by an
/// application vouching with [`Policy::trusted_identity`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub(crate) principal: String,
    pub(crate) role: String,
}

impl Identity {
    /// The principal's name.
    pub fn principal(&self) -> &str {
        &self.principal
    }
    /// The role's name.
    pub fn role(&self) -> &str {
        &self.role
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({} as {})", self.principal, self.role)
    }
}

impl Policy {
    /// Authenticates `principal` with `secret`. Every failure — unknown principal,
    /// wrong secret, a principal that authenticates by uid — is the same
    /// [`AuthError::Rejected`] after the same work (one argon2id verification), so
    /// neither the answer nor its time tells whether the principal exists. The
    /// comparison of hash outputs is constant-time.
    pub fn authenticate(&self, principal: &str, secret: &[u8]) -> Result<Identity, AuthError> {
        let found = self.principals.get(principal);
        let hash = match found.map(|p| &p.credential) {
            Some(Credential::PasswordHash(h)) => h.as_str(),
            _ => self.decoy.as_str(),
        };
        let ok = verify(hash, secret);
        match found {
            Some(p) if ok && matches!(p.credential, Credential::PasswordHash(_)) => Ok(Identity {
                principal: principal.to_string(),
                role: p.role.clone(),
            }),
            _ => Err(AuthError::Rejected {
                principal: printable(principal),
            }),
        }
    }

    /// Authenticates a principal declared with `uid = N` by the uid the caller proved
    /// (for a local tool: the process's real uid; for a server: the peer's credentials
    /// of a Unix socket). A principal with a password is not accepted this way.
    pub fn authenticate_uid(&self, principal: &str, uid: u32) -> Result<Identity, AuthError> {
        match self.principals.get(principal) {
            Some(p) if p.credential == Credential::Uid(uid) => Ok(Identity {
                principal: principal.to_string(),
                role: p.role.clone(),
            }),
            _ => Err(AuthError::Rejected {
                principal: printable(principal),
            }),
        }
    }

    /// Whether `principal` authenticates by uid (so a tool need not ask for a secret).
    /// Answers only what the policy file says; authenticating still checks the uid.
    pub fn uses_uid(&self, principal: &str) -> bool {
        matches!(
            self.principals.get(principal).map(|p| &p.credential),
            Some(Credential::Uid(_))
        )
    }

    /// An identity for `principal` without a secret, for an application that
    /// authenticated the user itself (a session cookie, a client certificate). The
    /// principal must exist; the application vouches for it.
    pub fn trusted_identity(&self, principal: &str) -> Result<Identity, AuthError> {
        match self.principals.get(principal) {
            Some(p) => Ok(Identity {
                principal: principal.to_string(),
                role: p.role.clone(),
            }),
            None => Err(AuthError::Rejected {
                principal: printable(principal),
            }),
        }
    }
}
