//! One Redis connection type for every part, over a single server or a Redis Cluster.
//!
//! [`RedisConnection`] is cheap to clone and implements [`ConnectionLike`], so scripts,
//! commands and pipelines run on it the same way in both modes. What differs is what a cluster
//! forbids: a script or pipeline may only touch keys of **one hash slot**. Every key that
//! belongs to a user carries the user id as a hash tag (`stream:{<user>}`), so one user's keys,
//! and any script over them, stay on one shard. Work over *many* users is split with
//! [`RedisConnection::batch_by_slot`] and run with [`RedisConnection::run_batches`]: on a
//! single server that is the same batches, in order, as before; on a cluster batches per slot,
//! different slots sent concurrently (which the cluster client pipelines per node) and one
//! slot's batches in order.
//!
//! Pub/sub follows the same rule: on a cluster, channels are **sharded** (`SPUBLISH` /
//! `SSUBSCRIBE`, Redis 7), so a message travels to the one shard that owns its channel instead of
//! being broadcast over the cluster bus to every node. [`RedisConnection::publish_command`] names
//! the command, [`RedisConnection::subscriber_for`] finds the node to subscribe on.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};

/// Slots worked on at once on a cluster.
const SLOT_CONCURRENCY: usize = 64;
/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A self-reconnecting connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    /// Where to open dedicated (pub/sub) connections: the server, or the cluster's seed nodes.
    nodes: Arc<[ConnectionInfo]>,
}

/// Work split by hash slot: per slot, its batches in order (see
/// [`RedisConnection::batch_by_slot`]).
#[derive(Debug)]
pub struct SlotBatches<T>(Vec<Vec<Vec<T>>>);

impl<T> SlotBatches<T> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What [`RedisConnection::run_batches`] got done, and its first failure if any.
#[derive(Debug)]
pub struct Settled<R> {
    pub done: Vec<R>,
    pub error: Option<redis::RedisError>,
}

impl<R> Settled<R> {
    /// The results, or the failure if there was one.
    pub fn into_result(self) -> RedisResult<Vec<R>> {
        match self.error {
            None => Ok(self.done),
            Some(error) => Err(error),
        }
    }
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Wraps a connection to a single server reached at `node`.
    pub fn single(connection: ConnectionManager, node: ConnectionInfo) -> Self {
        Self {
            link: Link::Single(connection),
            nodes: Arc::from([node]),
        }
    }

    /// Wraps a cluster connection whose seed nodes are `nodes`.
    pub fn cluster(connection: ClusterConnection, nodes: Vec<ConnectionInfo>) -> Self {
        Self {
            link: Link::Cluster(connection),
            nodes: Arc::from(nodes),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// The command that publishes to a channel: `PUBLISH` on a single server, the sharded
    /// `SPUBLISH` on a cluster (delivered by the channel's shard alone).
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The command that subscribes to a channel published with [`Self::publish_command`].
    pub fn subscribe_command(&self) -> &'static str {
        if self.is_cluster() {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        }
    }

    /// Splits `items` into batches of at most `max` that one script call or pipeline may
    /// serve, by hash slot of `key(item)`: one slot for all on a single server. Order is kept
    /// within a slot.
    pub fn batch_by_slot<T>(
        &self,
        items: Vec<T>,
        max: usize,
        key: impl Fn(&T) -> String,
    ) -> SlotBatches<T> {
        let max = max.max(1);
        let mut slots: Vec<Vec<Vec<T>>> = Vec::new();
        let mut index: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
        for item in items {
            let slot = if self.is_cluster() {
                slot(key(&item).as_bytes())
            } else {
                0
            };
            let at = *index.entry(slot).or_insert_with(|| {
                slots.push(Vec::new());
                slots.len() - 1
            });
            let batches = &mut slots[at];
            match batches.last_mut() {
                Some(batch) if batch.len() < max => batch.push(item),
                _ => batches.push(vec![item]),
            }
        }
        SlotBatches(slots)
    }

    /// Runs `call` on each batch: the batches of one slot one after another, in order, and
    /// different slots concurrently (a bounded number at once, each on its own clone of this
    /// connection). So on a single server everything runs in order, as one caller would. A
    /// failure stops its slot's remaining batches, not the other slots' (work applied stays
    /// applied: callers make batches idempotent); results are grouped by slot.
    pub async fn run_batches<T, R, F, Fut>(&self, batches: SlotBatches<T>, call: F) -> Settled<R>
    where
        F: Fn(Self, Vec<T>) -> Fut,
        Fut: Future<Output = RedisResult<R>>,
    {
        let call = &call;
        let per_slot: Vec<(Vec<R>, Option<redis::RedisError>)> = stream::iter(batches.0)
            .map(|slot_batches| async move {
                let mut done = Vec::with_capacity(slot_batches.len());
                for batch in slot_batches {
                    match call(self.clone(), batch).await {
                        Ok(result) => done.push(result),
                        Err(error) => return (done, Some(error)),
                    }
                }
                (done, None)
            })
            .buffer_unordered(SLOT_CONCURRENCY)
            .collect()
            .await;
        let mut settled = Settled {
            done: Vec::new(),
            error: None,
        };
        for (done, error) in per_slot {
            settled.done.extend(done);
            settled.error = settled.error.or(error);
        }
        settled
    }

    /// A RESP3 client for a dedicated connection that receives `channel`'s messages: the server
    /// itself, or on a cluster the master that currently owns the channel's slot.
    pub async fn subscriber_for(&self, channel: &str) -> RedisResult<redis::Client> {
        let slot = slot(channel.as_bytes());
        let mut node = if self.is_cluster() {
            self.shards()
                .await?
                .into_iter()
                .find(|shard| shard.slots.contains(&slot))
                .map(|shard| shard.master)
                .ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::ClusterDown,
                        "no master owns the channel's slot",
                    ))
                })?
        } else {
            self.nodes[0].clone()
        };
        node.redis.protocol = ProtocolVersion::RESP3;
        redis::Client::open(node)
    }

    /// Every master: the server itself, or each master of the cluster with its slot range(s)
    /// (one entry per range).
    pub async fn shards(&self) -> RedisResult<Vec<Shard>> {
        let Link::Cluster(connection) = &self.link else {
            return Ok(vec![Shard {
                slots: 0..=SLOTS - 1,
                master: self.nodes[0].clone(),
            }]);
        };
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection.clone())
            .await?;
        Ok(slot_ranges(&reply)
            .into_iter()
            .map(|(slots, host, port)| {
                let mut master = self.nodes[0].clone();
                // An empty or unknown host means "the node you asked" (any seed will do).
                let host = match &master.addr {
                    ConnectionAddr::Tcp(seed, _) | ConnectionAddr::TcpTls { host: seed, .. }
                        if host.is_empty() || host == "?" =>
                    {
                        seed.clone()
                    }
                    _ => host,
                };
                master.addr = match master.addr {
                    ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure,
                        tls_params,
                    },
                    _ => ConnectionAddr::Tcp(host, port),
                };
                Shard { slots, master }
            })
            .collect())
    }
}

