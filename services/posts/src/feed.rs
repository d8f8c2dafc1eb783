//! The home feed: a Redis timeline per reader (fan-out on write), MongoDB below it.
//!
//! A feed page is "the newest `limit` posts, older than the cursor, written by the reader or by
//! anyone they follow". Computing that from MongoDB alone costs a merge over every followed
//! author's index range on each request. So each reader has a home timeline
//! ([`crate::timeline`]): entries for their newest posts, written when a post is created
//! ([`crate::events`]). A page above the timeline's floor is then one Redis script (which also
//! drops the posts of accounts no longer followed, from the reader's cached follow set) and one
//! `MGET` of the posts' cached bodies: no MongoDB query and no call to the users service, however
//! many posts the store holds or how many accounts the reader follows.
//!
//! The timeline is a cache, so the rules that make the feed correct do not depend on it:
//!
//! - **Who counts** is decided at read time, from the reader's follow set: cached in Redis,
//!   loaded from the users service on a miss, and invalidated by the users service as each follow
//!   or unfollow commits ([`instaclone_shared::follow_cache`]). An unfollow is visible on the
//!   next request; a follow as soon as its `user.followed` event has added the account's recent
//!   posts (milliseconds).
//! - **What exists** is decided by MongoDB: a deleted post's cached body becomes a tombstone as
//!   the delete is answered, and a body missing from the cache is read from the live posts, so a
//!   deleted post disappears on the next request, whatever the timeline still holds.
//! - **Below the floor** (older than the timeline reaches, or after a trim), and whenever Redis
//!   cannot be read, the page comes from MongoDB (`userId $in` over the same authors, the
//!   fan-out-on-read query), so deep pages are complete and a Redis outage slows the feed rather
//!   than breaking it.
//! - **No timeline yet** (first read, or Redis lost it): it is rebuilt from each source's newest
//!   posts before the page is served.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt, stream};
use instaclone_shared::{follow_cache::FollowCache, users_internal::UsersClient};
use mongodb::bson::oid::ObjectId;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{
    domain::{PageRequest, PostId},
    error::{PostsError, StoreError},
    store::{PostStore, PostView},
    timeline::{
        COMPLETE, DELETED, Filter, HomeTimelines, TimelineWindow, entry, entry_post_id, post_id_of,
    },
};

/// At most this many followed accounts feed one home timeline (the most recently followed ones,
/// as the users service lists them newest first). Bounds the work per request and per rebuild.
pub const MAX_FEED_SOURCES: usize = 10_000;
/// A rebuild reads at least this many of each source's newest posts.
pub const REBUILD_MIN_POSTS_PER_SOURCE: usize = 20;
/// Sources a rebuild reads at once.
const REBUILD_CONCURRENCY: usize = 16;

/// One post of a page, as the JSON the API returns.
pub type FeedPost = Box<RawValue>;

/// Reads the follow graph: the reader's follow set from the cache, else from the users service.
#[derive(Clone, Debug)]
pub struct FollowGraph {
    users: UsersClient,
    cache: FollowCache,
}

impl FollowGraph {
    pub fn new(users: UsersClient, cache: FollowCache) -> Self {
        Self { users, cache }
    }

    /// Ids of the accounts `user` follows, at most [`MAX_FEED_SOURCES`], from the users service.
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

