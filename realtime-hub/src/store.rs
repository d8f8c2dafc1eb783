//! Redis: each user's replay stream, the pub/sub channel that carries live notifications to
//! whichever replica holds the user's connections, and the dedupe marks that make a re-emitted
//! notification a no-op.
//!
//! Appending is one Lua script per recipient, so "stored for replay", "published live" and
//! "marked as seen" happen together or not at all: a consumer that crashes mid-batch and gets
//! the batch redelivered neither loses nor duplicates a notification.
//!
//! Key layout (all under the deployment's prefix; `{user}` is a cluster hash tag, so a user's
//! keys live in one slot):
//! - `stream:{<user>}`: stream of `t` (created, Unix ms) and `n` (notification JSON) entries,
//!   capped with `MAXLEN ~`, expiring after [`STREAM_IDLE_TTL`] without new entries;
//! - `seen:{<user>}:<notification id>`: the stream id it got, for [`SEEN_TTL`];
//! - channel `user:<user>`: payload `<stream id> <created ms> <json>`.

use std::time::Duration;

use instaclone_shared::config::RedisSettings;
use redis::{Script, aio::ConnectionManager};
use uuid::Uuid;

use crate::protocol::{Delivery, StreamId};

/// How long a notification id is remembered for dedupe. Redeliveries (broker, outbox relay)
/// happen within minutes; a day is generous and keeps the marks bounded.
pub const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// A stream that receives nothing for this long is dropped; a client resuming from it later
/// gets `resync` and reloads its history over REST.
pub const STREAM_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Entries read per replay round trip.
pub const REPLAY_PAGE: usize = 200;

const APPEND_SCRIPT: &str = r"
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', ARGV[2], 'n', ARGV[3])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[4], id .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return {1, id}
";

/// Returns `false` when the stream does not exist, else
/// `{max-deleted-entry-id, first entry id or false, entries after ARGV[1]}`, read atomically so
/// "was anything after this id trimmed?" and "what comes after it" agree.
const REPLAY_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local max_deleted = '0-0'
local first = false
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then max_deleted = info[i + 1]
  elseif info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
return {max_deleted, first, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
";

/// Outcome of appending one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    New(StreamId),
    /// Seen before (a redelivery): nothing was written or published again.
    Duplicate(StreamId),
}

/// One page of replay.
#[derive(Debug)]
pub enum ReplayPage {
    /// Entries after the requested id, oldest first (empty: caught up).
    Entries(Vec<Delivery>),
    /// Something after the requested id is gone (trimmed, or the stream expired and was
    /// recreated): the client must reload its history.
    Gap,
}

#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    settings: RedisSettings,
    stream_max_len: u64,
    append: Script,
    replay: Script,
}

