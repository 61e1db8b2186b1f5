//! Content-addressed download cache: every file is stored under its SHA256
//! (`sha256/<aa>/<hex>`), re-hashed on every use, and only ever published by
//! renaming a fully downloaded and verified `.partial` file into place.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::artifact::hash_file;

/// How many downloads run at once.
const PARALLEL: usize = 4;

/// How many rounds over a file's URLs before a download fails.
const RETRIES: usize = 3;

/// A download refused because its content is not what the signed index says.
#[derive(Debug, thiserror::Error)]
#[error(
    "hash mismatch for {url}: expected sha256 {expected} ({expected_size} bytes), got {got} ({got_size} bytes)"
)]
pub struct HashMismatch {
    pub url: String,
    pub expected: String,
    pub expected_size: u64,
    pub got: String,
    pub got_size: u64,
}

/// One file to fetch: where from (tried in order) and what it must hash to.
#[derive(Clone, Debug)]
pub struct Download {
    pub urls: Vec<String>,
    pub size: u64,
    pub sha256: String,
}

/// The on-disk cache plus the HTTP agent that fills it.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    agent: ureq::Agent,
    offline: bool,
}

/// What an offline build lacks: named so the user knows to fetch once online.
#[derive(Debug, thiserror::Error)]
#[error(
    "offline: {what} is not in the cache {cache}; run the same `labimg fetch` or \
     `labimg build` once with network access to fill it"
)]
pub struct NotCached {
    pub what: String,
    pub cache: String,
}

