//! One client connection, WebSocket or SSE: a writer task that owns the outgoing side and a
//! (WebSocket only) reader task that owns the incoming side.
//!
//! The writer does, in order: wait until this replica is subscribed to the user's channel,
//! tell the client its position (`connected`, the id it resumes from: its own last id, or for a
//! new client the stream's head), replay the user's stream after that id, then deliver live messages from the
//! connection's bounded queue, dropping any whose id it has already written (they were
//! replayed). It also sends heartbeats, ends the connection when the access token expires, and
//! on shutdown tells the client to reconnect elsewhere. Every socket write is raced against the
//! connection's stop signal, so a client that stops reading cannot hold the writer hostage: the
//! dispatcher stops it as soon as its queue overflows.

use std::{pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use instaclone_shared::{
    auth::{TokenKind, TokenVerifier},
    backoff::{Backoff, RetryPolicy, any_error, retry},
};
use serde::Deserialize;
use tokio::{sync::oneshot, time::Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

use crate::{
    protocol::{CloseReason, ControlMessage, Delivery, Outbound, StreamId, sse},
    queue,
    registry::{ConnectionControl, Registry},
    store::{ReplayPage, Store},
    telemetry::{self, Transport},
};

/// How long a closing connection waits for its close frame (or last SSE event) to be written
/// and, for WebSocket, the client's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Extra attempts at a failed replay read (100 ms, 200 ms, ... apart) before giving up with 1011.
const REPLAY_RETRIES: u32 = 4;

/// Where a connection starts.
#[derive(Debug, Clone, Copy)]
pub enum Resume {
    /// The client gave the last id it has: replay everything after it, or `resync` if that is
    /// no longer possible.
    After(StreamId),
    /// A new client: deliver what arrives from now on. The id is the stream's head read before
    /// subscribing, so anything appended in between is replayed, not lost.
    Fresh(StreamId),
}

/// Everything a connection needs from the hub.
#[derive(Clone)]
pub struct ConnectionContext {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub verifier: TokenVerifier,
    pub shutdown: CancellationToken,
    pub send_queue_capacity: usize,
    pub ws_ping_interval: Duration,
    pub sse_heartbeat_interval: Duration,
}

/// An authenticated client about to be connected.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    pub user: Uuid,
    /// Unix seconds at which its credentials expire.
    pub expires_at: i64,
    /// Unix seconds at which its credentials were issued (a revocation of the user's sessions
    /// closes connections opened with older ones).
    pub issued_at: i64,
}

/// The outgoing side of a connection.
enum Writer {
    WebSocket(SplitSink<WebSocket, Message>),
    /// Formatted events, handed to the response body one at a time.
    Sse(futures_channel::mpsc::Sender<Bytes>),
}

#[derive(Debug)]
struct WriteFailed;

impl Writer {
    fn transport(&self) -> Transport {
        match self {
            Self::WebSocket(_) => Transport::WebSocket,
            Self::Sse(_) => Transport::Sse,
        }
    }

    async fn notification(&mut self, delivery: &Delivery) -> Result<(), WriteFailed> {
        match self {
            Self::WebSocket(sink) => sink
                .send(Message::Text(delivery.ws_text()))
                .await
                .map_err(|_| WriteFailed),
            Self::Sse(events) => {
                let event = sse::event(
                    "notification",
                    Some(delivery.id),
                    &delivery.notification_json,
                );
                events.send(event).await.map_err(|_| WriteFailed)
            }
        }
    }

    async fn control(&mut self, message: &ControlMessage) -> Result<(), WriteFailed> {
        match self {
            Self::WebSocket(sink) => sink
                .send(Message::Text(Utf8Bytes::from(message.to_json())))
                .await
                .map_err(|_| WriteFailed),
            Self::Sse(events) => {
                let event =
                    sse::event(message.event_name(), message.position(), &message.to_json());
                events.send(event).await.map_err(|_| WriteFailed)
            }
        }
    }

    async fn heartbeat(&mut self) -> Result<(), WriteFailed> {
        match self {
            Self::WebSocket(sink) => sink
                .send(Message::Ping(Default::default()))
                .await
                .map_err(|_| WriteFailed),
            Self::Sse(events) => events
                .send(Bytes::from_static(sse::HEARTBEAT))
                .await
                .map_err(|_| WriteFailed),
        }
    }

    /// Best effort: tells the client why, within [`CLOSE_GRACE`].
    async fn close(&mut self, reason: CloseReason) {
        let goodbye = async {
            match self {
                Self::WebSocket(sink) => {
                    if reason == CloseReason::Shutdown {
                        let notice = ControlMessage::Reconnect { reason: "shutdown" };
                        let _ = sink.send(Message::Text(notice.to_json().into())).await;
                    }
                    let frame = CloseFrame {
                        code: reason.close_code(),
                        reason: reason.label().into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                Self::Sse(events) => {
                    if reason != CloseReason::ClientGone {
                        let notice = ControlMessage::Reconnect {
                            reason: reason.label(),
                        };
                        let event = sse::event("reconnect", None, &notice.to_json());
                        let _ = events.send(event).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
    }
}

/// Serves an upgraded WebSocket until it ends.
pub async fn serve_websocket(
    context: Arc<ConnectionContext>,
    socket: WebSocket,
    subscriber: Subscriber,
    resume: Resume,
) {
    let (sink, stream) = socket.split();
    let control = Arc::new(ConnectionControl::default());
    let (queue_tx, queue_rx) = queue::channel(context.send_queue_capacity);
    let (registration, subscribed) =
        context
            .registry
            .register(&subscriber, queue_tx.clone(), control.clone());
    let mut reader = tokio::spawn(read_websocket(
        stream,
        control.clone(),
        queue_tx,
        context.verifier.clone(),
        subscriber.user,
    ));
    let mut writer = Writer::WebSocket(sink);
    let session = Session {
        queue: queue_rx,
        subscribed,
        expires_at: subscriber.expires_at,
        resume,
        user: subscriber.user,
    };
    let reason = drive(&context, &mut writer, &control, session).await;
    drop(registration);
    // Boxed, like every step a connection takes once: inline, its state would be part of
    // every connection's task for the connection's whole life.
    Box::pin(async {
        writer.close(reason).await;
        // Give the client the chance to answer our close frame, then stop reading regardless.
        if tokio::time::timeout(CLOSE_GRACE, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    })
    .await;
    telemetry::connection_closed(Transport::WebSocket, reason);
}

/// Serves an SSE stream: `events` is the sending side of the response body.
pub async fn serve_sse(
    context: Arc<ConnectionContext>,
    events: futures_channel::mpsc::Sender<Bytes>,
    subscriber: Subscriber,
    resume: Resume,
) {
    let control = Arc::new(ConnectionControl::default());
    let (queue_tx, queue_rx) = queue::channel(context.send_queue_capacity);
    // SSE clients cannot refresh in-band: they reconnect with a new ticket.
    let (registration, subscribed) =
        context
            .registry
            .register(&subscriber, queue_tx, control.clone());
    let mut writer = Writer::Sse(events);
    let session = Session {
        queue: queue_rx,
        subscribed,
        expires_at: subscriber.expires_at,
        resume,
        user: subscriber.user,
    };
    let reason = drive(&context, &mut writer, &control, session).await;
    drop(registration);
    Box::pin(writer.close(reason)).await;
    telemetry::connection_closed(Transport::Sse, reason);
}

/// What one connection's writer works from, besides the hub's context.
struct Session {
    queue: queue::Receiver<Outbound>,
    /// Fires once this replica is recorded as present for the user.
    subscribed: oneshot::Receiver<()>,
    /// Unix seconds; a `refreshed` control message (the reader's answer to an in-band
    /// refresh) moves it.
    expires_at: i64,
    resume: Resume,
    user: Uuid,
}

/// The two ways a connection is told to end, each awaited through one future for the whole life
/// of the connection: making them afresh for every socket write registered a waiter in the
/// cancellation tree, under its lock, for every delivery.
struct Stops<'p, 't> {
    shutdown: Pin<&'p mut WaitForCancellationFuture<'t>>,
    stopped: Pin<&'p mut WaitForCancellationFuture<'t>>,
    control: &'t ConnectionControl,
}

impl Stops<'_, '_> {
    /// Runs a socket write unless the connection is stopped or the replica shuts down first.
    async fn guard(
        &mut self,
        write: impl std::future::Future<Output = Result<(), WriteFailed>>,
    ) -> Result<(), CloseReason> {
        tokio::select! {
            biased;
            () = &mut self.stopped => Err(self.control.reason()),
            () = &mut self.shutdown => Err(CloseReason::Shutdown),
            result = write => result.map_err(|_| CloseReason::ClientGone),
        }
    }
}

/// The writer: returns why the connection ended.
async fn drive(
    context: &ConnectionContext,
    writer: &mut Writer,
    control: &ConnectionControl,
    session: Session,
) -> CloseReason {
    telemetry::connection_opened(writer.transport());
    let shutdown = std::pin::pin!(context.shutdown.cancelled());
    let stopped = std::pin::pin!(control.stop_token().cancelled());
    let mut stops = Stops {
        shutdown,
        stopped,
        control,
    };
    let reason = match serve(context, writer, &mut stops, session).await {
        Ok(()) => CloseReason::ClientGone,
        Err(reason) => reason,
    };
    control.stop(reason);
    control.reason()
}

/// Waits until present, tells the client its position and replays, then serves it live until
/// the connection ends.
async fn serve(
    context: &ConnectionContext,
    writer: &mut Writer,
    stops: &mut Stops<'_, '_>,
    session: Session,
) -> Result<(), CloseReason> {
    let Session {
        queue,
        subscribed,
        expires_at,
        resume,
        user,
    } = session;
    tokio::select! {
        biased;
        () = &mut stops.shutdown => return Err(CloseReason::Shutdown),
        () = &mut stops.stopped => return Err(stops.control.reason()),
        result = subscribed => result.map_err(|_| CloseReason::Shutdown)?,
    }
    let (after, check_gap) = match resume {
        Resume::After(id) => (id, true),
        Resume::Fresh(head) => (head, false),
    };
    let connected = ControlMessage::Connected { id: after };
    stops.guard(writer.control(&connected)).await?;
    let mut outlet = Outlet {
        context,
        writer,
        stops,
        user,
        delivered: Delivered { last: Some(after) },
    };
    // Boxed here and below: a replay's state (Redis reads, retries) is only needed while it
    // runs, and inline it would sit in every connection's task for its whole life.
    Box::pin(outlet.replay(check_gap)).await?;
    outlet.live(queue, expires_at).await
}

#[derive(Default)]
struct Delivered {
    /// Newest id written to this client; live messages at or below it are duplicates.
    last: Option<StreamId>,
}

impl Delivered {
    /// Whether a live `delivery` comes after an entry this client has not been given (its
    /// predecessor is newer than the last one written): then the stream is replayed from the
    /// last one, which writes both in order.
    fn misses(&self, delivery: &Delivery) -> bool {
        match (delivery.previous, self.last) {
            (Some(previous), Some(last)) => previous > last,
            _ => false,
        }
    }
}

/// What the writer works with once the client knows its position: the hub's context, the
/// socket, the stop signals, whose stream it is, and what has been written so far.
struct Outlet<'a, 'p, 't> {
    context: &'a ConnectionContext,
    writer: &'a mut Writer,
    stops: &'a mut Stops<'p, 't>,
    user: Uuid,
    delivered: Delivered,
}

impl Outlet<'_, '_, '_> {
    /// Delivers live messages from `queue`, heartbeats, and ends the connection at expiry (Unix
    /// seconds `expires_at`, moved by each `refreshed` control message).
    async fn live(
        &mut self,
        mut queue: queue::Receiver<Outbound>,
        expires_at: i64,
    ) -> Result<(), CloseReason> {
        let transport = self.writer.transport();
        let heartbeat_every = match transport {
            Transport::WebSocket => self.context.ws_ping_interval,
            Transport::Sse => self.context.sse_heartbeat_interval,
        };
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control = self.stops.control;
        let alive = &control.alive;
        alive.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut expires = std::pin::pin!(tokio::time::sleep_until(deadline(expires_at)));
        loop {
            tokio::select! {
                biased;
                () = &mut self.stops.shutdown => return Err(CloseReason::Shutdown),
                () = &mut self.stops.stopped => return Err(control.reason()),
                () = &mut expires => return Err(CloseReason::TokenExpired),
                _ = heartbeat.tick() => {
                    if transport == Transport::WebSocket
                        && !alive.swap(false, std::sync::atomic::Ordering::Relaxed)
                    {
                        return Err(CloseReason::PingTimeout);
                    }
                    self.stops.guard(self.writer.heartbeat()).await?;
                }
                message = queue.recv() => match message {
                    // Only the registry and the reader hold senders; both gone means the end.
                    None => return Err(CloseReason::ClientGone),
                    Some(Outbound::Notification(delivery)) if self.delivered.misses(&delivery) => {
                        telemetry::live_gap();
                        Box::pin(self.replay(false)).await?;
                    }
                    Some(Outbound::Notification(delivery)) => {
                        if self.delivered.last.is_none_or(|last| delivery.id > last) {
                            self.stops.guard(self.writer.notification(&delivery)).await?;
                            telemetry::delivered(transport, delivery.created_at_millis);
                            self.delivered.last = Some(delivery.id);
                        }
                    }
                    Some(Outbound::CatchUp) => Box::pin(self.replay(false)).await?,
                    Some(Outbound::Control(message)) => {
                        if let ControlMessage::Refreshed { expires_at } = *message {
                            expires.as_mut().reset(deadline(expires_at));
                        }
                        self.stops.guard(self.writer.control(&message)).await?;
                    }
                },
            }
        }
    }

    /// Writes the stream's entries after `delivered.last`; on a gap, tells the client to resync
    /// and continues from the current head. `check_gap`: also a gap when `delivered.last` is
    /// older than the whole stream (a client's own resume id, see [`Store::replay_page`]).
    async fn replay(&mut self, check_gap: bool) -> Result<(), CloseReason> {
        let (store, user) = (&self.context.store, self.user);
        let transport = self.writer.transport();
        let mut first_page = check_gap;
        loop {
            let after = self.delivered.last.unwrap_or(StreamId::ZERO);
            let page = with_retries(|| store.replay_page(user, after, first_page))
                .await
                .map_err(|error| {
                    tracing::warn!(%error, %user, "replay failed");
                    CloseReason::ServerError
                })?;
            first_page = false;
            match page {
                ReplayPage::Entries(entries) if entries.is_empty() => return Ok(()),
                ReplayPage::Entries(entries) => {
                    telemetry::replayed(entries.len());
                    for entry in entries {
                        self.stops.guard(self.writer.notification(&entry)).await?;
                        telemetry::delivered(transport, 0);
                        self.delivered.last = Some(entry.id);
                    }
                }
                ReplayPage::Gap => {
                    // The head is read before the client hears "resync", so its reload covers
                    // everything up to it; later entries come live.
                    let head = with_retries(|| store.head(user)).await.map_err(|error| {
                        tracing::warn!(%error, %user, "reading the stream head failed");
                        CloseReason::ServerError
                    })?;
                    telemetry::resync();
                    let message = ControlMessage::Resync {
                        reason: "history no longer retained",
                        id: head,
                    };
                    self.stops.guard(self.writer.control(&message)).await?;
                    self.delivered.last = Some(head);
                    return Ok(());
                }
            }
        }
    }
}

/// Redis reads of a replay, retried briefly: right after an outage the first request on the
/// self-reconnecting connection fails while it reconnects, and closing every client with 1011
/// for that would be a needless reconnect storm.
async fn with_retries<T, F, Fut>(attempt: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let policy = RetryPolicy::attempts(backoff, REPLAY_RETRIES + 1);
    retry(policy, any_error, attempt).await
}

fn deadline(expires_at_unix: i64) -> Instant {
    let remaining_millis = expires_at_unix
        .saturating_mul(1000)
        .saturating_sub(chrono::Utc::now().timestamp_millis())
        .max(0);
    Instant::now() + Duration::from_millis(u64::try_from(remaining_millis).unwrap_or_default())
}

/// Messages a WebSocket client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    /// A fresh access token, so the connection outlives the one it was opened with.
    Refresh { token: String },
}

/// What a client's message calls for.
enum Answer {
    /// Tell the client (the message was not understood).
    Reply(ControlMessage),
    /// The token was refreshed: confirm it, and the writer extends the connection's life.
    Refreshed(ControlMessage),
    /// A refresh with a token that is not valid or not this user's: close.
    InvalidRefresh,
}

fn answer(text: &str, verifier: &TokenVerifier, user: Uuid) -> Answer {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Refresh { token }) => match verifier.verify(&token, TokenKind::Access) {
            Ok(claims) if claims.sub == user => Answer::Refreshed(ControlMessage::Refreshed {
                expires_at: claims.exp,
            }),
            _ => Answer::InvalidRefresh,
        },
        Err(error) => Answer::Reply(ControlMessage::Error {
            message: format!("unknown message: {error}"),
        }),
    }
}

/// The reader: marks the connection alive on every frame, handles client messages, and stops
/// the connection when the client goes away.
async fn read_websocket(
    mut stream: SplitStream<WebSocket>,
    control: Arc<ConnectionControl>,
    queue: queue::Sender<Outbound>,
    verifier: TokenVerifier,
    user: Uuid,
) {
    while let Some(Ok(message)) = stream.next().await {
        control
            .alive
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let answer = match message {
            Message::Text(text) => answer(text.as_str(), &verifier, user),
            Message::Close(_) => break,
            Message::Binary(_) => Answer::Reply(ControlMessage::Error {
                message: "binary frames are not part of this protocol".to_owned(),
            }),
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match answer {
            Answer::Reply(reply) => {
                let _ = queue.try_send(Outbound::Control(Box::new(reply)));
            }
            Answer::Refreshed(reply) => {
                // The writer moves the connection's expiry when it writes this, so it must not
                // be dropped on a full queue. A queue full even of the headroom belongs to a
                // client that sends but does not read.
                match queue.send_control(Outbound::Control(Box::new(reply))) {
                    Ok(()) => {}
                    Err(queue::TrySendError::Full) => {
                        control.stop(CloseReason::TooSlow);
                        return;
                    }
                    Err(queue::TrySendError::Closed) => return,
                }
            }
            Answer::InvalidRefresh => {
                control.stop(CloseReason::InvalidRefresh);
                return;
            }
        }
    }
    control.stop(CloseReason::ClientGone);
}
