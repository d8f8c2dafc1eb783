//! The values this service deals in, validated where they enter: notification kinds and their
//! payloads, notification ids from URLs, page sizes. Everything past the edge takes these types,
//! so a malformed id or an absurd page size cannot reach the database.

use std::fmt;

use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

use crate::error::NotificationsError;

/// What a notification is about; its `type` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// Someone started following the recipient.
    Follow,
    /// Someone the recipient follows published a post.
    PostCreated,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follow => "follow",
            Self::PostCreated => "post_created",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `data` object of a notification: `{followerId}` for a follow,
/// `{authorId, postId, caption, mediaUrl}` for a new post (the original's shapes).
///
/// Ids are kept as strings so they are stored and served exactly as the events carried them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotificationData {
    #[serde(rename_all = "camelCase")]
    PostCreated {
        author_id: String,
        post_id: String,
        caption: Option<String>,
        media_url: String,
    },
    #[serde(rename_all = "camelCase")]
    Follow { follower_id: String },
}

/// The human-readable line for a follow, naming the follower.
pub fn follow_message(follower_username: &str) -> String {
    format!("{follower_username} started following you")
}

/// The human-readable line for a new post, naming its author.
pub fn post_created_message(author_username: &str) -> String {
    format!("{author_username} shared a new post")
}

/// A notification's id as it appears in URLs and `before` cursors (a MongoDB ObjectId in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationId(ObjectId);

impl NotificationId {
    pub fn parse(raw: &str) -> Result<Self, NotificationsError> {
        ObjectId::parse_str(raw).map(Self).map_err(|_| {
            NotificationsError::InvalidInput(format!(
                "`{raw}` is not a notification id (24 hexadecimal characters)"
            ))
        })
    }

    pub fn object_id(self) -> ObjectId {
        self.0
    }
}

/// How many notifications one page of `GET /notifications/my` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    pub const DEFAULT: u32 = 20;
    /// The hard maximum page size.
    pub const MAX: u32 = 100;

    pub fn parse(raw: Option<u32>) -> Result<Self, NotificationsError> {
        match raw.unwrap_or(Self::DEFAULT) {
            limit @ 1..=Self::MAX => Ok(Self(limit)),
            other => Err(NotificationsError::InvalidInput(format!(
                "limit must be between 1 and {}, got {other}",
                Self::MAX
            ))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_the_original_field_names() {
        let follow = NotificationData::Follow {
            follower_id: "f".into(),
        };
        assert_eq!(
            serde_json::to_value(&follow).unwrap(),
            serde_json::json!({"followerId": "f"})
        );
        let post = NotificationData::PostCreated {
            author_id: "a".into(),
            post_id: "p".into(),
            caption: None,
            media_url: "https://x/y.jpg".into(),
        };
        let json = serde_json::to_value(&post).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"authorId": "a", "postId": "p", "caption": null, "mediaUrl": "https://x/y.jpg"})
        );
        let back: NotificationData = serde_json::from_value(json).unwrap();
        assert_eq!(back, post);
    }

    #[test]
    fn ids_and_limits_are_validated() {
        assert!(NotificationId::parse("65f0c0ffee0000000000abcd").is_ok());
        assert!(NotificationId::parse("nope").is_err());
        assert!(NotificationId::parse("65f0c0ffee0000000000abcdz").is_err());
        assert_eq!(PageLimit::parse(None).unwrap().get(), 20);
        assert_eq!(PageLimit::parse(Some(100)).unwrap().get(), 100);
        assert!(PageLimit::parse(Some(0)).is_err());
        assert!(PageLimit::parse(Some(101)).is_err());
    }
}
