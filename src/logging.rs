//! Logging setup: human-readable by default, JSON on request. `-d` raises
//! the level as epmd's debug flag does; `RUST_LOG` overrides both.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat, debug: u8) {
    let default = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a terminal: escape codes in a container log are noise,
    // and formatting them is a large share of a registration's CPU.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        // The same lines as the default format, written cheaply (see log_line).
        LogFormat::Human => builder
            .event_format(crate::log_line::HumanLine::default())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
