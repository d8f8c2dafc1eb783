//! This replica's connections, by user, its presence records and its one Redis pub/sub link.
//!
//! Live notifications reach a replica on its own channel (`hub:replica:<id>`), to which it
//! subscribes once. The append script publishes to the replicas listed in each recipient's
//! presence record (see [`crate::store`]), so a replica records a user as present on their
//! first local connection and as gone when the last one leaves. The decision ("first", "last")
//! is taken under the user's map entry lock and queued in that same critical section, and one
//! task applies the queue in order, a pipeline per batch of changes, so a leave racing a join
//! can never end absent while someone is connected.
//!
//! A connection is registered (its queue visible to the dispatcher) *before* its presence is
//! confirmed; it then replays from the stream and drops live messages it already replayed. That
//! ordering is what makes "be present, replay, go live" gapless.
//!
//! Presence entries lapse after [`PRESENCE_TTL`] unless refreshed, which this task does for all
//! its users every third of that, so a replica that dies stops being published to. If the pub/sub
//! link drops, messages published meanwhile never reach this replica. On reconnecting, the task
//! refreshes every presence entry and sends each connection an [`Outbound::CatchUp`], which
//! replays the stream after the connection's last delivered id.

use std::{
    collections::HashSet,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry};
use instaclone_shared::{
    backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify},
    redis_conn::RedisConnection,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use instaclone_shared::revocation;

use crate::{
    connection::Subscriber,
    protocol::{CloseReason, ControlMessage, Delivery, Outbound},
    queue,
    store::{PRESENCE_TTL, Store},
    telemetry,
};

/// How often the pub/sub link is checked with a PING (a silently dead TCP connection would
/// otherwise stall live delivery until the kernel notices).
const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(10);
const PUBSUB_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared between a connection's reader, its writer and the dispatcher.
#[derive(Debug, Default)]
pub struct ConnectionControl {
    stop: CancellationToken,
    reason: OnceLock<CloseReason>,
    /// Set by the reader on every inbound frame, cleared by the writer at each ping.
    pub alive: AtomicBool,
}

impl ConnectionControl {
    /// Asks the connection to end; the first reason given is the one reported.
    pub fn stop(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }

    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// The token cancelled when the connection is asked to end (for waiting on it repeatedly).
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn reason(&self) -> CloseReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ClientGone)
    }
}

struct LocalConnection {
    id: u64,
    queue: queue::Sender<Outbound>,
    control: Arc<ConnectionControl>,
    /// When the connection's credentials were issued (Unix seconds).
    issued_at: i64,
}

enum Command {
    Join {
        user: Uuid,
        done: oneshot::Sender<()>,
    },
    Leave {
        user: Uuid,
    },
}

pub struct Registry {
    users: DashMap<Uuid, Vec<LocalConnection>>,
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    store: Store,
    /// This replica's id in presence records and its channel name.
    replica: String,
    /// Where auth announces that a user's sessions were revoked (every replica listens).
    revocations_channel: String,
}

/// A connection's place in the registry; leaving it (drop) unregisters the connection.
pub struct Registration {
    registry: Arc<Registry>,
    user: Uuid,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.unregister(self.user, self.id);
    }
}

