//! [`update`]: the one function that changes the chat client's [`State`], from one [`Event`]
//! to the [`Effect`]s it calls for (requests for the network thread, quitting). Keys are handled
//! by the overlay if one is open, then by the global bindings, then by the screen shown.
//!
//! The key bindings (also in the footer and the `?` help):
//!
//! | key | where | what |
//! |---|---|---|
//! | Ctrl-C, Ctrl-Q | anywhere | quit |
//! | F1, `?` (compose line empty) | logged in | help |
//! | Esc | anywhere | close the overlay, back to the chat |
//! | Tab, Shift-Tab | login, transfer form | next, previous field |
//! | F2, Ctrl-N | login | log in / create an account |
//! | Enter | chat | send the compose line to the conversation shown |
//! | Tab, Shift-Tab (Ctrl-N, Ctrl-P) | chat | next, previous conversation |
//! | PageUp, PageDown, mouse wheel | chat | scroll back, forward |
//! | Up, Down | chat | pick a received message |
//! | Del (with one picked), Ctrl-D | chat | delete the picked message (asks) |
//! | F2, Ctrl-A | logged in | account browser: type a filter, PageUp/PageDown pages, Enter chats |
//! | F3, Ctrl-B | logged in | balance and transfer form (F5, Ctrl-R: balance again) |
//! | F8 | logged in | delete the account (asks the password again) |

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

use super::event::{Effect, Event, NetCommand, NetEvent};
use super::input::LineEdit;
use super::state::{
    AccountBrowser, ChatLine, LineStatus, LoginField, Overlay, PAGE_SIZE, Screen, State,
    TransferField,
};
use crate::protocol::Message;

/// Lines scrolled by PageUp and PageDown.
pub const PAGE_SCROLL: usize = 10;
/// Lines scrolled by one turn of the mouse wheel.
pub const WHEEL_SCROLL: usize = 3;
/// The longest message text, in bytes (the node's limit).
pub const MAX_TEXT: usize = 4096;

/// The effects to start with: a login when both username and password are known (from the
/// environment or the configuration file).
pub fn start(state: &mut State, password: Option<String>) -> Vec<Effect> {
    match password {
        Some(password) if !state.login.username.is_empty() => {
            state.login.password = LineEdit::with(&password);
            submit_login(state)
        }
        _ => Vec::new(),
    }
}

/// Changes `state` for `event`; returns what the loop must do next.
pub fn update(state: &mut State, event: Event) -> Vec<Effect> {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => on_key(state, key),
        Event::Key(_) | Event::Resize => Vec::new(),
        Event::Paste(text) => {
            if let Some(line) = focused_line(state) {
                line.insert_str(&text);
            }
            after_filter_edit(state)
        }
        Event::Mouse(mouse) => {
            match mouse.kind {
                MouseEventKind::ScrollUp => scroll(state, WHEEL_SCROLL, true),
                MouseEventKind::ScrollDown => scroll(state, WHEEL_SCROLL, false),
                _ => {}
            }
            Vec::new()
        }
        Event::Net(net) => on_net(state, net),
    }
}

fn ctrl(key: &KeyEvent, c: char) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char(c)
}

fn on_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    if ctrl(&key, 'c') || ctrl(&key, 'q') {
        return vec![Effect::Quit];
    }
    if state.overlay.is_some() {
        return on_overlay_key(state, key);
    }
    if state.screen != Screen::Login {
        let typing_compose = state.screen == Screen::Chat && !state.compose.is_empty();
        match key.code {
            KeyCode::F(1) => {
                state.overlay = Some(Overlay::Help);
                return Vec::new();
            }
            KeyCode::Char('?') if state.screen == Screen::Chat && !typing_compose => {
                state.overlay = Some(Overlay::Help);
                return Vec::new();
            }
            KeyCode::F(2) => return open_accounts(state),
            KeyCode::F(3) => return open_ledger(state),
            KeyCode::F(8) => {
                state.overlay = Some(Overlay::DeleteAccount {
                    password: LineEdit::default(),
                    error: None,
                    waiting: false,
                });
                return Vec::new();
            }
            KeyCode::Esc if state.screen != Screen::Chat => {
                state.screen = Screen::Chat;
                seen(state);
                return Vec::new();
            }
            _ if ctrl(&key, 'a') => return open_accounts(state),
            _ if ctrl(&key, 'b') => return open_ledger(state),
            _ => {}
        }
    }
    match state.screen {
        Screen::Login => on_login_key(state, key),
        Screen::Chat => on_chat_key(state, key),
        Screen::Accounts => on_accounts_key(state, key),
        Screen::Ledger => on_ledger_key(state, key),
    }
}

