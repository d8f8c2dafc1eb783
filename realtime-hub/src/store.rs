//! Redis: each user's replay stream, the dedupe marks that make a re-emitted notification a
//! no-op, the presence records that say which replicas hold a user's connections, and the
//! per-replica pub/sub channels that carry live notifications to them.
//!
//! Appending is one Lua script per batch of recipients (up to [`APPEND_BATCH`]), so for every
//! recipient "stored for replay", "marked as seen" and "published live" happen together or not
//! at all: a consumer that crashes mid-batch and gets the batch redelivered neither loses nor
//! duplicates a notification. The script looks up each recipient's presence and publishes **one
//! message per replica per batch** carrying the entries of all its recipients there, instead of
//! one message per recipient: a replica pays one pub/sub message per batch however many of its
//! users it concerns, and recipients connected nowhere cost no message at all.
//!
//! Key layout (all under the deployment's prefix; `{user}` is a cluster hash tag, so a user's
//! keys live in one slot):
//! - `stream:{<user>}`: stream of `t` (created, Unix ms) and `n` (notification JSON) entries,
//!   capped with `MAXLEN ~`, expiring after [`STREAM_IDLE_TTL`] without new entries;
//! - `seen:{<user>}`: sorted set of the user's newest appended notification ids (score: created
//!   ms), kept to [`SEEN_KEEP_FACTOR`] × the stream's length, with the stream's expiry: the
//!   dedupe window, bounded per user rather than by time;
//! - `presence:{<user>}`: sorted set of the replicas holding the user's connections, scored by
//!   the time (Unix ms) the entry lapses unless refreshed ([`PRESENCE_TTL`]), so a replica that
//!   died stops receiving within that time;
//! - channel `hub:replica:<replica id>`: payload lines `<user> <stream id> <created ms> <json>`
//!   (on a cluster `<user> <stream id>/<previous id> <created ms> <json>`),
//!   one per recipient of a batch connected to that replica.
//!
//! On a **Redis Cluster** a script may only touch one hash slot, so a batch is split by slot
//! (recipients of one slot still share a call; one slot's calls run in order, different slots
//! concurrently) and a script cannot publish to a replica's channel, which lives in another
//! slot. There the script returns the lines per replica instead, and the store sends them with
//! the sharded `SPUBLISH`, one message per replica per `append` call, to the one shard that
//! owns the replica's channel (no broadcast to every shard). Storing and publishing are then two
//! steps, and two consumers' publishes for one user can arrive in either order, or one can fail
//! after its entry was stored (a redelivered batch finds it seen and publishes nothing). So on a
//! cluster each line also names the entry before it in the user's stream (`<id>/<prev>`): a
//! connection that receives a line whose predecessor is not the last entry it delivered replays
//! the stream from there instead (see [`crate::connection`]), which delivers what was missing
//! and the line itself in order. A failed publish is retried briefly; whatever still did not go
//! out arrives with the user's next notification, or on the client's next resume.

use std::time::Duration;

use instaclone_shared::{
    backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify},
    config::RedisSettings,
    redis_conn::RedisConnection,
};
use redis::Script;
use uuid::Uuid;

use crate::protocol::{Delivery, StreamId};

/// A stream that receives nothing for this long is dropped; a client resuming from it later
/// gets `resync` and reloads its history over REST.
pub const STREAM_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Notification ids remembered per user for dedupe, as a multiple of the stream's length: a
/// redelivery arrives seconds or minutes after the original, long before that many newer
/// notifications of the same user.
pub const SEEN_KEEP_FACTOR: u64 = 2;
/// Entries read per replay round trip.
pub const REPLAY_PAGE: usize = 200;
/// Recipients appended per script call: a call holds Redis for about 10 µs per recipient.
pub const APPEND_BATCH: usize = 200;
/// How long a replica's presence entry lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// Attempts at publishing appended entries live on a cluster (entries not published are
/// recovered by the next line's predecessor check, so this stays short).
const PUBLISH_ATTEMPTS: u32 = 3;

