//! `synckit-node chat`: a terminal chat client on ratatui (log in or create an account,
//! conversations with unread counts and live deliveries, an account browser, the ledger's
//! balance and transfers, deleting messages and the account).
//!
//! Three threads joined by one channel of [`Event`]s, read as a loop in [`run`]:
//!
//! 1. the input thread turns crossterm's terminal events (keys, pastes, the mouse, resizes) into
//!    [`Event`]s;
//! 2. the network thread ([`net`]) owns a [`FailoverClient`](crate::client::FailoverClient),
//!    runs the [`NetCommand`](event::NetCommand)s it is handed, waits for pushes in between,
//!    and reports [`NetEvent`](event::NetEvent)s (reconnections included);
//! 3. this thread takes each event, lets [`update::update`] change the [`State`](state::State)
//!    and name its [`Effect`]s, hands the network's to the network thread, and draws the state
//!    with [`ui::render`]. It never waits on the network.
//!
//! The rooms: [`config`] (flags, environment, `--config FILE`), [`event`] (the messages),
//! [`state`] (the model), [`update`] (the only code that changes it), [`input`] (an editable
//! line), [`ui`] (drawing), [`net`] (the network thread), [`terminal`] (raw mode and the
//! alternate screen, given back on exit and on panic).

pub mod config;
pub mod event;
pub mod input;
pub mod net;
pub mod state;
pub mod terminal;
pub mod ui;
pub mod update;

#[cfg(test)]
mod snapshots;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, unbounded};
use crossterm::event as term;

pub use config::ChatArgs;
use config::Settings;
use event::{Effect, Event};

/// How often the input thread looks up from waiting for the terminal, to notice the loop ended.
const INPUT_POLL: Duration = Duration::from_millis(200);

/// Runs the chat client until the user quits; exit code 0 then, 2 if the terminal or the
/// settings failed.
pub fn chat(args: &ChatArgs) -> ExitCode {
    match Settings::load(args).and_then(|settings| run(&settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("synckit-node chat: {error}");
            ExitCode::from(2)
        }
    }
}

/// The loop: take an event, update the state, hand out the effects, draw.
pub fn run(settings: &Settings) -> Result<(), String> {
    let (events, inbox) = unbounded::<Event>();
    let (commands, outbox) = unbounded();
    net::spawn(
        settings.members.clone(),
        settings.protocol,
        outbox,
        events.clone(),
    )
    .map_err(|e| format!("cannot start the network thread: {e}"))?;
    let mut terminal =
        terminal::Terminal::take().map_err(|e| format!("cannot take the terminal: {e}"))?;
    let done = Arc::new(AtomicBool::new(false));
    spawn_input(events, Arc::clone(&done)).map_err(|e| format!("no input thread: {e}"))?;

    let mut state = state::State::new(settings.username.as_deref());
    let mut effects = update::start(&mut state, settings.password.clone());
    let result = 'run: loop {
        // 1. Hand out what the last update asked for.
        for effect in effects.drain(..) {
            match effect {
                Effect::Net(command) => {
                    if commands.send(command).is_err() {
                        break 'run Err("the network thread ended".to_string());
                    }
                }
                Effect::Quit => break 'run Ok(()),
            }
        }
        // 2. Draw the state.
        if let Err(e) = terminal.ratatui.draw(|frame| ui::render(frame, &state)) {
            break Err(format!("cannot draw: {e}"));
        }
        // 3. Wait for the next event, then take every other one already queued (one drawing
        //    for a burst, say a paste or a mailbox read).
        let Ok(first) = inbox.recv() else {
            break Err("every event source ended".to_string());
        };
        for event in std::iter::once(first).chain(inbox.try_iter()) {
            effects.extend(update::update(&mut state, event));
        }
    };
    done.store(true, Ordering::Relaxed);
    drop(terminal);
    result
}

/// The input thread: terminal events as [`Event`]s, until `done` or the loop is gone.
fn spawn_input(events: Sender<Event>, done: Arc<AtomicBool>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("chat-input".into())
        .spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match term::poll(INPUT_POLL) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(_) => return,
                }
                let event = match term::read() {
                    Ok(term::Event::Key(key)) => Event::Key(key),
                    Ok(term::Event::Paste(text)) => Event::Paste(text),
                    Ok(term::Event::Mouse(mouse)) => Event::Mouse(mouse),
                    Ok(term::Event::Resize(..)) => Event::Resize,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        })
        .map(drop)
}