impl RedisConnection {
    /// Every master once: the server itself, or each master of the cluster.
    pub async fn masters(&self) -> RedisResult<Vec<ConnectionInfo>> {
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .shards()
            .await?
            .into_iter()
            .filter(|shard| seen.insert(shard.master.addr.to_string()))
            .map(|shard| shard.master)
            .collect())
    }
}

/// A cluster master and a range of slots it serves.
#[derive(Debug, Clone)]
pub struct Shard {
    pub slots: std::ops::RangeInclusive<u16>,
    pub master: ConnectionInfo,
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Single(connection) => connection.req_packed_command(cmd),
            Link::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.link {
            Link::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Link::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The nodes `urls` names: one server URL, or for a cluster one or more seed-node URLs
/// separated by commas.
pub fn nodes(urls: &str) -> RedisResult<Vec<ConnectionInfo>> {
    let nodes = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(IntoConnectionInfo::into_connection_info)
        .collect::<RedisResult<Vec<_>>>()?;
    if nodes.is_empty() {
        return Err((redis::ErrorKind::InvalidClientConfig, "no Redis URL given").into());
    }
    Ok(nodes)
}

/// Opens a connection to `nodes` (see [`nodes`]) in the mode `cluster` says. Fails once,
/// without retrying.
pub async fn open(nodes: &[ConnectionInfo], cluster: bool) -> RedisResult<RedisConnection> {
    let Some(first) = nodes.first().cloned() else {
        return Err((redis::ErrorKind::InvalidClientConfig, "no Redis URL given").into());
    };
    if cluster {
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5))
            .retries(2)
            .max_retry_wait(1000)
            .build()?;
        let connection = client.get_async_connection().await?;
        return Ok(RedisConnection::cluster(connection, nodes.to_vec()));
    }
    let client = redis::Client::open(first.clone())?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(Duration::from_secs(5))
        // Reconnects back off briefly; startup loops do the long waiting.
        .set_number_of_retries(2)
        .set_max_delay(1000);
    let connection = ConnectionManager::new_with_config(client, config).await?;
    Ok(RedisConnection::single(connection, first))
}

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (the text between the
/// first `{` and the next `}`, when not empty), modulo [`SLOTS`].
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// The slot ranges of a `CLUSTER SLOTS` reply, each with its master's host and port.
fn slot_ranges(reply: &Value) -> Vec<(std::ops::RangeInclusive<u16>, String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let range = |range: &Value| {
        let Value::Array(fields) = range else {
            return None;
        };
        let number = |value: Option<&Value>| match value {
            Some(Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
            Value::SimpleString(text) => text.clone(),
            _ => return None,
        };
        let slots = number(fields.first())?..=number(fields.get(1))?;
        Some((slots, host, number(master.get(1))?))
    };
    ranges.iter().filter_map(range).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"hub:replica:abc"), 6514);
        assert_eq!(slot(b"{u1}"), 4574);
        assert_eq!(slot(b"stream:{u1}"), 4574);
        assert_eq!(slot(b"foo"), 12182);
        // An empty tag does not count (the whole key is hashed); only the first tag does.
        assert_eq!(slot(b"a{}b"), 13694);
        assert_eq!(slot(b"a{x}b{y}"), 16287);
    }

    #[test]
    fn reads_the_slot_ranges() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(6391)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(6392)]),
            Value::Array(vec![Value::Int(1)]),
        ]);
        assert_eq!(
            slot_ranges(&reply),
            vec![
                (0..=5460, "127.0.0.1".to_owned(), 6391),
                (5461..=16383, "127.0.0.1".to_owned(), 6392)
            ]
        );
        assert!(slot_ranges(&Value::Nil).is_empty());
    }
}
