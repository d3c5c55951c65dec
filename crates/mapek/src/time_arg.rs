//! Times on the command line: RFC 3339, a duration before now (`10m`), or Unix milliseconds.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses `2026-11-28T12:00:00Z`, or `10m` / `1h30m` meaning that long ago.
pub fn parse_since(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-28T12:00:00Z) nor a duration (10m)")
    })?;
    let now = OffsetDateTime::from(SystemTime::now());
    Ok(now - ago)
}

/// Parses an event time: RFC 3339, or milliseconds since the Unix epoch.
pub fn parse_ts_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(to_ms)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor Unix milliseconds"))
}

/// Milliseconds since the Unix epoch.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Now, in milliseconds since the Unix epoch: only for events that carry no time of their own.
pub fn now_ms() -> i64 {
    to_ms(OffsetDateTime::from(SystemTime::now()))
}

pub use mapek_replay::range::format_ms;
