//! Forwarding one request to a service and its answer back, streaming both bodies.
//!
//! One pooled HTTP/1.1 client (hyper) serves every service, so connections are reused across
//! requests. Status, body and end-to-end headers pass through unchanged; hop-by-hop headers are
//! dropped both ways (RFC 9110 §7.6.1). Failures are the gateway's to explain, in the error
//! envelope and never as a hang: a service that refuses the connection is a 502, one that does
//! not answer within the timeout a 504.

use std::{
    error::Error as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
    http::{
        HeaderMap, HeaderName, HeaderValue, Uri, Version,
        header::{self, HOST},
        uri::{Authority, PathAndQuery, Scheme},
    },
    response::Response,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use instaclone_shared::auth::INTERNAL_TOKEN_HEADER;
use tower::ServiceExt;

use crate::{error::GatewayError, routes::Upstream};

/// How long opening a connection to a service may take, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (plus `proxy-connection`, which old
/// clients still send).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where one service answers: `http://host:port` plus an optional path prefix.
#[derive(Debug, Clone)]
pub struct UpstreamAddress {
    authority: Authority,
    path_prefix: String,
}

impl UpstreamAddress {
    /// Parses a service URL from the settings (`http://` only: services talk plain HTTP inside
    /// the deployment).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid service URL {url:?}: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("service URL {url:?} must start with http://"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("service URL {url:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("service URL {url:?} must not have a query"));
        }
        Ok(Self {
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn uri_for(&self, original: &Uri) -> Result<Uri, GatewayError> {
        let path_and_query = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = format!("{}{path_and_query}", self.path_prefix);
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| GatewayError::Internal(format!("cannot build upstream URI: {e}")))
    }
}

/// The service addresses and the shared connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    /// Indexed like [`Upstream::ALL`].
    addresses: [UpstreamAddress; 5],
    /// Services running in this very process (the all-in-one binary), indexed like
    /// [`Upstream::ALL`]: their routers are called directly, with the same request a remote
    /// one would get, instead of over loopback HTTP (a round trip of syscalls, parsing and
    /// wake-ups that cost as much CPU as the request itself).
    local: Arc<[Option<Router>; 5]>,
    timeout: Duration,
}

/// The peer an in-process service sees: the gateway, as over loopback.
const IN_PROCESS_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

impl Proxy {
    /// `timeout` bounds the wait for a service's response head (status and headers).
    pub fn new(
        addresses: [UpstreamAddress; 5],
        timeout: Duration,
        max_idle_per_service: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeout)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle_per_service)
            .build(connector);
        Self {
            client,
            addresses,
            local: Arc::new([None, None, None, None, None]),
            timeout,
        }
    }

    /// Serves `upstream` by calling `router` in-process rather than over HTTP.
    pub fn with_local(mut self, upstream: Upstream, router: Router) -> Self {
        let mut local = (*self.local).clone();
        local[upstream as usize] = Some(router);
        self.local = Arc::new(local);
        self
    }

    fn address(&self, upstream: Upstream) -> &UpstreamAddress {
        &self.addresses[upstream as usize]
    }

    /// Sends `request` (path and query unchanged) to `upstream` and returns its response with a
    /// streaming body.
    pub async fn forward(
        &self,
        upstream: Upstream,
        request: Request,
        client_ip: Option<IpAddr>,
    ) -> Result<Response, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let local = self.local[upstream as usize].clone();
        if local.is_none() {
            parts.uri = self.address(upstream).uri_for(&parts.uri)?;
        }
        parts.version = Version::HTTP_11;
        let original_host = parts.headers.remove(HOST);
        strip_hop_by_hop(&mut parts.headers);
        // A client must never smuggle the service credential through the public door.
        parts.headers.remove(INTERNAL_TOKEN_HEADER);
        if let Some(host) = original_host {
            parts.headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        if let Some(ip) = client_ip {
            append_forwarded_for(&mut parts.headers, ip);
        }
        parts.extensions.clear();

        let started = std::time::Instant::now();
        let response = match local {
            Some(router) => {
                parts.extensions.insert(ConnectInfo(IN_PROCESS_PEER));
                let request = Request::from_parts(parts, body);
                match tokio::time::timeout(self.timeout, router.oneshot(request)).await {
                    Err(_elapsed) => Err(GatewayError::UpstreamTimeout(upstream)),
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(never)) => match never {},
                }
            }
            None => {
                let request = Request::from_parts(parts, body);
                match tokio::time::timeout(self.timeout, self.client.request(request)).await {
                    Err(_elapsed) => Err(GatewayError::UpstreamTimeout(upstream)),
                    Ok(Err(error)) => Err(classify(upstream, &error)),
                    Ok(Ok(response)) => Ok(response.map(Body::new)),
                }
            }
        };
        let service = upstream.name();
        metrics::histogram!("gateway_upstream_duration_seconds", "upstream" => service)
            .record(started.elapsed().as_secs_f64());
        let mut response = response.inspect_err(|error| {
            metrics::counter!(
                "gateway_upstream_errors_total",
                "upstream" => service,
                "kind" => error.kind(),
            )
            .increment(1);
        })?;
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

/// Why a request to a service failed, as the client should hear it.
fn classify(upstream: Upstream, error: &hyper_util::client::legacy::Error) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            // The body limit cut a streamed (chunked) body off on its way to the service.
            return GatewayError::BodyTooLarge;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return GatewayError::UpstreamTimeout(upstream);
        }
        source = cause.source();
    }
    if error.is_connect() {
        tracing::warn!(upstream = upstream.name(), error = %error_chain(error), "service unreachable");
        GatewayError::UpstreamUnreachable(upstream)
    } else {
        tracing::warn!(upstream = upstream.name(), error = %error_chain(error), "service failed");
        GatewayError::UpstreamFailed(upstream)
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query_under_the_prefix() {
        let plain = UpstreamAddress::parse("http://127.0.0.1:3002").unwrap();
        let original: Uri = "/users/abc/followers?limit=5".parse().unwrap();
        assert_eq!(
            plain.uri_for(&original).unwrap(),
            "http://127.0.0.1:3002/users/abc/followers?limit=5"
        );
        let prefixed = UpstreamAddress::parse("http://users.internal/svc/").unwrap();
        assert_eq!(
            prefixed.uri_for(&original).unwrap(),
            "http://users.internal/svc/users/abc/followers?limit=5"
        );
        assert!(UpstreamAddress::parse("https://x").is_err());
        assert!(UpstreamAddress::parse("not a url").is_err());
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        headers.insert("x-request-id", "r1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["authorization", "x-request-id"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, IpAddr::from([10, 0, 0, 1]));
        append_forwarded_for(&mut headers, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
    }
}
