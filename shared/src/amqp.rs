//! RabbitMQ: the event exchange, a confirming publisher, and a consumer loop.
//!
//! Guarantees this module gives its callers:
//! - [`EventPublisher::publish_batch`] returns `Ok` only once the broker has confirmed every
//!   message (persistent, publisher confirms). On any error the caller keeps the events and tries
//!   again later (the outbox relays do); the publisher reconnects by itself. Consecutive events of
//!   one type travel as one message (an event batch, [`MAX_EVENTS_PER_MESSAGE`] at most): the
//!   broker's work is per message and queue, so a relay round of 100 posts costs it one message
//!   per queue instead of 100.
//! - [`run_consumer`] hands the handler the events of one message as a [`Batch`] and
//!   acknowledges the message only after the handler has returned `Ok`, i.e. after the consumer's
//!   own writes have committed. Handlers batch their own I/O over it (one query, one script, one
//!   insert for the whole batch). An event the handler rejects as impossible goes alone to the
//!   queue's dead-letter queue (with [`REJECTED_REASON_HEADER`]); a message that is not an event
//!   at all goes there whole; a transient error is retried in place (the message stays
//!   unacknowledged with this consumer) for as long as it lasts, so an outage never spends the
//!   queue's delivery limit; only a consumer that dies with the message spends one.
//! - Every queue is bounded: work queues reject publishes when full (the publisher sees a nack
//!   and its outbox retries), dead-letter queues and the event log drop their oldest entries.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    publisher_confirm::Confirmation,
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, RetryPolicy, Retrying, any_error, retry_notify},
    config::AmqpSettings,
    db::{ConnectError, redact_url, retry_startup},
    events::{self, EventEnvelope},
};

/// Queue (suffix) that keeps the event log: a stream bound to every routing key.
pub const EVENT_LOG_QUEUE: &str = "events.log";
/// How long the event log keeps events.
pub const EVENT_LOG_MAX_AGE: &str = "7D";
/// Upper bound on the event log's size on disk.
pub const EVENT_LOG_MAX_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Upper bound on a work queue's length; beyond it publishes are nacked (back-pressure).
pub const WORK_QUEUE_MAX_LENGTH: i64 = 1_000_000;
/// Upper bound on a dead-letter queue's length; beyond it the oldest entries are dropped.
pub const DEAD_LETTER_MAX_LENGTH: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused (nacked) a published message")]
    Nacked,
}

/// What a part's own consumers know about the broker: each registers its link and marks it up
/// while it is consuming. `/ready` reads this instead of opening a connection per request
/// ([`crate::health::Dependency::RabbitMq`]). Cheap to clone; clones share the links.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus {
    links: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

impl BrokerStatus {
    /// A new link, down until its owner marks it up.
    fn register(&self) -> Arc<AtomicBool> {
        let link = Arc::new(AtomicBool::new(false));
        if let Ok(mut links) = self.links.lock() {
            links.push(link.clone());
        }
        link
    }

    /// Whether every registered link is consuming; `None` when no link is registered (nothing
    /// to go by: the caller checks the broker itself).
    pub fn all_up(&self) -> Option<bool> {
        let links = self.links.lock().ok()?;
        if links.is_empty() {
            return None;
        }
        Some(links.iter().all(|link| link.load(Ordering::Relaxed)))
    }
}

/// Marks a link down when the consuming it guards ends, however it ends.
struct LinkUp<'a>(&'a AtomicBool);

impl<'a> LinkUp<'a> {
    fn mark(link: &'a AtomicBool) -> Self {
        link.store(true, Ordering::Relaxed);
        Self(link)
    }
}

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Opens a connection driven by the tokio runtime.
pub async fn connect(settings: &AmqpSettings) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name("instaclone".into());
    Connection::connect(settings.url.expose(), properties).await
}

