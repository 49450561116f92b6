//! The directory's one error type, split by who is at fault: the store (unreachable or slow),
//! the data in it (written by something other than this module), or the caller.

/// Why a directory operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The store did not answer in time, refused the connection, or failed the command
    /// (connection lost, loading, read-only replica, authentication). The caller refuses the
    /// request with a typed `directory_unavailable` error and retries later; nothing is known
    /// about the state of the keys involved.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// A value in the store does not parse (wrong type, too long, bad field). The key is
    /// named so an operator can inspect it.
    #[error("directory value at {key} is corrupt: {detail}")]
    Corrupt {
        /// The key holding the value.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store's URL does not parse, or names a scheme other than `redis://` and
    /// `rediss://`.
    #[error("invalid directory URL: {0}")]
    InvalidUrl(String),
    /// An argument cannot be stored: a join code or node field outside its bounds, or a TTL
    /// of zero or over [`MAX_TTL`](super::MAX_TTL). Nothing was sent to the store.
    #[error("invalid directory argument: {0}")]
    Invalid(String),
}
