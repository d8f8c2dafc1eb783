//! The home feed: the caller's posts and those of everyone they follow, newest first, with the
//! follow graph read live from the real users service, timelines in the real Redis and their
//! events through the real RabbitMQ.

use reqwest::StatusCode;

use instaclone_shared::testing::TcpProxy;

use crate::helpers::{
    spawn_app_with_users, spawn_app_with_users_in, spawn_app_with_users_through_proxy,
};

#[tokio::test]
async fn the_feed_follows_the_follow_graph() {
    let app = spawn_app_with_users().await;
    let (ada, ada_token) = app.registered_user("ada").await;
    let (bob, bob_token) = app.registered_user("bob").await;
    let (_, cy_token) = app.registered_user("cyd").await;

    let id = |post: serde_json::Value| post["_id"].as_str().unwrap().to_owned();
    let bob_1 = id(app.create_post(&bob_token, "bob 1").await);
    let cy_1 = id(app.create_post(&cy_token, "cy 1").await);
    let ada_1 = id(app.create_post(&ada_token, "ada 1").await);
    let bob_2 = id(app.create_post(&bob_token, "bob 2").await);

    // Following nobody: only one's own posts.
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        std::slice::from_ref(&ada_1)
    );

    // Ada's timeline now exists; following Bob backfills it with his posts (user.followed).
    app.set_following(&ada_token, bob, true).await;
    app.eventually_ids(
        &ada_token,
        "/posts/feed",
        &[bob_2.clone(), ada_1.clone(), bob_1.clone()],
    )
    .await;
    assert!(
        !app.list_ids(&ada_token, "/posts/feed")
            .await
            .contains(&cy_1),
        "nobody else's posts"
    );
    assert_eq!(
        app.timeline_ids(ada).await,
        [bob_2.clone(), ada_1.clone(), bob_1.clone()],
        "served from the Redis timeline"
    );

    // Paging through the feed.
    let first = app.list_ids(&ada_token, "/posts/feed?limit=2").await;
    assert_eq!(first, [bob_2.clone(), ada_1.clone()]);
    let rest = app
        .list_ids(
            &ada_token,
            &format!("/posts/feed?limit=2&before={}", first[1]),
        )
        .await;
    assert_eq!(rest, std::slice::from_ref(&bob_1));

    // A deleted post leaves the feed at once, before post.deleted reaches the timeline.
    let status = app
        .delete(&format!("/posts/{bob_2}"))
        .bearer(&bob_token)
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        [ada_1.clone(), bob_1.clone()]
    );

    // Unfollowing takes effect on the next request (the read checks the follow graph).
    app.set_following(&ada_token, bob, false).await;
    assert_eq!(
        app.list_ids(&ada_token, "/posts/feed").await,
        std::slice::from_ref(&ada_1)
    );
    // ... and user.unfollowed then purges Bob's posts from her timeline.
    app.eventually_timeline(ada, std::slice::from_ref(&ada_1))
        .await;
    // Bob's own feed never had Ada's posts: following is one-way.
    assert_eq!(app.list_ids(&bob_token, "/posts/feed").await, [bob_1]);
}

#[tokio::test]
async fn a_new_post_reaches_the_followers_timelines_through_post_created() {
    let app = spawn_app_with_users().await;
    let (author, author_token) = app.registered_user("eve").await;
    let mut readers = Vec::new();
    for name in ["fay", "gus", "hal"] {
        let (reader, token) = app.registered_user(name).await;
        app.set_following(&token, author, true).await;
        // The first read builds the reader's timeline.
        app.eventually_ids(&token, "/posts/feed", &[]).await;
        readers.push((reader, token));
    }
    app.eventually_ids(&author_token, "/posts/feed", &[]).await;
    let post = app.create_post(&author_token, "hello followers").await;
    let post = post["_id"].as_str().unwrap().to_owned();
    // Read-your-writes: the author's own feed has it at once, before any event is consumed.
    assert_eq!(
        app.list_ids(&author_token, "/posts/feed").await,
        std::slice::from_ref(&post)
    );
    for (reader, token) in &readers {
        app.eventually_ids(token, "/posts/feed", std::slice::from_ref(&post))
            .await;
        assert_eq!(app.timeline_ids(*reader).await, std::slice::from_ref(&post));
    }
    // The author's own timeline (built by her read above) got it with the 201.
    assert_eq!(app.timeline_ids(author).await, std::slice::from_ref(&post));

    // Deleting it takes it out of every timeline (post.deleted).
    let status = app
        .delete(&format!("/posts/{post}"))
        .bearer(&author_token)
        .await
        .status;
    assert_eq!(status, StatusCode::OK);
    for (reader, _) in &readers {
        app.eventually_timeline(*reader, &[]).await;
    }
}

