//! Keeping home timelines in step with the events of the platform (fan-out on write).
//!
//! One durable queue, `posts.timelines`, shared by every replica of the service (competing
//! consumers), receives:
//!
//! | event | timeline change |
//! |---|---|
//! | `post.created` | the post id goes into the timelines of the author and of every follower |
//! | `post.deleted` | it leaves them again |
//! | `user.followed` | the follower's timeline gains the followed account's recent posts |
//! | `user.unfollowed` | it loses them |
//!
//! Only timelines that exist are written (see [`crate::timeline`]). Every change is a set add or
//! remove, so a redelivered or replayed event changes nothing the second time, and events may be
//! handled in any order: the feed read decides who counts and what still exists, so a late
//! `user.followed` backfill after an unfollow only leaves entries the read skips.

use std::time::Duration;

use instaclone_shared::{
    amqp::{HandlerError, QueueSpec},
    config::AmqpSettings,
    events::{EventEnvelope, PostCreated, PostDeleted, UserFollowed, UserUnfollowed, event_type},
};
use mongodb::bson::oid::ObjectId;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    error::PostsError,
    feed::HomeFeed,
    timeline::{BUILDING, HomeTimelines},
};

/// Name of the queue under the deployment's queue prefix.
pub const QUEUE: &str = "posts.timelines";
/// Deliveries of one event before it is dead-lettered.
pub const DELIVERY_LIMIT: u32 = 10;

pub fn queue_spec(settings: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: settings.queue(QUEUE),
        routing_keys: [
            event_type::POST_CREATED,
            event_type::POST_DELETED,
            event_type::USER_FOLLOWED,
            event_type::USER_UNFOLLOWED,
        ]
        .map(str::to_owned)
        .to_vec(),
        delivery_limit: DELIVERY_LIMIT,
    }
}

impl From<PostsError> for HandlerError {
    fn from(error: PostsError) -> Self {
        // Every failure here is a backing service (Redis, MongoDB, the users service) not
        // answering; the event is retried.
        HandlerError::Transient(error.to_string())
    }
}

/// Longest pause between two attempts at an event while a backing service is down.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// [`handle`], retried in place while Redis, MongoDB or the users service does not answer, until
/// it succeeds or `shutdown` (then the broker redelivers it). Giving up after a few attempts would
/// dead-letter the event and leave a hole in timelines that believe themselves complete; holding
/// it instead backs the (bounded) queue up, and behind it the producers' outboxes.
pub async fn handle_until_done(
    feed: &HomeFeed,
    event: &EventEnvelope,
    shutdown: &CancellationToken,
) -> Result<(), HandlerError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match handle(feed, event).await {
            Err(HandlerError::Transient(reason)) => {
                tracing::warn!(event_id = %event.id, %reason, retry_in = ?delay, "timeline update failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Err(HandlerError::Transient(reason)),
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            done => return done,
        }
    }
}

/// Applies one event to the timelines it concerns.
#[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
pub async fn handle(feed: &HomeFeed, event: &EventEnvelope) -> Result<(), HandlerError> {
    let malformed =
        |e: instaclone_shared::events::EventError| HandlerError::Permanent(e.to_string());
    match event.event_type.as_str() {
        event_type::POST_CREATED => {
            let post = event.data::<PostCreated>().map_err(malformed)?;
            fan_out(feed, post.author_id, &post.post_id, Change::Add).await?;
        }
        event_type::POST_DELETED => {
            let post = event.data::<PostDeleted>().map_err(malformed)?;
            fan_out(feed, post.author_id, &post.post_id, Change::Remove).await?;
        }
        event_type::USER_FOLLOWED => {
            let follow = event.data::<UserFollowed>().map_err(malformed)?;
            backfill(feed, follow.follower_id, follow.followed_id, Change::Add).await?;
        }
        event_type::USER_UNFOLLOWED => {
            let follow = event.data::<UserUnfollowed>().map_err(malformed)?;
            backfill(feed, follow.follower_id, follow.followed_id, Change::Remove).await?;
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}

async fn apply(
    timelines: &HomeTimelines,
    change: Change,
    readers: &[Uuid],
    ids: &[String],
) -> Result<(), PostsError> {
    match change {
        Change::Add => timelines.add(readers, ids).await?,
        Change::Remove => timelines.remove(readers, ids).await?,
    }
    Ok(())
}

/// The post goes into (or out of) the timelines of its author and of each follower, one page of
/// followers at a time.
async fn fan_out(
    feed: &HomeFeed,
    author: Uuid,
    post_id: &str,
    change: Change,
) -> Result<(), PostsError> {
    if ObjectId::parse_str(post_id).is_err() {
        tracing::warn!(%post_id, "ignoring a post event whose post id is not an ObjectId");
        return Ok(());
    }
    let ids = [post_id.to_owned()];
    apply(&feed.timelines, change, &[author], &ids).await?;
    let mut followers = feed.graph.users().followers(author);
    let mut readers = 0usize;
    while let Some(page) = followers.next_page().await? {
        apply(&feed.timelines, change, &page, &ids).await?;
        readers += page.len();
    }
    tracing::debug!(%author, %post_id, followers = readers, ?change, "fanned out");
    Ok(())
}

/// `follower`'s timeline gains (or loses) the posts of `followed` that lie within it: those at or
/// above its floor, at most a timeline's capacity of them.
async fn backfill(
    feed: &HomeFeed,
    follower: Uuid,
    followed: Uuid,
    change: Change,
) -> Result<(), PostsError> {
    let Some(floor) = feed.timelines.floor(follower).await? else {
        return Ok(()); // no timeline: the next read rebuilds it from the follow graph
    };
    // While a rebuild runs its floor is unknown: take the newest posts, the add keeps what fits.
    let lowest = if floor == BUILDING {
        None
    } else {
        ObjectId::parse_str(&floor).ok()
    };
    let capacity = feed.timelines.settings().capacity.get();
    let ids: Vec<String> = feed
        .store
        .newest_ids_by_author(followed, lowest, capacity)
        .await?
        .into_iter()
        .map(ObjectId::to_hex)
        .collect();
    apply(&feed.timelines, change, &[follower], &ids).await
}
