//! Typed configuration, read once from environment variables.
//!
//! Every variable has a default that works on a developer machine with the backing services on
//! their standard local ports, so `instaclone` starts with no configuration at all. Secrets are
//! wrapped in [`Secret`] so they never reach a log line through `Debug`. The README lists every
//! variable; keep the two in step.

use std::{fmt, net::IpAddr, num::NonZeroUsize, path::PathBuf, str::FromStr, time::Duration};

/// A value that must not be printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The wrapped value. Call sites are easy to audit: grep for `expose`.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} has an invalid value {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read {name} file {path}: {source}")]
    File {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    /// `name` is set to `value`, which is wrong for `reason`.
    pub fn invalid(
        name: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            name,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Coloured, one line per event, for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "pretty" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("expected `human` or `json`, got `{other}`")),
        }
    }
}

/// Every setting of every part. Each part reads the sections it needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub postgres: PostgresSettings,
    pub mongo: MongoSettings,
    pub redis: RedisSettings,
    pub amqp: AmqpSettings,
    pub jwt: JwtSettings,
    pub internal: InternalSettings,
    pub services: ServiceUrls,
    pub hub: HubSettings,
    pub timelines: TimelineSettings,
    pub notifications: NotificationSettings,
    pub log_format: LogFormat,
    /// Who may scrape `/metrics` (`METRICS_ACCESS`).
    pub metrics_access: MetricsAccess,
    /// How long a part waits for each backing service at startup.
    pub startup_wait: Duration,
}

/// Who may read `/metrics`: only callers presenting the service credential (`credential`, the
/// default), or anyone (`public`, for a private network or a laptop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    Credential,
    Public,
}

impl FromStr for MetricsAccess {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "credential" | "token" => Ok(Self::Credential),
            "public" => Ok(Self::Public),
            other => Err(format!("expected `credential` or `public`, got `{other}`")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address every listener binds to (`HOST`).
    pub host: IpAddr,
    pub gateway_port: u16,
    pub auth_port: u16,
    pub users_port: u16,
    pub posts_port: u16,
    pub notifications_port: u16,
    pub hub_port: u16,
    /// Largest accepted request body, in bytes; larger gets 413.
    pub body_limit_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Full URL of the users service's database. It is created at start when missing.
    pub users_url: Secret<String>,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub url: Secret<String>,
    pub posts_database: String,
    pub notifications_database: String,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server's URL, or with `cluster` one or more seed nodes' URLs separated by commas.
    pub url: Secret<String>,
    /// Whether `url` names a Redis Cluster (`REDIS_CLUSTER=true`).
    pub cluster: bool,
    /// Prepended to every key and channel name, so several deployments (or tests) share a server.
    pub key_prefix: String,
}

impl RedisSettings {
    /// A key or channel name under this deployment's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.key_prefix, suffix)
    }
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: Secret<String>,
    /// The durable topic exchange every event is published to.
    pub exchange: String,
    /// Prepended to every queue name this deployment declares.
    pub queue_prefix: String,
    /// Unacknowledged deliveries a consumer may hold at once.
    pub prefetch: u16,
    /// Work queues are deleted after this long without consumers (tests set it so their
    /// uniquely named queues clean themselves up; production leaves it unset).
    pub queue_expires: Option<Duration>,
}

impl AmqpSettings {
    /// A queue name under this deployment's prefix.
    pub fn queue(&self, suffix: &str) -> String {
        format!("{}{}", self.queue_prefix, suffix)
    }
}

/// Access-token keys (Ed25519, PEM). Auth needs both; every other part only the public key.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub private_key_pem: Option<Secret<String>>,
    pub public_key_pem: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// The credential services present to each other on `/internal/*` routes.
#[derive(Debug, Clone)]
pub struct InternalSettings {
    pub token: Option<Secret<String>>,
    /// Timeout of one service-to-service request.
    pub request_timeout: Duration,
}

/// Where each service answers, for the gateway and for service-to-service calls.
#[derive(Debug, Clone)]
pub struct ServiceUrls {
    pub auth: String,
    pub users: String,
    pub posts: String,
    pub notifications: String,
    pub hub: String,
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Entries kept per user in the replay stream (`XADD MAXLEN ~`).
    pub stream_max_len: u64,
    /// Messages queued for one connection before it is cut off as too slow.
    pub send_queue_capacity: usize,
    pub ws_ping_interval: Duration,
    pub sse_heartbeat_interval: Duration,
    pub ticket_ttl: Duration,
    /// Open connections one user may hold on one replica (0: no cap).
    pub max_connections_per_user: usize,
    /// Open connections one client address (an IPv6 /64) may hold on one replica (0: no cap).
    pub max_connections_per_address: usize,
    /// Failed handshakes (bad ticket or token) one address may make per minute before the
    /// replica refuses its handshakes without looking at them (0: no throttle).
    pub max_failed_handshakes_per_minute: u32,
    /// Proxies in front of the hub whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// How long the notifications service keeps what it stores.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Notifications older than this are deleted (`NOTIFICATIONS_RETENTION_DAYS`, 0: kept
    /// forever).
    pub retention: Duration,
    /// Progress records of completed events older than this are deleted.
    pub progress_retention: Duration,
}