/// The usual editing keys on `line`; whether the key was one.
fn edit(line: &mut LineEdit, key: &KeyEvent) -> bool {
    if key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
    {
        return false;
    }
    match key.code {
        KeyCode::Char(c) => line.insert(c),
        KeyCode::Backspace => line.backspace(),
        KeyCode::Delete => line.delete(),
        KeyCode::Left => line.left(),
        KeyCode::Right => line.right(),
        KeyCode::Home => line.home(),
        KeyCode::End => line.end(),
        _ => return false,
    }
    true
}

/// The line that typed and pasted text goes to.
fn focused_line(state: &mut State) -> Option<&mut LineEdit> {
    if let Some(overlay) = &mut state.overlay {
        return match overlay {
            Overlay::DeleteAccount { password, .. } => Some(password),
            _ => None,
        };
    }
    Some(match state.screen {
        Screen::Login => match state.login.field {
            LoginField::Username => &mut state.login.username,
            LoginField::Password => &mut state.login.password,
        },
        Screen::Chat => &mut state.compose,
        Screen::Accounts => &mut state.accounts.filter,
        Screen::Ledger => match state.ledger.field {
            TransferField::To => &mut state.ledger.to,
            TransferField::Amount => &mut state.ledger.amount,
        },
    })
}

fn on_overlay_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    let Some(overlay) = &mut state.overlay else {
        return Vec::new();
    };
    match overlay {
        Overlay::Help => {
            state.overlay = None;
            Vec::new()
        }
        Overlay::DeleteMessage { id, .. } => {
            let id = *id;
            match key.code {
                KeyCode::Char('y' | 'Y') => {
                    state.overlay = None;
                    vec![Effect::Net(NetCommand::DeleteMessages { ids: vec![id] })]
                }
                KeyCode::Char('n' | 'N') | KeyCode::Esc => {
                    state.overlay = None;
                    Vec::new()
                }
                _ => Vec::new(),
            }
        }
        Overlay::DeleteAccount {
            password,
            error,
            waiting,
        } => match key.code {
            KeyCode::Esc => {
                state.overlay = None;
                Vec::new()
            }
            KeyCode::Enter if !*waiting && !password.is_empty() => {
                *waiting = true;
                *error = None;
                vec![Effect::Net(NetCommand::DeleteAccount {
                    password: password.text().into(),
                })]
            }
            _ => {
                edit(password, &key);
                Vec::new()
            }
        },
    }
}

fn on_login_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    let form = &mut state.login;
    match key.code {
        KeyCode::Esc => return vec![Effect::Quit],
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
            form.field = match form.field {
                LoginField::Username => LoginField::Password,
                LoginField::Password => LoginField::Username,
            };
        }
        KeyCode::F(2) => form.create = !form.create,
        _ if ctrl(&key, 'n') => form.create = !form.create,
        KeyCode::Enter => {
            if form.field == LoginField::Username && form.password.is_empty() {
                form.field = LoginField::Password;
            } else {
                return submit_login(state);
            }
        }
        _ => {
            let line = match form.field {
                LoginField::Username => &mut form.username,
                LoginField::Password => &mut form.password,
            };
            edit(line, &key);
        }
    }
    Vec::new()
}

fn submit_login(state: &mut State) -> Vec<Effect> {
    let form = &mut state.login;
    if form.waiting {
        return Vec::new();
    }
    let username = form.username.text().trim().to_string();
    if username.is_empty() || form.password.is_empty() {
        form.error = Some("type a username and a password".into());
        return Vec::new();
    }
    form.error = None;
    form.waiting = true;
    let password = form.password.text().to_string();
    vec![Effect::Net(if form.create {
        NetCommand::CreateAccount { username, password }
    } else {
        NetCommand::Login { username, password }
    })]
}

