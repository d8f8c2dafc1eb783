//! WebSocket clients for the scenarios: small buffers (so the load generator itself fits many
//! thousands of sockets), explicit source addresses, tokens minted with the deployment's key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use instaclone_shared::{
    auth::{TokenIssuer, TokenKind},
    config::Settings,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};
use uuid::Uuid;

pub type Socket = WebSocketStream<TcpStream>;

/// The `i`-th of `sources` loopback addresses: 127.0.0.1, 127.0.0.2, ...
pub fn source_address(i: usize, sources: u8) -> IpAddr {
    let last = u8::try_from(i % usize::from(sources.max(1))).unwrap_or(0) + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Mints access tokens with `JWT_PRIVATE_KEY_FILE` / `JWT_PRIVATE_KEY` (the hub under test must
/// have the matching public key). Lifetime from `ACCESS_TOKEN_TTL_SECS`.
pub fn token_issuer() -> anyhow::Result<TokenIssuer> {
    let settings = Settings::from_env()?;
    TokenIssuer::from_settings(&settings.jwt)
        .context("minting tokens needs JWT_PRIVATE_KEY_FILE (the key the hub verifies with)")
}

pub fn mint(issuer: &TokenIssuer, user: Uuid) -> anyhow::Result<String> {
    Ok(issuer.issue(user, Uuid::now_v7(), TokenKind::Access)?.0)
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens a WebSocket to `url` from `source`, with a bearer token when given.
pub async fn connect(url: &str, source: IpAddr, token: Option<&str>) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let host = request.uri().host().context("URL without host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let server: SocketAddr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("host does not resolve")?,
    };
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config())).await?;
    Ok(socket)
}

/// Opens an SSE stream: a plain HTTP/1.1 GET on a socket from `source`, returned once the
/// response head says 200 (the body then streams on the returned socket).
pub async fn connect_sse(
    url: &str,
    source: IpAddr,
    token: Option<&str>,
) -> anyhow::Result<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("SSE URL must start with http://")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let server: SocketAddr = authority
        .parse()
        .context("SSE URL needs an ip:port authority")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n{auth}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).await?;
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "SSE refused: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(stream)
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}