/// Home timelines of the posts service (Redis, fan-out on write).
#[derive(Debug, Clone)]
pub struct TimelineSettings {
    /// Post ids kept per reader; older pages are read from MongoDB.
    pub capacity: NonZeroUsize,
    /// A reader's timeline (and follow set) is dropped this long after their last feed read
    /// (rebuilt on return).
    pub ttl: Duration,
    /// A post's cached body (what feed pages are made of) lives this long after it was written.
    pub post_ttl: Duration,
}

/// The one environment reader of every part: variables are read through a closure, so tests
/// supply a map instead of the process environment. An absent, empty or blank variable takes its
/// default; a value that does not parse is a [`ConfigError`] naming the variable.
pub struct Env<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Self {
        Self(lookup)
    }

    pub fn string(&self, name: &'static str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn optional(&self, name: &'static str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    /// The variable parsed (surrounding spaces ignored), or `default` when it is not set.
    pub fn parse<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_optional(name)
            .map(|value| value.unwrap_or(default))
    }

    /// The variable parsed, or `None` when it is not set.
    pub fn parse_optional<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => Ok(None),
            Some(value) => match value.trim().parse() {
                Ok(parsed) => Ok(Some(parsed)),
                Err(e) => Err(ConfigError::invalid(name, value, e.to_string())),
            },
        }
    }

    /// A comma-separated list of addresses and CIDR networks; empty when unset or `none`.
    pub fn networks(&self, name: &'static str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        match self.optional(name) {
            None => Ok(Vec::new()),
            Some(value) => {
                crate::client_address::ClientAddressPolicy::parse_list(&value).map_err(|reason| {
                    ConfigError::Invalid {
                        name,
                        reason,
                        value,
                    }
                })
            }
        }
    }

    pub fn seconds(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(name, default).map(Duration::from_secs)
    }

    /// A PEM given inline (`NAME`) or as a file path (`NAME_FILE`).
    pub fn pem(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(inline) = self.optional(name) {
            return Ok(Some(inline));
        }
        match self.optional(file_name) {
            None => Ok(None),
            Some(path) => {
                let path = PathBuf::from(path);
                std::fs::read_to_string(&path)
                    .map(Some)
                    .map_err(|source| ConfigError::File {
                        name: file_name,
                        path,
                        source,
                    })
            }
        }
    }
}