fn on_chat_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    match key.code {
        KeyCode::Enter => return send(state),
        KeyCode::Tab => select(state, 1),
        KeyCode::BackTab => select(state, -1),
        _ if ctrl(&key, 'n') => select(state, 1),
        _ if ctrl(&key, 'p') => select(state, -1),
        KeyCode::PageUp => scroll(state, PAGE_SCROLL, true),
        KeyCode::PageDown => scroll(state, PAGE_SCROLL, false),
        KeyCode::Up => pick(state, true),
        KeyCode::Down => pick(state, false),
        KeyCode::Delete if picked(state).is_some() => ask_delete_message(state),
        _ if ctrl(&key, 'd') => ask_delete_message(state),
        _ => {
            edit(&mut state.compose, &key);
        }
    }
    Vec::new()
}

fn send(state: &mut State) -> Vec<Effect> {
    let text = state.compose.text().trim().to_string();
    if text.is_empty() {
        return Vec::new();
    }
    if text.len() > MAX_TEXT {
        state.tell(
            format!("too long: {} bytes, at most {MAX_TEXT}", text.len()),
            true,
        );
        return Vec::new();
    }
    let Some(conversation) = state.conversations.get_mut(state.selected) else {
        state.tell("no conversation: F2 lists the accounts to write to", true);
        return Vec::new();
    };
    state.compose.take();
    let local = state.next_local;
    state.next_local += 1;
    conversation.lines.push(ChatLine {
        outgoing: true,
        text: text.clone(),
        status: LineStatus::Sending(local),
    });
    conversation.scroll = 0;
    conversation.picked = None;
    vec![Effect::Net(NetCommand::Send {
        local,
        to: conversation.peer.clone(),
        text,
    })]
}

/// Moves the selection `by` conversations (wrapping) and marks the new one read.
fn select(state: &mut State, by: isize) {
    let n = state.conversations.len();
    if n == 0 {
        return;
    }
    let at = state.selected.cast_signed() + by;
    state.selected = at.rem_euclid(n.cast_signed()).cast_unsigned();
    seen(state);
}

/// The conversation shown was seen: nothing in it is unread.
fn seen(state: &mut State) {
    if state.screen == Screen::Chat
        && let Some(conversation) = state.conversations.get_mut(state.selected)
    {
        conversation.unread = 0;
    }
}

fn scroll(state: &mut State, lines: usize, up: bool) {
    match state.screen {
        Screen::Chat => {
            if let Some(conversation) = state.conversations.get_mut(state.selected) {
                conversation.scroll = if up {
                    (conversation.scroll + lines).min(conversation.lines.len().saturating_sub(1))
                } else {
                    conversation.scroll.saturating_sub(lines)
                };
            }
        }
        Screen::Accounts => {
            let browser = &mut state.accounts;
            browser.selected = if up {
                browser.selected.saturating_sub(1)
            } else {
                (browser.selected + 1).min(browser.accounts.len().saturating_sub(1))
            };
        }
        Screen::Login | Screen::Ledger => {}
    }
}

/// Picks the previous (`up`) or next received line of the conversation shown.
fn pick(state: &mut State, up: bool) {
    let Some(conversation) = state.conversations.get_mut(state.selected) else {
        return;
    };
    let received: Vec<usize> = conversation
        .lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !line.outgoing && matches!(line.status, LineStatus::Stored { .. }))
        .map(|(at, _)| at)
        .collect();
    conversation.picked = match (conversation.picked, up) {
        (None, true) => received.last().copied(),
        (None, false) => None,
        (Some(at), true) => received
            .iter()
            .rev()
            .find(|&&i| i < at)
            .copied()
            .or(Some(at)),
        (Some(at), false) => received.iter().find(|&&i| i > at).copied(),
    };
    // Keep the picked line in view: scroll so that it is at most a page above the bottom.
    if let Some(at) = conversation.picked {
        let from_bottom = conversation.lines.len() - 1 - at;
        conversation.scroll = conversation.scroll.min(from_bottom);
    }
}