impl Registry {
    /// The registry and the receiver its pub/sub manager ([`run_pubsub`]) must be given.
    pub fn new(store: Store) -> (Arc<Self>, PubSubCommands) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let registry = Arc::new(Self {
            users: DashMap::new(),
            commands,
            next_id: AtomicU64::new(1),
            revocations_channel: store.revocations_channel(),
            store,
            replica: Uuid::new_v4().simple().to_string(),
        });
        (registry, PubSubCommands(receiver))
    }

    /// Adds a connection of `user`. The receiver fires once this replica is recorded as present
    /// for the user (it never fires if the manager has stopped).
    pub fn register(
        self: &Arc<Self>,
        subscriber: &Subscriber,
        queue: queue::Sender<Outbound>,
        control: Arc<ConnectionControl>,
    ) -> (Registration, oneshot::Receiver<()>) {
        let user = subscriber.user;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, subscribed) = oneshot::channel();
        let mut connections = self
            .users
            .entry(user)
            .or_insert_with(|| Vec::with_capacity(1));
        connections.push(LocalConnection {
            id,
            queue,
            control,
            issued_at: subscriber.issued_at,
        });
        // Queued while holding the entry: commands reach the manager in decision order.
        let _ = self.commands.send(Command::Join { user, done });
        drop(connections);
        let registration = Registration {
            registry: self.clone(),
            user,
            id,
        };
        (registration, subscribed)
    }

    fn unregister(&self, user: Uuid, id: u64) {
        if let Entry::Occupied(mut entry) = self.users.entry(user) {
            entry.get_mut().retain(|connection| connection.id != id);
            if entry.get().is_empty() {
                entry.remove();
                let _ = self.commands.send(Command::Leave { user });
            }
        }
    }

    /// This replica's id (its presence entries and channel).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Local connections (all users).
    pub fn connection_count(&self) -> usize {
        self.users.iter().map(|entry| entry.value().len()).sum()
    }

    /// Queues `delivery` on every local connection of `user`. A full queue means the client
    /// cannot keep up: it is closed (and will resume from its last id), never silently skipped.
    pub fn deliver(&self, user: Uuid, delivery: &Arc<Delivery>) {
        let Some(connections) = self.users.get(&user) else {
            return;
        };
        for connection in connections.iter() {
            Self::offer(connection, Outbound::Notification(delivery.clone()));
        }
    }

    fn offer(connection: &LocalConnection, message: Outbound) {
        match connection.queue.try_send(message) {
            Ok(()) | Err(queue::TrySendError::Closed) => {}
            Err(queue::TrySendError::Full) => {
                telemetry::dropped("queue_full");
                connection.control.stop(CloseReason::TooSlow);
            }
        }
    }

    /// Queues a control message on every local connection of `user`.
    pub fn control(&self, user: Uuid, message: ControlMessage) {
        let Some(connections) = self.users.get(&user) else {
            return;
        };
        for connection in connections.iter() {
            Self::offer(connection, Outbound::Control(Box::new(message.clone())));
        }
    }

    /// Closes `user`'s local connections opened with credentials issued before `at` (their
    /// sessions were revoked).
    pub fn revoke(&self, user: Uuid, at: i64) {
        let Some(connections) = self.users.get(&user) else {
            return;
        };
        for connection in connections.iter().filter(|c| c.issued_at < at) {
            connection.control.stop(CloseReason::SessionRevoked);
        }
    }

    /// Tells every local connection to replay what it may have missed.
    fn catch_up_all(&self) {
        for entry in &self.users {
            for connection in entry.value() {
                Self::offer(connection, Outbound::CatchUp);
            }
        }
    }
}

/// The command queue of a registry's pub/sub manager.
pub struct PubSubCommands(mpsc::UnboundedReceiver<Command>);

/// Presence changes not yet written to Redis, and who waits for them.
#[derive(Default)]
struct Presence {
    /// Users recorded (as far as this replica knows) as present here.
    recorded: HashSet<Uuid>,
    add: HashSet<Uuid>,
    remove: HashSet<Uuid>,
    waiting: Vec<oneshot::Sender<()>>,
}

impl Presence {
    fn apply(&mut self, command: Command) {
        match command {
            Command::Join { user, done } => {
                self.remove.remove(&user);
                if !self.recorded.contains(&user) {
                    self.add.insert(user);
                }
                self.waiting.push(done);
            }
            Command::Leave { user } => {
                self.add.remove(&user);
                if self.recorded.remove(&user) {
                    self.remove.insert(user);
                }
            }
        }
    }

    fn is_dirty(&self) -> bool {
        !(self.add.is_empty() && self.remove.is_empty() && self.waiting.is_empty())
    }

    /// Writes the pending changes in one pipeline, then releases the connections waiting.
    async fn flush(&mut self, registry: &Registry) -> redis::RedisResult<()> {
        let add: Vec<Uuid> = self.add.iter().copied().collect();
        let remove: Vec<Uuid> = self.remove.iter().copied().collect();
        registry
            .store
            .set_presence(&registry.replica, &add, &remove)
            .await?;
        self.recorded.extend(self.add.drain());
        self.remove.clear();
        for done in self.waiting.drain(..) {
            let _ = done.send(());
        }
        Ok(())
    }

