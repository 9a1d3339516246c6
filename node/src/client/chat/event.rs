//! The messages between the chat client's threads: [`Event`] (everything the loop reacts to:
//! keys, pastes, mouse, what the network thread reports as a [`NetEvent`]), [`Effect`] (what
//! [`update`](super::update::update) asks the loop to do) and [`NetCommand`] (a request for the
//! network thread).

use crossterm::event::{KeyEvent, MouseEvent};

use crate::protocol::Message;

/// One thing for the loop to react to, from the input thread or the network thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key press.
    Key(KeyEvent),
    /// Text pasted into the terminal (bracketed paste), whole.
    Paste(String),
    /// A mouse event (the wheel scrolls).
    Mouse(MouseEvent),
    /// The terminal changed size (the next frame is drawn at the new size).
    Resize,
    /// A report of the network thread.
    Net(NetEvent),
}

/// What [`update`](super::update::update) asks the loop to do after changing the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Hand this to the network thread.
    Net(NetCommand),
    /// Leave: restore the terminal and exit.
    Quit,
}

/// A request for the network thread; each is answered by one [`NetEvent`] (or several, for a
/// login: the login, then the messages that waited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetCommand {
    /// Create an account, then log in to it.
    CreateAccount {
        /// The new username.
        username: String,
        /// Its password.
        password: String,
    },
    /// Log in, then read every message that waited.
    Login {
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// Send a message; `local` is the client's number for it until the node gives its id.
    Send {
        /// The client's number for the message.
        local: u64,
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// Delete received messages from the mailbox.
    DeleteMessages {
        /// Their ids.
        ids: Vec<u64>,
    },
    /// One page of accounts; `generation` comes back with the answer, so that an answer to an
    /// older filter is recognised and dropped.
    ListAccounts {
        /// Which request of the browser this is.
        generation: u64,
        /// Wildcard pattern.
        pattern: String,
        /// Accounts per page.
        page_size: u32,
        /// Where the page starts (`None`: the first page).
        cursor: Option<String>,
    },
    /// The balance.
    GetBalance,
    /// Pay `amount` coins to `to`.
    Transfer {
        /// Payee.
        to: String,
        /// Coins.
        amount: u64,
    },
    /// Delete the logged-in account (the password asked again).
    DeleteAccount {
        /// The password, typed again.
        password: String,
    },
}

/// What the network thread reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// Connected (again, or to another member): the member's address.
    Connected(String),
    /// The connection is lost and the thread is trying again; why.
    Reconnecting(String),
    /// The leader the member knows of (`None` during an election).
    Leader(Option<String>),
    /// Logged in (after a login or an account creation).
    LoggedIn {
        /// Who.
        username: String,
        /// Messages that waited at login.
        unread: u32,
    },
    /// The login or the account creation was refused; why.
    LoginFailed(String),
    /// Messages read from the mailbox (those that waited, or were stored during a
    /// reconnection).
    Messages(Vec<Message>),
    /// A live delivery.
    Delivered(Message),
    /// A send was stored.
    Sent {
        /// The client's number for it.
        local: u64,
        /// The node's id.
        id: u64,
        /// The node's timestamp (ms since the Unix epoch).
        timestamp: u64,
    },
    /// A send failed; why.
    SendFailed {
        /// The client's number for it.
        local: u64,
        /// Why.
        error: String,
    },
    /// Messages were deleted from the mailbox.
    Deleted {
        /// The ids asked for.
        ids: Vec<u64>,
    },
    /// A page of accounts.
    Accounts {
        /// The request's generation.
        generation: u64,
        /// Names, in order.
        accounts: Vec<String>,
        /// The next page's cursor (`None` on the last page).
        next_cursor: Option<String>,
    },
    /// A page of accounts could not be listed; why.
    AccountsFailed {
        /// The request's generation.
        generation: u64,
        /// Why.
        error: String,
    },
    /// The balance.
    Balance {
        /// Coins in sealed blocks.
        confirmed: u64,
        /// The net effect of pooled transactions.
        pending: i64,
    },
    /// A transfer was pooled: its transaction id (hex).
    Transferred(String),
    /// A transfer was refused or its answer lost; why.
    TransferFailed(String),
    /// The account is deleted (the session with it).
    AccountDeleted,
    /// The account could not be deleted (a wrong password); why.
    DeleteAccountFailed(String),
    /// Another request failed; what and why (shown on the status line).
    Failed(String),
}
