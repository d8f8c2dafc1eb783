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
//! The relay ([`OutboxStore`]) finds documents with something pending through a partial index on
//! `pendingSince`, publishes with confirms, then `$pull`s exactly the published events. A
//! document whose pending list became empty loses its outbox fields, or, if it is a tombstone, is
//! removed: only once `post.deleted` is confirmed does the post really disappear, so the event can
//! never be lost with it. Every step is a conditional single-document write, so a delete racing
//! with the relay cannot lose an event (the `$size: 0` condition fails when one was just pushed).
//!
//! Lists read the `{userId: 1, _id: -1}` index: one author's posts are one index range, and a
//! feed over many authors is a merge of those ranges (`$in` + sort on `_id`, in chunks of at most
//! [`AUTHORS_PER_QUERY`] authors), so a page costs about `limit` documents per chunk plus one
//! index probe per author, however many posts the store holds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use instaclone_shared::{
    events::{EventEnvelope, PostCreated, PostDeleted},
    outbox::OutboxStore,
};
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostView {
    #[serde(rename = "_id")]
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
    outbox: Arc<OutboxTrail>,
}

/// How often the relay sweeps the whole backlog for documents it was not told about: written by
/// another replica, or left pending by a process that died before its relay ran.
pub const OUTBOX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Written-but-unrelayed documents remembered at most; past that the next round sweeps.
const OUTBOX_HINTS_MAX: usize = 10_000;

/// What this process knows about its own outbox: the documents it just gave a pending event
/// (so the relay reads them by `_id`, not by a backlog query, which the test server can only
/// answer with a collection scan) and which document each event the relay handed out lives in
/// (so marking them published touches only those).
#[derive(Debug)]
struct OutboxTrail {
    hints: Mutex<Vec<ObjectId>>,
    /// Set when hints were dropped for lack of room: sweep on the next round.
    overflowed: AtomicBool,
    last_sweep: Mutex<Option<Instant>>,
    handed_out: Mutex<HashMap<Uuid, ObjectId>>,
}

impl OutboxTrail {
    fn new() -> Self {
        Self {
            hints: Mutex::new(Vec::new()),
            overflowed: AtomicBool::new(false),
            // The first round after a start sweeps: a previous process may have left a backlog.
            last_sweep: Mutex::new(None),
            handed_out: Mutex::new(HashMap::new()),
        }
    }