/// KEYS: per recipient, its stream, seen and presence keys. ARGV: stream max length, seen ids to
/// keep, idle ttl (s), now (ms), channel prefix, publish here (`1`) or return the lines (`0`),
/// then per recipient: user, notification id, created ms, notification JSON. Returns
/// `{results, lines}`: 1 (appended) or 0 (seen before) per recipient, and when not publishing
/// here a flat `replica, payload, ...` list of what to publish.
const APPEND_SCRIPT: &str = r"
local maxlen, keep, ttl, now, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local publish = ARGV[6] == '1'
local lines, results = {}, {}
for i = 1, #KEYS / 3 do
  local stream, seen, presence = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 6 + 4 * (i - 1)
  local user, nid, created, json = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  -- Check and mark in one call: 0 means the id was there already (a repeat).
  if redis.call('ZADD', seen, 'NX', created, nid) == 0 then
    results[i] = 0
  else
    -- Where publishing is left to the caller (a cluster), lines from different calls can
    -- arrive out of order or not at all: each then names the entry before it, and a replica
    -- that sees a line whose predecessor it has not delivered replays the stream instead.
    local prev = ''
    if not publish then
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      prev = '/' .. (last and last[1] or '0-0')
    end
    local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 't', created, 'n', json)
    -- Trim the dedupe window for about one id in 16 (the last hex digit of an id is uniform),
    -- so it exceeds `keep` by a few ids at most and costs one call in 16.
    if string.byte(nid, -1) == 48 then
      redis.call('ZREMRANGEBYRANK', seen, 0, -keep - 1)
    end
    redis.call('EXPIRE', seen, ttl)
    redis.call('EXPIRE', stream, ttl)
    results[i] = 1
    for _, replica in ipairs(redis.call('ZRANGEBYSCORE', presence, now, '+inf')) do
      local out = lines[replica]
      if not out then
        out = {}
        lines[replica] = out
      else
        out[#out + 1] = '\n'
      end
      -- Pieces, joined once below: the JSON is copied once, not once per line and again.
      local n = #out
      out[n + 1], out[n + 2], out[n + 3], out[n + 4] = user, ' ', id, prev
      out[n + 5], out[n + 6], out[n + 7], out[n + 8] = ' ', created, ' ', json
    end
  end
end
local pending = {}
for replica, out in pairs(lines) do
  if publish then
    redis.call('PUBLISH', prefix .. replica, table.concat(out))
  else
    pending[#pending + 1] = replica
    pending[#pending + 1] = table.concat(out)
  end
end
return {results, pending}
";

/// KEYS[1] the user's presence set. ARGV: now (ms), channel prefix, user, JSON. Sends a control
/// line `<user> ctl <json>` to every replica holding a connection of the user.
const CONTROL_SCRIPT: &str = r"
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  redis.call('PUBLISH', ARGV[2] .. replica, ARGV[3] .. ' ctl ' .. ARGV[4])
end
return 1
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

/// One notification to append to its recipient's stream.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub user: Uuid,
    pub notification_id: &'a str,
    pub created_at_millis: i64,
    pub notification_json: &'a str,
}

/// How many of a batch were new and how many seen before (redeliveries: nothing was written or
/// published again for those).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub new: usize,
    pub duplicate: usize,
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
    redis: RedisConnection,
    settings: RedisSettings,
    stream_max_len: u64,
    append: Script,
    control: Script,
    replay: Script,
}

impl Store {
    pub fn new(redis: RedisConnection, settings: RedisSettings, stream_max_len: u64) -> Self {
        Self {
            redis,
            settings,
            stream_max_len,
            append: Script::new(APPEND_SCRIPT),
            control: Script::new(CONTROL_SCRIPT),
            replay: Script::new(REPLAY_SCRIPT),
        }
    }

    pub fn connection(&self) -> RedisConnection {
        self.redis.clone()
    }

    pub fn stream_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("stream:{{{user}}}"))
    }

    fn seen_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("seen:{{{user}}}"))
    }

    pub fn presence_key(&self, user: Uuid) -> String {
        self.settings.key(&format!("presence:{{{user}}}"))
    }

    fn channel_prefix(&self) -> String {
        self.settings.key("hub:replica:")
    }

    /// Sends `json` (a control message) to every connection of `user`, on whichever replicas.
    pub async fn publish_control(&self, user: Uuid, json: &str) -> redis::RedisResult<()> {
        let now = chrono::Utc::now().timestamp_millis();
        if !self.redis.is_cluster() {
            return self
                .control
                .key(self.presence_key(user))
                .arg(now)
                .arg(self.channel_prefix())
                .arg(user.to_string())
                .arg(json)
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
                .map(drop);
        }
        let replicas: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.presence_key(user))
            .arg(now)
            .arg("+inf")
            .query_async(&mut self.redis.clone())
            .await?;
        let line = format!("{user} ctl {json}");
        let messages = replicas.into_iter().map(|replica| (replica, line.clone()));
        self.publish_lines(messages.collect()).await
    }

    /// Publishes each `(replica, payload)` on the replica's channel, a pipeline per slot.
    async fn publish_lines(&self, messages: Vec<(String, String)>) -> redis::RedisResult<()> {
        let prefix = self.channel_prefix();
        let command = self.redis.publish_command();
        let batches = self
            .redis
            .batch_by_slot(messages, usize::MAX, |(replica, _)| {
                format!("{prefix}{replica}")
            });
        self.redis
            .run_batches(batches, |mut redis, batch| {
                let mut pipe = redis::pipe();
                for (replica, payload) in batch {
                    pipe.cmd(command)
                        .arg(format!("{prefix}{replica}"))
                        .arg(payload)
                        .ignore();
                }
                async move { pipe.exec_async(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
    }

    /// The channel auth announces session revocations on.
    pub fn revocations_channel(&self) -> String {
        instaclone_shared::revocation::channel(&self.settings)
    }

    /// The pub/sub channel of the replica with this id.
    pub fn replica_channel(&self, replica: &str) -> String {
        format!("{}{replica}", self.channel_prefix())
    }

    /// Appends each notification to its recipient's stream and publishes it to the replicas
    /// holding the recipient's connections, unless it was appended before: one script call per
    /// [`APPEND_BATCH`] recipients (of one hash slot, on a cluster).
    pub async fn append(&self, batch: &[Append<'_>]) -> redis::RedisResult<Appended> {
        let batches = self
            .redis
            .batch_by_slot(batch.iter().collect(), APPEND_BATCH, |item| {
                self.stream_key(item.user)
            });
        let settled = self
            .redis
            .run_batches(batches, |mut redis, chunk| {
                let call = self.append_call(&chunk);
                async move {
                    call.invoke_async::<(Vec<u8>, Vec<String>)>(&mut redis)
                        .await
                }
            })
            .await;
        let mut appended = Appended::default();
        let mut lines: std::collections::HashMap<String, String> = Default::default();
        for (results, pending) in settled.done {
            let new = results.iter().filter(|&&fresh| fresh == 1).count();
            appended.new += new;
            appended.duplicate += results.len() - new;
            let mut pending = pending.into_iter();
            while let (Some(replica), Some(payload)) = (pending.next(), pending.next()) {
                let out = lines.entry(replica).or_default();
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&payload);
            }
        }
        // Publish what was stored even when part of the batch failed: its redelivery will find
        // these entries seen and not publish them again.
        if !lines.is_empty() {
            self.publish_with_retries(lines.into_iter().collect()).await;
        }
        match settled.error {
            None => Ok(appended),
            Some(error) => Err(error),
        }
    }

    /// One append script call for `chunk` (recipients of one slot on a cluster).
    fn append_call(&self, chunk: &[&Append<'_>]) -> redis::ScriptInvocation<'_> {
        let now = chrono::Utc::now().timestamp_millis();
        let keep = self.stream_max_len.saturating_mul(SEEN_KEEP_FACTOR).max(1);
        let mut call = self.append.prepare_invoke();
        for item in chunk {
            call.key(self.stream_key(item.user))
                .key(self.seen_key(item.user))
                .key(self.presence_key(item.user));
        }
        call.arg(self.stream_max_len)
            .arg(keep)
            .arg(STREAM_IDLE_TTL.as_secs())
            .arg(now)
            .arg(self.channel_prefix())
            .arg(if self.redis.is_cluster() { "0" } else { "1" });
        for item in chunk {
            call.arg(item.user.to_string())
                .arg(item.notification_id)
                .arg(item.created_at_millis)
                .arg(item.notification_json);
        }
        call
    }

    /// Publishes appended entries (on a cluster, where the script could not), retrying in place:
    /// the entries are stored already, so a redelivered batch would not publish them again.
    /// When every attempt fails they stay for replay, which the user's next line triggers (see
    /// the module docs).
    async fn publish_with_retries(&self, messages: Vec<(String, String)>) {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let policy = RetryPolicy::attempts(backoff, PUBLISH_ATTEMPTS);
        let log_retry = |retrying: &Retrying<'_, redis::RedisError>| {
            let (error, attempt) = (retrying.error, retrying.attempt);
            tracing::debug!(%error, attempt, "live publish failed; retrying");
        };
        let publish = || self.publish_lines(messages.clone());
        if let Err(error) = retry_notify(policy, any_error, log_retry, publish).await {
            tracing::warn!(%error, replicas = messages.len(),
                "live publish failed; the entries stay stored for replay");
        }
    }

    /// Records that the replica `replica` holds connections of each of `users` for the next
    /// [`PRESENCE_TTL`] (and forgets lapsed replicas of theirs), a pipeline per slot group;
    /// `gone` are the users whose last connection here ended. Applied in the given order.
    pub async fn set_presence(
        &self,
        replica: &str,
        present: &[Uuid],
        gone: &[Uuid],
    ) -> redis::RedisResult<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let ttl = i64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(i64::MAX);
        let changes = gone.iter().map(|user| (self.presence_key(*user), false));
        let changes = changes.chain(present.iter().map(|user| (self.presence_key(*user), true)));
        let batches = self
            .redis
            .batch_by_slot(changes.collect(), usize::MAX, |(key, _)| key.clone());
        self.redis
            .run_batches(batches, |mut redis, batch| {
                let mut pipe = redis::pipe();
                for (key, present) in batch {
                    if present {
                        pipe.zrembyscore(&key, "-inf", now).ignore();
                        pipe.zadd(&key, replica, now + ttl).ignore();
                        pipe.pexpire(&key, ttl).ignore();
                    } else {
                        pipe.zrem(&key, replica).ignore();
                    }
                }
                async move { pipe.exec_async(&mut redis).await }
            })
            .await
            .into_result()
            .map(drop)
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
    Ok(Delivery::new(
        parse_id(id)?,
        created_at_millis,
        notification_json.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::TypeError, "stream entry without `n`"))
        })?,
    ))
}
