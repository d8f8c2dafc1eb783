//! The wire protocol: message ids, what travels between replicas, and what clients receive.
//!
//! Every notification a client receives carries the id Redis gave it in the recipient's stream
//! (`<milliseconds>-<sequence>`). Ids are totally ordered per user, so "resume after id X" and
//! "drop a live message already replayed" are plain comparisons on [`StreamId`].
//!
//! Close codes (WebSocket) and `event: reconnect` reasons (SSE) tell a client why it was
//! disconnected; every one of them means "reconnect with your last id and nothing is lost",
//! except the authentication ones, which mean "get a fresh token first".

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, OnceLock},
};

use axum::extract::ws::Utf8Bytes;

use serde::Serialize;

/// A Redis stream entry id. Ordered by time, then sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub millis: u64,
    pub sequence: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: Self = Self {
        millis: 0,
        sequence: 0,
    };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.sequence)
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a notification id (expected `<milliseconds>-<sequence>`)")]
pub struct InvalidStreamId(String);

impl FromStr for StreamId {
    type Err = InvalidStreamId;

    /// Accepts `<ms>-<seq>` or a bare `<ms>` (then sequence 0), as Redis does.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidStreamId(text.chars().take(64).collect());
        let (millis, sequence) = text.split_once('-').unwrap_or((text, "0"));
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(millis) || !digits(sequence) {
            return Err(invalid());
        }
        Ok(Self {
            millis: millis.parse().map_err(|_| invalid())?,
            sequence: sequence.parse().map_err(|_| invalid())?,
        })
    }
}

/// One notification on its way to a user's connections: shared by all of them (one allocation
/// per notification per replica, however many devices the user has connected).
#[derive(Debug)]
pub struct Delivery {
    pub id: StreamId,
    /// On a Redis Cluster, the entry before this one in the user's stream: a connection that
    /// has not delivered that one missed something and replays instead.
    pub previous: Option<StreamId>,
    /// When the notification was created (Unix milliseconds), for the delivery-lag histogram.
    pub created_at_millis: i64,
    /// The notification object, JSON, exactly as the notifications service emitted it.
    pub notification_json: Box<str>,
    /// The WebSocket frame, made once however many connections of the user it is written to.
    frame: OnceLock<Utf8Bytes>,
}

impl Delivery {
    /// Parses the pub/sub payload written by the append script: `<id> <createdMillis> <json>`,
    /// or on a Redis Cluster `<id>/<previous id> <createdMillis> <json>`.
    pub fn from_pubsub_payload(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(3, ' ');
        let ids = parts.next()?;
        let (id, previous) = match ids.split_once('/') {
            Some((id, previous)) => (id.parse().ok()?, Some(previous.parse().ok()?)),
            None => (ids.parse().ok()?, None),
        };
        let created_at_millis = parts.next()?.parse().ok()?;
        let notification_json = parts.next()?.into();
        let mut delivery = Self::new(id, created_at_millis, notification_json);
        delivery.previous = previous;
        Some(delivery)
    }

    pub fn new(id: StreamId, created_at_millis: i64, notification_json: Box<str>) -> Self {
        Self {
            id,
            previous: None,
            created_at_millis,
            notification_json,
            frame: OnceLock::new(),
        }
    }

    /// [`Delivery::ws_frame`] as a frame payload, made on first use and shared after.
    pub fn ws_text(&self) -> Utf8Bytes {
        self.frame
            .get_or_init(|| Utf8Bytes::from(self.ws_frame()))
            .clone()
    }

    /// The WebSocket text frame: `{"id","type":"notification","data"}`.
    pub fn ws_frame(&self) -> String {
        format!(
            r#"{{"id":"{}","type":"notification","data":{}}}"#,
            self.id, self.notification_json
        )
    }
}

/// What a connection's writer is asked to do, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    Notification(Arc<Delivery>),
    /// This replica's pub/sub link was re-established: live messages may have been missed, so
    /// replay the stream after the last id this connection delivered.
    CatchUp,
    /// A control message (e.g. the answer to an in-band token refresh). Boxed: every
    /// connection's queue allocates room for 32 of these up front, and they are rare.
    Control(Box<ControlMessage>),
}

