//! Watch your notifications arrive: connects to the realtime hub's WebSocket, prints every
//! notification as one line, and when the connection drops, reconnects with
//! `?lastEventId=<last id>` so nothing sent meanwhile is missed (the hub replays it).
//!
//! ```sh
//! cargo run --release -p instaclone-loadtest --example ws_client -- \
//!     --hub http://localhost:3005 --token "$ACCESS_TOKEN"
//! ```
//!
//! `--hub` takes the hub's base URL (`http://`, `https://`, `ws://` or `wss://`; the path
//! `/realtime/ws` is added unless given); the token may also come from `ACCESS_TOKEN`. Output:
//!
//! ```text
//! 1795691164638-0  follow        ada started following you  {"followerId":"01a2…"}
//! ```
//!
//! Control messages are printed with a leading `#`: `resync` (the id was too old: reload
//! `GET /notifications/my`), `reconnect` (the server is going away; this client reconnects).
//! When the access token expires (close code 4001) the client stops: get a new token.

use std::{io::Write, time::Duration};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode,
};

#[derive(Parser)]
#[command(about = "Print your Instaclone notifications as they arrive (WebSocket, with resume)")]
struct Args {
    /// The realtime hub's base URL.
    #[arg(long, env = "HUB_URL", default_value = "http://127.0.0.1:3005")]
    hub: String,
    /// An access token (from `POST /auth/login` or `/auth/register`).
    #[arg(long, env = "ACCESS_TOKEN", hide_env_values = true)]
    token: String,
    /// Resume after this notification id instead of starting with live ones only.
    #[arg(long)]
    last_event_id: Option<String>,
}

/// Why a connection ended, and what to do next.
enum Ended {
    /// Reconnect (after a pause) with the last id.
    Retry(String),
    /// Stop: retrying cannot help (bad or expired token).
    Stop(String),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = ws_url(&args.hub);
    let mut last_id = args.last_event_id.clone();
    let mut pause = Duration::from_secs(1);
    loop {
        let connected_at = std::time::Instant::now();
        match session(&url, &args.token, &mut last_id).await {
            Ended::Stop(reason) => {
                eprintln!("# stopped: {reason}");
                return Ok(());
            }
            Ended::Retry(reason) => {
                if connected_at.elapsed() > Duration::from_secs(30) {
                    pause = Duration::from_secs(1);
                }
                eprintln!(
                    "# disconnected ({reason}); reconnecting in {}s{}",
                    pause.as_secs(),
                    last_id
                        .as_deref()
                        .map(|id| format!(" after {id}"))
                        .unwrap_or_default()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// `http://host:3005` -> `ws://host:3005/realtime/ws`.
fn ws_url(hub: &str) -> String {
    let hub = hub.trim_end_matches('/');
    let hub = if let Some(rest) = hub.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = hub.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        hub.to_owned()
    };
    if hub.ends_with("/realtime/ws") {
        hub
    } else {
        format!("{hub}/realtime/ws")
    }
}

/// One connection, from the handshake to its end; advances `last_id` with every frame that
/// carries an id (notifications, `connected`, `resync`).
async fn session(url: &str, token: &str, last_id: &mut Option<String>) -> Ended {
    let target = match last_id {
        Some(id) => format!("{url}?lastEventId={id}"),
        None => url.to_owned(),
    };
    let mut request = match target.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => return Ended::Stop(format!("bad URL {target}: {error}")),
    };
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(value) => request.headers_mut().insert("authorization", value),
        Err(_) => return Ended::Stop("the token is not a valid header value".into()),
    };
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(response))
            if response.status().as_u16() == 401 =>
        {
            return Ended::Stop("401: the token is invalid or expired; get a new one".into());
        }
        Err(error) => return Ended::Retry(format!("connect failed: {error}")),
    };
    eprintln!("# connected to {target}");
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(text)) => print_frame(text.as_str(), last_id),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (f.code, f.reason.to_string()))
                    .unwrap_or((CloseCode::Status, String::new()));
                let described = format!("closed {}: {reason}", u16::from(code));
                // 4001: token expired; 4003: a refresh was refused. Both need a new token.
                return match u16::from(code) {
                    4001 | 4003 => Ended::Stop(described),
                    _ => Ended::Retry(described),
                };
            }
            Ok(_) => {}
            Err(error) => return Ended::Retry(error.to_string()),
        }
    }
    Ended::Retry("connection ended".into())
}

/// Prints a notification as `id  type  message  data`, a control message as `# type ...`.
fn print_frame(text: &str, last_id: &mut Option<String>) {
    let line = match serde_json::from_str::<Value>(text) {
        Ok(frame) if frame["type"] == "notification" => {
            if let Some(id) = frame["id"].as_str() {
                *last_id = Some(id.to_owned());
            }
            let notification = &frame["data"];
            format!(
                "{}  {:<12}  {}  {}",
                frame["id"].as_str().unwrap_or("?"),
                notification["type"].as_str().unwrap_or("?"),
                notification["message"].as_str().unwrap_or(""),
                notification["data"]
            )
        }
        Ok(frame) => {
            // `connected` (the first frame) and `resync` carry the client's new position: a
            // reconnect resumes from it even when no notification has arrived yet.
            if let Some(id) = frame["id"].as_str() {
                *last_id = Some(id.to_owned());
            }
            format!("# {frame}")
        }
        Err(_) => format!("# unparsed frame: {text}"),
    };
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