#[tokio::test]
async fn a_lost_timeline_is_rebuilt_from_the_store_and_the_follow_graph() {
    let app = spawn_app_with_users().await;
    let (reader, reader_token) = app.registered_user("ian").await;
    let mut expected = Vec::new();
    for name in ["joe", "kim", "lee"] {
        let (author, token) = app.registered_user(name).await;
        app.set_following(&reader_token, author, true).await;
        for n in 0..3 {
            let post = app.create_post(&token, &format!("{name} {n}")).await;
            expected.push(post["_id"].as_str().unwrap().to_owned());
        }
    }
    expected.sort_unstable_by(|a, b| b.cmp(a));
    // No timeline existed while those posts were made: the first read builds it.
    assert!(app.timeline_ids(reader).await.is_empty());
    assert_eq!(app.list_ids(&reader_token, "/posts/feed").await, expected);
    assert_eq!(app.timeline_ids(reader).await, expected);

    // Redis loses it (restart, eviction): the next read rebuilds it, same answer.
    app.forget_timeline(reader).await;
    assert_eq!(app.list_ids(&reader_token, "/posts/feed").await, expected);
    assert_eq!(app.timeline_ids(reader).await, expected);

    // A burst of reads of a reader without a timeline: every page is right (the reads that did
    // not win the claim came from MongoDB) and the timeline ends up the same.
    app.forget_timeline(reader).await;
    let burst = (0..20).map(|_| app.list_ids(&reader_token, "/posts/feed"));
    for page in futures_util::future::join_all(burst).await {
        assert_eq!(page, expected);
    }
    app.eventually_timeline(reader, &expected).await;
}

#[tokio::test]
async fn a_rebuild_is_claimed_by_one_caller_at_a_time() {
    let app = spawn_app_with_users().await;
    let timelines = app.timelines().await;
    let reader = uuid::Uuid::now_v7();
    let claims = (0..20).map(|_| timelines.begin_rebuild(reader));
    let won = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter(|claimed| *claimed.as_ref().unwrap())
        .count();
    assert_eq!(won, 1, "one rebuild, not one per concurrent read");
    // The claim is bounded in time, and a failed rebuild gives it back at once.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(timelines.floor_key(reader))
        .query_async(&mut app.env.redis().await)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "claim held for {ttl} ms");
    timelines.abandon_rebuild(reader).await.unwrap();
    assert!(timelines.begin_rebuild(reader).await.unwrap());
}

#[tokio::test]
async fn pages_older_than_the_timeline_come_from_mongodb() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    env.settings.timelines.capacity = std::num::NonZeroUsize::new(4).unwrap();
    let app = spawn_app_with_users_in(env).await;
    let (reader, reader_token) = app.registered_user("max").await;
    let (author, author_token) = app.registered_user("ned").await;
    app.set_following(&reader_token, author, true).await;
    app.eventually_ids(&reader_token, "/posts/feed", &[]).await;

    let mut expected = Vec::new();
    for n in 0..11 {
        let token = if n % 3 == 0 {
            &reader_token
        } else {
            &author_token
        };
        let post = app.create_post(token, &format!("post {n}")).await;
        expected.insert(0, post["_id"].as_str().unwrap().to_owned());
    }
    // The newest posts reach the timeline; it keeps only 4 of them.
    app.eventually_ids(&reader_token, "/posts/feed?limit=4", &expected[..4])
        .await;
    app.eventually_timeline(reader, &expected[..4]).await;

    // Walking the whole feed three at a time crosses from Redis into MongoDB without a gap or
    // a repeat.
    let mut walked = Vec::new();
    let mut path = "/posts/feed?limit=3".to_owned();
    loop {
        let page = app.list_ids(&reader_token, &path).await;
        let Some(last) = page.last() else { break };
        path = format!("/posts/feed?limit=3&before={last}");
        walked.extend(page);
    }
    assert_eq!(walked, expected);
}

