//! The node's state and its one writer, [`State::apply`].
//!
//! | part | primitive | lock level |
//! |---|---|---|
//! | accounts | `MvccMap<String, Account>`: O(1) snapshots, so listings never wait for apply | internal |
//! | mailboxes | 16 shards, each a `Mutex<HashMap<user, Mailbox>>` named `mailboxes-NN` | 20 |
//! | applied index | an atomic, raised while the applied command's shard lock is held | - |
//! | `apply-batch` | `Mutex<()>` held while a batch applies, on however many threads | 5 |
//! | ledger | [`Ledger`]: confirmed outputs (MVCC), `ledger-chain`, `mempool` | 24, 25 |
//! | `state-digest` | `Mutex<Option<(index, digest)>>`: the last digest, taken alone | 30 |
//!
//! Invariant: the same commands applied at the same log indexes give the same state, byte for
//! byte ([`State::digest`]). `apply` reads no clock, no randomness and no environment; a message's
//! id is its command's log index. Every command holds the shard lock of each user it touches
//! (several through one `LockSet`) for its whole application, including the account-map commit
//! and the applied index; the applier holds `apply-batch` while a batch applies (its commands on
//! different shards may apply on several threads at once), so whoever holds `apply-batch` and
//! every shard sees the state at exactly one index, the end of a batch: that is how
//! [`State::image`] (snapshots, the digest) reads a consistent state while apply runs.
//!
//! Each mailbox also keeps two indexes derived from its state (rebuilt from an image, never in
//! one): `undelivered`, the ids of its messages not marked delivered, and `sent_by_age`, its
//! idempotency keys by (timestamp, key). Invariant: they hold exactly those messages and keys,
//! so reading what waits and expiring old keys never walk the rest.
//!
//! Beside the state, each mailbox keeps the node's *delivery bookkeeping*: the messages handed
//! to their recipient (pushed live or returned by a read) whose `MarkDelivered` command is not
//! applied yet. It is node-local (never logged, never in the digest or a snapshot): it only keeps
//! a message from being handed out twice between the hand-out and its mark. After a crash it is
//! empty, and such a message is offered again (delivery is at least once across a crash).

pub mod command;
mod image;

pub use command::{Command, Outcome};
pub use image::{Image, ImageKey, ImageMessage};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use imbl::OrdMap;
use std::hash::{DefaultHasher, Hash, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sync_kit::mvcc::{MvccMap, MvccStats, Snapshot};
use sync_kit::{LockError, LockSet, Mutex, MutexGuard};

use crate::ledger::Ledger;
use crate::protocol::{ErrorCode, ErrorReply, Message};

/// Lock level of the mailbox shards (see `docs/node.md` for the node's whole order).
pub const MAILBOXES_LEVEL: sync_kit::Level = sync_kit::Level(20);

/// Lock level of `apply-batch`, held while a batch of commands is applied (on one thread or
/// several): below every other lock of the node, since the applier takes them all while holding
/// it.
pub const APPLY_BATCH_LEVEL: sync_kit::Level = sync_kit::Level(5);

/// How long a send's idempotency key is kept at least, in milliseconds of its sender's clock
/// readings: ten minutes.
pub const KEYS_KEPT_MS: u64 = 10 * 60 * 1000;

/// Lock level of `state-digest`, the cache of the last digest: taken alone, after a capture has
/// released every other lock.
pub const DIGEST_LEVEL: sync_kit::Level = sync_kit::Level(30);

/// Mailbox shards: commands on users of different shards apply without waiting for each other.
pub const SHARDS: usize = 16;
const SHARD_NAMES: [&str; SHARDS] = [
    "mailboxes-00",
    "mailboxes-01",
    "mailboxes-02",
    "mailboxes-03",
    "mailboxes-04",
    "mailboxes-05",
    "mailboxes-06",
    "mailboxes-07",
    "mailboxes-08",
    "mailboxes-09",
    "mailboxes-10",
    "mailboxes-11",
    "mailboxes-12",
    "mailboxes-13",
    "mailboxes-14",
    "mailboxes-15",
];

/// A stored account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
}

