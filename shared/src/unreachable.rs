//! Telling "the store did not answer" apart from "the store answered no".
//!
//! A request that fails because PostgreSQL, MongoDB or Redis cannot be reached (refused, dropped,
//! timed out, pool exhausted, server starting or stepping down) is not the client's fault and
//! not a bug: it is answered 503 with `Retry-After` ([`crate::http::ApiError::unavailable`]),
//! and a consumer retries it in place. Anything else a store says (a constraint, a malformed
//! document, a script error) stays what it is. Each service's error enum asks
//! [`Unreachable::is_unreachable`] once, where it maps its store variant to an `ApiError`.

/// A store error that means the store could not be reached, rather than that it refused.
pub trait Unreachable {
    fn is_unreachable(&self) -> bool;
}

#[cfg(feature = "postgres")]
impl Unreachable for sqlx::Error {
    fn is_unreachable(&self) -> bool {
        match self {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE classes 08 (connection exception), 53 (insufficient resources) and 57P
            // (operator intervention: shutdown, cannot connect now).
            sqlx::Error::Database(error) => error.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
            }),
            _ => false,
        }
    }
}

#[cfg(feature = "mongo")]
impl Unreachable for mongodb::error::Error {
    fn is_unreachable(&self) -> bool {
        use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR};
        matches!(
            self.kind.as_ref(),
            ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::DnsResolve { .. }
        ) || self.contains_label(RETRYABLE_WRITE_ERROR)
            || self.contains_label(TRANSIENT_TRANSACTION_ERROR)
    }
}

#[cfg(feature = "redis")]
impl Unreachable for redis::RedisError {
    fn is_unreachable(&self) -> bool {
        use redis::ErrorKind;
        self.is_io_error()
            || self.is_timeout()
            || self.is_connection_dropped()
            || self.is_connection_refusal()
            || matches!(
                self.kind(),
                ErrorKind::BusyLoadingError
                    | ErrorKind::TryAgain
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
                    | ErrorKind::ClusterConnectionNotFound
            )
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_unreachable_and_answers_are_not() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(sqlx::Error::Io(refused()).is_unreachable());
        assert!(sqlx::Error::PoolTimedOut.is_unreachable());
        assert!(!sqlx::Error::RowNotFound.is_unreachable());

        assert!(redis::RedisError::from(refused()).is_unreachable());
        let script = redis::RedisError::from((redis::ErrorKind::ResponseError, "ERR in script"));
        assert!(!script.is_unreachable());

        let mongo_io = mongodb::error::Error::from(refused());
        assert!(mongo_io.is_unreachable());
        let invalid = mongodb::error::Error::custom("not a store failure");
        assert!(!invalid.is_unreachable());
    }
}
