//! Text for one-line messages: libtorch's first line, and names and patterns from files or
//! users made safe to show.
//!
//! Why a file of its own: it uses nothing, so that the `tch-prune` binary compiles the same
//! source (`#[path]`) for its error lines instead of the library exporting it as API.

/// The first meaningful line of a libtorch message, without tch's "Internal torch error:" prefix.
pub(crate) fn first_line(message: &str) -> String {
    // The prefix first: libtorch's own message may start on the next line.
    let message = message.trim_start();
    let message = message
        .strip_prefix("Internal torch error:")
        .unwrap_or(message);
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("libtorch gave no message")
        .to_string()
}

/// `text` made safe for a one-line message: control characters escaped, cut after `max_chars`
/// characters (marked by `…`). For names and patterns that come from files or users.
pub(crate) fn escaped_and_cut(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// libtorch's reason for a failed run: the interpreter's message starts with "The following
/// operation failed in the TorchScript interpreter." and a traceback, and ends with the
/// exception's own line (`RuntimeError: Expected 4D input...`); other messages are their first
/// line.
pub(crate) fn torchscript_reason(message: &str) -> String {
    let message = message.trim();
    if !message.contains("The following operation failed in the TorchScript interpreter") {
        return first_line(message);
    }
    let last = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("libtorch gave no message");
    last.split_once("Error: ")
        .map_or(last, |(_, why)| why)
        .to_string()
}

/// libtorch's whole message on one line: [`torchscript_reason`] first, then every line of the
/// message (the TorchScript traceback: which file, line and call of the model's code failed)
/// but libtorch's C++ frames, joined by ` | `. For errors of running a model's code, where the
/// first or last line alone does not say where it failed.
pub(crate) fn torchscript_whole(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("Internal torch error:").unwrap_or(l).trim()
        })
        .filter(|l| {
            !l.is_empty() && !l.starts_with("frame #") && !l.starts_with("Exception raised from")
        })
        .collect();
    // The reason read off the lines without the C++ frames, which may come last.
    let reason = torchscript_reason(&lines.join("\n"));
    if lines.len() <= 1 {
        return reason;
    }
    format!("{reason} [libtorch's whole message: {}]", lines.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripts_error_keeps_its_traceback() {
        let raw = "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript (most recent call last):\n  File \"code/__torch__.py\", line 9, in forward\n    return self.emb(ids)\nRuntimeError: Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int\nframe #0: c10::Error";
        let whole = torchscript_whole(raw);
        assert!(
            whole.starts_with("Expected tensor for argument #1"),
            "{whole}"
        );
        assert!(
            whole.contains("File \"code/__torch__.py\", line 9, in forward | return self.emb(ids)"),
            "{whole}"
        );
        assert!(
            !whole.contains("frame #") && !whole.contains('\n'),
            "{whole}"
        );
        assert_eq!(
            torchscript_whole("Internal torch error: one line"),
            "one line"
        );
    }

    #[test]
    fn torch_errors_keep_only_their_first_line() {
        let raw = "Internal torch error: shape '[3]' is invalid for input of size 4\nException raised from foo at bar.cpp:12\nframe #0: ...";
        assert_eq!(
            first_line(raw),
            "shape '[3]' is invalid for input of size 4"
        );
        let leading_newline = "Internal torch error: \nUnknown builtin op: aten::evil.\nframe #0";
        assert_eq!(
            first_line(leading_newline),
            "Unknown builtin op: aten::evil."
        );
        assert_eq!(first_line("\n\n"), "libtorch gave no message");
    }

    #[test]
    fn text_is_cut_and_escaped_for_one_line() {
        assert_eq!(escaped_and_cut("fc1.weight", 200), "fc1.weight");
        assert_eq!(escaped_and_cut("a\nb\r\u{0}", 200), "a\\nb\\r\\u{0}");
        let long = "x".repeat(500);
        assert_eq!(escaped_and_cut(&long, 200).chars().count(), 201);
    }

    #[test]
    fn the_reason_is_the_exception_line() {
        let m = "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript\n  File x\nRuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [1, 3]\n";
        assert_eq!(
            torchscript_reason(m),
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [1, 3]"
        );
        assert_eq!(torchscript_reason("one\ntwo"), "one");
    }
}
