//! Account listings: a wildcard pattern, a page at a time, every page of one listing served from
//! the same O(1) MVCC snapshot (so concurrent creations never shift or repeat a page), with the
//! cursors kept on the connection.

use std::ops::Bound;

use sync_kit::mvcc::Snapshot;
use wildmatch::WildMatch;

use super::checks;
use super::connection::{Connection, Cursor, MAX_CURSORS};
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use crate::state::Account;

/// One page of `pattern`'s listing: a new listing on `fresh` when `cursor` is `None`, or the
/// continuation of the connection's listing named by `cursor`.
pub(super) fn page(
    connection: &mut Connection,
    fresh: impl FnOnce() -> Snapshot<String, Account>,
    pattern: &str,
    page_size: u32,
    cursor: Option<String>,
) -> Result<Reply, ErrorReply> {
    checks::pattern(pattern)?;
    checks::page("page_size", page_size)?;
    // Resume a listing (same snapshot), or start one on a fresh snapshot.
    let (snapshot, after) = match cursor {
        None => (fresh(), None),
        Some(token) => {
            let id = token
                .strip_prefix('c')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| invalid_cursor(&token))?;
            let at = connection
                .cursors
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| invalid_cursor(&token))?;
            let found = connection.cursors.remove(at).expect("position is valid");
            if found.pattern != pattern {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidArgument,
                    "a cursor continues the listing of the pattern it was made for",
                ));
            }
            (found.snapshot, Some(found.after))
        }
    };
    // Everything before the first wildcard is a literal prefix: start the scan there.
    let prefix: String = pattern
        .chars()
        .take_while(|c| *c != '*' && *c != '?')
        .collect();
    let start = match &after {
        Some(after) if after.as_str() >= prefix.as_str() => Bound::Excluded(after.clone()),
        _ => Bound::Included(prefix.clone()),
    };
    let matcher = WildMatch::new(pattern);
    let mut page: Vec<String> = Vec::new();
    let mut more = false;
    for (name, _) in snapshot.range((start, Bound::Unbounded)) {
        if !name.starts_with(&prefix) {
            break;
        }
        if matcher.matches(name) {
            if page.len() == page_size as usize {
                more = true;
                break;
            }
            page.push(name.clone());
        }
    }
    let next_cursor = match (more, page.last()) {
        (true, Some(last)) => {
            let id = connection.next_cursor;
            connection.next_cursor += 1;
            if connection.cursors.len() == MAX_CURSORS {
                connection.cursors.pop_front();
            }
            connection.cursors.push_back(Cursor {
                id,
                pattern: pattern.to_string(),
                snapshot,
                after: last.clone(),
            });
            Some(format!("c{id}"))
        }
        _ => None,
    };
    Ok(Reply::Accounts {
        accounts: page,
        next_cursor,
    })
}

fn invalid_cursor(token: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::InvalidCursor,
        format!("unknown cursor {token:?} (cursors belong to one connection and expire)"),
    )
}
