//! The posts outbox: events owed to RabbitMQ, kept inside the documents they are about (see
//! [`crate::store`] for why), and the relay's view of them.
//!
//! A write that gives a document a pending event also hands the event to this process's
//! [`OutboxTrail`], so the relay publishes it from memory instead of reading it back, and then
//! settles every document of the round with one conditional `updateMany`: the documents whose
//! only pending event is one just published lose their outbox fields (or, for a tombstone, go).
//! Anything less simple (a document that gained a second event meanwhile) takes the general path:
//! `$pull` exactly the published events, then settle what is left empty. Every write is
//! conditional on the document's pending list, so a delete racing the relay cannot lose an event.
//!
//! Documents this process was not told about (written by another replica, or left pending by a
//! process that died) are found by a sweep of the backlog through the partial index on
//! `pendingSince`, at start and every [`OUTBOX_SWEEP_INTERVAL`].

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use instaclone_shared::{events::EventEnvelope, outbox::OutboxStore};
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    error::StoreError,
    store::{PostStore, live},
};

/// How often the relay sweeps the whole backlog for documents it was not told about: written by
/// another replica, or left pending by a process that died before its relay ran.
pub const OUTBOX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Written-but-unrelayed events remembered at most; past that the next round sweeps.
const OUTBOX_HINTS_MAX: usize = 10_000;
/// Published events' documents are settled together once this many wait...
const SETTLE_BATCH: usize = 500;
/// ... or once the oldest has waited this long: settling is a write per document, and one
/// `updateMany` over many of them costs the server much less than many small ones. Until then
/// a published event is only remembered as such here (a crash in between republishes it, which
/// consumers absorb).
const SETTLE_DELAY: Duration = Duration::from_millis(100);

/// What this process knows about its own outbox: the events it just wrote into documents (so
/// the relay publishes them without reading them back) and which document each event the relay
/// handed out lives in (so marking them published touches only those).
#[derive(Debug)]
pub(crate) struct OutboxTrail {
    hints: Mutex<Vec<(ObjectId, EventEnvelope)>>,
    /// Set when hints were dropped for lack of room: sweep on the next round.
    overflowed: AtomicBool,
    last_sweep: Mutex<Option<Instant>>,
    handed_out: Mutex<HashMap<Uuid, ObjectId>>,
    unsettled: Mutex<Unsettled>,
}

/// Published events whose documents still carry them.
#[derive(Debug, Default)]
struct Unsettled {
    documents: Vec<ObjectId>,
    events: Vec<String>,
    since: Option<Instant>,
}

impl Unsettled {
    fn is_due(&self) -> bool {
        self.documents.len() >= SETTLE_BATCH
            || self.since.is_some_and(|at| at.elapsed() >= SETTLE_DELAY)
    }
}

impl OutboxTrail {
    pub(crate) fn new() -> Self {
        Self {
            hints: Mutex::new(Vec::new()),
            overflowed: AtomicBool::new(false),
            // The first round after a start sweeps: a previous process may have left a backlog.
            last_sweep: Mutex::new(None),
            handed_out: Mutex::new(HashMap::new()),
            unsettled: Mutex::new(Unsettled::default()),
        }
    }

    /// Takes the unsettled documents and their events, if settling is due (or `force`).
    fn take_unsettled(&self, force: bool) -> Option<(Vec<ObjectId>, Vec<String>)> {
        let mut unsettled = lock(&self.unsettled);
        if unsettled.documents.is_empty() || !(force || unsettled.is_due()) {
            return None;
        }
        let taken = std::mem::take(&mut *unsettled);
        let mut documents = taken.documents;
        documents.sort_unstable();
        documents.dedup();
        Some((documents, taken.events))
    }

    /// Gives documents back after a failed settle, to be tried again.
    fn keep_unsettled(&self, documents: Vec<ObjectId>, events: Vec<String>) {
        let mut unsettled = lock(&self.unsettled);
        unsettled.documents.extend(documents);
        unsettled.events.extend(events);
        unsettled.since.get_or_insert_with(Instant::now);
    }

