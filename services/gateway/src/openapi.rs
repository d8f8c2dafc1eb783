//! The OpenAPI 3.1 document (`GET /openapi.json`) and Swagger UI (`GET /api`).
//!
//! The paths come from [`PUBLIC_ROUTES`], the same table the router is built from, so the
//! document lists exactly what the gateway serves. Each forwarded operation is the one its
//! service describes from its own handlers and types (`instaclone_shared::openapi`); the gateway
//! cannot link the services, so it holds a copy of each finished document in `openapi/`, and a
//! test in each service fails when its copy is not what its code describes. To each forwarded
//! operation the gateway adds its own answers: 429 from its rate limits, 413 from its body
//! limit, 401 from its token check, 502 and 504 when the service fails or is slow. Swagger UI's
//! assets are vendored from the `swagger-ui-dist` npm package and compiled into the binary, so
//! the UI works without any network access.

use axum::{
    Router,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::IntoResponse,
    routing::get,
};
use instaclone_shared::openapi::add_error;
use serde_json::{Map, Value, json};

use crate::routes::{Access, GatewayDoc, PUBLIC_ROUTES, PublicRoute, Target, Upstream};

/// The finished document of each service, as its code describes it.
fn service_document(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::Auth => include_str!("../openapi/auth.json"),
        Upstream::Users => include_str!("../openapi/users.json"),
        Upstream::Posts => include_str!("../openapi/posts.json"),
        Upstream::Notifications => include_str!("../openapi/notifications.json"),
        Upstream::Hub => include_str!("../openapi/realtime-hub.json"),
    }
}

/// Each service's document, parsed.
fn service_documents() -> Vec<(Upstream, Value)> {
    Upstream::ALL
        .into_iter()
        .map(|upstream| {
            let document = serde_json::from_str(service_document(upstream)).unwrap_or_default();
            (upstream, document)
        })
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let services = service_documents();
    let mut paths = Map::new();
    for route in PUBLIC_ROUTES {
        let operation = match route.target {
            Target::Upstream(upstream) => services
                .iter()
                .find(|(service, _)| *service == upstream)
                .and_then(|(_, document)| service_operation(document, route))
                .map(|operation| forwarded(route, operation)),
            Target::Gateway(doc) => Some(own_operation(route, &doc)),
        };
        let (Some(operation), Value::Object(item)) = (
            operation,
            paths
                .entry(route.path.to_owned())
                .or_insert_with(|| json!({})),
        ) else {
            continue;
        };
        item.insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Instaclone API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The public API of Instaclone, through the gateway. Successes are \
                `{\"statusCode\", \"data\"}`, errors `{\"statusCode\", \"message\", \"error\"}`. \
                Lists are keyset-paginated: pass the last item's id as `before`/`cursor`.",
        },
        "paths": paths,
        "components": merged_components(&services),
    })
}

/// The operation `route` names in a service's document.
pub fn service_operation(document: &Value, route: &PublicRoute) -> Option<Value> {
    document
        .get("paths")?
        .get(route.path)?
        .get(route.method.as_str().to_ascii_lowercase())
        .cloned()
}

/// A service's operation as the gateway forwards it: the gateway's own answers added.
fn forwarded(route: &PublicRoute, mut operation: Value) -> Value {
    operation["operationId"] = Value::String(operation_id(route));
    let has_body = operation.get("requestBody").is_some();
    if let Some(Value::Object(responses)) = operation.get_mut("responses") {
        let mut statuses = vec![429, 502, 504];
        if has_body {
            statuses.push(413);
        }
        if matches!(route.access, Access::AccessToken | Access::RefreshToken) {
            statuses.push(401);
        }
        for status in statuses {
            add_error(responses, status);
        }
    }
    operation
}

/// One of the gateway's own routes: no token, no rate limit, not the JSON envelope.
fn own_operation(route: &PublicRoute, doc: &GatewayDoc) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".to_owned(),
        json!({"description": "OK", "content": {doc.media_type: {}}}),
    );
    for &status in doc.errors {
        add_error(&mut responses, status);
    }
    json!({
        "tags": ["gateway"],
        "summary": doc.summary,
        "operationId": operation_id(route),
        "responses": responses,
    })
}

