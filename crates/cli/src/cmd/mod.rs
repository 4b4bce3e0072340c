//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod bind;
pub(crate) mod check_config;
pub(crate) mod connect;
pub(crate) mod passwd;
pub(crate) mod probe;
pub(crate) mod serve;
pub(crate) mod tunnel;
pub(crate) mod udp;

use std::borrow::Cow;

/// Text from the network (a proxy's reply, a datagram), made safe to print in a line-based
/// output: control characters, backslashes, line separators and bidirectional controls
/// escaped (`\n`, `\t`, `\u{1b}`, `\\`, `\u{202e}`), so a hostile proxy can neither add
/// lines, reorder what is shown, nor send terminal escapes. Plain text, the usual
/// case, comes back as it is.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    // Also the line and paragraph separators and the bidirectional controls, which can
    // make a terminal show text in another order than it is.
    let escaped = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_what_could_forge_lines_or_drive_a_terminal() {
        assert_eq!(printable("plain text é"), "plain text é");
        assert_eq!(
            printable("a\n127.0.0.1:53\tfake\u{1b}[31m\\"),
            "a\\n127.0.0.1:53\\tfake\\u{1b}[31m\\\\"
        );
        assert!(!printable("x\r\u{7f}\u{85}").chars().any(char::is_control));
        assert_eq!(
            printable("evil\u{202e}txt.exe\u{2028}"),
            "evil\\u{202e}txt.exe\\u{2028}"
        );
    }
}