/// The picked line's id and text.
fn picked(state: &State) -> Option<(u64, String)> {
    let conversation = state.current()?;
    let line = conversation.lines.get(conversation.picked?)?;
    match line.status {
        LineStatus::Stored { id, .. } if !line.outgoing => Some((id, line.text.clone())),
        _ => None,
    }
}

fn ask_delete_message(state: &mut State) {
    match picked(state) {
        Some((id, text)) => {
            let preview = if text.chars().count() > 40 {
                format!("{}...", text.chars().take(40).collect::<String>())
            } else {
                text
            };
            state.overlay = Some(Overlay::DeleteMessage { id, preview });
        }
        None => state.tell("pick a received message with Up first", true),
    }
}

fn open_accounts(state: &mut State) -> Vec<Effect> {
    state.screen = Screen::Accounts;
    let generation = state.accounts.generation;
    state.accounts = AccountBrowser {
        filter: std::mem::take(&mut state.accounts.filter),
        generation,
        ..AccountBrowser::default()
    };
    list_page(state, None)
}

/// Asks for the page starting at `cursor`, as a new generation.
fn list_page(state: &mut State, cursor: Option<String>) -> Vec<Effect> {
    let browser = &mut state.accounts;
    browser.generation += 1;
    browser.loading = true;
    browser.error = None;
    browser.cursor = cursor.clone();
    vec![Effect::Net(NetCommand::ListAccounts {
        generation: browser.generation,
        pattern: browser.pattern(),
        page_size: PAGE_SIZE,
        cursor,
    })]
}

/// After text went to the focused line: the account filter changed, so its first page.
fn after_filter_edit(state: &mut State) -> Vec<Effect> {
    if state.screen == Screen::Accounts && state.overlay.is_none() {
        state.accounts.previous.clear();
        list_page(state, None)
    } else {
        Vec::new()
    }
}

fn on_accounts_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    let browser = &mut state.accounts;
    match key.code {
        KeyCode::Up => scroll(state, 1, true),
        KeyCode::Down => scroll(state, 1, false),
        KeyCode::PageDown => {
            if let Some(next) = browser.next_cursor.clone() {
                let this = browser.cursor.clone();
                browser.previous.push(this);
                return list_page(state, Some(next));
            }
        }
        KeyCode::PageUp => {
            if let Some(before) = browser.previous.pop() {
                return list_page(state, before);
            }
        }
        KeyCode::Enter => {
            if let Some(peer) = browser.accounts.get(browser.selected).cloned() {
                state.screen = Screen::Chat;
                state.selected = state.conversation(&peer);
                seen(state);
            }
        }
        _ => {
            let before = browser.filter.text().to_string();
            edit(&mut browser.filter, &key);
            if browser.filter.text() != before {
                return after_filter_edit(state);
            }
        }
    }
    Vec::new()
}

fn open_ledger(state: &mut State) -> Vec<Effect> {
    state.screen = Screen::Ledger;
    vec![Effect::Net(NetCommand::GetBalance)]
}

fn on_ledger_key(state: &mut State, key: KeyEvent) -> Vec<Effect> {
    let ledger = &mut state.ledger;
    match key.code {
        KeyCode::F(5) => return vec![Effect::Net(NetCommand::GetBalance)],
        _ if ctrl(&key, 'r') => return vec![Effect::Net(NetCommand::GetBalance)],
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
            ledger.field = match ledger.field {
                TransferField::To => TransferField::Amount,
                TransferField::Amount => TransferField::To,
            };
        }
        KeyCode::Enter if ledger.field == TransferField::To => {
            ledger.field = TransferField::Amount;
        }
        KeyCode::Enter if !ledger.waiting => {
            let to = ledger.to.text().trim().to_string();
            let amount = ledger.amount.text().trim().parse::<u64>();
            match (to.is_empty(), amount) {
                (true, _) => ledger.outcome = Some(Err("type a payee".into())),
                (false, Ok(amount)) if amount > 0 => {
                    ledger.waiting = true;
                    ledger.outcome = None;
                    return vec![Effect::Net(NetCommand::Transfer { to, amount })];
                }
                (false, _) => {
                    ledger.outcome =
                        Some(Err("the amount is a whole number of coins, above 0".into()));
                }
            }
        }
        KeyCode::Char(c) if ledger.field == TransferField::Amount && !c.is_ascii_digit() => {}
        _ => {
            let line = match ledger.field {
                TransferField::To => &mut ledger.to,
                TransferField::Amount => &mut ledger.amount,
            };
            edit(line, &key);
        }
    }
    Vec::new()
}