    fn hint(&self, id: ObjectId) {
        let mut hints = lock(&self.hints);
        if hints.len() < OUTBOX_HINTS_MAX {
            hints.push(id);
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// The oldest `limit` hints. They stay until their documents are found settled.
    fn peek_hints(&self, limit: usize) -> Vec<ObjectId> {
        lock(&self.hints).iter().take(limit).copied().collect()
    }

    /// Forgets hints whose documents have nothing pending any more.
    fn forget(&self, settled: &[ObjectId]) {
        if !settled.is_empty() {
            lock(&self.hints).retain(|id| !settled.contains(id));
        }
    }

    /// Whether a sweep is due now; if so, it counts as done from now on.
    fn sweep_due(&self) -> bool {
        let mut last = lock(&self.last_sweep);
        let due = self.overflowed.swap(false, Ordering::Relaxed)
            || last.is_none_or(|at| at.elapsed() >= OUTBOX_SWEEP_INTERVAL);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; carry on.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fields a read never returns: the outbox and the tombstone mark.
fn public_projection() -> Document {
    doc! { "pendingEvents": 0, "pendingSince": 0, "deletedAt": 0 }
}

/// Filter part that hides tombstones from every read.
fn live() -> Document {
    doc! { "deletedAt": { "$exists": false } }
}

/// Filter part that selects the outbox backlog through its partial index. A range on
/// `pendingSince` (always a time after 1970) rather than `$exists: true`: MongoDB reads the
/// partial index for either (a comparison implies existence), but the test server scans the
/// whole collection for `$exists`, which at a million posts made every relay round cost seconds.
/// (It also matches nothing for a bound before 1970, hence not `DateTime::MIN`.)
fn with_pending_events() -> Document {
    doc! { "pendingSince": { "$gte": bson::DateTime::from_millis(0) } }
}

fn to_chrono(at: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or_default()
}

/// Now, at the millisecond precision BSON dates keep, so the event and the document agree.
fn now_millis() -> (DateTime<Utc>, bson::DateTime) {
    let stored = bson::DateTime::from_millis(Utc::now().timestamp_millis());
    (to_chrono(stored), stored)
}

/// An event as kept in a document's `pendingEvents` until the broker confirms it.
fn pending_event(event: &EventEnvelope) -> Result<Document, StoreError> {
    Ok(bson::to_document(event)?)
}

fn event_from_pending(stored: Document) -> Result<EventEnvelope, StoreError> {
    bson::from_document(stored).map_err(|e| StoreError::Decode(format!("pending event: {e}")))
}

impl PostStore {
    pub fn new(database: &mongodb::Database) -> Self {
        Self {
            posts: database.collection(POSTS_COLLECTION),
            outbox: Arc::new(OutboxTrail::new()),
        }
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
            "pendingEvents": [pending_event(&event)?],
            "pendingSince": stored_now,
        };
        self.posts.insert_one(document).await?;
        self.outbox.hint(id);
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
            "$push": { "pendingEvents": pending_event(&event)? },
            "$min": { "pendingSince": stored_now },
        };
        let result = self.posts.update_one(filter, update).await?;
        if result.matched_count == 0 {
            // Deleted by a concurrent request between our read and our update.
            return Ok(DeleteOutcome::NotFound);
        }
        self.outbox.hint(id.object_id());
        Ok(DeleteOutcome::Deleted(post))
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

/// Outbox fields of a document, read by the relay.
#[derive(Debug, Deserialize)]
struct PendingDocument {
    #[serde(rename = "_id")]
    id: ObjectId,
    #[serde(rename = "pendingEvents", default)]
    pending_events: Vec<Document>,
}

impl OutboxStore for PostStore {
    type Error = StoreError;

    /// The hinted documents' events, read by `_id`; when there are none, the whole backlog (in
    /// `pendingSince` order, through the partial index) every [`OUTBOX_SWEEP_INTERVAL`].
    async fn pending(&self, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let hinted = self.outbox.peek_hints(limit);
        let mut filter = with_pending_events();
        if !hinted.is_empty() {
            filter.insert("_id", doc! { "$in": &hinted });
        } else if !self.outbox.sweep_due() {
            return Ok(Vec::new());
        }
        let cursor = self
            .posts
            .find(filter)
            .projection(doc! { "pendingEvents": 1 })
            .sort(doc! { "pendingSince": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        let mut events = Vec::new();
        // Left with an empty list by a process that stopped between `$pull` and settling.
        let mut emptied = Vec::new();
        {
            let mut handed_out = lock(&self.outbox.handed_out);
            handed_out.clear();
            for document in documents {
                let pending: PendingDocument =
                    bson::from_document(document).map_err(|e| StoreError::Decode(e.to_string()))?;
                if pending.pending_events.is_empty() {
                    emptied.push(pending.id);
                }
                for stored in pending.pending_events {
                    match event_from_pending(stored) {
                        Ok(event) => {
                            handed_out.insert(event.id, pending.id);
                            events.push(event);
                        }
                        // Cannot happen for documents this service wrote; never block the others.
                        Err(error) => {
                            tracing::error!(%error, "skipping an unreadable pending event")
                        }
                    }
                }
                if events.len() >= limit {
                    break;
                }
            }
        }
        self.settle(&emptied).await?;
        // Hinted documents the query did not return were settled (by another replica's relay).
        let returned: Vec<ObjectId> = lock(&self.outbox.handed_out).values().copied().collect();
        let gone: Vec<ObjectId> = hinted
            .into_iter()
            .filter(|id| !returned.contains(id))
            .collect();
        self.outbox.forget(&gone);
        events.truncate(limit);
        Ok(events)
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let documents: Vec<ObjectId> = {
            let handed_out = lock(&self.outbox.handed_out);
            let mut documents: Vec<ObjectId> = ids
                .iter()
                .filter_map(|id| handed_out.get(id).copied())
                .collect();
            documents.sort_unstable();
            documents.dedup();
            documents
        };
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut filter = with_pending_events();
        filter.insert("_id", doc! { "$in": &documents });
        filter.insert("pendingEvents.id", doc! { "$in": &ids });
        self.posts
            .update_many(
                filter,
                doc! { "$pull": { "pendingEvents": { "id": { "$in": &ids } } } },
            )
            .await?;
        // Their hints stay: the next `pending` finds which of them still hold an event (a
        // delete may have pushed one since) and forgets the rest.
        self.settle(&documents).await
    }
}

impl PostStore {
    /// Ends the outbox state of those `documents` whose pending list is empty: a live post loses
    /// its outbox fields, a tombstone goes. Each write is conditional on the list being empty
    /// *now*, so an event pushed since the `$pull` (a delete right after the create was
    /// published) keeps its document pending.
    async fn settle(&self, documents: &[ObjectId]) -> Result<(), StoreError> {
        if documents.is_empty() {
            return Ok(());
        }
        let mut settled = with_pending_events();
        settled.insert("_id", doc! { "$in": documents });
        settled.insert("pendingEvents", doc! { "$size": 0 });
        let mut settled_live = settled.clone();
        settled_live.extend(live());
        self.posts
            .update_many(
                settled_live,
                doc! { "$unset": { "pendingEvents": "", "pendingSince": "" } },
            )
            .await?;
        let mut settled_tombstones = settled;
        settled_tombstones.insert("deletedAt", doc! { "$exists": true });
        self.posts.delete_many(settled_tombstones).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_events_round_trip_through_bson() {
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &PostCreated {
                post_id: ObjectId::new().to_hex(),
                author_id: Uuid::now_v7(),
                caption: Some("sunset 🌅".to_owned()),
                media_url: "https://cdn.example.com/1.jpg".to_owned(),
                created_at: now_millis().0,
            },
        )
        .unwrap();
        let stored = pending_event(&event).unwrap();
        // The relay `$pull`s by this field, so it must be the id as a plain string.
        assert_eq!(stored.get_str("id").unwrap(), event.id.to_string());
        assert_eq!(event_from_pending(stored).unwrap(), event);
    }
}
