//! The human log line, written directly. tracing-subscriber's default format
//! goes through its general machinery for every event (a styled writer even
//! without colour, Debug-formatted fields, a fresh RFC 3339 date): several
//! thousand instructions per line, which made the two lines logged for each
//! registration most of a registration's cost. This writes the same line —
//!
//! `2026-11-30T00:10:31.864259Z  INFO kube_epmd::server::dispatch: node registered node=n port=4200`
//!
//! — with the date part cached per second and fields written as they come.
//! Colour (a terminal) and events inside spans keep the default format.

use std::cell::Cell;
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
        write_timestamp(&mut w, SystemTime::now())?;
        let meta = event.metadata();
        w.write_str(match *meta.level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        let mut fields = Fields {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

/// Writes `message key=value ...` as tracing-subscriber's default fields
/// formatter does: strings quoted, other values by Debug (Display for `%`),
/// control characters escaped (node names come from the network).
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Escaped<'_, '_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.w.write_char(' ')?;
            }
            if name != "message" {
                self.w.write_str(name)?;
                self.w.write_char('=')?;
            }
            value(&mut Escaped(self.w))
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, |w| w.write_str(value));
        } else {
            self.field(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.0.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.0.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

/// Escapes ASCII control characters, so a value cannot start a new line or
/// send terminal escapes.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Byte scan: an ASCII control byte is a whole character in UTF-8,
        // so slicing around it stays on character boundaries.
        let mut rest = s;
        while let Some(i) = rest.bytes().position(|b| b.is_ascii_control()) {
            self.0.write_str(&rest[..i])?;
            let c = rest.as_bytes()[i];
            write!(self.0, "\\x{c:02x}")?;
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

thread_local! {
    /// The second last written and its `YYYY-MM-DDTHH:MM:SS.` text.
    static DATE: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it.
fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = DATE.get();
    if cached != secs {
        text = date_text(secs);
        DATE.set((secs, text));
    }
    // Only ASCII digits and separators were written into `text`.
    w.write_str(std::str::from_utf8(&text).unwrap_or_default())?;
    let mut micros = [b'0'; 7];
    let mut us = since.subsec_micros();
    for d in micros[..6].iter_mut().rev() {
        *d = b'0' + (us % 10) as u8;
        us /= 10;
    }
    micros[6] = b'Z';
    w.write_str(std::str::from_utf8(&micros).unwrap_or_default())
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
            write_timestamp(&mut out, UNIX_EPOCH + Duration::new(s, us * 1000)).unwrap();
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_998_631, 864_259), "2026-11-30T00:30:31.864259Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
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
