//! A progress line on stderr for long commands: bytes done, rate, and an ETA when
//! the total is known. Drawn only on a terminal, and never with `--json` or `--quiet`:
//! cron mail, journald and pipes must not collect carriage returns and escape codes.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cmd::Ctx;
use crate::render::{human, terminal_safe};

use sqlvault_engine::Progress;

/// Redraws at most this often: a pipeline advances thousands of times a second, and a
/// terminal that repaints that fast costs more than the line is worth.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// Erase the line: carriage return, then ANSI "erase entire line".
const CLEAR: &str = "\r\x1b[2K";

struct State {
    phase: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_draw: Option<Instant>,
    drawn: bool,
    out: Box<dyn Write + Send>,
}

/// [`Progress`] drawn on stderr; a no-op where it must not draw.
pub struct TerminalProgress {
    state: Option<Mutex<State>>,
}

impl std::fmt::Debug for TerminalProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalProgress")
            .field("enabled", &self.state.is_some())
            .finish()
    }
}

impl TerminalProgress {
    /// Draws on stderr when it is a terminal and the command is neither `--json` nor
    /// `--quiet`; otherwise draws nothing at all.
    pub fn for_command(ctx: &Ctx) -> std::sync::Arc<TerminalProgress> {
        let draw = ctx.chatty() && std::io::stderr().is_terminal();
        std::sync::Arc::new(TerminalProgress::to(
            draw.then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>),
        ))
    }

    fn to(out: Option<Box<dyn Write + Send>>) -> TerminalProgress {
        TerminalProgress {
            state: out.map(|out| {
                Mutex::new(State {
                    phase: String::new(),
                    total: None,
                    done: 0,
                    started: Instant::now(),
                    last_draw: None,
                    drawn: false,
                    out,
                })
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.state
            .as_ref()
            .map(|m| f(&mut m.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl Progress for TerminalProgress {
    fn start(&self, phase: &str, total_bytes: Option<u64>) {
        self.with(|s| {
            clear(s);
            s.phase = terminal_safe(phase).into_owned();
            s.total = total_bytes;
            s.done = 0;
            s.started = Instant::now();
            s.last_draw = None;
        });
    }

    fn advance(&self, bytes: u64) {
        self.with(|s| {
            s.done = s.done.saturating_add(bytes);
            let now = Instant::now();
            if s.last_draw.is_some_and(|t| now.duration_since(t) < REDRAW_EVERY) {
                return;
            }
            s.last_draw = Some(now);
            let text = line(&s.phase, s.done, s.total, now.duration_since(s.started));
            // A progress line that cannot be written is not worth failing a backup for.
            let _ = write!(s.out, "{CLEAR}{text}");
            let _ = s.out.flush();
            s.drawn = true;
        });
    }

    fn finish(&self) {
        self.with(clear);
    }
}

fn clear(s: &mut State) {
    if s.drawn {
        let _ = write!(s.out, "{CLEAR}");
        let _ = s.out.flush();
        s.drawn = false;
    }
}

/// `backup: 12.0 MiB of 48.0 MiB (25%), 6.0 MiB/s, ETA 6s`, or without a total
/// `restore: 12.0 MiB, 6.0 MiB/s`.
fn line(phase: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate_text = format!("{}/s", human(rate as u64));
    match total {
        Some(t) if t > 0 => {
            let pct = (done.min(t) as f64 * 100.0 / t as f64) as u64;
            let eta = if rate >= 1.0 {
                eta(Duration::from_secs_f64(t.saturating_sub(done) as f64 / rate))
            } else {
                "?".to_string()
            };
            format!(
                "{phase}: {} of {} ({pct}%), {rate_text}, ETA {eta}",
                human(done),
                human(t)
            )
        }
        _ => format!("{phase}: {}, {rate_text}", human(done)),
    }
}

/// `45s`, `3m05s`, `2h07m`.
fn eta(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_line_says_bytes_rate_and_eta() {
        let l = line("backup", 12 << 20, Some(48 << 20), Duration::from_secs(2));
        assert_eq!(l, "backup: 12.0 MiB of 48.0 MiB (25%), 6.0 MiB/s, ETA 6s");
        let l = line("restore", 12 << 20, None, Duration::from_secs(2));
        assert_eq!(l, "restore: 12.0 MiB, 6.0 MiB/s");
        assert_eq!(eta(Duration::from_secs(185)), "3m05s");
        assert_eq!(eta(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn redraws_are_throttled_and_the_line_is_cleared() {
        let sink = Sink::default();
        let p = TerminalProgress::to(Some(Box::new(sink.clone())));
        p.start("backup", Some(1000));
        for _ in 0..1000 {
            p.advance(1);
        }
        p.finish();
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        // A thousand advances within a few milliseconds: one draw, then the clear.
        assert_eq!(out.matches("backup:").count(), 1, "{out:?}");
        assert!(out.ends_with(CLEAR), "{out:?}");
    }

    #[test]
    fn nothing_is_written_where_it_must_not_draw() {
        let p = TerminalProgress::to(None);
        p.start("backup", None);
        p.advance(10);
        p.finish();
        assert!(p.state.is_none());
    }
}
