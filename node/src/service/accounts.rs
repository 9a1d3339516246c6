//! Accounts: create, log in and out, list, delete.

use std::ops::Bound;

use wildmatch::WildMatch;

use super::connection::{Cursor, MAX_CURSORS};
use super::{Account, Connection, Service, lock_failed, now_ms, rate_limited};
use crate::protocol::limits::{MAX_PAGE, MAX_PASSWORD, MAX_PATTERN, MAX_USERNAME, MIN_PASSWORD};
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use crate::wal::Record;

pub(super) fn check_username(username: &str) -> Result<(), ErrorReply> {
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

fn check_password(password: &str) -> Result<(), ErrorReply> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::InvalidArgument,
            format!("a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes"),
        ))
    }
}

fn auth_failed() -> ErrorReply {
    ErrorReply::new(ErrorCode::AuthFailed, "wrong username or password")
}

pub(super) fn not_logged_in() -> ErrorReply {
    ErrorReply::new(ErrorCode::NotLoggedIn, "log in first")
}

impl Service {
    /// The connection's user, if it is logged in and the account it logged into still exists
    /// (not merely an account of the same name, created after a deletion).
    pub(super) fn current_user(&self, connection: &mut Connection) -> Result<String, ErrorReply> {
        let same_account = |user: &String| {
            self.accounts
                .get(user)
                .is_some_and(|account| account.password_hash == connection.account_hash)
        };
        match &connection.user {
            Some(user) if same_account(user) => Ok(user.clone()),
            Some(_) => {
                // The account was deleted (from another connection): this session is over.
                connection.user = None;
                connection.cursors.clear();
                Err(not_logged_in())
            }
            None => Err(not_logged_in()),
        }
    }

