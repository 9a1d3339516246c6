//! The chat client's model, [`State`]: plain data that [`update`](super::update::update)
//! changes and [`ui::render`](super::ui::render) draws. Nothing here touches the terminal or the
//! network, which is what makes the screens testable from key sequences alone.
//!
//! - [`Screen`]: where the user is (log in, chat, account browser, ledger), [`Overlay`]: what
//!   covers it (help, a confirmation);
//! - [`Conversation`]: the lines exchanged with one peer, its unread count and scroll position;
//! - [`LoginForm`], [`AccountBrowser`], [`Ledger`]: each screen's own fields;
//! - [`Link`]: the connection as the status line tells it.

use super::input::LineEdit;

/// Accounts per page in the account browser.
pub const PAGE_SIZE: u32 = 10;

/// The whole state of the chat client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The screen shown.
    pub screen: Screen,
    /// What covers it, if anything.
    pub overlay: Option<Overlay>,
    /// The logged-in user (`None` on the login screen).
    pub me: Option<String>,
    /// The login form.
    pub login: LoginForm,
    /// Conversations, the newest first.
    pub conversations: Vec<Conversation>,
    /// The index of the conversation shown, in `conversations`.
    pub selected: usize,
    /// The line being written.
    pub compose: LineEdit,
    /// The account browser.
    pub accounts: AccountBrowser,
    /// The balance and the transfer form.
    pub ledger: Ledger,
    /// The connection.
    pub link: Link,
    /// The last thing worth telling that has no better place (an error, a deletion).
    pub notice: Option<Notice>,
    /// The client's number for the next message sent.
    pub next_local: u64,
}

/// Where the user is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Screen {
    /// Log in or create an account.
    #[default]
    Login,
    /// Conversations, the one selected, the compose line.
    Chat,
    /// Every account, filtered and paged.
    Accounts,
    /// Balance and transfer form.
    Ledger,
}

/// What covers the screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// The key bindings.
    Help,
    /// "Delete this message?" (y/n).
    DeleteMessage {
        /// Its id on the node.
        id: u64,
        /// A few words of it, to recognise it.
        preview: String,
    },
    /// "Delete your account?": the password, asked again.
    DeleteAccount {
        /// The password being typed.
        password: LineEdit,
        /// Why the last try failed.
        error: Option<String>,
        /// Sent, waiting for the answer.
        waiting: bool,
    },
}

/// Something to tell on the status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// Whether it is an error (shown in red).
    pub error: bool,
}

/// The login screen's form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginForm {
    /// Username.
    pub username: LineEdit,
    /// Password (shown masked).
    pub password: LineEdit,
    /// The field with the cursor.
    pub field: LoginField,
    /// Create the account before logging in.
    pub create: bool,
    /// Why the last try failed.
    pub error: Option<String>,
    /// Sent, waiting for the answer.
    pub waiting: bool,
}

/// A field of the login form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoginField {
    /// The username.
    #[default]
    Username,
    /// The password.
    Password,
}

/// The lines exchanged with one peer during this session (the node keeps no sent history:
/// what was read before this session is not shown again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// The peer's username.
    pub peer: String,
    /// Oldest first.
    pub lines: Vec<ChatLine>,
    /// Lines received while the conversation was not shown.
    pub unread: usize,
    /// How many lines the view is scrolled up from the newest (0: following new lines).
    pub scroll: usize,
    /// The received line picked for deletion (an index in `lines`), if any.
    pub picked: Option<usize>,
}

/// One message in a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    /// Whether the user sent it (rather than received it).
    pub outgoing: bool,
    /// Its text.
    pub text: String,
    /// Where it stands.
    pub status: LineStatus,
}

/// Where a message stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// Sent, not yet answered: the client's number for it.
    Sending(u64),
    /// Stored (sent or received): its id and timestamp on the node.
    Stored {
        /// Id.
        id: u64,
        /// Ms since the Unix epoch.
        timestamp: u64,
    },
    /// Refused or lost; why.
    Failed(String),
}

/// The account browser: a wildcard filter and one page of accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountBrowser {
    /// The filter being typed (`*` and `?` are wildcards; without one, names containing it).
    pub filter: LineEdit,
    /// The page shown.
    pub accounts: Vec<String>,
    /// The highlighted account, in `accounts`.
    pub selected: usize,
    /// The cursors of the pages before this one (`None` for the first), to go back.
    pub previous: Vec<Option<String>>,
    /// The cursor this page was asked with.
    pub cursor: Option<String>,
    /// The next page's cursor (`None` on the last page).
    pub next_cursor: Option<String>,
    /// The generation of the request whose answer is awaited; older answers are dropped.
    pub generation: u64,
    /// Waiting for a page.
    pub loading: bool,
    /// Why the last page could not be listed.
    pub error: Option<String>,
}

impl AccountBrowser {
    /// The pattern sent to the node for the filter: as typed when it has a wildcard, `*text*`
    /// otherwise, `*` when empty.
    pub fn pattern(&self) -> String {
        let text = self.filter.text().trim();
        if text.is_empty() {
            "*".into()
        } else if text.contains(['*', '?']) {
            text.into()
        } else {
            format!("*{text}*")
        }
    }

    /// The page number shown, 1 for the first.
    pub fn page(&self) -> usize {
        self.previous.len() + 1
    }
}

/// The ledger screen: the balance and the transfer form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The balance, once known: confirmed and pending coins.
    pub balance: Option<(u64, i64)>,
    /// Payee.
    pub to: LineEdit,
    /// Coins (digits).
    pub amount: LineEdit,
    /// The field with the cursor.
    pub field: TransferField,
    /// Sent, waiting for the answer.
    pub waiting: bool,
    /// How the last transfer went: `Ok(txid)` or `Err(why)`.
    pub outcome: Option<Result<String, String>>,
}

/// A field of the transfer form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransferField {
    /// The payee.
    #[default]
    To,
    /// The amount.
    Amount,
}

/// The connection, as the status line tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The member connected to, once connected.
    pub member: Option<String>,
    /// Why the connection is being made again, while it is.
    pub reconnecting: Option<String>,
    /// The leader, as the member connected to last said (`None`: not known).
    pub leader: Option<String>,
    /// How many times the client moved to a member (again or another) after its first
    /// connection.
    pub moves: u32,
}

impl State {
    /// A fresh state: the login screen, `username` filled in if known.
    pub fn new(username: Option<&str>) -> State {
        let mut state = State::default();
        if let Some(username) = username {
            state.login.username = LineEdit::with(username);
            state.login.field = LoginField::Password;
        }
        state
    }

    /// The conversation shown, if any.
    pub fn current(&self) -> Option<&Conversation> {
        self.conversations.get(self.selected)
    }

    /// The conversation with `peer`, made (at the top of the list) if there was none; its
    /// index.
    pub fn conversation(&mut self, peer: &str) -> usize {
        if let Some(at) = self.conversations.iter().position(|c| c.peer == peer) {
            return at;
        }
        self.conversations.insert(
            0,
            Conversation {
                peer: peer.into(),
                ..Conversation::default()
            },
        );
        if self.conversations.len() > 1 {
            // The one shown stays shown: it moved down by one.
            self.selected += 1;
        }
        0
    }

    /// Total unread lines.
    pub fn unread(&self) -> usize {
        self.conversations.iter().map(|c| c.unread).sum()
    }

    /// Sets the notice.
    pub fn tell(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
        });
    }
}
