//! Turning events into notifications: `user.followed` gives the followed user one `follow`
//! notification, `post.created` gives every follower of the author a `post_created` one.
//!
//! Each event is handled so that doing it twice (a redelivery after a crash, a replay of the
//! event log, two consumers racing) is harmless and loses nothing:
//! 1. An event whose progress record says `completed` is acknowledged at once.
//! 2. Notifications are inserted in batches under ids derived from (event, recipient), so a
//!    repeat is a duplicate-key error, which means "already stored" (the stored copy is read
//!    back).
//! 3. After a batch is stored, its `notification.created` events are published (with publisher
//!    confirms) and only then is the progress record moved past that batch. A crash in between
//!    means the batch is stored and emitted again on redelivery: the hub sees the same
//!    notification ids twice and drops the repeat. Delivery to the hub is at-least-once.
//! 4. The delivery is acknowledged only after all of that (the consumer acks when `handle`
//!    returns `Ok`).
//!
//! A fan-out streams the author's followers page by page from the users service (the next page
//! is fetched while the current one is written), so 100,000 followers never sit in memory, and
//! the consumer keeps handling other deliveries concurrently while one post fans out.
//!
//! Work is batched end to end: a delivered message may carry many events (an outbox relay round,
//! see [`instaclone_shared::events`]), and they are handled together. All follow notifications
//! of the batch are one `insertMany`; the new posts of one author share one walk of the author's
//! followers, and each page of followers is one `insertMany` (every post for every follower on
//! the page), one confirmed publish of its `notification.created` events and one progress write
//! for all those posts. A busy author's burst of posts therefore costs about what one post does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use instaclone_shared::{
    amqp::{Batch, BrokerStatus, EventPublisher, HandlerError, QueueSpec, Rejected, run_consumer},
    backoff::{Backoff, RetryPolicy, Retrying, retry_notify},
    config::AmqpSettings,
    events::{
        EventEnvelope, NotificationCreated, PostCreated, UserDeleted, UserFollowed, event_type,
    },
    users_internal::{ClientError, IdPage, UsersClient},
};
use mongodb::bson;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    SERVICE_NAME,
    domain::{NotificationData, NotificationKind, follow_message, post_created_message},
    store::{EventProgress, NotificationDocument, NotificationStore, ProgressStep},
};

/// Suffix of the work queue this service consumes.
pub const QUEUE: &str = "notifications";
/// Deliveries of one message before it goes to the dead-letter queue: only a message that keeps
/// crashing the consumer gets there (transient failures are retried in place, undeliverable
/// counts are not spent on them).
pub const DELIVERY_LIMIT: u32 = 10;
/// A follow of the same account by the same follower within this long of a follow notification
/// already made (a follow/unfollow cycle) makes no new notification.
pub const FOLLOW_COALESCING_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Followers read (and notifications inserted) per round of a fan-out.
pub const FOLLOWER_PAGE: u32 = 1000;
/// Notifications carried by one `notification.created` event.
pub const NOTIFICATIONS_PER_EVENT: usize = 250;
/// Attempts at a transiently failing event during a replay before the replay stops.
const REPLAY_ATTEMPTS: u32 = 5;
/// How long an author's username is reused before it is looked up again.
const AUTHOR_NAME_TTL: Duration = Duration::from_secs(300);
/// Bound on the author name cache; it starts afresh when full.
const AUTHOR_NAME_CACHE_MAX: usize = 10_000;

/// The work queue: follows and new posts.
pub fn queue_spec(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.queue(QUEUE),
        routing_keys: vec![
            event_type::USER_FOLLOWED.to_owned(),
            event_type::POST_CREATED.to_owned(),
            event_type::USER_DELETED.to_owned(),
        ],
        delivery_limit: DELIVERY_LIMIT,
    }
}

/// What handling one event amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not an event this service acts on.
    Ignored,
    /// Handled completely before; nothing was done.
    AlreadyDone,
    /// Handled now: `notifications` recipients handled for it in total (see
    /// [`EventProgress::stored`]), `inserted` of them newly stored by this call.
    Handled { notifications: u64, inserted: u64 },
}

/// What handling a batch amounted to, per event.
#[derive(Debug, Default)]
struct Processed {
    outcomes: HashMap<Uuid, Outcome>,
    rejected: Vec<Rejected>,
}