/// Messages that are not notifications. WebSocket: `{"type": ...}` text frames; SSE: the
/// event name is the type and the data the rest.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The first message of every connection: the client's position in its stream, from which
    /// this connection delivers everything after. A client that reconnects with it as its last
    /// id misses nothing, even if it received nothing on this connection.
    Connected { id: StreamId },
    /// The requested id is older than what the server retains (or the stream was lost): reload
    /// `GET /notifications/my`, which covers everything up to `id`, the client's new position;
    /// live delivery continues on this connection.
    Resync { reason: &'static str, id: StreamId },
    /// The server is about to close this connection; reconnect (elsewhere) with the last id.
    Reconnect { reason: &'static str },
    /// An in-band token refresh was accepted; the connection now lives until `expiresAt`.
    #[serde(rename_all = "camelCase")]
    Refreshed { expires_at: i64 },
    /// A client message could not be understood; the connection stays open.
    Error { message: String },
    /// The user's unread count changed elsewhere (marked read in another tab or device).
    Unread { count: u64 },
}

impl ControlMessage {
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::Connected { .. } => "connected",
            Self::Resync { .. } => "resync",
            Self::Reconnect { .. } => "reconnect",
            Self::Refreshed { .. } => "refreshed",
            Self::Error { .. } => "error",
            Self::Unread { .. } => "unread",
        }
    }

    /// The stream position the message moves the client to (SSE sends it as the event's `id`,
    /// so a browser's `EventSource` resumes from it on its own).
    pub fn position(&self) -> Option<StreamId> {
        match self {
            Self::Connected { id } | Self::Resync { id, .. } => Some(*id),
            _ => None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why the hub ended a connection. Each has a WebSocket close code and a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or its socket failed.
    ClientGone,
    /// The send queue overflowed: the client could not keep up.
    TooSlow,
    /// No frame (pong or other) arrived within a ping interval.
    PingTimeout,
    /// The access token expired and was not refreshed in-band.
    TokenExpired,
    /// An in-band refresh presented an invalid token or another user's.
    InvalidRefresh,
    /// The user ended every session (logout everywhere, password change): log in again.
    SessionRevoked,
    /// This replica is shutting down.
    Shutdown,
    /// Redis failed while replaying; the client should simply reconnect.
    ServerError,
}

impl CloseReason {
    /// WebSocket close code. 4xxx codes are private to this protocol (RFC 6455 §7.4.2).
    pub fn close_code(self) -> u16 {
        match self {
            Self::ClientGone => 1000,
            Self::Shutdown => 1001,
            Self::ServerError => 1011,
            Self::PingTimeout => 4000,
            Self::TokenExpired => 4001,
            Self::InvalidRefresh => 4003,
            Self::SessionRevoked => 4004,
            Self::TooSlow => 4008,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::TooSlow => "too_slow",
            Self::PingTimeout => "ping_timeout",
            Self::TokenExpired => "token_expired",
            Self::InvalidRefresh => "invalid_refresh",
            Self::SessionRevoked => "session_revoked",
            Self::Shutdown => "shutdown",
            Self::ServerError => "server_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order() {
        let a: StreamId = "1700000000000-0".parse().unwrap();
        let b: StreamId = "1700000000000-1".parse().unwrap();
        let c: StreamId = "1700000000001".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-0");
        for bad in [
            "",
            "-",
            "abc",
            "1-",
            "-1",
            "1-2-3",
            "1 -2",
            "123456789012345678901234",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pubsub_payload_round_trip() {
        let delivery = Delivery::from_pubsub_payload(r#"5-1 1700 {"_id":"a b"}"#).unwrap();
        assert_eq!(
            delivery.id,
            StreamId {
                millis: 5,
                sequence: 1
            }
        );
        assert_eq!(delivery.created_at_millis, 1700);
        assert_eq!(&*delivery.notification_json, r#"{"_id":"a b"}"#);
        let frame: serde_json::Value = serde_json::from_str(&delivery.ws_frame()).unwrap();
        assert_eq!(frame["id"], "5-1");
        assert_eq!(frame["type"], "notification");
        assert_eq!(frame["data"]["_id"], "a b");
        assert!(Delivery::from_pubsub_payload("garbage").is_none());
        let chained = Delivery::from_pubsub_payload(r#"5-1/4-0 1700 {"_id":"a"}"#).unwrap();
        assert_eq!(chained.id.to_string(), "5-1");
        assert_eq!(
            chained.previous.map(|p| p.to_string()).as_deref(),
            Some("4-0")
        );
        assert!(Delivery::from_pubsub_payload("5-1/x 1700 {}").is_none());
    }

    #[test]
    fn control_messages_are_tagged_by_type() {
        let json = ControlMessage::Refreshed { expires_at: 7 }.to_json();
        assert_eq!(json, r#"{"type":"refreshed","expiresAt":7}"#);
        let id = StreamId {
            millis: 5,
            sequence: 1,
        };
        let json = ControlMessage::Resync {
            reason: "trimmed",
            id,
        }
        .to_json();
        assert_eq!(json, r#"{"type":"resync","reason":"trimmed","id":"5-1"}"#);
        let connected = ControlMessage::Connected { id };
        assert_eq!(connected.to_json(), r#"{"type":"connected","id":"5-1"}"#);
        assert_eq!(connected.position(), Some(id));
        assert_eq!(ControlMessage::Refreshed { expires_at: 7 }.position(), None);
    }
}

/// The Server-Sent Events wire format, written by hand: the hub sends a handful of event kinds
/// and formats each once, straight into the bytes the response body carries.
pub mod sse {
    use std::fmt::Write;

    use bytes::Bytes;

    use super::StreamId;

    /// A comment line: keeps proxies and the client's own timeout from closing an idle stream.
    pub const HEARTBEAT: &[u8] = b":\n\n";

    /// One event: `id` (when given), `event`, and `data` as one `data:` line per line of it.
    pub fn event(name: &str, id: Option<StreamId>, data: &str) -> Bytes {
        let mut out = String::with_capacity(data.len() + name.len() + 48);
        if let Some(id) = id {
            let _ = writeln!(out, "id: {id}");
        }
        let _ = writeln!(out, "event: {name}");
        // CRLF, LF and a lone CR all end a line in this format.
        for line in data.split('\n') {
            for part in line.strip_suffix('\r').unwrap_or(line).split('\r') {
                let _ = writeln!(out, "data: {part}");
            }
        }
        out.push('\n');
        Bytes::from(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_line_of_the_data_is_its_own_data_field() {
            let id: StreamId = "5-1".parse().expect("id");
            assert_eq!(
                event("notification", Some(id), "{\"a\":1}"),
                "id: 5-1\nevent: notification\ndata: {\"a\":1}\n\n"
            );
            assert_eq!(
                event("x", None, "one\r\ntwo\nthree\rfour"),
                "event: x\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
            );
        }
    }
}
