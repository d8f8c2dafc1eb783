//! This replica's connections, by user, and its one Redis pub/sub link.
//!
//! A replica subscribes only to the channels of users connected to it: SUBSCRIBE on a user's
//! first local connection, UNSUBSCRIBE when the last one leaves. The decision ("first", "last")
//! is taken under the user's map entry lock and the command is queued in that same critical
//! section, and one task applies the commands in order, so a leave racing a join can never end
//! unsubscribed while someone is connected.
//!
//! A connection is registered (its queue visible to the dispatcher) *before* its SUBSCRIBE is
//! confirmed; it then replays from the stream and drops live messages it already replayed. That
//! ordering is what makes "subscribe, replay, go live" gapless.
//!
//! If the pub/sub link drops, messages published meanwhile never reach this replica. On
//! reconnecting, the manager resubscribes every channel and sends each connection a
//! [`Outbound::CatchUp`], which replays the stream after the connection's last delivered id.

use std::{
    collections::HashSet,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry};
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    protocol::{CloseReason, Delivery, Outbound},
    store::Store,
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

    pub fn reason(&self) -> CloseReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ClientGone)
    }
}

struct LocalConnection {
    id: u64,
    queue: mpsc::Sender<Outbound>,
    control: Arc<ConnectionControl>,
}

enum Command {
    Subscribe {
        user: Uuid,
        done: oneshot::Sender<()>,
    },
    Unsubscribe {
        user: Uuid,
    },
}

pub struct Registry {
    users: DashMap<Uuid, Vec<LocalConnection>>,
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    store: Store,
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
            store,
        });
        (registry, PubSubCommands(receiver))
    }

    /// Adds a connection of `user`. The receiver fires once this replica is subscribed to the
    /// user's channel (it never fires if the manager has stopped).
    pub fn register(
        self: &Arc<Self>,
        user: Uuid,
        queue: mpsc::Sender<Outbound>,
        control: Arc<ConnectionControl>,
    ) -> (Registration, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, subscribed) = oneshot::channel();
        let mut connections = self.users.entry(user).or_default();
        connections.push(LocalConnection { id, queue, control });
        // Queued while holding the entry: commands reach the manager in decision order.
        let _ = self.commands.send(Command::Subscribe { user, done });
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
                let _ = self.commands.send(Command::Unsubscribe { user });
            }
        }
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
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                telemetry::dropped("queue_full");
                connection.control.stop(CloseReason::TooSlow);
            }
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

/// Keeps this replica's pub/sub link: applies subscription changes in order, dispatches live
/// messages, reconnects (resubscribing and triggering catch-up) after failures. Returns when
/// `shutdown` is cancelled.
pub async fn run_pubsub(
    registry: Arc<Registry>,
    client: redis::Client,
    PubSubCommands(mut commands): PubSubCommands,
    shutdown: CancellationToken,
) {
    let mut subscribed: HashSet<Uuid> = HashSet::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut delay = Duration::from_millis(100);
    let mut first_link = true;
    'link: while !shutdown.is_cancelled() {
        let pubsub = tokio::select! {
            () = shutdown.cancelled() => break,
            result = client.get_async_pubsub() => result,
        };
        let (mut sink, mut stream) = match pubsub {
            Ok(pubsub) => pubsub.split(),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "Redis pub/sub unavailable");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for user in &subscribed {
            if let Err(error) = sink.subscribe(registry.store.channel(*user)).await {
                tracing::warn!(%error, "resubscribing failed");
                continue 'link;
            }
        }
        delay = Duration::from_millis(100);
        if !first_link {
            tracing::info!(channels = subscribed.len(), "Redis pub/sub link restored");
            telemetry::pubsub_reconnected();
            registry.catch_up_all();
        }
        first_link = false;
        for done in waiting.drain(..) {
            let _ = done.send(());
        }

        let dispatcher = registry.clone();
        let mut dispatch = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                dispatcher.dispatch(&message);
            }
        });
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + PUBSUB_PING_INTERVAL,
            PUBSUB_PING_INTERVAL,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    dispatch.abort();
                    break 'link;
                }
                _ = &mut dispatch => {
                    tracing::warn!("Redis pub/sub link lost; reconnecting");
                    continue 'link;
                }
                _ = ping.tick() => {
                    // In subscribed mode PING answers `["pong", ""]`: any reply proves the link.
                    let pong =
                        tokio::time::timeout(PUBSUB_PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("Redis pub/sub link unresponsive; reconnecting");
                        dispatch.abort();
                        continue 'link;
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { break 'link };
                    if let Err(error) = apply(&registry, &mut sink, &mut subscribed, &mut waiting, command).await {
                        tracing::warn!(%error, "Redis pub/sub command failed; reconnecting");
                        dispatch.abort();
                        continue 'link;
                    }
                }
            }
        }
    }
    tracing::info!("pub/sub manager stopped");
}

async fn apply(
    registry: &Registry,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<Uuid>,
    waiting: &mut Vec<oneshot::Sender<()>>,
    command: Command,
) -> redis::RedisResult<()> {
    match command {
        Command::Subscribe { user, done } => {
            if subscribed.insert(user) {
                // On failure the user stays in `subscribed`: the reconnect resubscribes it and
                // then releases `done`.
                if let Err(error) = sink.subscribe(registry.store.channel(user)).await {
                    waiting.push(done);
                    return Err(error);
                }
            }
            let _ = done.send(());
        }
        Command::Unsubscribe { user } => {
            if subscribed.remove(&user) {
                sink.unsubscribe(registry.store.channel(user)).await?;
            }
        }
    }
    Ok(())
}

impl Registry {
    fn dispatch(&self, message: &redis::Msg) {
        let Some(user) = self.store.user_of_channel(message.get_channel_name()) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        match Delivery::from_pubsub_payload(payload) {
            Some(delivery) => self.deliver(user, &Arc::new(delivery)),
            None => tracing::warn!(%user, "ignoring a malformed pub/sub message"),
        }
    }
}
