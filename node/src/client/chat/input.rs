//! [`LineEdit`]: one line of editable text (the compose line, form fields, the account filter)
//! with a cursor that moves by characters, so that multi-byte text (`é`, `日本`, `🦀`) is edited
//! a character at a time, and pastes that arrive whole.

use ratatui::text::Span;

/// One line of text and a cursor (a character index, `0..=len`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineEdit {
    text: String,
    /// Characters before the cursor.
    cursor: usize,
}

impl LineEdit {
    /// A line holding `text`, the cursor at its end.
    pub fn with(text: &str) -> LineEdit {
        let mut line = LineEdit::default();
        line.insert_str(text);
        line
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether there is no text.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The cursor, in characters from the start.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The byte offset of character `chars`.
    fn byte_at(&self, chars: usize) -> usize {
        self.text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(at, _)| at)
    }

    /// Inserts one character at the cursor (control characters are dropped).
    pub fn insert(&mut self, c: char) {
        if c.is_control() {
            return;
        }
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    /// Inserts pasted text at the cursor: line breaks and tabs become spaces, other control
    /// characters are dropped.
    pub fn insert_str(&mut self, text: &str) {
        for c in text.chars() {
            match c {
                '\r' => {}
                '\n' | '\t' => self.insert(' '),
                c => self.insert(c),
            }
        }
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    /// Moves the cursor one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Moves the cursor one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.chars().count());
    }

    /// Moves the cursor to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves the cursor to the end.
    pub fn end(&mut self) {
        self.cursor = self.text.chars().count();
    }

    /// Empties the line and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// What to show in a box `width` cells wide, and the cursor's column in it: the text from
    /// the first character that keeps the cursor in view (wide characters take two cells).
    /// `mask` shows every character as `*` (passwords).
    pub fn visible(&self, width: u16, mask: bool) -> (String, u16) {
        let shown: String = if mask {
            "*".repeat(self.text.chars().count())
        } else {
            self.text.clone()
        };
        let chars: Vec<char> = shown.chars().collect();
        let cell = |c: &char| Span::raw(c.to_string()).width();
        let width = usize::from(width.max(1));
        // Drop characters from the start until the text before the cursor, plus the cursor's
        // own cell, fits.
        let mut start = 0;
        let mut before: usize = chars[..self.cursor].iter().map(cell).sum();
        while before + 1 > width && start < self.cursor {
            before -= cell(&chars[start]);
            start += 1;
        }
        let mut used = 0;
        let mut text = String::new();
        for c in &chars[start..] {
            used += cell(c);
            if used > width {
                break;
            }
            text.push(*c);
        }
        (text, u16::try_from(before).unwrap_or(u16::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_byte_text_is_edited_a_character_at_a_time() {
        let mut line = LineEdit::with("héllo 日本");
        line.backspace();
        assert_eq!(line.text(), "héllo 日");
        line.home();
        line.right();
        line.right();
        line.backspace();
        assert_eq!(line.text(), "hllo 日");
        line.insert('🦀');
        assert_eq!(line.text(), "h🦀llo 日");
        assert_eq!(line.cursor(), 2);
        line.delete();
        assert_eq!(line.text(), "h🦀lo 日");
        line.end();
        line.right();
        line.delete();
        assert_eq!(line.cursor(), 6);
        assert_eq!(line.take(), "h🦀lo 日");
        assert!(line.is_empty());
    }

    #[test]
    fn pastes_become_one_line() {
        let mut line = LineEdit::with("a");
        line.insert_str("b\r\nc\td\u{7}e");
        assert_eq!(line.text(), "ab c de");
    }

    #[test]
    fn the_visible_part_keeps_the_cursor_in_view() {
        let line = LineEdit::with("日本語のテキスト");
        // 8 wide characters (16 cells) and the cursor cell, in 10 cells: the last 4 characters.
        let (shown, column) = line.visible(10, false);
        assert_eq!(shown, "テキスト");
        assert_eq!(column, 8);
        let (shown, column) = LineEdit::with("secret").visible(20, true);
        assert_eq!((shown.as_str(), column), ("******", 6));
    }
}