    /// Reads `user`'s follow set from the users service and caches it (unless it changed
    /// meanwhile, see [`FollowCache`]). Returns it, and whether it is now cached.
    pub async fn load(&self, user: Uuid) -> Result<(Vec<Uuid>, bool), PostsError> {
        let generation = self.cache.generation(user).await;
        let followed = self.following(user).await?;
        let cached = match generation {
            Ok(generation) => match self.cache.store(user, &generation, &followed).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(%user, %error, "could not cache the follow set");
                    false
                }
            },
            Err(error) => {
                tracing::warn!(%user, %error, "follow set cache unreadable");
                false
            }
        };
        Ok((followed, cached))
    }

    /// The reader and everyone they follow, sorted (for `binary_search`) and without repeats:
    /// from the cache when it has them, else from the users service (then cached).
    pub async fn sources(&self, reader: Uuid) -> Result<Vec<Uuid>, PostsError> {
        let cached = match self.cache.followed(reader).await {
            Ok(cached) => cached,
            Err(error) => {
                tracing::warn!(%reader, %error, "follow set cache unreadable");
                None
            }
        };
        let followed = match cached {
            Some(followed) => followed,
            None => self.load(reader).await?.0,
        };
        Ok(with_reader(followed, reader))
    }

    pub fn users(&self) -> &UsersClient {
        &self.users
    }
}

fn with_reader(mut followed: Vec<Uuid>, reader: Uuid) -> Vec<Uuid> {
    followed.push(reader);
    followed.sort_unstable();
    followed.dedup();
    followed
}

/// Everything a feed read needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HomeFeed {
    pub store: PostStore,
    pub graph: FollowGraph,
    pub timelines: HomeTimelines,
}

/// Where a page read stands: what it has, where it continues, and what it knows.
struct PageRead {
    reader: Uuid,
    limit: usize,
    posts: Vec<FeedPost>,
    /// Bound of the next timeline read: a post id or an entry, exclusive.
    cursor: Option<String>,
    /// The reader and the accounts they follow, once needed.
    sources: Option<Vec<Uuid>>,
    filter: Filter,
    rebuilt: bool,
    /// Redis failed this request: the rest of it does without (no waiting on it again).
    redis_down: bool,
}

impl PageRead {
    /// The cursor as a post id, for MongoDB.
    fn cursor_id(&self) -> Option<ObjectId> {
        self.cursor
            .as_deref()
            .and_then(entry_post_id)
            .map(PostId::object_id)
    }
}

impl HomeFeed {
    /// One page of `reader`'s home feed.
    pub async fn page(&self, reader: Uuid, page: PageRequest) -> Result<Vec<FeedPost>, PostsError> {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut read = PageRead {
            reader,
            limit,
            posts: Vec::with_capacity(limit),
            cursor: page.before.map(|id| id.to_string()),
            sources: None,
            filter: Filter::FollowSet,
            rebuilt: false,
            redis_down: false,
        };
        while read.posts.len() < limit {
            let wanted = limit - read.posts.len();
            let window = self
                .timelines
                .read(reader, read.cursor.as_deref(), wanted, read.filter)
                .await;
            let window = match window {
                Ok(window) => window,
                Err(error) => {
                    tracing::warn!(%reader, %error, "home timeline unreadable; reading MongoDB");
                    read.redis_down = true;
                    return self.finish_from_store(read, None).await;
                }
            };
            match window {
                TimelineWindow::Missing if !read.rebuilt => {
                    read.rebuilt = true;
                    let sources = self.sources(&mut read).await?;
                    if let Err(error) = self.rebuild(reader, &sources).await {
                        tracing::warn!(%reader, %error, "home timeline rebuild failed");
                    }
                }
                // Still missing right after a rebuild (Redis lost it, or another request's
                // rebuild is running): this page comes from MongoDB.
                TimelineWindow::Missing => return self.finish_from_store(read, None).await,
                // Invalidated again right after loading: this page checks what it loaded.
                TimelineWindow::NoFollowSet if read.sources.is_some() => read.filter = Filter::None,
                TimelineWindow::NoFollowSet => {
                    let (followed, cached) = self.graph.load(reader).await?;
                    read.sources = Some(with_reader(followed, reader));
                    if !cached {
                        // Changed while it loaded (or Redis refused it): check here instead.
                        read.filter = Filter::None;
                    }
                }
                TimelineWindow::Entries {
                    floor,
                    reached_floor,
                    last,
                    entries,
                } => {
                    let entries = self.accepted(&read, entries);
                    let found = self.bodies(&entries).await?;
                    read.posts
                        .extend(found.into_iter().take(limit - read.posts.len()));
                    let exhausted = last.is_none();
                    if let Some(last) = last {
                        read.cursor = Some(last);
                    }
                    if reached_floor {
                        if floor == COMPLETE {
                            break;
                        }
                        let floor = ObjectId::parse_str(&floor).map_err(|e| {
                            StoreError::Decode(format!("home timeline floor `{floor}`: {e}"))
                        })?;
                        return self.finish_from_store(read, Some(floor)).await;
                    }
                    if exhausted {
                        break;
                    }
                }
            }
        }
        Ok(read.posts)
    }

