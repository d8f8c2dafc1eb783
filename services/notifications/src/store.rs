//! Notifications and event progress in MongoDB (the service's own database).
//!
//! Two collections:
//! - `notifications`: one document per (event, recipient), whose `_id` is derived from the pair
//!   ([`notification_id`]). That is what makes every redelivery and replay harmless: a second
//!   insert of the same notification fails with a duplicate-key error on `_id`, which this module
//!   reads as "already stored" and answers with the stored document, so it can be emitted again.
//!   (An index on `{eventId, userId}` did this before; every notification paid for it on insert,
//!   about a quarter of the write. Deployments that have it keep it; it still holds.)
//! - `event_progress`: one document per handled event, holding how far a fan-out got (the users
//!   service's follower cursor after the last page that was stored *and* emitted) and whether it
//!   completed. A redelivered `post.created` resumes after the last finished page instead of
//!   starting over, and a completed event is skipped at once.
//!
//! Listing is keyset-paginated on `_id` (ObjectIds grow with time), newest first, served by the
//! `{userId, _id}` and `{userId, read, _id}` indexes.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, Document, doc, oid::ObjectId},
    error::ErrorKind,
    options::ReturnDocument,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::{NotificationData, NotificationId, NotificationKind, PageLimit},
    error::{DUPLICATE_KEY, NotificationsError},
};
use futures_util::TryStreamExt;
use instaclone_shared::events::NotificationView;

const NOTIFICATIONS: &str = "notifications";
const EVENT_PROGRESS: &str = "event_progress";

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The recipient (a UUID as text).
    pub user_id: String,
    /// The event this notification came from; with `user_id`, its identity.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub data: NotificationData,
    pub read: bool,
    pub created_at: bson::DateTime,
    pub updated_at: bson::DateTime,
}

/// The id of `recipient`'s notification of the event `event_id`, which occurred at
/// `occurred_at`: always the same for the same pair, so storing it twice is a duplicate key.
/// Like any ObjectId it starts with a time in seconds (the event's, so lists keep their newest
/// first order) followed by 8 bytes, here of SHA-256(event id, recipient): two different pairs of
/// the same second share an id with a probability of about 2^-64 per pair.
pub fn notification_id(event_id: Uuid, occurred_at: DateTime<Utc>, recipient: Uuid) -> ObjectId {
    let seconds = u32::try_from(occurred_at.timestamp()).unwrap_or_default();
    let pair = [event_id.as_bytes().as_slice(), recipient.as_bytes()].concat();
    let digest = ring::digest::digest(&ring::digest::SHA256, &pair);
    let mut bytes = [0_u8; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[4..].copy_from_slice(&digest.as_ref()[..8]);
    ObjectId::from_bytes(bytes)
}

/// The lowest ObjectId of the second `at` falls in: ids compare by their leading time, so
/// `_id >= first_id_at(t)` selects what was created from `t` on, through the `_id` index.
fn first_id_at(at: DateTime<Utc>) -> ObjectId {
    let seconds = u32::try_from(at.timestamp()).unwrap_or_default();
    let mut bytes = [0_u8; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

impl NotificationDocument {
    /// A new, unread notification for `recipient` of the event `event_id` (which occurred at
    /// `occurred_at`), stored at `now`.
    pub fn new(
        (event_id, occurred_at): (Uuid, DateTime<Utc>),
        recipient: Uuid,
        kind: NotificationKind,
        message: String,
        data: NotificationData,
        now: bson::DateTime,
    ) -> Self {
        Self {
            id: notification_id(event_id, occurred_at, recipient),
            user_id: recipient.to_string(),
            event_id: event_id.to_string(),
            kind: kind.as_str().to_owned(),
            message,
            data,
            read: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// The shape clients see, over REST and realtime alike.
    pub fn view(&self) -> Result<NotificationView, NotificationsError> {
        let corrupt = |what: &str| NotificationsError::Corrupt(format!("{} {what}", self.id));
        Ok(NotificationView {
            id: self.id.to_hex(),
            user_id: Uuid::parse_str(&self.user_id).map_err(|_| corrupt("userId"))?,
            kind: self.kind.clone(),
            message: self.message.clone(),
            data: serde_json::to_value(&self.data).map_err(|_| corrupt("data"))?,
            read: self.read,
            created_at: to_chrono(self.created_at),
            updated_at: to_chrono(self.updated_at),
        })
    }
}

fn to_chrono(time: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap_or_default()
}

/// How far the handling of one event got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventProgress {
    /// The event id.
    #[serde(rename = "_id")]
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Follower cursor to continue a fan-out from; `None` means from the start.
    pub cursor: Option<String>,
    /// Recipients handled so far (a page redone after an interruption counts again).
    pub stored: i64,
    pub completed: bool,
    pub updated_at: bson::DateTime,
}

/// One step of a fan-out, as [`NotificationStore::record_step`] records it.
#[derive(Debug, Clone, Copy)]
pub struct ProgressStep<'a> {
    /// Follower cursor after this step (`None`: from the start / nothing left).
    pub cursor: Option<&'a str>,
    /// Recipients each event handled in this step.
    pub stored: i64,
    pub completed: bool,
}

/// The positions of the documents an `insertMany` found already stored, when duplicates are all
/// that went wrong; `None` for any other failure.
fn duplicate_indexes(error: &mongodb::error::Error) -> Option<HashSet<usize>> {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure)
            if failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|e| e.iter().all(|w| w.code == DUPLICATE_KEY)) =>
        {
            Some(
                failure
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| w.index)
                    .collect(),
            )
        }
        _ => None,
    }
}

