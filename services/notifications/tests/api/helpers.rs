//! Starts the real users service and the notifications service in-process (port 0) on an
//! isolated `TestEnv`, and talks to them over HTTP and RabbitMQ.

use std::{collections::HashMap, ops::Deref, time::Duration};

use futures_util::StreamExt;
use instaclone_notifications::events::queue_spec;
use instaclone_shared::{
    amqp::{EventPublisher, declare_work_queue},
    auth::InternalToken,
    events::{EventData, EventEnvelope, NotificationCreated, NotificationView, event_type},
    testing::{TestClient, TestEnv},
    users_internal::{NewUser, UsersClient},
};
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions},
    types::FieldTable,
};
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for something asynchronous before failing.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub env: TestEnv,
    /// The notifications service.
    pub client: TestClient,
    /// The users service's public API.
    pub users_api: TestClient,
    pub users: UsersClient,
    pub publisher: EventPublisher,
    pub amqp: (lapin::Connection, lapin::Channel),
    pub shutdown: CancellationToken,
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

/// The users service and the notifications service, both serving and consuming.
pub async fn spawn_app() -> TestApp {
    let mut app = spawn_users().await;
    let notifications = instaclone_notifications::build(&app.env.settings, app.shutdown.clone())
        .await
        .expect("notifications service failed to build");
    app.client = TestClient::new(format!("http://127.0.0.1:{}", notifications.port()));
    tokio::spawn(notifications.run_until_stopped());
    app
}

/// Only the users service (and the RabbitMQ topology with this service's work queue declared,
/// so events published now wait for the consumer); `client` has no base URL.
pub async fn spawn_users() -> TestApp {
    let mut env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let users_app = instaclone_users::build(&env.settings, shutdown.clone())
        .await
        .expect("users service failed to build");
    let users_address = format!("http://127.0.0.1:{}", users_app.port());
    tokio::spawn(users_app.run_until_stopped());
    env.settings.services.users = users_address.clone();

    let amqp = env.amqp_channel().await;
    let spec = queue_spec(&env.settings.amqp);
    declare_work_queue(&amqp.1, &env.settings.amqp, &spec)
        .await
        .expect("declare the notifications work queue");

    let token = InternalToken::new(env.settings.internal.token.clone().unwrap());
    let users = UsersClient::new(&users_address, token, Duration::from_secs(10));
    let publisher = EventPublisher::new(env.settings.amqp.clone());
    TestApp {
        env,
        client: TestClient::new(""),
        users_api: TestClient::new(users_address),
        users,
        publisher,
        amqp,
        shutdown,
    }
}

impl TestApp {
    /// A user created through the users service, and an access token for them.
    pub async fn user(&self, username: &str) -> (Uuid, String) {
        let user = self
            .users
            .create_user(&NewUser {
                email: format!("{username}@example.com"),
                username: Some(username.to_owned()),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            })
            .await
            .unwrap();
        (user.id, self.env.access_token(user.id))
    }

    /// Follows `target` through the users service's public API.
    pub async fn follow(&self, token: &str, target: Uuid) {
        let response = self
            .users_api
            .post("/users/follow")
            .bearer(token)
            .json(&serde_json::json!({ "userIdToFollow": target }))
            .await;
        assert_eq!(response.status, StatusCode::CREATED);
    }

    pub async fn publish<T: EventData>(&self, data: &T) -> EventEnvelope {
        let event = EventEnvelope::new("test", data).unwrap();
        self.publisher.publish(&event).await.unwrap();
        event
    }

    /// Publishes raw bytes with `routing_key`, as a broken producer would.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.amqp
            .1
            .basic_publish(
                &self.env.settings.amqp.exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The `data` array of `GET /notifications/my{query}`.
    pub async fn my_notifications(&self, token: &str, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/notifications/my{query}"))
            .bearer(token)
            .await
            .parts();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// Waits until the user has `count` notifications (fails if not in time or if more appear).
    pub async fn wait_for_notifications(&self, token: &str, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = self.my_notifications(token, "?limit=100").await;
            assert!(list.len() <= count, "more than {count}: {list:#?}");
            if list.len() == count {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} notifications, have {}",
                list.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn database(&self) -> mongodb::Database {
        self.env
            .mongo(&self.env.settings.mongo.notifications_database)
            .await
    }

    /// Stored notifications of `event_id`, straight from MongoDB.
    pub async fn stored_count(&self, event_id: Uuid) -> u64 {
        self.database()
            .await
            .collection::<mongodb::bson::Document>("notifications")
            .count_documents(doc! { "eventId": event_id.to_string() })
            .await
            .unwrap()
    }

    /// Waits until `event_id` is marked completely handled.
    pub async fn wait_until_handled(&self, event_id: Uuid) {
        let progress = self
            .database()
            .await
            .collection::<mongodb::bson::Document>("event_progress");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let done = progress
                .find_one(doc! { "_id": event_id.to_string(), "completed": true })
                .await
                .unwrap();
            if done.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {event_id} not handled in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a message on the work queue's dead-letter queue and returns its body.
    pub async fn next_dead_letter(&self) -> Vec<u8> {
        let dlq = queue_spec(&self.env.settings.amqp).dead_letter_queue();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(message) = self
                .amqp
                .1
                .basic_get(&dlq, BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return message.delivery.data;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing reached the dead-letter queue"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts collecting every `notification.created` published from now on.
    pub async fn listen_for_created(&self) -> CreatedListener {
        let channel = &self.amqp.1;
        let queue = self
            .env
            .observer_queue(channel, &[event_type::NOTIFICATION_CREATED])
            .await;
        let consumer = channel
            .basic_consume(
                &queue,
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        CreatedListener {
            consumer,
            seen: Vec::new(),
        }
    }
}

pub struct CreatedListener {
    consumer: lapin::Consumer,
    /// Every notification received so far, in order.
    pub seen: Vec<NotificationView>,
}

impl CreatedListener {
    /// Receives until the notifications seen so far satisfy `done`.
    pub async fn until(&mut self, done: impl Fn(&[NotificationView]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.seen) {
            let delivery = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .expect("notification.created not received in time")
                .unwrap()
                .unwrap();
            for event in EventEnvelope::decode_batch(&delivery.data).unwrap() {
                let batch: NotificationCreated = event.data().unwrap();
                self.seen.extend(batch.notifications);
            }
        }
    }

    /// Recipients seen, with how many times each.
    pub fn recipients(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        for notification in &self.seen {
            *counts.entry(notification.user_id).or_default() += 1;
        }
        counts
    }
}

/// Inserts `count` users following `author` straight into the users service's database (fast
/// seeding for large fan-outs); returns their ids.
pub async fn seed_followers(env: &TestEnv, author: Uuid, count: i64) -> Vec<Uuid> {
    let pool = env.postgres().await;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "WITH seeded AS ( \
             INSERT INTO users (id, email, username, password_hash) \
             SELECT gen_random_uuid(), 'seed' || i || '@example.com', 'seed_' || i, 'x' \
             FROM generate_series(1, $1) AS i RETURNING id) \
         INSERT INTO follows (id, follower_id, followed_id) \
         SELECT gen_random_uuid(), id, $2 FROM seeded RETURNING follower_id",
    )
    .bind(count)
    .bind(author)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    ids
}