/// The services' component schemas and security schemes, in one set.
fn merged_components(services: &[(Upstream, Value)]) -> Value {
    let mut schemas = Map::new();
    let mut security_schemes = Map::new();
    for (_, document) in services {
        let components = &document["components"];
        for (into, section) in [
            (&mut schemas, "schemas"),
            (&mut security_schemes, "securitySchemes"),
        ] {
            if let Some(Value::Object(entries)) = components.get(section) {
                for (name, value) in entries {
                    into.entry(name.clone()).or_insert_with(|| value.clone());
                }
            }
        }
    }
    json!({"schemas": schemas, "securitySchemes": security_schemes})
}

fn operation_id(route: &PublicRoute) -> String {
    let mut id = route.method.as_str().to_ascii_lowercase();
    for word in route.path.split(['/', '-', '.', '{', '}']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

const SWAGGER_UI_JS: &str = include_str!("../assets/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &str = include_str!("../assets/swagger-ui.css");
const SWAGGER_UI_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Instaclone API</title>
  <link rel="stylesheet" href="/api/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl: null keeps the page from calling validator.swagger.io (offline).
    window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null });
  </script>
</body>
</html>
"##;

/// `/openapi.json`, `/api` and the UI's two assets.
pub fn router() -> Router {
    let document = document().to_string();
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { ([(CONTENT_TYPE, "application/json")], document) }
            }),
        )
        .route(
            "/api",
            get(|| async {
                (
                    [(CONTENT_TYPE, "text/html; charset=utf-8")],
                    SWAGGER_UI_PAGE,
                )
            }),
        )
        .route(
            "/api/swagger-ui-bundle.js",
            get(|| async {
                (
                    [(CACHE_CONTROL, "public, max-age=3600")],
                    [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SWAGGER_UI_JS,
                )
                    .into_response()
            }),
        )
        .route(
            "/api/swagger-ui.css",
            get(|| async {
                (
                    [(CACHE_CONTROL, "public, max-age=3600")],
                    [(CONTENT_TYPE, "text/css; charset=utf-8")],
                    SWAGGER_UI_CSS,
                )
                    .into_response()
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document points at a schema that exists.
    #[test]
    fn every_reference_resolves() {
        let document = document();
        let mut refs = Vec::new();
        collect_refs(&document, &mut refs);
        assert!(!refs.is_empty());
        for reference in refs {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            assert!(
                document["components"]["schemas"].get(name).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(reference)) => refs.push(reference.clone()),
                        _ => collect_refs(value, refs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }

    /// Every forwarded route is an operation of its service, behind the same credential, and
    /// every operation a service describes is a route of the gateway.
    #[test]
    fn the_table_and_the_service_documents_agree() {
        let services = service_documents();
        for route in PUBLIC_ROUTES {
            let Target::Upstream(upstream) = route.target else {
                continue;
            };
            let (_, document) = services.iter().find(|(s, _)| *s == upstream).unwrap();
            let operation = service_operation(document, route).unwrap_or_else(|| {
                panic!(
                    "{} {} is not in {upstream:?}'s document",
                    route.method, route.path
                )
            });
            let scheme = operation["security"][0]
                .as_object()
                .and_then(|s| s.keys().next().cloned());
            let expected = match route.access {
                Access::AccessToken => Some("accessToken"),
                Access::RefreshToken => Some("refreshToken"),
                Access::Anonymous | Access::Operational => None,
            };
            assert_eq!(
                scheme.as_deref(),
                expected,
                "{} {}",
                route.method,
                route.path
            );
        }
        for (upstream, document) in &services {
            let paths = document["paths"].as_object().expect("paths");
            for (path, item) in paths {
                for method in item.as_object().expect("path item").keys() {
                    assert!(
                        PUBLIC_ROUTES.iter().any(|r| r.path == path
                            && r.method.as_str().eq_ignore_ascii_case(method)
                            && r.target == Target::Upstream(*upstream)),
                        "{upstream:?} describes {method} {path}, which the gateway does not route"
                    );
                }
            }
        }
    }

    /// Two services never describe the same schema name differently.
    #[test]
    fn schema_names_mean_one_thing() {
        let services = service_documents();
        let mut seen: Map<String, Value> = Map::new();
        for (upstream, document) in &services {
            for (name, schema) in document["components"]["schemas"]
                .as_object()
                .expect("schemas")
            {
                if let Some(earlier) = seen.insert(name.clone(), schema.clone()) {
                    assert_eq!(
                        &earlier, schema,
                        "{upstream:?} describes {name} differently"
                    );
                }
            }
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = PUBLIC_ROUTES.iter().map(operation_id).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