/// What one batch insert did.
#[derive(Debug, Default)]
pub struct StoredBatch {
    /// Every notification of the batch as stored, whether inserted now or found from before.
    pub notifications: Vec<NotificationDocument>,
    /// How many of them this call inserted.
    pub inserted: usize,
}

/// Which notifications `GET /notifications/my` returns.
#[derive(Debug, Clone, Copy)]
pub struct ListFilter {
    pub before: Option<NotificationId>,
    pub unread_only: bool,
    pub limit: PageLimit,
}

#[derive(Clone, Debug)]
pub struct NotificationStore {
    notifications: Collection<NotificationDocument>,
    progress: Collection<EventProgress>,
}

impl NotificationStore {
    pub fn new(database: &Database) -> Self {
        Self {
            notifications: database.collection(NOTIFICATIONS),
            progress: database.collection(EVENT_PROGRESS),
        }
    }

    /// Creates the indexes the lists rely on. Idempotent; run at startup.
    pub async fn ensure_indexes(&self) -> Result<(), NotificationsError> {
        let indexes = [
            IndexModel::builder()
                .keys(doc! { "userId": 1, "_id": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "userId": 1, "read": 1, "_id": -1 })
                .build(),
        ];
        self.notifications.create_indexes(indexes).await?;
        // For the retention of completed progress records.
        self.progress
            .create_index(IndexModel::builder().keys(doc! { "updatedAt": 1 }).build())
            .await?;
        Ok(())
    }

    /// Inserts `batch` (from one event or several) with one `insertMany`, tolerating
    /// notifications already stored by an earlier delivery: those are read back, so the caller
    /// gets the whole batch as stored.
    pub async fn insert_batch(
        &self,
        batch: Vec<NotificationDocument>,
    ) -> Result<StoredBatch, NotificationsError> {
        if batch.is_empty() {
            return Ok(StoredBatch::default());
        }
        let outcome = self.notifications.insert_many(&batch).ordered(false).await;
        let duplicates: HashSet<usize> = match outcome {
            Ok(_) => HashSet::new(),
            Err(error) => match duplicate_indexes(&error) {
                Some(indexes) => indexes,
                None => return Err(error.into()),
            },
        };
        if duplicates.is_empty() {
            let inserted = batch.len();
            return Ok(StoredBatch {
                notifications: batch,
                inserted,
            });
        }
        let (fresh, repeated): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .enumerate()
            .partition(|(index, _)| !duplicates.contains(index));
        let inserted = fresh.len();
        let stored_before: Vec<ObjectId> = repeated.into_iter().map(|(_, n)| n.id).collect();
        let mut notifications: Vec<NotificationDocument> =
            fresh.into_iter().map(|(_, n)| n).collect();
        let existing: Vec<NotificationDocument> = self
            .notifications
            .find(doc! { "_id": { "$in": stored_before } })
            .await?
            .try_collect()
            .await?;
        notifications.extend(existing);
        Ok(StoredBatch {
            notifications,
            inserted,
        })
    }

