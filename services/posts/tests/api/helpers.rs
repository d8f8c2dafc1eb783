//! Starts the posts service in-process on a free port, isolated by its own `TestEnv`.

use instaclone_shared::testing::TestEnv;
use mongodb::bson::Document;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestApp {
    pub env: TestEnv,
    pub address: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The posts service on this test's own databases and exchange.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestEnv::new()).await
}

/// The posts service built from `env.settings` (which a test may have adjusted).
pub async fn spawn_app_with(env: TestEnv) -> TestApp {
    let shutdown = CancellationToken::new();
    let app = instaclone_posts::build(&env.settings, shutdown.clone())
        .await
        .expect("build the posts service");
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        env,
        address,
        http: reqwest::Client::new(),
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
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn read(response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        Self::read(response).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        Self::read(response).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        Self::read(response).await
    }

    /// Creates a post and returns it (asserting 201).
    pub async fn create_post(&self, token: &str, caption: &str) -> Value {
        let (status, body) = self.post_json(token, "/posts", &post_body(caption)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// The ids of a list response, in order.
    pub async fn list_ids(&self, token: &str, path: &str) -> Vec<String> {
        let (status, body) = self.get(token, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: data is not an array: {body}"))
            .iter()
            .map(|post| post["_id"].as_str().unwrap().to_owned())
            .collect()
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