/// Declares the events exchange and the event-log stream bound to all of it. Idempotent.
pub async fn declare_topology(
    channel: &Channel,
    settings: &AmqpSettings,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            &settings.exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let log = settings.queue(EVENT_LOG_QUEUE);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("stream"));
    args.insert("x-max-age".into(), string(EVENT_LOG_MAX_AGE));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(EVENT_LOG_MAX_BYTES),
    );
    channel
        .queue_declare(
            &log,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            &log,
            &settings.exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Publishes events persistently with publisher confirms. Reconnects after any failure.
#[derive(Clone)]
pub struct EventPublisher {
    settings: AmqpSettings,
    link: Arc<Mutex<Option<Link>>>,
}

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
    /// Which link this is, so a failed publish drops only the link it used.
    generation: u64,
}

impl EventPublisher {
    /// Does not connect yet: the first publish does, so a service starts while RabbitMQ is down.
    pub fn new(settings: AmqpSettings) -> Self {
        Self {
            settings,
            link: Arc::new(Mutex::new(None)),
        }
    }

    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    async fn channel(&self, slot: &mut Option<Link>) -> Result<(Channel, u64), AmqpError> {
        if let Some(link) = slot.as_ref()
            && link.channel.status().connected()
        {
            return Ok((link.channel.clone(), link.generation));
        }
        let generation = slot.take().map_or(0, |link| link.generation + 1);
        let connection = connect(&self.settings).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&channel, &self.settings).await?;
        tracing::info!(broker = %redact_url(self.settings.url.expose()), "publisher connected to RabbitMQ");
        *slot = Some(Link {
            _connection: connection,
            channel: channel.clone(),
            generation,
        });
        Ok((channel, generation))
    }

    /// Publishes one event and waits for the broker's confirm.
    pub async fn publish(&self, event: &EventEnvelope) -> Result<(), AmqpError> {
        self.publish_batch(std::slice::from_ref(event)).await
    }

    /// Publishes all `events`, then waits for all confirms. `Ok` means every one is safely stored
    /// by the broker; on `Err` some may have been stored, and consumers dedupe the re-publish.
    ///
    /// The link is locked only to get (or make) the channel: callers publish on it and wait for
    /// their confirms concurrently, so one caller's confirm round trip never holds up another's.
    pub async fn publish_batch(&self, events: &[EventEnvelope]) -> Result<(), AmqpError> {
        let (channel, generation) = {
            let mut slot = self.link.lock().await;
            self.channel(&mut slot).await?
        };
        let result = self.publish_on(&channel, events).await;
        if result.is_err() {
            // Start afresh next time (the channel may be closed or in an unknown state), unless
            // another caller already has.
            let mut slot = self.link.lock().await;
            if slot
                .as_ref()
                .is_some_and(|link| link.generation == generation)
            {
                *slot = None;
            }
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        events: &[EventEnvelope],
    ) -> Result<(), AmqpError> {
        let mut confirms = Vec::new();
        for message in batch_messages(events) {
            if let Some(first) = message.first() {
                let confirm =
                    publish_message(channel, &self.settings.exchange, first, message).await?;
                confirms.push(confirm);
            }
        }
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(_) | Confirmation::NotRequested => {}
                Confirmation::Nack(_) => return Err(AmqpError::Nacked),
            }
        }
        Ok(())
    }
}

/// Events carried by one message at most (about 40 KB of post events).
pub const MAX_EVENTS_PER_MESSAGE: usize = 100;

/// `events` as messages: consecutive events of one type share a message (an event batch, see
/// [`crate::events`]), up to [`MAX_EVENTS_PER_MESSAGE`]; the order of events is kept.
fn batch_messages(events: &[EventEnvelope]) -> Vec<&[EventEnvelope]> {
    let mut messages = Vec::new();
    let mut rest = events;
    while let Some(first) = rest.first() {
        let same_type = rest
            .iter()
            .take(MAX_EVENTS_PER_MESSAGE)
            .take_while(|event| event.event_type == first.event_type)
            .count();
        let (message, tail) = rest.split_at(same_type);
        messages.push(message);
        rest = tail;
    }
    messages
}

