//! The web app is served at `/` from the binary itself: the page, its script, the client module
//! other front ends can import, and the style sheet, each with its content type.

use axum::http::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_web_app_and_its_client_module_are_served() {
    let app = spawn_app().await;
    for (path, content_type, marker) in [
        ("/", "text/html", r#"<script type="module" src="/app.js">"#),
        ("/app.js", "text/javascript", "from \"/instaclone.js\""),
        (
            "/instaclone.js",
            "text/javascript",
            "export class InstacloneClient",
        ),
        ("/style.css", "text/css", ".badge"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status, StatusCode::OK, "{path}");
        let served = response.headers["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served.starts_with(content_type), "{path}: {served}");
        let body = response.text;
        assert!(body.contains(marker), "{path} lacks {marker}");
    }
}
