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

use std::collections::BTreeMap;

use instaclone_shared::{
    amqp::{Batch, HandlerError, QueueSpec, Rejected},
    config::AmqpSettings,
    events::{
        EventEnvelope, EventError, PostCreated, PostDeleted, UserDeleted, UserFollowed,
        UserUnfollowed, event_type,
    },
};
use mongodb::bson::oid::ObjectId;
use uuid::Uuid;

use crate::{
    error::PostsError,
    feed::HomeFeed,
    timeline::{BUILDING, HomeTimelines, entry},
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
            event_type::USER_DELETED,
        ]
        .map(str::to_owned)
        .to_vec(),
        delivery_limit: DELIVERY_LIMIT,
    }
}

impl From<PostsError> for HandlerError {
    fn from(error: PostsError) -> Self {
        // Every failure here is a backing service (Redis, MongoDB, the users service) not
        // answering; the consumer retries the batch in place until it answers. Giving up would
        // leave a hole in timelines that believe themselves complete.
        HandlerError::Transient(error.to_string())
    }
}

/// What a batch asks of the timelines, gathered so each author's followers are read once.
#[derive(Default)]
struct Changes {
    /// Post ids by author, to add to or remove from the author's and followers' timelines.
    created: BTreeMap<Uuid, Vec<String>>,
    deleted: BTreeMap<Uuid, Vec<String>>,
    /// (follower, followed, change), in the batch's order.
    follows: Vec<(Uuid, Uuid, Change)>,
    /// Deleted accounts, whose posts go.
    deleted_users: Vec<Uuid>,
}

impl Changes {
    fn gather(batch: &Batch) -> (Self, Vec<Rejected>) {
        let mut changes = Self::default();
        let mut rejected = Vec::new();
        for event in &batch.events {
            if let Err(error) = changes.add(event) {
                rejected.push(Rejected {
                    event: event.clone(),
                    reason: error.to_string(),
                });
            }
        }
        (changes, rejected)
    }

    fn add(&mut self, event: &EventEnvelope) -> Result<(), EventError> {
        match event.event_type.as_str() {
            event_type::POST_CREATED => {
                let post = event.data::<PostCreated>()?;
                push_post(&mut self.created, post.author_id, post.post_id);
            }
            event_type::POST_DELETED => {
                let post = event.data::<PostDeleted>()?;
                push_post(&mut self.deleted, post.author_id, post.post_id);
            }
            event_type::USER_FOLLOWED => {
                let follow = event.data::<UserFollowed>()?;
                let pair = (follow.follower_id, follow.followed_id, Change::Add);
                self.follows.push(pair);
            }
            event_type::USER_UNFOLLOWED => {
                let follow = event.data::<UserUnfollowed>()?;
                let pair = (follow.follower_id, follow.followed_id, Change::Remove);
                self.follows.push(pair);
            }
            event_type::USER_DELETED => {
                self.deleted_users
                    .push(event.data::<UserDeleted>()?.user_id);
            }
            _ => {}
        }
        Ok(())
    }
}

fn push_post(posts: &mut BTreeMap<Uuid, Vec<String>>, author: Uuid, post_id: String) {
    if ObjectId::parse_str(&post_id).is_err() {
        tracing::warn!(%post_id, "ignoring a post event whose post id is not an ObjectId");
        return;
    }
    posts.entry(author).or_default().push(post_id);
}

/// Applies a batch of events to the timelines they concern: each author's new (or deleted)
/// posts go to their followers in one walk of the follower list, whatever their number.
#[tracing::instrument(skip_all, fields(events = batch.events.len()))]
pub async fn handle(feed: &HomeFeed, batch: &Batch) -> Result<Vec<Rejected>, HandlerError> {
    let (changes, rejected) = Changes::gather(batch);
    for (author, ids) in &changes.created {
        fan_out(feed, *author, ids, Change::Add).await?;
    }
    for (author, ids) in &changes.deleted {
        // Already done as the delete was answered; again here in case Redis missed that.
        let bodies: Vec<&str> = ids.iter().map(String::as_str).collect();
        feed.timelines
            .tombstone_posts(&bodies)
            .await
            .map_err(PostsError::from)?;
        fan_out(feed, *author, ids, Change::Remove).await?;
    }
    for &(follower, followed, change) in &changes.follows {
        // Done by the users service as the change committed; again here in case Redis missed it.
        feed.timelines
            .follows()
            .invalidate(follower)
            .await
            .map_err(PostsError::from)?;
        backfill(feed, follower, followed, change).await?;
    }
    for &user in &changes.deleted_users {
        let removed = feed
            .store
            .delete_all_by_author(user)
            .await
            .map_err(PostsError::from)?;
        tracing::info!(%user, removed, "deleted account's posts removed");
    }
    Ok(rejected)
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
    entries: &[String],
) -> Result<(), PostsError> {
    match change {
        Change::Add => timelines.add(readers, entries).await?,
        Change::Remove => timelines.remove(readers, entries).await?,
    }
    Ok(())
}

/// The posts `ids` of `author` go into (or out of) the timelines of the author and of each
/// follower, one page of followers at a time.
async fn fan_out(
    feed: &HomeFeed,
    author: Uuid,
    ids: &[String],
    change: Change,
) -> Result<(), PostsError> {
    let entries: Vec<String> = ids.iter().map(|id| entry(id, author)).collect();
    apply(&feed.timelines, change, &[author], &entries).await?;
    let mut followers = feed.graph.users().followers(author);
    let mut readers = 0usize;
    while let Some(page) = followers.next_page().await? {
        apply(&feed.timelines, change, &page, &entries).await?;
        readers += page.len();
    }
    tracing::debug!(%author, posts = ids.len(), followers = readers, ?change, "fanned out");
    Ok(())
}

/// `follower`'s timeline gains the posts of `followed` that lie within it (those at or above its
/// floor, at most a timeline's capacity of them), or loses every post of `followed` it holds
/// (deleted ones too: a `post.deleted` handled after the unfollow no longer reaches this
/// follower).
async fn backfill(
    feed: &HomeFeed,
    follower: Uuid,
    followed: Uuid,
    change: Change,
) -> Result<(), PostsError> {
    if change == Change::Remove {
        return Ok(feed.timelines.remove_author(follower, followed).await?);
    }
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
    let entries: Vec<String> = feed
        .store
        .newest_ids_by_author(followed, lowest, capacity)
        .await?
        .into_iter()
        .map(|id| entry(&id.to_hex(), followed))
        .collect();
    apply(&feed.timelines, change, &[follower], &entries).await
}
