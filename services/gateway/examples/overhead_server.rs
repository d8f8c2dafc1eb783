//! Serves a stand-in service and the real gateway in front of it, for measuring what the
//! gateway adds (run `wrk` against both URLs; see `docs/gateway.md`).
//!
//! The stand-in answers every request with a fixed public-profile envelope (about 300 bytes), so
//! the difference between the two URLs is the gateway: token verification, the Redis rate-limit
//! check, and the proxy hop over a pooled connection. Redis comes from `REDIS_URL` (default local);
//! a throwaway key prefix is used. `RATE_LIMIT_USER=0` measures without the rate limiter.
//!
//! ```sh
//! cargo run --release -p instaclone-gateway --example overhead_server
//! ```

#![allow(clippy::print_stdout)] // a measurement tool: it prints what to point wrk at

use std::time::Duration;

use axum::{Json, Router, http::header::CONTENT_TYPE};
use instaclone_gateway::GatewaySettings;
use instaclone_shared::{
    auth::{TokenIssuer, TokenKind, generate_internal_token, generate_key_pair},
    config::{Secret, Settings},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    let keys = generate_key_pair()?;
    settings.jwt.private_key_pem = Some(Secret::new(keys.private_key_pem));
    settings.jwt.public_key_pem = Some(keys.public_key_pem);
    settings.internal.token = Some(generate_internal_token());
    // Throwaway names, so nothing of a real deployment is touched and the queue goes away.
    let run = uuid::Uuid::new_v4().simple().to_string();
    settings.redis.key_prefix = format!("bench:{run}:");
    settings.amqp.queue_prefix = format!("bench.{run}.");
    settings.amqp.queue_expires = Some(Duration::from_secs(60));
    settings.http.gateway_port = 0;

    let profile = json!({"statusCode": 200, "data": {
        "id": "0193b1e4-7c1a-7d2e-9a51-3f3c2b1a0e11", "email": "ada@example.com",
        "username": "ada", "displayName": "Ada Lovelace", "bio": "Analytical engines",
        "avatarUrl": "https://img.example/ada.jpg", "followersCount": 1815,
        "followingCount": 42, "postsCount": 7,
        "createdAt": "2026-11-26T10:00:00Z", "updatedAt": "2026-11-26T10:00:00Z",
    }});
    let stand_in = Router::new().fallback(move || {
        let profile = profile.clone();
        async move { ([(CONTENT_TYPE, "application/json")], Json(profile)) }
    });
    let listener = tokio::net::TcpListener::bind((settings.http.host, 0)).await?;
    let upstream = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, stand_in).await });
    for url in [
        &mut settings.services.auth,
        &mut settings.services.users,
        &mut settings.services.posts,
        &mut settings.services.notifications,
        &mut settings.services.hub,
    ] {
        url.clone_from(&upstream);
    }

    let gateway_settings = GatewaySettings::from_env()?;
    let shutdown = CancellationToken::new();
    let app = instaclone_gateway::build_with(&settings, gateway_settings, shutdown.clone()).await?;
    let gateway = format!("http://{}", app.address());
    let server = tokio::spawn(app.run_until_stopped());

    // Long enough for any measurement run.
    settings.jwt.access_ttl = Duration::from_secs(24 * 3600);
    let issuer = TokenIssuer::from_settings(&settings.jwt)?;
    let (token, _) = issuer.issue(
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        TokenKind::Access,
    )?;
    println!("UPSTREAM={upstream}");
    println!("GATEWAY={gateway}");
    println!("TOKEN={token}");

    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    server.await??;
    Ok(())
}
