//! Password hashing with argon2id, off the async runtime and bounded in concurrency.
//!
//! Parameters follow the OWASP Password Storage Cheat Sheet's first argon2id option:
//! m = 19 MiB, t = 2 iterations, p = 1 lane ([`Argon2Params::OWASP`]). One hash then takes tens
//! of milliseconds of one core and 19 MiB of memory, which is the point: it makes offline
//! guessing of a leaked hash expensive. Online, it makes every register and login cost that
//! much CPU, so:
//!
//! - hashing runs in `spawn_blocking`, never on an async worker thread, so a burst of logins
//!   does not stall other requests' I/O;
//! - a semaphore bounds concurrent hashes (default: the number of CPUs), which bounds memory
//!   (permits x 19 MiB) and keeps a flood from oversubscribing the cores; excess requests wait
//!   their turn instead of all slowing down together.
//!
//! Login for an unknown email verifies the password against a dummy hash made at startup with
//! the same parameters, so a response's timing does not tell whether the account exists.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use instaclone_shared::config::Secret;
use rand::RngCore;
use tokio::sync::Semaphore;

/// Cost parameters of new hashes. Verification always uses the parameters stored in the hash
/// itself, so raising these later keeps old hashes working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    /// OWASP's recommended minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self::OWASP
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    #[error("argon2: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("stored password hash is malformed: {0}")]
    StoredHash(argon2::password_hash::Error),
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("hashing pool is closed")]
    Closed,
}

/// Hashes and verifies passwords. Cheap to clone; clones share the concurrency bound.
#[derive(Clone)]
pub struct PasswordHasherPool {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of a random password with the current parameters, verified against when the
    /// account does not exist.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasherPool")
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PasswordHasherPool {
    /// Validates `params` and makes the dummy hash (one hash's worth of CPU, at startup).
    pub async fn new(params: Argon2Params, max_concurrent: usize) -> Result<Self, HashError> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(HashError::Params)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut pool = Self {
            argon2,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy_hash: Arc::from(""),
        };
        let mut random = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut random);
        let dummy_password = Secret::new(
            random
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>(),
        );
        pool.dummy_hash = Arc::from(pool.hash(dummy_password).await?);
        Ok(pool)
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) with a fresh 16-byte salt.
    pub async fn hash(&self, password: Secret<String>) -> Result<String, HashError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut salt = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(HashError::Hash)?;
            argon2
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(HashError::Hash)
        })
        .await?
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such account) the password
    /// is checked against the dummy hash, taking the same time, and the answer is `false`.
    pub async fn verify(
        &self,
        password: Secret<String>,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let account_exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        let argon2 = self.argon2.clone();
        let matches = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let parsed = PasswordHash::new(&hash).map_err(HashError::StoredHash)?;
            match argon2.verify_password(password.expose().as_bytes(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(other) => Err(HashError::Hash(other)),
            }
        })
        .await??;
        Ok(matches && account_exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: these tests are about behaviour, not cost.
    const FAST: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn secret(s: &str) -> Secret<String> {
        Secret::new(s.to_owned())
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let pool = PasswordHasherPool::new(FAST, 2).await.unwrap();
        let first = pool.hash(secret("correct horse")).await.unwrap();
        let second = pool.hash(secret("correct horse")).await.unwrap();
        assert!(first.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(
            pool.verify(secret("correct horse"), Some(first.clone()))
                .await
                .unwrap()
        );
        assert!(
            !pool
                .verify(secret("correct horsE"), Some(first))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_match() {
        let pool = PasswordHasherPool::new(FAST, 1).await.unwrap();
        assert!(!pool.verify(secret("anything"), None).await.unwrap());
    }

    #[tokio::test]
    async fn default_parameters_are_owasps() {
        let pool = PasswordHasherPool::new(Argon2Params::default(), 1)
            .await
            .unwrap();
        let hash = pool.hash(secret("password1")).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_error_not_a_match() {
        let pool = PasswordHasherPool::new(FAST, 1).await.unwrap();
        let result = pool
            .verify(secret("x"), Some("not a phc string".to_owned()))
            .await;
        assert!(matches!(result, Err(HashError::StoredHash(_))));
    }
}
