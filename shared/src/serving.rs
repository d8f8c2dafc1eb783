//! The accept loop every part serves its router with.
//!
//! Requests go to hyper, except a bodiless `GET` to one of the part's *event-stream paths* (the
//! hub's `/realtime/sse`) arriving as the first request on a connection. Hyper keeps two 8 KiB
//! buffers per HTTP/1 connection for as long as it is open (its read buffer and its header
//! write buffer; neither shrinks, and neither can be configured below 8 KiB), which for an idle
//! SSE stream is most of what it costs. Such a request is read here (its head only), answered
//! by the same router with the same layers, and the response is written to the socket directly,
//! one chunk per body frame, with no buffer kept between frames; the connection closes when the
//! stream ends. Every other connection is hyper's, the bytes already read handed back first.
//!
//! Shutdown: the listener closes, hyper connections finish their requests (graceful), and the
//! loop returns once event streams have ended too (the hub ends them itself on shutdown).

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// The largest request head read here; a longer one is left to hyper (which refuses it).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A client that has not sent its first request head by then is dropped (a browser's
/// preconnected socket is retried by the browser).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream whose client has not accepted one chunk for this long is ended: it is not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    event_stream_paths: &'static [&'static str],
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let streams = TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let connection = Connection {
            socket,
            peer,
            router: router.clone(),
            event_stream_paths,
        };
        let watcher = graceful.watcher();
        let streams_handle = streams.clone();
        tokio::spawn(async move {
            match connection.classify().await {
                // Each boxed: this task lives as long as its connection, and inline it would be
                // the size of the larger of the two (hyper's) for every event stream.
                Classified::EventStream(stream) => {
                    streams_handle.track_future(Box::pin(stream.serve())).await;
                }
                Classified::Hyper { connection, head } => {
                    Box::pin(serve_with_hyper(connection, head, watcher)).await;
                }
                Classified::Gone => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    streams.close();
    streams.wait().await;
}

/// Hands the connection to hyper, with the peer address every request carries.
async fn serve_with_hyper(
    connection: Connection,
    head: Bytes,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Connection {
        socket,
        peer,
        router,
        ..
    } = connection;
    let io = TokioIo::new(Prefixed { head, socket });
    let service = TowerToHyperService::new(router.map_request(
        move |request: http::Request<hyper::body::Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        },
    ));
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection_with_upgrades(io, service);
    if let Err(error) = watcher.watch(serving.into_owned()).await {
        tracing::trace!(%error, "connection ended with an error");
    }
}

/// Accept fails when the process is out of file descriptors (or the peer gave up first):
/// wait a little rather than spin, as hyper's and axum's loops do.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if !matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        tracing::warn!(%error, "accept failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    event_stream_paths: &'static [&'static str],
}

enum Classified {
    EventStream(EventStream),
    Hyper { connection: Connection, head: Bytes },
    Gone,
}

impl Connection {
    /// Reads the first request head and decides who serves the connection.
    async fn classify(mut self) -> Classified {
        if self.event_stream_paths.is_empty() {
            return Classified::Hyper {
                connection: self,
                head: Bytes::new(),
            };
        }
        let mut head = BytesMut::with_capacity(1024);
        let read = tokio::time::timeout(HEAD_TIMEOUT, async {
            loop {
                if head.len() >= MAX_HEAD {
                    return Ok::<_, std::io::Error>(None);
                }
                head.reserve(1024);
                if self.socket.read_buf(&mut head).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                match parse_event_stream_request(&head, self.event_stream_paths) {
                    Parsed::Partial => continue,
                    Parsed::Other => return Ok(None),
                    Parsed::EventStream(request) => return Ok(Some(request)),
                }
            }
        })
        .await;
        match read {
            Ok(Ok(Some(mut request))) => {
                request.extensions_mut().insert(ConnectInfo(self.peer));
                Classified::EventStream(EventStream {
                    socket: self.socket,
                    router: self.router,
                    request: *request,
                })
            }
            Ok(Ok(None)) => Classified::Hyper {
                connection: self,
                head: head.freeze(),
            },
            Ok(Err(_)) | Err(_) => Classified::Gone,
        }
    }
}

enum Parsed {
    Partial,
    /// Not an event-stream request (or not one served here): hyper's.
    Other,
    EventStream(Box<http::Request<Body>>),
}

fn parse_event_stream_request(head: &[u8], paths: &[&str]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Other,
        Ok(httparse::Status::Complete(length)) => {
            let path = parsed.path.unwrap_or_default();
            let route = path.split('?').next().unwrap_or_default();
            let has_body = parsed.headers.iter().any(|header| {
                header.name.eq_ignore_ascii_case("transfer-encoding")
                    || (header.name.eq_ignore_ascii_case("content-length") && header.value != b"0")
            });
            // Pipelined bytes after the head would be a second request: hyper's job.
            if parsed.method != Some("GET")
                || !paths.contains(&route)
                || has_body
                || length != head.len()
            {
                return Parsed::Other;
            }
            build_request(&parsed, path).map_or(Parsed::Other, |request| {
                Parsed::EventStream(Box::new(request))
            })
        }
    }
}

fn build_request(parsed: &httparse::Request<'_, '_>, path: &str) -> Option<http::Request<Body>> {
    let version = match parsed.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut builder = http::Request::get(path).version(version);
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    builder.body(Body::empty()).ok()
}

/// An event-stream request served outside hyper.
struct EventStream {
    socket: TcpStream,
    router: Router,
    request: http::Request<Body>,
}

