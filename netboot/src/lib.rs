//! labimg netboot appliance: DHCP (proxy or full), TFTP and HTTP in one process, an
//! inventory of nodes, per-node config bundles, a log of boot events and the log
//! lines nodes ship.
//!
//! The CLI builds a [`ServeOptions`] and calls [`serve`]; tests build a [`Shared`]
//! and drive the pieces ([`http::router`], [`tftp::Tftp`], [`dhcp::DhcpServer`]) directly.

pub mod boot;
pub mod dhcp;
pub mod events;
pub mod http;
pub mod images;
pub mod inventory;
pub mod ipxe;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod ra;
pub mod tftp;
pub mod timeline;
pub mod tokens;
pub mod verify;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

pub use dhcp::DhcpMode;

/// Options of `labimg serve` (see netboot/README.md for the trust model and the
/// capability it needs to bind ports 67 and 69). A flag's `///` is its `--help`
/// text; fields without a flag (`#[arg(skip = …)]`) take the same value as
/// [`Default`], which a test checks.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Build output folder holding <profile>/netboot/ and <profile>/nodes/.
    #[arg(long, default_value = "images", env = "LABIMG_IMAGES")]
    pub images: PathBuf,
    /// Inventory of nodes (TOML; reloaded when it changes).
    #[arg(long, env = "LABIMG_INVENTORY")]
    pub inventory: PathBuf,
    /// Interface to serve on (binds DHCP to it; gives the advertised address).
    #[arg(long, env = "LABIMG_INTERFACE")]
    pub interface: Option<String>,
    /// DHCP mode: proxy (answer PXE clients only, beside the home router), full, or off.
    #[arg(long, default_value = "proxy", env = "LABIMG_DHCP")]
    pub dhcp: DhcpMode,
    /// Address the DHCP sockets bind to.
    #[arg(skip = Ipv4Addr::UNSPECIFIED)]
    pub dhcp_bind: Ipv4Addr,
    /// DHCP server port (67).
    #[arg(skip = 67u16)]
    pub dhcp_port: u16,
    /// PXE boot-server port (4011); 0 disables it.
    #[arg(skip = 4011u16)]
    pub pxe_port: u16,
    /// DHCP client port replies are broadcast to (68).
    #[arg(skip = 68u16)]
    pub dhcp_client_port: u16,
    /// HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:80", env = "LABIMG_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// TFTP listen address (port 0 turns TFTP off).
    #[arg(long, default_value = "0.0.0.0:69", env = "LABIMG_TFTP_ADDR")]
    pub tftp_addr: SocketAddr,
    /// Address put in DHCP replies and URLs (default: the interface's).
    #[arg(long, env = "LABIMG_ADVERTISE")]
    pub advertise: Option<Ipv4Addr>,
    /// Full DHCP: first address of the pool.
    #[arg(long, env = "LABIMG_POOL_START")]
    pub pool_start: Option<Ipv4Addr>,
    /// Full DHCP: last address of the pool.
    #[arg(long, env = "LABIMG_POOL_END")]
    pub pool_end: Option<Ipv4Addr>,
    /// Full mode: subnet mask handed out (255.255.255.0).
    #[arg(skip = Ipv4Addr::new(255, 255, 255, 0))]
    pub subnet_mask: Ipv4Addr,
    /// Full DHCP: router to hand out.
    #[arg(long, env = "LABIMG_ROUTER")]
    pub router: Option<Ipv4Addr>,
    /// Full DHCP: DNS servers to hand out (repeatable).
    #[arg(long, env = "LABIMG_DNS", value_delimiter = ',')]
    pub dns: Vec<Ipv4Addr>,
    /// Full mode: lease time in seconds (3600).
    #[arg(skip = 3600u32)]
    pub lease_secs: u32,
    /// Full mode: lease file (default `<state-dir>/leases.json`).
    #[arg(skip)]
    pub lease_file: Option<PathBuf>,
    /// State folder for leases and per-node tokens.
    #[arg(long, default_value = "/var/lib/labimg", env = "LABIMG_STATE_DIR")]
    pub state_dir: PathBuf,
    /// iPXE binaries (default: <images>/ipxe as it is when it holds all of them, else
    /// <state-dir>/ipxe, fetched from Debian; the images folder is never written).
    #[arg(long, env = "LABIMG_IPXE_DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// Most concurrent TFTP transfers (64).
    #[arg(skip = 64usize)]
    pub tftp_max_transfers: usize,
    /// Serve only profiles whose SHA256SUMS this minisign public key signed and whose
    /// netboot files match it (default: no check, with a warning).
    #[arg(long, value_name = "FILE", env = "LABIMG_PUBLIC_KEY")]
    pub public_key: Option<PathBuf>,
    /// IPv6 router advertisements that configure nothing (lifetime 0, no prefix), sent
    /// so iPXE and UEFI firmware stop waiting for an IPv6 router: auto (in full DHCP
    /// mode only), on, or off. Needs --interface.
    #[arg(long, default_value = "auto", env = "LABIMG_ROUTER_ADVERT")]
    pub router_advert: ra::RouterAdvert,
    /// Key file shared by replicas: per-node tokens and k3s node passwords are derived
    /// from it (HMAC-SHA256) instead of kept at random per server, so any replica
    /// serves a node's config. `once = true` nodes then need a single replica.
    #[arg(long, value_name = "FILE", env = "LABIMG_TOKEN_KEY_FILE")]
    pub token_key: Option<PathBuf>,
    /// Seconds running HTTP and TFTP transfers get to finish after SIGTERM or SIGINT
    /// (new ones are refused meanwhile); then the server exits anyway.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "LABIMG_DRAIN_TIMEOUT"
    )]
    pub drain_timeout: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            images: PathBuf::from("images"),
            inventory: PathBuf::from("inventory.toml"),
            interface: None,
            dhcp: DhcpMode::Proxy,
            dhcp_bind: Ipv4Addr::UNSPECIFIED,
            dhcp_port: 67,
            pxe_port: 4011,
            dhcp_client_port: 68,
            tftp_addr: SocketAddr::from(([0, 0, 0, 0], 69)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 80)),
            advertise: None,
            pool_start: None,
            pool_end: None,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            lease_secs: 3600,
            lease_file: None,
            state_dir: PathBuf::from("/var/lib/labimg"),
            ipxe_dir: None,
            tftp_max_transfers: 64,
            public_key: None,
            router_advert: ra::RouterAdvert::Auto,
            token_key: None,
            drain_timeout: 30,
        }
    }
}

