//! The internal API, through the same `UsersClient` the other services use.

use std::time::Duration;

use instaclone_shared::{
    auth::InternalToken,
    config::Secret,
    users_internal::{ClientError, MAX_ID_PAGE, NewUser, UsersClient},
};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app};

fn new_user(email: &str, username: Option<&str>) -> NewUser {
    NewUser {
        email: email.to_owned(),
        username: username.map(str::to_owned),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
    }
}

#[tokio::test]
async fn create_then_look_up_by_email_and_id() {
    let app = spawn_app().await;
    let created = app
        .users
        .create_user(&new_user("Ada@Example.com", Some("Ada.L")))
        .await
        .unwrap();
    assert_eq!(created.email, "Ada@Example.com");
    assert_eq!(created.username, "ada.l", "usernames are lower-cased");
    assert_eq!(created.display_name, None);

    // Email lookups ignore case and return the stored hash for login.
    let credentials = app
        .users
        .find_by_email("ada@EXAMPLE.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(credentials.user, created);
    assert_eq!(credentials.password_hash, new_user("", None).password_hash);

    assert_eq!(app.users.get_user(created.id).await.unwrap(), Some(created));
    assert_eq!(app.users.get_user(Uuid::now_v7()).await.unwrap(), None);
    assert!(
        app.users
            .find_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_wire_shape_is_camel_case_in_the_envelope() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/internal/users")
        .header("x-internal-token", app.users_token())
        .json(&serde_json::json!({"email": "grace@example.com", "passwordHash": "h"}))
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["statusCode"], 201);
    for field in [
        "id",
        "email",
        "username",
        "displayName",
        "bio",
        "avatarUrl",
        "createdAt",
        "updatedAt",
    ] {
        assert!(body["data"].get(field).is_some(), "missing {field}: {body}");
    }
    assert!(body["data"].get("passwordHash").is_none(), "{body}");
}

#[tokio::test]
async fn email_and_username_are_unique_regardless_of_case() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", Some("ada")).await;

    let taken_email = app
        .users
        .create_user(&new_user("ADA@example.com", Some("other")))
        .await;
    assert!(
        matches!(&taken_email, Err(ClientError::Conflict(m)) if m.contains("Email")),
        "{taken_email:?}"
    );
    let taken_username = app
        .users
        .create_user(&new_user("ada2@example.com", Some("ADA")))
        .await;
    assert!(
        matches!(&taken_username, Err(ClientError::Conflict(m)) if m.contains("Username")),
        "{taken_username:?}"
    );
}

#[tokio::test]
async fn usernames_are_generated_from_the_email_with_a_suffix_when_taken() {
    let app = spawn_app().await;
    let first = app.create_user("Grace.Hopper@example.com", None).await;
    assert_eq!(first.username, "grace.hopper");
    let second = app.create_user("grace.hopper@navy.mil", None).await;
    assert_ne!(second.username, first.username);
    assert!(
        second.username.starts_with("grace.hopper_"),
        "{}",
        second.username
    );
    // A generated username is a valid username.
    let weird = app.create_user("+-!@example.com", None).await;
    assert!(weird.username.len() >= 3, "{}", weird.username);
}

