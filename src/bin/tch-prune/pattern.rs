//! Name patterns of `--params` and `--exclude`: shell-style globs over a whole tensor name, with
//! what a transformer's names need to say "layers 0 to 3":
//!
//! | Syntax | Matches |
//! |---|---|
//! | `*` | any run of characters, dots included |
//! | `?` | one character |
//! | `[0-3]`, `[qkv]`, `[!0-3]` | one character of the class (or, with `!` or `^`, not of it) |
//! | `{0..11}` | a decimal number from 0 to 11 (no leading zeros) |
//! | `{q,k,v}` | one of the alternatives (each a pattern without braces) |
//!
//! A `[` or `{` that does not close is an ordinary character. Matching runs over the set of
//! positions reachable after each piece, so its cost is the pattern's length times the name's,
//! whatever the pattern. A name without any of `*?[{` is compared as it is (a plan file may hold
//! one a hundred megabytes long); a pattern with them longer than [`MAX_PATTERN`] matches
//! nothing, which the selection reports as a pattern that matches no parameter.

/// One piece of a pattern.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Char(char),
    One,
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Number {
        low: u64,
        high: u64,
    },
    Either(Vec<Vec<Piece>>),
}

/// The longest pattern with wildcards that is parsed (64 KiB): far longer than any tensor name.
pub const MAX_PATTERN: usize = 1 << 16;

/// A pattern with a wildcard, a class or braces, as opposed to a tensor's name.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Whether `pattern` matches the whole of `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == name;
    }
    if pattern.len() > MAX_PATTERN {
        return false;
    }
    let name: Vec<char> = name.chars().collect();
    let mut start = vec![false; name.len() + 1];
    start[0] = true;
    run(&parse(pattern, true), &name, start)[name.len()]
}

/// The pieces of `pattern`; braces only at the top level (`braces`).
fn parse(pattern: &str, braces: bool) -> Vec<Piece> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let parsed = match c {
            '*' => Some((Piece::Any, i + 1)),
            '?' => Some((Piece::One, i + 1)),
            '[' => class(&chars, i),
            '{' if braces => brace(&chars, i),
            _ => None,
        };
        match parsed {
            Some((piece, next)) => {
                // `**` is `*`.
                if !(piece == Piece::Any && pieces.last() == Some(&Piece::Any)) {
                    pieces.push(piece);
                }
                i = next;
            }
            None => {
                pieces.push(Piece::Char(c));
                i += 1;
            }
        }
    }
    pieces
}

