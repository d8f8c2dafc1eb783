//! The users service's internal contract: the routes other services call, their types, and the
//! client they call them with (pooled connections, a timeout, the service credential). The
//! users service serves these types (`services/users/src/internal.rs`); auth, posts,
//! notifications and the gateway call them through [`UsersClient`].
//!
//! | route | result (`data` of the envelope) |
//! |---|---|
//! | `POST /internal/users` `{email, username?, passwordHash}` | 201 [`UserRecord`]; 409 taken; 400 invalid |
//! | `GET /internal/users/by-email?email=` | [`UserCredentials`]; 404 |
//! | `PUT /internal/users/{id}/password` `{passwordHash}` | [`UserRecord`]; 404 |
//! | `DELETE /internal/users/{id}` | `{id}`; 404 |
//! | `GET /internal/users/{id}` | [`UserRecord`]; 404 |
//! | `GET /internal/users/{id}/followers?limit=&cursor=` | [`IdPage`] of follower ids; 404 unknown user |
//! | `GET /internal/users/{id}/following?limit=&cursor=` | [`IdPage`] of followed ids; 404 unknown user |
//!
//! Id pages are keyset-paginated: pass `nextCursor` back as `cursor` until it is `null`. A page
//! holds at most [`MAX_ID_PAGE`] ids, so a user with 100,000 followers is streamed, never loaded
//! whole.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::auth::{INTERNAL_TOKEN_HEADER, InternalToken};

/// Largest id page the internal follower/following routes return.
pub const MAX_ID_PAGE: u32 = 5000;

/// A user as services see it (the public shape plus the email).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = User)]
pub struct UserRecord {
    pub id: Uuid,
    #[schema(format = Email)]
    pub email: String,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCredentials {
    pub user: UserRecord,
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdPage {
    pub ids: Vec<Uuid>,
    pub next_cursor: Option<String>,
}

/// The pages of one of a user's id lists, [`MAX_ID_PAGE`] ids at a time, newest first, so a
/// list of a million ids is streamed rather than loaded whole. A user the users service does not
/// know has an empty list (they follow nobody and nobody follows them).
#[derive(Debug)]
pub struct IdPages<'a> {
    client: &'a UsersClient,
    id: Uuid,
    list: &'static str,
    cursor: Option<String>,
    done: bool,
}

impl<'a> IdPages<'a> {
    fn new(client: &'a UsersClient, id: Uuid, list: &'static str) -> Self {
        Self {
            client,
            id,
            list,
            cursor: None,
            done: false,
        }
    }

    /// The next page, or `None` after the last one.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Uuid>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let page = match self
            .client
            .id_page(self.id, self.list, self.cursor.as_deref(), MAX_ID_PAGE)
            .await
        {
            Ok(page) => page,
            Err(ClientError::NotFound) => {
                self.done = true;
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        self.cursor = page.next_cursor;
        self.done = self.cursor.is_none();
        Ok(Some(page.ids))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 400: the request was invalid; the message says why.
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    /// 409: e.g. email or username taken; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The service is down, slow or failing; worth retrying later.
    #[error("{service} unavailable: {reason}")]
    Unavailable {
        service: &'static str,
        reason: String,
    },
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: serde_json::Value,
}

/// The users service's internal API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UsersClient {
    http: reqwest::Client,
    base_url: String,
    token: InternalToken,
}

impl UsersClient {
    /// The users service of `settings`, with the service credential (required: `needed_for`
    /// says in the startup error why the calling part needs it).
    pub fn from_settings(
        settings: &crate::config::Settings,
        needed_for: &str,
    ) -> Result<Self, crate::auth::KeyError> {
        let token = InternalToken::from_settings(&settings.internal, needed_for)?;
        Ok(Self::new(
            &settings.services.users,
            token,
            settings.internal.request_timeout,
        ))
    }

