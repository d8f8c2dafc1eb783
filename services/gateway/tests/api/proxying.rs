//! Routing and what passes through: every public route reaches its service unchanged, nothing
//! else reaches any service.

use axum::http::StatusCode;
use instaclone_gateway::routes::{PUBLIC_ROUTES, Target, Upstream};
use uuid::Uuid;

use crate::helpers::{assert_error_envelope, spawn_app};

#[tokio::test]
async fn every_public_route_reaches_its_service_with_path_and_query_unchanged() {
    let app = spawn_app().await;
    let token = app.token(Uuid::now_v7());
    let id = Uuid::now_v7().to_string();
    for route in PUBLIC_ROUTES {
        let Target::Upstream(upstream) = route.target else {
            continue;
        };
        let path = route.path.replace("{id}", &id);
        let request = app
            .request(route.method.clone(), &format!("{path}?limit=5"))
            .bearer(&token);
        let (status, body) = request.await.parts();
        assert_eq!(status, StatusCode::OK, "{} {path}: {body}", route.method);
        let data = &body["data"];
        assert_eq!(data["service"], upstream.name(), "{} {path}", route.method);
        assert_eq!(data["method"], route.method.as_str());
        assert_eq!(data["path"], path);
        assert_eq!(data["query"], "limit=5");
    }
}

/// The prefix rules of the design, written out independently of the route table.
#[tokio::test]
async fn prefixes_go_to_their_services_and_user_posts_go_to_posts() {
    let app = spawn_app().await;
    let token = app.token(Uuid::now_v7());
    let id = Uuid::now_v7();
    let cases = [
        ("POST", "/auth/login".to_owned(), "auth"),
        ("GET", format!("/users/{id}"), "users"),
        ("GET", format!("/users/{id}/followers"), "users"),
        ("GET", format!("/users/{id}/posts"), "posts"),
        ("GET", "/posts/feed".to_owned(), "posts"),
        ("GET", "/notifications/my".to_owned(), "notifications"),
        ("POST", "/realtime/ticket".to_owned(), "hub"),
    ];
    for (method, path, service) in cases {
        let response = app
            .request(method.parse().unwrap(), &path)
            .bearer(&token)
            .await;
        let body = response.body;
        assert_eq!(body["data"]["service"], service, "{method} {path}");
    }
}

#[tokio::test]
async fn internal_and_unknown_routes_are_404_in_the_envelope_and_reach_no_service() {
    let app = spawn_app().await;
    let token = app.token(Uuid::now_v7());
    let id = Uuid::now_v7();
    let paths = [
        "/internal/users".to_owned(),
        format!("/internal/users/{id}/followers"),
        "/internal/notifications".to_owned(),
        "/users/me/internal".to_owned(),
        "/nowhere".to_owned(),
        "/realtime/ws".to_owned(),
        "/posts/feed/extra".to_owned(),
    ];
    for path in paths {
        for method in ["GET", "POST"] {
            let (status, body) = app
                .request(method.parse().unwrap(), &path)
                .bearer(&token)
                .header("x-internal-token", "guess")
                .await
                .parts();
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_error_envelope(&body, 404);
        }
    }
    for upstream in Upstream::ALL {
        assert_eq!(app.service(upstream).hits(), 0, "{upstream:?} was reached");
    }
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_in_the_envelope() {
    let app = spawn_app().await;
    let (status, body) = app
        .put("/users/me")
        .bearer(app.token(Uuid::now_v7()))
        .await
        .parts();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_envelope(&body, 405);
    assert_eq!(app.service(Upstream::Users).hits(), 0);
}

#[tokio::test]
async fn status_body_and_headers_pass_through_unchanged() {
    let app = spawn_app().await;
    let response = app
        .post("/auth/register")
        .header("x-test-status", "409")
        .header("content-type", "application/json")
        .body(r#"{"email":"a@b.c","password":"secret"}"#)
        .await;
    assert_eq!(response.headers["x-upstream"], "auth");
    let (status, body) = response.parts();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["statusCode"], 409);
    let data = &body["data"];
    assert_eq!(data["body"], r#"{"email":"a@b.c","password":"secret"}"#);
    assert_eq!(data["headers"]["content-type"], "application/json");
}

#[tokio::test]
async fn the_request_id_is_kept_or_made_and_reaches_the_service() {
    let app = spawn_app().await;
    let response = app
        .post("/auth/login")
        .header("x-request-id", "req-from-client-1")
        .await;
    assert_eq!(response.headers["x-request-id"], "req-from-client-1");
    let body = response.body;
    assert_eq!(body["data"]["headers"]["x-request-id"], "req-from-client-1");

    let response = app.post("/auth/login").await;
    let echoed = response.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.body;
    assert!(!echoed.is_empty());
    assert_eq!(body["data"]["headers"]["x-request-id"], echoed.as_str());
}

#[tokio::test]
async fn hop_by_hop_headers_and_the_service_credential_are_not_forwarded() {
    let app = spawn_app().await;
    let response = app
        .post("/auth/login")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("proxy-authorization", "Basic abc")
        .header("x-internal-token", "forged")
        .header("x-end-to-end", "kept")
        .await;
    let body = response.body;
    let headers = body["data"]["headers"].as_object().unwrap();
    for dropped in ["x-hop", "proxy-authorization", "x-internal-token"] {
        assert!(
            !headers.contains_key(dropped),
            "{dropped} forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn large_bodies_stream_through_both_ways() {
    let app = spawn_app().await;
    let payload = "x".repeat(600 * 1024);
    let (status, body) = app
        .post("/posts")
        .bearer(app.token(Uuid::now_v7()))
        .body(payload.clone())
        .await
        .parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["bodyLength"], payload.len());
}
