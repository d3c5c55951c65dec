//! What can go wrong in the knowledge stores, and what a caller does about it.

/// An error of the read model, its projections or Redis.
///
/// ### Handling
/// Each variant says what its caller does. A projection never gives up on a store that went
/// away: it retries with backoff on its own and counts the failures; only what cannot get
/// better by waiting reaches the caller.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    /// The SQL store cannot be reached or opened at start. Handling: stop and tell the user
    /// (the message names the URL, password hidden); the store's setup is wrong.
    #[error("cannot reach the read model at {url}: {detail}; is it running? set DATABASE_URL")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The driver's reason.
        detail: String,
    },
    /// The schema could not be brought up to date. Handling: stop; the database refuses the
    /// migration (permissions, or a newer schema than this binary knows).
    #[error("cannot migrate the read model at {url}: {detail}")]
    Migrate {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The driver's reason.
        detail: String,
    },
    /// A query failed. Handling: a projection retries it with backoff; a one-shot reader
    /// (`mapek status`) reports it.
    #[error("the read model at {url} failed {doing}: {detail}")]
    Query {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What was being done (`"writing a batch of MAPEK_PLAN"`).
        doing: String,
        /// The driver's reason.
        detail: String,
    },
    /// The log (NATS) failed. Handling: stop the projection; the caller restarts it once
    /// the server is back (it resumes after the stored sequence, so nothing is lost).
    #[error("the log failed for {stream}: {detail}")]
    Log {
        /// The stream being read.
        stream: String,
        /// What failed.
        detail: String,
    },
    /// Redis cannot be reached or failed a command. Handling: at start, stop and tell the
    /// user; while running, a projection counts it and goes on (Redis holds a cache).
    #[error("Redis at {url} failed {doing}: {detail}; is it running? set REDIS_URL")]
    Redis {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What was being done.
        doing: String,
        /// The client's reason.
        detail: String,
    },
    /// A test hook stopped the projection between its commit and its acknowledgement, as a
    /// crash would. Handling: restart the projection (only tests set the hook).
    #[error("the {stream} projection stopped after committing through sequence {seq} (test hook)")]
    Crashed {
        /// The stream.
        stream: String,
        /// The last sequence committed.
        seq: u64,
    },
}

/// `url` with the password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("sqlite:///tmp/a.sqlite"), "sqlite:///tmp/a.sqlite");
    }
}
