//! Node logs shipped to the appliance (`POST /v1/nodes/<id>/logs`, the node's own
//! token) and read back by the operator (`GET /v1/nodes/<id>/logs`, `labimg logs`).
//!
//! Each node's lines are kept in `<state-dir>/logs/<hostname>.log`, every line
//! prefixed with the time it arrived. The store is a two-file ring: when the current
//! file would pass [`KEEP_BYTES`]` / 2` it becomes `<hostname>.log.1` (replacing the
//! older one), so a node never has more than [`KEEP_BYTES`] (plus one request) on disk.
//! Readers address the log by a logical byte position that only grows:
//! `<hostname>.log.base` holds the position of the oldest byte still kept.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Largest request body a node may post (its batch of lines).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The header carrying the position after the returned lines (`?since=` for the next read).
pub const LOG_NEXT_HEADER: &str = "labimg-log-next";
/// Longest line accepted (busybox syslogd splits at 256 bytes; k3s lines are shorter).
pub const MAX_LINE: usize = 4096;
/// What is kept per node: two files of half this each.
pub const KEEP_BYTES: u64 = 1024 * 1024;

/// Checks a posted body and returns its lines (a trailing `\r` removed, blank lines
/// skipped). Refused: a body that is not UTF-8, has control characters other than tab
/// (they would reach the operator's terminal), a line over [`MAX_LINE`], or no lines.
pub fn parse_lines(body: &[u8]) -> Result<Vec<&str>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let mut lines = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(format!("line {} longer than {MAX_LINE} bytes", i + 1));
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("line {} has control characters", i + 1));
        }
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Err("no log lines in the body".into());
    }
    Ok(lines)
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch: the builder's SBOM formatter.
pub use labimg_builder::date::rfc3339;

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The lines, each ending in `\n`.
    pub text: String,
    /// The position after the last byte: pass it as `since` to get only newer lines.
    pub next: u64,
}

/// The per-node log files under `<state-dir>/logs/`.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    keep: u64,
    lock: Mutex<()>,
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn read_or_empty(p: &Path) -> Result<Vec<u8>> {
    match std::fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

impl LogStore {
    /// The store for `state_dir` (its `logs/` folder is made on the first line).
    pub fn new(state_dir: &Path) -> Self {
        Self::with_keep(state_dir, KEEP_BYTES)
    }

    /// A store keeping about `keep` bytes per node (tests use a small one).
    pub fn with_keep(state_dir: &Path, keep: u64) -> Self {
        Self {
            dir: state_dir.join("logs"),
            keep,
            lock: Mutex::new(()),
        }
    }

    fn paths(&self, hostname: &str) -> (PathBuf, PathBuf, PathBuf) {
        let p = |ext: &str| self.dir.join(format!("{hostname}.{ext}"));
        (p("log"), p("log.1"), p("log.base"))
    }

    fn base(path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Appends `lines` for `hostname`, each prefixed with the time now; rotates first
    /// when they would take the current file past half of the store's size.
    pub fn append(&self, hostname: &str, lines: &[&str]) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let stamp = rfc3339(now);
        let mut out = String::new();
        for l in lines {
            out.push_str(&stamp);
            out.push(' ');
            out.push_str(l);
            out.push('\n');
        }
        let _guard = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("log store poisoned"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let (cur, old, base) = self.paths(hostname);
        let cur_len = len_of(&cur);
        if cur_len > 0 && cur_len + out.len() as u64 > self.keep / 2 {
            let dropped = len_of(&old);
            let new_base = Self::base(&base) + dropped;
            std::fs::rename(&cur, &old).with_context(|| format!("rotating {}", cur.display()))?;
            crate::tokens::write_private(&base, format!("{new_base}\n").as_bytes())?;
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&cur)
            .with_context(|| format!("opening {}", cur.display()))?;
        f.write_all(out.as_bytes())
            .with_context(|| format!("writing {}", cur.display()))
    }

    /// `hostname`'s kept lines from position `since` on (all kept ones without it, or
    /// when `since` is past the end: the store was reset), then only the last `tail`.
    pub fn read(&self, hostname: &str, since: Option<u64>, tail: Option<usize>) -> Result<LogRead> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| anyhow::anyhow!("log store poisoned"))?;
        let (cur, old, base) = self.paths(hostname);
        let mut data = read_or_empty(&old)?;
        data.extend(read_or_empty(&cur)?);
        let start = Self::base(&base);
        let next = start + data.len() as u64;
        let from = match since {
            Some(s) if s >= start && s <= next => (s - start) as usize,
            _ => 0,
        };
        let mut text = String::from_utf8_lossy(&data[from..]).into_owned();
        if let Some(n) = tail {
            let ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
            if ends.len() > n {
                let cut = if n == 0 {
                    text.len()
                } else {
                    ends[ends.len() - n - 1]
                };
                text.drain(..cut);
            }
        }
        Ok(LogRead { text, next })
    }
}

