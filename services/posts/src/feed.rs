//! The home feed: a Redis timeline per reader (fan-out on write), MongoDB below it.
//!
//! A feed page is "the newest `limit` posts, older than the cursor, written by the reader or by
//! anyone they follow". Computing that from MongoDB alone costs a merge over every followed
//! author's index range on each request; on a server without that merge (the test server here)
//! it costs every followed author's whole history. So each reader has a home timeline
//! ([`crate::timeline`]): the ids of their newest posts, written when a post is created
//! ([`crate::events`]). A page is then one Redis read and one `_id $in` fetch of about `limit`
//! documents, however many posts the store holds or how many accounts the reader follows.
//!
//! The timeline is a cache, so the rules that make the feed correct do not depend on it:
//!
//! - **Who counts** is decided at read time: the followed ids come from the users service on
//!   every request, and a timeline entry by anyone else (an account unfollowed a moment ago) is
//!   skipped. An unfollow is visible on the next request; a follow as soon as its
//!   `user.followed` event has added the account's recent posts (milliseconds).
//! - **What exists** is decided by MongoDB: entries are fetched by id from the live posts, so a
//!   deleted post disappears on the next request, whatever the timeline still holds.
//! - **Below the floor** (older than the timeline reaches, or after a trim), and whenever Redis
//!   cannot be read, the page comes from MongoDB (`userId $in` over the same authors, the
//!   fan-out-on-read query), so deep pages are complete and a Redis outage slows the feed rather
//!   than breaking it.
//! - **No timeline yet** (first read, or Redis lost it): it is rebuilt from each source's newest
//!   posts before the page is served.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt, stream};
use instaclone_shared::clients::UsersClient;
use mongodb::bson::oid::ObjectId;
use uuid::Uuid;

use crate::{
    domain::{PageRequest, PostId},
    error::{PostsError, StoreError},
    store::{PostStore, PostView},
    timeline::{COMPLETE, HomeTimelines, TimelineWindow},
};

/// At most this many followed accounts feed one home timeline (the most recently followed ones,
/// as the users service lists them newest first). Bounds the work per request and per rebuild.
pub const MAX_FEED_SOURCES: usize = 10_000;
/// A rebuild reads at least this many of each source's newest posts.
pub const REBUILD_MIN_POSTS_PER_SOURCE: usize = 20;
/// Sources a rebuild reads at once.
const REBUILD_CONCURRENCY: usize = 16;

/// Reads the follow graph from the users service.
#[derive(Clone, Debug)]
pub struct FollowGraph {
    users: UsersClient,
}

impl FollowGraph {
    pub fn new(users: UsersClient) -> Self {
        Self { users }
    }

    /// Ids of the accounts `user` follows, at most [`MAX_FEED_SOURCES`].
    pub async fn following(&self, user: Uuid) -> Result<Vec<Uuid>, PostsError> {
        let mut followed = Vec::new();
        let mut pages = self.users.following(user);
        while followed.len() < MAX_FEED_SOURCES {
            let Some(ids) = pages.next_page().await? else {
                break;
            };
            followed.extend(ids);
        }
        followed.truncate(MAX_FEED_SOURCES);
        Ok(followed)
    }

    /// The reader and everyone they follow, sorted (for `binary_search`) and without repeats.
    pub async fn sources(&self, reader: Uuid) -> Result<Vec<Uuid>, PostsError> {
        let mut sources = self.following(reader).await?;
        sources.push(reader);
        sources.sort_unstable();
        sources.dedup();
        Ok(sources)
    }

    pub fn users(&self) -> &UsersClient {
        &self.users
    }
}

/// Everything a feed read needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HomeFeed {
    pub store: PostStore,
    pub graph: FollowGraph,
    pub timelines: HomeTimelines,
}

