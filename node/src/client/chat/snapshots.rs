//! Snapshot tests of every screen: a [`State`] reached through [`update`] (keys and network
//! events, as the client would see them), drawn by [`ui::render`] on ratatui's `TestBackend`,
//! compared with the committed files under `snapshots/` (insta; `INSTA_UPDATE=always` rewrites
//! them after a deliberate change, to be reviewed in the diff).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::event::{Event, NetEvent};
use super::state::State;
use super::ui;
use super::update::update;
use crate::protocol::Message;

/// The size every snapshot is drawn at.
const WIDTH: u16 = 100;
const HEIGHT: u16 = 24;

fn draw(state: &State) -> String {
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).unwrap();
    terminal.draw(|frame| ui::render(frame, state)).unwrap();
    terminal.backend().to_string()
}

pub(super) fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub(super) fn ctrl(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

pub(super) fn typed(state: &mut State, text: &str) {
    for c in text.chars() {
        update(state, key(KeyCode::Char(c)));
    }
}

pub(super) fn net(state: &mut State, event: NetEvent) {
    update(state, Event::Net(event));
}

pub(super) fn message(id: u64, from: &str, minute: u64, text: &str) -> Message {
    Message {
        id,
        from: from.into(),
        // 2026-11-30 10:00 UTC, plus `minute`.
        timestamp: 1_796_032_800_000 + minute * 60_000,
        text: text.into(),
    }
}

/// Connected to a member and logged in as alice.
pub(super) fn logged_in() -> State {
    let mut state = State::new(Some("alice"));
    net(&mut state, NetEvent::Connected("127.0.0.1:7878".into()));
    net(
        &mut state,
        NetEvent::LoggedIn {
            username: "alice".into(),
            unread: 0,
        },
    );
    state.notice = None;
    state
}

/// alice with three conversations: bob's shown, carol and dave with unread lines.
pub(super) fn with_conversations() -> State {
    let mut state = logged_in();
    net(
        &mut state,
        NetEvent::Messages(vec![
            message(1, "bob", 0, "Hi Alice! Lunch today?"),
            message(2, "carol", 1, "the build is green again"),
            message(3, "carol", 2, "shipping at 3"),
        ]),
    );
    net(
        &mut state,
        NetEvent::Delivered(message(4, "dave", 3, "ping")),
    );
    // Show bob's conversation (the last of the list: newest first).
    while state.current().map(|c| c.peer.as_str()) != Some("bob") {
        update(&mut state, key(KeyCode::Tab));
    }
    state
}

#[test]
fn login() {
    let mut state = State::new(None);
    net(&mut state, NetEvent::Connected("127.0.0.1:7878".into()));
    typed(&mut state, "alice");
    update(&mut state, key(KeyCode::Tab));
    typed(&mut state, "correct horse");
    insta::assert_snapshot!("login", draw(&state));
}

#[test]
fn login_error() {
    let mut state = State::new(Some("alice"));
    net(&mut state, NetEvent::Connected("127.0.0.1:7878".into()));
    typed(&mut state, "wrong password");
    update(&mut state, key(KeyCode::Enter));
    net(
        &mut state,
        NetEvent::LoginFailed("wrong username or password (auth_failed)".into()),
    );
    insta::assert_snapshot!("login_error", draw(&state));
}

#[test]
fn create_account() {
    let mut state = State::new(None);
    net(&mut state, NetEvent::Connected("127.0.0.1:7878".into()));
    update(&mut state, key(KeyCode::F(2)));
    typed(&mut state, "erin");
    update(&mut state, key(KeyCode::Enter));
    typed(&mut state, "long enough");
    update(&mut state, key(KeyCode::Enter));
    insta::assert_snapshot!("create_account_waiting", draw(&state));
}

#[test]
fn conversation_list_with_unread_counts() {
    let state = with_conversations();
    insta::assert_snapshot!("conversations_unread", draw(&state));
}

#[test]
fn a_conversation_with_messages() {
    let mut state = with_conversations();
    typed(&mut state, "Yes! 12:30 at the usual place?");
    update(&mut state, key(KeyCode::Enter));
    net(
        &mut state,
        NetEvent::Sent {
            local: 0,
            id: 10,
            timestamp: 1_796_032_800_000 + 5 * 60_000,
        },
    );
    net(
        &mut state,
        NetEvent::Delivered(message(
            11,
            "bob",
            6,
            "Perfect. A long answer to show how a message wraps onto the next line of the conversation view when it is wider than the pane.",
        )),
    );
    typed(&mut state, "see you");
    update(&mut state, key(KeyCode::Enter));
    insta::assert_snapshot!("conversation", draw(&state));
}

#[test]
fn a_conversation_scrolled_back() {
    let mut state = logged_in();
    let messages = (0..40)
        .map(|i| message(100 + i, "bob", i, &format!("message number {i}")))
        .collect();
    net(&mut state, NetEvent::Messages(messages));
    update(&mut state, key(KeyCode::PageUp));
    net(
        &mut state,
        NetEvent::Delivered(message(200, "bob", 50, "a new one")),
    );
    insta::assert_snapshot!("conversation_scrolled", draw(&state));
}

#[test]
fn compose_with_multi_byte_text() {
    let mut state = with_conversations();
    typed(&mut state, "Ça marche 👍 — 日本語も大丈夫");
    update(&mut state, Event::Paste(" (pasted\nover lines)".into()));
    update(&mut state, key(KeyCode::Left));
    insta::assert_snapshot!("compose_multi_byte", draw(&state));
}

#[test]
fn account_browser_filtered_and_paged() {
    let mut state = logged_in();
    update(&mut state, key(KeyCode::F(2)));
    typed(&mut state, "user");
    let generation = state.accounts.generation;
    net(
        &mut state,
        NetEvent::Accounts {
            generation,
            accounts: (0..10).map(|i| format!("user{i:02}")).collect(),
            next_cursor: Some("c1".into()),
        },
    );
    update(&mut state, key(KeyCode::PageDown));
    let generation = state.accounts.generation;
    net(
        &mut state,
        NetEvent::Accounts {
            generation,
            accounts: (10..14).map(|i| format!("user{i:02}")).collect(),
            next_cursor: None,
        },
    );
    update(&mut state, key(KeyCode::Down));
    update(&mut state, key(KeyCode::Down));
    insta::assert_snapshot!("accounts_filtered_page_2", draw(&state));
}

#[test]
fn delete_message_confirmation() {
    let mut state = with_conversations();
    update(&mut state, key(KeyCode::Up));
    update(&mut state, ctrl('d'));
    insta::assert_snapshot!("delete_message_confirmation", draw(&state));
}

#[test]
fn delete_account_confirmation() {
    let mut state = with_conversations();
    update(&mut state, key(KeyCode::F(8)));
    typed(&mut state, "not it");
    update(&mut state, key(KeyCode::Enter));
    net(
        &mut state,
        NetEvent::DeleteAccountFailed("wrong username or password (auth_failed)".into()),
    );
    insta::assert_snapshot!("delete_account_confirmation", draw(&state));
}

#[test]
fn balance_and_transfer_form() {
    let mut state = logged_in();
    update(&mut state, key(KeyCode::F(3)));
    net(
        &mut state,
        NetEvent::Balance {
            confirmed: 1000,
            pending: -25,
        },
    );
    typed(&mut state, "bob");
    update(&mut state, key(KeyCode::Tab));
    typed(&mut state, "12x5");
    insta::assert_snapshot!("ledger_transfer_form", draw(&state));
}

#[test]
fn transfer_error() {
    let mut state = logged_in();
    update(&mut state, key(KeyCode::F(3)));
    net(
        &mut state,
        NetEvent::Balance {
            confirmed: 1000,
            pending: 0,
        },
    );
    typed(&mut state, "bob");
    update(&mut state, key(KeyCode::Enter));
    typed(&mut state, "5000");
    update(&mut state, key(KeyCode::Enter));
    net(
        &mut state,
        NetEvent::TransferFailed(
            "alice can spend 1000 coins, not 5000 (insufficient_funds)".into(),
        ),
    );
    insta::assert_snapshot!("ledger_transfer_error", draw(&state));
}

#[test]
fn help_overlay() {
    let mut state = with_conversations();
    update(&mut state, key(KeyCode::Char('?')));
    insta::assert_snapshot!("help", draw(&state));
}

#[test]
fn status_line_reconnecting() {
    let mut state = with_conversations();
    net(
        &mut state,
        NetEvent::Reconnecting(
            "gave up after 2s: no member of 127.0.0.1:7878 could answer (last: connection refused)"
                .into(),
        ),
    );
    insta::assert_snapshot!("status_reconnecting", draw(&state));
}

#[test]
fn status_line_with_the_leader() {
    let mut state = with_conversations();
    net(&mut state, NetEvent::Leader(Some("127.0.0.1:7003".into())));
    insta::assert_snapshot!("status_leader_elsewhere", draw(&state));
    net(&mut state, NetEvent::Leader(Some("127.0.0.1:7878".into())));
    let drawn = draw(&state);
    assert!(drawn.contains("127.0.0.1:7878 (leader)"), "{drawn}");
    net(&mut state, NetEvent::Leader(None));
    assert!(!draw(&state).contains("leader"));
}