/// A message in its recipient's mailbox. Its strings are shared, so the persistent maps copy
/// a node of messages cheaply when a capture shares it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    from: Arc<str>,
    timestamp: u64,
    text: Arc<str>,
    delivered: bool,
}

/// One user's messages, oldest (lowest id) first, and the keys of the sends it made. Both are
/// persistent maps: a [`Capture`] shares them in O(1) instead of copying them under the locks.
#[derive(Debug, Default)]
struct Mailbox {
    messages: OrdMap<u64, Stored>,
    /// Idempotency key → (message id, timestamp) of this user's keyed sends. A hash map: a send
    /// looks its key up and stores it, which in an ordered map of random keys cost a hundred
    /// string comparisons; the image sorts them.
    sent_keys: imbl::HashMap<String, (u64, u64)>,
    /// The same keys by age, (timestamp, key), the oldest first: a send forgets the expired
    /// ones without looking at the others.
    sent_by_age: BTreeSet<(u64, String)>,
    /// The ids of `messages` not delivered yet (derived from them): reading what waits costs
    /// what waits, not the mailbox's whole history.
    undelivered: BTreeSet<u64>,
    /// Delivery bookkeeping (not state): handed out, mark not applied yet.
    handed_out: BTreeSet<u64>,
}

impl Mailbox {
    fn public(id: u64, stored: &Stored) -> Message {
        Message {
            id,
            from: stored.from.to_string(),
            timestamp: stored.timestamp,
            text: stored.text.to_string(),
        }
    }

    /// Remembers this user's keyed send `id` at `timestamp`, first forgetting every key of
    /// theirs older than [`KEYS_KEPT_MS`] before it (by the logged clock, so alike on every
    /// member).
    fn remember_key(&mut self, key: &str, id: u64, timestamp: u64) {
        let oldest_kept = timestamp.saturating_sub(KEYS_KEPT_MS);
        while let Some((at, _)) = self.sent_by_age.first()
            && *at < oldest_kept
        {
            let (_, expired) = self.sent_by_age.pop_first().expect("just seen");
            self.sent_keys.remove(&expired);
        }
        let key = key.to_string();
        if let Some((_, replaced)) = self.sent_keys.insert(key.clone(), (id, timestamp)) {
            self.sent_by_age.remove(&(replaced, key.clone()));
        }
        self.sent_by_age.insert((timestamp, key));
    }

    fn unread(&self) -> impl Iterator<Item = (&u64, &Stored)> {
        self.undelivered
            .iter()
            .filter(|id| !self.handed_out.contains(id))
            .filter_map(|id| Some((id, self.messages.get(id)?)))
    }

    fn store(&mut self, id: u64, stored: Stored) {
        if !stored.delivered {
            self.undelivered.insert(id);
        }
        self.messages.insert(id, stored);
    }
}

type Shard = HashMap<String, Mailbox>;

/// The node's replicated state: accounts and mailboxes.
pub struct State {
    accounts: MvccMap<String, Account>,
    ledger: Ledger,
    shards: Vec<Mutex<Shard>>,
    /// Held while a batch is applied: an image never sees part of a batch.
    batch: Mutex<()>,
    /// The last digest computed, with the applied index it is for: the state at one index is
    /// always the same, so `/stats` polled between changes hashes nothing.
    digest: Mutex<Option<(u64, String)>>,
    applied: AtomicU64,
    /// The index of the image this state was loaded from (or installed): commands at or below
    /// it are in it.
    base: AtomicU64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("applied", &self.applied_index())
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// The shard holding `user`'s mailbox. A fixed function of the name (SipHash with fixed keys),
/// so every node and every run agrees.
pub fn shard_of(user: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    user.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
}

/// Node-wide message figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageCounts {
    /// Messages held in mailboxes.
    pub stored: usize,
    /// Of which not yet delivered.
    pub undelivered: usize,
}

impl State {
    /// An empty state at log index 0.
    pub fn new() -> State {
        State {
            accounts: MvccMap::new(),
            ledger: Ledger::new(),
            shards: SHARD_NAMES
                .into_iter()
                .map(|name| Mutex::with_level(name, MAILBOXES_LEVEL, HashMap::new()))
                .collect(),
            batch: Mutex::with_level("apply-batch", APPLY_BATCH_LEVEL, ()),
            digest: Mutex::with_level("state-digest", DIGEST_LEVEL, None),
            applied: AtomicU64::new(0),
            base: AtomicU64::new(0),
        }
    }

