//! The harness and helpers against the real servers: each test touches one backing service
//! through an isolated [`TestEnv`], and checks the isolation is undone on drop.

#![allow(clippy::unwrap_used)] // test helpers, like the tests, fail by panicking

use std::time::Duration;

use futures_util::StreamExt;
use instaclone_shared::{
    amqp::{
        Batch, BrokerStatus, EventPublisher, HandlerError, QueueSpec, REJECTED_REASON_HEADER,
        Rejected, declare_work_queue, for_each_event, run_consumer,
    },
    db,
    events::{EventEnvelope, PostDeleted, UserUnfollowed, event_type},
    testing::TestEnv,
};
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test]
async fn postgres_database_is_created_for_the_test_and_dropped_after() {
    let env = TestEnv::new();
    let pool = env.postgres().await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, format!("test_{}_users", env.id));
    pool.close().await;

    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("PostgreSQL unreachable at 127.0.0.1:5432");
    drop(env);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!exists, "test database {name} was not dropped");
}

#[tokio::test]
async fn mongo_database_is_private_to_the_test_and_dropped_after() {
    let env = TestEnv::new();
    let db = env.mongo(&env.settings.mongo.posts_database).await;
    let posts = db.collection::<mongodb::bson::Document>("posts");
    posts
        .insert_one(mongodb::bson::doc! { "caption": "hello" })
        .await
        .unwrap();
    assert_eq!(
        posts.count_documents(mongodb::bson::doc! {}).await.unwrap(),
        1
    );
    let client = db.client().clone();
    let name = db.name().to_owned();
    drop(env);
    let names = client.list_database_names().await.unwrap();
    assert!(!names.contains(&name), "{name} still exists");
}

#[tokio::test]
async fn redis_keys_live_under_the_test_prefix_and_are_removed_after() {
    let env = TestEnv::new();
    let mut redis = env.redis().await;
    let key = env.settings.redis.key("greeting");
    assert!(key.starts_with(&format!("test:{}:", env.id)));
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("hi")
        .query_async(&mut redis)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(value, "hi");
    drop(env);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn unreachable_server_is_named_in_the_error() {
    let settings = instaclone_shared::config::RedisSettings {
        url: instaclone_shared::config::Secret::new("redis://127.0.0.1:1".to_owned()),
        cluster: false,
        key_prefix: String::new(),
    };
    let Err(error) = db::connect_redis(&settings, Duration::from_millis(300)).await else {
        panic!("connected to a port where nothing listens");
    };
    assert!(
        error.to_string().contains("Redis at redis://127.0.0.1:1"),
        "{error}"
    );
}

fn unfollowed() -> EventEnvelope {
    let data = UserUnfollowed {
        follower_id: Uuid::now_v7(),
        followed_id: Uuid::now_v7(),
    };
    EventEnvelope::new("test", &data).unwrap()
}

#[tokio::test]
async fn published_events_reach_a_bound_consumer_and_the_event_log() {
    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("consumer"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 3,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    // Declare before publishing so nothing is published into an unbound exchange.
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec,
        shutdown.clone(),
        BrokerStatus::default(),
        move |batch: Batch| {
            let tx = tx.clone();
            async move {
                for_each_event(batch, |event| {
                    let sent = tx
                        .send(event)
                        .map_err(|e| HandlerError::Transient(e.to_string()));
                    async move { sent }
                })
                .await
            }
        },
    ));

    let publisher = EventPublisher::new(env.settings.amqp.clone());
    let event = unfollowed();
    publisher.publish(&event).await.unwrap();
    // Not bound to this queue: must not arrive.
    let other = EventEnvelope::new(
        "test",
        &PostDeleted {
            post_id: "p".into(),
            author_id: Uuid::now_v7(),
        },
    )
    .unwrap();
    publisher.publish(&other).await.unwrap();

    let received = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event not delivered within 10 s")
        .unwrap();
    assert_eq!(received, event);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an event of an unbound type was delivered"
    );
    shutdown.cancel();
    consumer.await.unwrap();

    // The stream keeps both events, readable from the first offset.
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let mut log = channel
        .basic_consume(
            &env.settings
                .amqp
                .queue(instaclone_shared::amqp::EVENT_LOG_QUEUE),
            "log-reader",
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), log.next())
            .await
            .expect("event log did not return both events")
            .unwrap()
            .unwrap();
        let events = EventEnvelope::decode_batch(&delivery.data).unwrap();
        ids.extend(events.iter().map(|event| event.id));
        delivery.ack(Default::default()).await.unwrap();
    }
    assert_eq!(ids, vec![event.id, other.id]);
}

