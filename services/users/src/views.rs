//! What the API returns, in the original's camelCase field names.

use chrono::{DateTime, Utc};
use instaclone_shared::users_internal::{UserCredentials, UserRecord};
use serde::Serialize;
use uuid::Uuid;

use crate::store::{FollowRow, UserRow};

impl UserRow {
    /// The shape other services see (includes the email, never the hash).
    pub fn into_record(self) -> UserRecord {
        UserRecord {
            id: self.id,
            email: self.email,
            username: self.username,
            display_name: self.display_name,
            bio: self.bio,
            avatar_url: self.avatar_url,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    pub fn into_credentials(self) -> UserCredentials {
        let password_hash = self.password_hash.clone();
        UserCredentials {
            user: self.into_record(),
            password_hash,
        }
    }

    /// The profile as `viewer` sees it: the email only when it is their own.
    pub fn into_profile(self, viewer: Option<Uuid>) -> Profile {
        let own = viewer == Some(self.id);
        Profile {
            id: self.id,
            email: own.then_some(self.email),
            username: self.username,
            display_name: self.display_name,
            bio: self.bio,
            avatar_url: self.avatar_url,
            followers_count: self.followers_count,
            following_count: self.following_count,
            posts_count: self.posts_count,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A user with their counts; other users' emails are left out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PublicProfile)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub id: Uuid,
    /// Shown to its owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Email)]
    pub email: Option<String>,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A follow edge, the result of follow and unfollow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowView {
    pub follower_id: Uuid,
    pub followed_id: Uuid,
    pub created_at: DateTime<Utc>,
}

impl From<FollowRow> for FollowView {
    fn from(row: FollowRow) -> Self {
        Self {
            follower_id: row.follower_id,
            followed_id: row.followed_id,
            created_at: row.created_at,
        }
    }
}
