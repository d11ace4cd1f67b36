//! One connection's view of the log: the events after its resume point that it may see and
//! asked for, in order, each once, until the connection must end.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    auth::Principal,
    metrics::{OpenStream, Transport},
};

use super::{EventsState, Published};

/// Events read from the log per query while catching up.
const CATCH_UP_PAGE: i64 = 200;

/// Longest accepted list of type patterns.
pub const MAX_PATTERNS: usize = 50;

/// Which event types a connection wants: exact names, `prefix.*`, or `*` for all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// Every type.
    pub fn all() -> Self {
        Self(vec!["*".to_owned()])
    }

    /// Parses patterns, or says what is wrong with one.
    pub fn parse<'a>(raw: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut patterns = Self::default();
        patterns.add(raw)?;
        Ok(patterns)
    }

    /// Adds patterns (each once).
    pub fn add<'a>(&mut self, raw: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        for pattern in raw {
            let name = pattern.strip_suffix(".*").unwrap_or(pattern);
            let valid = pattern == "*"
                || (!name.is_empty()
                    && name.len() <= 100
                    && name.split('.').all(|part| {
                        !part.is_empty()
                            && part
                                .chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    }));
            if !valid {
                return Err(format!(
                    "{pattern:?} is not an event type, a prefix such as user.* or *"
                ));
            }
            if !self.0.iter().any(|p| p == pattern) {
                self.0.push(pattern.to_owned());
            }
        }
        if self.0.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns"));
        }
        Ok(())
    }

    /// Removes patterns.
    pub fn remove<'a>(&mut self, raw: impl IntoIterator<Item = &'a str>) {
        for pattern in raw {
            self.0.retain(|p| p != pattern);
        }
    }

    /// The patterns.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether an event of type `kind` is wanted.
    pub fn matches(&self, kind: &str) -> bool {
        self.0.iter().any(|pattern| {
            pattern == "*"
                || pattern == kind
                || pattern.strip_suffix('*').is_some_and(|prefix| {
                    kind.strip_prefix(prefix)
                        .is_some_and(|rest| !rest.is_empty())
                })
        })
    }
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client fell further behind than the instance buffers.
    SlowConsumer,
    /// The access token (or ticket) the stream was opened with expired.
    Expired,
    /// The session was revoked (logout, password change).
    Revoked,
    /// The instance is shutting down.
    ShuttingDown,
    /// The log could not be read.
    Unavailable,
}

impl End {
    /// A short machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::Expired => "token_expired",
            Self::Revoked => "session_revoked",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable => "unavailable",
        }
    }

    /// What the client should do.
    pub fn detail(self) -> &'static str {
        match self {
            Self::SlowConsumer => {
                "the client read events more slowly than they came; reconnect and resume after the last event id received"
            }
            Self::Expired => "the access token expired; reconnect with a fresh one and resume",
            Self::Revoked => "the session was revoked; log in again",
            Self::ShuttingDown => {
                "this instance is shutting down; reconnect and resume after the last event id received"
            }
            Self::Unavailable => {
                "events cannot be read right now; reconnect and resume after the last event id received"
            }
        }
    }
}

/// The events of one connection.
pub struct Feed {
    state: EventsState,
    principal: Principal,
    /// The types the client asked for.
    pub patterns: Patterns,
    receiver: broadcast::Receiver<Arc<Published>>,
    /// The last event handed out (or skipped as invisible); the resume point.
    last: i64,
    /// Events up to this id come from the log; later ones from the receiver.
    catch_up_until: i64,
    backlog: VecDeque<Arc<Published>>,
    /// Counts the connection as open while it lives.
    open: OpenStream,
}

impl Feed {
    /// The events after `after` (or, with `None`, from now on) that `principal` may see
    /// and `patterns` match, sent over `transport`.
    pub fn new(
        state: EventsState,
        principal: Principal,
        after: Option<i64>,
        patterns: Patterns,
        transport: Transport,
    ) -> Self {
        let (receiver, watermark) = state.events.subscribe();
        let open = OpenStream::new(state.metrics.clone(), transport);
        // A client may have seen more than this instance has published yet (it was
        // connected to another one): then it only gets what follows.
        let last = after.unwrap_or(watermark);
        Self {
            state,
            principal,
            patterns,
            receiver,
            last,
            catch_up_until: watermark,
            backlog: VecDeque::new(),
            open,
        }
    }

    /// The id the client should resume after.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The next event, or why the stream ends. Cancel-safe: nothing is lost when
    /// the future is dropped before it resolves.
    pub async fn next(&mut self) -> Result<Arc<Published>, End> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                if let Some(found) = self.accept(&event)? {
                    return Ok(found);
                }
                continue;
            }
            if self.last < self.catch_up_until {
                let page = self
                    .state
                    .events
                    .log()
                    .after(self.last, CATCH_UP_PAGE)
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "cannot read the event log for a stream");
                        End::Unavailable
                    })?;
                let until = self.catch_up_until;
                self.backlog.extend(
                    page.into_iter()
                        .filter(|event| event.id <= until)
                        .map(Arc::new),
                );
                if self.backlog.is_empty() {
                    self.last = until;
                }
                continue;
            }
            let expires_in = self.principal.expires_at() - chrono::Utc::now().timestamp();
            let expiry = Duration::from_secs(u64::try_from(expires_in).unwrap_or(0));
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(event) => {
                        if let Some(found) = self.accept(&event)? {
                            return Ok(found);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.open.dropped_as_slow();
                        return Err(End::SlowConsumer);
                    }
                    Err(RecvError::Closed) => return Err(End::ShuttingDown),
                },
                () = tokio::time::sleep(expiry) => return Err(End::Expired),
                () = self.state.shutdown.started() => return Err(End::ShuttingDown),
            }
        }
    }

    /// The event if this client gets it; moves the resume point past it.
    fn accept(&mut self, event: &Arc<Published>) -> Result<Option<Arc<Published>>, End> {
        if event.id <= self.last {
            return Ok(None);
        }
        if self.state.auth.tokens.is_revoked(self.principal.session) {
            return Err(End::Revoked);
        }
        if self.principal.expires_at() <= chrono::Utc::now().timestamp() {
            return Err(End::Expired);
        }
        self.last = event.id;
        if event.visible_to(&self.principal) && self.patterns.matches(&event.kind) {
            Ok(Some(Arc::clone(event)))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Patterns;

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let some = Patterns::parse(["user.created", "security.*"]).unwrap();
        assert!(some.matches("user.created"));
        assert!(!some.matches("user.updated"));
        assert!(some.matches("security.login.failed"));
        assert!(!some.matches("security"));
        assert!(!some.matches("securityx.a"));
        assert!(Patterns::all().matches("job.dead"));
        assert!(!Patterns::default().matches("job.dead"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            ".",
            "User.created",
            "user..created",
            "user.*.x",
            "a b",
            "*.x",
        ] {
            assert!(Patterns::parse([bad]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
        assert!(Patterns::parse(many.iter().map(String::as_str)).is_err());
    }
}