    /// Rewrites every present user's entry with a fresh lapse time.
    async fn refresh(&self, registry: &Registry) -> redis::RedisResult<()> {
        let users: Vec<Uuid> = self.recorded.iter().copied().collect();
        for chunk in users.chunks(PRESENCE_REFRESH_CHUNK) {
            registry
                .store
                .set_presence(&registry.replica, chunk, &[])
                .await?;
        }
        Ok(())
    }
}

/// Users refreshed per pipeline.
const PRESENCE_REFRESH_CHUNK: usize = 2000;

/// Keeps this replica's presence records and pub/sub link: applies presence changes in order,
/// dispatches live messages, refreshes presence, reconnects (refreshing and triggering catch-up)
/// after failures. Returns when `shutdown` is cancelled.
pub async fn run_pubsub(
    registry: Arc<Registry>,
    PubSubCommands(mut commands): PubSubCommands,
    shutdown: CancellationToken,
) {
    let mut presence = Presence::default();
    let channels = Channels {
        replica: registry.store.replica_channel(&registry.replica),
        revocations: registry.revocations_channel.clone(),
    };
    let redis = registry.store.connection();
    let mut link = Link::open(&redis, &channels, &shutdown).await;
    while let Some(serving) = link {
        match serving
            .serve(&registry, &mut presence, &mut commands, &shutdown)
            .await
        {
            LinkEnd::Stopped => break,
            LinkEnd::Lost => {}
        }
        link = relink(&registry, &presence, &redis, &channels, &shutdown).await;
    }
    tracing::info!("pub/sub manager stopped");
}

/// A new link after one was lost, with every present user's entry rewritten (entries may have
/// lapsed, or Redis restarted empty, while the link was down), and every local connection told
/// to catch up. A failed refresh drops the link and starts again after a pause that grows
/// between failures: the link can come up while presence cannot be written (on a cluster, the
/// shard of the replica's channel answers and another does not). `None` once `shutdown` is
/// cancelled.
async fn relink(
    registry: &Registry,
    presence: &Presence,
    redis: &RedisConnection,
    channels: &Channels,
    shutdown: &CancellationToken,
) -> Option<Link> {
    let policy = RetryPolicy::until_shutdown(link_backoff(), shutdown);
    let refreshed_link = move || async move {
        let Some(link) = Link::open(redis, channels, shutdown).await else {
            return Ok(None);
        };
        presence.refresh(registry).await?;
        Ok(Some(link))
    };
    let log_failure = |retrying: &Retrying<'_, redis::RedisError>| {
        let error = retrying.error;
        tracing::warn!(%error, "refreshing presence failed; reconnecting");
    };
    let link = retry_notify(policy, any_error, log_failure, refreshed_link)
        .await
        .ok()
        .flatten()?;
    tracing::info!(
        users = presence.recorded.len(),
        "Redis pub/sub link restored"
    );
    telemetry::pubsub_reconnected();
    registry.catch_up_all();
    Some(link)
}

/// The pauses between failed attempts at a pub/sub link (and at the refresh after one).
fn link_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// What a replica listens to: its own channel (sharded on a cluster) and the revocation
/// announcements, which concern every replica and so are published to all (`PUBLISH`).
struct Channels {
    replica: String,
    revocations: String,
}

/// Why a pub/sub link stopped being served.
enum LinkEnd {
    Stopped,
    Lost,
}

/// A dedicated RESP3 connection in subscribed mode, and the messages it receives.
struct Link {
    connection: redis::aio::MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl Link {
    /// Subscribes on a new connection to the node serving the replica's channel (the server,
    /// or the channel's shard on a cluster, looked up afresh each time), retrying with backoff;
    /// `None` once `shutdown` is cancelled.
    async fn open(
        redis: &RedisConnection,
        channels: &Channels,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let policy = RetryPolicy::until_shutdown(link_backoff(), shutdown);
        let subscribed = move || async move {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            tokio::select! {
                () = shutdown.cancelled() => Ok(None),
                linked = Self::subscribe(redis, channels) => linked.map(Some),
            }
        };
        let log_failure = |retrying: &Retrying<'_, redis::RedisError>| {
            let error = retrying.error;
            tracing::warn!(%error, "Redis pub/sub unavailable");
        };
        retry_notify(policy, any_error, log_failure, subscribed)
            .await
            .ok()
            .flatten()
    }