    /// The entries of `entries` whose author counts (already so when Redis filtered them).
    fn accepted(&self, read: &PageRead, entries: Vec<String>) -> Vec<String> {
        match (&read.filter, &read.sources) {
            (Filter::None, Some(sources)) => entries
                .into_iter()
                .filter(|entry| {
                    entry
                        .get(25..)
                        .and_then(|author| author.parse::<Uuid>().ok())
                        .is_some_and(|author| sources.binary_search(&author).is_ok())
                })
                .collect(),
            _ => entries,
        }
    }

    async fn sources(&self, read: &mut PageRead) -> Result<Vec<Uuid>, PostsError> {
        if let Some(sources) = &read.sources {
            return Ok(sources.clone());
        }
        let sources = if read.redis_down {
            with_reader(self.graph.following(read.reader).await?, read.reader)
        } else {
            self.graph.sources(read.reader).await?
        };
        read.sources = Some(sources.clone());
        Ok(sources)
    }

    /// The posts of these entries, in order, from the body cache; the ones it lacks from
    /// MongoDB (then cached). Deleted posts are left out.
    async fn bodies(&self, entries: &[String]) -> Result<Vec<FeedPost>, PostsError> {
        let ids: Vec<&str> = entries.iter().map(|entry| post_id_of(entry)).collect();
        let cached = match self.timelines.posts(&ids).await {
            Ok(cached) => cached,
            Err(error) => {
                tracing::warn!(%error, "post cache unreadable; reading MongoDB");
                vec![None; ids.len()]
            }
        };
        let missing: Vec<&str> = ids
            .iter()
            .zip(&cached)
            .filter(|(_, body)| body.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut fetched = self.fetch(&missing).await?;
        let mut posts = Vec::with_capacity(ids.len());
        for (id, body) in ids.iter().zip(cached) {
            let body = match body {
                Some(body) if body == DELETED => continue,
                Some(body) => body,
                None => match fetched.remove(*id) {
                    Some(body) => body,
                    None => continue,
                },
            };
            match RawValue::from_string(body) {
                Ok(post) => posts.push(post),
                Err(error) => tracing::warn!(%id, %error, "skipping a malformed cached post"),
            }
        }
        Ok(posts)
    }

    /// Reads `ids` from the live posts and caches what it finds (and tombstones what it does
    /// not: deleted posts). Returns the bodies by id.
    async fn fetch(&self, ids: &[&str]) -> Result<HashMap<String, String>, PostsError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let object_ids: Vec<ObjectId> = ids
            .iter()
            .filter_map(|id| ObjectId::parse_str(id).ok())
            .collect();
        let mut bodies = HashMap::new();
        for post in self.store.live_posts_by_ids(&object_ids).await? {
            let body = serde_json::to_string(&post)
                .map_err(|e| StoreError::Decode(format!("post {}: {e}", post.id)))?;
            bodies.insert(post.id, body);
        }
        let fill: Vec<(&str, String)> = ids
            .iter()
            .map(|id| {
                let body = bodies.get(*id).cloned();
                (*id, body.unwrap_or_else(|| DELETED.to_owned()))
            })
            .collect();
        if let Err(error) = self.timelines.cache_posts(&fill, false).await {
            tracing::warn!(%error, "could not cache posts read from MongoDB");
        }
        Ok(bodies)
    }

