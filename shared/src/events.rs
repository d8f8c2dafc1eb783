//! The event envelope and the payload of every event type.
//!
//! Events travel on one topic exchange with the event type as routing key. The envelope is
//! `{"id", "type", "occurredAt", "producer", "data"}`; `id` is a UUID v7, so ids sort by time and
//! consumers use it as their idempotency key. Payload field names are camelCase like the REST API.
//!
//! One message on the wire carries one envelope, or a JSON array of envelopes of one type (an
//! *event batch*, see [`encode_batch`]): producers that have many events at once (an outbox relay
//! round under load, a fan-out) publish them as one message, because the broker's cost is per
//! message and per queue, not per byte. Consumers read both forms with [`decode_batch`] and stay
//! idempotent per event id, so a batch redelivered, or republished with other members, is
//! harmless.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Routing keys (and `type` values) of every event.
pub mod event_type {
    pub const USER_FOLLOWED: &str = "user.followed";
    pub const USER_UNFOLLOWED: &str = "user.unfollowed";
    pub const USER_DELETED: &str = "user.deleted";
    pub const POST_CREATED: &str = "post.created";
    pub const POST_DELETED: &str = "post.deleted";
    pub const NOTIFICATION_CREATED: &str = "notification.created";
    pub const NOTIFICATIONS_READ: &str = "notifications.read";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub producer: String,
    /// The payload as it arrived (raw JSON): decoded only by the consumer that wants it, straight
    /// into its own type ([`EventEnvelope::data`]), instead of into a generic tree first. A
    /// batch of 250 notifications is 100 KB of JSON; building a tree of it for every consumer
    /// cost more CPU than the consumers' own work.
    pub data: Box<RawValue>,
}

impl PartialEq for EventEnvelope {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.event_type == other.event_type
            && self.occurred_at == other.occurred_at
            && self.producer == other.producer
            && self.data.get() == other.data.get()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("malformed event: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("expected a {expected} event, got {actual}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
}

/// A payload type knows its own routing key.
pub trait EventData: Serialize + DeserializeOwned {
    const TYPE: &'static str;
}

impl EventEnvelope {
    /// A new event with a fresh id, stamped now.
    pub fn new<T: EventData>(producer: &str, data: &T) -> Result<Self, EventError> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: T::TYPE.to_owned(),
            occurred_at: Utc::now(),
            producer: producer.to_owned(),
            data: serde_json::value::to_raw_value(data)?,
        })
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The events of one message body: a single envelope or an array of them.
    pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Self>, EventError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            Ok(serde_json::from_slice(bytes)?)
        } else {
            Ok(vec![Self::from_slice(bytes)?])
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising a struct of plain fields and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The typed payload, checking the event is of that type.
    pub fn data<T: EventData>(&self) -> Result<T, EventError> {
        if self.event_type != T::TYPE {
            return Err(EventError::WrongType {
                expected: T::TYPE,
                actual: self.event_type.clone(),
            });
        }
        Ok(serde_json::from_str(self.data.get())?)
    }
}

