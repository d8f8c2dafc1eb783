//! The public API as one table: every route the gateway answers, where it goes, what it needs.
//!
//! The router (`proxied_routes` in the crate root) and the OpenAPI document ([`crate::openapi`])
//! are both made from [`PUBLIC_ROUTES`], so a route cannot be served without being documented or
//! documented without being served. Routes are listed one by one rather than forwarded by
//! prefix: anything not in the table (`/internal/*` above all) is a 404 at the gateway and never
//! reaches a service, and request metrics are labelled with these templates, never raw paths.

use axum::http::Method;

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Auth,
    Users,
    Posts,
    Notifications,
    Hub,
}

impl Upstream {
    pub const ALL: [Self; 5] = [
        Self::Auth,
        Self::Users,
        Self::Posts,
        Self::Notifications,
        Self::Hub,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Users => "users",
            Self::Posts => "posts",
            Self::Notifications => "notifications",
            Self::Hub => "hub",
        }
    }
}

/// Who answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Forwarded to this service, path and query unchanged. The service's own OpenAPI document
    /// describes the operation (see [`crate::openapi`]).
    Upstream(Upstream),
    /// Answered by the gateway itself (health, metrics, docs), described here.
    Gateway(GatewayDoc),
}

/// How the OpenAPI document describes one of the gateway's own routes. None of them answers the
/// JSON envelope: each is described by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayDoc {
    pub summary: &'static str,
    pub media_type: &'static str,
    /// Statuses the route answers besides 200.
    pub errors: &'static [u16],
}

/// What the caller must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing; rate-limited per client address.
    Anonymous,
    /// A refresh token as bearer, checked by the auth service (the gateway cannot tell a revoked
    /// one); rate-limited per client address like anonymous routes.
    RefreshToken,
    /// A valid access token, verified here before forwarding and again by the service;
    /// rate-limited per user.
    AccessToken,
    /// The gateway's own routes (health, readiness, metrics, the API docs): no token and no rate
    /// limit, so probes and scrapers are never throttled, and static documents cost nothing.
    Operational,
}

/// The route's part in the home-feed cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedCache {
    Unrelated,
    /// The home feed itself: answered from the caller's cache entry when fresh.
    Serves,
    /// Success changes what the caller's own home feed shows: drop the caller's entries.
    Invalidates,
}

#[derive(Debug, Clone)]
pub struct PublicRoute {
    pub method: Method,
    /// axum path template; `{name}` segments are path parameters (same syntax as OpenAPI).
    pub path: &'static str,
    pub target: Target,
    pub access: Access,
    pub feed_cache: FeedCache,
}

const fn route(
    method: Method,
    path: &'static str,
    upstream: Upstream,
    access: Access,
) -> PublicRoute {
    PublicRoute {
        method,
        path,
        target: Target::Upstream(upstream),
        access,
        feed_cache: FeedCache::Unrelated,
    }
}

const fn own(
    path: &'static str,
    summary: &'static str,
    media_type: &'static str,
    errors: &'static [u16],
) -> PublicRoute {
    PublicRoute {
        method: Method::GET,
        path,
        target: Target::Gateway(GatewayDoc {
            summary,
            media_type,
            errors,
        }),
        access: Access::Operational,
        feed_cache: FeedCache::Unrelated,
    }
}

const fn feed(mut route: PublicRoute, role: FeedCache) -> PublicRoute {
    route.feed_cache = role;
    route
}

use Access::{AccessToken, Anonymous, RefreshToken};
use Upstream::{Auth, Hub, Notifications, Posts, Users};

/// Every public route, in the order of the design's table.
pub const PUBLIC_ROUTES: &[PublicRoute] = &[
    route(Method::POST, "/auth/register", Auth, Anonymous),
    route(Method::POST, "/auth/login", Auth, Anonymous),
    route(Method::POST, "/auth/refresh", Auth, RefreshToken),
    route(Method::POST, "/auth/logout", Auth, AccessToken),
    route(Method::POST, "/auth/logout-all", Auth, AccessToken),
    route(Method::POST, "/auth/password", Auth, AccessToken),
    route(Method::DELETE, "/auth/account", Auth, AccessToken),
    route(Method::GET, "/users/me", Users, AccessToken),
    route(Method::PATCH, "/users/me", Users, AccessToken),
    route(Method::GET, "/users/search", Users, AccessToken),
    feed(
        route(Method::POST, "/users/follow", Users, AccessToken),
        FeedCache::Invalidates,
    ),
    feed(
        route(Method::POST, "/users/unfollow", Users, AccessToken),
        FeedCache::Invalidates,
    ),
    route(Method::GET, "/users/following", Users, AccessToken),
    route(Method::GET, "/users/followers", Users, AccessToken),
    route(Method::GET, "/users/{id}", Users, AccessToken),
    route(Method::GET, "/users/{id}/followers", Users, AccessToken),
    route(Method::GET, "/users/{id}/following", Users, AccessToken),
    route(Method::GET, "/users/{id}/posts", Posts, AccessToken),
    feed(
        route(Method::POST, "/posts", Posts, AccessToken),
        FeedCache::Invalidates,
    ),
    feed(
        route(Method::GET, "/posts/feed", Posts, AccessToken),
        FeedCache::Serves,
    ),
    route(Method::GET, "/posts/me", Posts, AccessToken),
    route(Method::GET, "/posts/{id}", Posts, AccessToken),
    feed(
        route(Method::DELETE, "/posts/{id}", Posts, AccessToken),
        FeedCache::Invalidates,
    ),
    route(Method::GET, "/notifications/my", Notifications, AccessToken),
    route(
        Method::GET,
        "/notifications/unread-count",
        Notifications,
        AccessToken,
    ),
    route(
        Method::POST,
        "/notifications/{id}/read",
        Notifications,
        AccessToken,
    ),
    route(
        Method::POST,
        "/notifications/read-all",
        Notifications,
        AccessToken,
    ),
    route(Method::POST, "/realtime/ticket", Hub, AccessToken),
    own("/openapi.json", "This document", "application/json", &[]),
    own("/api", "Swagger UI for this document", "text/html", &[]),
    own(
        "/health",
        "The gateway process is alive",
        "application/json",
        &[],
    ),
    own(
        "/ready",
        "The gateway's backing services answer (503 names those that do not)",
        "application/json",
        &[503],
    ),
    own(
        "/metrics",
        "Prometheus metrics: requests by route and status, latency histograms. Needs the service \
         credential (`Authorization: Bearer <INTERNAL_TOKEN>`) unless the deployment sets \
         METRICS_ACCESS=public",
        "text/plain",
        &[401],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_method_and_path_appears_once() {
        let mut seen = HashSet::new();
        for route in PUBLIC_ROUTES {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "{} {} is listed twice",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn nothing_internal_is_public() {
        assert!(
            PUBLIC_ROUTES
                .iter()
                .all(|r| !r.path.starts_with("/internal"))
        );
    }

    #[test]
    fn only_register_login_refresh_and_gateway_routes_skip_the_access_token() {
        let open: Vec<&str> = PUBLIC_ROUTES
            .iter()
            .filter(|r| r.access != Access::AccessToken && matches!(r.target, Target::Upstream(_)))
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/auth/register", "/auth/login", "/auth/refresh"]);
    }
}
