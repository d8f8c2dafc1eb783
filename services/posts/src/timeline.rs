//! Home timelines in Redis: the ids of the newest posts each reader's feed will show, written when
//! a post is created (fan-out on write), read back a page at a time.
//!
//! A timeline is a cache of the feed, never its only copy: MongoDB keeps the posts and the users
//! service the follow graph, so a timeline can be lost (Redis restarted, the key expired) and is
//! rebuilt from them. Two keys per reader:
//!
//! - `{prefix}posts:timeline:{user}`: a sorted set of post ids (24 hex digits), all with score 0,
//!   so Redis orders them lexically, and a lexical order of equal-length hex is the `_id` order
//!   the API pages by (`ZREVRANGEBYLEX` with `(before` is the keyset cursor).
//! - `{prefix}posts:timeline-floor:{user}`: the *floor*, the lowest post id down to which the set
//!   is complete: every post of the reader and of the accounts they follow with an id at or above
//!   the floor is in the set (give or take events still in flight). Below the floor the feed is
//!   read from MongoDB instead. The all-zero id means "complete since the beginning"; [`BUILDING`]
//!   means "being (re)built, complete nowhere yet". No floor key: there is no timeline.
//!
//! Writes go only to timelines that exist, so readers who stopped coming cost nothing; both keys
//! expire [`TimelineSettings::ttl`] after the reader's last read. A timeline holds at most
//! `capacity` ids: when a write overflows it, the oldest ids go and the floor rises to the lowest
//! id kept. Every write is idempotent (a set add or remove), so events delivered twice do no harm.
//! The scripts take many keys at once; that is fine on one Redis server, not on a Redis Cluster.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};
use uuid::Uuid;

use instaclone_shared::config::TimelineSettings;

use crate::domain::PostId;

/// Floor of a timeline that is being built: lexically above every hex id, so no id counts as
/// covered until the build sets the real floor.
pub const BUILDING: &str = "~";
/// Floor of a timeline that holds everything: no post id is lower.
pub const COMPLETE: &str = "000000000000000000000000";

/// Adds ids to the timelines that exist among the given ones, trims each to capacity and raises
/// its floor accordingly. KEYS: pairs of (set, floor). ARGV: capacity, then the ids.
const ADD_SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local added = 0
for k = 1, #KEYS, 2 do
  local set, floor_key = KEYS[k], KEYS[k + 1]
  local floor = redis.call('GET', floor_key)
  if floor then
    for i = 2, #ARGV do
      if floor == '~' or ARGV[i] >= floor then
        redis.call('ZADD', set, 0, ARGV[i])
      end
    end
    -- A timeline being built is trimmed when the build finishes: trimming now could drop an
    -- id the build will count as covered.
    local excess = redis.call('ZCARD', set) - capacity
    if floor ~= '~' and excess > 0 then
      redis.call('ZREMRANGEBYRANK', set, 0, excess - 1)
      redis.call('SET', floor_key, redis.call('ZRANGE', set, 0, 0)[1], 'KEEPTTL')
    end
    local ttl = redis.call('PTTL', floor_key)
    if ttl > 0 then redis.call('PEXPIRE', set, ttl) end
    added = added + 1
  end
end
return added
";

/// Ends a rebuild: adds the ids found, lowers the floor to the rebuild's (the set is then
/// complete down to it), drops ids below the floor and trims to capacity.
/// KEYS: set, floor. ARGV: capacity, ttl in ms, the rebuild's floor, then the ids.
const FINISH_REBUILD_SCRIPT: &str = r"
local set, floor_key = KEYS[1], KEYS[2]
local capacity, ttl, floor = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local current = redis.call('GET', floor_key)
if current and current ~= '~' and current < floor then floor = current end
for i = 4, #ARGV do redis.call('ZADD', set, 0, ARGV[i]) end
redis.call('ZREMRANGEBYLEX', set, '-', '(' .. floor)
local excess = redis.call('ZCARD', set) - capacity
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', set, 0, excess - 1)
  floor = redis.call('ZRANGE', set, 0, 0)[1]
end
redis.call('SET', floor_key, floor, 'PX', ttl)
redis.call('PEXPIRE', set, ttl)
return floor
";

/// Reads up to `count` ids below a bound and at or above the floor, and keeps the timeline alive.
/// KEYS: set, floor. ARGV: upper bound (`+` or `(<id>`), count, ttl in ms.
/// Returns nil without a timeline, else the floor followed by the ids, newest first.
const READ_SCRIPT: &str = r"
local floor = redis.call('GET', KEYS[2])
if not floor then return false end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if floor == '~' then return { floor } end
local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '[' .. floor, 'LIMIT', 0, ARGV[2])
table.insert(ids, 1, floor)
return ids
";

