//! Admission control: who may open one more connection on this replica.
//!
//! The hub is reached directly (port 3005, or a balancer in front of it), not through the
//! gateway's rate limiter, and every connection costs memory for as long as it is held. So each
//! replica caps the connections one user holds (a leaked or shared token cannot open thousands)
//! and one client address holds (an IPv6 client counts by its /64), and throttles addresses
//! whose handshakes keep failing: past the limit their attempts are refused before any ticket
//! lookup or token check, so guessing tickets costs the hub nothing and Redis no call.
//!
//! Counts are in memory and per replica: a slot is taken before the upgrade and given back when
//! the connection's task ends, however it ends ([`Slot`] is a drop guard). Refusals are a 429
//! with `Retry-After` in the error envelope, before the upgrade, so a client can tell them from
//! an authentication failure (401) or a replica going away (503).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::{DashMap, mapref::entry::Entry};
use instaclone_shared::{client_address::limit_key, config::HubSettings};
use uuid::Uuid;

/// How long failed handshakes are remembered per address.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What a refused client is told to wait before trying again when a connection cap is full.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Too many connections for this user on this server (at most {max})")]
    UserFull { max: usize },
    #[error("Too many connections from this address on this server (at most {max})")]
    AddressFull { max: usize },
    #[error("Too many failed connection attempts from this address; try again later")]
    TooManyFailures { retry_after: Duration },
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::UserFull { .. } | Self::AddressFull { .. } => FULL_RETRY_AFTER,
            Self::TooManyFailures { retry_after } => *retry_after,
        }
    }

    /// Label for the refusal counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UserFull { .. } => "per_user",
            Self::AddressFull { .. } => "per_address",
            Self::TooManyFailures { .. } => "failed_handshakes",
        }
    }
}

/// Failed handshakes of one address in the current window.
struct Failures {
    since: Instant,
    count: u32,
}

#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    max_per_user: usize,
    max_per_address: usize,
    max_failures: u32,
    users: DashMap<Uuid, usize>,
    addresses: DashMap<String, usize>,
    failures: DashMap<String, Failures>,
}

impl Admission {
    pub fn new(settings: &HubSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_per_user: settings.max_connections_per_user,
                max_per_address: settings.max_connections_per_address,
                max_failures: settings.max_failed_handshakes_per_minute,
                users: DashMap::new(),
                addresses: DashMap::new(),
                failures: DashMap::new(),
            }),
        }
    }

    /// Refuses an address whose handshakes failed too often lately, before anything is looked at.
    pub fn check_failures(&self, address: IpAddr) -> Result<(), Refusal> {
        let max = self.inner.max_failures;
        if max == 0 {
            return Ok(());
        }
        let key = limit_key(address);
        let Some(failures) = self.inner.failures.get(&key) else {
            return Ok(());
        };
        let elapsed = failures.since.elapsed();
        if elapsed < FAILURE_WINDOW && failures.count >= max {
            let retry_after = (FAILURE_WINDOW - elapsed).max(Duration::from_secs(1));
            return Err(Refusal::TooManyFailures { retry_after });
        }
        Ok(())
    }

    /// Counts a failed handshake (bad, expired or used ticket or token) against `address`.
    pub fn record_failure(&self, address: IpAddr) {
        if self.inner.max_failures == 0 {
            return;
        }
        let mut entry = self
            .inner
            .failures
            .entry(limit_key(address))
            .or_insert_with(|| Failures {
                since: Instant::now(),
                count: 0,
            });
        if entry.since.elapsed() >= FAILURE_WINDOW {
            *entry = Failures {
                since: Instant::now(),
                count: 0,
            };
        }
        entry.count += 1;
    }

    /// Forgets windows that have passed (run periodically, so the map holds only recent
    /// offenders).
    pub fn forget_old_failures(&self) {
        self.inner
            .failures
            .retain(|_, failures| failures.since.elapsed() < FAILURE_WINDOW);
    }

    /// Takes a connection slot for `user` from `address`, or says which cap is full.
    pub fn admit(&self, user: Uuid, address: IpAddr) -> Result<Slot, Refusal> {
        let address = limit_key(address);
        let inner = &self.inner;
        take(&inner.users, user, inner.max_per_user).map_err(|max| Refusal::UserFull { max })?;
        if let Err(max) = take(&inner.addresses, address.clone(), inner.max_per_address) {
            give_back(&inner.users, &user);
            return Err(Refusal::AddressFull { max });
        }
        Ok(Slot {
            admission: self.clone(),
            user,
            address,
        })
    }

    /// Connections `user` holds on this replica now.
    pub fn connections_of(&self, user: Uuid) -> usize {
        self.inner.users.get(&user).map_or(0, |count| *count)
    }
}

/// One more for `key`, unless `max` (non-zero) are taken already; `Err(max)` then.
fn take<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K, max: usize) -> Result<(), usize> {
    let mut count = map.entry(key).or_insert(0);
    if max != 0 && *count >= max {
        return Err(max);
    }
    *count += 1;
    Ok(())
}

fn give_back<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, key: &K) {
    if let Entry::Occupied(mut entry) = map.entry(key.clone()) {
        *entry.get_mut() = entry.get().saturating_sub(1);
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

/// A held connection slot; dropping it gives the slot back.
pub struct Slot {
    admission: Admission,
    user: Uuid,
    address: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.admission.inner;
        give_back(&inner.users, &self.user);
        give_back(&inner.addresses, &self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_user: usize, per_address: usize, failures: u32) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                max_per_user: per_user,
                max_per_address: per_address,
                max_failures: failures,
                users: DashMap::new(),
                addresses: DashMap::new(),
                failures: DashMap::new(),
            }),
        }
    }

    #[test]
    fn caps_per_user_and_per_address_and_slots_come_back_on_drop() {
        let admission = admission(2, 3, 0);
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let here: IpAddr = "203.0.113.1".parse().unwrap();
        let first = admission.admit(ada, here).unwrap();
        let _second = admission.admit(ada, here).unwrap();
        assert_eq!(
            admission.admit(ada, here).err(),
            Some(Refusal::UserFull { max: 2 })
        );
        let _third = admission.admit(bob, here).unwrap();
        assert_eq!(
            admission.admit(bob, here).err(),
            Some(Refusal::AddressFull { max: 3 })
        );
        // The refused attempt took nothing: bob still holds one.
        assert_eq!(admission.connections_of(bob), 1);
        drop(first);
        assert_eq!(admission.connections_of(ada), 1);
        assert!(admission.admit(bob, here).is_ok());
    }

    #[test]
    fn an_ipv6_64_is_one_address() {
        let admission = admission(0, 1, 0);
        let _held = admission
            .admit(Uuid::now_v7(), "2001:db8::1".parse().unwrap())
            .unwrap();
        let other_in_block = admission.admit(Uuid::now_v7(), "2001:db8::2".parse().unwrap());
        assert_eq!(other_in_block.err(), Some(Refusal::AddressFull { max: 1 }));
    }

    #[test]
    fn failed_handshakes_are_throttled_per_address() {
        let admission = admission(0, 0, 3);
        let guesser: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..3 {
            assert!(admission.check_failures(guesser).is_ok());
            admission.record_failure(guesser);
        }
        let refusal = admission.check_failures(guesser).unwrap_err();
        assert!(refusal.retry_after() <= FAILURE_WINDOW);
        assert!(
            admission
                .check_failures("198.51.100.10".parse().unwrap())
                .is_ok()
        );
    }
}
