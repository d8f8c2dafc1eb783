//! Keyset pagination: pages neither skip nor repeat posts while others are being written.

use crate::helpers::{spawn_app, user};

#[tokio::test]
async fn pages_are_stable_under_concurrent_inserts() {
    let app = spawn_app().await;
    let (author, token) = user(&app);
    let mut existing = Vec::new();
    for n in 0..23 {
        let post = app.create_post(&token, &format!("post {n}")).await;
        existing.push(post["_id"].as_str().unwrap().to_owned());
    }
    existing.reverse(); // newest first

    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &before {
            None => format!("/users/{author}/posts?limit=5"),
            Some(id) => format!("/users/{author}/posts?limit=5&before={id}"),
        };
        let page = app.list_ids(&token, &path).await;
        assert!(page.len() <= 5);
        pages += 1;
        // New posts arrive between every two page reads.
        app.create_post(&token, &format!("concurrent {pages}"))
            .await;
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        before = Some(last);
    }
    assert_eq!(seen, existing, "every post exactly once, newest first");
    assert_eq!(pages, 6, "23 posts: 5 + 5 + 5 + 5 + 3, then an empty page");

    // The new posts are on a fresh first page.
    let first = app.list_ids(&token, "/posts/me?limit=3").await;
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|id| !existing.contains(id)));
}

#[tokio::test]
async fn the_page_size_has_a_default_and_a_hard_maximum() {
    let app = spawn_app().await;
    let (_, token) = user(&app);
    for n in 0..25 {
        app.create_post(&token, &format!("{n}")).await;
    }
    assert_eq!(app.list_ids(&token, "/posts/me").await.len(), 20);
    assert_eq!(app.list_ids(&token, "/posts/me?limit=100").await.len(), 25);
    let (status, body) = app.get("/posts/me?limit=1000").bearer(&token).await.parts();
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
}