/// Timelines touched by one script call when fanning a post out to many readers.
const READERS_PER_CALL: usize = 500;

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineWindow {
    /// The reader has no timeline, or it is being built: the caller builds it or reads MongoDB.
    Missing,
    /// Ids below the cursor, newest first, all at or above `floor`; fewer than asked for means
    /// the window reached the floor.
    Ids { floor: String, ids: Vec<String> },
}

/// The home timelines of every reader. Cheap to clone.
#[derive(Clone)]
pub struct HomeTimelines {
    redis: ConnectionManager,
    key_prefix: String,
    settings: TimelineSettings,
    add: Script,
    finish_rebuild: Script,
    read: Script,
}

impl std::fmt::Debug for HomeTimelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeTimelines")
            .field("key_prefix", &self.key_prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl HomeTimelines {
    /// `key_prefix` is the deployment's Redis prefix (`RedisSettings::key_prefix`).
    pub fn new(redis: ConnectionManager, key_prefix: &str, settings: TimelineSettings) -> Self {
        Self {
            redis,
            key_prefix: format!("{key_prefix}posts:"),
            settings,
            add: Script::new(ADD_SCRIPT),
            finish_rebuild: Script::new(FINISH_REBUILD_SCRIPT),
            read: Script::new(READ_SCRIPT),
        }
    }

    pub fn settings(&self) -> &TimelineSettings {
        &self.settings
    }

    fn set_key(&self, reader: Uuid) -> String {
        format!("{}timeline:{reader}", self.key_prefix)
    }

    fn floor_key(&self, reader: Uuid) -> String {
        format!("{}timeline-floor:{reader}", self.key_prefix)
    }

    /// Up to `count` ids older than `before` (all when `None`), newest first.
    pub async fn read(
        &self,
        reader: Uuid,
        before: Option<&PostId>,
        count: usize,
    ) -> Result<TimelineWindow, redis::RedisError> {
        let bound = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let reply: Option<Vec<String>> = self
            .read
            .key(self.set_key(reader))
            .key(self.floor_key(reader))
            .arg(bound)
            .arg(count)
            .arg(millis(self.settings.ttl))
            .invoke_async(&mut self.redis.clone())
            .await?;
        let Some(mut reply) = reply else {
            return Ok(TimelineWindow::Missing);
        };
        if reply.is_empty() || reply[0] == BUILDING {
            return Ok(TimelineWindow::Missing);
        }
        let ids = reply.split_off(1);
        let floor = reply.swap_remove(0);
        Ok(TimelineWindow::Ids { floor, ids })
    }

    /// The reader's floor, if they have a timeline ([`BUILDING`] while it is being built).
    pub async fn floor(&self, reader: Uuid) -> Result<Option<String>, redis::RedisError> {
        redis::cmd("GET")
            .arg(self.floor_key(reader))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Marks the reader's timeline as being built, unless one exists. From now on new posts are
    /// added to it, so none created while the rebuild reads MongoDB can be missed.
    pub async fn begin_rebuild(&self, reader: Uuid) -> Result<(), redis::RedisError> {
        redis::cmd("SET")
            .arg(self.floor_key(reader))
            .arg(BUILDING)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.settings.ttl))
            .exec_async(&mut self.redis.clone())
            .await
    }

    /// Stores what a rebuild found: `ids` (hex) and the floor down to which they are complete.
    pub async fn finish_rebuild(
        &self,
        reader: Uuid,
        floor: &str,
        ids: &[String],
    ) -> Result<(), redis::RedisError> {
        let mut call = self.finish_rebuild.prepare_invoke();
        call.key(self.set_key(reader))
            .key(self.floor_key(reader))
            .arg(self.settings.capacity.get())
            .arg(millis(self.settings.ttl))
            .arg(floor)
            .arg(ids);
        let _: String = call.invoke_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Adds the posts `ids` (hex) to the existing timelines of `readers`.
    pub async fn add(&self, readers: &[Uuid], ids: &[String]) -> Result<(), redis::RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        for batch in readers.chunks(READERS_PER_CALL) {
            let mut call = self.add.prepare_invoke();
            for reader in batch {
                call.key(self.set_key(*reader)).key(self.floor_key(*reader));
            }
            call.arg(self.settings.capacity.get()).arg(ids);
            let _: u64 = call.invoke_async(&mut self.redis.clone()).await?;
        }
        Ok(())
    }

    /// Removes the posts `ids` (hex) from the timelines of `readers`.
    pub async fn remove(&self, readers: &[Uuid], ids: &[String]) -> Result<(), redis::RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        for batch in readers.chunks(READERS_PER_CALL) {
            let mut pipe = redis::pipe();
            for reader in batch {
                pipe.zrem(self.set_key(*reader), ids).ignore();
            }
            pipe.exec_async(&mut self.redis.clone()).await?;
        }
        Ok(())
    }
}
