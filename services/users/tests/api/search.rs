//! `GET /users/search`: prefix and similarity, ranked, paginated, the query never SQL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app};

fn usernames(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"))
        .iter()
        .map(|user| user["username"].as_str().unwrap().to_owned())
        .collect()
}

async fn seed(app: &TestApp) -> String {
    let (_, token) = app.user("ada").await;
    for name in ["adam", "adalovelace", "adda", "zed", "a_b_c", "abbc"] {
        app.user(name).await;
    }
    let (_, countess) = app.user("countess").await;
    let (status, body) = app
        .patch("/users/me")
        .bearer(&countess)
        .json(&json!({"displayName": "Ada Byron"}))
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    token
}

#[tokio::test]
async fn exact_then_prefix_then_similar() {
    let app = spawn_app().await;
    let token = seed(&app).await;
    let (status, body) = app.get("/users/search?q=ADA").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = usernames(&body);
    assert_eq!(found[0], "ada", "exact username first: {found:?}");
    let prefix = ["adam", "adalovelace", "countess"];
    for name in prefix {
        let position = found.iter().position(|n| n == name);
        assert!(
            position.is_some_and(|p| p < 4),
            "{name} is a prefix match: {found:?}"
        );
    }
    assert_eq!(
        found.get(4).map(String::as_str),
        Some("adda"),
        "similar only, after the prefixes: {found:?}"
    );
    assert!(!found.contains(&"zed".to_owned()), "{found:?}");
    // Other users' emails are not in search results.
    assert!(body["data"][1].get("email").is_none(), "{body}");
}

#[tokio::test]
async fn pages_continue_after_the_cursor() {
    let app = spawn_app().await;
    let token = seed(&app).await;
    let body = app
        .get("/users/search?q=ada&limit=100")
        .bearer(&token)
        .await
        .body;
    let all = usernames(&body);
    assert!(all.len() >= 5, "{all:?}");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/users/search?q=ada&limit=2".to_owned(),
            Some(c) => format!("/users/search?q=ada&limit=2&cursor={c}"),
        };
        let (status, body) = app.get(&path).bearer(&token).await.parts();
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["data"].as_array().unwrap().clone();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap()["id"].as_str().unwrap().to_owned());
        paged.extend(usernames(&body));
    }
    assert_eq!(paged, all);
}

#[tokio::test]
async fn the_query_is_data() {
    let app = spawn_app().await;
    let token = seed(&app).await;
    // `_` and `%` are not wildcards.
    let body = app.get("/users/search?q=a_").bearer(&token).await.body;
    let found = usernames(&body);
    assert!(found.contains(&"a_b_c".to_owned()), "{found:?}");
    assert!(!found.contains(&"abbc".to_owned()), "{found:?}");
    let (status, body) = app.get("/users/search?q=%25").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(usernames(&body).is_empty(), "{body}");
    let (status, body) = app
        .get("/users/search?q=ada'%3B%20DROP%20TABLE%20users%3B%20--")
        .bearer(&token)
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.get("/users/me").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::OK, "the table is still there: {body}");
}

#[tokio::test]
async fn bad_search_parameters_are_400() {
    let app = spawn_app().await;
    let (_, token) = app.user("ada").await;
    for path in [
        "/users/search".to_owned(),
        "/users/search?q=".to_owned(),
        "/users/search?q=%20%20".to_owned(),
        format!("/users/search?q={}", "a".repeat(101)),
        "/users/search?q=ada&limit=0".to_owned(),
        "/users/search?q=ada&cursor=nope".to_owned(),
        "/users/search?q=ada&sql=1".to_owned(),
    ] {
        let (status, body) = app.get(&path).bearer(&token).await.parts();
        assert_error(status, &body, StatusCode::BAD_REQUEST);
    }
}
