//! [`render`]: draws a [`State`] into a ratatui frame, and nothing else: the same state always
//! draws the same screen, which the snapshot tests rely on.
//!
//! Every screen is the screen's own area, then the status line (the member, the leader it
//! names, "reconnecting...", the last notice) and the footer (the keys that work here); an overlay (help, a
//! confirmation) is drawn last, in a box over the middle.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};

use super::input::LineEdit;
use super::state::{
    ChatLine, Conversation, LineStatus, LoginField, Overlay, Screen, State, TransferField,
};

/// Draws `state`.
pub fn render(frame: &mut Frame, state: &State) {
    let [main, status, footer] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    match state.screen {
        Screen::Login => login(frame, main, state),
        Screen::Chat => chat(frame, main, state),
        Screen::Accounts => accounts(frame, main, state),
        Screen::Ledger => ledger(frame, main, state),
    }
    status_line(frame, status, state);
    frame.render_widget(
        Paragraph::new(keys(state)).style(Style::new().fg(Color::Black).bg(Color::Gray)),
        footer,
    );
    match &state.overlay {
        None => {}
        Some(Overlay::Help) => help(frame),
        Some(Overlay::DeleteMessage { preview, .. }) => {
            let area = popup(frame.area(), 56, 7);
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(vec![
                    Line::from("Delete this message from your mailbox?"),
                    Line::from(format!("  \"{preview}\"")).italic(),
                    Line::default(),
                    Line::from("y: delete    n, Esc: keep").bold(),
                ])
                .block(Block::bordered().title(" Delete message "))
                .wrap(Wrap { trim: false }),
                area,
            );
        }
        Some(Overlay::DeleteAccount {
            password,
            error,
            waiting,
        }) => {
            let area = popup(frame.area(), 60, 9);
            frame.render_widget(Clear, area);
            let block = Block::bordered().title(" Delete account ");
            let inner = block.inner(area);
            frame.render_widget(block, area);
            let [text, field, problem, hint] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Length(1),
                Constraint::Length(2),
                Constraint::Length(1),
            ])
            .areas(inner);
            let who = state.me.as_deref().unwrap_or("?");
            frame.render_widget(
                Paragraph::new(format!(
                    "Delete the account {who} and its mailbox for good? Type the password again:"
                ))
                .wrap(Wrap { trim: false }),
                text,
            );
            input_field(frame, field, "Password", password, true, true);
            let problem_line = match (error, waiting) {
                (Some(error), _) => Line::from(error.as_str()).red(),
                (None, true) => Line::from("deleting...").yellow(),
                (None, false) => Line::default(),
            };
            frame.render_widget(
                Paragraph::new(problem_line).wrap(Wrap { trim: false }),
                problem,
            );
            frame.render_widget(
                Paragraph::new("Enter: delete    Esc: keep the account").bold(),
                hint,
            );
        }
    }
}

