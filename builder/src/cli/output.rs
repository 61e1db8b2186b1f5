//! Standard output of the commands: a writer that marks a closed pipe
//! (`labimg inspect … | head`) so `main` can exit quietly instead of panicking
//! the way `println!` does, and `--json` printing.

use std::io::{self, ErrorKind, Write};

use anyhow::{Context, Result};
use serde::Serialize;

/// Standard output went away: its reader closed the pipe.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
pub struct StdoutClosed;

/// Locked standard output whose broken-pipe errors carry [`StdoutClosed`].
#[derive(Debug)]
pub struct Stdout(io::StdoutLock<'static>);

/// Standard output for a command's results (logs go to stderr).
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == ErrorKind::BrokenPipe {
        io::Error::new(ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` is (or was caused by) standard output closing under a command.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Prints `value` as one pretty JSON document and a newline on standard output.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serializing the result as JSON")?;
    let mut out = stdout();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_recognised_only_when_marked() {
        let marked: anyhow::Error = mark(io::Error::from(ErrorKind::BrokenPipe)).into();
        assert!(is_stdout_closed(&marked.context("printing")));
        // A pipe to a child process breaking is a real error.
        let other: anyhow::Error = io::Error::from(ErrorKind::BrokenPipe).into();
        assert!(!is_stdout_closed(&other));
    }
}
