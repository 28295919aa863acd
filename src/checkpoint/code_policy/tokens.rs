//! TorchScript source as tokens: names, dots, brackets, commas, colons, string literals (their
//! text kept), numbers and comments told apart as libtorch's lexer tells them apart, each with
//! its line; and [`Finding`], the reason and line of a refusal.

/// Why a piece of code is refused, and where.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) line: usize,
    pub(crate) what: String,
}

/// A token of TorchScript source, as far as the policy needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind<'a> {
    Name(&'a str),
    Dot,
    /// A string literal's text between its quotes, escapes left as written.
    Str(&'a [u8]),
    Open(u8),
    Close(u8),
    Comma,
    Colon,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Token<'a> {
    pub(super) kind: Kind<'a>,
    pub(super) line: usize,
}

/// Tokenizes TorchScript source as libtorch's lexer does for what matters here: names, dots,
/// brackets, commas, colons, numbers (`1.`, `1e-5`, `0x1f`: a dot inside a number is not an
/// attribute access, a dot after one is), string literals with backslash escapes, single or
/// triple quoted, `#` comments (but type comments, whose text is code), and backslashes that
/// join lines.
pub(super) fn tokenize(source: &[u8]) -> Result<Vec<Token<'_>>, Finding> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < source.len() {
        let c = source[i];
        let start_line = line;
        let kind = match c {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            // A type comment is code to libtorch's lexer: `# type:` is one token and the rest
            // of the line is read as code (a string opened there is a string).
            b'#' if source[i..].starts_with(b"# type:") => {
                i += b"# type:".len();
                Kind::Other
            }
            b'#' => {
                while i < source.len() && source[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            // A backslash before a newline joins the lines, as in libtorch's lexer:
            // `a.\<newline>b` is the path `a.b`.
            b'\\' if source.get(i + 1) == Some(&b'\n') => {
                line += 1;
                i += 2;
                continue;
            }
            // C's `isspace`, as libtorch's lexer takes blanks (the vertical tab included).
            c if c.is_ascii_whitespace() || c == 0x0b => {
                i += 1;
                continue;
            }
            b'"' | b'\'' => {
                let triple = source[i..].starts_with(&[c, c, c]);
                let quote_len = if triple { 3 } else { 1 };
                i += quote_len;
                let text_start = i;
                loop {
                    let Some(&b) = source.get(i) else {
                        return Err(Finding {
                            line: start_line,
                            what: "a string that never ends".into(),
                        });
                    };
                    if b == b'\\' {
                        if source.get(i + 1) == Some(&b'\n') {
                            line += 1;
                        }
                        i += 2;
                        continue;
                    }
                    if b == b'\n' {
                        if !triple {
                            return Err(Finding {
                                line: start_line,
                                what: "a string that never ends".into(),
                            });
                        }
                        line += 1;
                    }
                    if b == c && (!triple || source[i..].starts_with(&[c, c, c])) {
                        let text = &source[text_start..i];
                        i += quote_len;
                        break Kind::Str(text);
                    }
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && source.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i = number_end(source, i);
                Kind::Other
            }
            b'.' => {
                i += 1;
                Kind::Dot
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < source.len() && (source[i] == b'_' || source[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                Kind::Name(std::str::from_utf8(&source[start..i]).expect("ASCII"))
            }
            b'(' | b'[' | b'{' => {
                i += 1;
                Kind::Open(c)
            }
            b')' | b']' | b'}' => {
                i += 1;
                Kind::Close(c)
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b':' => {
                i += 1;
                Kind::Colon
            }
            _ => {
                i += 1;
                Kind::Other
            }
        };
        tokens.push(Token {
            kind,
            line: start_line,
        });
    }
    Ok(tokens)
}

/// Where the number starting at `i` ends, as libtorch's lexer reads one (`strtod` after a
/// digit or a dot): digits (hex, octal or binary ones after `0x`, `0o`, `0b`), one dot and more
/// digits, an exponent, a `j`. `0..save` is the number `0.` and then `.save`.
fn number_end(source: &[u8], mut i: usize) -> usize {
    let digits = |mut i: usize| {
        while i < source.len() && (source[i].is_ascii_digit() || source[i] == b'_') {
            i += 1;
        }
        i
    };
    if source[i] == b'0'
        && matches!(
            source.get(i + 1),
            Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        )
    {
        i += 2;
        while i < source.len() && (source[i].is_ascii_hexdigit() || source[i] == b'_') {
            i += 1;
        }
        return i;
    }
    i = digits(i);
    if source.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(source.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(source.get(i + 1), Some(b'+' | b'-')));
        if source.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    if matches!(source.get(i), Some(b'j' | b'J')) {
        i += 1;
    }
    i
}