/// `[...]` at `open`: the class and the index after `]`, or `None` if it does not close.
fn class(chars: &[char], open: usize) -> Option<(Piece, usize)> {
    let mut i = open + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    // A `]` first in the class is a member, as in the shell.
    let first = i;
    while i < chars.len() && (chars[i] != ']' || i == first) {
        let low = chars[i];
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&c| c != ']') {
            ranges.push((low, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((low, low));
            i += 1;
        }
    }
    (i < chars.len()).then_some((Piece::Class { negated, ranges }, i + 1))
}

/// `{...}` at `open`: a number range `{A..B}` or alternatives `{x,y}`, and the index after `}`.
fn brace(chars: &[char], open: usize) -> Option<(Piece, usize)> {
    let close = open + 1 + chars[open + 1..].iter().position(|&c| c == '}')?;
    let inner: String = chars[open + 1..close].iter().collect();
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if let Some((a, b)) = inner.split_once("..") {
        if let (Some(low), Some(high)) = (number(a), number(b)) {
            return Some((
                Piece::Number {
                    low: low.min(high),
                    high: low.max(high),
                },
                close + 1,
            ));
        }
    }
    if inner.contains(',') {
        let options = inner.split(',').map(|o| parse(o, false)).collect();
        return Some((Piece::Either(options), close + 1));
    }
    None
}

/// The positions of `name` reachable after `pieces`, from the positions `start`.
fn run(pieces: &[Piece], name: &[char], mut at: Vec<bool>) -> Vec<bool> {
    let n = name.len();
    for piece in pieces {
        let mut next = vec![false; n + 1];
        match piece {
            Piece::Any => {
                if let Some(first) = at.iter().position(|&r| r) {
                    next[first..].iter_mut().for_each(|r| *r = true);
                }
            }
            Piece::Either(options) => {
                for option in options {
                    let reached = run(option, name, at.clone());
                    next.iter_mut().zip(reached).for_each(|(r, o)| *r |= o);
                }
            }
            Piece::Number { low, high } => {
                for i in (0..n).filter(|&i| at[i]) {
                    let mut value: u64 = 0;
                    let mut j = i;
                    while j < n && j - i < 18 && name[j].is_ascii_digit() {
                        value = value * 10 + name[j].to_digit(10).unwrap_or(0) as u64;
                        j += 1;
                        // `01` is not the number 1 of a layer's name.
                        let canonical = j - i == 1 || name[i] != '0';
                        if canonical && (*low..=*high).contains(&value) {
                            next[j] = true;
                        }
                    }
                }
            }
            single => {
                for i in (0..n).filter(|&i| at[i]) {
                    let c = name[i];
                    let fits = match single {
                        Piece::Char(p) => *p == c,
                        Piece::One => true,
                        Piece::Class { negated, ranges } => {
                            ranges.iter().any(|&(a, b)| (a..=b).contains(&c)) != *negated
                        }
                        _ => false,
                    };
                    next[i + 1] |= fits;
                }
            }
        }
        at = next;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*.weight", "layer1.0.conv1.weight"));
        assert!(glob_match("features.*", "features.0.weight"));
        assert!(glob_match("fc?.weight", "fc1.weight"));
        assert!(glob_match("fc1.weight", "fc1.weight"));
        assert!(!glob_match("fc1.weight", "fc1.weight_orig"));
        assert!(!glob_match("*.weight", "fc1.bias"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!is_glob("fc1.weight"));
        assert!(is_glob("layers.[0-3].*") && is_glob("layers.{0..3}.x"));
    }

    #[test]
    fn classes_and_ranges_say_which_layers() {
        let q = |i: u32| format!("model.layers.{i}.self_attn.q_proj.weight");
        let selected = |pattern: &str| -> Vec<u32> {
            (0..24).filter(|&i| glob_match(pattern, &q(i))).collect()
        };
        assert_eq!(selected("model.layers.[0-3].*"), [0, 1, 2, 3]);
        assert_eq!(selected("model.layers.[!0-3].*"), [4, 5, 6, 7, 8, 9]);
        assert_eq!(
            selected("model.layers.{0..11}.*"),
            (0..12).collect::<Vec<_>>()
        );
        assert_eq!(selected("model.layers.{20..30}.*"), [20, 21, 22, 23]);
        assert_eq!(selected("model.layers.{1,5,12}.*"), [1, 5, 12]);
        assert!(glob_match("*.{q,k,v}_proj.weight", &q(3)));
        assert!(!glob_match("*.{k,v}_proj.weight", &q(3)));
        assert!(glob_match("*.[qkv]_proj.*", &q(3)));
        // Not a number of the range: a leading zero, a longer number.
        assert!(!glob_match("l.{1..3}", "l.01"));
        assert!(!glob_match("l.{1..3}", "l.13"));
        // Unclosed brackets and braces are characters.
        assert!(glob_match("a[b", "a[b") && glob_match("a{b", "a{b"));
        assert!(glob_match("[]]", "]"));
    }

    #[test]
    fn a_long_pattern_is_matched_in_linear_time() {
        let pattern = "*a".repeat(MAX_PATTERN / 2);
        let start = std::time::Instant::now();
        assert!(!glob_match(&pattern, &"a".repeat(100)));
        assert!(glob_match(&"*a".repeat(50), &"a".repeat(100)));
        assert!(start.elapsed().as_secs() < 20);
        assert!(!glob_match(&format!("{pattern}*"), "a"));
        assert!(glob_match(&"x".repeat(1 << 20), &"x".repeat(1 << 20)));
    }
}