#[tokio::test]
async fn the_feed_is_read_from_mongodb_while_redis_is_down() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    env.use_single_redis();
    let (redis, through_proxy) = TcpProxy::for_redis(&env.settings).await;
    env.settings.redis.url = through_proxy;
    let app = spawn_app_with_users_in(env).await;
    let (_, reader_token) = app.registered_user("oli").await;
    let (author, author_token) = app.registered_user("pia").await;
    app.set_following(&reader_token, author, true).await;
    let mut expected = Vec::new();
    for n in 0..3 {
        let post = app.create_post(&author_token, &format!("pia {n}")).await;
        expected.insert(0, post["_id"].as_str().unwrap().to_owned());
    }

    redis.cut();
    assert_eq!(app.list_ids(&reader_token, "/posts/feed").await, expected);
    // Writing does not depend on Redis either.
    let post = app.create_post(&author_token, "during the outage").await;
    expected.insert(0, post["_id"].as_str().unwrap().to_owned());
    assert_eq!(app.list_ids(&reader_token, "/posts/feed").await, expected);

    redis.restore().await;
    app.eventually_ids(&reader_token, "/posts/feed", &expected)
        .await;
}

#[tokio::test]
async fn pages_above_the_floor_need_neither_mongodb_nor_the_users_service() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    let (mongo, through_proxy) = TcpProxy::for_mongo(&env.settings).await;
    let direct = std::mem::replace(&mut env.settings.mongo.url, through_proxy);
    let (mut app, users) = spawn_app_with_users_through_proxy(env).await;
    // The test's own clean-up goes straight to the server.
    app.env.settings.mongo.url = direct;
    let (_, reader_token) = app.registered_user("ray").await;
    let (author, author_token) = app.registered_user("sue").await;
    app.set_following(&reader_token, author, true).await;
    app.eventually_ids(&reader_token, "/posts/feed", &[]).await;
    let mut expected = Vec::new();
    for n in 0..5 {
        let post = app.create_post(&author_token, &format!("sue {n}")).await;
        expected.insert(0, post["_id"].as_str().unwrap().to_owned());
    }
    app.eventually_ids(&reader_token, "/posts/feed", &expected)
        .await;

    // With both cut off, the feed is still served: the timeline, the follow set and the post
    // bodies are all in Redis.
    mongo.cut();
    users.cut();
    assert_eq!(app.list_ids(&reader_token, "/posts/feed").await, expected);
    let first = app.list_ids(&reader_token, "/posts/feed?limit=2").await;
    assert_eq!(first, expected[..2]);
    let rest = app
        .list_ids(
            &reader_token,
            &format!("/posts/feed?limit=10&before={}", first[1]),
        )
        .await;
    assert_eq!(rest, expected[2..]);
    mongo.restore().await;
    users.restore().await;
}

#[tokio::test]
async fn a_feed_page_is_refused_with_a_clear_400_before_the_graph_is_read() {
    let app = spawn_app_with_users().await;
    let (_, token) = app.registered_user("dee").await;
    for query in ["limit=0", "limit=101", "before=xyz", "page=2"] {
        let (status, body) = app
            .get(&format!("/posts/feed?{query}"))
            .bearer(&token)
            .await
            .parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

#[tokio::test]
async fn the_feed_is_a_503_not_a_500_while_the_users_service_is_down() {
    let mut env = instaclone_shared::testing::TestEnv::new();
    // Nothing listens on port 1.
    env.settings.services.users = "http://127.0.0.1:1".to_owned();
    let app = crate::helpers::spawn_app_with(env).await;
    let (_, token) = crate::helpers::user(&app);
    app.create_post(&token, "still works").await;
    let (status, body) = app.get("/posts/feed").bearer(&token).await.parts();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["statusCode"], 503);
    // Lists that do not need the graph are unaffected.
    assert_eq!(app.list_ids(&token, "/posts/me").await.len(), 1);
}
