//! Starts hub replicas in-process on one isolated `TestEnv`, publishes `notification.created`
//! to the real RabbitMQ, and talks to the hub as WebSocket (tokio-tungstenite) and SSE
//! (`SseStream`) clients.

use std::{
    ops::{Deref, DerefMut},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use instaclone_shared::{
    amqp::declare_work_queue,
    events::{EventEnvelope, NotificationCreated, NotificationView},
    testing::{SseEvent, SseStream, TestClient, TestEnv},
};
use lapin::{BasicProperties, options::BasicPublishOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One running hub replica.
pub struct Replica {
    pub port: u16,
    /// Its HTTP API.
    pub client: TestClient,
    /// The service credential `/metrics` asks for.
    pub internal_token: String,
    pub shutdown: CancellationToken,
    pub stopped: tokio::task::JoinHandle<()>,
}

impl Deref for Replica {
    type Target = TestClient;

    fn deref(&self) -> &TestClient {
        &self.client
    }
}

impl Replica {
    pub fn ws(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/realtime/ws{query}", self.port)
    }

    /// Cancels the shutdown token and waits until the replica has drained.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), &mut self.stopped)
            .await
            .expect("replica did not stop")
            .unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A replica built from `env.settings` (port 0), serving in the background.
pub async fn spawn_replica(env: &TestEnv) -> Replica {
    let shutdown = CancellationToken::new();
    let app = instaclone_realtime_hub::build(&env.settings, shutdown.clone())
        .await
        .expect("hub failed to build");
    let port = app.port();
    let stopped = tokio::spawn(async move {
        app.run_until_stopped().await.unwrap();
    });
    Replica {
        port,
        client: TestClient::new(format!("http://127.0.0.1:{port}")),
        internal_token: env.internal_token(),
        shutdown,
        stopped,
    }
}

/// Publishes notifications to RabbitMQ the way the notifications service does.
pub struct Publisher {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
}

impl Publisher {
    /// Declares the hub's queue first, so nothing published before a replica's consumer is up
    /// is unroutable.
    pub async fn new(env: &TestEnv) -> Self {
        let (connection, channel) = env.amqp_channel().await;
        let spec = instaclone_realtime_hub::consumer::queue_spec(&env.settings.amqp);
        declare_work_queue(&channel, &env.settings.amqp, &spec)
            .await
            .unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        Self {
            _connection: connection,
            channel,
            exchange: env.settings.amqp.exchange.clone(),
        }
    }

    pub async fn publish(&self, notifications: &[NotificationView]) -> EventEnvelope {
        let event = EventEnvelope::new(
            "notifications",
            &NotificationCreated {
                notifications: notifications.to_vec(),
            },
        )
        .unwrap();
        self.publish_event(&event).await;
        event
    }

    pub async fn publish_event(&self, event: &EventEnvelope) {
        self.channel
            .basic_publish(
                &self.exchange,
                &event.event_type,
                BasicPublishOptions::default(),
                &event.to_vec(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A `follow` notification for `user`, with a fresh id.
pub fn notification(user: Uuid) -> NotificationView {
    notification_with(user, json!({ "followerId": Uuid::now_v7() }))
}

pub fn notification_with(user: Uuid, data: Value) -> NotificationView {
    let now = chrono::Utc::now();
    NotificationView {
        id: Uuid::now_v7().simple().to_string(),
        user_id: user,
        kind: "follow".to_owned(),
        message: "Someone followed you".to_owned(),
        data,
        read: false,
        created_at: now,
        updated_at: now,
    }
}

pub fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// Opens a WebSocket with a bearer token; panics unless the upgrade succeeds.
pub async fn ws_connect(replica: &Replica, token: &str, query: &str) -> Ws {
    try_ws_connect(replica, Some(token), query)
        .await
        .expect("WebSocket upgrade refused")
}

/// Opens a WebSocket; `Err` carries the HTTP status of a refused upgrade.
pub async fn try_ws_connect(
    replica: &Replica,
    token: Option<&str>,
    query: &str,
) -> Result<Ws, u16> {
    let mut request = replica.ws(query).into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", bearer(token));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("WebSocket connect failed: {other}"),
    }
}

/// What a WebSocket client observes.
#[derive(Debug)]
pub enum Frame {
    /// A JSON text frame.
    Json(Value),
    Closed(Option<u16>),
}

/// The next text frame or close (pings are answered by tungstenite and skipped here).
pub async fn next_frame(socket: &mut Ws, within: Duration) -> Option<Frame> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()?;
        match message {
            None | Some(Err(_)) => return Some(Frame::Closed(None)),
            Some(Ok(Message::Text(text))) => {
                return Some(Frame::Json(serde_json::from_str(text.as_str()).unwrap()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Some(Frame::Closed(frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The next notification frame, skipping control messages; panics on anything else.
pub async fn next_notification(socket: &mut Ws) -> Value {
    loop {
        match next_frame(socket, PATIENCE).await {
            Some(Frame::Json(frame)) if frame["type"] == "notification" => return frame,
            Some(Frame::Json(_)) => {}
            other => panic!("expected a notification, got {other:?}"),
        }
    }
}

/// Reads the first frame of a connection, which must be `connected`, and returns its position.
pub async fn expect_connected(socket: &mut Ws) -> String {
    match next_frame(socket, PATIENCE).await {
        Some(Frame::Json(frame)) if frame["type"] == "connected" => frame["id"]
            .as_str()
            .expect("connected carries an id")
            .to_owned(),
        other => panic!("expected the connected frame first, got {other:?}"),
    }
}

/// Asserts nothing but pings arrives for `quiet`.
pub async fn assert_silent(socket: &mut Ws, quiet: Duration) {
    if let Some(frame) = next_frame(socket, quiet).await {
        panic!("expected silence, got {frame:?}");
    }
}

/// Reads close frames until the socket ends, returning the close code if one came.
pub async fn close_code(socket: &mut Ws, within: Duration) -> Option<u16> {
    loop {
        match next_frame(socket, within).await {
            Some(Frame::Closed(code)) => return code,
            Some(Frame::Json(_)) => {}
            None => panic!("socket still open after {within:?}"),
        }
    }
}

pub async fn send_json(socket: &mut Ws, value: &Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// A replica's SSE stream.
pub struct SseClient {
    events: SseStream,
}

impl Deref for SseClient {
    type Target = SseStream;

    fn deref(&self) -> &SseStream {
        &self.events
    }
}

impl DerefMut for SseClient {
    fn deref_mut(&mut self) -> &mut SseStream {
        &mut self.events
    }
}

impl SseClient {
    /// Opens `/realtime/sse{query}`; `Err` carries the status of a refusal.
    pub async fn connect(
        replica: &Replica,
        token: Option<&str>,
        last_event_id: Option<&str>,
        query: &str,
    ) -> Result<Self, u16> {
        let mut request = replica
            .get(&format!("/realtime/sse{query}"))
            .maybe_bearer(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let events = request
            .sse()
            .await
            .map_err(|refused| refused.status.as_u16())?;
        Ok(Self { events })
    }

    /// Reads the first event of a stream, which must be `connected`, and returns its id.
    pub async fn expect_connected(&mut self) -> String {
        let event = self
            .next_event(PATIENCE)
            .await
            .expect("expected the connected event");
        assert_eq!(event.event, "connected", "{event:?}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert!(!event.id.is_empty(), "connected carries an SSE id");
        assert_eq!(
            data["id"],
            event.id.as_str(),
            "the id field and the data agree"
        );
        event.id
    }

    pub async fn next_notification(&mut self) -> SseEvent {
        self.next_named("notification", PATIENCE)
            .await
            .expect("expected an SSE notification")
    }
}

/// The value of a metric line of `/metrics` that contains all `parts`, 0 if absent.
pub async fn metric(replica: &Replica, name: &str, parts: &[&str]) -> f64 {
    let text = replica
        .get("/metrics")
        .bearer(&replica.internal_token)
        .await
        .text;
    text.lines()
        .filter(|line| line.starts_with(name) && parts.iter().all(|part| line.contains(part)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
