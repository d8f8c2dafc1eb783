//! The platform as its users meet it: the `instaclone` binary (and extra hub replicas) as child
//! processes, users registered through the gateway, and a WebSocket client that behaves as the
//! protocol asks a client to (keep the last position, resume from it on every reconnect), so a
//! test can count what reached the socket and what reached the history.

use std::{
    collections::HashSet,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use instaclone_shared::testing::{TestClient, TestEnv};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::{Running, free_port, instaclone};

/// The ports of one platform's parts.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gateway: u16,
    pub auth: u16,
    pub users: u16,
    pub posts: u16,
    pub notifications: u16,
    pub hub: u16,
}

impl Ports {
    pub fn free() -> Self {
        Self {
            gateway: free_port(),
            auth: free_port(),
            users: free_port(),
            posts: free_port(),
            notifications: free_port(),
            hub: free_port(),
        }
    }

    fn vars(&self) -> [(&'static str, u16); 6] {
        [
            ("GATEWAY_PORT", self.gateway),
            ("AUTH_PORT", self.auth),
            ("USERS_PORT", self.users),
            ("POSTS_PORT", self.posts),
            ("NOTIFICATIONS_PORT", self.notifications),
            ("HUB_PORT", self.hub),
        ]
    }
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Every part in one process, plus `extra_hubs` more hub replicas, all on one test's isolated
/// resources, one key pair and one service credential.
pub struct Platform {
    pub ports: Ports,
    pub gateway: TestClient,
    /// The all-in-one process's hub first, then the extra replicas.
    pub hubs: Vec<String>,
    extra_env: Vec<(String, String)>,
    /// `[all-in-one, extra hub replicas...]`; `None` while killed.
    processes: Vec<Option<Running>>,
}

impl Platform {
    /// Starts the platform on fresh ports with `extra_env` on top of the test's settings (e.g. a
    /// backing service's URL through a proxy) and waits until every part answers `/ready`.
    pub async fn start(env: &TestEnv, extra_env: &[(&str, String)], extra_hubs: usize) -> Self {
        Self::start_on(env, Ports::free(), extra_env, extra_hubs).await
    }

    pub async fn start_on(
        env: &TestEnv,
        ports: Ports,
        extra_env: &[(&str, String)],
        extra_hubs: usize,
    ) -> Self {
        let mut platform = Self {
            ports,
            gateway: TestClient::new(url(ports.gateway)),
            hubs: vec![url(ports.hub)],
            extra_env: extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            processes: Vec::new(),
        };
        platform.processes.push(Some(platform.spawn(env, None)));
        for _ in 0..extra_hubs {
            let port = free_port();
            platform.hubs.push(url(port));
            platform
                .processes
                .push(Some(platform.spawn(env, Some(port))));
        }
        let mut every_part: Vec<String> = ports.vars().iter().map(|(_, p)| url(*p)).collect();
        every_part.extend(platform.hubs.iter().skip(1).cloned());
        for part in every_part {
            wait_ready(&part).await;
        }
        platform
    }

    /// The all-in-one process, or (with `hub_port`) one more hub replica.
    fn spawn(&self, env: &TestEnv, hub_port: Option<u16>) -> Running {
        let s = &env.settings;
        let mut command = instaclone(env);
        command
            .envs(self.ports.vars().iter().map(|(k, v)| (*k, v.to_string())))
            .env("STARTUP_WAIT_SECS", "30")
            .env(
                "JWT_PRIVATE_KEY",
                s.jwt.private_key_pem.as_ref().unwrap().expose(),
            )
            .env("JWT_PUBLIC_KEY", s.jwt.public_key_pem.as_ref().unwrap())
            .env(
                "INTERNAL_TOKEN",
                s.internal.token.as_ref().unwrap().expose(),
            )
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let Some(port) = hub_port {
            command
                .env("HUB_PORT", port.to_string())
                .args(["--only", "hub"]);
        }
        Running(command.spawn().expect("start instaclone"))
    }

    /// SIGKILL of process `index` (0: the all-in-one, 1..: extra hub replicas): no shutdown
    /// code runs, as in a crash or an OOM kill.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut running) = self.processes[index].take() {
            running.0.kill().expect("SIGKILL");
            running.0.wait().expect("reap");
        }
    }

    /// Starts the all-in-one process again on the same ports, after [`Platform::kill`].
    pub async fn restart_all_in_one(&mut self, env: &TestEnv) {
        assert!(self.processes[0].is_none(), "kill it first");
        self.processes[0] = Some(self.spawn(env, None));
        for (_, port) in self.ports.vars() {
            wait_ready(&url(port)).await;
        }
    }
}

async fn wait_ready(part: &str) {
    let client = TestClient::new(part);
    wait_until(&client.url("/ready"), Duration::from_secs(90), || async {
        matches!(client.get("/ready").try_send().await, Ok(r) if r.status.is_success())
    })
    .await;
}

/// Polls `condition` every 200 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