/// Settings every service reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// Advertised server IP.
    pub advertise: Ipv4Addr,
    /// Advertised HTTP port.
    pub http_port: u16,
    /// Image directory.
    pub images: images::Images,
    /// iPXE binaries directory.
    pub ipxe_dir: PathBuf,
}

/// State shared by DHCP, TFTP and HTTP.
#[derive(Debug)]
pub struct Shared {
    /// Static settings.
    pub cfg: Config,
    /// Current inventory (swapped on reload).
    pub inventory: Arc<RwLock<Arc<inventory::Inventory>>>,
    /// Per-node tokens.
    pub tokens: tokens::TokenStore,
    /// Boot events.
    pub events: events::EventLog,
    /// Log lines nodes shipped (`<state-dir>/logs/`).
    pub logs: logs::LogStore,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Each node's boot as the server saw it.
    pub timeline: timeline::Timeline,
}

impl Shared {
    /// Builds the shared state; tokens and shipped logs live in `state_dir`.
    pub fn new(
        cfg: Config,
        inv: inventory::Inventory,
        state_dir: &std::path::Path,
    ) -> Result<Arc<Self>> {
        Self::with_token_key(cfg, inv, state_dir, None)
    }

    /// [`Shared::new`] whose tokens derive from `key` when there is one.
    pub fn with_token_key(
        cfg: Config,
        inv: inventory::Inventory,
        state_dir: &std::path::Path,
        key: Option<tokens::TokenKey>,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            cfg,
            inventory: Arc::new(RwLock::new(Arc::new(inv))),
            tokens: tokens::TokenStore::open_with_key(state_dir, key)?,
            events: Default::default(),
            logs: logs::LogStore::new(state_dir),
            metrics: Default::default(),
            timeline: Default::default(),
        }))
    }

    /// A snapshot of the current inventory.
    pub fn inventory(&self) -> Arc<inventory::Inventory> {
        self.inventory.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// `http://<ip>[:<port>]`.
    pub fn http_base(&self) -> String {
        match self.cfg.http_port {
            80 => format!("http://{}", self.cfg.advertise),
            p => format!("http://{}:{p}", self.cfg.advertise),
        }
    }
}

/// Runs the appliance until SIGINT or SIGTERM.
pub fn serve(opts: ServeOptions) -> Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve_async(opts))
}