    /// Fills the rest of the page from MongoDB with posts older than both the cursor and `floor`.
    async fn finish_from_store(
        &self,
        mut read: PageRead,
        floor: Option<ObjectId>,
    ) -> Result<Vec<FeedPost>, PostsError> {
        let before = match (read.cursor_id(), floor) {
            (Some(cursor), Some(floor)) => Some(cursor.min(floor)),
            (cursor, floor) => cursor.or(floor),
        };
        let rest = PageRequest {
            limit: u32::try_from(read.limit - read.posts.len()).unwrap_or(u32::MAX),
            before: before.map(PostId::new),
        };
        if rest.limit > 0 {
            let sources = self.sources(&mut read).await?;
            for post in self.store.page_by_authors(&sources, rest).await? {
                read.posts.push(to_raw(&post)?);
            }
        }
        Ok(read.posts)
    }

    /// Builds `reader`'s timeline from the newest posts of each source.
    ///
    /// Every source contributes its newest `n` posts; a source that has more is complete only
    /// down to its `n`-th, so the timeline is complete down to the highest of those points (its
    /// floor), and entries below it are dropped. New posts that arrive while the sources are read
    /// are added by the fan-out, because `begin_rebuild` made the timeline exist first.
    ///
    /// Single-flight per reader, across requests and replicas: the rebuild runs only for the
    /// caller whose claim (`SET NX`) succeeds; the others return `false` at once and serve their
    /// page from MongoDB, so a burst of reads of a reader without a timeline costs one rebuild,
    /// not one per read (each up to one query per followed account).
    pub async fn rebuild(&self, reader: Uuid, sources: &[Uuid]) -> Result<bool, PostsError> {
        if !self.timelines.begin_rebuild(reader).await? {
            ::metrics::counter!("posts_timeline_rebuilds_total", "outcome" => "joined")
                .increment(1);
            return Ok(false);
        }
        ::metrics::counter!("posts_timeline_rebuilds_total", "outcome" => "ran").increment(1);
        let built = self.build_claimed(reader, sources).await;
        if built.is_err()
            && let Err(error) = self.timelines.abandon_rebuild(reader).await
        {
            tracing::warn!(%reader, %error, "cannot release a failed rebuild's claim");
        }
        built.map(|()| true)
    }

    /// The rebuild itself, once claimed.
    async fn build_claimed(&self, reader: Uuid, sources: &[Uuid]) -> Result<(), PostsError> {
        let capacity = self.timelines.settings().capacity.get();
        let per_source = (capacity / sources.len().max(1)).max(REBUILD_MIN_POSTS_PER_SOURCE);
        let newest: Vec<(Uuid, Vec<ObjectId>)> = stream::iter(sources.iter().copied())
            .map(|source| async move {
                let ids = self
                    .store
                    .newest_ids_by_author(source, None, per_source)
                    .await?;
                Ok::<_, StoreError>((source, ids))
            })
            .buffer_unordered(REBUILD_CONCURRENCY)
            .try_collect()
            .await?;
        let floor = newest
            .iter()
            .filter(|(_, ids)| ids.len() >= per_source)
            .filter_map(|(_, ids)| ids.last())
            .max()
            .map_or_else(|| COMPLETE.to_owned(), |id| id.to_hex());
        let entries: Vec<String> = newest
            .into_iter()
            .flat_map(|(author, ids)| ids.into_iter().map(move |id| (author, id.to_hex())))
            .filter(|(_, id)| *id >= floor)
            .map(|(author, id)| entry(&id, author))
            .collect();
        self.timelines
            .finish_rebuild(reader, &floor, &entries)
            .await?;
        tracing::debug!(%reader, sources = sources.len(), entries = entries.len(), %floor, "rebuilt home timeline");
        Ok(())
    }
}

/// A post as the raw JSON of a page.
pub fn to_raw(post: &PostView) -> Result<FeedPost, StoreError> {
    serde_json::value::to_raw_value(post)
        .map_err(|e| StoreError::Decode(format!("post {}: {e}", post.id)))
}