/// Publishes one message of `events` (all of `first`'s type), persistent; returns the pending
/// confirm. The message id is the first event's id (the only one's, for a single event).
async fn publish_message(
    channel: &Channel,
    exchange: &str,
    first: &EventEnvelope,
    events: &[EventEnvelope],
) -> Result<lapin::publisher_confirm::PublisherConfirm, lapin::Error> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(first.id.to_string().into())
        .with_type(ShortString::from(first.event_type.clone()))
        .with_timestamp(u64::try_from(first.occurred_at.timestamp()).unwrap_or_default());
    channel
        .basic_publish(
            exchange,
            &first.event_type,
            BasicPublishOptions::default(),
            &events::encode_batch(events),
            properties,
        )
        .await
}

/// A durable work queue and the routing keys it receives.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Full queue name (use [`AmqpSettings::queue`]).
    pub name: String,
    pub routing_keys: Vec<String>,
    /// Deliveries of one message before it is dead-lettered.
    pub delivery_limit: u32,
}

impl QueueSpec {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.name)
    }
}

/// Declares `spec`'s quorum queue, its dead-letter queue and bindings. Idempotent.
pub async fn declare_work_queue(
    channel: &Channel,
    settings: &AmqpSettings,
    spec: &QueueSpec,
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dlq = spec.dead_letter_queue();
    let mut dlq_args = FieldTable::default();
    if let Some(expires) = settings.queue_expires {
        dlq_args.insert("x-expires".into(), AMQPValue::LongLongInt(millis(expires)));
    }
    dlq_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX_LENGTH),
    );
    channel.queue_declare(&dlq, durable, dlq_args).await?;

    let mut args = FieldTable::default();
    if let Some(expires) = settings.queue_expires {
        args.insert("x-expires".into(), AMQPValue::LongLongInt(millis(expires)));
    }
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(&dlq));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(i32::try_from(spec.delivery_limit).unwrap_or(i32::MAX)),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(WORK_QUEUE_MAX_LENGTH),
    );
    args.insert("x-overflow".into(), string("reject-publish"));
    channel.queue_declare(&spec.name, durable, args).await?;
    for key in &spec.routing_keys {
        channel
            .queue_bind(
                &spec.name,
                &settings.exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the topology and `spec`'s queue once, waiting for RabbitMQ like every startup
/// connection. A part calls it before it starts serving: an exchange drops what no queue is bound
/// to yet, so a queue declared only when its consumer task first connects would miss whatever
/// was published in between (the first events of a fresh deployment).
pub async fn declare_work_queue_at_startup(
    settings: &AmqpSettings,
    spec: &QueueSpec,
    max_wait: Duration,
) -> Result<(), ConnectError> {
    let address = redact_url(settings.url.expose());
    retry_startup("RabbitMQ", &address, max_wait, || async {
        let connection = connect(settings).await?;
        let channel = connection.create_channel().await?;
        declare_topology(&channel, settings).await?;
        declare_work_queue(&channel, settings, spec).await?;
        let _ = connection.close(200, "queue declared").await;
        Ok::<(), lapin::Error>(())
    })
    .await
}

/// What went wrong handling one event (or a whole batch).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a backing service is down, a timeout).
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (the event is malformed or refers to something impossible).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// The events of one delivered message: one, or an event batch (see [`crate::events`]).
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<EventEnvelope>,
    /// The broker delivered this message before (its handling may have begun).
    pub redelivered: bool,
}

/// An event of a batch that can never be handled, and why. The consumer moves it alone to the
/// dead-letter queue and acknowledges the rest of its message.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub event: EventEnvelope,
    pub reason: String,
}

