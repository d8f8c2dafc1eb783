use instaclone_shared::auth::TokenKind;
use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn register_login_refresh_reuse_detection_logout() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;
    let login = app.logged_in("ada@example.com").await;
    let session = app.claims(&login["refreshToken"], TokenKind::Refresh).sid;

    // Refresh: a new pair in the same session; the refresh token changes.
    let first = login["refreshToken"].as_str().unwrap();
    let reply = app.refresh(first).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["statusCode"], 200);
    let second = reply.data()["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let access = app.claims(&reply.data()["accessToken"], TokenKind::Access);
    let rotated = app.claims(&reply.data()["refreshToken"], TokenKind::Refresh);
    assert_eq!((access.sid, rotated.sid), (session, session));

    // The rotated token works in turn.
    let reply = app.refresh(&second).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let third = reply.data()["refreshToken"].as_str().unwrap().to_owned();

    // Presenting a spent token again is reuse: rejected, and the whole session revoked ...
    let reuse = app.refresh(first).await;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED, "{}", reuse.body);
    assert!(reuse.message().contains("already used"), "{}", reuse.body);
    assert!(!app.session_exists(session).await);
    // ... so the newest token, in whoever's hands, is dead too.
    let newest = app.refresh(&third).await;
    assert_eq!(newest.status, StatusCode::UNAUTHORIZED, "{}", newest.body);

    // Log in again, log out: that session's refresh token stops working.
    let login = app.logged_in("ada@example.com").await;
    let access = login["accessToken"].as_str().unwrap();
    let refresh = login["refreshToken"].as_str().unwrap();
    let reply = app.logout(access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["statusCode"], 200);
    let after = app.refresh(refresh).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    assert!(after.message().contains("revoked"), "{}", after.body);
    // Logging out twice is harmless.
    assert_eq!(app.logout(access).await.status, StatusCode::OK);
}

#[tokio::test]
async fn devices_are_independent_sessions() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;
    let phone = app.logged_in("ada@example.com").await;
    let laptop = app.logged_in("ada@example.com").await;

    // The phone refreshes, then a stale copy of its first token is replayed: only the phone's
    // session dies.
    let phone_first = phone["refreshToken"].as_str().unwrap();
    assert_eq!(app.refresh(phone_first).await.status, StatusCode::OK);
    assert_eq!(
        app.refresh(phone_first).await.status,
        StatusCode::UNAUTHORIZED
    );

    let reply = app.refresh(laptop["refreshToken"].as_str().unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let laptop_refresh = reply.data()["refreshToken"].as_str().unwrap().to_owned();
    let laptop_access = reply.data()["accessToken"].as_str().unwrap().to_owned();

    // A third device logs out; the laptop stays logged in.
    let tablet = app.logged_in("ada@example.com").await;
    assert_eq!(
        app.logout(tablet["accessToken"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let reply = app.refresh(&laptop_refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        app.refresh(tablet["refreshToken"].as_str().unwrap())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // The laptop's older access token still logs the laptop out.
    assert_eq!(app.logout(&laptop_access).await.status, StatusCode::OK);
    let laptop_sid = app
        .claims(&reply.data()["refreshToken"], TokenKind::Refresh)
        .sid;
    assert!(!app.session_exists(laptop_sid).await);
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_cannot_both_succeed() {
    let app = spawn_app().await;
    app.registered("ada@example.com").await;
    let login = app.logged_in("ada@example.com").await;
    let token = login["refreshToken"].as_str().unwrap();

    let replies = futures_util::future::join_all((0..8).map(|_| app.refresh(token))).await;
    let succeeded = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let rejected = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(succeeded, 1, "exactly one refresh may win");
    assert_eq!(rejected, 7);
}

#[tokio::test]
async fn refresh_needs_a_refresh_token_in_the_bearer_header() {
    let app = spawn_app().await;
    let registered = app.registered("ada@example.com").await;

    let missing = app.post("/auth/refresh").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.message(), "Missing bearer token");

    let basic = app
        .post("/auth/refresh")
        .header("authorization", "Basic YWRhOnB3")
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    let garbage = app.refresh("not.a.jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(garbage.message(), "Invalid token");

    // An access token is not a refresh token.
    let access = app
        .refresh(registered["accessToken"].as_str().unwrap())
        .await;
    assert_eq!(access.status, StatusCode::UNAUTHORIZED, "{}", access.body);
    // And none of that touched the real session.
    let reply = app
        .refresh(registered["refreshToken"].as_str().unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}
