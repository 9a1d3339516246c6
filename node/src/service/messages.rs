//! Messages: send (pushed live or queued), read, delete.

use std::sync::atomic::Ordering;

use super::accounts::check_username;
use super::{Connection, Service, lock_failed, now_ms};
use crate::protocol::limits::{MAX_IDS, MAX_PAGE, MAX_TEXT};
use crate::protocol::{ErrorCode, ErrorReply, Message, Push, Reply, ServerFrame};
use crate::wal::{Record, StoredMessage};

fn public(message: &StoredMessage) -> Message {
    Message {
        id: message.id,
        from: message.from.clone(),
        timestamp: message.timestamp,
        text: message.text.clone(),
    }
}

impl Service {
    pub(super) fn send_message(
        &self,
        connection: &mut Connection,
        to: String,
        text: String,
    ) -> Result<Reply, ErrorReply> {
        let from = self.current_user(connection)?;
        check_username(&to)?;
        if text.len() > MAX_TEXT {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("a message has at most {MAX_TEXT} bytes"),
            ));
        }
        let no_such_user =
            || ErrorReply::new(ErrorCode::NoSuchUser, format!("no such user {to:?}"));
        let message = StoredMessage {
            id: self.next_message_id.fetch_add(1, Ordering::Relaxed),
            from,
            to: to.clone(),
            timestamp: now_ms(),
            text,
        };
        let (live, durable) = {
            // Who is online (10), then the recipient's mailbox (20), then the log (90).
            let sessions = self.sessions.read().map_err(lock_failed)?;
            let live: Vec<_> = sessions.get(&to).cloned().unwrap_or_default();
            let mut shard = self.shard(&to).lock().map_err(lock_failed)?;
            // Checked under the shard lock: account deletion removes the mailbox under it too.
            if !self.accounts.contains_key(&to) {
                return Err(no_such_user());
            }
            shard
                .entry(to.clone())
                .or_default()
                .messages
                .insert(message.id, (message.clone(), false));
            let durable = self.sequenced(|| Ok(vec![Record::Message(message.clone())]))?;
            (live, durable)
        };
        Service::durable(durable)?;
        // Durable: now push to every live session of the recipient. A message counts as
        // delivered once at least one session's queue took it.
        let push = ServerFrame::Push(Push::Deliver(public(&message)));
        let pushed = live
            .iter()
            .filter(|session| session.outbox.try_send(push.clone()).is_ok())
            .count();
        if pushed > 0 {
            self.mark_delivered(&to, &[message.id])?;
        }
        Ok(Reply::Sent {
            id: message.id,
            timestamp: message.timestamp,
        })
    }

    /// Marks pushed messages delivered; the record rides with the next log batch (a crash before
    /// it is durable only means the message is offered again by `read_messages`).
    fn mark_delivered(&self, user: &str, ids: &[u64]) -> Result<(), ErrorReply> {
        let mut shard = self.shard(user).lock().map_err(lock_failed)?;
        let Some(mailbox) = shard.get_mut(user) else {
            return Ok(());
        };
        let mut marked = Vec::new();
        for id in ids {
            if let Some((_, delivered)) = mailbox.messages.get_mut(id)
                && !*delivered
            {
                *delivered = true;
                marked.push(*id);
            }
        }
        if !marked.is_empty() {
            self.sequenced_quietly(vec![Record::Delivered {
                user: user.to_string(),
                ids: marked,
            }])?;
        }
        Ok(())
    }

    pub(super) fn read_messages(
        &self,
        connection: &mut Connection,
        limit: u32,
    ) -> Result<Reply, ErrorReply> {
        let user = self.current_user(connection)?;
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("limit is 1 to {MAX_PAGE}"),
            ));
        }
        let (messages, durable) = {
            let mut shard = self.shard(&user).lock().map_err(lock_failed)?;
            let mut messages = Vec::new();
            if let Some(mailbox) = shard.get_mut(&user) {
                for (message, delivered) in mailbox.messages.values_mut() {
                    if messages.len() == limit as usize {
                        break;
                    }
                    if !*delivered {
                        *delivered = true;
                        messages.push(public(message));
                    }
                }
            }
            let durable = if messages.is_empty() {
                None
            } else {
                let ids = messages.iter().map(|m| m.id).collect();
                self.sequenced(|| {
                    Ok(vec![Record::Delivered {
                        user: user.clone(),
                        ids,
                    }])
                })?
            };
            (messages, durable)
        };
        Service::durable(durable)?;
        Ok(Reply::Messages { messages })
    }

    pub(super) fn delete_messages(
        &self,
        connection: &mut Connection,
        ids: Vec<u64>,
    ) -> Result<Reply, ErrorReply> {
        let user = self.current_user(connection)?;
        if ids.len() > MAX_IDS {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_IDS} ids at once"),
            ));
        }
        let (deleted, durable) = {
            let mut shard = self.shard(&user).lock().map_err(lock_failed)?;
            let mut removed = Vec::new();
            if let Some(mailbox) = shard.get_mut(&user) {
                for id in ids {
                    // Only messages in the user's own mailbox: nobody else's can be named.
                    if mailbox.messages.remove(&id).is_some() {
                        removed.push(id);
                    }
                }
            }
            let count = removed.len();
            let durable = if removed.is_empty() {
                None
            } else {
                self.sequenced(|| {
                    Ok(vec![Record::DeleteMessages {
                        user: user.clone(),
                        ids: removed,
                    }])
                })?
            };
            (count, durable)
        };
        Service::durable(durable)?;
        Ok(Reply::Deleted {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        })
    }
}