    async fn subscribe(redis: &RedisConnection, channels: &Channels) -> redis::RedisResult<Self> {
        let client = redis.subscriber_for(&channels.replica).await?;
        let (sender, pushes) = mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(PUBSUB_PING_TIMEOUT)
            .set_response_timeout(PUBSUB_PING_TIMEOUT)
            .set_push_sender(sender);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // One channel per command: each confirmation answers one request.
        redis::cmd(redis.subscribe_command())
            .arg(&channels.replica)
            .exec_async(&mut connection)
            .await?;
        redis::cmd("SUBSCRIBE")
            .arg(&channels.revocations)
            .exec_async(&mut connection)
            .await?;
        Ok(Self { connection, pushes })
    }

    /// Dispatches messages and keeps presence until the link fails or `shutdown`.
    async fn serve(
        self,
        registry: &Arc<Registry>,
        presence: &mut Presence,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        shutdown: &CancellationToken,
    ) -> LinkEnd {
        let Self {
            mut connection,
            pushes,
        } = self;
        let mut dispatch = tokio::spawn(dispatch_pushes(registry.clone(), pushes));
        let start = tokio::time::Instant::now();
        let mut ping = tokio::time::interval_at(start + PUBSUB_PING_INTERVAL, PUBSUB_PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_every = PRESENCE_TTL / 3;
        let mut refresh = tokio::time::interval_at(start + refresh_every, refresh_every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            if presence.is_dirty()
                && let Err(error) = presence.flush(registry).await
            {
                tracing::warn!(%error, "recording presence failed; reconnecting");
                break LinkEnd::Lost;
            }
            tokio::select! {
                () = shutdown.cancelled() => break LinkEnd::Stopped,
                _ = &mut dispatch => break LinkEnd::Lost,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        PUBSUB_PING_TIMEOUT,
                        redis::cmd("PING").query_async::<redis::Value>(&mut connection),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("Redis pub/sub link unresponsive; reconnecting");
                        break LinkEnd::Lost;
                    }
                }
                _ = refresh.tick() => {
                    if let Err(error) = presence.refresh(registry).await {
                        tracing::warn!(%error, "refreshing presence failed; reconnecting");
                        break LinkEnd::Lost;
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { break LinkEnd::Stopped };
                    presence.apply(command);
                    // Take every change queued meanwhile: one pipeline for the lot.
                    while let Ok(command) = commands.try_recv() {
                        presence.apply(command);
                    }
                }
            }
        };
        dispatch.abort();
        end
    }
}

/// Hands each message of the link to the registry; returns when the link is lost: the
/// connection closed, or the server dropped a subscription (on a cluster, when the channel's
/// slot moved to another shard), after which the link is opened again where the channel now is.
async fn dispatch_pushes(
    registry: Arc<Registry>,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    use redis::PushKind;
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(message) = redis::Msg::from_push_info(push) {
                    registry.dispatch(&message);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("Redis pub/sub link lost; reconnecting");
                return;
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                tracing::warn!("Redis dropped a pub/sub subscription; re-linking");
                return;
            }
            _ => {}
        }
    }
}

impl Registry {
    /// A message on this replica's channel (one line per recipient connected here), or a
    /// revocation announcement.
    fn dispatch(&self, message: &redis::Msg) {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        if message.get_channel_name() == self.revocations_channel {
            match revocation::parse_announcement(payload) {
                Some((user, at)) => self.revoke(user, at),
                None => tracing::warn!("ignoring a malformed revocation"),
            }
            return;
        }
        for line in payload.split('\n') {
            if let Some((user, control)) = control_line(line) {
                self.control(user, control);
                continue;
            }
            match line.split_once(' ').and_then(|(user, rest)| {
                Some((
                    user.parse::<Uuid>().ok()?,
                    Delivery::from_pubsub_payload(rest)?,
                ))
            }) {
                Some((user, delivery)) => self.deliver(user, &Arc::new(delivery)),
                None => tracing::warn!("ignoring a malformed pub/sub line"),
            }
        }
    }
}

/// A control line of the pub/sub protocol: `<user> ctl <json>` (see `Store::publish_control`).
/// Only the unread count travels this way so far.
fn control_line(line: &str) -> Option<(Uuid, ControlMessage)> {
    let (user, rest) = line.split_once(' ')?;
    let json = rest.strip_prefix("ctl ")?;
    let user = user.parse().ok()?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let count = value.get("unreadCount")?.as_u64()?;
    Some((user, ControlMessage::Unread { count }))
}
