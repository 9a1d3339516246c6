//! The terminal, taken and given back: [`Terminal::take`] enters raw mode and the alternate
//! screen and turns on mouse reports and bracketed paste; dropping it undoes all of it, and so
//! does a panic (a hook restores the terminal before the panic message is printed, so the
//! message is readable and the shell usable).

use std::io::{self, Stdout, stdout};
use std::sync::Once;

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::backend::CrosstermBackend;

/// The terminal in the chat client's modes, for as long as it lives.
pub struct Terminal {
    /// What ratatui draws on.
    pub ratatui: ratatui::Terminal<CrosstermBackend<Stdout>>,
}

/// Gives the terminal back: the modes [`Terminal::take`] set, in reverse. Safe to call twice.
pub fn restore() {
    let _ = execute!(
        stdout(),
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = disable_raw_mode();
}

impl Terminal {
    /// Takes the terminal (and installs the panic hook, once).
    pub fn take() -> io::Result<Terminal> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        let taken = execute!(
            stdout(),
            EnterAlternateScreen,
            EnableMouseCapture,
            EnableBracketedPaste
        )
        .and_then(|()| ratatui::Terminal::new(CrosstermBackend::new(stdout())));
        match taken {
            Ok(ratatui) => Ok(Terminal { ratatui }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}
