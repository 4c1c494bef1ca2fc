//! A renewable lease in Redis: which replica does a job that must run once (the incident sync),
//! and the small state the job hands over when another replica takes it.
//!
//! The holder renews the lease well before it expires; a replica that dies simply stops
//! renewing, and another one takes the key once it has expired. Taking and renewing are one
//! script each (check the holder and set, at once), on the Redis server's clock. The state
//! (the sync's watermark) is plain JSON under a key of its own; it never holds anything secret.

use std::{sync::Arc, time::Duration};

use super::{Shared, SharedError};

/// Takes the lease if it is free, or renews it if this replica holds it. Returns 1 if this
/// replica holds it now, 0 if another one does.
const HOLD: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives the lease back if this replica holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Who holds a lease, as far as this replica can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// This replica; `taken` when it was not the holder at the previous check.
    This { taken: bool },
    /// Another replica.
    Other,
    /// Redis cannot be asked right now.
    Unknown,
}

/// One named lease (and its job's state) of the default tenant.
pub struct Lease {
    shared: Arc<Shared>,
    key: String,
    state_key: String,
    ttl: Duration,
    held: std::sync::atomic::AtomicBool,
    hold: redis::Script,
    release: redis::Script,
}

impl Lease {
    /// A lease named `name` that lapses `ttl` after its holder's last renewal.
    pub fn new(shared: Arc<Shared>, tenant: &str, name: &str, ttl: Duration) -> Lease {
        Lease {
            key: shared.key(tenant, &format!("lease:{name}")),
            state_key: shared.key(tenant, &format!("lease:{name}:state")),
            shared,
            ttl,
            held: false.into(),
            hold: redis::Script::new(HOLD),
            release: redis::Script::new(RELEASE),
        }
    }

    /// Waits for the replica's first heartbeat (connected or found away), so a replica that
    /// just started does not mistake a connection still being made for Redis being down.
    pub async fn first_contact(&self) {
        self.shared.first_contact().await;
    }

    /// How long the lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes or renews the lease.
    pub async fn hold(&self) -> Holder {
        let ms = self.ttl.as_millis().max(1) as u64;
        let (script, key, me) = (&self.hold, self.key.clone(), self.shared.replica().to_string());
        let result: Result<i64, SharedError> = self
            .shared
            .call(false, |mut c| async move {
                script.key(key).arg(me).arg(ms).invoke_async(&mut c).await
            })
            .await;
        let was = self.held.load(std::sync::atomic::Ordering::Acquire);
        match result {
            Ok(1) => {
                self.held.store(true, std::sync::atomic::Ordering::Release);
                Holder::This { taken: !was }
            }
            Ok(_) => {
                self.held.store(false, std::sync::atomic::Ordering::Release);
                Holder::Other
            }
            Err(_) => Holder::Unknown,
        }
    }

    /// Gives the lease back (at shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        let (script, key, me) = (&self.release, self.key.clone(), self.shared.replica().to_string());
        let _: Result<i64, SharedError> = self
            .shared
            .call(false, |mut c| async move {
                script.key(key).arg(me).invoke_async(&mut c).await
            })
            .await;
        self.held.store(false, std::sync::atomic::Ordering::Release);
    }

    /// The job's last saved state (`None`: never saved, or Redis cannot be asked).
    pub async fn load(&self) -> Option<String> {
        let key = self.state_key.clone();
        self.shared
            .call(false, |mut c| async move {
                redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut c).await
            })
            .await
            .ok()
            .flatten()
    }

    /// Saves the job's state for whoever holds the lease next (kept a day at most).
    pub async fn save(&self, state: String) {
        let key = self.state_key.clone();
        let _: Result<(), SharedError> = self
            .shared
            .call(false, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(state)
                    .arg("EX")
                    .arg(86_400)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }
}
