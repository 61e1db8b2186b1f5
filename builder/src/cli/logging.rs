//! Log lines on stderr for every `labimg` command: the format servers and log
//! collectors read (`tests/serve.rs` checks it).

use std::io::IsTerminal;

/// `--log-format`. (No `///` on the variants: clap would turn them into a
/// possible-values list and change `--help`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // An RFC 3339 UTC timestamp, the level, the message.
    Text,
    // One JSON object per line with `timestamp`, `level`, `message`.
    Json,
}

/// Logs to stderr with RFC 3339 UTC timestamps (`2026-11-28T09:14:03.123456Z`:
/// tracing-subscriber's `SystemTime`), which a server's log under podman or in a file
/// needs; `json` gives one object per line for log collectors. `verbose` raises the
/// level (1: debug, 2: trace); `RUST_LOG` overrides it.
pub fn init_logging(verbose: u8, format: LogFormat) {
    let level = ["info", "debug", "trace"][usize::from(verbose.min(2))];
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::SystemTime)
        .with_target(false);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}
