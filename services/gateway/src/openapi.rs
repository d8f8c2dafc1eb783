//! The OpenAPI 3.1 document (`GET /openapi.json`) and Swagger UI (`GET /api`).
//!
//! The paths come from [`PUBLIC_ROUTES`], the same table the router is built from, so the
//! document lists exactly what the gateway serves. The component schemas describe the resource
//! shapes of the design (the NestJS original's camelCase fields). Swagger UI's assets are
//! vendored from the `swagger-ui-dist` npm package and compiled into the binary, so the UI works
//! without any network access.

use axum::{
    Router,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Map, Value, json};

use crate::routes::{Access, PUBLIC_ROUTES, PublicRoute, Returns, Target};

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in PUBLIC_ROUTES {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(route.method.as_str().to_ascii_lowercase(), operation(route));
        }
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
        "components": {
            "securitySchemes": {
                "accessToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "Access token from login, register or refresh"},
                "refreshToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "Refresh token from login, register or refresh"},
            },
            "schemas": schemas(),
        },
    })
}

fn operation(route: &PublicRoute) -> Value {
    let doc = &route.doc;
    let tag = route
        .path
        .trim_start_matches('/')
        .split(['/', '.'])
        .next()
        .filter(|_| route.target != Target::Gateway)
        .unwrap_or("gateway");
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(doc.query.iter().map(|q| {
        json!({"name": q.name, "in": "query", "required": false,
            "description": q.description, "schema": {"type": "string"}})
    }));

    let mut responses = Map::new();
    responses.insert(
        doc.success.to_string(),
        success_response(doc.success, doc.returns),
    );
    let mut errors: Vec<u16> = doc.errors.to_vec();
    match route.access {
        Access::AccessToken | Access::RefreshToken => errors.push(401),
        Access::Anonymous | Access::Operational => {}
    }
    if route.access != Access::Operational {
        errors.push(429);
    }
    if doc.body.is_some() {
        errors.push(413);
    }
    if matches!(route.target, Target::Upstream(_)) {
        errors.extend([502, 504]);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses.insert(status.to_string(), error_response(status));
    }

    let mut operation = json!({
        "tags": [tag],
        "summary": doc.summary,
        "operationId": operation_id(route),
        "responses": responses,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = doc.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema_ref(body)}},
        });
    }
    match route.access {
        Access::AccessToken => operation["security"] = json!([{"accessToken": []}]),
        Access::RefreshToken => operation["security"] = json!([{"refreshToken": []}]),
        Access::Anonymous | Access::Operational => {}
    }
    operation
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

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn success_response(status: u16, returns: Returns) -> Value {
    let data = match returns {
        Returns::One(name) => schema_ref(name),
        Returns::List(name) => json!({"type": "array", "items": schema_ref(name)}),
        Returns::Nothing => json!({}),
        Returns::Raw(media_type) => {
            return json!({"description": "OK", "content": {media_type: {}}});
        }
    };
    json!({
        "description": reason(status),
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["statusCode", "data"],
            "properties": {"statusCode": {"type": "integer", "const": status}, "data": data},
        }}},
    })
}

fn error_response(status: u16) -> Value {
    let mut response = json!({
        "description": reason(status),
        "content": {"application/json": {"schema": schema_ref("Error")}},
    });
    if status == 429 {
        response["headers"] = json!({"Retry-After": {
            "description": "seconds until a request will be accepted again",
            "schema": {"type": "integer"},
        }});
    }
    response
}

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Response")
}

fn schemas() -> Value {
    let string = json!({"type": "string"});
    let nullable = json!({"type": ["string", "null"]});
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let user_properties = json!({
        "id": uuid, "email": {"type": "string", "format": "email"}, "username": string,
        "displayName": nullable, "bio": nullable, "avatarUrl": nullable,
        "createdAt": time, "updatedAt": time,
    });
    let mut public_properties = user_properties.clone();
    if let Value::Object(properties) = &mut public_properties {
        for count in ["followersCount", "followingCount", "postsCount"] {
            properties.insert(count.to_owned(), json!({"type": "integer", "minimum": 0}));
        }
    }
    json!({
        "Error": {"type": "object", "required": ["statusCode", "message", "error"], "properties": {
            "statusCode": {"type": "integer"},
            "message": {"description": "what is wrong (a string, or a list of strings)"},
            "error": {"type": "string", "description": "the status's reason phrase"},
        }},
        "User": {"type": "object", "properties": user_properties},
        "PublicProfile": {"type": "object", "description":
            "A user with counts; `email` is only shown to its owner", "properties": public_properties},
        "Post": {"type": "object", "properties": {
            "_id": string, "userId": uuid, "caption": nullable,
            "mediaUrl": {"type": "string", "format": "uri"}, "createdAt": time, "updatedAt": time,
        }},
        "Notification": {"type": "object", "properties": {
            "_id": string, "userId": uuid, "type": {"type": "string", "enum": ["follow", "post_created"]},
            "message": string,
            "data": {"type": "object", "description":
                "`{followerId}` for follow, `{authorId, postId, caption, mediaUrl}` for post_created"},
            "read": {"type": "boolean"}, "createdAt": time, "updatedAt": time,
        }},
        "TokenPair": {"type": "object", "required": ["accessToken", "refreshToken"], "properties": {
            "accessToken": string, "refreshToken": string,
        }},
        "AuthResult": {"type": "object", "required": ["accessToken", "refreshToken"], "properties": {
            "accessToken": string, "refreshToken": string, "user": schema_ref("User"),
        }},
        "UnreadCount": {"type": "object", "required": ["count"], "properties": {
            "count": {"type": "integer", "minimum": 0},
        }},
        "RealtimeTicket": {"type": "object", "description":
            "A one-time ticket for `/realtime/ws?ticket=` or `/realtime/sse?ticket=` on the hub"},
        "RegisterRequest": {"type": "object", "additionalProperties": false,
            "required": ["email", "password"], "properties": {
                "email": {"type": "string", "format": "email"}, "password": string, "username": string,
            }},
        "LoginRequest": {"type": "object", "additionalProperties": false,
            "required": ["email", "password"], "properties": {
                "email": {"type": "string", "format": "email"}, "password": string,
            }},
        "DeleteAccountRequest": {"type": "object", "additionalProperties": false,
            "required": ["password"], "properties": {"password": string}},
        "ChangePasswordRequest": {"type": "object", "additionalProperties": false,
            "required": ["currentPassword", "newPassword"], "properties": {
                "currentPassword": string, "newPassword": {"type": "string", "minLength": 8},
            }},
        "UpdateProfileRequest": {"type": "object", "additionalProperties": false, "properties": {
            "username": string, "displayName": nullable, "bio": nullable, "avatarUrl": nullable,
        }},
        "FollowRequest": {"type": "object", "additionalProperties": false,
            "required": ["userIdToFollow"], "properties": {"userIdToFollow": uuid}},
        "UnfollowRequest": {"type": "object", "additionalProperties": false,
            "required": ["userIdToUnfollow"], "properties": {"userIdToUnfollow": uuid}},
        "CreatePostRequest": {"type": "object", "additionalProperties": false,
            "required": ["mediaUrl"], "properties": {
                "caption": {"type": "string", "maxLength": 2200},
                "mediaUrl": {"type": "string", "format": "uri"},
            }},
    })
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

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = PUBLIC_ROUTES.iter().map(operation_id).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
