//! Dropping followers' cached feeds when a post appears or disappears (`post.created`,
//! `post.deleted`), as the original did.
//!
//! Every gateway replica consumes one shared durable queue (competing consumers): the cache is
//! in Redis, so one replica handling an event is enough. The author's followers are read in
//! pages from the users service's internal API, each page's cache keys dropped with one `DEL`.
//! `DEL` is idempotent, so a redelivered event does no harm. A follower reading between the post
//! being stored and the event arriving may still get the older page: the TTL bounds that.

use std::collections::BTreeSet;

use instaclone_shared::{
    amqp::{Batch, HandlerError, QueueSpec, Rejected},
    config::AmqpSettings,
    events::{PostCreated, PostDeleted, event_type},
    users_internal::UsersClient,
};
use uuid::Uuid;

use crate::feed_cache::FeedCache;

/// The gateway's queue of post events (name under the deployment's queue prefix).
pub fn queue_spec(amqp: &AmqpSettings) -> QueueSpec {
    QueueSpec {
        name: amqp.queue("gateway.feed-cache"),
        routing_keys: vec![
            event_type::POST_CREATED.to_owned(),
            event_type::POST_DELETED.to_owned(),
        ],
        delivery_limit: 10,
    }
}

/// Drops the cached feed of every follower of the authors of a batch of post events (each author
/// once, however many of their posts the batch holds).
#[tracing::instrument(skip_all, fields(events = batch.events.len()))]
pub async fn handle(
    batch: Batch,
    cache: FeedCache,
    users: UsersClient,
) -> Result<Vec<Rejected>, HandlerError> {
    let mut authors = BTreeSet::new();
    let mut rejected = Vec::new();
    for event in batch.events {
        let author = match event.event_type.as_str() {
            event_type::POST_CREATED => event.data::<PostCreated>().map(|post| post.author_id),
            event_type::POST_DELETED => event.data::<PostDeleted>().map(|post| post.author_id),
            _ => continue,
        };
        match author {
            Ok(author) => {
                authors.insert(author);
            }
            Err(error) => rejected.push(Rejected {
                event,
                reason: error.to_string(),
            }),
        }
    }
    for author in authors {
        drop_followers_feeds(&cache, &users, author).await?;
    }
    Ok(rejected)
}

async fn drop_followers_feeds(
    cache: &FeedCache,
    users: &UsersClient,
    author: Uuid,
) -> Result<(), HandlerError> {
    let mut followers = users.followers(author);
    let mut dropped = 0usize;
    while let Some(ids) = followers
        .next_page()
        .await
        .map_err(|e| HandlerError::Transient(e.to_string()))?
    {
        cache
            .try_invalidate(&ids)
            .await
            .map_err(HandlerError::Transient)?;
        dropped += ids.len();
    }
    tracing::debug!(%author, followers = dropped, "dropped followers' cached feeds");
    Ok(())
}
