//! Home timelines in Redis: the newest posts each reader's feed will show, written when a post is
//! created (fan-out on write), read back a page at a time, and the post bodies a page is made of.
//!
//! A timeline is a cache of the feed, never its only copy: MongoDB keeps the posts and the users
//! service the follow graph, so a timeline can be lost (Redis restarted, the key expired) and is
//! rebuilt from them. Keys per reader, all with the `{reader}` hash tag so one script reads them
//! together (with the reader's follow set, [`instaclone_shared::follow_cache`]):
//!
//! - `{prefix}posts:home:{<reader>}`: a sorted set of *entries* `<post id>:<author id>`, all with
//!   score 0, so Redis orders them lexically; the post id (24 hex digits) comes first, so the
//!   lexical order is the `_id` order the API pages by (`ZREVRANGEBYLEX` with `(before` is the
//!   keyset cursor). The author lets a read drop the posts of an account no longer followed
//!   inside Redis, without fetching them.
//! - `{prefix}posts:home-floor:{<reader>}`: the *floor*, the lowest post id down to which the set
//!   is complete: every post of the reader and of the accounts they follow with an id at or above
//!   the floor is in the set (give or take events still in flight). Below the floor the feed is
//!   read from MongoDB instead. The all-zero id means "complete since the beginning"; [`BUILDING`]
//!   means "being (re)built, complete nowhere yet". No floor key: there is no timeline.
//!
//! And per post, `{prefix}posts:post:<id>`: the post as the API returns it (JSON), written with
//! the `201`, so a page above the floor costs no MongoDB query; [`DELETED`] once the post is
//! deleted (a tombstone that a late cache fill cannot overwrite); refilled from MongoDB on a
//! miss; expiring [`TimelineSettings::post_ttl`] after it was written.
//!
//! Writes go only to timelines that exist, so readers who stopped coming cost nothing; both keys
//! expire [`TimelineSettings::ttl`] after the reader's last read. A timeline holds at most
//! `capacity` entries: when a write overflows it, the oldest go and the floor rises to the lowest
//! id kept. Every write is idempotent (a set add or remove), so events delivered twice do no harm.
//! The fan-out scripts take many readers' keys at once; that is fine on one Redis server, not on a
//! Redis Cluster.

use std::time::Duration;

use instaclone_shared::redis_conn::{RedisConnection, SlotBatches};
use redis::Script;
use uuid::Uuid;

use instaclone_shared::{config::TimelineSettings, follow_cache::FollowCache};

use crate::domain::PostId;

/// Floor of a timeline that is being built: lexically above every hex id, so no id counts as
/// covered until the build sets the real floor.
pub const BUILDING: &str = "~";

/// How long a rebuild's claim ([`BUILDING`]) holds: longer than any rebuild takes (10,000
/// sources read 16 at a time), short enough that one that died mid-way does not keep the reader
/// on MongoDB for long. The finished rebuild replaces it with the real floor.
pub const REBUILD_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);
/// Floor of a timeline that holds everything: no post id is lower.
pub const COMPLETE: &str = "000000000000000000000000";
/// The cached body of a deleted post.
pub const DELETED: &str = "-";
/// Length of a post id in hex, the prefix of every entry.
const POST_ID_LEN: usize = 24;

/// The timeline entry of a post.
pub fn entry(post_id: &str, author: Uuid) -> String {
    format!("{post_id}:{author}")
}

/// The post id of an entry (or of a bare id).
pub fn post_id_of(entry: &str) -> &str {
    entry.get(..POST_ID_LEN).unwrap_or(entry)
}

/// Adds entries to the timelines that exist among the given ones, trims each to capacity and
/// raises its floor accordingly. KEYS: pairs of (set, floor). ARGV: capacity, then the entries.
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
      local lowest = redis.call('ZRANGE', set, 0, 0)[1]
      redis.call('SET', floor_key, string.sub(lowest, 1, 24), 'KEEPTTL')
    end
    local ttl = redis.call('PTTL', floor_key)
    if ttl > 0 then redis.call('PEXPIRE', set, ttl) end
    added = added + 1
  end
end
return added
";