/// A `width` x `height` box in the middle of `area` (smaller if `area` is).
fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// `label  [text]` on one row; the terminal cursor goes into the field that has focus.
fn input_field(
    frame: &mut Frame,
    area: Rect,
    label: &str,
    line: &LineEdit,
    mask: bool,
    focus: bool,
) {
    let label_width = 10;
    let [label_area, field] =
        Layout::horizontal([Constraint::Length(label_width), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(label), label_area);
    let (shown, column) = line.visible(field.width.saturating_sub(1), mask);
    let style = if focus {
        Style::new().bg(Color::DarkGray).fg(Color::White)
    } else {
        Style::new().bg(Color::Black).fg(Color::Gray)
    };
    frame.render_widget(Paragraph::new(shown).style(style), field);
    if focus {
        frame.set_cursor_position((field.x + column.min(field.width.saturating_sub(1)), field.y));
    }
}

fn login(frame: &mut Frame, area: Rect, state: &State) {
    let form = &state.login;
    let box_area = popup(area, 56, 12);
    let title = if form.create {
        " sync-kit chat: create an account "
    } else {
        " sync-kit chat: log in "
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(box_area).inner(ratatui::layout::Margin {
        horizontal: 1,
        vertical: 1,
    });
    frame.render_widget(block, box_area);
    let [user, password, _, problem, hint] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(inner);
    let focus = state.overlay.is_none();
    input_field(
        frame,
        user,
        "Username",
        &form.username,
        false,
        focus && form.field == LoginField::Username,
    );
    input_field(
        frame,
        password,
        "Password",
        &form.password,
        true,
        focus && form.field == LoginField::Password,
    );
    let problem_line = match (&form.error, form.waiting) {
        (Some(error), _) => Line::from(error.as_str()).red(),
        (None, true) if form.create => Line::from("creating the account...").yellow(),
        (None, true) => Line::from("logging in...").yellow(),
        (None, false) => Line::default(),
    };
    frame.render_widget(
        Paragraph::new(problem_line).wrap(Wrap { trim: false }),
        problem,
    );
    let other = if form.create {
        "F2: log in to an existing account"
    } else {
        "F2: create an account instead"
    };
    frame.render_widget(Paragraph::new(other).dim(), hint);
}

fn chat(frame: &mut Frame, area: Rect, state: &State) {
    let [top, compose] = Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
    let [sidebar, view] =
        Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(top);

    let items: Vec<ListItem> = state
        .conversations
        .iter()
        .map(|c| {
            let mut spans = vec![Span::raw(c.peer.clone())];
            if c.unread > 0 {
                spans.push(Span::raw(format!(" ({})", c.unread)).bold().yellow());
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let unread = state.unread();
    let title = if unread > 0 {
        format!(" Chats: {unread} unread ")
    } else {
        " Chats ".to_string()
    };
    let mut list_state =
        ListState::default().with_selected(state.current().map(|_| state.selected));
    frame.render_stateful_widget(
        List::new(items)
            .block(Block::bordered().title(title))
            .highlight_symbol("> ")
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        sidebar,
        &mut list_state,
    );

    match state.current() {
        Some(conversation) => conversation_view(frame, view, state, conversation),
        None => frame.render_widget(
            Paragraph::new(vec![
                Line::default(),
                Line::from("No conversation yet."),
                Line::from("F2 lists the accounts: pick one and press Enter to write to it."),
                Line::from("Messages sent to you open their conversation here."),
            ])
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Chat ")),
            view,
        ),
    }

    let title = match state.current() {
        Some(c) => format!(" Message to {} ", c.peer),
        None => " Message (no conversation) ".to_string(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(compose);
    frame.render_widget(block, compose);
    let (shown, column) = state.compose.visible(inner.width.saturating_sub(1), false);
    frame.render_widget(Paragraph::new(shown), inner);
    if state.overlay.is_none() {
        frame.set_cursor_position((inner.x + column.min(inner.width.saturating_sub(1)), inner.y));
    }
}

/// `HH:MM` (UTC) of a timestamp in ms since the Unix epoch.
fn clock(ms: u64) -> String {
    let minutes = ms / 60_000 % (24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Cuts `text` into pieces at most `width` cells wide.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut pieces = vec![String::new()];
    let mut used = 0;
    for c in text.chars() {
        let cells = Span::raw(c.to_string()).width();
        if used + cells > width && used > 0 {
            pieces.push(String::new());
            used = 0;
        }
        pieces.last_mut().expect("never empty").push(c);
        used += cells;
    }
    pieces
}

/// One message as display lines `width` cells wide.
fn message_lines(
    me: &str,
    peer: &str,
    line: &ChatLine,
    picked: bool,
    width: usize,
) -> Vec<Line<'static>> {
    let (time, suffix, suffix_style) = match &line.status {
        LineStatus::Sending(_) => (
            "--:--".to_string(),
            " (sending)".to_string(),
            Style::new().dim(),
        ),
        LineStatus::Stored { timestamp, .. } => (clock(*timestamp), String::new(), Style::new()),
        LineStatus::Failed(why) => (
            "--:--".to_string(),
            format!(" (not sent: {why})"),
            Style::new().red(),
        ),
    };
    let (who, who_style) = if line.outgoing {
        (me, Style::new().fg(Color::Cyan).bold())
    } else {
        (peer, Style::new().fg(Color::Green).bold())
    };
    let head = format!("{time} {who}: ");
    let indent = Span::raw(head.clone()).width();
    let body = format!("{}{suffix}", line.text);
    let text_cells = Span::raw(line.text.clone()).width();
    let pieces = wrap(&body, width.saturating_sub(indent).max(1));
    let mut lines = Vec::new();
    let mut cells_left = text_cells;
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut spans = if i == 0 {
            vec![
                Span::raw(format!("{time} ")).dim(),
                Span::styled(format!("{who}: "), who_style),
            ]
        } else {
            vec![Span::raw(" ".repeat(indent))]
        };
        // The suffix (status) may start inside a piece: style that part apart.
        let piece_cells = Span::raw(piece.clone()).width();
        if piece_cells <= cells_left {
            cells_left -= piece_cells;
            spans.push(Span::raw(piece));
        } else {
            let mut text_part = String::new();
            let mut rest = String::new();
            let mut used = 0;
            for c in piece.chars() {
                let cells = Span::raw(c.to_string()).width();
                if used + cells <= cells_left && rest.is_empty() {
                    text_part.push(c);
                    used += cells;
                } else {
                    rest.push(c);
                }
            }
            cells_left = 0;
            spans.push(Span::raw(text_part));
            spans.push(Span::styled(rest, suffix_style));
        }
        let mut line = Line::from(spans);
        if picked {
            line = line.patch_style(Style::new().add_modifier(Modifier::REVERSED));
        }
        lines.push(line);
    }
    lines
}

fn conversation_view(frame: &mut Frame, area: Rect, state: &State, conversation: &Conversation) {
    let me = state.me.as_deref().unwrap_or("me");
    let mut title = vec![Span::raw(format!(" {} ", conversation.peer)).bold()];
    if conversation.scroll > 0 {
        title.push(
            Span::raw(format!(
                "(scrolled back {}; PgDn returns) ",
                conversation.scroll
            ))
            .yellow(),
        );
    }
    let block = Block::bordered().title(Line::from(title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = usize::from(inner.height);
    let width = usize::from(inner.width);
    // From the bottom message (the newest, less the scroll) upwards, until the view is full.
    let mut shown: Vec<Line> = Vec::new();
    let bottom = conversation.lines.len().saturating_sub(conversation.scroll);
    for (at, line) in conversation.lines[..bottom].iter().enumerate().rev() {
        let mut lines = message_lines(
            me,
            &conversation.peer,
            line,
            conversation.picked == Some(at),
            width,
        );
        lines.append(&mut shown);
        shown = lines;
        if shown.len() >= height {
            break;
        }
    }
    if conversation.lines.is_empty() {
        shown.push(
            Line::from(format!(
                "Nothing yet: write to {} below.",
                conversation.peer
            ))
            .dim(),
        );
    }
    let skip = shown.len().saturating_sub(height);
    frame.render_widget(Paragraph::new(Text::from(shown.split_off(skip))), inner);
}

fn accounts(frame: &mut Frame, area: Rect, state: &State) {
    let browser = &state.accounts;
    let [filter_area, list_area] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(area);
    let block = Block::bordered().title(" Accounts: filter (* and ? are wildcards) ");
    let inner = block.inner(filter_area);
    frame.render_widget(block, filter_area);
    let [field, pattern] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(30)]).areas(inner);
    input_field(
        frame,
        field,
        "Filter",
        &browser.filter,
        false,
        state.overlay.is_none(),
    );
    frame.render_widget(
        Paragraph::new(format!(" pattern {}", browser.pattern())).dim(),
        pattern,
    );

    let mut title = format!(" Page {} ", browser.page());
    if browser.next_cursor.is_some() {
        title.push_str("(more: PgDn) ");
    }
    if browser.loading {
        title.push_str("loading... ");
    }
    let block = Block::bordered().title(title);
    if let Some(error) = &browser.error {
        frame.render_widget(
            Paragraph::new(Line::from(error.as_str()).red())
                .wrap(Wrap { trim: false })
                .block(block),
            list_area,
        );
        return;
    }
    if browser.accounts.is_empty() && !browser.loading {
        frame.render_widget(
            Paragraph::new(Line::from("no account matches").dim()).block(block),
            list_area,
        );
        return;
    }
    let items: Vec<ListItem> = browser
        .accounts
        .iter()
        .map(|name| {
            let mut spans = vec![Span::raw(name.clone())];
            if state.me.as_deref() == Some(name.as_str()) {
                spans.push(Span::raw(" (you)").dim());
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut list_state = ListState::default().with_selected(Some(browser.selected));
    frame.render_stateful_widget(
        List::new(items)
            .block(block)
            .highlight_symbol("> ")
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        list_area,
        &mut list_state,
    );
}

fn ledger(frame: &mut Frame, area: Rect, state: &State) {
    let ledger = &state.ledger;
    let [balance_area, form_area, _] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(8),
        Constraint::Min(0),
    ])
    .areas(area);
    let balance = match ledger.balance {
        Some((confirmed, pending)) => vec![
            Line::from(vec![
                Span::raw("Confirmed  "),
                Span::raw(format!("{confirmed} coins")).bold(),
                Span::raw(" (in sealed blocks)").dim(),
            ]),
            Line::from(vec![
                Span::raw("Pending    "),
                Span::raw(format!("{pending:+} coins")).bold(),
                Span::raw(" (pooled transactions, until the next block)").dim(),
            ]),
        ],
        None => vec![Line::from("asking the node...").dim()],
    };
    let who = state.me.as_deref().unwrap_or("?");
    frame.render_widget(
        Paragraph::new(balance).block(Block::bordered().title(format!(" Balance of {who} "))),
        balance_area,
    );

    let block = Block::bordered().title(" Transfer ");
    let inner = block.inner(form_area).inner(ratatui::layout::Margin {
        horizontal: 1,
        vertical: 0,
    });
    frame.render_widget(block, form_area);
    let [to, amount, _, outcome, hint] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(1),
    ])
    .areas(inner);
    let focus = state.overlay.is_none();
    input_field(
        frame,
        to,
        "To",
        &ledger.to,
        false,
        focus && ledger.field == TransferField::To,
    );
    input_field(
        frame,
        amount,
        "Amount",
        &ledger.amount,
        false,
        focus && ledger.field == TransferField::Amount,
    );
    let outcome_line = match (&ledger.outcome, ledger.waiting) {
        (_, true) => Line::from("transferring...").yellow(),
        (Some(Ok(txid)), false) => Line::from(format!("pooled: transaction {txid}")).green(),
        (Some(Err(why)), false) => Line::from(format!("refused: {why}")).red(),
        (None, false) => Line::default(),
    };
    frame.render_widget(
        Paragraph::new(outcome_line).wrap(Wrap { trim: false }),
        outcome,
    );
    frame.render_widget(
        Paragraph::new("A transfer is not sent twice: if its answer is lost, look at the balance.")
            .dim(),
        hint,
    );
}

fn status_line(frame: &mut Frame, area: Rect, state: &State) {
    let mut spans = Vec::new();
    match (&state.link.reconnecting, &state.link.member) {
        (Some(why), _) => {
            spans.push(Span::raw(" reconnecting... ").black().on_yellow());
            spans.push(Span::raw(format!(" {why}")).yellow());
        }
        (None, Some(member)) => {
            spans.push(Span::raw(" ● ").green());
            if let Some(me) = &state.me {
                spans.push(Span::raw(format!("{me} @ ")).bold());
            }
            spans.push(Span::raw(member.clone()));
            match &state.link.leader {
                Some(leader) if leader == member => spans.push(Span::raw(" (leader)").dim()),
                Some(leader) => spans.push(Span::raw(format!(" · leader {leader}")).dim()),
                None => {}
            }
            if state.link.moves > 0 {
                spans.push(Span::raw(format!(" (reconnected {}x)", state.link.moves)).dim());
            }
        }
        (None, None) => spans.push(Span::raw(" connecting...").yellow()),
    }
    if let Some(notice) = &state.notice {
        spans.push(Span::raw("  │ "));
        let text = Span::raw(notice.text.clone());
        spans.push(if notice.error { text.red() } else { text });
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The footer: the keys that work here.
fn keys(state: &State) -> Line<'static> {
    let pairs: &[(&str, &str)] = match (&state.overlay, state.screen) {
        (Some(Overlay::Help), _) => &[("any key", "close")],
        (Some(Overlay::DeleteMessage { .. }), _) => &[("y", "delete"), ("n/Esc", "keep")],
        (Some(Overlay::DeleteAccount { .. }), _) => &[("Enter", "delete"), ("Esc", "keep")],
        (None, Screen::Login) => &[
            ("Enter", "log in"),
            ("Tab", "field"),
            ("F2", "create account / log in"),
            ("Esc", "quit"),
        ],
        (None, Screen::Chat) => &[
            ("Enter", "send"),
            ("Tab", "next chat"),
            ("PgUp/Dn", "scroll"),
            ("↑↓", "pick"),
            ("^D", "delete"),
            ("F2", "accounts"),
            ("F3", "ledger"),
            ("?", "help"),
            ("^Q", "quit"),
        ],
        (None, Screen::Accounts) => &[
            ("type", "filter"),
            ("↑↓", "select"),
            ("PgDn/PgUp", "page"),
            ("Enter", "chat"),
            ("Esc", "back"),
            ("F1", "help"),
        ],
        (None, Screen::Ledger) => &[
            ("Tab", "field"),
            ("Enter", "transfer"),
            ("F5", "refresh"),
            ("Esc", "back"),
            ("F1", "help"),
        ],
    };
    let mut spans = Vec::new();
    for (key, what) in pairs {
        spans.push(Span::raw(format!(" {key}")).bold());
        spans.push(Span::raw(format!(" {what} ")));
    }
    Line::from(spans)
}

/// Every binding, as the module documentation of [`update`](super::update) lists them.
const HELP: &[(&str, &str)] = &[
    ("Ctrl-C, Ctrl-Q", "quit"),
    ("F1, ?", "this help (? when the compose line is empty)"),
    ("Esc", "close a box; back to the chat"),
    ("Enter", "send the compose line to the conversation shown"),
    ("Tab, Shift-Tab", "next, previous conversation (or field)"),
    ("PgUp, PgDn, wheel", "scroll the conversation back, forward"),
    ("Up, Down", "pick a received message"),
    ("Ctrl-D, Del", "delete the picked message (asks first)"),
    (
        "F2, Ctrl-A",
        "accounts: type a filter, PgDn/PgUp pages, Enter chats",
    ),
    ("F3, Ctrl-B", "balance and transfer form (F5 refreshes)"),
    ("F8", "delete your account (asks the password again)"),
];

fn help(frame: &mut Frame) {
    let area = popup(
        frame.area(),
        80,
        u16::try_from(HELP.len()).unwrap_or(20) + 4,
    );
    frame.render_widget(Clear, area);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::raw(format!(" {key:<19}")).bold(),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::default());
    lines.push(Line::from(" Paste works in every field; text may be in any script.").dim());
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys ")),
        area,
    );
}