impl HomeFeed {
    /// One page of `reader`'s home feed.
    pub async fn page(&self, reader: Uuid, page: PageRequest) -> Result<Vec<PostView>, PostsError> {
        let sources = self.graph.sources(reader).await?;
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut posts = Vec::with_capacity(limit);
        let mut cursor = page.before;
        let mut rebuilt = false;
        while posts.len() < limit {
            let wanted = limit - posts.len();
            let window = match self.timelines.read(reader, cursor.as_ref(), wanted).await {
                Ok(window) => window,
                Err(error) => {
                    tracing::warn!(%reader, %error, "home timeline unreadable; reading MongoDB");
                    return self
                        .finish_from_store(&sources, cursor, None, posts, limit)
                        .await;
                }
            };
            let (floor, ids) = match window {
                TimelineWindow::Ids { floor, ids } => (floor, ids),
                TimelineWindow::Missing if !rebuilt => {
                    rebuilt = true;
                    if let Err(error) = self.rebuild(reader, &sources).await {
                        tracing::warn!(%reader, %error, "home timeline rebuild failed");
                    }
                    continue;
                }
                // Still missing right after a rebuild (Redis lost it, or another request's
                // rebuild is running): this page comes from MongoDB.
                TimelineWindow::Missing => {
                    return self
                        .finish_from_store(&sources, cursor, None, posts, limit)
                        .await;
                }
            };
            let reached_floor = ids.len() < wanted;
            let ids = parse_ids(&ids)?;
            if let Some(last) = ids.last() {
                cursor = Some(PostId::new(*last));
            }
            let mut found: HashMap<String, PostView> = self
                .store
                .live_posts_by_ids(&ids)
                .await?
                .into_iter()
                .map(|post| (post.id.clone(), post))
                .collect();
            for id in &ids {
                let Some(post) = found.remove(&id.to_hex()) else {
                    continue; // deleted since it was added
                };
                if sources.binary_search(&post.user_id).is_ok() && posts.len() < limit {
                    posts.push(post);
                }
            }
            if reached_floor {
                if floor == COMPLETE {
                    break;
                }
                let floor = parse_ids(std::slice::from_ref(&floor))?;
                return self
                    .finish_from_store(&sources, cursor, floor.first().copied(), posts, limit)
                    .await;
            }
        }
        Ok(posts)
    }

    /// Fills the rest of the page from MongoDB with posts older than both `cursor` and `floor`.
    async fn finish_from_store(
        &self,
        sources: &[Uuid],
        cursor: Option<PostId>,
        floor: Option<ObjectId>,
        mut posts: Vec<PostView>,
        limit: usize,
    ) -> Result<Vec<PostView>, PostsError> {
        let before = match (cursor.map(PostId::object_id), floor) {
            (Some(cursor), Some(floor)) => Some(cursor.min(floor)),
            (cursor, floor) => cursor.or(floor),
        };
        let rest = PageRequest {
            limit: u32::try_from(limit - posts.len()).unwrap_or(u32::MAX),
            before: before.map(PostId::new),
        };
        if rest.limit > 0 {
            posts.extend(self.store.page_by_authors(sources, rest).await?);
        }
        Ok(posts)
    }

    /// Builds `reader`'s timeline from the newest posts of each source.
    ///
    /// Every source contributes its newest `n` posts; a source that has more is complete only
    /// down to its `n`-th, so the timeline is complete down to the highest of those points (its
    /// floor), and entries below it are dropped. New posts that arrive while the sources are read
    /// are added by the fan-out, because `begin_rebuild` made the timeline exist first.
    pub async fn rebuild(&self, reader: Uuid, sources: &[Uuid]) -> Result<(), PostsError> {
        self.timelines.begin_rebuild(reader).await?;
        let capacity = self.timelines.settings().capacity.get();
        let per_source = (capacity / sources.len().max(1)).max(REBUILD_MIN_POSTS_PER_SOURCE);
        let newest: Vec<Vec<ObjectId>> = stream::iter(sources.iter().copied())
            .map(|source| self.store.newest_ids_by_author(source, None, per_source))
            .buffer_unordered(REBUILD_CONCURRENCY)
            .try_collect()
            .await?;
        let floor = newest
            .iter()
            .filter(|ids| ids.len() >= per_source)
            .filter_map(|ids| ids.last())
            .max()
            .map_or_else(|| COMPLETE.to_owned(), |id| id.to_hex());
        let ids: Vec<String> = newest
            .into_iter()
            .flatten()
            .map(|id| id.to_hex())
            .filter(|id| *id >= floor)
            .collect();
        self.timelines.finish_rebuild(reader, &floor, &ids).await?;
        tracing::debug!(%reader, sources = sources.len(), entries = ids.len(), %floor, "rebuilt home timeline");
        Ok(())
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<ObjectId>, StoreError> {
    ids.iter()
        .map(|id| {
            ObjectId::parse_str(id)
                .map_err(|e| StoreError::Decode(format!("home timeline entry `{id}`: {e}")))
        })
        .collect()
}