impl EventStream {
    async fn serve(self) {
        let Self {
            mut socket,
            router,
            request,
        } = self;
        let http10 = request.version() == http::Version::HTTP_10;
        let Ok(response) = Box::pin(router.oneshot(request)).await;
        let (body, head, chunked) = {
            let (parts, body) = response.into_parts();
            let length = http_body::Body::size_hint(&body).exact();
            let chunked = !http10 && length.is_none();
            (body, response_head(&parts, length, chunked), chunked)
        };
        if write(&mut socket, &head).await.is_err() {
            return;
        }
        drop(head);
        if stream_body(&mut socket, body, chunked).await.is_ok() {
            let _ = socket.shutdown().await;
        }
    }
}

fn response_head(parts: &http::response::Parts, length: Option<u64>, chunked: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONNECTION
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONTENT_LENGTH
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    } else if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

#[derive(Debug)]
struct StreamEnded;

/// Writes the body's frames as they come, and ends when it does, when the client closes its
/// side, or when the client stops accepting data.
async fn stream_body(socket: &mut TcpStream, body: Body, chunked: bool) -> Result<(), StreamEnded> {
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = client_closed(socket) => return Err(StreamEnded),
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(StreamEnded),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut chunk = Vec::with_capacity(data.len() + 12);
            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            write(socket, &chunk).await?;
        } else {
            write(socket, &data).await?;
        }
    }
    if chunked {
        write(socket, b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn write(socket: &mut TcpStream, bytes: &[u8]) -> Result<(), StreamEnded> {
    match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(StreamEnded),
    }
}

/// Resolves once the client has closed its side (or the socket failed); bytes it sends are
/// discarded (an event stream has nothing more to read).
async fn client_closed(socket: &TcpStream) {
    let mut scratch = [0_u8; 64];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A socket whose first bytes were already read: they are read again first.
struct Prefixed {
    head: Bytes,
    socket: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            if self.head.is_empty() {
                // Let the head's allocation go now rather than with the connection.
                self.head = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use axum::routing::get;
    use futures_util::StreamExt;
    use tokio::io::AsyncBufReadExt;

    use super::*;

    /// Sets its flag when dropped: tells when the server let go of a response body.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn spawn(router: Router) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, PATHS, shutdown.clone()));
        (address, shutdown)
    }

    fn events_router(dropped: Arc<AtomicBool>) -> Router {
        Router::new()
            .route(
                "/events",
                get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                    let flag = DropFlag(dropped.clone());
                    async move {
                        let first = Bytes::from(format!("data: {}\n\n", peer.ip()));
                        let stream = futures_util::stream::iter([first])
                            .chain(futures_util::stream::pending())
                            .map(move |chunk| {
                                let _keep = &flag;
                                Ok::<_, std::convert::Infallible>(chunk)
                            });
                        (
                            [("content-type", "text/event-stream")],
                            Body::from_stream(stream),
                        )
                    }
                }),
            )
            .route("/plain", get(|| async { "plain" }))
    }

    #[tokio::test]
    async fn an_event_stream_is_written_chunked_and_let_go_when_the_client_leaves() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (address, _shutdown) = spawn(events_router(dropped.clone())).await;
        let mut socket = TcpStream::connect(address).await.expect("connect");
        socket
            .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut reader = tokio::io::BufReader::new(socket);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("head line");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        let mut size = String::new();
        reader.read_line(&mut size).await.expect("chunk size");
        let mut data = String::new();
        reader.read_line(&mut data).await.expect("chunk data");
        assert_eq!(
            data, "data: 127.0.0.1\n",
            "the handler saw the peer address"
        );
        assert_eq!(usize::from_str_radix(size.trim(), 16), Ok(data.len() + 1));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(reader);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the body is dropped once the client has gone");
    }

    #[tokio::test]
    async fn other_requests_are_served_by_hyper_with_keep_alive() {
        let (address, _shutdown) = spawn(events_router(Arc::default())).await;
        let mut socket = TcpStream::connect(address).await.expect("connect");
        let mut answers = String::new();
        for _ in 0..2 {
            socket
                .write_all(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("request");
            let mut buffer = [0_u8; 1024];
            let n = socket.read(&mut buffer).await.expect("answer");
            answers.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
        assert_eq!(answers.matches("\r\n\r\nplain").count(), 2, "{answers}");
    }

    const PATHS: &[&str] = &["/events"];

    #[test]
    fn only_a_bodiless_get_to_an_event_stream_path_is_taken() {
        let taken = |head: &[u8]| {
            matches!(
                parse_event_stream_request(head, PATHS),
                Parsed::EventStream(_)
            )
        };
        assert!(taken(b"GET /events?ticket=a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(taken(b"GET /events HTTP/1.0\r\n\r\n"));
        assert!(!taken(b"GET /other HTTP/1.1\r\n\r\n"));
        assert!(!taken(b"POST /events HTTP/1.1\r\n\r\n"));
        assert!(!taken(
            b"GET /events HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"
        ));
        assert!(!taken(
            b"GET /events HTTP/1.1\r\n\r\nGET /events HTTP/1.1\r\n\r\n"
        ));
        assert!(matches!(
            parse_event_stream_request(b"GET /events HTTP/1.1\r\nHo", PATHS),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_event_stream_request(b"\x16\x03\x01garbage\r\n\r\n", PATHS),
            Parsed::Other
        ));
    }
}