fn on_net(state: &mut State, event: NetEvent) -> Vec<Effect> {
    match event {
        NetEvent::Connected(member) => {
            if state.link.member.is_some() || state.link.reconnecting.is_some() {
                state.link.moves += 1;
                if state.link.member.as_deref() != Some(member.as_str()) {
                    state.tell(format!("moved to {member}"), false);
                }
            }
            state.link.member = Some(member);
            state.link.reconnecting = None;
        }
        NetEvent::Reconnecting(why) => state.link.reconnecting = Some(why),
        NetEvent::Leader(leader) => state.link.leader = leader,
        NetEvent::LoggedIn { username, unread } => {
            state.login.waiting = false;
            state.login.error = None;
            state.login.password.take();
            state.me = Some(username);
            state.screen = Screen::Chat;
            state.tell(
                match unread {
                    0 => "logged in".to_string(),
                    1 => "logged in: 1 message waited".to_string(),
                    n => format!("logged in: {n} messages waited"),
                },
                false,
            );
        }
        NetEvent::LoginFailed(why) => {
            state.login.waiting = false;
            state.login.error = Some(why);
        }
        NetEvent::Messages(messages) => {
            for message in messages {
                receive(state, message);
            }
        }
        NetEvent::Delivered(message) => receive(state, message),
        NetEvent::Sent {
            local,
            id,
            timestamp,
        } => set_status(state, local, LineStatus::Stored { id, timestamp }),
        NetEvent::SendFailed { local, error } => {
            state.tell(format!("not sent: {error}"), true);
            set_status(state, local, LineStatus::Failed(error));
        }
        NetEvent::Deleted { ids } => {
            for conversation in &mut state.conversations {
                conversation.lines.retain(|line| {
                    !matches!(line.status, LineStatus::Stored { id, .. } if !line.outgoing && ids.contains(&id))
                });
                conversation.picked = None;
                conversation.scroll = conversation
                    .scroll
                    .min(conversation.lines.len().saturating_sub(1));
            }
            state.tell("message deleted", false);
        }
        NetEvent::Accounts {
            generation,
            accounts,
            next_cursor,
        } => {
            let browser = &mut state.accounts;
            if generation == browser.generation {
                browser.loading = false;
                browser.accounts = accounts;
                browser.next_cursor = next_cursor;
                browser.selected = 0;
            }
        }
        NetEvent::AccountsFailed { generation, error } => {
            let browser = &mut state.accounts;
            if generation == browser.generation {
                browser.loading = false;
                browser.accounts.clear();
                browser.next_cursor = None;
                // A cursor dies with its connection: the first page works again.
                browser.previous.clear();
                browser.error = Some(error);
            }
        }
        NetEvent::Balance { confirmed, pending } => {
            state.ledger.balance = Some((confirmed, pending));
        }
        NetEvent::Transferred(txid) => {
            state.ledger.waiting = false;
            state.ledger.amount.take();
            state.ledger.outcome = Some(Ok(txid));
            return vec![Effect::Net(NetCommand::GetBalance)];
        }
        NetEvent::TransferFailed(why) => {
            state.ledger.waiting = false;
            state.ledger.outcome = Some(Err(why));
        }
        NetEvent::AccountDeleted => {
            let me = state.me.take().unwrap_or_default();
            let link = std::mem::take(&mut state.link);
            *state = State::new(None);
            state.link = link;
            state.tell(format!("account {me} deleted"), false);
        }
        NetEvent::DeleteAccountFailed(why) => {
            if let Some(Overlay::DeleteAccount { error, waiting, .. }) = &mut state.overlay {
                *error = Some(why);
                *waiting = false;
            } else {
                state.tell(why, true);
            }
        }
        NetEvent::Failed(why) => state.tell(why, true),
    }
    Vec::new()
}