/// One message body for `events`: the envelope itself when there is one, else an array (the
/// caller keeps batches to events of one type, which is the message's routing key).
pub fn encode_batch(events: &[EventEnvelope]) -> Vec<u8> {
    match events {
        [one] => one.to_vec(),
        // Serialising plain structs and `Value`s cannot fail.
        many => serde_json::to_vec(many).unwrap_or_default(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserFollowed {
    pub follower_id: Uuid,
    pub followed_id: Uuid,
    /// So the notification can name the follower without asking the users service.
    pub follower_username: String,
}

impl EventData for UserFollowed {
    const TYPE: &'static str = event_type::USER_FOLLOWED;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserUnfollowed {
    pub follower_id: Uuid,
    pub followed_id: Uuid,
}

impl EventData for UserUnfollowed {
    const TYPE: &'static str = event_type::USER_UNFOLLOWED;
}

/// An account was deleted (its follows were removed first, each with its `user.unfollowed`):
/// what it owns elsewhere (posts, notification history) goes too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserDeleted {
    pub user_id: Uuid,
}

impl EventData for UserDeleted {
    const TYPE: &'static str = event_type::USER_DELETED;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostCreated {
    /// The post's id (a MongoDB ObjectId in hex).
    pub post_id: String,
    pub author_id: Uuid,
    pub caption: Option<String>,
    pub media_url: String,
    pub created_at: DateTime<Utc>,
}

impl EventData for PostCreated {
    const TYPE: &'static str = event_type::POST_CREATED;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostDeleted {
    pub post_id: String,
    pub author_id: Uuid,
}

impl EventData for PostDeleted {
    const TYPE: &'static str = event_type::POST_DELETED;
}

/// A notification as clients see it (REST and realtime alike).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Notification)]
pub struct NotificationView {
    #[serde(rename = "_id")]
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    pub id: String,
    /// The recipient.
    pub user_id: Uuid,
    /// `follow` or `post_created`.
    #[serde(rename = "type")]
    #[schema(example = "follow")]
    pub kind: String,
    pub message: String,
    /// `{followerId}` for follow, `{authorId, postId, caption, mediaUrl}` for post_created.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub read: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Notifications just stored, for the realtime hub. One event may carry many recipients' notifications
/// (a post's fan-out is emitted in batches); each carries its own `userId`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationCreated {
    pub notifications: Vec<NotificationView>,
}

impl EventData for NotificationCreated {
    const TYPE: &'static str = event_type::NOTIFICATION_CREATED;
}

/// A user marked notifications read (one, or all): their unread count is now `unread_count`.
/// The hub pushes it to every connection of the user, so every tab and device updates its badge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsRead {
    pub user_id: Uuid,
    pub unread_count: u64,
}

impl EventData for NotificationsRead {
    const TYPE: &'static str = event_type::NOTIFICATIONS_READ;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_contract_field_names() {
        let data = UserFollowed {
            follower_id: Uuid::now_v7(),
            followed_id: Uuid::now_v7(),
            follower_username: "ada".into(),
        };
        let event = EventEnvelope::new("users", &data).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&event.to_vec()).unwrap();
        for field in ["id", "type", "occurredAt", "producer", "data"] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["type"], "user.followed");
        assert_eq!(json["data"]["followerUsername"], "ada");
        assert_eq!(event.id.get_version_num(), 7);

        let back = EventEnvelope::from_slice(&event.to_vec()).unwrap();
        assert_eq!(back.data::<UserFollowed>().unwrap(), data);
        assert!(matches!(
            back.data::<PostCreated>(),
            Err(EventError::WrongType { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(EventEnvelope::from_slice(b"not json").is_err());
        assert!(EventEnvelope::from_slice(br#"{"id":"x"}"#).is_err());
        assert!(EventEnvelope::decode_batch(b"[1, 2]").is_err());
        assert!(EventEnvelope::decode_batch(b"").is_err());
    }

    #[test]
    fn a_message_carries_one_envelope_or_a_batch() {
        let events: Vec<EventEnvelope> = (0..3)
            .map(|n| {
                EventEnvelope::new(
                    "posts",
                    &PostDeleted {
                        post_id: format!("{n}"),
                        author_id: Uuid::now_v7(),
                    },
                )
                .unwrap()
            })
            .collect();
        let single = encode_batch(&events[..1]);
        assert_eq!(
            single,
            events[0].to_vec(),
            "a batch of one is the plain envelope"
        );
        assert_eq!(EventEnvelope::decode_batch(&single).unwrap(), events[..1]);
        let many = encode_batch(&events);
        assert_eq!(many.first(), Some(&b'['));
        assert_eq!(EventEnvelope::decode_batch(&many).unwrap(), events);
        let padded = [b" \n".as_slice(), &many].concat();
        assert_eq!(EventEnvelope::decode_batch(&padded).unwrap(), events);
    }
}