/// Registers `name@example.com` through `gateway` (asserting 201).
pub async fn register(gateway: &TestClient, name: &str) -> User {
    let response = gateway
        .post("/auth/register")
        .json(
            &json!({ "email": format!("{name}@example.com"), "password": "correct horse battery" }),
        )
        .await;
    assert_eq!(response.status, 201, "register {name}");
    assert_eq!(response.body["statusCode"], 201);
    let data = response.data();
    User {
        id: data["user"]["id"].as_str().unwrap().to_owned(),
        token: data["accessToken"].as_str().unwrap().to_owned(),
    }
}

/// `follower` follows the user `followee` through the gateway (asserting 201).
pub async fn follow(gateway: &TestClient, follower: &User, followee: &str) {
    let response = gateway
        .post("/users/follow")
        .bearer(&follower.token)
        .json(&json!({ "userIdToFollow": followee }))
        .await;
    assert_eq!(response.status, 201, "follow {followee}");
}

/// `author` posts through the gateway (asserting 201); returns the post.
pub async fn post(gateway: &TestClient, author: &User, caption: &str) -> Value {
    let response = gateway
        .post("/posts")
        .bearer(&author.token)
        .json(&json!({ "caption": caption, "mediaUrl": "https://cdn.example.com/a.jpg" }))
        .await;
    assert_eq!(response.status, 201, "post {caption}");
    response.data().clone()
}

/// The user's notification history (newest first, up to 100).
pub async fn history(gateway: &TestClient, user: &User) -> Vec<Value> {
    let response = gateway
        .get("/notifications/my?limit=100")
        .bearer(&user.token)
        .await;
    assert_eq!(response.status, 200, "GET /notifications/my");
    response.data().as_array().unwrap().clone()
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `hub` as `user`, resuming after `last_event_id` when given.
pub async fn connect_ws(
    hub: &str,
    user: &User,
    last_event_id: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut url = format!("{}/realtime/ws", hub.replacen("http", "ws", 1));
    if let Some(id) = last_event_id {
        url.push_str(&format!("?lastEventId={id}"));
    }
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// What a [`LiveClient`] has seen so far.
#[derive(Debug, Default)]
struct Seen {
    /// The last id any frame carried: what a reconnect resumes from.
    position: Option<String>,
    /// Every notification frame's `data`, in arrival order.
    notifications: Vec<Value>,
    connections: usize,
    resyncs: usize,
}

/// A client that does what the protocol asks: it keeps the id of the last frame that carried
/// one and, whenever its socket drops, reconnects with it (to the next hub in its list when one
/// refuses), forever, until stopped.
pub struct LiveClient {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveClient {
    /// Connects to the first of `hubs` that answers, resuming after `from`, and returns once the
    /// first connection's `connected` frame has arrived.
    pub async fn start(hubs: &[String], user: &User, from: Option<String>) -> Self {
        let seen = Arc::new(Mutex::new(Seen {
            position: from,
            ..Seen::default()
        }));
        let task = tokio::spawn(run_live(hubs.to_vec(), user.clone(), seen.clone()));
        let client = Self { seen, task };
        wait_until("the first connected frame", Duration::from_secs(30), || {
            let connected = client.seen.lock().unwrap().connections > 0;
            async move { connected }
        })
        .await;
        client
    }

    pub fn position(&self) -> Option<String> {
        self.seen.lock().unwrap().position.clone()
    }

    pub fn notifications(&self) -> Vec<Value> {
        self.seen.lock().unwrap().notifications.clone()
    }

    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    pub fn resyncs(&self) -> usize {
        self.seen.lock().unwrap().resyncs
    }

    /// Drops the connection for good and returns the position it would resume from.
    pub fn stop(self) -> Option<String> {
        self.task.abort();
        self.position()
    }
}

impl Drop for LiveClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_live(hubs: Vec<String>, user: User, seen: Arc<Mutex<Seen>>) {
    let mut hub = 0;
    loop {
        let from = seen.lock().unwrap().position.clone();
        match connect_ws(&hubs[hub], &user, from.as_deref()).await {
            Ok(socket) => read_until_dropped(socket, &seen).await,
            Err(_) => hub = (hub + 1) % hubs.len(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn read_until_dropped(mut socket: Socket, seen: &Mutex<Seen>) {
    while let Some(Ok(message)) = socket.next().await {
        match message {
            tungstenite::Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                let mut seen = seen.lock().unwrap();
                match frame["type"].as_str() {
                    Some("connected") => seen.connections += 1,
                    Some("notification") => seen.notifications.push(frame["data"].clone()),
                    Some("resync") => seen.resyncs += 1,
                    _ => {}
                }
                if let Some(id) = frame["id"].as_str() {
                    seen.position = Some(id.to_owned());
                }
            }
            tungstenite::Message::Ping(payload) => {
                let pong = socket.send(tungstenite::Message::Pong(payload)).await;
                if pong.is_err() {
                    return;
                }
            }
            tungstenite::Message::Close(_) => return,
            _ => {}
        }
    }
}

/// The ids of `notifications`, asserting none appears twice (`what` names the list).
pub fn unique_ids(notifications: &[Value], what: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for notification in notifications {
        let id = notification["_id"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "{what}: notification {id} twice");
    }
    ids
}
