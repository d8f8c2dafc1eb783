//! Starts the posts service in-process on a free port, isolated by its own `TestEnv`.

use std::{ops::Deref, time::Duration};

use instaclone_posts::timeline::{self, HomeTimelines};
use instaclone_shared::{
    auth::InternalToken,
    follow_cache::FollowCache,
    testing::{TcpProxy, TestClient, TestEnv},
    users_internal::{NewUser, UsersClient},
};
use mongodb::bson::Document;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestApp {
    pub env: TestEnv,
    /// The posts service.
    pub client: TestClient,
    /// The real users service, when the test started one (feed tests).
    pub users: Option<UsersService>,
    shutdown: CancellationToken,
}

/// The users service the posts service reads the follow graph from.
pub struct UsersService {
    /// Its public API.
    pub public: TestClient,
    /// Its internal API.
    pub client: UsersClient,
}

impl UsersService {
    fn new(address: String, env: &TestEnv) -> Self {
        let token = InternalToken::new(env.settings.internal.token.clone().unwrap());
        let client = UsersClient::new(&address, token, Duration::from_secs(10));
        Self {
            public: TestClient::new(address),
            client,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Deref for TestApp {
    type Target = TestClient;

    fn deref(&self) -> &TestClient {
        &self.client
    }
}

/// The posts service on this test's own databases and exchange.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestEnv::new()).await
}

/// The posts service built from `env.settings` (which a test may have adjusted).
pub async fn spawn_app_with(env: TestEnv) -> TestApp {
    start(env, CancellationToken::new(), None).await
}

/// The posts service and, beside it, the real users service (PostgreSQL) it takes the follow
/// graph from.
pub async fn spawn_app_with_users() -> TestApp {
    spawn_app_with_users_in(TestEnv::new()).await
}

/// [`spawn_app_with_users`] on an environment the test adjusted first.
pub async fn spawn_app_with_users_in(mut env: TestEnv) -> TestApp {
    let shutdown = CancellationToken::new();
    let users = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .expect("build the users service");
    let address = format!("http://{}", users.address());
    tokio::spawn(users.run_until_stopped());
    env.settings.services.users = address.clone();
    let users = UsersService::new(address, &env);
    start(env, shutdown, Some(users)).await
}

/// [`spawn_app_with_users_in`], with the posts service reaching the users service through a
/// proxy the test can cut.
pub async fn spawn_app_with_users_through_proxy(mut env: TestEnv) -> (TestApp, TcpProxy) {
    let shutdown = CancellationToken::new();
    let users = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .expect("build the users service");
    let address = format!("http://{}", users.address());
    tokio::spawn(users.run_until_stopped());
    let proxy = TcpProxy::start(address.trim_start_matches("http://")).await;
    env.settings.services.users = format!("http://127.0.0.1:{}", proxy.port());
    let users = UsersService::new(address, &env);
    let app = start(env, shutdown, Some(users)).await;
    (app, proxy)
}

async fn start(env: TestEnv, shutdown: CancellationToken, users: Option<UsersService>) -> TestApp {
    let app = instaclone_posts::build(&env.settings, shutdown.clone())
        .await
        .expect("build the posts service");
    let client = TestClient::new(format!("http://{}", app.address()));
    tokio::spawn(app.run_until_stopped());
    TestApp {
        env,
        client,
        users,
        shutdown,
    }
}

/// A fresh user id and an access token for it.
pub fn user(app: &TestApp) -> (Uuid, String) {
    let id = Uuid::now_v7();
    (id, app.env.access_token(id))
}

pub fn post_body(caption: &str) -> Value {
    json!({ "caption": caption, "mediaUrl": "https://cdn.example.com/media/1.jpg" })
}

impl TestApp {
    /// Creates a post and returns it (asserting 201).
    pub async fn create_post(&self, token: &str, caption: &str) -> Value {
        let reply = self
            .post("/posts")
            .bearer(token)
            .json(&post_body(caption))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.data().clone()
    }

    /// The ids of a list response, in order.
    pub async fn list_ids(&self, token: &str, path: &str) -> Vec<String> {
        let (status, body) = self.get(path).bearer(token).await.parts();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: data is not an array: {body}"))
            .iter()
            .map(|post| post["_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The ids of `path` once they equal `expected`: the feed follows follows, new posts of
    /// followed accounts and rebuilt timelines through events, within milliseconds. Fails with
    /// the last answer after 10 seconds.
    pub async fn eventually_ids(&self, token: &str, path: &str, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids = self.list_ids(token, path).await;
            if ids == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: still {ids:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The keys the service keeps home timelines, follow sets and post bodies under.
    pub async fn timelines(&self) -> HomeTimelines {
        let redis = self.env.redis().await;
        let settings = &self.env.settings;
        let follows = FollowCache::new(
            redis.clone(),
            settings.redis.clone(),
            settings.timelines.ttl,
        );
        HomeTimelines::new(
            redis,
            &settings.redis.key_prefix,
            settings.timelines.clone(),
            follows,
        )
    }

    /// The post ids in `reader`'s home timeline in Redis, newest first (empty without one).
    pub async fn timeline_ids(&self, reader: Uuid) -> Vec<String> {
        let key = self.timelines().await.set_key(reader);
        let entries: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
            .arg(key)
            .arg("+")
            .arg("-")
            .query_async(&mut self.env.redis().await)
            .await
            .unwrap();
        entries
            .iter()
            .map(|entry| timeline::post_id_of(entry).to_owned())
            .collect()
    }

    /// Waits (10 seconds at most) until `reader`'s Redis timeline holds exactly `expected`.
    pub async fn eventually_timeline(&self, reader: Uuid, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids = self.timeline_ids(reader).await;
            if ids == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timeline of {reader}: still {ids:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops `reader`'s home timeline and follow set, as a Redis restart would.
    pub async fn forget_timeline(&self, reader: Uuid) {
        let timelines = self.timelines().await;
        redis::cmd("DEL")
            .arg(timelines.set_key(reader))
            .arg(timelines.floor_key(reader))
            .arg(timelines.follows().set_key(reader))
            .exec_async(&mut self.env.redis().await)
            .await
            .unwrap();
    }

    /// The raw posts collection, to check what is (not) stored.
    pub async fn posts_collection(&self) -> mongodb::Collection<Document> {
        self.env
            .mongo(&self.env.settings.mongo.posts_database)
            .await
            .collection(instaclone_posts::store::POSTS_COLLECTION)
    }

    pub async fn stored_count(&self) -> u64 {
        self.posts_collection()
            .await
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap()
    }
}

impl TestApp {
    fn users(&self) -> &UsersService {
        self.users
            .as_ref()
            .expect("spawned without the users service")
    }

    /// A user registered in the users service, and an access token for them.
    pub async fn registered_user(&self, username: &str) -> (Uuid, String) {
        let record = self
            .users()
            .client
            .create_user(&NewUser {
                email: format!("{username}@example.com"),
                username: Some(username.to_owned()),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            })
            .await
            .unwrap();
        (record.id, self.env.access_token(record.id))
    }

    /// `follower` follows or unfollows `followed` through the users service's public API.
    pub async fn set_following(&self, follower_token: &str, followed: Uuid, follow: bool) {
        let (path, body) = if follow {
            ("/users/follow", json!({ "userIdToFollow": followed }))
        } else {
            ("/users/unfollow", json!({ "userIdToUnfollow": followed }))
        };
        let response = self
            .users()
            .public
            .post(path)
            .bearer(follower_token)
            .json(&body)
            .await;
        assert!(response.status.is_success(), "{path}: {}", response.status);
    }
}
