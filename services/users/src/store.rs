//! Every PostgreSQL statement of the service, as runtime-checked queries (`query_as` with
//! `FromRow` rows), so the crate builds without a database.
//!
//! Follow changes, their counters and their outbox event are written in one transaction that
//! first locks both users' rows in id order, so opposite follows between the same two users
//! cannot deadlock. Pages are keyset pages over the follow row's UUID v7 id, served from the
//! `(followed_id, id DESC)` / `(follower_id, id DESC)` indexes: a page costs the same for the
//! first follower and the 100,000th.

use chrono::{DateTime, Utc};
use instaclone_shared::events::{EventEnvelope, UserDeleted, UserFollowed, UserUnfollowed};
use sqlx::{FromRow, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    SERVICE_NAME,
    domain::{Email, PasswordHash, SearchQuery, Username},
    error::{UsersError, conflict_from, unique_violation},
};

/// Generated usernames tried (the plain one, then random suffixes) before giving up with 409.
const USERNAME_ATTEMPTS: usize = 5;

/// The largest UUID: "before the end" for the first page of a newest-first list.
const UUID_MAX: Uuid = Uuid::max();

const USER_COLUMNS: &str = "u.id, u.email, u.username, u.display_name, u.bio, u.avatar_url, \
     u.password_hash, u.followers_count, u.following_count, u.posts_count, u.created_at, \
     u.updated_at";

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub password_hash: String,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A follow edge as stored.
#[derive(Debug, Clone, FromRow)]
pub struct FollowRow {
    pub id: Uuid,
    pub follower_id: Uuid,
    pub followed_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// One entry of an id page: the follow row's id (the keyset) and the other user's id.
#[derive(Debug, Clone, FromRow)]
pub struct EdgeRow {
    pub follow_id: Uuid,
    pub user_id: Uuid,
}

/// Which side of the graph a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Users following the subject.
    Followers,
    /// Users the subject follows.
    Following,
}

impl Direction {
    /// (column holding the subject, column holding the listed user).
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Self::Followers => ("followed_id", "follower_id"),
            Self::Following => ("follower_id", "followed_id"),
        }
    }
}

/// What a profile update changes; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Default)]
pub struct ProfileChanges {
    pub username: Option<Username>,
    pub display_name: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates an account. Without a username one is generated from the email, with a random
    /// suffix when the plain one is taken.
    pub async fn create_user(
        &self,
        email: &Email,
        username: Option<&Username>,
        password_hash: &PasswordHash,
    ) -> Result<UserRow, UsersError> {
        if let Some(username) = username {
            return self
                .insert_user(email, username, password_hash)
                .await
                .map_err(conflict_from);
        }
        let generated = Username::from_email(email);
        let mut candidate = generated.clone();
        for _ in 0..USERNAME_ATTEMPTS {
            match self.insert_user(email, &candidate, password_hash).await {
                Ok(user) => return Ok(user),
                Err(error) if unique_violation(&error) == Some("users_username_key") => {
                    candidate = generated.with_random_suffix();
                }
                Err(error) => return Err(conflict_from(error)),
            }
        }
        Err(UsersError::UsernameTaken)
    }