impl Cache {
    /// A cache rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Cache> {
        let root = root.into();
        fs::create_dir_all(&root).with_context(|| format!("creating cache {}", root.display()))?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .user_agent(concat!("labimg/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Cache {
            root,
            agent: ureq::Agent::new_with_config(config),
            offline: false,
        })
    }

    /// Never touch the network: files come from the cache (re-verified as
    /// always) and each suite's `InRelease` from the last one fetched online,
    /// whose signature and `Valid-Until` are checked again now.
    pub fn offline(mut self, offline: bool) -> Cache {
        self.offline = offline;
        self
    }

    /// Whether this cache works without network ([`Cache::offline`]).
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn not_cached(&self, what: String) -> anyhow::Error {
        NotCached {
            what,
            cache: self.root.display().to_string(),
        }
        .into()
    }

    /// Where the last `InRelease` fetched from `url` is kept (by URL: it has no
    /// hash to be addressed by; its signature is what makes it trusted).
    fn release_path(&self, url: &str) -> PathBuf {
        let key = hex::encode(Sha256::digest(url.as_bytes()));
        self.root.join("releases").join(key)
    }

    /// `InRelease` from `url`: downloaded (and kept for offline builds), or in
    /// offline mode the copy kept by the last online run. `verify` checks the
    /// bytes first; only bytes that pass are kept.
    pub fn get_release<T>(&self, url: &str, verify: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
        let path = self.release_path(url);
        if self.offline {
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(_) => return Err(self.not_cached(url.to_owned())),
            };
            return verify(&bytes).with_context(|| format!("the cached copy of {url}"));
        }
        let bytes = self.get_bytes(url)?;
        let out = verify(&bytes)?;
        let dir = self.root.join("releases");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dir.join(format!(".partial-{}", std::process::id()));
        fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
        publish(&partial, &path)?;
        Ok(out)
    }

    /// The default cache: `$LABIMG_CACHE`, else `$XDG_CACHE_HOME/labimg`,
    /// else `~/.cache/labimg`.
    pub fn default_dir() -> Result<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(d) = env("LABIMG_CACHE") {
            return Ok(d);
        }
        if let Some(d) = env("XDG_CACHE_HOME") {
            return Ok(d.join("labimg"));
        }
        let home = env("HOME").context("neither LABIMG_CACHE, XDG_CACHE_HOME nor HOME is set")?;
        Ok(home.join(".cache/labimg"))
    }

    /// The cache at [`Cache::default_dir`].
    pub fn open_default() -> Result<Cache> {
        Cache::new(Self::default_dir()?)
    }

    /// Where a file with this SHA256 lives in the cache.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.root.join("sha256").join(prefix).join(sha256)
    }

    /// A cached file, re-hashed now. A corrupted or tampered entry is logged
    /// and deleted, and `None` returned so that it is fetched again.
    pub fn lookup(&self, size: u64, sha256: &str) -> Result<Option<PathBuf>> {
        let path = self.path_for(sha256);
        if !path.exists() {
            return Ok(None);
        }
        let (got, got_size) = hash_file(&path)?;
        if got == sha256 && got_size == size {
            return Ok(Some(path));
        }
        tracing::warn!(
            path = %path.display(),
            expected = sha256,
            got = %got,
            "cached file is corrupted; deleting and downloading it again"
        );
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(None)
    }

    /// Fetches one file into the cache (or finds it there) and returns its path.
    pub fn fetch(&self, d: &Download) -> Result<PathBuf> {
        self.fetch_with(d, None)
    }

    /// Fetches many files, [`PARALLEL`] at a time, with a progress bar when
    /// stderr is a terminal. Paths are returned in input order.
    pub fn fetch_many(&self, downloads: &[Download]) -> Result<Vec<PathBuf>> {
        let total: u64 = downloads.iter().map(|d| d.size).sum();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        });
        let next = Mutex::new(0usize);
        let results: Mutex<Vec<Option<Result<PathBuf>>>> =
            Mutex::new((0..downloads.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(downloads.len()) {
                s.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                            let i = *n;
                            *n += 1;
                            i
                        };
                        let Some(d) = downloads.get(i) else { break };
                        let r = self.fetch_with(d, bar.as_ref());
                        let failed = r.is_err();
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                        if failed {
                            // Stop handing out work; the error is reported below.
                            *next.lock().unwrap_or_else(|e| e.into_inner()) = downloads.len();
                        }
                    }
                });
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(results.len());
        for (r, d) in results.into_iter().zip(downloads) {
            match r {
                Some(r) => out.push(r?),
                None => bail!("download of {} was not attempted", d.urls.join(" or ")),
            }
        }
        Ok(out)
    }

    fn fetch_with(&self, d: &Download, bar: Option<&ProgressBar>) -> Result<PathBuf> {
        if let Some(p) = self.lookup(d.size, &d.sha256)? {
            tracing::debug!(path = %p.display(), "cache hit");
            if let Some(b) = bar {
                b.inc(d.size);
            }
            return Ok(p);
        }
        if self.offline {
            let url = d.urls.last().map_or("?", String::as_str);
            return Err(self.not_cached(format!("{url} (sha256 {})", d.sha256)));
        }
        let mut last_err = None;
        // Transient network failures (DNS, resets) get a few more tries.
        for attempt in 0..RETRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(attempt as u64));
            }
            for url in &d.urls {
                match self.download(url, d, bar) {
                    Ok(p) => return Ok(p),
                    // Bytes that do not hash right are an attack or a broken
                    // mirror: refuse outright rather than trying again.
                    Err(e) if e.downcast_ref::<HashMismatch>().is_some() => return Err(e),
                    Err(e) => {
                        tracing::debug!("{url}: {e:#}");
                        last_err = Some(e);
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no URL to download from")))
    }

    /// Downloads `url` to `<final>.partial` (resuming it with an HTTP Range
    /// request when it exists), verifies it and renames it into place.
    fn download(&self, url: &str, d: &Download, bar: Option<&ProgressBar>) -> Result<PathBuf> {
        let dest = self.path_for(&d.sha256);
        let dir = dest.parent().context("cache path has no parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let partial = dest.with_extension("partial");
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let resumed = have > 0 && have < d.size;
        if !resumed && have > 0 {
            fs::remove_file(&partial).ok();
        }
        let start = std::time::Instant::now();
        self.get_into(url, &partial, if resumed { have } else { 0 }, bar)?;
        let (got, got_size) = hash_file(&partial)?;
        if got != d.sha256 || got_size != d.size {
            fs::remove_file(&partial).ok();
            if resumed {
                // The kept prefix may have been the bad part: try once whole.
                tracing::warn!("{url}: resumed download did not verify; starting over");
                self.get_into(url, &partial, 0, bar)?;
                let (got, got_size) = hash_file(&partial)?;
                if got == d.sha256 && got_size == d.size {
                    return publish(&partial, &dest);
                }
                fs::remove_file(&partial).ok();
            }
            return Err(HashMismatch {
                url: url.to_owned(),
                expected: d.sha256.clone(),
                expected_size: d.size,
                got,
                got_size,
            }
            .into());
        }
        tracing::info!(
            "fetched {url} ({} bytes in {:.1?})",
            d.size,
            start.elapsed()
        );
        publish(&partial, &dest)
    }

    /// GETs `url` into `path`, appending from `offset` when the server honours
    /// the Range request.
    fn get_into(
        &self,
        url: &str,
        path: &Path,
        offset: u64,
        bar: Option<&ProgressBar>,
    ) -> Result<()> {
        let mut req = self.agent.get(url);
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let resp = req.call().with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 if offset > 0 => true,
            200 => false,
            _ => bail!("GET {url}: HTTP {status}"),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .with_context(|| format!("reading {url}"))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .with_context(|| format!("writing {}", path.display()))?;
            if let Some(b) = bar {
                b.inc(n as u64);
            }
        }
        file.sync_all().ok();
        Ok(())
    }

    /// GETs a small file that is never cached by hash (InRelease: the root of
    /// trust, fetched fresh every run and verified by signature instead).
    pub fn get_bytes(&self, url: &str) -> Result<Vec<u8>> {
        if self.offline {
            return Err(self.not_cached(url.to_owned()));
        }
        let mut attempt = 0;
        loop {
            match self.get_bytes_once(url) {
                Err(e) if attempt + 1 < RETRIES => {
                    tracing::debug!("{url}: {e:#}; retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(attempt as u64));
                }
                r => return r,
            }
        }
    }

    fn get_bytes_once(&self, url: &str) -> Result<Vec<u8>> {
        let resp = self
            .agent
            .get(url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            bail!("GET {url}: HTTP {status}");
        }
        let mut out = Vec::new();
        resp.into_body()
            .into_with_config()
            .limit(64 << 20)
            .reader()
            .read_to_end(&mut out)
            .with_context(|| format!("reading {url}"))?;
        Ok(out)
    }
}

fn publish(partial: &Path, dest: &Path) -> Result<PathBuf> {
    fs::rename(partial, dest)
        .with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    Ok(dest.to_path_buf())
}
