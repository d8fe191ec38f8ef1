//! Text and JSON output: terminal-safe printing, times, sizes, counts, snapshots.

use serde_json::json;
use sqlvault_format::Manifest;

// Names, paths and messages printed by the CLI come from repositories (a write key
// chooses a snapshot's database name, host and source path), from databases and from
// error messages that quote them: every line goes through [`terminal_safe`], so none
// can carry a terminal escape sequence or break the line it is printed in. These
// shadow std's macros in every module declared after this one; JSON goes through
// [`print_json`].
macro_rules! println {
    () => { ::std::println!() };
    ($($arg:tt)*) => { ::std::println!("{}", $crate::render::terminal_safe(&::std::format!($($arg)*))) };
}
macro_rules! eprintln {
    () => { ::std::eprintln!() };
    ($($arg:tt)*) => { ::std::eprintln!("{}", $crate::render::terminal_safe(&::std::format!($($arg)*))) };
}
// Unused today; kept so that a future `eprint!` is terminal-safe too.
#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => { ::std::eprint!("{}", $crate::render::terminal_safe(&::std::format!($($arg)*))) };
}

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL, C1: ESC
/// starts escape sequences, CR and LF break lines) and the bidirectional controls that
/// reorder what is displayed.
pub fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character [`unsafe_on_terminal`] written as `\u{..}`, as
/// `escape_debug` writes it: one printed line, and what it shows is what it holds.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_on_terminal) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_on_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints a command's JSON document, with the requests the command made (`requests`:
/// GET, PUT, LIST, DELETE, HEAD and retries), replacing any per-operation count.
pub fn print_json(v: &serde_json::Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("requests".into(), json!(crate::cmd::command_requests()));
    }
    let text = serde_json::to_string_pretty(&v).expect("json");
    // serde_json escapes C0 controls; the others (DEL, C1, bidi) can only occur inside
    // strings, where `\uXXXX` means the same character.
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && unsafe_on_terminal(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    // A reader that went away (`| head`) is not an error of the command: its exit code
    // still says how it went, and `println!` would panic on the closed pipe.
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{out}");
}

/// Serialises an engine report for [`print_json`].
pub fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("json")
}

/// A time as every output shows it: UTC, RFC 3339, to the second (`2024-05-01T12:00:00Z`),
/// without pulling a date crate into the binary.
pub fn time_str(ms: i64) -> String {
    sqlvault_engine::retention::iso_time(ms)
}

/// `1 snapshot`, `2 snapshots`, `0 snapshots`: `noun` is the singular, `plural` its plural.
pub fn count<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str, plural: &str) -> String {
    let one = n == N::from(1);
    format!("{n} {}", if one { noun } else { plural })
}

/// [`count`] for nouns whose plural adds an `s`.
pub fn counts<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    let one = n == N::from(1);
    format!("{n} {noun}{}", if one { "" } else { "s" })
}

/// Sizes in binary units, one decimal (`1.5 MiB`), bytes exact.
pub fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Whether `m` is dated beyond this host's clock and [`sqlvault_engine::retention::CLOCK_SKEW`].
pub fn future_dated(m: &Manifest) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    sqlvault_engine::retention::is_future_dated(m.created_ms, now)
}

pub fn snapshot_json(m: &Manifest) -> serde_json::Value {
    json!({
        "future_dated": future_dated(m),
        "id": m.id.to_string(),
        "short_id": m.id.short(),
        "name": m.name,
        "time": time_str(m.created_ms),
        "created_ms": m.created_ms,
        "host": m.host,
        "source_path": m.source_path,
        "kind": m.kind,
        "page_size": m.page_size,
        "page_count": m.page_count,
        "size": m.db_size(),
        "journal_mode": m.journal_mode,
        "parent": m.parent.map(|p| p.to_string()),
        "bytes_new": m.stats.bytes_new,
        "dump_bytes": m.dump.as_ref().map(|_| m.stats.bytes_read),
        "source_check": m.source_check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_only_for_one() {
        assert_eq!(counts(1u32, "snapshot"), "1 snapshot");
        assert_eq!(counts(0u32, "snapshot"), "0 snapshots");
        assert_eq!(count(2u32, "index", "indexes"), "2 indexes");
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(time_str(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_str(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn escapes_reach_no_terminal() {
        assert_eq!(terminal_safe("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(terminal_safe("plain"), "plain");
    }
}