/// Runs `handle` on each event of `batch` in order. A permanent failure rejects that event only;
/// a transient one stops the batch (the whole message is redelivered, and handlers are
/// idempotent, so the events already handled are harmless to see again).
pub async fn for_each_event<F, Fut>(
    batch: Batch,
    mut handle: F,
) -> Result<Vec<Rejected>, HandlerError>
where
    F: FnMut(EventEnvelope) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut rejected = Vec::new();
    for event in batch.events {
        match handle(event.clone()).await {
            Ok(()) => {}
            Err(HandlerError::Permanent(reason)) => rejected.push(Rejected { event, reason }),
            Err(transient) => return Err(transient),
        }
    }
    Ok(rejected)
}

/// First pause before a transiently failed batch is tried again in place.
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between two attempts while a dependency stays down: a recovered dependency is
/// noticed within this long.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Consumes `spec` until `shutdown` is cancelled, reconnecting after broker failures. Up to
/// `prefetch` messages are handled at once; each is acked after `handler` returns `Ok` for its
/// batch of events.
///
/// A transient failure ([`HandlerError::Transient`]: a backing service down, a timeout) is
/// retried in place, with capped backoff, for as long as it lasts: the message stays
/// unacknowledged with this consumer, so an outage never spends the queue's delivery limit and
/// never dead-letters anything. Only shutdown ends the retries; the message is then handed back
/// for redelivery. The dead-letter queue receives only what can never succeed (undecodable
/// messages, [`HandlerError::Permanent`] events), each logged with why. Retries are counted in
/// `consumer_retries_total{queue}`, and `consumer_retrying{queue}` says how many batches are
/// waiting on a dependency right now. The consumer's link is registered with `status`, up
/// while it is consuming.
pub async fn run_consumer<H, Fut>(
    settings: AmqpSettings,
    spec: QueueSpec,
    shutdown: CancellationToken,
    status: BrokerStatus,
    handler: H,
) where
    H: Fn(Batch) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Rejected>, HandlerError>> + Send,
{
    let consumer = &Consumer {
        spec,
        shutdown,
        handler,
        link: status.register(),
    };
    let settings = &settings;
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let policy = RetryPolicy::until_shutdown(backoff, &consumer.shutdown);
    // A session consumes until the connection fails (`Err`: reconnect) or shutdown (`Ok`).
    let session = move || async move {
        if consumer.shutdown.is_cancelled() {
            return Ok(());
        }
        consumer.consume_once(settings).await
    };
    let log_loss = |retrying: &Retrying<'_, lapin::Error>| {
        let error = retrying.error;
        tracing::warn!(queue = %consumer.spec.name, %error, "consumer lost RabbitMQ; reconnecting");
    };
    // Ends only with shutdown: either way there is nothing left to report.
    let _ = retry_notify(policy, any_error, log_loss, session).await;
    tracing::info!(queue = %consumer.spec.name, "consumer stopped");
}

/// Messages handled together at most: the events of every message that is already waiting when
/// a handler becomes free form one batch (so the handler's one insert, script or transaction
/// covers them all), while a lone message is handled at once.
pub const MAX_MESSAGES_PER_BATCH: usize = 32;

/// One queue's consumer: what it consumes, when it stops, and what it does with each batch.
struct Consumer<H> {
    spec: QueueSpec,
    shutdown: CancellationToken,
    handler: H,
    /// Up while consuming (see [`BrokerStatus`]).
    link: Arc<AtomicBool>,
}