impl Processed {
    fn reject(&mut self, event: &EventEnvelope, reason: impl Into<String>) {
        self.rejected.push(Rejected {
            event: event.clone(),
            reason: reason.into(),
        });
    }
}

/// A `post.created` waiting to be fanned out, with what an earlier delivery did of it.
struct PendingPost<'a> {
    event: &'a EventEnvelope,
    post: PostCreated,
    prior: Option<&'a EventProgress>,
}

/// Handles events; shared by the live consumer and the replay command.
pub struct EventProcessor {
    store: NotificationStore,
    users: UsersClient,
    publisher: EventPublisher,
    author_names: AuthorNames,
    follower_page: u32,
}

impl EventProcessor {
    pub fn new(store: NotificationStore, users: UsersClient, publisher: EventPublisher) -> Self {
        Self {
            store,
            users,
            publisher,
            author_names: AuthorNames::default(),
            follower_page: FOLLOWER_PAGE,
        }
    }

    /// Reads followers `page` at a time (at most the users service's
    /// [`MAX_ID_PAGE`](instaclone_shared::users_internal::MAX_ID_PAGE)) instead of [`FOLLOWER_PAGE`].
    pub fn with_follower_page(mut self, page: u32) -> Self {
        self.follower_page = page.clamp(1, instaclone_shared::users_internal::MAX_ID_PAGE);
        self
    }

    /// Handles the events of one delivered message together (see the module docs). A transient
    /// failure is returned as it is: the consumer retries the message in place until the store,
    /// the broker or the users service answers again.
    ///
    /// Progress records are read only for a redelivered message: a first delivery has none,
    /// unless the producer published the event twice, and then redoing it is harmless (the
    /// deterministic notification ids and the hub's dedupe absorb the repeat).
    pub async fn handle_batch(&self, batch: Batch) -> Result<Vec<Rejected>, HandlerError> {
        let processed = self.process(&batch.events, batch.redelivered).await?;
        Ok(processed.rejected)
    }

