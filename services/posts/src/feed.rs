//! The home feed: fan-out on read.
//!
//! A feed page is "the newest `limit` posts, older than the cursor, written by the caller or by
//! anyone they follow". The follow graph belongs to the users service, so each feed request asks
//! it for the caller's followed ids (pages of [`MAX_ID_PAGE`], usually one call), then runs one
//! MongoDB query `userId $in [caller, followed...]` sorted by `_id` descending on the
//! `{userId: 1, _id: -1}` index. Nothing is precomputed, so a follow, an unfollow or a delete is
//! visible on the very next request, and there is no timeline store to keep in step or rebuild.
//! docs/posts.md explains the choice against a Redis home timeline, with measurements.

use instaclone_shared::clients::{MAX_ID_PAGE, UsersClient};
use uuid::Uuid;

use crate::{
    domain::PageRequest,
    error::PostsError,
    store::{PostStore, PostView},
};

/// At most this many followed accounts feed one home timeline (the most recently followed ones,
/// as the users service lists them newest first). Bounds the `$in` list and the work per request.
pub const MAX_FEED_SOURCES: usize = 10_000;

/// Reads the caller's follow graph from the users service.
#[derive(Clone, Debug)]
pub struct FollowGraph {
    users: UsersClient,
}

impl FollowGraph {
    pub fn new(users: UsersClient) -> Self {
        Self { users }
    }

    /// Ids of the accounts `user` follows, at most [`MAX_FEED_SOURCES`]. A user the users service
    /// does not know follows nobody.
    pub async fn following(&self, user: Uuid) -> Result<Vec<Uuid>, PostsError> {
        let mut followed = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match self
                .users
                .following_page(user, cursor.as_deref(), MAX_ID_PAGE)
                .await
            {
                Ok(page) => page,
                Err(instaclone_shared::clients::ClientError::NotFound) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            followed.extend(page.ids);
            match page.next_cursor {
                Some(next) if followed.len() < MAX_FEED_SOURCES => cursor = Some(next),
                _ => break,
            }
        }
        followed.truncate(MAX_FEED_SOURCES);
        Ok(followed)
    }
}

/// One page of `user`'s home feed.
pub async fn home_feed_page(
    store: &PostStore,
    graph: &FollowGraph,
    user: Uuid,
    page: PageRequest,
) -> Result<Vec<PostView>, PostsError> {
    let mut authors = graph.following(user).await?;
    authors.push(user);
    authors.sort_unstable();
    authors.dedup();
    Ok(store.page_by_authors(&authors, page).await?)
}