impl Store {
    pub fn new(redis: ConnectionManager, settings: RedisSettings, stream_max_len: u64) -> Self {
        Self {
            redis,
            settings,
            stream_max_len,
            append: Script::new(APPEND_SCRIPT),
            replay: Script::new(REPLAY_SCRIPT),
        }
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub fn stream_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("stream:{{{user}}}"))
    }

    fn seen_key(&self, user: Uuid, notification_id: &str) -> String {
        self.settings
            .key(&format!("seen:{{{user}}}:{notification_id}"))
    }

    /// The pub/sub channel of `user`.
    pub fn channel(&self, user: Uuid) -> String {
        self.settings.key(&format!("user:{user}"))
    }

    /// The user a channel name belongs to.
    pub fn user_of_channel(&self, channel: &str) -> Option<Uuid> {
        channel
            .strip_prefix(&self.settings.key_prefix)?
            .strip_prefix("user:")?
            .parse()
            .ok()
    }

    /// Appends to `user`'s stream and publishes on their channel, unless `notification_id` was
    /// appended before.
    pub async fn append(
        &self,
        user: Uuid,
        notification_id: &str,
        created_at_millis: i64,
        notification_json: &str,
    ) -> redis::RedisResult<Appended> {
        let mut redis = self.redis.clone();
        let (fresh, id): (i64, String) = self
            .append
            .key(self.stream_key(user))
            .key(self.seen_key(user, notification_id))
            .arg(self.stream_max_len)
            .arg(created_at_millis)
            .arg(notification_json)
            .arg(self.channel(user))
            .arg(SEEN_TTL.as_secs())
            .arg(STREAM_IDLE_TTL.as_secs())
            .invoke_async(&mut redis)
            .await?;
        let id = parse_id(&id)?;
        Ok(if fresh == 1 {
            Appended::New(id)
        } else {
            Appended::Duplicate(id)
        })
    }

    /// The id of the newest entry in `user`'s stream, `0-0` when there is none.
    pub async fn head(&self, user: Uuid) -> redis::RedisResult<StreamId> {
        let mut redis = self.redis.clone();
        let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.stream_key(user))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut redis)
            .await?;
        match newest.first() {
            Some((id, _)) => parse_id(id),
            None => Ok(StreamId::ZERO),
        }
    }

    /// Entries of `user`'s stream after `after`, or [`ReplayPage::Gap`] when some are lost.
    /// `first_page` also treats an id older than the whole stream as a gap (the stream was
    /// recreated after `after` was issued), unless it is `0-0` ("everything you have").
    pub async fn replay_page(
        &self,
        user: Uuid,
        after: StreamId,
        first_page: bool,
    ) -> redis::RedisResult<ReplayPage> {
        let mut redis = self.redis.clone();
        let reply: Option<(String, Option<String>, Vec<RawEntry>)> = self
            .replay
            .key(self.stream_key(user))
            .arg(after.to_string())
            .arg(REPLAY_PAGE)
            .invoke_async(&mut redis)
            .await?;
        let Some((max_deleted, first, entries)) = reply else {
            return Ok(if after == StreamId::ZERO {
                ReplayPage::Entries(Vec::new())
            } else {
                ReplayPage::Gap
            });
        };
        let max_deleted = parse_id(&max_deleted)?;
        if max_deleted > after {
            return Ok(ReplayPage::Gap);
        }
        if first_page
            && after != StreamId::ZERO
            && after != max_deleted
            && let Some(first) = first
            && after < parse_id(&first)?
        {
            return Ok(ReplayPage::Gap);
        }
        entries
            .into_iter()
            .map(|(id, fields)| entry_to_delivery(&id, fields))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map(ReplayPage::Entries)
    }

    /// Stores a one-time ticket for `value`, valid for `ttl`.
    pub async fn put_ticket(
        &self,
        ticket: &str,
        value: &str,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.settings.key(&format!("ticket:{ticket}")))
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut redis)
            .await
    }

    /// Takes a ticket: the first caller gets its value, every later one `None`.
    pub async fn take_ticket(&self, ticket: &str) -> redis::RedisResult<Option<String>> {
        let mut redis = self.redis.clone();
        redis::cmd("GETDEL")
            .arg(self.settings.key(&format!("ticket:{ticket}")))
            .query_async(&mut redis)
            .await
    }
}

/// A stream entry as Redis returns it: id and flat field/value list.
type RawEntry = (String, Vec<String>);

fn parse_id(text: &str) -> redis::RedisResult<StreamId> {
    text.parse().map_err(|e: crate::protocol::InvalidStreamId| {
        redis::RedisError::from((redis::ErrorKind::TypeError, "bad stream id", e.to_string()))
    })
}

fn entry_to_delivery(id: &str, fields: Vec<String>) -> redis::RedisResult<Delivery> {
    let mut created_at_millis = 0;
    let mut notification_json = None;
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name.as_str() {
            "t" => created_at_millis = value.parse().unwrap_or_default(),
            "n" => notification_json = Some(value.into_boxed_str()),
            _ => {}
        }
    }
    Ok(Delivery {
        id: parse_id(id)?,
        created_at_millis,
        notification_json: notification_json.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::TypeError, "stream entry without `n`"))
        })?,
    })
}