/// Reads every message now in `queue`, without acknowledging them back.
async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        messages.push(message);
    }
    messages
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_and_a_transient_one_retried_in_place_past_the_delivery_limit()
 {
    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("poison"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 2,
    };
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    let permanent = unfollowed();
    let transient = unfollowed();
    let permanent_id = permanent.id;
    // (attempts, redelivered flags seen) for the transiently failing event.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let recorded = seen.clone();
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec.clone(),
        shutdown.clone(),
        BrokerStatus::default(),
        move |batch: Batch| {
            let (recorded, done_tx) = (recorded.clone(), done_tx.clone());
            async move {
                let event = &batch.events[0];
                if event.id == permanent_id {
                    return Err(HandlerError::Permanent("cannot be processed".into()));
                }
                let attempts = {
                    let mut seen = recorded.lock().unwrap();
                    seen.push(batch.redelivered);
                    seen.len()
                };
                // Down for more attempts than the queue's delivery limit.
                if attempts <= 6 {
                    return Err(HandlerError::Transient("dependency down".into()));
                }
                done_tx.send(event.id).unwrap();
                Ok(Vec::new())
            }
        },
    ));
    let publisher = EventPublisher::new(env.settings.amqp.clone());
    publisher.publish(&permanent).await.unwrap();
    publisher.publish(&transient).await.unwrap();

    let handled = tokio::time::timeout(Duration::from_secs(30), done.recv())
        .await
        .expect("the transiently failing event was never handled")
        .unwrap();
    assert_eq!(handled, transient.id);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "one success after six transient failures");
    assert!(
        seen.iter().all(|redelivered| !redelivered),
        "retries happen in place, on the first delivery: {seen:?}"
    );
    shutdown.cancel();
    consumer.await.unwrap();
    let dead: Vec<_> = drain(&channel, &spec.dead_letter_queue())
        .await
        .iter()
        .map(|message| {
            EventEnvelope::from_slice(&message.delivery.data)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(
        dead,
        [permanent_id],
        "only the permanent failure is dead-lettered"
    );
    assert!(
        drain(&channel, &spec.name).await.is_empty(),
        "the retried event was acknowledged"
    );
}

#[tokio::test]
async fn shutdown_while_a_dependency_is_down_hands_the_message_back_to_the_queue() {
    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("hand-back"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 5,
    };
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    let (tried_tx, mut tried) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec.clone(),
        shutdown.clone(),
        BrokerStatus::default(),
        move |_batch: Batch| {
            let _ = tried_tx.send(());
            async { Err::<Vec<_>, _>(HandlerError::Transient("dependency down".into())) }
        },
    ));
    let event = unfollowed();
    EventPublisher::new(env.settings.amqp.clone())
        .publish(&event)
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), tried.recv())
            .await
            .expect("the handler was not retried");
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .expect("a retrying consumer stops promptly on shutdown")
        .unwrap();
    let back = drain(&channel, &spec.name).await;
    assert_eq!(back.len(), 1, "the message is back in its queue");
    assert_eq!(
        EventEnvelope::decode_batch(&back[0].delivery.data).unwrap()[0].id,
        event.id
    );
    assert!(drain(&channel, &spec.dead_letter_queue()).await.is_empty());
}

