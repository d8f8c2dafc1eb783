//! Creating, reading and deleting posts; validation and authorization.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, user};

#[tokio::test]
async fn a_created_post_has_the_original_shape_and_can_be_read_back() {
    let app = spawn_app().await;
    let (author, token) = user(&app);

    let (status, body) = app
        .post("/posts")
        .bearer(&token)
        .json(&json!({ "caption": "first light 🌅", "mediaUrl": "https://cdn.example.com/a.jpg" }))
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["statusCode"], 201);
    let post = &body["data"];
    let mut keys: Vec<&str> = post
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "caption",
            "createdAt",
            "mediaUrl",
            "updatedAt",
            "userId"
        ]
    );
    assert_eq!(post["userId"], author.to_string());
    assert_eq!(post["caption"], "first light 🌅");
    assert_eq!(post["mediaUrl"], "https://cdn.example.com/a.jpg");
    let id = post["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);

    // Anyone signed in can read it.
    let (_, reader) = user(&app);
    let (status, body) = app
        .get(&format!("/posts/{id}"))
        .bearer(&reader)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(&body["data"], post);

    // A caption is optional.
    let (status, body) = app
        .post("/posts")
        .bearer(&token)
        .json(&json!({ "mediaUrl": "http://example.com/b.png" }))
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["caption"], serde_json::Value::Null);
}

#[tokio::test]
async fn invalid_posts_are_refused_with_a_clear_400_and_nothing_is_stored() {
    let app = spawn_app().await;
    let (_, token) = user(&app);
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        (json!({ "caption": "x" }), "mediaUrl"),
        (
            json!({ "mediaUrl": "ftp://example.com/a.jpg" }),
            "http or https",
        ),
        (
            json!({ "mediaUrl": "javascript:alert(1)" }),
            "http or https",
        ),
        (json!({ "mediaUrl": "not a url" }), "mediaUrl"),
        (json!({ "mediaUrl": "" }), "mediaUrl"),
        (json!({ "mediaUrl": long_url }), "2048"),
        (
            json!({ "mediaUrl": "https://example.com/a.jpg", "caption": "é".repeat(2201) }),
            "2200",
        ),
        (
            json!({ "mediaUrl": "https://example.com/a.jpg", "userId": "someone-else" }),
            "userId",
        ),
        (json!({ "mediaUrl": 42 }), "mediaUrl"),
        (
            json!({ "mediaUrl": "https://example.com/a.jpg", "caption": 7 }),
            "caption",
        ),
    ];
    for (body, expected) in cases {
        let (status, response) = app.post("/posts").bearer(&token).json(&body).await.parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
        assert_eq!(response["statusCode"], 400);
        let message = response["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{body}: {message:?} lacks {expected:?}"
        );
    }
    assert_eq!(app.stored_count().await, 0);

    // Exactly 2,200 characters of four-byte emoji is fine.
    let body = json!({ "mediaUrl": "https://example.com/a.jpg", "caption": "📸".repeat(2200) });
    let (status, response) = app.post("/posts").bearer(&token).json(&body).await.parts();
    assert_eq!(status, StatusCode::CREATED, "{response}");
    assert_eq!(app.stored_count().await, 1);
}

#[tokio::test]
async fn every_route_needs_a_valid_access_token() {
    let app = spawn_app().await;
    let id = "0123456789abcdef01234567";
    for (method, path) in [
        (reqwest::Method::POST, "/posts".to_owned()),
        (reqwest::Method::GET, format!("/posts/{id}")),
        (reqwest::Method::DELETE, format!("/posts/{id}")),
        (reqwest::Method::GET, "/posts/me".to_owned()),
        (reqwest::Method::GET, "/posts/feed".to_owned()),
        (
            reqwest::Method::GET,
            format!("/users/{}/posts", uuid::Uuid::now_v7()),
        ),
    ] {
        let response = app
            .request(method.clone(), &path)
            .json(&json!({ "mediaUrl": "https://example.com/a.jpg" }))
            .await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let response = app
            .request(method.clone(), &path)
            .bearer("not-a-token")
            .await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[tokio::test]
async fn malformed_ids_are_400_and_unknown_ones_404() {
    let app = spawn_app().await;
    let (_, token) = user(&app);
    for path in [
        "/posts/123",
        "/posts/zzzzzzzzzzzzzzzzzzzzzzzz",
        "/users/not-a-uuid/posts",
        "/posts/me?limit=0",
        "/posts/me?limit=101",
        "/posts/me?limit=ten",
        "/posts/me?before=nope",
        "/posts/me?sort=asc",
    ] {
        let (status, body) = app.get(path).bearer(&token).await.parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["statusCode"], 400, "{path}");
    }
    let (status, body) = app.delete("/posts/123").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let unknown = "0123456789abcdef01234567";
    let (status, body) = app
        .get(&format!("/posts/{unknown}"))
        .bearer(&token)
        .await
        .parts();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let status = app
        .delete(&format!("/posts/{unknown}"))
        .bearer(&token)
        .await
        .status;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_the_author_can_delete_and_a_deleted_post_is_gone_everywhere() {
    let app = spawn_app().await;
    let (author, author_token) = user(&app);
    let (_, other_token) = user(&app);
    let kept = app.create_post(&author_token, "kept").await;
    let doomed = app.create_post(&author_token, "doomed").await;
    let doomed_path = format!("/posts/{}", doomed["_id"].as_str().unwrap());

    let (status, body) = app.delete(&doomed_path).bearer(&other_token).await.parts();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["statusCode"], 403);
    let status = app.get(&doomed_path).bearer(&other_token).await.status;
    assert_eq!(status, StatusCode::OK, "a refused delete must not delete");

    let (status, body) = app.delete(&doomed_path).bearer(&author_token).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["_id"], doomed["_id"]);

    let status = app.get(&doomed_path).bearer(&author_token).await.status;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let status = app.delete(&doomed_path).bearer(&author_token).await.status;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let kept_id = kept["_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.list_ids(&author_token, "/posts/me").await,
        std::slice::from_ref(&kept_id)
    );
    assert_eq!(
        app.list_ids(&other_token, &format!("/users/{author}/posts"))
            .await,
        [kept_id]
    );
}

#[tokio::test]
async fn own_and_other_users_lists_hold_only_their_posts_newest_first() {
    let app = spawn_app().await;
    let (ada, ada_token) = user(&app);
    let (bob, bob_token) = user(&app);
    let mut ada_posts = Vec::new();
    for n in 0..3 {
        let post = app.create_post(&ada_token, &format!("ada {n}")).await;
        ada_posts.push(post["_id"].as_str().unwrap().to_owned());
        app.create_post(&bob_token, &format!("bob {n}")).await;
    }
    ada_posts.reverse();

    // `/posts/me` is a route of its own, not a post id.
    assert_eq!(app.list_ids(&ada_token, "/posts/me").await, ada_posts);
    assert_eq!(
        app.list_ids(&bob_token, &format!("/users/{ada}/posts"))
            .await,
        ada_posts
    );
    assert_eq!(
        app.list_ids(&ada_token, &format!("/users/{bob}/posts"))
            .await
            .len(),
        3
    );
    let stranger = uuid::Uuid::now_v7();
    assert!(
        app.list_ids(&ada_token, &format!("/users/{stranger}/posts"))
            .await
            .is_empty()
    );
}
