//! `GET/PATCH /users/me` and `GET /users/{id}`.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn me_shows_my_email_and_counts() {
    let app = spawn_app().await;
    let (id, token) = app.user("ada").await;
    let (status, body) = app.get("/users/me").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["statusCode"], 200);
    let me = &body["data"];
    assert_eq!(me["id"], id.to_string());
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["username"], "ada");
    assert_eq!(me["followersCount"], 0);
    assert_eq!(me["followingCount"], 0);
    assert_eq!(me["postsCount"], 0);
    assert!(me.get("passwordHash").is_none(), "{body}");
}

#[tokio::test]
async fn other_profiles_have_counts_but_no_email() {
    let app = spawn_app().await;
    let (ada, ada_token) = app.user("ada").await;
    let (grace, grace_token) = app.user("grace").await;
    let (_, linus_token) = app.user("linus").await;
    assert_eq!(app.follow(&grace_token, ada).await.0, StatusCode::CREATED);
    assert_eq!(app.follow(&linus_token, ada).await.0, StatusCode::CREATED);
    assert_eq!(app.follow(&ada_token, grace).await.0, StatusCode::CREATED);

    let (status, body) = app
        .get(&format!("/users/{ada}"))
        .bearer(&grace_token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    let profile = &body["data"];
    assert_eq!(profile["username"], "ada");
    assert!(profile.get("email").is_none(), "{body}");
    assert_eq!(profile["followersCount"], 2);
    assert_eq!(profile["followingCount"], 1);
    assert_eq!(profile["postsCount"], 0);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = spawn_app().await;
    let (_, token) = app.user("ada").await;
    let (status, body) = app
        .get(&format!("/users/{}", Uuid::now_v7()))
        .bearer(&token)
        .await
        .parts();
    assert_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = app.get("/users/not-a-uuid").bearer(&token).await.parts();
    assert_error(status, &body, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn static_routes_are_not_taken_for_ids() {
    let app = spawn_app().await;
    let (_, token) = app.user("ada").await;
    for path in [
        "/users/me",
        "/users/search?q=ada",
        "/users/following",
        "/users/followers",
    ] {
        let (status, body) = app.get(path).bearer(&token).await.parts();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

#[tokio::test]
async fn a_token_is_required() {
    let app = spawn_app().await;
    let (id, _) = app.user("ada").await;
    for path in [
        "/users/me".to_owned(),
        format!("/users/{id}"),
        "/users/followers".to_owned(),
    ] {
        let (status, body) = app.get(&path).bearer("").await.parts();
        assert_error(status, &body, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.get("/users/me").bearer("not.a.jwt").await.parts();
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
    // Expired, and signed by another key.
    let expired = app.env.access_token_expiring_in(id, -10);
    let (status, body) = app.get("/users/me").bearer(&expired).await.parts();
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
    let forged = instaclone_shared::testing::TestEnv::new().access_token(id);
    let (status, body) = app.get("/users/me").bearer(&forged).await.parts();
    assert_error(status, &body, StatusCode::UNAUTHORIZED);
    // The token's own user still gets in.
    let status = app
        .get("/users/me")
        .bearer(app.env.access_token(id))
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    // A valid token of a user that does not exist: 404, not someone else's data.
    let ghost = app.env.access_token(Uuid::now_v7());
    let (status, body) = app.get("/users/me").bearer(&ghost).await.parts();
    assert_error(status, &body, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_me_changes_only_what_is_sent() {
    let app = spawn_app().await;
    let (_, token) = app.user("ada").await;
    let (status, body) = app
        .patch("/users/me").bearer(&token).json(&json!({"displayName": " Ada Lovelace ", "bio": "First programmer", "avatarUrl": "https://cdn.example.com/ada.png"})).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["displayName"], "Ada Lovelace");
    assert_eq!(body["data"]["bio"], "First programmer");

    let (status, body) = app
        .patch("/users/me")
        .bearer(&token)
        .json(&json!({"username": "Countess.Ada", "bio": null}))
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    let me = &body["data"];
    assert_eq!(me["username"], "countess.ada");
    assert_eq!(me["bio"], serde_json::Value::Null);
    assert_eq!(me["displayName"], "Ada Lovelace", "untouched");
    assert_eq!(
        me["avatarUrl"], "https://cdn.example.com/ada.png",
        "untouched"
    );
    assert_ne!(me["updatedAt"], me["createdAt"]);
}

#[tokio::test]
async fn patch_me_rejects_bad_input_and_taken_usernames() {
    let app = spawn_app().await;
    let (_, token) = app.user("ada").await;
    app.user("grace").await;
    for bad in [
        json!({"username": "no"}),
        json!({"username": "bad name"}),
        json!({"displayName": "x".repeat(51)}),
        json!({"bio": "x".repeat(151)}),
        json!({"avatarUrl": "javascript:alert(1)"}),
        json!({"email": "new@example.com"}),
        json!({"displayName": 42}),
    ] {
        let (status, body) = app
            .patch("/users/me")
            .bearer(&token)
            .json(&bad)
            .await
            .parts();
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let (status, body) = app
        .patch("/users/me")
        .bearer(&token)
        .json(&json!({"username": "GRACE"}))
        .await
        .parts();
    assert_error(status, &body, StatusCode::CONFLICT);
    let body = app.get("/users/me").bearer(&token).await.body;
    assert_eq!(body["data"]["username"], "ada", "nothing was written");
    assert_eq!(body["data"]["displayName"], serde_json::Value::Null);
}