#[tokio::test]
async fn invalid_input_is_a_400_and_writes_nothing() {
    let app = spawn_app().await;
    for user in [
        new_user("not-an-email", None),
        new_user("ada@example.com", Some("ab")),
        new_user("ada@example.com", Some("has space")),
        new_user("ada@example.com", Some(&"x".repeat(31))),
        NewUser {
            password_hash: String::new(),
            ..new_user("ada@example.com", None)
        },
    ] {
        let result = app.users.create_user(&user).await;
        assert!(
            matches!(result, Err(ClientError::BadRequest(_))),
            "{user:?}: {result:?}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // Unknown fields are refused too.
    let (status, body) = app
        .post("/internal/users")
        .header("x-internal-token", app.users_token())
        .json(&serde_json::json!({"email": "a@b.co", "passwordHash": "h", "admin": true}))
        .await
        .parts();
    assert_error(status, &body, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn internal_routes_need_the_service_credential() {
    let app = spawn_app().await;
    let wrong = UsersClient::new(
        &app.base_url,
        InternalToken::new(Secret::new("wrong".to_owned())),
        Duration::from_secs(5),
    );
    let result = wrong.get_user(Uuid::now_v7()).await;
    assert!(
        matches!(result, Err(ClientError::Unavailable { .. })),
        "{result:?}"
    );
    let (status, body) = app
        .get(&format!("/internal/users/{}", Uuid::now_v7()))
        .await
        .parts();
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
    // A user's access token is not a service credential.
    let (_, token) = app.user("mallory").await;
    let (status, body) = app
        .get("/internal/users/by-email?email=mallory@example.com")
        .bearer(&token)
        .await
        .parts();
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_ids_and_cursors_are_400() {
    let app = spawn_app().await;
    let (id, _) = app.user("ada").await;
    for path in [
        "/internal/users/not-a-uuid".to_owned(),
        format!("/internal/users/{id}/followers?cursor=nope"),
        format!("/internal/users/{id}/followers?limit=0"),
        format!("/internal/users/{id}/followers?limit=-1"),
    ] {
        let (status, body) = app
            .get(&path)
            .header("x-internal-token", app.users_token())
            .await
            .parts();
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn follower_ids_are_streamed_in_pages_newest_first() {
    let app = spawn_app().await;
    let (star, _) = app.user("star").await;
    let mut fans = Vec::new();
    for i in 0..7 {
        let (fan, token) = app.user(&format!("fan{i}")).await;
        let (status, body) = app.follow(&token, star).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        fans.push(fan);
    }
    fans.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = app
            .users
            .followers_page(star, cursor.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.ids.len() <= 3);
        seen.extend(page.ids);
        pages += 1;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, fans);
    assert_eq!(
        pages, 3,
        "7 ids in pages of 3, the last page says it is the last"
    );

    // An exact multiple: the page that ends the list has no next cursor.
    let page = app.users.followers_page(star, None, 7).await.unwrap();
    assert_eq!(page.ids.len(), 7);
    assert_eq!(page.next_cursor, None);

    // The other direction.
    let following = app.users.following_page(fans[0], None, 10).await.unwrap();
    assert_eq!(following.ids, vec![star]);
    let none = app.users.following_page(star, None, 10).await.unwrap();
    assert!(none.ids.is_empty() && none.next_cursor.is_none());
}

#[tokio::test]
async fn id_pages_are_capped_and_unknown_users_are_404() {
    let app = spawn_app().await;
    let (star, _) = app.user("star").await;
    let pool = app.db().await;
    // 5,010 followers seeded directly, to cross the maximum page size.
    sqlx::query(
        "INSERT INTO users (id, email, username, password_hash) \
         SELECT gen_random_uuid(), 'f' || n || '@example.com', 'fan' || n, 'h' FROM generate_series(1, 5010) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO follows (id, follower_id, followed_id) \
         SELECT gen_random_uuid(), id, $1 FROM users WHERE id <> $1",
    )
    .bind(star)
    .execute(&pool)
    .await
    .unwrap();
    let page = app
        .users
        .followers_page(star, None, MAX_ID_PAGE + 1000)
        .await
        .unwrap();
    assert_eq!(page.ids.len(), MAX_ID_PAGE as usize);
    let rest = app
        .users
        .followers_page(star, page.next_cursor.as_deref(), MAX_ID_PAGE)
        .await
        .unwrap();
    assert_eq!(rest.ids.len(), 10);
    assert_eq!(rest.next_cursor, None);

    let unknown = app.users.followers_page(Uuid::now_v7(), None, 10).await;
    assert!(matches!(unknown, Err(ClientError::NotFound)), "{unknown:?}");
    let unknown = app.users.following_page(Uuid::now_v7(), None, 10).await;
    assert!(matches!(unknown, Err(ClientError::NotFound)), "{unknown:?}");
}