/// Async form of [`serve`].
pub async fn serve_async(opts: ServeOptions) -> Result<()> {
    // Handlers first: a supervisor (or a test) that sends SIGTERM as soon as it reads
    // "listening" must get a clean shutdown, not the default action of the signal.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let inv = inventory::Inventory::load(&opts.inventory)?;
    let iface = opts
        .interface
        .as_deref()
        .map(net::interface_info)
        .transpose()?;
    let advertise = match (opts.advertise, &iface) {
        (Some(ip), _) => ip,
        (None, Some(i)) => i.ipv4,
        (None, None) => anyhow::bail!(
            "give --advertise or --interface: the server's IP goes into every boot URL"
        ),
    };
    let ipxe_loc = ipxe::locate(opts.ipxe_dir.as_deref(), &opts.images, &opts.state_dir);
    let cfg = Config {
        advertise,
        http_port: opts.http_addr.port(),
        images: images::Images {
            dir: opts.images.clone(),
            verifier: verify::for_images(opts.public_key.as_deref(), &opts.images)?,
        },
        ipxe_dir: ipxe_loc.dir.clone(),
    };
    // Fetched before anything listens, so the first PXE client finds its binary. A
    // failure (offline appliance) is logged, not fatal: Raspberry Pis and machines
    // whose binaries are already there still boot.
    if ipxe_loc.fetch {
        let (ipxe_dir, state_dir) = (ipxe_loc.dir.clone(), opts.state_dir.clone());
        let fetched = tokio::task::spawn_blocking(move || {
            ipxe::ensure(&ipxe_dir, download_cache(&state_dir)?)
        })
        .await
        .context("iPXE fetch task panicked")?;
        if let Err(e) = fetched {
            tracing::warn!(
                "iPXE binaries missing in {} and not fetched: {e:#}",
                ipxe_loc.dir.display()
            );
        }
    }
    tracing::info!("iPXE binaries from {}", ipxe_loc.dir.display());
    let token_key = opts
        .token_key
        .as_deref()
        .map(tokens::TokenKey::load)
        .transpose()?;
    if token_key.is_some() {
        tracing::info!("per-node tokens derived from the shared token key");
        let once: Vec<&str> = inv
            .nodes
            .iter()
            .filter(|n| n.once)
            .map(|n| n.hostname.as_str())
            .collect();
        if !once.is_empty() {
            tracing::warn!(
                "once = true is recorded per replica ({}): with several replicas each may \
                 hand the bundle out once; run one replica for these nodes",
                once.join(", ")
            );
        }
    }
    let shared = Shared::with_token_key(cfg, inv, &opts.state_dir, token_key)?;
    tokio::spawn(inventory::watch(
        opts.inventory.clone(),
        shared.inventory.clone(),
        std::time::Duration::from_secs(2),
    ));

    let mut tasks = tokio::task::JoinSet::new();
    // HTTP and TFTP drain on a signal (below); DHCP and the rest just stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut transfers = tokio::task::JoinSet::new();
    let listener = tokio::net::TcpListener::bind(opts.http_addr)
        .await
        .with_context(|| format!("binding HTTP to {}", opts.http_addr))?;
    tracing::info!("HTTP on {}", opts.http_addr);
    let app = http::router(shared.clone());
    let mut http_stop = stop_rx.clone();
    transfers.spawn(async move {
        // The peer address attributes artifact fetches to a node's boot timeline.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await
        .context("HTTP server")
    });
    if opts.tftp_addr.port() != 0 {
        let mtu = iface.as_ref().map(|i| i.mtu);
        let tftp =
            tftp::Tftp::bind(opts.tftp_addr, shared.clone(), opts.tftp_max_transfers, mtu).await?;
        tracing::info!("TFTP on {}", opts.tftp_addr);
        transfers.spawn(async move { tftp.run_until(stop_rx).await });
    }
    if opts.dhcp != DhcpMode::Off {
        let server = dhcp::DhcpServer::bind(&opts, shared.clone()).await?;
        tasks.spawn(async move { server.run().await });
    }
    ra::spawn(&opts, &mut tasks)?;
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        Some(r) = tasks.join_next() => {
            r.context("service task panicked")??;
        }
        Some(r) = transfers.join_next() => {
            r.context("service task panicked")??;
        }
    }
    tasks.abort_all();
    // Drain: no new connections or TFTP requests; running transfers get
    // --drain-timeout to finish, so a restart does not cut a node's boot in half.
    let _ = stop_tx.send(true);
    let limit = std::time::Duration::from_secs(opts.drain_timeout);
    tracing::info!(
        "draining: new transfers refused, running ones get up to {} s",
        limit.as_secs()
    );
    tokio::select! {
        r = tokio::time::timeout(limit, async {
            while let Some(r) = transfers.join_next().await {
                match r {
                    Ok(Err(e)) => tracing::warn!("while draining: {e:#}"),
                    Err(e) if e.is_panic() => tracing::warn!("service task panicked: {e}"),
                    _ => {}
                }
            }
        }) => match r {
            Ok(()) => tracing::info!("drained: every transfer finished"),
            Err(_) => tracing::warn!(
                "drain timeout ({} s) passed: cutting the transfers still running",
                limit.as_secs()
            ),
        },
        _ = int.recv() => tracing::warn!("second signal: stopping without waiting"),
        _ = term.recv() => tracing::warn!("second signal: stopping without waiting"),
    }
    transfers.abort_all();
    Ok(())
}

/// The download cache for the iPXE package: the builder's default (`$LABIMG_CACHE`,
/// `$XDG_CACHE_HOME/labimg`, `~/.cache/labimg`), else `<state-dir>/cache` for a
/// service user without a home.
fn download_cache(state_dir: &std::path::Path) -> Result<labimg_builder::debian::Cache> {
    let dir =
        labimg_builder::debian::Cache::default_dir().unwrap_or_else(|_| state_dir.join("cache"));
    labimg_builder::debian::Cache::new(dir)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: super::ServeOptions,
    }

    /// The flags' defaults and the `#[arg(skip = …)]` values are [`Default`]'s: a
    /// library caller and `labimg serve` get the same appliance.
    #[test]
    fn cli_defaults_are_the_default() {
        let cli = Cli::try_parse_from(["serve", "--inventory", "inventory.toml"]).unwrap();
        assert_eq!(
            format!("{:?}", cli.opts),
            format!("{:?}", super::ServeOptions::default())
        );
    }
}
