//! Decides what a database error means for a batch: retry it unchanged (transient) or isolate
//! the record that causes it (deterministic), per DESIGN.md §6.
//!
//! Guarantees: only error classes that are a property of the data (SQLSTATE classes 21, 22, 23,
//! 54 and client-side encode errors) are deterministic, so a dead letter is never written because
//! the database was merely unavailable. Anything unknown is transient: a schema or code defect
//! stalls the partition with error logs instead of dead-lettering every record.

/// How the failure policy treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry the same work after a backoff (connection loss, serialization failure, timeout…).
    Transient,
    /// The same input fails the same way: split the batch down to the record, dead-letter it.
    Deterministic,
}

/// Classifies a sqlx error.
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code),
            None => ErrorClass::Transient,
        },
        sqlx::Error::Encode(_) | sqlx::Error::InvalidArgument(_) => ErrorClass::Deterministic,
        _ => ErrorClass::Transient,
    }
}

/// Classifies a SQLSTATE code.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code.get(..2) {
        // 21: cardinality (21000: ON CONFLICT touching a row twice); 22: data exceptions
        // (22P05 NUL in text, 22P02 bad input syntax, 22001 value too long…); 23: integrity
        // constraints; 54: program limits (54000 index row too large).
        Some("21" | "22" | "23" | "54") => ErrorClass::Deterministic,
        _ => ErrorClass::Transient,
    }
}

/// The SQLSTATE of an error, if the server sent one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether the error means the connection itself is gone or unusable (as opposed to a statement
/// failing on a healthy connection): then a COMMIT's outcome is unknown.
pub fn is_connection_loss(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed => true,
        // 57P01 admin shutdown (pg_terminate_backend), 57P02 crash shutdown, 08*: connection
        // exceptions. The server may have committed before sending these.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P02"),
        _ => false,
    }
}

/// Whether a connection that returned this error must be closed rather than returned to the
/// pool: it is gone ([`is_connection_loss`]), or it reaches a node that cannot write — 25006
/// (read-only transaction: a demoted primary after a failover) or 57P03 (cannot connect now) —
/// where every retry on it would fail the same way for as long as the connection lives.
pub fn must_close_connection(error: &sqlx::Error) -> bool {
    is_connection_loss(error)
        || matches!(error, sqlx::Error::Database(db)
            if db.code().is_some_and(|c| c == "25006" || c == "57P03"))
}

/// Whether the error is a timeout, not a property of the data: a statement timeout (57014), a
/// client-side transaction deadline, or a TCP user timeout. A batch that times out is halved;
/// a record that times out alone is retried, never dead-lettered.
pub fn is_timeout(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c == "57014"),
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_constraint_errors_are_deterministic() {
        for code in [
            "22P05", "22P02", "22001", "23505", "23502", "21000", "54000",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Deterministic, "{code}");
        }
    }

    #[test]
    fn availability_and_concurrency_errors_are_transient() {
        for code in [
            "08006", "08001", "40001", "40P01", "57P01", "57P03", "57014", "53300", "55P03",
            "42P01",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Transient, "{code}");
        }
    }

    #[test]
    fn io_and_pool_errors_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), ErrorClass::Transient);
        assert!(is_connection_loss(&io));
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        assert!(!is_connection_loss(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn a_client_side_deadline_is_a_timeout_and_closes_its_connection() {
        let expired = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_timeout(&expired));
        assert!(must_close_connection(&expired));
        assert!(!is_timeout(&sqlx::Error::PoolTimedOut));
    }
}