/// A lookup over fixed `(name, value)` pairs (the last of a repeated name wins), for
/// [`Settings::from_lookup`] and the parts' own readers in tests.
pub fn lookup_in<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`; absent or empty values take their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(lookup);
        let host: IpAddr = env.parse("HOST", IpAddr::from([127, 0, 0, 1]))?;
        let http = HttpSettings {
            host,
            gateway_port: env.parse("GATEWAY_PORT", 3000)?,
            auth_port: env.parse("AUTH_PORT", 3001)?,
            users_port: env.parse("USERS_PORT", 3002)?,
            posts_port: env.parse("POSTS_PORT", 3003)?,
            notifications_port: env.parse("NOTIFICATIONS_PORT", 3004)?,
            hub_port: env.parse("HUB_PORT", 3005)?,
            body_limit_bytes: env.parse("BODY_LIMIT_BYTES", 1024 * 1024)?,
        };
        let local = |port: u16| format!("http://127.0.0.1:{port}");
        let services = ServiceUrls {
            auth: env.string("AUTH_URL", &local(http.auth_port)),
            users: env.string("USERS_URL", &local(http.users_port)),
            posts: env.string("POSTS_URL", &local(http.posts_port)),
            notifications: env.string("NOTIFICATIONS_URL", &local(http.notifications_port)),
            hub: env.string("HUB_URL", &local(http.hub_port)),
        };
        Ok(Self {
            postgres: PostgresSettings {
                users_url: Secret::new(env.string(
                    "USERS_DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/instaclone_users",
                )),
                max_connections: env.parse("POSTGRES_MAX_CONNECTIONS", 10)?,
            },
            mongo: MongoSettings {
                url: Secret::new(env.string("MONGODB_URL", "mongodb://127.0.0.1:27017")),
                posts_database: env.string("POSTS_MONGODB_DATABASE", "instaclone_posts"),
                notifications_database: env
                    .string("NOTIFICATIONS_MONGODB_DATABASE", "instaclone_notifications"),
            },
            redis: RedisSettings {
                url: Secret::new(env.string("REDIS_URL", "redis://127.0.0.1:6379")),
                cluster: env.parse("REDIS_CLUSTER", false)?,
                key_prefix: env.string("REDIS_KEY_PREFIX", "instaclone:"),
            },
            amqp: AmqpSettings {
                url: Secret::new(env.string("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
                exchange: env.string("EVENTS_EXCHANGE", "instaclone.events"),
                queue_prefix: env.string("AMQP_QUEUE_PREFIX", "instaclone."),
                prefetch: env.parse("AMQP_PREFETCH", 64)?,
                queue_expires: env
                    .optional("AMQP_QUEUE_EXPIRES_SECS")
                    .map(|_| env.seconds("AMQP_QUEUE_EXPIRES_SECS", 0))
                    .transpose()?,
            },
            jwt: JwtSettings {
                private_key_pem: env
                    .pem("JWT_PRIVATE_KEY", "JWT_PRIVATE_KEY_FILE")?
                    .map(Secret::new),
                public_key_pem: env.pem("JWT_PUBLIC_KEY", "JWT_PUBLIC_KEY_FILE")?,
                access_ttl: env.seconds("ACCESS_TOKEN_TTL_SECS", 15 * 60)?,
                refresh_ttl: env.seconds("REFRESH_TOKEN_TTL_SECS", 7 * 24 * 3600)?,
            },
            internal: InternalSettings {
                token: env.optional("INTERNAL_TOKEN").map(Secret::new),
                request_timeout: env.seconds("SERVICE_TIMEOUT_SECS", 10)?,
            },
            hub: HubSettings {
                stream_max_len: env.parse("HUB_STREAM_MAX_LEN", 1000)?,
                send_queue_capacity: env.parse("HUB_SEND_QUEUE_CAPACITY", 256)?,
                ws_ping_interval: env.seconds("HUB_WS_PING_SECS", 25)?,
                sse_heartbeat_interval: env.seconds("HUB_SSE_HEARTBEAT_SECS", 15)?,
                ticket_ttl: env.seconds("HUB_TICKET_TTL_SECS", 30)?,
                max_connections_per_user: env.parse("HUB_MAX_CONNECTIONS_PER_USER", 32)?,
                max_connections_per_address: env
                    .parse("HUB_MAX_CONNECTIONS_PER_ADDRESS", 10_000)?,
                max_failed_handshakes_per_minute: env
                    .parse("HUB_MAX_FAILED_HANDSHAKES_PER_MINUTE", 30)?,
                trusted_proxies: env.networks("HUB_TRUSTED_PROXIES")?,
            },
            timelines: TimelineSettings {
                capacity: env.parse(
                    "FEED_TIMELINE_CAPACITY",
                    NonZeroUsize::MIN.saturating_add(499),
                )?,
                ttl: env.seconds("FEED_TIMELINE_TTL_SECS", 3 * 24 * 3600)?,
                post_ttl: env.seconds("FEED_POST_CACHE_TTL_SECS", 24 * 3600)?,
            },
            notifications: NotificationSettings {
                retention: env
                    .seconds("NOTIFICATIONS_RETENTION_DAYS", 365)
                    .map(|d| d * 86_400)?,
                progress_retention: env
                    .seconds("NOTIFICATIONS_PROGRESS_RETENTION_DAYS", 30)
                    .map(|d| d * 86_400)?,
            },
            log_format: env.parse("LOG_FORMAT", LogFormat::Human)?,
            metrics_access: env.parse("METRICS_ACCESS", MetricsAccess::Credential)?,
            startup_wait: env.seconds("STARTUP_WAIT_SECS", 60)?,
            services,
            http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_lookup(lookup_in(vars))
    }

    #[test]
    fn defaults_point_at_local_services_and_design_ports() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.http.gateway_port, 3000);
        assert_eq!(s.http.hub_port, 3005);
        assert_eq!(s.services.users, "http://127.0.0.1:3002");
        assert_eq!(s.amqp.exchange, "instaclone.events");
        assert_eq!(s.jwt.access_ttl, Duration::from_secs(900));
        assert!(s.jwt.private_key_pem.is_none());
    }

    #[test]
    fn invalid_value_names_the_variable() {
        let err = settings(&[("AUTH_PORT", "not-a-port")]).unwrap_err();
        assert!(err.to_string().contains("AUTH_PORT"), "{err}");
        let err = settings(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = settings(&[("REDIS_URL", "redis://:hunter2@localhost")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn ports_feed_default_service_urls() {
        let s = settings(&[("POSTS_PORT", "4003")]).unwrap();
        assert_eq!(s.services.posts, "http://127.0.0.1:4003");
    }
}
