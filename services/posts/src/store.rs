//! Posts in MongoDB, with their outbox inside each document.
//!
//! A standalone `mongod` (and the local test server) has no multi-document transactions, so the
//! outbox cannot be a second collection written "together" with the post. Instead an event that
//! is still owed to RabbitMQ lives *in the document it is about*, written by the same single-
//! document operation that changes the post, which MongoDB applies atomically:
//!
//! - create: one `insertOne` of the post carrying `pendingEvents: [post.created]` and
//!   `pendingSince`;
//! - delete: one `updateOne` that marks the post deleted (`deletedAt`, a tombstone hidden from
//!   every read) and pushes `post.deleted` onto `pendingEvents`.
//!
//! The relay ([`crate::outbox`]) publishes with confirms, then settles the published events'
//! documents: a document whose pending list became empty loses its outbox fields, or, if it is a
//! tombstone, is removed: only once `post.deleted` is confirmed does the post really disappear,
//! so the event can never be lost with it. Every step is conditional on the pending list, so a
//! delete racing with the relay cannot lose an event.
//!
//! New posts are written through a [`BatchWriter`]: concurrent creates share one `insertMany`,
//! and a create is one write before its `201`.
//!
//! Lists read the `{userId: 1, _id: -1}` index: one author's posts are one index range, and a
//! feed over many authors is a merge of those ranges (`$in` + sort on `_id`, in chunks of at most
//! [`AUTHORS_PER_QUERY`] authors), so a page costs about `limit` documents per chunk plus one
//! index probe per author, however many posts the store holds.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use instaclone_shared::events::{EventEnvelope, PostCreated, PostDeleted};
use mongodb::{
    Collection, IndexModel,
    bson::{self, Bson, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    SERVICE_NAME,
    domain::{Caption, MediaUrl, PageRequest, PostId},
    error::StoreError,
    outbox::{self, OutboxTrail},
    writer::BatchWriter,
};

/// The collection of posts in the service's own database.
pub const POSTS_COLLECTION: &str = "posts";
/// Name of the index every list query uses.
pub const AUTHOR_TIMELINE_INDEX: &str = "userId_1__id_-1";
/// Authors per feed query: below MongoDB's default `internalQueryMaxScansToExplode` (200), so
/// each query is a bounded merge of index ranges (see [`PostStore::page_by_authors`]).
pub const AUTHORS_PER_QUERY: usize = 150;
/// Name of the partial index the outbox relay uses.
pub const PENDING_EVENTS_INDEX: &str = "pendingSince_1_partial";

/// A post as clients see it: the original's shape `{_id, userId, caption, mediaUrl, createdAt,
/// updatedAt}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Post)]
pub struct PostView {
    #[serde(rename = "_id")]
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    pub id: String,
    pub user_id: Uuid,
    pub caption: Option<String>,
    pub media_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A post document as stored (the outbox fields are never read into it).
#[derive(Debug, Deserialize)]
struct StoredPost {
    #[serde(rename = "_id")]
    id: ObjectId,
    #[serde(rename = "userId")]
    user_id: String,
    #[serde(default)]
    caption: Option<String>,
    #[serde(rename = "mediaUrl")]
    media_url: String,
    #[serde(rename = "createdAt")]
    created_at: bson::DateTime,
    #[serde(rename = "updatedAt")]
    updated_at: bson::DateTime,
}

impl StoredPost {
    fn into_view(self) -> Result<PostView, StoreError> {
        let user_id = Uuid::parse_str(&self.user_id)
            .map_err(|e| StoreError::Decode(format!("post {} userId: {e}", self.id)))?;
        Ok(PostView {
            id: self.id.to_hex(),
            user_id,
            caption: self.caption,
            media_url: self.media_url,
            created_at: to_chrono(self.created_at),
            updated_at: to_chrono(self.updated_at),
        })
    }
}

/// Result of asking to delete a post.
#[derive(Debug)]
pub enum DeleteOutcome {
    /// Tombstoned with its `post.deleted` event pending; the post as it was.
    Deleted(PostView),
    NotFound,
    /// The post exists but belongs to someone else.
    NotAuthor,
}

/// Access to the posts collection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostStore {
    posts: Collection<Document>,
    writer: BatchWriter,
    outbox: Arc<OutboxTrail>,
}

/// Fields a read never returns: the outbox and the tombstone mark.
fn public_projection() -> Document {
    doc! { "pendingEvents": 0, "pendingSince": 0, "deletedAt": 0 }
}

/// Filter part that hides tombstones from every read.
pub(crate) fn live() -> Document {
    doc! { "deletedAt": { "$exists": false } }
}

fn to_chrono(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// Now, at the millisecond precision BSON dates keep, so the event and the document agree.
fn now_millis() -> (DateTime<Utc>, bson::DateTime) {
    let stored = bson::DateTime::from_millis(Utc::now().timestamp_millis());
    (to_chrono(stored), stored)
}

impl PostStore {
    /// The store of `database`'s posts; starts its batch writer on the current runtime.
    pub fn new(database: &mongodb::Database) -> Self {
        let posts = database.collection(POSTS_COLLECTION);
        Self {
            writer: BatchWriter::spawn(posts.clone()),
            posts,
            outbox: Arc::new(OutboxTrail::new()),
        }
    }

    pub(crate) fn posts(&self) -> &Collection<Document> {
        &self.posts
    }

    pub(crate) fn outbox(&self) -> &OutboxTrail {
        &self.outbox
    }

    /// Creates the indexes every query of this service needs. Idempotent; run at start.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let author_timeline = IndexModel::builder()
            .keys(doc! { "userId": 1, "_id": -1 })
            .options(
                IndexOptions::builder()
                    .name(AUTHOR_TIMELINE_INDEX.to_owned())
                    .build(),
            )
            .build();
        let pending = IndexModel::builder()
            .keys(doc! { "pendingSince": 1 })
            .options(
                IndexOptions::builder()
                    .name(PENDING_EVENTS_INDEX.to_owned())
                    .partial_filter_expression(doc! { "pendingSince": { "$exists": true } })
                    .build(),
            )
            .build();
        self.posts
            .create_indexes([author_timeline, pending])
            .await?;
        Ok(())
    }

    /// Stores a new post together with its pending `post.created` event.
    pub async fn create(
        &self,
        author: Uuid,
        caption: Option<Caption>,
        media_url: MediaUrl,
    ) -> Result<PostView, StoreError> {
        let id = ObjectId::new();
        let (now, stored_now) = now_millis();
        let view = PostView {
            id: id.to_hex(),
            user_id: author,
            caption: caption.map(Caption::into_inner),
            media_url: media_url.into_inner(),
            created_at: now,
            updated_at: now,
        };
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &PostCreated {
                post_id: view.id.clone(),
                author_id: author,
                caption: view.caption.clone(),
                media_url: view.media_url.clone(),
                created_at: now,
            },
        )?;
        let caption = view.caption.clone().map_or(Bson::Null, Bson::String);
        let document = doc! {
            "_id": id,
            "userId": author.to_string(),
            "caption": caption,
            "mediaUrl": &view.media_url,
            "createdAt": stored_now,
            "updatedAt": stored_now,
            "pendingEvents": [outbox::pending_event(&event)?],
            "pendingSince": stored_now,
        };
        self.writer.insert(document).await?;
        self.outbox.hint(id, event);
        Ok(view)
    }

    /// One post, unless it does not exist or is deleted.
    pub async fn get(&self, id: PostId) -> Result<Option<PostView>, StoreError> {
        let mut filter = live();
        filter.insert("_id", id.object_id());
        let found = self
            .posts
            .find_one(filter)
            .projection(public_projection())
            .await?;
        found.map(decode_post).transpose()
    }

    /// Tombstones the post if `caller` wrote it, with its pending `post.deleted` event, in one
    /// atomic update. The relay removes the document once the event is confirmed.
    pub async fn delete(&self, id: PostId, caller: Uuid) -> Result<DeleteOutcome, StoreError> {
        let Some(post) = self.get(id).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        if post.user_id != caller {
            return Ok(DeleteOutcome::NotAuthor);
        }
        let (_, stored_now) = now_millis();
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &PostDeleted {
                post_id: post.id.clone(),
                author_id: caller,
            },
        )?;
        let mut filter = live();
        filter.insert("_id", id.object_id());
        filter.insert("userId", caller.to_string());
        let update = doc! {
            "$set": { "deletedAt": stored_now },
            "$push": { "pendingEvents": outbox::pending_event(&event)? },
            "$min": { "pendingSince": stored_now },
        };
        let result = self.posts.update_one(filter, update).await?;
        if result.matched_count == 0 {
            // Deleted by a concurrent request between our read and our update.
            return Ok(DeleteOutcome::NotFound);
        }
        self.outbox.hint(id.object_id(), event);
        Ok(DeleteOutcome::Deleted(post))
    }

    /// Deletes every live post of `author` (their account was deleted; their followers' timelines
    /// were emptied of them by the `user.unfollowed` of each removed follow). Idempotent.
    pub async fn delete_all_by_author(&self, author: Uuid) -> Result<u64, StoreError> {
        let (_, stored_now) = now_millis();
        let mut filter = live();
        filter.insert("userId", author.to_string());
        let result = self
            .posts
            .update_many(filter, doc! { "$set": { "deletedAt": stored_now } })
            .await?;
        Ok(result.modified_count)
    }

    /// A page of the posts of `authors`, newest first (see [`PageRequest`]).
    ///
    /// MongoDB serves `userId $in [...]` sorted by `_id` with a merge of one index range per
    /// author (`SORT_MERGE`, stopping after `limit` documents), but only up to
    /// `internalQueryMaxScansToExplode` (200) ranges; past that it falls back to fetching every
    /// post of those authors and sorting them. So a long author list is split into chunks of
    /// [`AUTHORS_PER_QUERY`], each chunk gets its own bounded query (run concurrently), and the
    /// chunks' pages are merged here. Each chunk returns its newest `limit` posts below the
    /// cursor, so the newest `limit` of their union is exactly the page.
    pub async fn page_by_authors(
        &self,
        authors: &[Uuid],
        page: PageRequest,
    ) -> Result<Vec<PostView>, StoreError> {
        if authors.len() <= AUTHORS_PER_QUERY {
            return self.page_by_author_chunk(authors, page).await;
        }
        let pages = futures_util::future::try_join_all(
            authors
                .chunks(AUTHORS_PER_QUERY)
                .map(|chunk| self.page_by_author_chunk(chunk, page)),
        )
        .await?;
        let mut merged: Vec<PostView> = pages.into_iter().flatten().collect();
        // ObjectId hex strings sort like the ObjectIds: same length, big-endian digits.
        merged.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        merged.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        Ok(merged)
    }

    async fn page_by_author_chunk(
        &self,
        authors: &[Uuid],
        page: PageRequest,
    ) -> Result<Vec<PostView>, StoreError> {
        let mut filter = live();
        match authors {
            [] => return Ok(Vec::new()),
            [author] => filter.insert("userId", author.to_string()),
            many => {
                let ids: Vec<String> = many.iter().map(Uuid::to_string).collect();
                filter.insert("userId", doc! { "$in": ids })
            }
        };
        if let Some(before) = page.before {
            filter.insert("_id", doc! { "$lt": before.object_id() });
        }
        let cursor = self
            .posts
            .find(filter)
            .projection(public_projection())
            .sort(doc! { "_id": -1 })
            .limit(i64::from(page.limit))
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        documents.into_iter().map(decode_post).collect()
    }

    /// The ids of `author`'s newest live posts, at or above `lowest` when given, newest first.
    /// One range of the `{userId: 1, _id: -1}` index: the timelines' rebuild and follow backfill.
    pub async fn newest_ids_by_author(
        &self,
        author: Uuid,
        lowest: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StoreError> {
        let mut filter = live();
        filter.insert("userId", author.to_string());
        if let Some(lowest) = lowest {
            filter.insert("_id", doc! { "$gte": lowest });
        }
        let cursor = self
            .posts
            .find(filter)
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        documents
            .iter()
            .map(|document| {
                document
                    .get_object_id("_id")
                    .map_err(|e| StoreError::Decode(format!("post _id: {e}")))
            })
            .collect()
    }

    /// The live posts among `ids`, in no particular order (deleted and unknown ids are left out).
    pub async fn live_posts_by_ids(&self, ids: &[ObjectId]) -> Result<Vec<PostView>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut filter = live();
        filter.insert("_id", doc! { "$in": ids });
        let cursor = self
            .posts
            .find(filter)
            .projection(public_projection())
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        documents.into_iter().map(decode_post).collect()
    }

    /// Inserts already-built post documents as they are (benchmark seeding only: they carry no
    /// pending events, as if their `post.created` had long been published).
    pub async fn seed(&self, documents: Vec<Document>) -> Result<(), StoreError> {
        self.posts.insert_many(documents).ordered(false).await?;
        Ok(())
    }

    /// A post document for [`PostStore::seed`].
    pub fn seed_document(id: ObjectId, author: Uuid, caption: &str, media_url: &str) -> Document {
        let at = id.timestamp();
        doc! {
            "_id": id,
            "userId": author.to_string(),
            "caption": caption,
            "mediaUrl": media_url,
            "createdAt": at,
            "updatedAt": at,
        }
    }
}

fn decode_post(document: Document) -> Result<PostView, StoreError> {
    let stored: StoredPost =
        bson::from_document(document).map_err(|e| StoreError::Decode(e.to_string()))?;
    stored.into_view()
}