    /// The `(recipient, follower)` pairs among `pairs` that already have a follow notification
    /// created since `since` by an event other than the one now asking (`event_of` names the
    /// asking event of each pair), so a follow/unfollow cycle does not notify again.
    pub async fn recently_followed(
        &self,
        pairs: &[(Uuid, Uuid, Uuid)],
        since: DateTime<Utc>,
    ) -> Result<HashSet<(String, String)>, NotificationsError> {
        if pairs.is_empty() {
            return Ok(HashSet::new());
        }
        let recipients: Vec<String> = pairs.iter().map(|(r, _, _)| r.to_string()).collect();
        let followers: Vec<String> = pairs.iter().map(|(_, f, _)| f.to_string()).collect();
        let asking: HashSet<String> = pairs.iter().map(|(_, _, e)| e.to_string()).collect();
        let found: Vec<NotificationDocument> = self
            .notifications
            .find(doc! {
                "userId": { "$in": recipients },
                "_id": { "$gte": first_id_at(since) },
                "type": NotificationKind::Follow.as_str(),
                "data.followerId": { "$in": followers },
            })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .filter(|n| !asking.contains(&n.event_id))
            .filter_map(|n| match n.data {
                NotificationData::Follow { follower_id } => Some((n.user_id, follower_id)),
                NotificationData::PostCreated { .. } => None,
            })
            .collect())
    }

    /// Deletes every notification of `recipient` (their account was deleted); returns how many.
    pub async fn delete_history(&self, recipient: Uuid) -> Result<u64, NotificationsError> {
        Ok(self
            .notifications
            .delete_many(doc! { "userId": recipient.to_string() })
            .await?
            .deleted_count)
    }

    /// Deletes notifications created before `notifications_before` and the progress records of
    /// events completed before `progress_before`; returns how many of each.
    pub async fn delete_older_than(
        &self,
        notifications_before: DateTime<Utc>,
        progress_before: DateTime<Utc>,
    ) -> Result<(u64, u64), NotificationsError> {
        let notifications = self
            .notifications
            .delete_many(doc! { "_id": { "$lt": first_id_at(notifications_before) } })
            .await?
            .deleted_count;
        let progress = self
            .progress
            .delete_many(doc! {
                "completed": true,
                "updatedAt": { "$lt": bson::DateTime::from_millis(progress_before.timestamp_millis()) },
            })
            .await?
            .deleted_count;
        Ok((notifications, progress))
    }

    /// Progress of the event with this id, if any was recorded.
    pub async fn progress(
        &self,
        event_id: Uuid,
    ) -> Result<Option<EventProgress>, NotificationsError> {
        Ok(self
            .progress
            .find_one(doc! { "_id": event_id.to_string() })
            .await?)
    }

    /// Progress of those of `event_ids` that have any recorded, by event id: one query.
    pub async fn progress_of(
        &self,
        event_ids: &[Uuid],
    ) -> Result<HashMap<String, EventProgress>, NotificationsError> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = event_ids.iter().map(Uuid::to_string).collect();
        let found: Vec<EventProgress> = self
            .progress
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .into_iter()
            .map(|progress| (progress.event_id.clone(), progress))
            .collect())
    }

    /// Records how far an event got (upsert; later calls overwrite earlier ones).
    pub async fn save_progress(&self, progress: &EventProgress) -> Result<(), NotificationsError> {
        self.progress
            .replace_one(doc! { "_id": &progress.event_id }, progress)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Records one step of several events handled together: each of them handled `stored` more
    /// recipients and stands at `cursor` (`completed` when done). One write for all of them: an
    /// `insertMany` of new records when `first_step` (falling back to an update for any that
    /// exist already, say from a duplicate publish), else one `updateMany`.
    pub async fn record_step(
        &self,
        events: &[String],
        event_type: &str,
        step: ProgressStep<'_>,
        first_step: bool,
    ) -> Result<(), NotificationsError> {
        if events.is_empty() {
            return Ok(());
        }
        let now = bson::DateTime::now();
        let mut to_update: Vec<String> = Vec::new();
        if first_step {
            let records: Vec<EventProgress> = events
                .iter()
                .map(|id| EventProgress {
                    event_id: id.clone(),
                    event_type: event_type.to_owned(),
                    cursor: step.cursor.map(str::to_owned),
                    stored: step.stored,
                    completed: step.completed,
                    updated_at: now,
                })
                .collect();
            match self.progress.insert_many(&records).ordered(false).await {
                Ok(_) => return Ok(()),
                Err(error) => match duplicate_indexes(&error) {
                    Some(indexes) => {
                        to_update = indexes
                            .into_iter()
                            .filter_map(|index| events.get(index).cloned())
                            .collect();
                    }
                    None => return Err(error.into()),
                },
            }
        } else {
            to_update.extend(events.iter().cloned());
        }
        if to_update.is_empty() {
            return Ok(());
        }
        let cursor = step
            .cursor
            .map_or(Bson::Null, |c| Bson::String(c.to_owned()));
        self.progress
            .update_many(
                doc! { "_id": { "$in": to_update } },
                doc! {
                    "$set": { "cursor": cursor, "completed": step.completed, "updatedAt": now },
                    "$inc": { "stored": step.stored },
                },
            )
            .await?;
        Ok(())
    }

    /// The recipient's notifications, newest first.
    pub async fn list(
        &self,
        recipient: Uuid,
        filter: ListFilter,
    ) -> Result<Vec<NotificationDocument>, NotificationsError> {
        let mut query = doc! { "userId": recipient.to_string() };
        if filter.unread_only {
            query.insert("read", false);
        }
        if let Some(before) = filter.before {
            query.insert("_id", doc! { "$lt": before.object_id() });
        }
        Ok(self
            .notifications
            .find(query)
            .sort(doc! { "_id": -1 })
            .limit(i64::from(filter.limit.get()))
            .await?
            .try_collect()
            .await?)
    }

    pub async fn unread_count(&self, recipient: Uuid) -> Result<u64, NotificationsError> {
        Ok(self
            .notifications
            .count_documents(doc! { "userId": recipient.to_string(), "read": false })
            .await?)
    }

    /// Marks one of the recipient's notifications read. `NotFound` when it is not theirs
    /// (nothing is changed then); marking an already read one changes nothing either.
    pub async fn mark_read(
        &self,
        recipient: Uuid,
        id: NotificationId,
    ) -> Result<NotificationDocument, NotificationsError> {
        let owned = doc! { "_id": id.object_id(), "userId": recipient.to_string() };
        let mut unread = owned.clone();
        unread.insert("read", false);
        let updated = self
            .notifications
            .find_one_and_update(unread, mark_read_update())
            .return_document(ReturnDocument::After)
            .await?;
        match updated {
            Some(notification) => Ok(notification),
            None => self
                .notifications
                .find_one(owned)
                .await?
                .ok_or(NotificationsError::NotFound),
        }
    }

    /// Marks all of the recipient's notifications read; returns how many changed.
    pub async fn mark_all_read(&self, recipient: Uuid) -> Result<u64, NotificationsError> {
        let result = self
            .notifications
            .update_many(
                doc! { "userId": recipient.to_string(), "read": false },
                mark_read_update(),
            )
            .await?;
        Ok(result.modified_count)
    }
}

fn mark_read_update() -> Document {
    doc! { "$set": { "read": true, "updatedAt": bson::DateTime::now() } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_id_is_the_same_for_the_same_pair_only() {
        let (event, other_event) = (Uuid::now_v7(), Uuid::now_v7());
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let at = DateTime::from_timestamp(1_765_000_000, 0).unwrap();
        let id = notification_id(event, at, ada);
        assert_eq!(id, notification_id(event, at, ada));
        assert_ne!(id, notification_id(event, at, bob));
        assert_ne!(id, notification_id(other_event, at, ada));
        assert_eq!(id.timestamp().timestamp_millis(), 1_765_000_000_000);
        let later = notification_id(event, at + chrono::Duration::seconds(1), ada);
        assert!(later > id, "ids of later events sort after");
    }
}
