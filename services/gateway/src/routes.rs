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
    /// Forwarded to this service, path and query unchanged.
    Upstream(Upstream),
    /// Answered by the gateway itself (health, metrics, docs).
    Gateway,
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

/// What a success response carries inside the envelope's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    /// One object of this component schema.
    One(&'static str),
    /// An array of this component schema.
    List(&'static str),
    /// Not the JSON envelope (documents, metrics, health); described by the media type.
    Raw(&'static str),
    /// `data` carries nothing a client needs.
    Nothing,
}

#[derive(Debug, Clone, Copy)]
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub summary: &'static str,
    pub query: &'static [QueryParam],
    /// Component schema of the JSON request body.
    pub body: Option<&'static str>,
    pub success: u16,
    pub returns: Returns,
    /// Statuses the route answers besides success and the gateway's own (401, 429, 502, 504).
    pub errors: &'static [u16],
}

#[derive(Debug, Clone)]
pub struct PublicRoute {
    pub method: Method,
    /// axum path template; `{name}` segments are path parameters (same syntax as OpenAPI).
    pub path: &'static str,
    pub target: Target,
    pub access: Access,
    pub feed_cache: FeedCache,
    pub doc: RouteDoc,
}

const PAGE: &[QueryParam] = &[
    QueryParam {
        name: "limit",
        description: "page size (the service caps it)",
    },
    QueryParam {
        name: "cursor",
        description: "id of the last item of the previous page",
    },
];
const BEFORE: &[QueryParam] = &[
    QueryParam {
        name: "limit",
        description: "page size (the service caps it)",
    },
    QueryParam {
        name: "before",
        description: "id of the last item of the previous page",
    },
];
const NOTIFICATIONS_QUERY: &[QueryParam] = &[
    QueryParam {
        name: "limit",
        description: "page size (the service caps it)",
    },
    QueryParam {
        name: "before",
        description: "id of the last notification of the previous page",
    },
    QueryParam {
        name: "unread",
        description: "`true`: only unread notifications",
    },
];
const SEARCH_QUERY: &[QueryParam] = &[
    QueryParam {
        name: "q",
        description: "username or display-name prefix",
    },
    QueryParam {
        name: "limit",
        description: "page size (the service caps it)",
    },
];

const fn route(
    method: Method,
    path: &'static str,
    target: Target,
    access: Access,
    doc: RouteDoc,
) -> PublicRoute {
    PublicRoute {
        method,
        path,
        target,
        access,
        feed_cache: FeedCache::Unrelated,
        doc,
    }
}

const fn doc(summary: &'static str, success: u16, returns: Returns) -> RouteDoc {
    RouteDoc {
        summary,
        query: &[],
        body: None,
        success,
        returns,
        errors: &[],
    }
}

const fn with_body(mut doc: RouteDoc, body: &'static str, errors: &'static [u16]) -> RouteDoc {
    doc.body = Some(body);
    doc.errors = errors;
    doc
}

const fn with_query(mut doc: RouteDoc, query: &'static [QueryParam]) -> RouteDoc {
    doc.query = query;
    doc
}

const fn with_errors(mut doc: RouteDoc, errors: &'static [u16]) -> RouteDoc {
    doc.errors = errors;
    doc
}

const fn feed(mut route: PublicRoute, role: FeedCache) -> PublicRoute {
    route.feed_cache = role;
    route
}

use Access::{AccessToken, Anonymous, Operational, RefreshToken};
use Returns::{List, Nothing, One, Raw};
use Upstream::{Auth, Hub, Notifications, Posts, Users};

const fn to(upstream: Upstream) -> Target {
    Target::Upstream(upstream)
}

/// Every public route, in the order of the design's table.
pub const PUBLIC_ROUTES: &[PublicRoute] = &[
    route(
        Method::POST,
        "/auth/register",
        to(Auth),
        Anonymous,
        with_body(
            doc("Create an account and log in", 201, One("AuthResult")),
            "RegisterRequest",
            &[400, 409],
        ),
    ),
    route(
        Method::POST,
        "/auth/login",
        to(Auth),
        Anonymous,
        with_body(
            doc("Log in with email and password", 200, One("AuthResult")),
            "LoginRequest",
            &[400],
        ),
    ),
    route(
        Method::POST,
        "/auth/refresh",
        to(Auth),
        RefreshToken,
        doc(
            "Exchange the refresh token (as bearer) for a new pair; each refresh token works once",
            200,
            One("TokenPair"),
        ),
    ),
    route(
        Method::POST,
        "/auth/logout",
        to(Auth),
        AccessToken,
        doc(
            "End this session: its refresh token stops working",
            200,
            Nothing,
        ),
    ),
    route(
        Method::POST,
        "/auth/logout-all",
        to(Auth),
        AccessToken,
        doc(
            "End every session of the caller: no refresh token works any more and live realtime \
             connections close (4004)",
            200,
            Nothing,
        ),
    ),
    route(
        Method::POST,
        "/auth/password",
        to(Auth),
        AccessToken,
        with_body(
            doc(
                "Change the password (the current one is required): every session ends, the \
                 caller gets a new one",
                200,
                One("TokenPair"),
            ),
            "ChangePasswordRequest",
            &[400, 403, 429],
        ),
    ),
    route(
        Method::DELETE,
        "/auth/account",
        to(Auth),
        AccessToken,
        with_body(
            doc(
                "Delete the caller's account (the password is required): its follows, posts and \
                 notifications go, every session ends and live connections close",
                200,
                Nothing,
            ),
            "DeleteAccountRequest",
            &[400, 403, 429],
        ),
    ),
    route(
        Method::GET,
        "/users/me",
        to(Users),
        AccessToken,
        doc("The caller's own profile", 200, One("User")),
    ),
    route(
        Method::PATCH,
        "/users/me",
        to(Users),
        AccessToken,
        with_body(
            doc("Update the caller's profile", 200, One("User")),
            "UpdateProfileRequest",
            &[400, 409],
        ),
    ),
    route(
        Method::GET,
        "/users/search",
        to(Users),
        AccessToken,
        with_errors(
            with_query(
                doc(
                    "Users by username or display-name prefix and similarity",
                    200,
                    List("PublicProfile"),
                ),
                SEARCH_QUERY,
            ),
            &[400],
        ),
    ),
    feed(
        route(
            Method::POST,
            "/users/follow",
            to(Users),
            AccessToken,
            with_body(
                doc("Follow a user", 201, Nothing),
                "FollowRequest",
                &[400, 404, 409],
            ),
        ),
        FeedCache::Invalidates,
    ),
    feed(
        route(
            Method::POST,
            "/users/unfollow",
            to(Users),
            AccessToken,
            with_body(
                doc("Stop following a user", 200, Nothing),
                "UnfollowRequest",
                &[400, 404],
            ),
        ),
        FeedCache::Invalidates,
    ),
    route(
        Method::GET,
        "/users/following",
        to(Users),
        AccessToken,
        with_query(
            doc("Users the caller follows", 200, List("PublicProfile")),
            PAGE,
        ),
    ),
    route(
        Method::GET,
        "/users/followers",
        to(Users),
        AccessToken,
        with_query(
            doc("Users following the caller", 200, List("PublicProfile")),
            PAGE,
        ),
    ),
    route(
        Method::GET,
        "/users/{id}",
        to(Users),
        AccessToken,
        with_errors(
            doc(
                "A user's public profile with follower, following and post counts",
                200,
                One("PublicProfile"),
            ),
            &[400, 404],
        ),
    ),
    route(
        Method::GET,
        "/users/{id}/followers",
        to(Users),
        AccessToken,
        with_errors(
            with_query(
                doc("Users following this user", 200, List("PublicProfile")),
                PAGE,
            ),
            &[400, 404],
        ),
    ),
    route(
        Method::GET,
        "/users/{id}/following",
        to(Users),
        AccessToken,
        with_errors(
            with_query(
                doc("Users this user follows", 200, List("PublicProfile")),
                PAGE,
            ),
            &[400, 404],
        ),
    ),
    route(
        Method::GET,
        "/users/{id}/posts",
        to(Posts),
        AccessToken,
        with_errors(
            with_query(
                doc("This user's posts, newest first", 200, List("Post")),
                BEFORE,
            ),
            &[400],
        ),
    ),
    feed(
        route(
            Method::POST,
            "/posts",
            to(Posts),
            AccessToken,
            with_body(
                doc("Publish a post", 201, One("Post")),
                "CreatePostRequest",
                &[400],
            ),
        ),
        FeedCache::Invalidates,
    ),
    feed(
        route(
            Method::GET,
            "/posts/feed",
            to(Posts),
            AccessToken,
            with_errors(
                with_query(
                    doc(
                        "Home feed: the caller's and followed users' posts, newest first",
                        200,
                        List("Post"),
                    ),
                    BEFORE,
                ),
                &[400],
            ),
        ),
        FeedCache::Serves,
    ),
    route(
        Method::GET,
        "/posts/me",
        to(Posts),
        AccessToken,
        with_errors(
            with_query(
                doc("The caller's posts, newest first", 200, List("Post")),
                BEFORE,
            ),
            &[400],
        ),
    ),
    route(
        Method::GET,
        "/posts/{id}",
        to(Posts),
        AccessToken,
        with_errors(doc("One post", 200, One("Post")), &[400, 404]),
    ),
    feed(
        route(
            Method::DELETE,
            "/posts/{id}",
            to(Posts),
            AccessToken,
            with_errors(
                doc("Delete a post (its author only)", 200, Nothing),
                &[400, 403, 404],
            ),
        ),
        FeedCache::Invalidates,
    ),
    route(
        Method::GET,
        "/notifications/my",
        to(Notifications),
        AccessToken,
        with_errors(
            with_query(
                doc(
                    "The caller's notifications, newest first",
                    200,
                    List("Notification"),
                ),
                NOTIFICATIONS_QUERY,
            ),
            &[400],
        ),
    ),
    route(
        Method::GET,
        "/notifications/unread-count",
        to(Notifications),
        AccessToken,
        doc("How many notifications are unread", 200, One("UnreadCount")),
    ),
    route(
        Method::POST,
        "/notifications/{id}/read",
        to(Notifications),
        AccessToken,
        with_errors(doc("Mark one notification read", 200, Nothing), &[400, 404]),
    ),
    route(
        Method::POST,
        "/notifications/read-all",
        to(Notifications),
        AccessToken,
        doc("Mark every notification read", 200, Nothing),
    ),
    route(
        Method::POST,
        "/realtime/ticket",
        to(Hub),
        AccessToken,
        doc(
            "A one-time, short-lived ticket for the realtime hub's WebSocket/SSE URL",
            200,
            One("RealtimeTicket"),
        ),
    ),
    route(
        Method::GET,
        "/openapi.json",
        Target::Gateway,
        Operational,
        doc("This document", 200, Raw("application/json")),
    ),
    route(
        Method::GET,
        "/api",
        Target::Gateway,
        Operational,
        doc("Swagger UI for this document", 200, Raw("text/html")),
    ),
    route(
        Method::GET,
        "/health",
        Target::Gateway,
        Operational,
        doc("The gateway process is alive", 200, Raw("application/json")),
    ),
    route(
        Method::GET,
        "/ready",
        Target::Gateway,
        Operational,
        with_errors(
            doc(
                "The gateway's backing services answer (503 names those that do not)",
                200,
                Raw("application/json"),
            ),
            &[503],
        ),
    ),
    route(
        Method::GET,
        "/metrics",
        Target::Gateway,
        Operational,
        with_errors(
            doc(
                "Prometheus metrics: requests by route and status, latency histograms. Needs the \
                 service credential (`Authorization: Bearer <INTERNAL_TOKEN>`) unless the \
                 deployment sets METRICS_ACCESS=public",
                200,
                Raw("text/plain"),
            ),
            &[401],
        ),
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
            .filter(|r| r.access != Access::AccessToken && r.target != Target::Gateway)
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/auth/register", "/auth/login", "/auth/refresh"]);
    }
}