/// `labimg logs`: a node's shipped log lines, read from a running `labimg serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The node: its host name, MAC or Pi serial (as in the inventory).
    pub node: String,
    /// The `labimg serve` to ask (its HTTP address; serve's default is port 80).
    #[arg(long, env = "LABIMG_SERVER", default_value = "http://127.0.0.1")]
    pub server: String,
    /// Print only the last N lines (0: all that the server keeps).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub tail: usize,
    /// Keep printing lines as they arrive (asks every 2 s) until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Runs `labimg logs`: prints the node's lines to stdout.
pub fn show(args: &LogsArgs) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '.');
    anyhow::ensure!(
        !args.node.is_empty() && args.node.chars().all(ok),
        "{:?} is not a host name, MAC or Pi serial",
        args.node
    );
    let base = args.server.trim_end_matches('/');
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .user_agent(concat!("labimg/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let url = format!("{base}/v1/nodes/{}/logs", args.node);
    let first = match args.tail {
        0 => url.clone(),
        n => format!("{url}?tail={n}"),
    };
    let mut next = fetch(&agent, &first, &args.node, base)?;
    if next.text.is_empty() && !args.follow {
        eprintln!("no log lines from {} yet", args.node);
    }
    if !out(&next.text)? || !args.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        match fetch(
            &agent,
            &format!("{url}?since={}", next.next),
            &args.node,
            base,
        ) {
            Ok(r) => {
                if !out(&r.text)? {
                    return Ok(());
                }
                next = r;
            }
            // The server restarting is not the end of a follow.
            Err(e) => eprintln!("labimg logs: {e:#} (retrying)"),
        }
    }
}

/// Writes to stdout; false when the reader went away (`labimg logs … | head`).
fn out(text: &str) -> Result<bool> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn fetch(agent: &ureq::Agent, url: &str, node: &str, base: &str) -> Result<LogRead> {
    let mut resp = agent.get(url).call().with_context(|| {
        format!(
            "cannot reach labimg serve at {base} (give its address with --server or LABIMG_SERVER)"
        )
    })?;
    let status = resp.status().as_u16();
    let next = resp
        .headers()
        .get(LOG_NEXT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = resp
        .body_mut()
        .with_config()
        .limit(4 * KEEP_BYTES)
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    match (status, next) {
        (200, Some(next)) => Ok(LogRead { text, next }),
        (404, _) => anyhow::bail!("{base} does not know node {node:?}: {}", text.trim()),
        (200, None) => anyhow::bail!(
            "{base} is not a labimg serve with node logs (no {} header)",
            LOG_NEXT_HEADER
        ),
        (s, _) => anyhow::bail!("{url}: HTTP {s}: {}", text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked() {
        assert_eq!(parse_lines(b"a\r\n\nb\tc\n").unwrap(), vec!["a", "b\tc"]);
        assert!(parse_lines(b"\xff\n").unwrap_err().contains("UTF-8"));
        assert!(
            parse_lines(b"ok\n\x1b[31mred\n")
                .unwrap_err()
                .contains("line 2 has control")
        );
        assert!(parse_lines(b"\n \n").unwrap_err().contains("no log lines"));
        let long = "x".repeat(MAX_LINE + 1);
        assert!(parse_lines(long.as_bytes()).unwrap_err().contains("longer"));
    }

    #[test]
    fn ring_keeps_the_newest_and_positions_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::with_keep(dir.path(), 4096);
        assert_eq!(
            store.read("n1", None, None).unwrap(),
            LogRead {
                text: String::new(),
                next: 0
            }
        );
        let mut last_next = 0;
        for i in 0..500 {
            store.append("n1", &[&format!("line {i:04}")]).unwrap();
            let r = store.read("n1", None, None).unwrap();
            assert!(r.next > last_next);
            last_next = r.next;
        }
        let all = store.read("n1", None, None).unwrap();
        assert!(all.text.len() as u64 <= 4096, "{}", all.text.len());
        assert!(all.text.ends_with(" line 0499\n"));
        assert!(!all.text.contains("line 0000"));
        // Every line whole, each with its arrival time.
        for l in all.text.lines() {
            assert!(rfc3339_prefixed(l), "{l:?}");
        }
        let t = store.read("n1", None, Some(2)).unwrap();
        assert_eq!(t.text.lines().count(), 2);
        assert!(t.text.ends_with(" line 0499\n") && t.text.contains(" line 0498\n"));
        assert_eq!(store.read("n1", None, Some(0)).unwrap().text, "");
        // since: only what came after; past the end (a reset store): everything.
        store.append("n1", &["after"]).unwrap();
        let newer = store.read("n1", Some(last_next), None).unwrap();
        assert!(newer.text.ends_with(" after\n") && newer.text.lines().count() == 1);
        assert_eq!(
            store.read("n1", Some(newer.next + 10), None).unwrap().text,
            store.read("n1", None, None).unwrap().text
        );
        // Other nodes are separate; files are private.
        assert_eq!(store.read("n2", None, None).unwrap().text, "");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("logs/n1.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn rfc3339_prefixed(l: &str) -> bool {
        l.len() > 21 && l.as_bytes()[19] == b'Z' && l.as_bytes()[20] == b' '
    }
}
