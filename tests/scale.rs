//! The scale-out run (`scripts/scale.sh`) as its users meet it: HAProxy in front of three hub
//! replicas and two of every REST part, clients connected through the balancer only. Clients
//! spread over the replicas; one replica is stopped (SIGTERM: it drains) and another killed
//! (SIGKILL: a crash), REST replicas are killed too, and every follower still receives every
//! post's notification exactly once, through reconnects the balancer sends to the survivors.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    instaclone,
    platform::{LiveClient, User, follow, history, post, register, unique_ids, url, wait_until},
};
use instaclone_shared::testing::{TestClient, TestEnv};

const HUBS: usize = 3;
const FOLLOWERS: usize = 9;

/// A running scale-out; stopped (`scale.sh down`) when dropped, whatever the test did.
struct Scale {
    dir: PathBuf,
    base: u16,
    envs: Vec<(String, String)>,
}

impl Scale {
    fn up(env: &TestEnv) -> Self {
        let dir = std::env::temp_dir().join(format!("instaclone-scale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = &env.settings;
        let mut envs: Vec<(String, String)> = instaclone(env)
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        envs.extend([
            (
                "JWT_PRIVATE_KEY".to_owned(),
                settings
                    .jwt
                    .private_key_pem
                    .as_ref()
                    .unwrap()
                    .expose()
                    .to_owned(),
            ),
            (
                "JWT_PUBLIC_KEY".to_owned(),
                settings.jwt.public_key_pem.clone().unwrap(),
            ),
            (
                "INTERNAL_TOKEN".to_owned(),
                settings
                    .internal
                    .token
                    .as_ref()
                    .unwrap()
                    .expose()
                    .to_owned(),
            ),
            (
                "SCALE_BIN".to_owned(),
                env!("CARGO_BIN_EXE_instaclone").to_owned(),
            ),
            ("SCALE_SKIP_SERVICES".to_owned(), "1".to_owned()),
            ("SCALE_DIR".to_owned(), dir.display().to_string()),
            ("SCALE_HUBS".to_owned(), HUBS.to_string()),
            ("STARTUP_WAIT_SECS".to_owned(), "30".to_owned()),
        ]);
        let scale = Self {
            dir,
            base: free_base_port(),
            envs,
        };
        let status = scale
            .script(&["up"])
            .status()
            .expect("run scripts/scale.sh");
        assert!(
            status.success(),
            "scripts/scale.sh up failed (logs in {})",
            scale.dir.display()
        );
        scale
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/scale.sh"))
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("SCALE_BASE_PORT", self.base.to_string());
        command
    }

    fn signal(&self, part: &str, index: usize, signal: &str) {
        let status = self
            .script(&["signal", part, &index.to_string(), signal])
            .status()
            .expect("scale.sh signal");
        assert!(status.success(), "SIG{signal} to {part} {index}");
    }

    fn gateway(&self) -> String {
        url(self.base)
    }

    fn hub(&self) -> String {
        url(self.base + 1)
    }

    /// Where hub replica `index` (1-based) listens, bypassing the balancer.
    fn hub_replica(&self, index: usize) -> String {
        url(self.base + 100 + u16::try_from(index).expect("small"))
    }

    fn internal_token(&self) -> &str {
        self.envs
            .iter()
            .find(|(k, _)| k == "INTERNAL_TOKEN")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

impl Drop for Scale {
    fn drop(&mut self) {
        let _ = self.script(&["down"]).status();
        // Kept after a failure: the replicas' logs are in it.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A base port with the whole layout of `scale.sh` free above it.
fn free_base_port() -> u16 {
    let offsets: Vec<u16> = (0..7).chain(11..=52).chain(101..=110).collect();
    let mut base = 23_000 + (std::process::id() % 40) as u16 * 150;
    loop {
        let free = offsets
            .iter()
            .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
        base = if base > 30_000 { 23_000 } else { base + 150 };
    }
}

/// `hub_connections` (all transports) on one replica, read from its `/metrics`.
async fn connections_on(replica: &str, token: &str) -> f64 {
    let text = TestClient::new(replica)
        .get("/metrics")
        .bearer(token)
        .await
        .text;
    text.lines()
        .filter(|line| line.starts_with("hub_connections{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn post_round(gateway: &TestClient, author: &User, round: &str) {
    for i in 0..3 {
        post(gateway, author, &format!("{round} {i}")).await;
    }
}

async fn wait_for_everyone(clients: &[LiveClient], count: usize, what: &str) {
    wait_until(what, Duration::from_secs(60), || {
        let done = clients.iter().all(|c| c.notifications().len() >= count);
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_haproxy_share_clients_and_lose_nothing_when_one_drains_and_one_crashes() {
    let env = TestEnv::new();
    let scale = Scale::up(&env);
    // Idle connections are dropped before the balancer's 10 s keep-alive ends them, so a request
    // never races the balancer closing the connection it was sent on.
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let gateway = TestClient::with_http(scale.gateway(), client);

    let author = register(&gateway, "scale-author").await;
    let mut followers = Vec::new();
    for i in 0..FOLLOWERS {
        let follower = register(&gateway, &format!("scale-follower-{i}")).await;
        follow(&gateway, &follower, &author.id).await;
        followers.push(follower);
    }
    let hubs = [scale.hub()];
    let mut clients = Vec::new();
    for follower in &followers {
        clients.push(LiveClient::start(&hubs, follower, None).await);
    }

    // leastconn spreads the clients: every replica holds some.
    for index in 1..=HUBS {
        let held = connections_on(&scale.hub_replica(index), scale.internal_token()).await;
        assert!(held >= 1.0, "hub replica {index} holds {held} connections");
    }

    post_round(&gateway, &author, "all up").await;
    wait_for_everyone(&clients, 3, "the first round on every client").await;

    // Replica 1 drains: its clients are told to reconnect and the balancer sends them on.
    scale.signal("hub", 1, "TERM");
    post_round(&gateway, &author, "one draining").await;
    wait_for_everyone(&clients, 6, "the round posted while replica 1 drained").await;

    // Replica 2 crashes, and so do one replica of posts and of the gateway: the balancer
    // retries new connections and requests on the survivors.
    scale.signal("hub", 2, "KILL");
    scale.signal("posts", 1, "KILL");
    scale.signal("gateway", 1, "KILL");
    post_round(&gateway, &author, "one crashed").await;
    wait_for_everyone(&clients, 9, "the round posted after replica 2 crashed").await;
    let held = connections_on(&scale.hub_replica(3), scale.internal_token()).await;
    assert_eq!(
        held, FOLLOWERS as f64,
        "every client ended on the last replica"
    );

    // Nothing lost, nothing twice: each client has exactly the 9 post notifications of its
    // history, once each.
    for (follower, live) in followers.iter().zip(&clients) {
        let received = live.notifications();
        let what = format!("{}'s socket", follower.id);
        let on_socket = unique_ids(&received, &what);
        let in_history: std::collections::HashSet<String> = history(&gateway, follower)
            .await
            .iter()
            .filter_map(|n| n["_id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(received.len(), 9, "{what}: {received:?}");
        assert_eq!(on_socket, in_history, "{what} against the history");
        assert_eq!(live.resyncs(), 0, "{what}: no resync needed");
    }
    let moved: usize = clients.iter().filter(|c| c.connections() > 1).count();
    assert!(
        moved >= FOLLOWERS * 2 / HUBS,
        "the clients of the two lost replicas reconnected ({moved} did)"
    );
}
