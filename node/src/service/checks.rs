//! Request validation that needs no state, and the errors every operation shares.

use crate::protocol::limits::{
    MAX_IDS, MAX_KEY, MAX_PAGE, MAX_PASSWORD, MAX_PATTERN, MAX_TEXT, MAX_USERNAME, MIN_PASSWORD,
};
use crate::protocol::{ErrorCode, ErrorReply};

pub(super) fn username(username: &str) -> Result<(), ErrorReply> {
    let valid = !username.is_empty()
        && username.len() <= MAX_USERNAME
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!(
                "invalid username {username:?}: 1 to {MAX_USERNAME} ASCII letters, digits, '_', '-' or '.'"
            ),
        ))
    }
}

/// `Ok` if `size` is within `range`, else `invalid_argument` saying `rule`.
fn within(
    size: usize,
    range: std::ops::RangeInclusive<usize>,
    rule: impl FnOnce() -> String,
) -> Result<(), ErrorReply> {
    if range.contains(&size) {
        Ok(())
    } else {
        Err(ErrorReply::new(ErrorCode::InvalidArgument, rule()))
    }
}

pub(super) fn password(password: &str) -> Result<(), ErrorReply> {
    within(password.len(), MIN_PASSWORD..=MAX_PASSWORD, || {
        format!("a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes")
    })
}

pub(super) fn text(text: &str) -> Result<(), ErrorReply> {
    within(text.len(), 0..=MAX_TEXT, || {
        format!("a message has at most {MAX_TEXT} bytes")
    })
}

pub(super) fn key(key: &str) -> Result<(), ErrorReply> {
    within(key.len(), 1..=MAX_KEY, || {
        format!("an idempotency key has 1 to {MAX_KEY} bytes")
    })
}

pub(super) fn page(what: &str, value: u32) -> Result<(), ErrorReply> {
    within(value as usize, 1..=MAX_PAGE as usize, || {
        format!("{what} is 1 to {MAX_PAGE}")
    })
}

pub(super) fn pattern(pattern: &str) -> Result<(), ErrorReply> {
    within(pattern.len(), 1..=MAX_PATTERN, || {
        format!("a pattern has 1 to {MAX_PATTERN} bytes")
    })
}

pub(super) fn ids(ids: &[u64]) -> Result<(), ErrorReply> {
    within(ids.len(), 0..=MAX_IDS, || {
        format!("at most {MAX_IDS} ids at once")
    })
}

/// A login password longer than any valid one fails like a wrong one (never hashed).
pub(super) fn login_password(password: &str) -> Result<(), ErrorReply> {
    if password.len() > MAX_PASSWORD {
        Err(auth_failed())
    } else {
        Ok(())
    }
}

pub(super) fn auth_failed() -> ErrorReply {
    ErrorReply::new(ErrorCode::AuthFailed, "wrong username or password")
}

pub(super) fn not_logged_in() -> ErrorReply {
    ErrorReply::new(ErrorCode::NotLoggedIn, "log in first")
}

pub(super) fn user_exists(username: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::UserExists,
        format!("username {username:?} is taken"),
    )
}