#[tokio::test]
async fn a_batch_travels_as_one_message_and_a_rejected_event_is_dead_lettered_alone() {
    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("batches"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 2,
    };
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    let events: Vec<EventEnvelope> = (0..5).map(|_| unfollowed()).collect();
    let poison = events[2].id;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec.clone(),
        shutdown.clone(),
        BrokerStatus::default(),
        move |batch: Batch| {
            let tx = tx.clone();
            async move {
                let ids: Vec<Uuid> = batch.events.iter().map(|e| e.id).collect();
                tx.send(ids).unwrap();
                Ok(batch
                    .events
                    .into_iter()
                    .filter(|event| event.id == poison)
                    .map(|event| Rejected {
                        event,
                        reason: "not for this test".into(),
                    })
                    .collect())
            }
        },
    ));
    EventPublisher::new(env.settings.amqp.clone())
        .publish_batch(&events)
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("batch not delivered within 10 s")
        .unwrap();
    let sent: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        delivered, sent,
        "one message with the five events, in order"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let got = channel
            .basic_get(&spec.dead_letter_queue(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        match got {
            Some(message) => break message,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => panic!("the rejected event never reached the dead-letter queue"),
        }
    };
    assert_eq!(
        EventEnvelope::decode_batch(&dead.delivery.data).unwrap(),
        vec![events[2].clone()],
        "only the rejected event is dead-lettered"
    );
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = match headers.inner().get(REJECTED_REASON_HEADER) {
        Some(lapin::types::AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no rejection reason on the dead letter: {other:?}"),
    };
    assert_eq!(reason, "not for this test");
    // The rest was acknowledged: nothing is redelivered.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "the batch was delivered again"
    );
    shutdown.cancel();
    consumer.await.unwrap();
}