/// Adds a received message to its conversation, once (delivery is at least once).
fn receive(state: &mut State, message: Message) {
    let known = state.conversations.iter().any(|c| {
        c.lines.iter().any(|line| {
            !line.outgoing
                && matches!(line.status, LineStatus::Stored { id, .. } if id == message.id)
        })
    });
    if known {
        return;
    }
    let at = state.conversation(&message.from);
    let shown = state.screen == Screen::Chat && state.overlay.is_none() && at == state.selected;
    let conversation = &mut state.conversations[at];
    conversation.lines.push(ChatLine {
        outgoing: false,
        text: message.text,
        status: LineStatus::Stored {
            id: message.id,
            timestamp: message.timestamp,
        },
    });
    if conversation.scroll > 0 {
        // Scrolled back: the view stays where it is.
        conversation.scroll += 1;
    }
    if !shown || conversation.scroll > 0 {
        conversation.unread += 1;
    }
}

fn set_status(state: &mut State, local: u64, status: LineStatus) {
    for conversation in &mut state.conversations {
        for line in &mut conversation.lines {
            if line.status == LineStatus::Sending(local) {
                line.status = status;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyCode;

    use super::super::snapshots::{ctrl, key, logged_in, message, net, typed, with_conversations};
    use super::*;

    fn effects_of(state: &mut State, events: impl IntoIterator<Item = Event>) -> Vec<Effect> {
        events.into_iter().flat_map(|e| update(state, e)).collect()
    }

    #[test]
    fn login_keys_send_a_login_and_its_answer_opens_the_chat() {
        let mut state = State::new(None);
        typed(&mut state, "alice");
        let effects = effects_of(&mut state, [key(KeyCode::Enter)]);
        assert!(
            effects.is_empty(),
            "Enter on the username goes to the password"
        );
        assert_eq!(state.login.field, LoginField::Password);
        typed(&mut state, "pässwörd");
        let effects = effects_of(&mut state, [key(KeyCode::Enter), key(KeyCode::Enter)]);
        assert_eq!(
            effects,
            [Effect::Net(NetCommand::Login {
                username: "alice".into(),
                password: "pässwörd".into()
            })],
            "one login, however often Enter is pressed while waiting"
        );
        net(
            &mut state,
            NetEvent::LoggedIn {
                username: "alice".into(),
                unread: 2,
            },
        );
        assert_eq!(state.screen, Screen::Chat);
        assert!(state.login.password.is_empty(), "the password is not kept");
    }

    #[test]
    fn f2_on_the_login_screen_creates_the_account_instead() {
        let mut state = State::new(Some("erin"));
        typed(&mut state, "long enough");
        let effects = effects_of(&mut state, [key(KeyCode::F(2)), key(KeyCode::Enter)]);
        assert_eq!(
            effects,
            [Effect::Net(NetCommand::CreateAccount {
                username: "erin".into(),
                password: "long enough".into()
            })]
        );
        net(
            &mut state,
            NetEvent::LoginFailed("taken (user_exists)".into()),
        );
        assert_eq!(state.login.error.as_deref(), Some("taken (user_exists)"));
        assert!(!state.login.waiting);
    }

    #[test]
    fn credentials_known_at_start_log_in_at_once() {
        let mut state = State::new(Some("alice"));
        assert_eq!(
            start(&mut state, Some("secret pw".into())),
            [Effect::Net(NetCommand::Login {
                username: "alice".into(),
                password: "secret pw".into()
            })]
        );
        assert!(start(&mut State::new(None), Some("no user".into())).is_empty());
    }

    #[test]
    fn sending_shows_the_line_at_once_and_the_answer_marks_it_stored() {
        let mut state = with_conversations();
        typed(&mut state, "héllo 🦀");
        let effects = effects_of(&mut state, [key(KeyCode::Enter)]);
        assert_eq!(
            effects,
            [Effect::Net(NetCommand::Send {
                local: 0,
                to: "bob".into(),
                text: "héllo 🦀".into()
            })]
        );
        assert!(state.compose.is_empty());
        let last = || {
            state
                .current()
                .unwrap()
                .lines
                .last()
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(last(), LineStatus::Sending(0));
        net(
            &mut state,
            NetEvent::Sent {
                local: 0,
                id: 9,
                timestamp: 5,
            },
        );
        let last = state.current().unwrap().lines.last().unwrap();
        assert_eq!(
            last.status,
            LineStatus::Stored {
                id: 9,
                timestamp: 5
            }
        );
        assert!(last.outgoing);
    }

    #[test]
    fn a_send_without_a_conversation_is_refused_with_a_hint() {
        let mut state = logged_in();
        typed(&mut state, "to nobody");
        assert!(effects_of(&mut state, [key(KeyCode::Enter)]).is_empty());
        assert_eq!(state.compose.text(), "to nobody", "the text is kept");
        assert!(state.notice.as_ref().unwrap().error);
    }

    #[test]
    fn deliveries_count_as_unread_until_their_conversation_is_shown() {
        let mut state = with_conversations();
        let unread = |state: &State, peer: &str| {
            state
                .conversations
                .iter()
                .find(|c| c.peer == peer)
                .unwrap()
                .unread
        };
        assert_eq!(unread(&state, "carol"), 2);
        assert_eq!(unread(&state, "bob"), 0);
        net(
            &mut state,
            NetEvent::Delivered(message(20, "bob", 9, "shown")),
        );
        assert_eq!(unread(&state, "bob"), 0, "bob's conversation is on screen");
        // A duplicate delivery (at least once after a failover) is shown once.
        net(
            &mut state,
            NetEvent::Messages(vec![message(20, "bob", 9, "shown")]),
        );
        assert_eq!(state.current().unwrap().lines.len(), 2);
        update(&mut state, key(KeyCode::BackTab));
        assert_eq!(state.current().unwrap().peer, "carol");
        assert_eq!(unread(&state, "carol"), 0, "seen once shown");
        assert_eq!(state.unread(), 1, "dave's line");
    }

    #[test]
    fn picking_and_deleting_a_received_message() {
        let mut state = with_conversations();
        assert!(effects_of(&mut state, [ctrl('d')]).is_empty());
        assert!(
            state.overlay.is_none(),
            "nothing picked: a hint, no question"
        );
        update(&mut state, key(KeyCode::Up));
        update(&mut state, ctrl('d'));
        assert!(matches!(
            state.overlay,
            Some(Overlay::DeleteMessage { id: 1, .. })
        ));
        assert!(effects_of(&mut state, [key(KeyCode::Char('x'))]).is_empty());
        let effects = effects_of(&mut state, [key(KeyCode::Char('y'))]);
        assert_eq!(
            effects,
            [Effect::Net(NetCommand::DeleteMessages { ids: vec![1] })]
        );
        net(&mut state, NetEvent::Deleted { ids: vec![1] });
        assert!(state.current().unwrap().lines.is_empty());
    }

    #[test]
    fn deleting_the_account_asks_the_password_and_ends_at_the_login_screen() {
        let mut state = with_conversations();
        update(&mut state, key(KeyCode::F(8)));
        typed(&mut state, "correct horse");
        let effects = effects_of(&mut state, [key(KeyCode::Enter)]);
        assert_eq!(
            effects,
            [Effect::Net(NetCommand::DeleteAccount {
                password: "correct horse".into()
            })]
        );
        net(&mut state, NetEvent::AccountDeleted);
        assert_eq!(state.screen, Screen::Login);
        assert!(state.conversations.is_empty() && state.me.is_none());
        assert_eq!(state.link.member.as_deref(), Some("127.0.0.1:7878"));
    }

    #[test]
    fn the_account_filter_asks_again_on_each_change_and_drops_stale_pages() {
        let mut state = logged_in();
        let effects = effects_of(&mut state, [key(KeyCode::F(2))]);
        assert!(matches!(
            &effects[..],
            [Effect::Net(NetCommand::ListAccounts { pattern, cursor: None, .. })] if pattern == "*"
        ));
        let stale = state.accounts.generation;
        let effects = effects_of(&mut state, [key(KeyCode::Char('b'))]);
        assert!(matches!(
            &effects[..],
            [Effect::Net(NetCommand::ListAccounts { pattern, .. })] if pattern == "*b*"
        ));
        net(
            &mut state,
            NetEvent::Accounts {
                generation: stale,
                accounts: vec!["alice".into()],
                next_cursor: None,
            },
        );
        assert!(
            state.accounts.accounts.is_empty(),
            "an answer to the old filter"
        );
        let current = state.accounts.generation;
        net(
            &mut state,
            NetEvent::Accounts {
                generation: current,
                accounts: vec!["bob".into(), "bobby".into()],
                next_cursor: Some("next".into()),
            },
        );
        let effects = effects_of(&mut state, [key(KeyCode::PageDown)]);
        assert!(matches!(
            &effects[..],
            [Effect::Net(NetCommand::ListAccounts { cursor: Some(c), .. })] if c == "next"
        ));
        assert_eq!(state.accounts.page(), 2);
        let effects = effects_of(&mut state, [key(KeyCode::PageUp)]);
        assert!(matches!(
            &effects[..],
            [Effect::Net(NetCommand::ListAccounts { cursor: None, .. })]
        ));
        assert_eq!(state.accounts.page(), 1);
        let generation = state.accounts.generation;
        net(
            &mut state,
            NetEvent::Accounts {
                generation,
                accounts: vec!["bob".into(), "bobby".into()],
                next_cursor: Some("next".into()),
            },
        );
        update(&mut state, key(KeyCode::Down));
        update(&mut state, key(KeyCode::Enter));
        assert_eq!(state.screen, Screen::Chat);
        assert_eq!(state.current().unwrap().peer, "bobby");
    }

    #[test]
    fn a_transfer_needs_a_payee_and_a_positive_amount() {
        let mut state = logged_in();
        assert_eq!(
            effects_of(&mut state, [key(KeyCode::F(3))]),
            [Effect::Net(NetCommand::GetBalance)]
        );
        update(&mut state, key(KeyCode::Tab));
        typed(&mut state, "0");
        assert!(effects_of(&mut state, [key(KeyCode::Enter)]).is_empty());
        assert!(matches!(state.ledger.outcome, Some(Err(_))));
        update(&mut state, key(KeyCode::Tab));
        typed(&mut state, "bob");
        update(&mut state, key(KeyCode::Tab));
        typed(&mut state, "5");
        assert_eq!(
            effects_of(&mut state, [key(KeyCode::Enter)]),
            [Effect::Net(NetCommand::Transfer {
                to: "bob".into(),
                amount: 5
            })]
        );
        assert_eq!(
            update(&mut state, Event::Net(NetEvent::Transferred("ab12".into()))),
            [Effect::Net(NetCommand::GetBalance)],
            "the balance is asked again"
        );
        assert_eq!(state.ledger.outcome, Some(Ok("ab12".into())));
    }

    #[test]
    fn the_status_line_follows_the_connection() {
        let mut state = logged_in();
        net(&mut state, NetEvent::Reconnecting("refused".into()));
        assert_eq!(state.link.reconnecting.as_deref(), Some("refused"));
        net(&mut state, NetEvent::Connected("127.0.0.1:7002".into()));
        assert_eq!(state.link.reconnecting, None);
        assert_eq!(state.link.member.as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(state.link.moves, 1);
    }

    #[test]
    fn help_opens_on_question_mark_only_when_not_typing_and_quits_work_anywhere() {
        let mut state = with_conversations();
        typed(&mut state, "why");
        update(&mut state, key(KeyCode::Char('?')));
        assert_eq!(state.compose.text(), "why?");
        assert!(state.overlay.is_none());
        update(&mut state, key(KeyCode::F(1)));
        assert_eq!(state.overlay, Some(Overlay::Help));
        update(&mut state, key(KeyCode::Esc));
        assert!(state.overlay.is_none());
        assert_eq!(effects_of(&mut state, [ctrl('q')]), [Effect::Quit]);
        assert_eq!(
            effects_of(&mut State::new(None), [ctrl('c')]),
            [Effect::Quit]
        );
    }
}
