//! The OpenAPI document and Swagger UI, served from the binary.

use axum::http::StatusCode;
use instaclone_gateway::routes::PUBLIC_ROUTES;
use serde_json::Value;

use crate::helpers::spawn_app;

/// The public API of the design, written out here independently of the gateway's route table.
const DESIGN_ROUTES: &[(&str, &str)] = &[
    ("post", "/auth/register"),
    ("post", "/auth/login"),
    ("post", "/auth/refresh"),
    ("post", "/auth/logout"),
    // Beyond the original's routes (docs/security.md): account-wide session revocation.
    ("post", "/auth/logout-all"),
    ("post", "/auth/password"),
    ("delete", "/auth/account"),
    ("get", "/users/me"),
    ("patch", "/users/me"),
    ("get", "/users/{id}"),
    ("get", "/users/search"),
    ("post", "/users/follow"),
    ("post", "/users/unfollow"),
    ("get", "/users/following"),
    ("get", "/users/followers"),
    ("get", "/users/{id}/followers"),
    ("get", "/users/{id}/following"),
    ("post", "/posts"),
    ("get", "/posts/feed"),
    ("get", "/posts/me"),
    ("get", "/users/{id}/posts"),
    ("get", "/posts/{id}"),
    ("delete", "/posts/{id}"),
    ("get", "/notifications/my"),
    ("get", "/notifications/unread-count"),
    ("post", "/notifications/{id}/read"),
    ("post", "/notifications/read-all"),
    ("post", "/realtime/ticket"),
    ("get", "/openapi.json"),
    ("get", "/api"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
];

async fn document() -> Value {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers["content-type"], "application/json");
    response.body
}

#[tokio::test]
async fn the_document_lists_every_route_of_the_design_and_nothing_else() {
    let document = document().await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for (method, path) in DESIGN_ROUTES {
        let operation = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is missing"))[*method];
        assert!(operation.is_object(), "{method} {path} is missing");
        assert!(operation["responses"].is_object(), "{method} {path}");
    }
    let documented: usize = paths
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        DESIGN_ROUTES.len(),
        "undocumented extras: {paths:?}"
    );
    assert_eq!(PUBLIC_ROUTES.len(), DESIGN_ROUTES.len());
    assert!(!paths.keys().any(|p| p.starts_with("/internal")));
}

#[tokio::test]
async fn operations_describe_auth_parameters_and_envelopes() {
    let document = document().await;
    let feed = &document["paths"]["/posts/feed"]["get"];
    assert_eq!(feed["security"][0]["accessToken"], Value::Array(vec![]));
    let query: Vec<&str> = feed["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(query, ["limit", "before"]);
    let ok = &feed["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        ok["properties"]["data"]["items"]["$ref"],
        "#/components/schemas/Post"
    );
    assert!(feed["responses"]["401"].is_object());
    assert!(feed["responses"]["429"]["headers"]["Retry-After"].is_object());

    let read = &document["paths"]["/notifications/{id}/read"]["post"];
    assert_eq!(read["parameters"][0]["in"], "path");
    assert_eq!(read["parameters"][0]["name"], "id");

    let register = &document["paths"]["/auth/register"]["post"];
    assert!(register.get("security").is_none());
    assert_eq!(
        register["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RegisterRequest"
    );
    let schemas = &document["components"]["schemas"];
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
        assert!(
            schemas["User"]["properties"][field].is_object(),
            "User.{field}"
        );
    }
    for field in [
        "_id",
        "userId",
        "caption",
        "mediaUrl",
        "createdAt",
        "updatedAt",
    ] {
        assert!(
            schemas["Post"]["properties"][field].is_object(),
            "Post.{field}"
        );
    }
}

#[tokio::test]
async fn swagger_ui_is_served_with_its_assets_from_the_binary() {
    let app = spawn_app().await;
    let page = app.get("/api").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text;
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    for (asset, content_type, marker) in [
        (
            "/api/swagger-ui-bundle.js",
            "text/javascript",
            "SwaggerUIBundle",
        ),
        ("/api/swagger-ui.css", "text/css", ".swagger-ui"),
    ] {
        assert!(html.contains(asset), "{asset} not referenced");
        let response = app.get(asset).await;
        assert_eq!(response.status, StatusCode::OK, "{asset}");
        assert!(
            response.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        assert!(response.text.contains(marker), "{asset}");
    }
}