    pub fn new(base_url: &str, token: InternalToken, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub async fn create_user(&self, user: &NewUser) -> Result<UserRecord, ClientError> {
        let request = self.http.post(self.url("/internal/users")).json(user);
        self.send(request).await
    }

    pub async fn find_by_email(&self, email: &str) -> Result<Option<UserCredentials>, ClientError> {
        let request = self
            .http
            .get(self.url("/internal/users/by-email"))
            .query(&[("email", email)]);
        optional(self.send(request).await)
    }

    /// Deletes the account `id` (its follows too); `NotFound` when there is none.
    pub async fn delete_user(&self, id: Uuid) -> Result<(), ClientError> {
        let request = self.http.delete(self.url(&format!("/internal/users/{id}")));
        self.send::<serde_json::Value>(request).await.map(drop)
    }

    /// Replaces `id`'s password hash.
    pub async fn set_password_hash(
        &self,
        id: Uuid,
        password_hash: &str,
    ) -> Result<UserRecord, ClientError> {
        let request = self
            .http
            .put(self.url(&format!("/internal/users/{id}/password")))
            .json(&serde_json::json!({ "passwordHash": password_hash }));
        self.send(request).await
    }

    pub async fn get_user(&self, id: Uuid) -> Result<Option<UserRecord>, ClientError> {
        let request = self.http.get(self.url(&format!("/internal/users/{id}")));
        optional(self.send(request).await)
    }

    /// One page of the ids of `id`'s followers, newest first.
    pub async fn followers_page(
        &self,
        id: Uuid,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<IdPage, ClientError> {
        self.id_page(id, "followers", cursor, limit).await
    }

    /// One page of the ids of the users `id` follows, newest first.
    pub async fn following_page(
        &self,
        id: Uuid,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<IdPage, ClientError> {
        self.id_page(id, "following", cursor, limit).await
    }

    /// Walks every page of `id`'s followers (see [`IdPages`]).
    pub fn followers(&self, id: Uuid) -> IdPages<'_> {
        IdPages::new(self, id, "followers")
    }

    /// Walks every page of the users `id` follows (see [`IdPages`]).
    pub fn following(&self, id: Uuid) -> IdPages<'_> {
        IdPages::new(self, id, "following")
    }

    async fn id_page(
        &self,
        id: Uuid,
        list: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<IdPage, ClientError> {
        let mut request = self
            .http
            .get(self.url(&format!("/internal/users/{id}/{list}")))
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let unavailable = |reason: String| ClientError::Unavailable {
            service: "users",
            reason,
        };
        let response = request
            .header(INTERNAL_TOKEN_HEADER, self.token.expose())
            .send()
            .await
            .map_err(|e| unavailable(without_query(e)))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<DataEnvelope<T>>()
                .await
                .map(|envelope| envelope.data)
                .map_err(|e| unavailable(format!("unreadable response: {}", without_query(e))));
        }
        let message = response
            .json::<ErrorBody>()
            .await
            .map(|body| match body.message {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_else(|_| status.to_string());
        Err(match status {
            StatusCode::BAD_REQUEST => ClientError::BadRequest(message),
            StatusCode::NOT_FOUND => ClientError::NotFound,
            StatusCode::CONFLICT => ClientError::Conflict(message),
            _ => unavailable(format!("{status}: {message}")),
        })
    }
}

/// A transport error as text for logs, naming the path it was for but not the query string
/// (which may hold an email address).
fn without_query(error: reqwest::Error) -> String {
    let path = error.url().map(|url| url.path().to_owned());
    let error = error.without_url();
    match path {
        Some(path) => format!("{error} ({path})"),
        None => error.to_string(),
    }
}

fn optional<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(ClientError::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_service_is_reported_without_the_email_it_was_asked_about() {
        // Nothing listens on port 9 (discard) here: the connection is refused.
        let client = UsersClient::new(
            "http://127.0.0.1:9",
            InternalToken::new(crate::config::Secret::new("t".to_owned())),
            std::time::Duration::from_secs(2),
        );
        let error = client.find_by_email("ada@example.com").await.unwrap_err();
        let logged = error.to_string();
        assert!(matches!(error, ClientError::Unavailable { .. }), "{logged}");
        assert!(!logged.contains("ada"), "{logged}");
        assert!(logged.contains("/internal/users/by-email"), "{logged}");
    }
}