    /// `event` is now pending in the document `id` (the write is committed).
    pub(crate) fn hint(&self, id: ObjectId, event: EventEnvelope) {
        let mut hints = lock(&self.hints);
        if hints.len() < OUTBOX_HINTS_MAX {
            hints.push((id, event));
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// The oldest `limit` hints. They stay until their events are marked published.
    fn peek_hints(&self, limit: usize) -> Vec<(ObjectId, EventEnvelope)> {
        lock(&self.hints).iter().take(limit).cloned().collect()
    }

    /// Forgets the hints of these published events.
    fn forget(&self, published: &HashSet<Uuid>) {
        lock(&self.hints).retain(|(_, event)| !published.contains(&event.id));
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

    /// Remembers which document each handed-out event lives in (replacing the last round's).
    fn hand_out<'a>(&self, events: impl IntoIterator<Item = (Uuid, ObjectId)> + 'a) {
        let mut handed_out = lock(&self.handed_out);
        handed_out.clear();
        handed_out.extend(events);
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; carry on.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Filter part that selects the outbox backlog through its partial index. A range on
/// `pendingSince` (always a time after 1970) rather than `$exists: true`: MongoDB reads the
/// partial index for either (a comparison implies existence), but the test server scans the
/// whole collection for `$exists`, which at a million posts made every relay round cost seconds.
/// (It also matches nothing for a bound before 1970, hence not `DateTime::MIN`.)
pub(crate) fn with_pending_events() -> Document {
    doc! { "pendingSince": { "$gte": bson::DateTime::from_millis(0) } }
}

/// An event as kept in a document's `pendingEvents` until the broker confirms it: its id (what
/// the relay `$pull`s by) and the envelope as the JSON it will be published as.
pub(crate) fn pending_event(event: &EventEnvelope) -> Result<Document, StoreError> {
    let json = String::from_utf8(event.to_vec())
        .map_err(|e| StoreError::Decode(format!("event {}: {e}", event.id)))?;
    Ok(doc! { "id": event.id.to_string(), "json": json })
}

/// How pending events were kept before: the envelope as a BSON document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyPendingEvent {
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    occurred_at: chrono::DateTime<chrono::Utc>,
    producer: String,
    data: serde_json::Value,
}

fn event_from_pending(stored: Document) -> Result<EventEnvelope, StoreError> {
    let undecodable = |e: &dyn std::fmt::Display| StoreError::Decode(format!("pending event: {e}"));
    if let Ok(json) = stored.get_str("json") {
        return EventEnvelope::from_slice(json.as_bytes()).map_err(|e| undecodable(&e));
    }
    let legacy: LegacyPendingEvent = bson::from_document(stored).map_err(|e| undecodable(&e))?;
    Ok(EventEnvelope {
        id: legacy.id,
        event_type: legacy.event_type,
        occurred_at: legacy.occurred_at,
        producer: legacy.producer,
        data: serde_json::value::to_raw_value(&legacy.data).map_err(|e| undecodable(&e))?,
    })
}

/// Outbox fields of a document, read by the sweep.
#[derive(Debug, Deserialize)]
struct PendingDocument {
    #[serde(rename = "_id")]
    id: ObjectId,
    #[serde(rename = "pendingEvents", default)]
    pending_events: Vec<Document>,
}

impl OutboxStore for PostStore {
    type Error = StoreError;

    /// The events this process wrote, from memory; when there are none, the whole backlog (in
    /// `pendingSince` order, through the partial index) every [`OUTBOX_SWEEP_INTERVAL`].
    async fn pending(&self, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let trail = self.outbox();
        self.settle_published(false).await?;
        let hinted = trail.peek_hints(limit);
        if !hinted.is_empty() {
            trail.hand_out(hinted.iter().map(|(document, event)| (event.id, *document)));
            return Ok(hinted.into_iter().map(|(_, event)| event).collect());
        }
        if !trail.sweep_due() {
            return Ok(Vec::new());
        }
        // What the sweep reads must not include what was just published.
        self.settle_published(true).await?;
        self.sweep(limit).await
    }

    /// Remembers the events as published (they are never handed out again) and settles their
    /// documents with the next batch (see [`SETTLE_DELAY`]).
    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let trail = self.outbox();
        {
            let handed_out = lock(&trail.handed_out);
            let mut unsettled = lock(&trail.unsettled);
            unsettled
                .documents
                .extend(ids.iter().filter_map(|id| handed_out.get(id).copied()));
            unsettled.events.extend(ids.iter().map(Uuid::to_string));
            unsettled.since.get_or_insert_with(Instant::now);
        }
        trail.forget(&ids.iter().copied().collect());
        self.settle_published(false).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.settle_published(true).await
    }
}

impl PostStore {
    /// Settles the documents of published events, when due (or `force`).
    async fn settle_published(&self, force: bool) -> Result<(), StoreError> {
        let Some((documents, events)) = self.outbox().take_unsettled(force) else {
            return Ok(());
        };
        let outcome = async {
            let settled = self.settle_single(&documents, &events).await?;
            if settled < documents.len() {
                self.pull_published(&documents, &events).await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if outcome.is_err() {
            self.outbox().keep_unsettled(documents, events);
        }
        outcome
    }

    /// Reads up to `limit` pending events of the whole backlog, oldest first.
    async fn sweep(&self, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let cursor = self
            .posts()
            .find(with_pending_events())
            .projection(doc! { "pendingEvents": 1 })
            .sort(doc! { "pendingSince": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        let mut events = Vec::new();
        let mut handed_out = Vec::new();
        // Left with an empty list by a process that stopped between `$pull` and settling.
        let mut emptied = Vec::new();
        for document in documents {
            let pending: PendingDocument =
                bson::from_document(document).map_err(|e| StoreError::Decode(e.to_string()))?;
            if pending.pending_events.is_empty() {
                emptied.push(pending.id);
            }
            for stored in pending.pending_events {
                match event_from_pending(stored) {
                    Ok(event) => {
                        handed_out.push((event.id, pending.id));
                        events.push(event);
                    }
                    // Cannot happen for documents this service wrote; never block the others.
                    Err(error) => tracing::error!(%error, "skipping an unreadable pending event"),
                }
            }
            if events.len() >= limit {
                break;
            }
        }
        self.outbox().hand_out(handed_out);
        self.settle_emptied(&emptied).await?;
        events.truncate(limit);
        Ok(events)
    }

    /// The common case in one write per kind of document: those of `documents` whose only
    /// pending event is one of `published` are settled (a live post loses its outbox fields, a
    /// tombstone goes). Returns how many were.
    async fn settle_single(
        &self,
        documents: &[ObjectId],
        published: &[String],
    ) -> Result<usize, StoreError> {
        if documents.is_empty() {
            return Ok(0);
        }
        let mut only_published = with_pending_events();
        only_published.insert("_id", doc! { "$in": documents });
        only_published.insert("pendingEvents", doc! { "$size": 1 });
        only_published.insert("pendingEvents.id", doc! { "$in": published });
        let mut live_ones = only_published.clone();
        live_ones.extend(live());
        let updated = self
            .posts()
            .update_many(
                live_ones,
                doc! { "$unset": { "pendingEvents": "", "pendingSince": "" } },
            )
            .await?;
        let mut settled = usize::try_from(updated.modified_count).unwrap_or(usize::MAX);
        if settled < documents.len() {
            let mut tombstones = only_published;
            tombstones.insert("deletedAt", doc! { "$exists": true });
            let deleted = self.posts().delete_many(tombstones).await?;
            settled += usize::try_from(deleted.deleted_count).unwrap_or(usize::MAX);
        }
        Ok(settled)
    }

    /// The general case: `$pull` exactly the published events from `documents`, then settle
    /// those left with nothing pending.
    async fn pull_published(
        &self,
        documents: &[ObjectId],
        published: &[String],
    ) -> Result<(), StoreError> {
        let mut filter = with_pending_events();
        filter.insert("_id", doc! { "$in": documents });
        filter.insert("pendingEvents.id", doc! { "$in": published });
        self.posts()
            .update_many(
                filter,
                doc! { "$pull": { "pendingEvents": { "id": { "$in": published } } } },
            )
            .await?;
        self.settle_emptied(documents).await
    }

    /// Ends the outbox state of those `documents` whose pending list is empty: a live post loses
    /// its outbox fields, a tombstone goes. Each write is conditional on the list being empty
    /// *now*, so an event pushed since the `$pull` (a delete right after the create was
    /// published) keeps its document pending.
    async fn settle_emptied(&self, documents: &[ObjectId]) -> Result<(), StoreError> {
        if documents.is_empty() {
            return Ok(());
        }
        let mut settled = with_pending_events();
        settled.insert("_id", doc! { "$in": documents });
        settled.insert("pendingEvents", doc! { "$size": 0 });
        let mut settled_live = settled.clone();
        settled_live.extend(live());
        self.posts()
            .update_many(
                settled_live,
                doc! { "$unset": { "pendingEvents": "", "pendingSince": "" } },
            )
            .await?;
        let mut settled_tombstones = settled;
        settled_tombstones.insert("deletedAt", doc! { "$exists": true });
        self.posts().delete_many(settled_tombstones).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SERVICE_NAME;
    use instaclone_shared::events::PostCreated;

    #[test]
    fn pending_events_round_trip_through_bson() {
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &PostCreated {
                post_id: ObjectId::new().to_hex(),
                author_id: Uuid::now_v7(),
                caption: Some("sunset 🌅".to_owned()),
                media_url: "https://cdn.example.com/1.jpg".to_owned(),
                created_at: chrono::Utc::now(),
            },
        )
        .unwrap();
        let stored = pending_event(&event).unwrap();
        // The relay `$pull`s by this field, so it must be the id as a plain string.
        assert_eq!(stored.get_str("id").unwrap(), event.id.to_string());
        assert_eq!(event_from_pending(stored).unwrap(), event);

        // Left pending by a version that kept the envelope as a document: still read.
        let legacy = doc! {
            "id": event.id.to_string(),
            "type": "post.created",
            "occurredAt": event.occurred_at.to_rfc3339(),
            "producer": SERVICE_NAME,
            "data": { "postId": "abc", "authorId": Uuid::nil().to_string() },
        };
        let read = event_from_pending(legacy).unwrap();
        assert_eq!(read.id, event.id);
        let data: serde_json::Value = serde_json::from_str(read.data.get()).unwrap();
        assert_eq!(data["postId"], "abc");
        assert_eq!(data["authorId"], Uuid::nil().to_string());
    }

    #[test]
    fn hints_are_handed_out_oldest_first_and_forgotten_once_published() {
        let trail = OutboxTrail::new();
        let events: Vec<EventEnvelope> = (0..3)
            .map(|_| {
                EventEnvelope::new(
                    SERVICE_NAME,
                    &instaclone_shared::events::PostDeleted {
                        post_id: ObjectId::new().to_hex(),
                        author_id: Uuid::now_v7(),
                    },
                )
                .unwrap()
            })
            .collect();
        for event in &events {
            trail.hint(ObjectId::new(), event.clone());
        }
        let first_two: Vec<Uuid> = trail.peek_hints(2).iter().map(|(_, e)| e.id).collect();
        assert_eq!(first_two, [events[0].id, events[1].id]);
        trail.forget(&first_two.into_iter().collect());
        let left: Vec<Uuid> = trail.peek_hints(10).iter().map(|(_, e)| e.id).collect();
        assert_eq!(left, [events[2].id]);
        assert!(trail.sweep_due(), "the first round sweeps");
        assert!(!trail.sweep_due(), "then not again before the interval");
    }
}