impl<H, Fut> Consumer<H>
where
    H: Fn(Batch) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Rejected>, HandlerError>> + Send,
{
    async fn consume_once(&self, settings: &AmqpSettings) -> Result<(), lapin::Error> {
        let spec = &self.spec;
        let connection = connect(settings).await?;
        let channel = connection.create_channel().await?;
        declare_topology(&channel, settings).await?;
        declare_work_queue(&channel, settings, spec).await?;
        // Rejected events are republished to the dead-letter queue on this channel, confirmed.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                &spec.name,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %spec.name, "consuming");
        let _up = LinkUp::mark(&self.link);

        // Whatever has arrived by the time a handler is free is handled as one batch.
        let deliveries = consumer
            .take_until(self.shutdown.cancelled())
            .ready_chunks(MAX_MESSAGES_PER_BATCH);
        let results = deliveries.map(|chunk| {
            let channel = channel.clone();
            async move {
                let chunk = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
                self.settle_chunk(&channel, chunk).await
            }
        });
        let mut results =
            std::pin::pin!(results.buffer_unordered(usize::from(settings.prefetch.max(1))));
        while let Some(result) = results.next().await {
            result?;
        }
        if !self.shutdown.is_cancelled() {
            return Err(lapin::Error::InvalidChannelState(
                lapin::ChannelState::Closed,
            ));
        }
        let _ = channel.close(200, "shutting down").await;
        let _ = connection.close(200, "shutting down").await;
        Ok(())
    }

    /// Runs the handler on `batch` until it succeeds, fails permanently, or shutdown comes
    /// (then the last transient error is returned and the caller hands the messages back).
    async fn handle_in_place(&self, batch: Batch) -> Result<Vec<Rejected>, HandlerError> {
        let queue = self.spec.name.as_str();
        let backoff = Backoff::new(RETRY_FIRST_DELAY, RETRY_MAX_DELAY);
        let policy = RetryPolicy::until_shutdown(backoff, &self.shutdown);
        let is_transient = |error: &HandlerError| matches!(error, HandlerError::Transient(_));
        let mut retries = 0_u64;
        let count_retry = |retrying: &Retrying<'_, HandlerError>| {
            retries = retrying.attempt;
            if retries == 1 {
                metrics::gauge!("consumer_retrying", "queue" => queue.to_owned()).increment(1.0);
            }
            metrics::counter!("consumer_retries_total", "queue" => queue.to_owned()).increment(1);
            // Loud at first, then once a minute or so: an outage is one story, not a flood.
            if let HandlerError::Transient(reason) = retrying.error
                && (retries == 1 || retries.is_multiple_of(12))
            {
                tracing::warn!(%queue, %reason, retries, events = batch.events.len(), "event handling failed transiently; retrying in place");
            }
        };
        let outcome = retry_notify(policy, is_transient, count_retry, || {
            (self.handler)(batch.clone())
        })
        .await;
        if retries > 0 {
            metrics::gauge!("consumer_retrying", "queue" => queue.to_owned()).decrement(1.0);
            // A transient error still means shutdown ended the retries.
            if !matches!(outcome, Err(HandlerError::Transient(_))) {
                tracing::info!(%queue, retries, "a dependency is back; the batch is handled");
            }
        }
        outcome
    }

    /// Handles the events of `chunk` (deliveries already received) as one batch and settles
    /// every delivery. A batch the handler refuses as a whole is retried message by message, so
    /// one impossible message cannot take the others to the dead-letter queue with it.
    async fn settle_chunk(
        &self,
        channel: &Channel,
        chunk: Vec<lapin::message::Delivery>,
    ) -> Result<(), lapin::Error> {
        if chunk.len() == 1 {
            return match chunk.into_iter().next() {
                Some(delivery) => self.settle(channel, delivery).await,
                None => Ok(()),
            };
        }
        let mut events = Vec::new();
        let mut readable = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            match EventEnvelope::decode_batch(&delivery.data) {
                Ok(decoded) => {
                    events.extend(decoded);
                    readable.push(delivery);
                }
                // Dead-lettered on its own.
                Err(_) => self.settle(channel, delivery).await?,
            }
        }
        let redelivered = readable.iter().any(|delivery| delivery.redelivered);
        let batch = Batch {
            events,
            redelivered,
        };
        match self.handle_in_place(batch).await {
            Ok(rejected) => {
                if !rejected.is_empty() {
                    dead_letter(channel, &self.spec, &rejected).await?;
                }
                for delivery in readable {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
            Err(HandlerError::Permanent(_)) => {
                for delivery in readable {
                    self.settle(channel, delivery).await?;
                }
            }
            Err(HandlerError::Transient(_)) => {
                for delivery in readable {
                    hand_back(&self.spec, delivery).await?;
                }
            }
        }
        Ok(())
    }

    /// Handles one delivery and settles it with the broker: ack, dead-letter, or (at shutdown,
    /// while a dependency is still down) hand back.
    async fn settle(
        &self,
        channel: &Channel,
        delivery: lapin::message::Delivery,
    ) -> Result<(), lapin::Error> {
        let outcome = match EventEnvelope::decode_batch(&delivery.data) {
            Err(error) => Err(HandlerError::Permanent(format!(
                "the message is not an event or event batch: {error}"
            ))),
            Ok(events) => {
                self.handle_in_place(Batch {
                    events,
                    redelivered: delivery.redelivered,
                })
                .await
            }
        };
        match outcome {
            Ok(rejected) => {
                if !rejected.is_empty() {
                    dead_letter(channel, &self.spec, &rejected).await?;
                }
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(queue = %self.spec.name, %reason, "dead-lettering a message that cannot be processed");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
            }
            Err(HandlerError::Transient(_)) => hand_back(&self.spec, delivery).await,
        }
    }
}

