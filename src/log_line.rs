//! The human log line, written directly. tracing-subscriber's default format
//! goes through its general machinery for every event (a styled writer even
//! without colour, Debug-formatted fields, a fresh RFC 3339 date): several
//! thousand instructions per line, which made the two lines logged for each
//! registration most of a registration's cost. This writes the same line —
//!
//! `2026-11-30T00:10:31.864259Z  INFO kube_epmd::server::dispatch: node registered node=n port=4200`
//!
//! — with the date part formatted once per second, and the whole line built
//! in a reused buffer with plain pushes (numbers by itoa, only `%`/`?`
//! values through `fmt`), escaped by one byte scan per value and handed to
//! the writer in one call: no allocation and no dynamic call per piece.
//! Colour (a terminal) and events inside spans keep the default format.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format for human logs (see the module doc).
#[derive(Debug, Default)]
pub struct HumanLine {
    fallback: Format,
}

thread_local! {
    /// The line being assembled: built here with plain `String` pushes and
    /// handed to the writer whole, instead of a dynamic `fmt::Write` call
    /// (and an escaping adapter) per piece. Kept, so no allocation per line.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl<S, N> FormatEvent<S, N> for HumanLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if w.has_ansi_escapes() || ctx.lookup_current().is_some() {
            return self.fallback.format_event(ctx, w, event);
        }
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                format_line(&mut line, event);
                w.write_str(&line)
            }
            // A value whose Display logs an event itself: a line of its own.
            Err(_) => {
                let mut line = String::new();
                format_line(&mut line, event);
                w.write_str(&line)
            }
        })
    }
}

/// The whole line for `event`, newline included.
fn format_line(line: &mut String, event: &Event<'_>) {
    push_timestamp(line, SystemTime::now());
    let meta = event.metadata();
    line.push_str(match *meta.level() {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    });
    line.push_str(meta.target());
    line.push_str(": ");
    event.record(&mut Fields { line, first: true });
    line.push('\n');
}

/// Writes `message key=value ...` as tracing-subscriber's default fields
/// formatter does: strings quoted, other values by Debug (Display for `%`),
/// control characters escaped (node names come from the network).
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    /// Start the field: the separator and `name=` (none for the message).
    /// False if the field is not shown.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        if !std::mem::take(&mut self.first) {
            self.line.push(' ');
        }
        if name != "message" {
            self.line.push_str(name);
            self.line.push('=');
        }
        true
    }

    /// Write a value by formatting, then escape what it wrote.
    fn formatted(&mut self, value: fmt::Arguments<'_>) {
        let start = self.line.len();
        // Writing to a String cannot fail.
        let _ = self.line.write_fmt(value);
        escape_from(self.line, start);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.key(field) {
            return;
        }
        if field.name() == "message" {
            let start = self.line.len();
            self.line.push_str(value);
            escape_from(self.line, start);
        } else {
            self.formatted(format_args!("{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.formatted(format_args!("{value:?}"));
        }
    }
}

/// Escape ASCII control characters in `line[start..]`, so a value cannot
/// start a new line or send terminal escapes. One byte scan; the rare
/// value that needs escaping is rewritten.
fn escape_from(line: &mut String, start: usize) {
    // An ASCII control byte is a whole character in UTF-8, so slicing
    // around it stays on character boundaries.
    if !has_control(&line.as_bytes()[start..]) {
        return;
    }
    let raw = line.split_off(start);
    let mut rest = raw.as_str();
    while let Some(i) = rest.bytes().position(|b| b.is_ascii_control()) {
        line.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        // Writing to a String cannot fail.
        let _ = write!(line, "\\x{c:02x}");
        rest = &rest[i + 1..];
    }
    line.push_str(rest);
}

/// Whether `bytes` hold an ASCII control character (below 0x20, or DEL),
/// eight bytes at a time: every value of every line passes through here.
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        // A byte below 0x20 (high bit clear) borrows when 0x20 is taken
        // from it; DEL becomes zero when xored with 0x7f, and a zero byte
        // borrows when 1 is taken from it. Bytes with the high bit set
        // (UTF-8 beyond ASCII) are masked out by `!x`.
        let below = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        let del = x ^ (0x7f * ONES);
        let del = del.wrapping_sub(ONES) & !del & HIGH;
        if below | del != 0 {
            return true;
        }
    }
    words.remainder().iter().any(u8::is_ascii_control)
}

thread_local! {
    /// The second last written and its `YYYY-MM-DDTHH:MM:SS.` text.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it; the
/// date and time of day are formatted once per second.
fn push_timestamp(line: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != secs {
            date.1.clear();
            date.1.extend(date_text(secs).map(char::from));
            date.0 = secs;
        }
        line.push_str(&date.1);
    });
    let mut micros = ['0'; 6];
    let mut us = since.subsec_micros();
    for d in micros.iter_mut().rev() {
        *d = char::from(b'0' + (us % 10) as u8);
        us /= 10;
    }
    line.extend(micros);
    line.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch (UTC), by the civil
/// calendar algorithm of H. Hinnant (days -> year/month/day).
fn date_text(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, tod / 3600);
    put(14, 2, tod / 60 % 60);
    put(17, 2, tod % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |s: u64, us: u32| {
            let mut out = String::new();
            push_timestamp(&mut out, UNIX_EPOCH + Duration::new(s, us * 1000));
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_998_631, 864_259), "2026-11-30T00:30:31.864259Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }

    /// The word-at-a-time scan agrees with the byte-by-byte rule for every
    /// byte value in every position, next to ASCII and non-ASCII bytes.
    #[test]
    fn control_scan_matches_the_byte_rule() {
        for fill in [b'a', 0x7e, 0x80, 0xc3, 0xff, 0x20] {
            for len in 0..20 {
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut v = vec![fill; len];
                        v[at] = c;
                        assert_eq!(has_control(&v), v.iter().any(u8::is_ascii_control), "{v:?}");
                    }
                }
            }
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn events(name: &str) {
        tracing::info!(node = %name, port = 4200u16, creation = 1_795_998_631u32, "node registered");
        tracing::warn!(
            node = "epmd-starter-1",
            program = "rabbitmq_epmd_starter",
            "registration refused: outside {}",
            "4200-4210"
        );
        tracing::error!(error = %std::io::Error::other("boom"), retry_in = ?Duration::from_millis(5), "accept failed");
        tracing::info!("plain message");
    }

    /// The same events through this format and tracing-subscriber's default
    /// give the same lines after the timestamp.
    #[test]
    fn lines_match_the_default_format() {
        let run = |ours: bool, name: &'static str| {
            let buf = Buf::default();
            let w = buf.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(Level::TRACE)
                .with_writer(move || w.clone());
            if ours {
                tracing::subscriber::with_default(
                    builder.event_format(HumanLine::default()).finish(),
                    || events(name),
                );
            } else {
                tracing::subscriber::with_default(builder.finish(), || events(name));
            }
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| l[27..].to_string())
                .collect::<Vec<_>>()
        };
        let ours = run(true, "nœud");
        assert_eq!(ours.len(), 4, "{ours:?}");
        assert_eq!(ours, run(false, "nœud"));
        // Unlike the default, a node name cannot forge a second line.
        let forged = run(true, "n\nforged line");
        assert_eq!(forged.len(), 4, "{forged:?}");
        assert!(
            forged[0].contains("node=n\\x0aforged line port=4200"),
            "{}",
            forged[0]
        );
    }
}