/// Ends a rebuild: adds the entries found, lowers the floor to the rebuild's (the set is then
/// complete down to it), drops entries below the floor and trims to capacity.
/// KEYS: set, floor. ARGV: capacity, ttl in ms, the rebuild's floor, then the entries.
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
  floor = string.sub(redis.call('ZRANGE', set, 0, 0)[1], 1, 24)
end
redis.call('SET', floor_key, floor, 'PX', ttl)
redis.call('PEXPIRE', set, ttl)
return floor
";

/// Reads up to `count` entries below a bound and at or above the floor, by the reader or by an
/// account in their follow set (when `filter` is 1), and keeps the timeline alive.
/// KEYS: set, floor, follow set. ARGV: upper bound (`+` or `(<entry>`), count, ttl in ms, reader,
/// filter (1/0), most entries to examine.
/// Returns nil without a timeline, `{'~'}` while it is built, `{'?'}` when the follow set is not
/// cached (and `filter` is 1), else `{floor, reached floor (1/0), last entry examined, entries...}`.
const READ_SCRIPT: &str = r"
local floor = redis.call('GET', KEYS[2])
if not floor then return false end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if floor == '~' then return { floor } end
local filter = ARGV[5] == '1'
if filter then
  if redis.call('EXISTS', KEYS[3]) == 0 then return { '?' } end
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
local want, budget, reader = tonumber(ARGV[2]), tonumber(ARGV[6]), ARGV[4]
local bound, accepted, examined, last, reached = ARGV[1], {}, 0, '', 0
while #accepted < want and examined < budget do
  local chunk = redis.call('ZREVRANGEBYLEX', KEYS[1], bound, '[' .. floor, 'LIMIT', 0, want)
  for _, member in ipairs(chunk) do
    last = member
    examined = examined + 1
    local author = string.sub(member, 26)
    if not filter or author == reader or redis.call('SISMEMBER', KEYS[3], author) == 1 then
      accepted[#accepted + 1] = member
      if #accepted == want then break end
    end
  end
  if #chunk < want then
    if #accepted < want or last == chunk[#chunk] then reached = 1 end
    break
  end
  bound = '(' .. last
end
local reply = { floor, tostring(reached), last }
for _, member in ipairs(accepted) do reply[#reply + 1] = member end
return reply
";

/// Removes every entry of one author from a timeline. KEYS: set. ARGV: author. Returns how many.
const REMOVE_AUTHOR_SCRIPT: &str = r"
local suffix = ':' .. ARGV[1]
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, -#suffix) == suffix then
    redis.call('ZREM', KEYS[1], member)
    removed = removed + 1
  end
end
return removed
";

/// Timelines touched by one script call when fanning a post out to many readers.
const READERS_PER_CALL: usize = 500;
/// Entries one read examines at most (entries of unfollowed accounts are skipped, not returned).
const READ_BUDGET: usize = 2000;

/// Whether a read drops entries of accounts the reader no longer follows (in Redis, from the
/// cached follow set) or returns them all for the caller to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    FollowSet,
    None,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineWindow {
    /// The reader has no timeline, or it is being built: the caller builds it or reads MongoDB.
    Missing,
    /// The reader's follow set is not cached (only with [`Filter::FollowSet`]).
    NoFollowSet,
    /// Entries below the cursor, newest first, all at or above `floor`. `reached_floor`: the
    /// window ends at the floor (nothing older is in the timeline); otherwise the next read
    /// continues after `last` (the last entry examined, accepted or not).
    Entries {
        floor: String,
        reached_floor: bool,
        last: Option<String>,
        entries: Vec<String>,
    },
}

/// The home timelines of every reader, and the cached post bodies. Cheap to clone.
#[derive(Clone)]
pub struct HomeTimelines {
    redis: RedisConnection,
    key_prefix: String,
    settings: TimelineSettings,
    follows: FollowCache,
    add: Script,
    finish_rebuild: Script,
    read: Script,
    remove_author: Script,
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
    pub fn new(
        redis: RedisConnection,
        key_prefix: &str,
        settings: TimelineSettings,
        follows: FollowCache,
    ) -> Self {
        Self {
            redis,
            key_prefix: format!("{key_prefix}posts:"),
            settings,
            follows,
            add: Script::new(ADD_SCRIPT),
            finish_rebuild: Script::new(FINISH_REBUILD_SCRIPT),
            read: Script::new(READ_SCRIPT),
            remove_author: Script::new(REMOVE_AUTHOR_SCRIPT),
        }
    }

    pub fn settings(&self) -> &TimelineSettings {
        &self.settings
    }

    pub fn follows(&self) -> &FollowCache {
        &self.follows
    }

    /// The key of `reader`'s timeline set.
    pub fn set_key(&self, reader: Uuid) -> String {
        format!("{}home:{{{reader}}}", self.key_prefix)
    }

    /// The key of `reader`'s timeline floor.
    pub fn floor_key(&self, reader: Uuid) -> String {
        format!("{}home-floor:{{{reader}}}", self.key_prefix)
    }

    fn post_key(&self, id: &str) -> String {
        format!("{}post:{id}", self.key_prefix)
    }

    /// Up to `count` entries older than `before` (all when `None`), newest first.
    pub async fn read(
        &self,
        reader: Uuid,
        before: Option<&str>,
        count: usize,
        filter: Filter,
    ) -> Result<TimelineWindow, redis::RedisError> {
        let bound = before.map_or_else(|| "+".to_owned(), |entry| format!("({entry}"));
        let reply: Option<Vec<String>> = self
            .read
            .key(self.set_key(reader))
            .key(self.floor_key(reader))
            .key(self.follows.set_key(reader))
            .arg(bound)
            .arg(count.max(1))
            .arg(millis(self.settings.ttl))
            .arg(reader.to_string())
            .arg(u8::from(filter == Filter::FollowSet))
            .arg(READ_BUDGET.max(count))
            .invoke_async(&mut self.redis.clone())
            .await?;
        let Some(reply) = reply else {
            return Ok(TimelineWindow::Missing);
        };
        let mut reply = reply.into_iter();
        let (floor, reached, last) = (reply.next(), reply.next(), reply.next());
        Ok(match (floor, reached, last) {
            (Some(floor), _, _) if floor == BUILDING => TimelineWindow::Missing,
            (Some(floor), _, _) if floor == "?" => TimelineWindow::NoFollowSet,
            (Some(floor), Some(reached), Some(last)) => TimelineWindow::Entries {
                floor,
                reached_floor: reached == "1",
                last: Some(last).filter(|last| !last.is_empty()),
                entries: reply.collect(),
            },
            _ => TimelineWindow::Missing,
        })
    }

    /// The reader's floor, if they have a timeline ([`BUILDING`] while it is being built).
    pub async fn floor(&self, reader: Uuid) -> Result<Option<String>, redis::RedisError> {
        redis::cmd("GET")
            .arg(self.floor_key(reader))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Claims the rebuild of the reader's timeline: marks it as being built unless a timeline or
    /// another rebuild's claim exists (then `false`). From now on new posts are added to it, so
    /// none created while the rebuild reads MongoDB can be missed.
    pub async fn begin_rebuild(&self, reader: Uuid) -> Result<bool, redis::RedisError> {
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.floor_key(reader))
            .arg(BUILDING)
            .arg("NX")
            .arg("PX")
            .arg(millis(REBUILD_CLAIM.min(self.settings.ttl)))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(claimed.is_some())
    }

    /// Gives up a claim whose rebuild failed, so the next read tries again at once.
    pub async fn abandon_rebuild(&self, reader: Uuid) -> Result<(), redis::RedisError> {
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
        )
        .key(self.floor_key(reader))
        .arg(BUILDING)
        .invoke_async::<i64>(&mut self.redis.clone())
        .await
        .map(drop)
    }

    /// Stores what a rebuild found: `entries` and the floor down to which they are complete.
    pub async fn finish_rebuild(
        &self,
        reader: Uuid,
        floor: &str,
        entries: &[String],
    ) -> Result<(), redis::RedisError> {
        let mut call = self.finish_rebuild.prepare_invoke();
        call.key(self.set_key(reader))
            .key(self.floor_key(reader))
            .arg(self.settings.capacity.get())
            .arg(millis(self.settings.ttl))
            .arg(floor)
            .arg(entries);
        let _: String = call.invoke_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Adds `entries` to the existing timelines of `readers`: a script call per
    /// [`READERS_PER_CALL`] readers (of one hash slot, on a cluster).
    pub async fn add(&self, readers: &[Uuid], entries: &[String]) -> Result<(), redis::RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.redis
            .run_batches(self.reader_batches(readers), |mut redis, batch| {
                let mut call = self.add.prepare_invoke();
                for reader in batch {
                    call.key(self.set_key(reader)).key(self.floor_key(reader));
                }
                call.arg(self.settings.capacity.get()).arg(entries);
                async move { call.invoke_async::<u64>(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
    }

    /// Removes `entries` from the timelines of `readers`.
    pub async fn remove(
        &self,
        readers: &[Uuid],
        entries: &[String],
    ) -> Result<(), redis::RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.redis
            .run_batches(self.reader_batches(readers), |mut redis, batch| {
                let mut pipe = redis::pipe();
                for reader in batch {
                    pipe.zrem(self.set_key(reader), entries).ignore();
                }
                async move { pipe.exec_async(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
    }

    /// `readers` in batches of at most [`READERS_PER_CALL`] whose timelines one call may touch.
    fn reader_batches(&self, readers: &[Uuid]) -> SlotBatches<Uuid> {
        self.redis
            .batch_by_slot(readers.to_vec(), READERS_PER_CALL, |reader| {
                self.set_key(*reader)
            })
    }

    /// Removes every post of `author` from `reader`'s timeline (an unfollow), whether or not the
    /// posts still exist.
    pub async fn remove_author(&self, reader: Uuid, author: Uuid) -> Result<(), redis::RedisError> {
        let _: u64 = self
            .remove_author
            .key(self.set_key(reader))
            .arg(author.to_string())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The cached bodies of these posts, in order: `None` when not cached, [`DELETED`] when
    /// deleted.
    pub async fn posts(&self, ids: &[&str]) -> Result<Vec<Option<String>>, redis::RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.post_key(id)).collect();
        redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Caches the bodies of posts just created (`overwrite`) or just read from MongoDB after a
    /// miss (then never over a tombstone or a newer write).
    pub async fn cache_posts(
        &self,
        posts: &[(&str, String)],
        overwrite: bool,
    ) -> Result<(), redis::RedisError> {
        if posts.is_empty() {
            return Ok(());
        }
        let ttl = millis(self.settings.post_ttl);
        let batches = self
            .redis
            .batch_by_slot(posts.iter().collect(), usize::MAX, |(id, _)| {
                self.post_key(id)
            });
        self.redis
            .run_batches(batches, |mut redis, batch| {
                let mut pipe = redis::pipe();
                for (id, body) in batch {
                    let set = pipe.cmd("SET").arg(self.post_key(id)).arg(body);
                    if !overwrite {
                        set.arg("NX");
                    }
                    set.arg("PX").arg(ttl).ignore();
                }
                async move { pipe.exec_async(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
    }

    /// Marks these posts deleted in the body cache, so no read serves them from it again.
    pub async fn tombstone_posts(&self, ids: &[&str]) -> Result<(), redis::RedisError> {
        let deleted: Vec<(&str, String)> = ids.iter().map(|id| (*id, DELETED.to_owned())).collect();
        self.cache_posts(&deleted, true).await
    }
}

/// `PostId` of an entry, when it is one.
pub fn entry_post_id(entry: &str) -> Option<PostId> {
    PostId::parse(post_id_of(entry)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_by_post_id_and_carry_the_author() {
        let author = Uuid::now_v7();
        let older = entry("65a000000000000000000001", author);
        let newer = entry("65a000000000000000000002", Uuid::nil());
        assert!(older < newer, "the post id decides the order");
        assert!(
            older.as_str() > "65a000000000000000000001",
            "below `(id` of its own id"
        );
        assert_eq!(post_id_of(&older), "65a000000000000000000001");
        assert_eq!(
            &older[25..],
            author.to_string(),
            "the author starts at byte 26 (Lua 1-based)"
        );
        assert_eq!(
            post_id_of("65a000000000000000000003"),
            "65a000000000000000000003"
        );
    }
}