/// Returns a delivery to its queue unhandled (shutdown while its dependency is down), for
/// this or another replica to take up.
async fn hand_back(
    spec: &QueueSpec,
    delivery: lapin::message::Delivery,
) -> Result<(), lapin::Error> {
    tracing::info!(queue = %spec.name, "shutting down with a batch still waiting on a dependency; it goes back to the queue");
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
}

/// Header on a dead-lettered event saying why it was rejected.
pub const REJECTED_REASON_HEADER: &str = "x-rejected-reason";

/// Moves rejected events, each as its own message, to `spec`'s dead-letter queue (confirmed
/// before the original message is acked, so none is lost between the two).
async fn dead_letter(
    channel: &Channel,
    spec: &QueueSpec,
    rejected: &[Rejected],
) -> Result<(), lapin::Error> {
    let queue = spec.dead_letter_queue();
    for Rejected { event, reason } in rejected {
        tracing::error!(queue = %spec.name, event_id = %event.id, event_type = %event.event_type, %reason, "dead-lettering an event that cannot be processed");
        let mut headers = FieldTable::default();
        headers.insert(REJECTED_REASON_HEADER.into(), string(reason));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(event.id.to_string().into())
            .with_type(ShortString::from(event.event_type.clone()))
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                &event.to_vec(),
                properties,
            )
            .await?;
        if let Confirmation::Nack(_) = confirm.await? {
            return Err(lapin::Error::InvalidChannelState(
                lapin::ChannelState::Error,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PostDeleted, UserUnfollowed};

    fn event<T: crate::events::EventData>(data: &T) -> EventEnvelope {
        EventEnvelope::new("test", data).unwrap()
    }

    #[test]
    fn consecutive_events_of_one_type_share_a_message() {
        let deleted = |n: u32| {
            event(&PostDeleted {
                post_id: n.to_string(),
                author_id: uuid::Uuid::now_v7(),
            })
        };
        let unfollowed = event(&UserUnfollowed {
            follower_id: uuid::Uuid::now_v7(),
            followed_id: uuid::Uuid::now_v7(),
        });
        let mut events: Vec<EventEnvelope> = (0..3).map(deleted).collect();
        events.push(unfollowed);
        events.extend((0..250).map(deleted));
        let sizes: Vec<usize> = batch_messages(&events).iter().map(|m| m.len()).collect();
        assert_eq!(sizes, [3, 1, 100, 100, 50]);
        let flattened: Vec<&EventEnvelope> =
            batch_messages(&events).into_iter().flatten().collect();
        assert!(flattened.iter().zip(&events).all(|(a, b)| a.id == b.id));
        assert!(batch_messages(&[]).is_empty());
    }
}
