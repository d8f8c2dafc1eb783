//! Each service's OpenAPI description, made from the code that serves it.
//!
//! A service declares every operation with `#[utoipa::path]` on its handler, the request and
//! response types derive `utoipa::ToSchema`, and the routes are registered with
//! `utoipa_axum::routes!` into an `OpenApiRouter`: the router a service serves and the document
//! that describes it are one value, so a route cannot be served undocumented or documented with
//! another shape. A handler names only what is its own: the `data` type of its success, the
//! statuses its domain answers (404, 409, ...), its parameters with their formats.
//!
//! [`finish`] adds what every handler shares through this crate's extractors and envelope, so
//! no handler repeats it: the success envelope around `data`, the error body, 400 for any
//! operation with parameters or a body (the extractors' rejections), 413 and 415 for a JSON
//! body, 401 for an operation behind a token, and 503 with `Retry-After` for a backing store out
//! of reach. The gateway merges the finished documents of the services behind it into the one
//! public document (see its `openapi` module), adding its own answers (429, 502, 504).

use serde_json::{Map, Value, json};
use utoipa::PartialSchema;

use crate::http::ErrorBody;

/// The security scheme of routes that need an access token.
pub const ACCESS_TOKEN: &str = "accessToken";
/// The security scheme of `POST /auth/refresh`, which takes the refresh token as bearer.
pub const REFRESH_TOKEN: &str = "refreshToken";

/// The finished document of the service `service`: `api` (from its `OpenApiRouter`) with the
/// envelope, the shared error answers and the security schemes added.
pub fn finish(service: &str, api: utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    document["info"] = json!({
        "title": format!("Instaclone {service} service"),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(Value::Object(paths)) = document.get_mut("paths") {
        for item in paths.values_mut() {
            let Value::Object(item) = item else { continue };
            for operation in item.values_mut() {
                if let Value::Object(operation) = operation {
                    finish_operation(operation);
                }
            }
        }
    }
    let components = document
        .as_object_mut()
        .map(|root| root.entry("components").or_insert_with(|| json!({})));
    if let Some(Value::Object(components)) = components {
        let schemas = components.entry("schemas").or_insert_with(|| json!({}));
        if let Value::Object(schemas) = schemas {
            let error = serde_json::to_value(ErrorBody::schema()).unwrap_or_default();
            schemas.insert("Error".to_owned(), error);
        }
        components.insert("securitySchemes".to_owned(), security_schemes());
    }
    document
}

fn security_schemes() -> Value {
    json!({
        ACCESS_TOKEN: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "Access token from login, register or refresh"},
        REFRESH_TOKEN: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "Refresh token from login, register or refresh"},
    })
}

fn finish_operation(operation: &mut Map<String, Value>) {
    let has_body = operation.contains_key("requestBody");
    let has_parameters = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|parameters| !parameters.is_empty());
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|security| !security.is_empty());
    let Some(Value::Object(responses)) = operation.get_mut("responses") else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        match status.parse::<u16>() {
            Ok(code @ 200..=299) => wrap_in_envelope(code, response),
            Ok(code) => describe_error(code, response),
            Err(_) => {}
        }
    }
    let mut shared = vec![503];
    if has_body || has_parameters {
        shared.push(400);
    }
    if has_body {
        shared.extend([413, 415]);
    }
    if secured {
        shared.push(401);
    }
    for status in shared {
        add_error(responses, status);
    }
}

/// Adds an error answer (with the error body) unless the handler documents that status itself.
pub fn add_error(responses: &mut Map<String, Value>, status: u16) {
    let entry = responses
        .entry(status.to_string())
        .or_insert_with(|| json!({}));
    describe_error(status, entry);
}

/// The envelope `{"statusCode", "data"}` around what the handler documents as its `data`.
fn wrap_in_envelope(status: u16, response: &mut Value) {
    let Some(content) = response
        .get_mut("content")
        .and_then(|content| content.get_mut("application/json"))
    else {
        return;
    };
    let data = content.get("schema").cloned().unwrap_or_else(|| json!({}));
    content["schema"] = json!({
        "type": "object",
        "required": ["statusCode", "data"],
        "properties": {"statusCode": {"type": "integer", "const": status}, "data": data},
    });
}

/// An error answer carries the error body; 429 and 503 also say when to try again.
fn describe_error(status: u16, response: &mut Value) {
    let Value::Object(response) = response else {
        return;
    };
    response
        .entry("description")
        .or_insert_with(|| Value::String(reason(status).to_owned()));
    response.insert(
        "content".to_owned(),
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}),
    );
    if matches!(status, 429 | 503) {
        response.insert(
            "headers".to_owned(),
            json!({"Retry-After": {
                "description": "seconds until a request will be accepted again",
                "schema": {"type": "integer", "minimum": 0},
            }}),
        );
    }
}

/// The status's reason phrase, as the error body's `error` says it.
fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Error")
}

/// Test support: each service's document as the gateway holds it.
///
/// The gateway cannot link the services (it would link every driver they use), so it serves a
/// copy of each finished document kept in `services/gateway/openapi/<service>.json`. A test in
/// each service compares the copy with what its code describes now; run it with
/// `INSTACLONE_WRITE_OPENAPI=1` to write the copy afresh after changing an operation.
#[cfg(feature = "testing")]
pub fn assert_gateway_copy_is_current(service: &str, document: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../services/gateway/openapi")
        .join(format!("{service}.json"));
    let mut current = serde_json::to_string_pretty(document).unwrap_or_default();
    current.push('\n');
    if std::env::var_os("INSTACLONE_WRITE_OPENAPI").is_some() {
        if let Err(error) = std::fs::write(&path, &current) {
            panic!("cannot write {}: {error}", path.display());
        }
        return;
    }
    let copy = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        copy == current,
        "{} is not what the {service} service's code describes: run \
         `INSTACLONE_WRITE_OPENAPI=1 cargo test -p instaclone-{service} openapi` and commit it",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_are_enveloped_and_shared_errors_added() {
        let mut operation = json!({
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "security": [{ACCESS_TOKEN: []}],
            "responses": {
                "201": {"description": "made", "content": {"application/json": {"schema":
                    {"$ref": "#/components/schemas/Post"}}}},
                "404": {"description": "no such post"},
            },
        });
        let Value::Object(map) = &mut operation else {
            unreachable!()
        };
        finish_operation(map);
        let responses = &operation["responses"];
        assert_eq!(
            responses["201"]["content"]["application/json"]["schema"]["properties"]["data"]["$ref"],
            "#/components/schemas/Post"
        );
        assert_eq!(responses["404"]["description"], "no such post");
        for status in ["400", "401", "404", "413", "415", "503"] {
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{status}"
            );
        }
        assert!(responses["503"]["headers"]["Retry-After"].is_object());
    }
}