    pub(super) fn create_account(
        &self,
        username: String,
        password: String,
    ) -> Result<Reply, ErrorReply> {
        check_username(&username)?;
        check_password(&password)?;
        let exists = || {
            ErrorReply::new(
                ErrorCode::UserExists,
                format!("username {username:?} is taken"),
            )
        };
        if self.accounts.contains_key(&username) {
            return Err(exists());
        }
        let password_hash = self
            .hasher
            .hash(password)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("hashing failed: {e}")))?;
        let account = Account {
            password_hash,
            created: now_ms(),
        };
        let mut tx = self.accounts.begin();
        if tx.get(&username).is_some() {
            return Err(exists());
        }
        tx.insert(username.clone(), account.clone());
        // Commit under the sequence lock: the log sees accounts in the order they came to exist,
        // and a concurrent creation of the same name loses cleanly (MVCC conflict).
        let durable = self.sequenced(|| {
            tx.commit().map_err(|_| exists())?;
            Ok(vec![Record::CreateAccount {
                username: username.clone(),
                password_hash: account.password_hash.clone(),
                created: account.created,
            }])
        })?;
        if let Err(error) = Service::durable(durable) {
            self.forget_unlogged_account(&username, &account.password_hash);
            return Err(error);
        }
        tracing::info!(user = %username, "account created");
        Ok(Reply::Done {})
    }

    /// Takes back an account whose creation could not be logged (the client was told it
    /// failed): otherwise a retry would find the name taken until a restart, which forgets it.
    /// Only this creation's account is removed (matched by its hash, whose salt is unique), and
    /// nothing is logged: the log never had it.
    fn forget_unlogged_account(&self, username: &str, password_hash: &str) {
        let mut tx = self.accounts.begin();
        if tx
            .get(&username.to_string())
            .is_some_and(|account| account.password_hash == password_hash)
        {
            tx.remove(&username.to_string());
            if tx.commit().is_err() {
                tracing::warn!(user = %username, "an unlogged account changed meanwhile; kept");
            }
        }
    }

    pub(super) fn login(
        &self,
        connection: &mut Connection,
        username: String,
        password: String,
    ) -> Result<Reply, ErrorReply> {
        check_username(&username)?;
        if password.len() > MAX_PASSWORD {
            return Err(auth_failed());
        }
        self.logins
            .try_acquire(&username, 1)
            .map_err(|retry| rate_limited("login attempts for this user", retry))?;
        let hash = self
            .accounts
            .get(&username)
            .map(|account| account.password_hash);
        let known = hash.is_some();
        let verified = self.hasher.verify(
            hash.clone().unwrap_or_else(|| self.decoy_hash.clone()),
            password,
        );
        if !(known && verified) {
            tracing::info!(user = %username, peer = %connection.peer, "login failed");
            return Err(auth_failed());
        }
        if connection.user.is_some() {
            self.logout(connection)?;
        }
        let unread = {
            let mut sessions = self.sessions.write().map_err(lock_failed)?;
            // Deletion removes the account while holding `sessions` for writing: checked here,
            // under the same lock, the account verified above cannot vanish (or be replaced by a
            // new one of the same name) before this session is registered.
            if self.accounts.get(&username).map(|a| a.password_hash) != hash {
                return Err(auth_failed());
            }
            sessions
                .entry(username.clone())
                .or_default()
                .push(connection.handle());
            let shard = self.shard(&username).lock().map_err(lock_failed)?;
            shard.get(&username).map_or(0, |mailbox| {
                mailbox
                    .messages
                    .values()
                    .filter(|(_, delivered)| !delivered)
                    .count()
            })
        };
        connection.user = Some(username);
        connection.account_hash = hash.unwrap_or_default();
        Ok(Reply::LoggedIn {
            unread: u32::try_from(unread).unwrap_or(u32::MAX),
        })
    }

    pub(super) fn logout(&self, connection: &mut Connection) -> Result<Reply, ErrorReply> {
        connection.cursors.clear();
        let Some(user) = connection.user.take() else {
            return Ok(Reply::Done {});
        };
        let mut sessions = self.sessions.write().map_err(lock_failed)?;
        if let Some(handles) = sessions.get_mut(&user) {
            handles.retain(|h| h.connection != connection.id);
            if handles.is_empty() {
                sessions.remove(&user);
            }
        }
        Ok(Reply::Done {})
    }

    pub(super) fn list_accounts(
        &self,
        connection: &mut Connection,
        pattern: &str,
        page_size: u32,
        cursor: Option<String>,
    ) -> Result<Reply, ErrorReply> {
        self.current_user(connection)?;
        if pattern.is_empty() || pattern.len() > MAX_PATTERN {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("a pattern has 1 to {MAX_PATTERN} bytes"),
            ));
        }
        if !(1..=MAX_PAGE).contains(&page_size) {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("page_size is 1 to {MAX_PAGE}"),
            ));
        }
        // Resume a listing (same snapshot), or start one on a fresh snapshot.
        let (snapshot, after) = match cursor {
            None => (self.accounts.snapshot(), None),
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

    pub(super) fn delete_account(
        &self,
        connection: &mut Connection,
        password: String,
    ) -> Result<Reply, ErrorReply> {
        let user = self.current_user(connection)?;
        let hash = self
            .accounts
            .get(&user)
            .map(|a| a.password_hash)
            .ok_or_else(not_logged_in)?;
        if !self.hasher.verify(hash, password) {
            return Err(auth_failed());
        }
        let durable = {
            // Order: sessions (10), then the mailbox shard (20), then the log position (90).
            let mut sessions = self.sessions.write().map_err(lock_failed)?;
            let mut shard = self.shard(&user).lock().map_err(lock_failed)?;
            let durable = self.sequenced(|| {
                let mut tx = self.accounts.begin();
                tx.get(&user);
                tx.remove(&user);
                tx.commit().map_err(|_| {
                    ErrorReply::new(
                        ErrorCode::Internal,
                        "the account changed concurrently; retry",
                    )
                })?;
                Ok(vec![Record::DeleteAccount {
                    username: user.clone(),
                }])
            })?;
            shard.remove(&user);
            sessions.remove(&user);
            durable
        };
        connection.user = None;
        connection.cursors.clear();
        Service::durable(durable)?;
        tracing::info!(%user, "account deleted");
        Ok(Reply::Done {})
    }
}

fn invalid_cursor(token: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::InvalidCursor,
        format!("unknown cursor {token:?} (cursors belong to one connection and expire)"),
    )
}