    /// The index of the last command applied.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Applies the command at log `index`: the only code that changes the state. Called in log
    /// order per shard (commands on different shards may apply in parallel; the applied index
    /// is the highest applied); an index covered by the image the state was loaded from is
    /// skipped, so replaying a log from its start is safe.
    pub fn apply(&self, index: u64, command: &Command) -> Result<Outcome, LockError> {
        if index <= self.base.load(Ordering::Acquire) {
            return Ok(Outcome::Done);
        }
        match command {
            Command::CreateAccount {
                username,
                password_hash,
                created,
            } => self.create_account(index, username, password_hash, *created, 0),
            Command::OpenAccount {
                username,
                password_hash,
                created,
                grant,
            } => self.create_account(index, username, password_hash, *created, *grant),
            Command::DeleteAccount {
                username,
                password_hash,
            } => {
                let mut shard = self.shard(username)?;
                let mut tx = self.accounts.begin();
                let outcome = match tx.get(username) {
                    Some(account) if account.password_hash == *password_hash => {
                        if let Err(refusal) = self.ledger.check_empty(username)? {
                            self.applied.fetch_max(index, Ordering::AcqRel);
                            return Ok(Outcome::Refused(refusal));
                        }
                        tx.remove(username);
                        match commit(tx) {
                            Ok(()) => {
                                shard.remove(username);
                                Outcome::Done
                            }
                            Err(error) => Outcome::Refused(error),
                        }
                    }
                    _ => Outcome::Refused(ErrorReply::new(
                        ErrorCode::NotLoggedIn,
                        "the account was deleted meanwhile; log in first",
                    )),
                };
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
            Command::SendMessage {
                from,
                to,
                text,
                timestamp,
                key,
            } => {
                let stored = Stored {
                    from: from.as_str().into(),
                    timestamp: *timestamp,
                    text: text.as_str().into(),
                    delivered: false,
                };
                let outcome = match key {
                    None => self.store_message(&mut *self.shard(to)?, index, to, stored),
                    Some(key) => self.store_keyed_message(index, to, stored, key)?,
                };
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
            Command::MarkDelivered { marks } => {
                // Users of several shards: take them all at once, in the hierarchy's order.
                let mut set = LockSet::new();
                let mut wanted: Vec<usize> = marks.iter().map(|(user, _)| shard_of(user)).collect();
                wanted.sort_unstable();
                wanted.dedup();
                let slots: Vec<_> = wanted
                    .iter()
                    .map(|&i| (i, set.lock(&self.shards[i])))
                    .collect();
                let mut held = set.acquire()?;
                for (user, ids) in marks {
                    let shard_index = shard_of(user);
                    let (_, slot) = slots
                        .iter()
                        .find(|(i, _)| *i == shard_index)
                        .expect("every named user's shard is in the set");
                    if let Some(mailbox) = held.get_mut(*slot).get_mut(user) {
                        for id in ids {
                            if mailbox.undelivered.remove(id)
                                && let Some(stored) = mailbox.messages.get_mut(id)
                            {
                                stored.delivered = true;
                            }
                            mailbox.handed_out.remove(id);
                        }
                    }
                }
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(Outcome::Done)
            }
            Command::DeleteMessages { user, ids } => {
                let mut shard = self.shard(user)?;
                let mut deleted = 0u32;
                if let Some(mailbox) = shard.get_mut(user) {
                    for id in ids {
                        // Only the owner's own mailbox: nobody else's message can be named.
                        mailbox.undelivered.remove(id);
                        if mailbox.messages.remove(id).is_some() {
                            deleted += 1;
                        }
                        mailbox.handed_out.remove(id);
                    }
                }
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(Outcome::Deleted(deleted))
            }
            Command::SubmitTransaction { from, tx } => {
                let exists = |user: &str| self.has_account(user);
                let outcome = pooled(self.ledger.apply_submit(from, tx.clone(), exists)?);
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
            Command::Transfer { from, to, amount } => {
                let exists = |user: &str| self.has_account(user);
                let outcome = pooled(
                    self.ledger
                        .apply_transfer(from, to, *amount, None, exists)?,
                );
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
            Command::KeyedTransfer {
                from,
                to,
                amount,
                key,
                timestamp,
            } => {
                let exists = |user: &str| self.has_account(user);
                let keyed = Some((key.as_str(), *timestamp));
                let outcome = pooled(
                    self.ledger
                        .apply_transfer(from, to, *amount, keyed, exists)?,
                );
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
            Command::SealBlock { block } => {
                let outcome = match self.ledger.apply_block(block)? {
                    Ok(()) => Outcome::Done,
                    Err(why) => {
                        // Every member refuses it alike (the same checks on the same state): a
                        // block sealed on a tip that moved meanwhile, or a bug worth a look.
                        tracing::error!(
                            index,
                            height = block.header.height,
                            "block refused: {why}"
                        );
                        Outcome::Refused(ErrorReply::new(
                            ErrorCode::InvalidArgument,
                            format!("block refused: {why}"),
                        ))
                    }
                };
                self.applied.fetch_max(index, Ordering::AcqRel);
                Ok(outcome)
            }
        }
    }

    /// Creates an account (and pools its grant of `grant` coins), unless the name is taken.
    fn create_account(
        &self,
        index: u64,
        username: &str,
        password_hash: &str,
        created: u64,
        grant: u64,
    ) -> Result<Outcome, LockError> {
        let _shard = self.shard(username)?;
        let mut tx = self.accounts.begin();
        let outcome = if tx.get(&username.to_string()).is_some() {
            Outcome::Refused(ErrorReply::new(
                ErrorCode::UserExists,
                format!("username {username:?} is taken"),
            ))
        } else {
            tx.insert(
                username.to_string(),
                Account {
                    password_hash: password_hash.to_string(),
                    created,
                },
            );
            match commit(tx) {
                Ok(()) => {
                    self.ledger.apply_grant(index, username, grant)?;
                    Outcome::Done
                }
                Err(refusal) => Outcome::Refused(refusal),
            }
        };
        self.applied.fetch_max(index, Ordering::AcqRel);
        Ok(outcome)
    }

    /// The ledger: balances, outputs, transactions, blocks (reads; apply is the only writer).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Held by the applier while it applies a batch, however many threads apply it: images wait
    /// for it, so a snapshot or digest sees whole batches only.
    pub fn batch(&self) -> Result<MutexGuard<'_, ()>, LockError> {
        self.batch.lock()
    }

    /// Stores a message in `to`'s mailbox, if that account exists (checked under the shard
    /// lock: account deletion holds it too).
    fn store_message(&self, shard: &mut Shard, index: u64, to: &str, stored: Stored) -> Outcome {
        if !self.accounts.contains_key(to) {
            return Outcome::Refused(ErrorReply::new(
                ErrorCode::NoSuchUser,
                format!("no such user {to:?}"),
            ));
        }
        let timestamp = stored.timestamp;
        // The recipient's name is copied only for a mailbox's first message.
        match shard.get_mut(to) {
            Some(mailbox) => mailbox.store(index, stored),
            None => shard
                .entry(to.to_string())
                .or_default()
                .store(index, stored),
        }
        Outcome::Sent {
            id: index,
            timestamp,
        }
    }

    /// A send with an idempotency key: the sender's keys and the recipient's mailbox, in two
    /// shards (or one), taken together.
    fn store_keyed_message(
        &self,
        index: u64,
        to: &str,
        stored: Stored,
        key: &str,
    ) -> Result<Outcome, LockError> {
        let from = stored.from.to_string();
        let timestamp = stored.timestamp;
        let (sender, recipient) = (shard_of(&from), shard_of(to));
        let mut set = LockSet::new();
        let sender_slot = set.lock(&self.shards[sender]);
        let recipient_slot = (recipient != sender).then(|| set.lock(&self.shards[recipient]));
        let mut held = set.acquire()?;
        if let Some(&(id, timestamp)) = held
            .get(sender_slot)
            .get(&from)
            .and_then(|mailbox| mailbox.sent_keys.get(key))
        {
            return Ok(Outcome::AlreadySent { id, timestamp });
        }
        let outcome = match recipient_slot {
            Some(slot) => self.store_message(held.get_mut(slot), index, to, stored),
            None => self.store_message(held.get_mut(sender_slot), index, to, stored),
        };
        if let Outcome::Sent { id, .. } = outcome {
            held.get_mut(sender_slot)
                .entry(from)
                .or_default()
                .remember_key(key, id, timestamp);
        }
        Ok(outcome)
    }

    fn shard(&self, user: &str) -> Result<MutexGuard<'_, Shard>, LockError> {
        self.shards[shard_of(user)].lock()
    }

    // ----- reads: never change the state -----

    /// The account named `username`, from the latest committed version (does not wait for apply).
    pub fn account(&self, username: &str) -> Option<Account> {
        self.accounts.get(username)
    }

    /// Whether an account named `username` exists.
    pub fn has_account(&self, username: &str) -> bool {
        self.accounts.contains_key(username)
    }

    /// An O(1) snapshot of every account, for listings.
    pub fn accounts_snapshot(&self) -> Snapshot<String, Account> {
        self.accounts.snapshot()
    }

    /// The account map's figures.
    pub fn accounts_stats(&self) -> MvccStats {
        self.accounts.stats()
    }

    /// Messages waiting for `user`: undelivered and not handed out.
    pub fn unread_count(&self, user: &str) -> Result<usize, LockError> {
        Ok(self
            .shard(user)?
            .get(user)
            .map_or(0, |mailbox| mailbox.unread().count()))
    }

    /// Stored and undelivered messages over every mailbox (each shard waited for at most
    /// `patience`: a figure for statistics, never worth stalling on).
    pub fn message_counts(&self, patience: std::time::Duration) -> MessageCounts {
        let mut counts = MessageCounts::default();
        for shard in &self.shards {
            if let Ok(shard) = shard.try_lock_for(patience) {
                for mailbox in shard.values() {
                    counts.stored += mailbox.messages.len();
                    counts.undelivered += mailbox.undelivered.len();
                }
            }
        }
        counts
    }

    // ----- delivery bookkeeping: node-local, never logged -----

    /// Hands out up to `limit` of `user`'s waiting messages, oldest first, as many as fit in
    /// `max_bytes` of response (at least one): they are not handed out again until their
    /// `MarkDelivered` is applied (or [`State::take_back`] returns them).
    pub fn hand_out_unread(
        &self,
        user: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, LockError> {
        let mut shard = self.shard(user)?;
        let Some(mailbox) = shard.get_mut(user) else {
            return Ok(Vec::new());
        };
        let mut chosen: Vec<Message> = Vec::new();
        let mut bytes = 0;
        for (id, stored) in mailbox.unread().take(limit) {
            let message = Mailbox::public(*id, stored);
            bytes += message.encoded_bound();
            if bytes > max_bytes && !chosen.is_empty() {
                break;
            }
            chosen.push(message);
        }
        mailbox.handed_out.extend(chosen.iter().map(|m| m.id));
        Ok(chosen)
    }

    /// Hands out message `id` of `user` for a live push, unless it is delivered, handed out
    /// already (a read took it), or gone.
    pub fn hand_out(&self, user: &str, id: u64) -> Result<Option<Message>, LockError> {
        let mut shard = self.shard(user)?;
        let Some(mailbox) = shard.get_mut(user) else {
            return Ok(None);
        };
        let Some(stored) = mailbox.messages.get(&id) else {
            return Ok(None);
        };
        if stored.delivered || !mailbox.handed_out.insert(id) {
            return Ok(None);
        }
        Ok(Some(Mailbox::public(id, stored)))
    }

    /// Returns handed-out messages whose delivery did not happen (no session took the push) or
    /// could not be logged: they are offered again.
    pub fn take_back(&self, user: &str, ids: &[u64]) -> Result<(), LockError> {
        if let Some(mailbox) = self.shard(user)?.get_mut(user) {
            for id in ids {
                mailbox.handed_out.remove(id);
            }
        }
        Ok(())
    }

    // ----- images: snapshots and the digest -----

    /// The state at one applied index, between batches (every shard held at once), in O(users):
    /// the persistent maps are shared, not copied. [`Capture::image`] builds the canonical image
    /// from it without holding any lock.
    pub fn capture(&self) -> Result<Capture, LockError> {
        let _between_batches = self.batch()?;
        let mut set = LockSet::new();
        let slots: Vec<_> = self.shards.iter().map(|shard| set.lock(shard)).collect();
        let held = set.acquire()?;
        let mut mailboxes = Vec::new();
        for slot in slots {
            for (user, mailbox) in held.get(slot) {
                mailboxes.push((
                    user.clone(),
                    mailbox.messages.clone(),
                    mailbox.sent_keys.clone(),
                ));
            }
        }
        Ok(Capture {
            applied: self.applied_index(),
            accounts: self.accounts.snapshot(),
            mailboxes,
            ledger: self.ledger.capture()?,
        })
    }

    /// The whole state in canonical order at one applied index.
    pub fn image(&self) -> Result<Image, LockError> {
        Ok(self.capture()?.image())
    }

    /// SHA-256 over the canonical image, in hex: equal on every node that applied the same
    /// commands.
    pub fn digest(&self) -> Result<(u64, String), LockError> {
        // Captured under the locks; the image is built and hashed after they are released, and
        // only if the state moved since the last digest.
        let capture = self.capture()?;
        let applied = capture.applied();
        if let Some((index, digest)) = self.digest.lock()?.as_ref()
            && *index == applied
        {
            return Ok((applied, digest.clone()));
        }
        let digest = capture.image().digest();
        *self.digest.lock()? = Some((applied, digest.clone()));
        Ok((applied, digest))
    }

    /// A state holding exactly `image`; `Err` if its ledger does not check (naming the first
    /// block or pooled transaction that does not).
    pub fn from_image(image: Image) -> Result<State, String> {
        let mut state = State::new();
        state.ledger = Ledger::from_image(image.ledger)?;
        let mut tx = state.accounts.begin();
        for (name, account) in image.accounts {
            tx.insert(name, account);
        }
        commit(tx).expect("a fresh map has no concurrent writer");
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| HashMap::new()).collect();
        for (user, keys) in image.sent_keys {
            let mailbox = shards[shard_of(&user)].entry(user).or_default();
            for key in keys {
                mailbox.sent_by_age.insert((key.timestamp, key.key.clone()));
                mailbox.sent_keys.insert(key.key, (key.id, key.timestamp));
            }
        }
        for (user, messages) in image.mailboxes {
            let mailbox = shards[shard_of(&user)].entry(user).or_default();
            for m in messages {
                let stored = Stored {
                    from: m.from.into(),
                    timestamp: m.timestamp,
                    text: m.text.into(),
                    delivered: m.delivered,
                };
                mailbox.store(m.id, stored);
            }
        }
        for (lock, shard) in state.shards.iter_mut().zip(shards) {
            *lock.get_mut() = shard;
        }
        state.applied.store(image.applied, Ordering::Release);
        state.base.store(image.applied, Ordering::Release);
        Ok(state)
    }

    /// Log entries up to `index` that carry no command (a new raft leader's empty entry, a
    /// membership change) are applied: they change nothing but the applied index, on every
    /// member alike.
    pub fn advance_to(&self, index: u64) {
        self.applied.fetch_max(index, Ordering::AcqRel);
    }

    /// Replaces the whole state with `image` (a snapshot installed from the cluster's leader,
    /// which is ahead of everything this member applied). Between batches, like a capture; the
    /// delivery bookkeeping starts empty, as after a restart.
    pub fn install(&self, image: Image) -> Result<(), String> {
        let fresh = State::from_image(image)?;
        let locked = |e: LockError| e.to_string();
        let _between_batches = self.batch().map_err(locked)?;
        let mut set = LockSet::new();
        let slots: Vec<_> = self.shards.iter().map(|shard| set.lock(shard)).collect();
        let mut held = set.acquire().map_err(locked)?;
        self.ledger.install(fresh.ledger).map_err(locked)?;
        let wanted = fresh.accounts.snapshot();
        let mut tx = self.accounts.begin();
        for (name, _) in self.accounts.snapshot().iter() {
            if !wanted.contains_key(name) {
                tx.remove(name);
            }
        }
        for (name, account) in wanted.iter() {
            tx.insert(name.clone(), account.clone());
        }
        // No conflict can happen (apply, the only other writer, waits for `apply-batch`);
        // `commit` reports one if it did.
        let _ = commit(tx);
        for (slot, shard) in slots.into_iter().zip(fresh.shards) {
            *held.get_mut(slot) = shard.into_inner();
        }
        let applied = fresh.applied.load(Ordering::Acquire);
        self.base.store(applied, Ordering::Release);
        self.applied.store(applied, Ordering::Release);
        Ok(())
    }
}

/// The state at one applied index, sharing the live state's persistent maps
/// ([`State::capture`]).
pub struct Capture {
    applied: u64,
    accounts: Snapshot<String, Account>,
    mailboxes: Vec<CapturedMailbox>,
    ledger: crate::ledger::LedgerCapture,
}

type CapturedMailbox = (
    String,
    OrdMap<u64, Stored>,
    imbl::HashMap<String, (u64, u64)>,
);

impl Capture {
    /// The index of the last command it holds.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The canonical image (accounts by name, mailboxes by owner, messages by id).
    pub fn image(self) -> Image {
        let accounts = self
            .accounts
            .iter()
            .map(|(name, account)| (name.clone(), account.clone()))
            .collect();
        let mut mailboxes = BTreeMap::new();
        let mut sent_keys = BTreeMap::new();
        for (user, messages, keys) in self.mailboxes {
            if !keys.is_empty() {
                let mut keys: Vec<ImageKey> = keys
                    .iter()
                    .map(|(key, &(id, timestamp))| ImageKey {
                        key: key.clone(),
                        id,
                        timestamp,
                    })
                    .collect();
                keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                sent_keys.insert(user.clone(), keys);
            }
            let messages = messages
                .iter()
                .map(|(id, stored)| ImageMessage {
                    id: *id,
                    from: stored.from.to_string(),
                    timestamp: stored.timestamp,
                    text: stored.text.to_string(),
                    delivered: stored.delivered,
                })
                .collect();
            mailboxes.insert(user, messages);
        }
        Image {
            applied: self.applied,
            accounts,
            mailboxes,
            sent_keys,
            ledger: self.ledger.image(),
        }
    }
}

/// The outcome of pooling a transaction.
fn pooled(result: Result<crate::ledger::Hash32, ErrorReply>) -> Outcome {
    match result {
        Ok(txid) => Outcome::Pooled { txid },
        Err(refusal) => Outcome::Refused(refusal),
    }
}

/// Commits a transaction of the applier. Only apply writes the account map, one command at a
/// time per name (under the name's shard lock), so a conflict would be a bug in that rule: it
/// refuses the command (which then changes nothing) rather than stop the node.
fn commit(tx: sync_kit::mvcc::Transaction<String, Account>) -> Result<(), ErrorReply> {
    tx.commit().map(drop).map_err(|conflict| {
        tracing::error!(?conflict, "the account map changed outside apply");
        ErrorReply::new(
            ErrorCode::Internal,
            "internal error: the account map changed outside apply",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(state: &State, index: u64, username: &str) {
        let command = Command::CreateAccount {
            username: username.into(),
            password_hash: "$argon2id$x".into(),
            created: 0,
        };
        assert_eq!(state.apply(index, &command).unwrap(), Outcome::Done);
    }

    fn send(state: &State, index: u64, to: &str, timestamp: u64, key: &str) -> Outcome {
        let command = Command::SendMessage {
            from: "ann".into(),
            to: to.into(),
            text: format!("at {timestamp}"),
            timestamp,
            key: Some(key.into()),
        };
        state.apply(index, &command).unwrap()
    }

    #[test]
    fn what_waits_follows_stores_hand_outs_marks_deletes_and_a_restore() {
        let state = State::new();
        create(&state, 1, "ann");
        create(&state, 2, "ben");
        for index in 3..=7 {
            send(&state, index, "ben", index, &format!("k{index}"));
        }
        let ids = |messages: Vec<Message>| messages.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(state.hand_out_unread("ben", 2, usize::MAX).unwrap()),
            [3, 4]
        );
        assert_eq!(state.unread_count("ben").unwrap(), 3);
        let mark = Command::MarkDelivered {
            marks: vec![("ben".into(), vec![3, 99])],
        };
        assert_eq!(state.apply(8, &mark).unwrap(), Outcome::Done);
        let delete = Command::DeleteMessages {
            user: "ben".into(),
            ids: vec![5],
        };
        assert!(matches!(
            state.apply(9, &delete).unwrap(),
            Outcome::Deleted(1)
        ));
        // 4 is handed out (not waiting, still undelivered), 6 and 7 wait.
        assert_eq!(state.unread_count("ben").unwrap(), 2);
        let counts = state.message_counts(std::time::Duration::ZERO);
        assert_eq!((counts.stored, counts.undelivered), (4, 3));
        assert_eq!(
            ids(state.hand_out_unread("ben", 10, usize::MAX).unwrap()),
            [6, 7]
        );
        // Hand-outs are not state: after a restore, everything undelivered waits again.
        let restored = State::from_image(state.image().unwrap()).unwrap();
        assert_eq!(restored.unread_count("ben").unwrap(), 3);
        let counts = restored.message_counts(std::time::Duration::ZERO);
        assert_eq!((counts.stored, counts.undelivered), (4, 3));
        assert_eq!(
            ids(restored.hand_out_unread("ben", 10, usize::MAX).unwrap()),
            [4, 6, 7]
        );
    }

    #[test]
    fn a_key_used_again_answers_with_the_first_send_and_stores_nothing() {
        let state = State::new();
        create(&state, 1, "ann");
        create(&state, 2, "ben");
        assert_eq!(
            send(&state, 3, "ben", 100, "k"),
            Outcome::Sent {
                id: 3,
                timestamp: 100
            }
        );
        // Again, even to someone else: the sender and the key decide.
        for (index, to) in [(4, "ben"), (5, "ann")] {
            assert_eq!(
                send(&state, index, to, 200, "k"),
                Outcome::AlreadySent {
                    id: 3,
                    timestamp: 100
                }
            );
        }
        assert_eq!(state.message_counts(std::time::Duration::ZERO).stored, 1);
        assert_eq!(state.applied_index(), 5);
        // A refused send (no such user) keeps no key.
        assert!(matches!(
            send(&state, 6, "ghost", 300, "g"),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            send(&state, 7, "ben", 300, "g"),
            Outcome::Sent { id: 7, .. }
        ));
    }

    #[test]
    fn keys_are_kept_ten_minutes_of_the_senders_clock_then_forgotten() {
        let state = State::new();
        create(&state, 1, "ann");
        create(&state, 2, "ben");
        send(&state, 3, "ben", 1_000, "old");
        // Within ten minutes: still known.
        assert!(matches!(
            send(&state, 4, "ben", 1_000 + KEYS_KEPT_MS, "old"),
            Outcome::AlreadySent { id: 3, .. }
        ));
        // A later keyed send of the same sender forgets keys older than that.
        send(&state, 5, "ben", 1_001 + KEYS_KEPT_MS, "new");
        assert!(matches!(
            send(&state, 6, "ben", 1_002 + KEYS_KEPT_MS, "old"),
            Outcome::Sent { id: 6, .. }
        ));
        // And the keys are in the image, so a snapshot keeps them.
        let image = state.image().unwrap();
        let keys: Vec<&str> = image.sent_keys["ann"]
            .iter()
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(keys, vec!["new", "old"]);
        let restored = State::from_image(image).unwrap();
        assert!(matches!(
            send(&restored, 7, "ben", 1_003 + KEYS_KEPT_MS, "new"),
            Outcome::AlreadySent { id: 5, .. }
        ));
        assert_eq!(restored.digest().unwrap().1, {
            let again = State::from_image(restored.image().unwrap()).unwrap();
            again.digest().unwrap().1
        });
        // The restored state forgets by age too: ten minutes later, only the newest key is left.
        send(&restored, 8, "ben", 1_003 + 2 * KEYS_KEPT_MS, "later");
        let image = restored.image().unwrap();
        let keys: Vec<&str> = image.sent_keys["ann"]
            .iter()
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(keys, vec!["later"]);
        assert!(matches!(
            send(&restored, 9, "ben", 1_004 + 2 * KEYS_KEPT_MS, "new"),
            Outcome::Sent { id: 9, .. }
        ));
    }
}