    /// Handles `event` (reading its progress first), retrying transient failures a few times
    /// before giving up: the replay command's way, which reports a dependency that stays down
    /// instead of waiting on it.
    pub async fn handle_with_retries(
        &self,
        event: &EventEnvelope,
    ) -> Result<Outcome, HandlerError> {
        let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
        let policy = RetryPolicy::attempts(backoff, REPLAY_ATTEMPTS);
        let is_transient = |error: &HandlerError| matches!(error, HandlerError::Transient(_));
        let log_retry = |retrying: &Retrying<'_, HandlerError>| {
            if let HandlerError::Transient(reason) = retrying.error {
                tracing::warn!(%reason, retry_in = ?retrying.delay, "retrying an event");
            }
        };
        retry_notify(policy, is_transient, log_retry, || self.handle(event)).await
    }

    /// Handles `event` once. Safe to call any number of times for the same event.
    #[tracing::instrument(skip(self, event), fields(event_id = %event.id, event_type = %event.event_type))]
    pub async fn handle(&self, event: &EventEnvelope) -> Result<Outcome, HandlerError> {
        let mut processed = self.process(std::slice::from_ref(event), true).await?;
        if let Some(rejected) = processed.rejected.pop() {
            return Err(HandlerError::Permanent(rejected.reason));
        }
        Ok(processed
            .outcomes
            .remove(&event.id)
            .unwrap_or(Outcome::Ignored))
    }

    /// Handles `events` together: every follow notification of the batch in one write, and the
    /// new posts of each author in one walk of the author's followers, one write and one
    /// emission per page of followers for all of those posts.
    async fn process(
        &self,
        events: &[EventEnvelope],
        read_progress: bool,
    ) -> Result<Processed, HandlerError> {
        let mut processed = Processed::default();
        self.on_deletions(events, &mut processed).await?;
        let ours: Vec<&EventEnvelope> = events
            .iter()
            .filter(|event| event.event_type != event_type::USER_DELETED)
            .filter(|event| {
                let is_ours = matches!(
                    event.event_type.as_str(),
                    event_type::USER_FOLLOWED | event_type::POST_CREATED
                );
                if !is_ours {
                    processed.outcomes.insert(event.id, Outcome::Ignored);
                }
                is_ours
            })
            .collect();
        let progress = if read_progress && !ours.is_empty() {
            let ids: Vec<Uuid> = ours.iter().map(|event| event.id).collect();
            self.store.progress_of(&ids).await.map_err(transient)?
        } else {
            HashMap::new()
        };
        let mut follows = Vec::new();
        let mut posts: BTreeMap<(Uuid, Option<String>), Vec<PendingPost<'_>>> = BTreeMap::new();
        for event in ours {
            let prior = progress.get(&event.id.to_string());
            if prior.is_some_and(|p| p.completed) {
                processed.outcomes.insert(event.id, Outcome::AlreadyDone);
                continue;
            }
            if event.event_type == event_type::USER_FOLLOWED {
                match follow_of(event) {
                    Ok(follow) => follows.push((event, follow)),
                    Err(reason) => processed.reject(event, reason),
                }
                continue;
            }
            match event.data::<PostCreated>() {
                Ok(post) => {
                    let key = (post.author_id, prior.and_then(|p| p.cursor.clone()));
                    posts
                        .entry(key)
                        .or_default()
                        .push(PendingPost { event, post, prior });
                }
                Err(error) => processed.reject(event, error.to_string()),
            }
        }
        self.on_follows(&follows, &mut processed).await?;
        for ((author, cursor), group) in posts {
            match self.fan_out(author, cursor.as_deref(), &group).await {
                Ok(outcomes) => processed.outcomes.extend(outcomes),
                Err(HandlerError::Permanent(reason)) => {
                    for pending in &group {
                        processed.reject(pending.event, reason.clone());
                    }
                }
                Err(transient) => return Err(transient),
            }
        }
        Ok(processed)
    }

    /// A deleted account's history goes with it (idempotent: deleting again deletes nothing).
    async fn on_deletions(
        &self,
        events: &[EventEnvelope],
        processed: &mut Processed,
    ) -> Result<(), HandlerError> {
        for event in events
            .iter()
            .filter(|event| event.event_type == event_type::USER_DELETED)
        {
            match event.data::<UserDeleted>() {
                Ok(deleted) => {
                    let removed = self
                        .store
                        .delete_history(deleted.user_id)
                        .await
                        .map_err(transient)?;
                    tracing::info!(user = %deleted.user_id, removed, "deleted account's notifications removed");
                    processed.outcomes.insert(
                        event.id,
                        Outcome::Handled {
                            notifications: 0,
                            inserted: 0,
                        },
                    );
                }
                Err(error) => processed.reject(event, error.to_string()),
            }
        }
        Ok(())
    }

    /// One `follow` notification per event, all stored and emitted together.
    async fn on_follows(
        &self,
        follows: &[(&EventEnvelope, UserFollowed)],
        processed: &mut Processed,
    ) -> Result<(), HandlerError> {
        if follows.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(Uuid, Uuid, Uuid)> = follows
            .iter()
            .map(|(event, follow)| (follow.followed_id, follow.follower_id, event.id))
            .collect();
        let since = chrono::Utc::now() - FOLLOW_COALESCING_WINDOW;
        let repeated = self
            .store
            .recently_followed(&pairs, since)
            .await
            .map_err(transient)?;
        let is_repeat = |follow: &UserFollowed| {
            repeated.contains(&(
                follow.followed_id.to_string(),
                follow.follower_id.to_string(),
            ))
        };
        if !repeated.is_empty() {
            metrics::counter!("notifications_follows_coalesced_total")
                .increment(follows.iter().filter(|(_, f)| is_repeat(f)).count() as u64);
        }
        let now = bson::DateTime::now();
        let notifications = follows
            .iter()
            .filter(|(_, follow)| !is_repeat(follow))
            .map(|(event, follow)| {
                NotificationDocument::new(
                    (event.id, event.occurred_at),
                    follow.followed_id,
                    NotificationKind::Follow,
                    follow_message(&follow.follower_username),
                    NotificationData::Follow {
                        follower_id: follow.follower_id.to_string(),
                    },
                    now,
                )
            })
            .collect();
        let inserted = self.store_and_emit(notifications).await?;
        let done: Vec<String> = follows
            .iter()
            .map(|(event, _)| event.id.to_string())
            .collect();
        let step = ProgressStep {
            cursor: None,
            stored: 1,
            completed: true,
        };
        self.store
            .record_step(&done, event_type::USER_FOLLOWED, step, true)
            .await
            .map_err(transient)?;
        for (event, follow) in follows {
            let inserted = inserted.get(&event.id.to_string()).copied().unwrap_or(0);
            processed.outcomes.insert(
                event.id,
                Outcome::Handled {
                    notifications: u64::from(!is_repeat(follow)),
                    inserted: u64::try_from(inserted).unwrap_or_default(),
                },
            );
        }
        Ok(())
    }

    /// Fans the posts of `group` (all by `author`, all resuming from `cursor`) out to the
    /// author's followers, a page at a time; returns each event's outcome.
    async fn fan_out(
        &self,
        author: Uuid,
        cursor: Option<&str>,
        group: &[PendingPost<'_>],
    ) -> Result<HashMap<Uuid, Outcome>, HandlerError> {
        let started = Instant::now();
        let message = post_created_message(&self.author_username(author).await?);
        let data: Vec<NotificationData> = group
            .iter()
            .map(|pending| NotificationData::PostCreated {
                author_id: author.to_string(),
                post_id: pending.post.post_id.clone(),
                caption: pending.post.caption.clone(),
                media_url: pending.post.media_url.clone(),
            })
            .collect();
        let ids: Vec<String> = group
            .iter()
            .map(|pending| pending.event.id.to_string())
            .collect();
        let mut first_step = group.iter().all(|pending| pending.prior.is_none());
        let mut recipients: i64 = 0;
        let mut inserted: HashMap<String, usize> = HashMap::new();
        let mut page = self.followers(author, cursor).await?;
        loop {
            let now = bson::DateTime::now();
            let followers: Vec<Uuid> = page
                .ids
                .iter()
                .copied()
                .filter(|&follower| follower != author)
                .collect();
            let notifications: Vec<NotificationDocument> = followers
                .iter()
                .flat_map(|&follower| {
                    group
                        .iter()
                        .zip(&data)
                        .map(move |(pending, data)| (follower, pending, data))
                })
                .map(|(follower, pending, data)| {
                    NotificationDocument::new(
                        (pending.event.id, pending.event.occurred_at),
                        follower,
                        NotificationKind::PostCreated,
                        message.clone(),
                        data.clone(),
                        now,
                    )
                })
                .collect();
            let store = self.store_and_emit(notifications);
            // Read the next page while this one is written.
            let (stored, next) = match page.next_cursor.as_deref() {
                Some(cursor) => {
                    let (stored, next) = tokio::join!(store, self.followers(author, Some(cursor)));
                    (stored, Some(next))
                }
                None => (store.await, None),
            };
            for (event_id, count) in stored? {
                *inserted.entry(event_id).or_default() += count;
            }
            let page_recipients = i64::try_from(followers.len()).unwrap_or(i64::MAX);
            recipients += page_recipients;
            let step = ProgressStep {
                cursor: page.next_cursor.as_deref(),
                stored: page_recipients,
                completed: next.is_none(),
            };
            self.store
                .record_step(&ids, event_type::POST_CREATED, step, first_step)
                .await
                .map_err(transient)?;
            first_step = false;
            match next {
                None => break,
                Some(next) => page = next?,
            }
        }
        let elapsed = started.elapsed();
        metrics::histogram!("notifications_fanout_seconds").record(elapsed.as_secs_f64());
        tracing::info!(%author, posts = group.len(), recipients, resumed = cursor.is_some(), ?elapsed, "post fan-out complete");
        Ok(group
            .iter()
            .zip(&ids)
            .map(|(pending, id)| {
                let before = pending.prior.map_or(0, |p| p.stored);
                let inserted = inserted.get(id).copied().unwrap_or(0);
                let outcome = Outcome::Handled {
                    notifications: u64::try_from(before + recipients).unwrap_or_default(),
                    inserted: u64::try_from(inserted).unwrap_or_default(),
                };
                (pending.event.id, outcome)
            })
            .collect())
    }

    /// Stores one batch, then publishes `notification.created` for all of it (including
    /// notifications an earlier delivery had stored: they may not have been published).
    /// Returns how many were inserted now, by event id.
    async fn store_and_emit(
        &self,
        notifications: Vec<NotificationDocument>,
    ) -> Result<HashMap<String, usize>, HandlerError> {
        if notifications.is_empty() {
            return Ok(HashMap::new());
        }
        let batch = self
            .store
            .insert_batch(notifications)
            .await
            .map_err(transient)?;
        metrics::counter!("notifications_stored_total").increment(batch.inserted as u64);
        let mut inserted: HashMap<String, usize> = HashMap::new();
        for fresh in &batch.notifications[..batch.inserted] {
            *inserted.entry(fresh.event_id.clone()).or_default() += 1;
        }
        let views = batch
            .notifications
            .iter()
            .map(NotificationDocument::view)
            .collect::<Result<Vec<_>, _>>()
            .map_err(permanent)?;
        let events = views
            .chunks(NOTIFICATIONS_PER_EVENT)
            .map(|chunk| {
                EventEnvelope::new(
                    SERVICE_NAME,
                    &NotificationCreated {
                        notifications: chunk.to_vec(),
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(permanent)?;
        self.publisher
            .publish_batch(&events)
            .await
            .map_err(transient)?;
        metrics::counter!("notification_created_events_published_total")
            .increment(events.len() as u64);
        Ok(inserted)
    }

    async fn followers(&self, author: Uuid, cursor: Option<&str>) -> Result<IdPage, HandlerError> {
        self.users
            .followers_page(author, cursor, self.follower_page)
            .await
            .map_err(|error| match error {
                ClientError::NotFound => {
                    HandlerError::Permanent(format!("the post's author {author} does not exist"))
                }
                ClientError::BadRequest(message) => HandlerError::Permanent(format!(
                    "users service refused the follower query: {message}"
                )),
                other => transient(other),
            })
    }

    async fn author_username(&self, author: Uuid) -> Result<String, HandlerError> {
        if let Some(name) = self.author_names.get(author) {
            return Ok(name);
        }
        match self.users.get_user(author).await {
            Ok(Some(user)) => {
                self.author_names.put(author, &user.username);
                Ok(user.username)
            }
            Ok(None) => Err(HandlerError::Permanent(format!(
                "the post's author {author} does not exist"
            ))),
            Err(ClientError::Unavailable { service, reason }) => Err(HandlerError::Transient(
                format!("{service} unavailable: {reason}"),
            )),
            Err(other) => Err(HandlerError::Permanent(format!(
                "cannot look up the post's author {author}: {other}"
            ))),
        }
    }
}

/// The follow of a `user.followed` event, if it can make a notification.
fn follow_of(event: &EventEnvelope) -> Result<UserFollowed, String> {
    let follow: UserFollowed = event.data().map_err(|e| e.to_string())?;
    if follow.follower_username.trim().is_empty() {
        return Err("user.followed without a followerUsername".to_owned());
    }
    Ok(follow)
}

fn transient(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(error.to_string())
}

fn permanent(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(error.to_string())
}

/// Usernames of recent post authors, so a burst of posts by one author costs one lookup.
#[derive(Default)]
struct AuthorNames {
    entries: Mutex<HashMap<Uuid, (String, Instant)>>,
}

impl AuthorNames {
    fn get(&self, author: Uuid) -> Option<String> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(&author)
            .filter(|(_, fetched)| fetched.elapsed() < AUTHOR_NAME_TTL)
            .map(|(name, _)| name.clone())
    }

    fn put(&self, author: Uuid, name: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= AUTHOR_NAME_CACHE_MAX {
                entries.clear();
            }
            entries.insert(author, (name.to_owned(), Instant::now()));
        }
    }
}

/// Consumes the work queue until `shutdown`: each delivery is handled and acked after its
/// writes and emissions; a malformed event goes straight to the dead-letter queue.
pub async fn run(
    settings: AmqpSettings,
    processor: Arc<EventProcessor>,
    shutdown: CancellationToken,
    broker: BrokerStatus,
) {
    let spec = queue_spec(&settings);
    run_consumer(settings, spec, shutdown, broker, move |batch| {
        let processor = processor.clone();
        async move { processor.handle_batch(batch).await }
    })
    .await;
}