    async fn insert_user(
        &self,
        email: &Email,
        username: &Username,
        password_hash: &PasswordHash,
    ) -> Result<UserRow, sqlx::Error> {
        sqlx::query_as::<_, UserRow>(&format!(
            "INSERT INTO users AS u (id, email, username, password_hash) VALUES ($1, $2, $3, $4) \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(email.as_str())
        .bind(username.as_str())
        .bind(password_hash.as_str())
        .fetch_one(&self.pool)
        .await
    }

    pub async fn find_by_email(&self, email: &Email) -> Result<Option<UserRow>, UsersError> {
        Ok(sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE lower(u.email) = lower($1)"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn get_user(&self, id: Uuid) -> Result<Option<UserRow>, UsersError> {
        Ok(sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes the account: every follow edge it is part of (each other user's counter adjusted
    /// and a `user.unfollowed` written, so followers' feeds and caches forget it), then the user,
    /// with a `user.deleted` for what other services keep of it; one transaction. `false` when
    /// there is no such user.
    pub async fn delete_user(&self, id: Uuid) -> Result<bool, UsersError> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        let edges: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "DELETE FROM follows WHERE follower_id = $1 OR followed_id = $1 \
             RETURNING follower_id, followed_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let followed: Vec<Uuid> = edges
            .iter()
            .filter(|(f, _)| *f == id)
            .map(|(_, d)| *d)
            .collect();
        let followers: Vec<Uuid> = edges
            .iter()
            .filter(|(_, d)| *d == id)
            .map(|(f, _)| *f)
            .collect();
        sqlx::query(
            "UPDATE users SET \
                 followers_count = followers_count - CASE WHEN id = ANY($1) THEN 1 ELSE 0 END, \
                 following_count = following_count - CASE WHEN id = ANY($2) THEN 1 ELSE 0 END \
             WHERE id = ANY($1) OR id = ANY($2)",
        )
        .bind(&followed)
        .bind(&followers)
        .execute(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(edges.len() + 1);
        for (follower_id, followed_id) in edges {
            events.push(EventEnvelope::new(
                SERVICE_NAME,
                &UserUnfollowed {
                    follower_id,
                    followed_id,
                },
            )?);
        }
        events.push(EventEnvelope::new(
            SERVICE_NAME,
            &UserDeleted { user_id: id },
        )?);
        insert_outbox_batch(&mut tx, &events).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the user's password hash; `false` when there is no such user.
    pub async fn set_password_hash(
        &self,
        id: Uuid,
        password_hash: &PasswordHash,
    ) -> Result<bool, UsersError> {
        let updated =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(password_hash.as_str())
                .execute(&self.pool)
                .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn user_exists(&self, id: Uuid) -> Result<bool, UsersError> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn update_profile(
        &self,
        id: Uuid,
        changes: &ProfileChanges,
    ) -> Result<Option<UserRow>, UsersError> {
        sqlx::query_as::<_, UserRow>(&format!(
            "UPDATE users AS u SET \
                 username = COALESCE($2, u.username), \
                 display_name = CASE WHEN $3 THEN $4 ELSE u.display_name END, \
                 bio = CASE WHEN $5 THEN $6 ELSE u.bio END, \
                 avatar_url = CASE WHEN $7 THEN $8 ELSE u.avatar_url END, \
                 updated_at = now() \
             WHERE u.id = $1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id)
        .bind(changes.username.as_ref().map(Username::as_str))
        .bind(changes.display_name.is_some())
        .bind(changes.display_name.clone().flatten())
        .bind(changes.bio.is_some())
        .bind(changes.bio.clone().flatten())
        .bind(changes.avatar_url.is_some())
        .bind(changes.avatar_url.clone().flatten())
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict_from)
    }

    /// `follower` follows `followed`: the edge, both counters and a `user.followed` event, in one
    /// transaction.
    pub async fn follow(&self, follower: Uuid, followed: Uuid) -> Result<FollowRow, UsersError> {
        if follower == followed {
            return Err(UsersError::SelfFollow);
        }
        let mut tx = self.pool.begin().await?;
        let users = lock_pair(&mut tx, follower, followed).await?;
        let follower_username = users
            .iter()
            .find(|(id, _)| *id == follower)
            .map(|(_, username)| username.clone())
            .ok_or(UsersError::UserNotFound)?;
        if !users.iter().any(|(id, _)| *id == followed) {
            return Err(UsersError::UserNotFound);
        }
        let edge = sqlx::query_as::<_, FollowRow>(
            "INSERT INTO follows (id, follower_id, followed_id) VALUES ($1, $2, $3) \
             ON CONFLICT (follower_id, followed_id) DO NOTHING \
             RETURNING id, follower_id, followed_id, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(follower)
        .bind(followed)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match &e {
            // The followed user vanished between the check and the insert.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => UsersError::UserNotFound,
            _ => UsersError::Database(e),
        })?
        .ok_or(UsersError::AlreadyFollowing)?;
        adjust_counters(&mut tx, follower, followed, 1).await?;
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &UserFollowed {
                follower_id: follower,
                followed_id: followed,
                follower_username,
            },
        )?;
        insert_outbox(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(edge)
    }

    /// Removes the edge, its counters and records a `user.unfollowed` event, in one transaction.
    pub async fn unfollow(&self, follower: Uuid, followed: Uuid) -> Result<FollowRow, UsersError> {
        if follower == followed {
            return Err(UsersError::SelfUnfollow);
        }
        let mut tx = self.pool.begin().await?;
        lock_pair(&mut tx, follower, followed).await?;
        let edge = sqlx::query_as::<_, FollowRow>(
            "DELETE FROM follows WHERE follower_id = $1 AND followed_id = $2 \
             RETURNING id, follower_id, followed_id, created_at",
        )
        .bind(follower)
        .bind(followed)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(UsersError::NotFollowing)?;
        adjust_counters(&mut tx, follower, followed, -1).await?;
        let event = EventEnvelope::new(
            SERVICE_NAME,
            &UserUnfollowed {
                follower_id: follower,
                followed_id: followed,
            },
        )?;
        insert_outbox(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(edge)
    }

    /// Up to `limit` edges of `subject` in `direction`, newest first, strictly after the follow
    /// row `after` (an id from a previous page). `None` when `subject` does not exist.
    pub async fn edge_page(
        &self,
        subject: Uuid,
        direction: Direction,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<EdgeRow>>, UsersError> {
        let (subject_column, listed_column) = direction.columns();
        let rows = sqlx::query_as::<_, EdgeRow>(&format!(
            "SELECT id AS follow_id, {listed_column} AS user_id FROM follows \
             WHERE {subject_column} = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        ))
        .bind(subject)
        .bind(after.unwrap_or(UUID_MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() && !self.user_exists(subject).await? {
            return Ok(None);
        }
        Ok(Some(rows))
    }

    /// Up to `limit` users in `subject`'s `direction` list, newest follow first, after the user
    /// `cursor` (the last user of the previous page). `None` when `subject` does not exist.
    pub async fn user_page(
        &self,
        subject: Uuid,
        direction: Direction,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<UserRow>>, UsersError> {
        let (subject_column, listed_column) = direction.columns();
        let after = match cursor {
            None => UUID_MAX,
            Some(cursor_user) => sqlx::query_scalar::<_, Uuid>(&format!(
                "SELECT id FROM follows WHERE {subject_column} = $1 AND {listed_column} = $2"
            ))
            .bind(subject)
            .bind(cursor_user)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(UsersError::StaleCursor)?,
        };
        let rows = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM follows f JOIN users u ON u.id = f.{listed_column} \
             WHERE f.{subject_column} = $1 AND f.id < $2 ORDER BY f.id DESC LIMIT $3"
        ))
        .bind(subject)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() && !self.user_exists(subject).await? {
            return Ok(None);
        }
        Ok(Some(rows))
    }

    /// Users whose username or display name starts with or resembles `query`, best first:
    /// exact username, then prefix matches, then by trigram similarity, then by username. The
    /// page continues after the user `cursor` (the last user of the previous page).
    pub async fn search(
        &self,
        query: &SearchQuery,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<UserRow>, UsersError> {
        let rows = sqlx::query_as::<_, UserRow>(&format!(
            "WITH ranked AS ( \
                 SELECT {USER_COLUMNS}, \
                     CASE WHEN u.username = $1 THEN 0 \
                          WHEN u.username LIKE $2 OR lower(u.display_name) LIKE $2 THEN 1 \
                          ELSE 2 END AS rank_class, \
                     -GREATEST(similarity(u.username, $1), \
                               COALESCE(similarity(lower(u.display_name), $1), 0)) AS rank_distance \
                 FROM users u \
                 WHERE u.username LIKE $2 OR lower(u.display_name) LIKE $2 \
                    OR u.username % $1 OR lower(u.display_name) % $1 \
             ) \
             SELECT {USER_COLUMNS} FROM ranked u \
             WHERE $3::uuid IS NULL \
                OR (u.rank_class, u.rank_distance, u.username) > \
                   (SELECT c.rank_class, c.rank_distance, c.username FROM ranked c WHERE c.id = $3) \
             ORDER BY u.rank_class, u.rank_distance, u.username \
             LIMIT $4"
        ))
        .bind(query.as_str())
        .bind(query.prefix_pattern())
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Locks the two users' rows, in id order, and returns the ids and usernames of those that
/// exist. Taking both locks up front in one order is what keeps A-follows-B and B-follows-A at
/// the same moment from deadlocking on the counter updates.
async fn lock_pair(
    tx: &mut Transaction<'static, Postgres>,
    follower: Uuid,
    followed: Uuid,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, username FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(vec![follower, followed])
    .fetch_all(&mut **tx)
    .await
}

/// Adds `delta` to the follower's following count and the followed user's followers count
/// (both rows are already locked by [`lock_pair`]).
async fn adjust_counters(
    tx: &mut Transaction<'static, Postgres>,
    follower: Uuid,
    followed: Uuid,
    delta: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET \
             following_count = following_count + CASE WHEN id = $1 THEN $3 ELSE 0 END, \
             followers_count = followers_count + CASE WHEN id = $2 THEN $3 ELSE 0 END \
         WHERE id IN ($1, $2)",
    )
    .bind(follower)
    .bind(followed)
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Many events in one statement.
async fn insert_outbox_batch(
    tx: &mut Transaction<'static, Postgres>,
    events: &[EventEnvelope],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    let bodies: Vec<String> = events
        .iter()
        .map(|event| String::from_utf8(event.to_vec()).unwrap_or_default())
        .collect();
    sqlx::query("INSERT INTO outbox (id, event) SELECT * FROM UNNEST($1::uuid[], $2::jsonb[])")
        .bind(ids)
        .bind(bodies)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_outbox(
    tx: &mut Transaction<'static, Postgres>,
    event: &EventEnvelope,
) -> Result<(), sqlx::Error> {
    let json = String::from_utf8(event.to_vec()).unwrap_or_default();
    sqlx::query("INSERT INTO outbox (id, event) VALUES ($1, $2::jsonb)")
        .bind(event.id)
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
