//! Turning events into notifications: `user.followed` gives the followed user one `follow`
//! notification, `post.created` gives every follower of the author a `post_created` one.
//!
//! Each event is handled so that doing it twice (a redelivery after a crash, a replay of the
//! event log, two consumers racing) is harmless and loses nothing:
//! 1. An event whose progress record says `completed` is acknowledged at once.
//! 2. Notifications are inserted in batches; the unique `{eventId, userId}` index turns a repeat
//!    into a duplicate-key error, which means "already stored" (the stored copy is read back).
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

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use instaclone_shared::{
    amqp::{EventPublisher, HandlerError, QueueSpec, run_consumer},
    clients::{ClientError, IdPage, UsersClient},
    config::AmqpSettings,
    events::{EventEnvelope, NotificationCreated, PostCreated, UserFollowed, event_type},
};
use mongodb::bson;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    SERVICE_NAME,
    domain::{NotificationData, NotificationKind, follow_message, post_created_message},
    store::{EventProgress, NotificationDocument, NotificationStore},
};

/// Suffix of the work queue this service consumes.
pub const QUEUE: &str = "notifications";
/// Deliveries of one event before it goes to the dead-letter queue.
pub const DELIVERY_LIMIT: u32 = 5;
/// Followers read (and notifications inserted) per round of a fan-out.
pub const FOLLOWER_PAGE: u32 = 1000;
/// Notifications carried by one `notification.created` event.
pub const NOTIFICATIONS_PER_EVENT: usize = 250;
/// Attempts at a transiently failing event inside one delivery, before it is handed back to the
/// broker (which counts deliveries against [`DELIVERY_LIMIT`]).
const IN_DELIVERY_ATTEMPTS: u32 = 3;
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
    /// [`MAX_ID_PAGE`](instaclone_shared::clients::MAX_ID_PAGE)) instead of [`FOLLOWER_PAGE`].
    pub fn with_follower_page(mut self, page: u32) -> Self {
        self.follower_page = page.clamp(1, instaclone_shared::clients::MAX_ID_PAGE);
        self
    }

    /// Handles `event`, retrying transient failures a few times before giving up on this
    /// delivery.
    pub async fn handle_with_retries(
        &self,
        event: &EventEnvelope,
    ) -> Result<Outcome, HandlerError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match self.handle(event).await {
                Err(HandlerError::Transient(reason)) if attempt < IN_DELIVERY_ATTEMPTS => {
                    tracing::warn!(event_id = %event.id, %reason, retry_in = ?delay, "retrying event");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Handles `event` once. Safe to call any number of times for the same event.
    #[tracing::instrument(skip(self, event), fields(event_id = %event.id, event_type = %event.event_type))]
    pub async fn handle(&self, event: &EventEnvelope) -> Result<Outcome, HandlerError> {
        let is_ours = matches!(
            event.event_type.as_str(),
            event_type::USER_FOLLOWED | event_type::POST_CREATED
        );
        if !is_ours {
            return Ok(Outcome::Ignored);
        }
        let progress = self.store.progress(event.id).await.map_err(transient)?;
        if progress.as_ref().is_some_and(|p| p.completed) {
            tracing::debug!("event already handled");
            return Ok(Outcome::AlreadyDone);
        }
        if event.event_type == event_type::USER_FOLLOWED {
            self.on_follow(event).await
        } else {
            self.on_post_created(event, progress).await
        }
    }

    async fn on_follow(&self, event: &EventEnvelope) -> Result<Outcome, HandlerError> {
        let follow: UserFollowed = event.data().map_err(permanent)?;
        if follow.follower_username.trim().is_empty() {
            return Err(HandlerError::Permanent(
                "user.followed without a followerUsername".to_owned(),
            ));
        }
        let notification = NotificationDocument::new(
            event.id,
            follow.followed_id,
            NotificationKind::Follow,
            follow_message(&follow.follower_username),
            NotificationData::Follow {
                follower_id: follow.follower_id.to_string(),
            },
            bson::DateTime::now(),
        );
        let inserted = self.store_and_emit(vec![notification]).await?;
        let mut progress = EventProgress::starting(event);
        progress.stored = 1;
        progress.completed = true;
        self.store
            .save_progress(&progress)
            .await
            .map_err(transient)?;
        Ok(Outcome::Handled {
            notifications: 1,
            inserted: u64::try_from(inserted).unwrap_or_default(),
        })
    }

    async fn on_post_created(
        &self,
        event: &EventEnvelope,
        progress: Option<EventProgress>,
    ) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let post: PostCreated = event.data().map_err(permanent)?;
        let author = self.author_username(post.author_id).await?;
        let message = post_created_message(&author);
        let data = NotificationData::PostCreated {
            author_id: post.author_id.to_string(),
            post_id: post.post_id.clone(),
            caption: post.caption.clone(),
            media_url: post.media_url.clone(),
        };
        let mut progress = progress.unwrap_or_else(|| EventProgress::starting(event));
        let resumed = progress.cursor.is_some();
        let mut inserted_total = 0;
        let mut page = self
            .followers(post.author_id, progress.cursor.as_deref())
            .await?;
        loop {
            let now = bson::DateTime::now();
            let notifications: Vec<NotificationDocument> = page
                .ids
                .iter()
                .filter(|&&follower| follower != post.author_id)
                .map(|&follower| {
                    NotificationDocument::new(
                        event.id,
                        follower,
                        NotificationKind::PostCreated,
                        message.clone(),
                        data.clone(),
                        now,
                    )
                })
                .collect();
            let batch_size = notifications.len();
            let store = self.store_and_emit(notifications);
            // Read the next page while this one is written.
            let (stored, next) = match page.next_cursor.as_deref() {
                Some(cursor) => {
                    let (stored, next) =
                        tokio::join!(store, self.followers(post.author_id, Some(cursor)));
                    (stored, Some(next))
                }
                None => (store.await, None),
            };
            inserted_total += stored?;
            progress.cursor = page.next_cursor.take();
            progress.stored += i64::try_from(batch_size).unwrap_or(i64::MAX);
            progress.completed = next.is_none();
            progress.updated_at = bson::DateTime::now();
            self.store
                .save_progress(&progress)
                .await
                .map_err(transient)?;
            match next {
                None => break,
                Some(next) => page = next?,
            }
        }
        let elapsed = started.elapsed();
        metrics::histogram!("notifications_fanout_seconds").record(elapsed.as_secs_f64());
        tracing::info!(
            post_id = %post.post_id,
            recipients = progress.stored,
            inserted = inserted_total,
            resumed,
            ?elapsed,
            "post fan-out complete"
        );
        Ok(Outcome::Handled {
            notifications: u64::try_from(progress.stored).unwrap_or_default(),
            inserted: u64::try_from(inserted_total).unwrap_or_default(),
        })
    }

    /// Stores one batch, then publishes `notification.created` for all of it (including
    /// notifications an earlier delivery had stored: they may not have been published).
    /// Returns how many were inserted now.
    async fn store_and_emit(
        &self,
        notifications: Vec<NotificationDocument>,
    ) -> Result<usize, HandlerError> {
        if notifications.is_empty() {
            return Ok(0);
        }
        let batch = self
            .store
            .insert_batch(notifications)
            .await
            .map_err(transient)?;
        metrics::counter!("notifications_stored_total").increment(batch.inserted as u64);
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
        Ok(batch.inserted)
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

impl EventProgress {
    fn starting(event: &EventEnvelope) -> Self {
        Self {
            event_id: event.id.to_string(),
            event_type: event.event_type.clone(),
            cursor: None,
            stored: 0,
            completed: false,
            updated_at: bson::DateTime::now(),
        }
    }
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
) {
    let spec = queue_spec(&settings);
    run_consumer(settings, spec, shutdown, move |event| {
        let processor = processor.clone();
        async move { processor.handle_with_retries(&event).await.map(drop) }
    })
    .await;
}