#[tokio::test]
async fn messages_waiting_together_are_handled_together_and_a_poison_one_alone_is_dead_lettered() {
    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("waiting"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 2,
    };
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    // Everything is waiting before the consumer starts.
    let publisher = EventPublisher::new(env.settings.amqp.clone());
    let events: Vec<EventEnvelope> = (0..6).map(|_| unfollowed()).collect();
    for event in &events[..3] {
        publisher.publish(event).await.unwrap();
    }
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .basic_publish(
            &env.settings.amqp.exchange,
            event_type::USER_UNFOLLOWED,
            Default::default(),
            b"not an event",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    for event in &events[3..] {
        publisher.publish(event).await.unwrap();
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec.clone(),
        shutdown.clone(),
        BrokerStatus::default(),
        move |batch: Batch| {
            let tx = tx.clone();
            async move {
                tx.send(batch.events.iter().map(|e| e.id).collect::<Vec<_>>())
                    .unwrap();
                Ok(Vec::new())
            }
        },
    ));
    let mut handled: Vec<Uuid> = Vec::new();
    while handled.len() < events.len() {
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("not every event was handled within 10 s")
            .unwrap();
        handled.extend(batch);
    }
    let mut sent: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    handled.sort();
    sent.sort();
    assert_eq!(handled, sent, "each event handled once");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "something was handled again: the batch was not acknowledged"
    );
    let dead = channel
        .basic_get(&spec.dead_letter_queue(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the poison message is in the dead-letter queue");
    assert_eq!(dead.delivery.data, b"not an event");
    shutdown.cancel();
    consumer.await.unwrap();
}

#[tokio::test]
async fn publisher_fails_while_the_broker_is_cut_off_and_recovers_after() {
    let env = TestEnv::new();
    let (proxy, url) = instaclone_shared::testing::TcpProxy::for_rabbitmq(&env.settings).await;
    let mut settings = env.settings.amqp.clone();
    settings.url = url;
    let publisher = EventPublisher::new(settings);
    publisher.publish(&unfollowed()).await.unwrap();
    proxy.cut();
    assert!(
        publisher.publish(&unfollowed()).await.is_err(),
        "published through a cut link"
    );
    proxy.restore().await;
    publisher.publish(&unfollowed()).await.unwrap();
}

#[tokio::test]
async fn a_follow_set_loaded_before_a_change_is_not_cached_after_it() {
    use instaclone_shared::follow_cache::FollowCache;
    let env = TestEnv::new();
    let cache = FollowCache::new(
        env.redis().await,
        env.settings.redis.clone(),
        Duration::from_secs(60),
    );
    let (user, followed) = (Uuid::now_v7(), vec![Uuid::now_v7(), Uuid::now_v7()]);
    assert_eq!(cache.followed(user).await.unwrap(), None);

    // A reader starts loading; a follow change commits and invalidates before it stores.
    let generation = cache.generation(user).await.unwrap();
    cache.invalidate(user).await.unwrap();
    assert!(!cache.store(user, &generation, &followed).await.unwrap());
    assert_eq!(
        cache.followed(user).await.unwrap(),
        None,
        "stale list refused"
    );

    let generation = cache.generation(user).await.unwrap();
    assert!(cache.store(user, &generation, &followed).await.unwrap());
    let mut cached = cache.followed(user).await.unwrap().unwrap();
    cached.sort();
    let mut expected = followed.clone();
    expected.sort();
    assert_eq!(cached, expected);
    cache.invalidate(user).await.unwrap();
    assert_eq!(cache.followed(user).await.unwrap(), None);

    // Following nobody is a cached answer too.
    let loner = Uuid::now_v7();
    let generation = cache.generation(loner).await.unwrap();
    assert!(cache.store(loner, &generation, &[]).await.unwrap());
    assert_eq!(cache.followed(loner).await.unwrap(), Some(Vec::new()));
}

#[tokio::test]
async fn dead_letters_are_listed_without_removal_and_redriven_once_to_their_own_queue() {
    use instaclone_shared::dead_letters;

    let env = TestEnv::new();
    let spec = QueueSpec {
        name: env.settings.amqp.queue("redrive"),
        routing_keys: vec![event_type::USER_UNFOLLOWED.to_owned()],
        delivery_limit: 3,
    };
    let (_connection, channel) = env.amqp_channel().await;
    declare_work_queue(&channel, &env.settings.amqp, &spec)
        .await
        .unwrap();
    // One event the consumer rejects (dead-lettered with its reason), one undecodable message.
    let rejected = unfollowed();
    let rejected_id = rejected.id;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        env.settings.amqp.clone(),
        spec.clone(),
        shutdown.clone(),
        BrokerStatus::default(),
        |_batch: Batch| async { Err::<Vec<_>, _>(HandlerError::Permanent("no such user".into())) },
    ));
    EventPublisher::new(env.settings.amqp.clone())
        .publish(&rejected)
        .await
        .unwrap();
    channel
        .basic_publish(
            "",
            &spec.name,
            Default::default(),
            b"not an event",
            Default::default(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = dead_letters::list(&env.settings.amqp, std::slice::from_ref(&spec))
            .await
            .unwrap();
        if listed[0].messages == 2 || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    consumer.await.unwrap();
    assert_eq!(listed[0].messages, 2, "{listed:?}");
    let described = listed[0]
        .sample
        .iter()
        .find(|letter| letter.event_ids == [rejected_id.to_string()])
        .expect("the rejected event is described");
    assert_eq!(
        described.event_type.as_deref(),
        Some(event_type::USER_UNFOLLOWED)
    );
    assert!(
        listed[0]
            .sample
            .iter()
            .any(|letter| letter.event_ids.is_empty()),
        "the undecodable message is listed too"
    );
    // Listing removed nothing.
    let again = dead_letters::list(&env.settings.amqp, std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(again[0].messages, 2);

    assert_eq!(
        dead_letters::redrive(&env.settings.amqp, &spec)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        dead_letters::redrive(&env.settings.amqp, &spec)
            .await
            .unwrap(),
        0
    );
    let back = drain(&channel, &spec.name).await;
    assert_eq!(back.len(), 2, "both are back in the work queue");
    assert!(drain(&channel, &spec.dead_letter_queue()).await.is_empty());
}
