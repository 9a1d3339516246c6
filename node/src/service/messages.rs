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
        let (message, durable) = {
            // Who is online (10), then the recipient's mailbox (20), then the log (90).
            let sessions = self.sessions.read().map_err(lock_failed)?;
            let live: Vec<_> = sessions.get(&to).cloned().unwrap_or_default();
            let mut shard = self.shard(&to).lock().map_err(lock_failed)?;
            // Checked under the shard lock: account deletion removes the mailbox under it too.
            if !self.accounts.contains_key(&to) {
                return Err(no_such_user());
            }
            // The id is taken under the recipient's shard lock, and the record queued before it
            // is released: within one mailbox, id order is storage order and log order, so a
            // reader never sees a newer message before an older one.
            let message = StoredMessage {
                id: self.next_message_id.fetch_add(1, Ordering::Relaxed),
                from,
                to: to.clone(),
                timestamp: now_ms(),
                text,
            };
            let mailbox = shard.entry(to.clone()).or_default();
            mailbox
                .messages
                .insert(message.id, (message.clone(), false));
            if !live.is_empty() {
                mailbox.unpushed.insert(message.id, live);
            }
            let durable = self.sequenced(|| Ok(vec![Record::Message(message.clone())]))?;
            (message, durable)
        };
        if let Err(error) = Service::durable(durable) {
            // Not acknowledged, so neither pushed nor kept: the sender was told it failed and may
            // send it again, which must not deliver it twice.
            if let Some(mailbox) = self.shard(&to).lock().map_err(lock_failed)?.get_mut(&to) {
                mailbox.unpushed.remove(&message.id);
                mailbox.messages.remove(&message.id);
            }
            return Err(error);
        }
        self.push_durable(&to, message.id)?;
        Ok(Reply::Sent {
            id: message.id,
            timestamp: message.timestamp,
        })
    }

    /// Pushes, oldest first, every message of `user`'s mailbox up to `up_to` still waiting for
    /// its push, once `up_to` is durable. A mailbox's records are logged in id order, so the older
    /// ones are durable too; a sender that wakes later finds its message already pushed. A
    /// message counts as delivered once at least one session's queue took it.
    ///
    /// The "delivered" record rides with the next log batch (a crash before it is durable only
    /// means the message is offered again by `read_messages`).
    fn push_durable(&self, user: &str, up_to: u64) -> Result<(), ErrorReply> {
        let mut shard = self.shard(user).lock().map_err(lock_failed)?;
        let Some(mailbox) = shard.get_mut(user) else {
            return Ok(());
        };
        let mut marked = Vec::new();
        while let Some(entry) = mailbox.unpushed.first_entry()
            && *entry.key() <= up_to
        {
            let (id, sessions) = entry.remove_entry();
            // Deleted or read meanwhile: a push now would deliver it again.
            let Some((message, delivered @ false)) = mailbox.messages.get_mut(&id) else {
                continue;
            };
            let push = ServerFrame::Push(Push::Deliver(public(message)));
            // try_send: a full outbox drops the push (the message stays queued) rather than
            // stall every sender to this mailbox behind one slow reader.
            let pushed = sessions
                .iter()
                .filter(|session| session.outbox.try_send(push.clone()).is_ok())
                .count();
            if pushed > 0 {
                *delivered = true;
                marked.push(id);
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
