//! `labimg`: bake immutable K3s node images and netboot them.
//!
//! A thin shim: parse the command line, call the library, print errors.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use labimg_builder::{build, cli};

/// Bake immutable, Talos-like K3s node images (Raspberry Pi 5, Proxmox) and serve them over the network.
#[derive(Parser)]
#[command(name = "labimg", version, propagate_version = true)]
struct Args {
    /// Folder of named profiles (`--profile pi5` reads `<dir>/pi5.toml`).
    #[arg(
        long,
        global = true,
        env = "LABIMG_PROFILES",
        default_value = "profiles"
    )]
    profiles_dir: PathBuf,
    /// More logging (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log line format on stderr: text (an RFC 3339 UTC timestamp, the level, the
    /// message) or json (one object per line with `timestamp`, `level`, `message`).
    #[arg(
        long,
        global = true,
        env = "LABIMG_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Which profile, and overrides.
#[derive(clap::Args)]
struct ProfileArgs {
    /// Profile name (`pi5` → profiles/pi5.toml) or path to a .toml file.
    #[arg(long, short = 'p')]
    profile: String,
    /// Override a key, for example `--set k3s.version=v1.33.5+k3s1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Build a profile's disk images, netboot artifacts, SHA256SUMS and manifest.json.
    Build {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Output folder (default: images/<profile name>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Bake this k3s binary into the image instead of fetching the pinned one on first boot.
        #[arg(long)]
        k3s_binary: Option<PathBuf>,
        /// Download cache (default: $LABIMG_CACHE, else ~/.cache/labimg).
        #[arg(long, env = "LABIMG_CACHE")]
        cache: Option<PathBuf>,
        /// Also embed secrets (k3s token, Git credentials) in the disk images: only for
        /// per-node images you do not share. Such a build writes no netboot artifacts
        /// and no upgrade bundle (they are served to the whole LAN).
        #[arg(long)]
        embed_secrets: bool,
        /// Sign SHA256SUMS with this minisign secret key (writes SHA256SUMS.minisig;
        /// an encrypted key's password comes from LABIMG_SIGN_PASSWORD or the terminal).
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Build a per-node image: only this node of the profile's [[nodes]] in its node
        /// table (with --embed-secrets, only its secrets), written to images/<name>-<node>/.
        #[arg(long, value_name = "HOSTNAME")]
        node: Option<String>,
        /// Never use the network: every package and each suite's signed InRelease come
        /// from the cache, filled by an earlier online `fetch` or `build` (checked again).
        #[arg(long, env = "LABIMG_OFFLINE")]
        offline: bool,
    },
    /// Resolve, download and verify every Debian package a profile needs; print the set.
    Fetch {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Download cache (default: $LABIMG_CACHE, else ~/.cache/labimg).
        #[arg(long, env = "LABIMG_CACHE")]
        cache: Option<PathBuf>,
        /// Only check that the cache holds everything (no network): what an offline
        /// `build` will need.
        #[arg(long, env = "LABIMG_OFFLINE")]
        offline: bool,
    },
    /// List, show or validate profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Run the netboot appliance: DHCP (proxy or full), TFTP and HTTP for PXE, iPXE and Raspberry Pi clients.
    Serve(Box<ServeArgs>),
    /// Describe a built image folder (or its manifest.json) and check its SHA256SUMS.
    Inspect {
        /// An output folder such as images/proxmox, or a manifest.json.
        path: PathBuf,
        /// Also require SHA256SUMS.minisig to be a valid signature by this minisign public key.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Sign a built folder's SHA256SUMS with a minisign secret key (writes SHA256SUMS.minisig).
    Sign {
        /// An output folder such as images/proxmox.
        dir: PathBuf,
        /// minisign secret key (`labimg keygen`, or `minisign -G`; encrypted keys take
        /// their password from LABIMG_SIGN_PASSWORD or the terminal).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Create a minisign key pair (labimg.key, labimg.pub) in a folder.
    Keygen {
        /// Folder for the keys (created if missing; existing keys are never overwritten).
        dir: PathBuf,
        /// Encrypt the secret key with a password (LABIMG_SIGN_PASSWORD or typed);
        /// without it the key is unencrypted, for unattended builds.
        #[arg(long)]
        encrypt: bool,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

/// `labimg serve` options (see netboot/README.md for the trust model and the
/// capability it needs to bind ports 67 and 69).
#[derive(clap::Args)]
struct ServeArgs {
    /// Build output folder holding <profile>/netboot/ and <profile>/nodes/.
    #[arg(long, default_value = "images")]
    images: PathBuf,
    /// Inventory of nodes (TOML; reloaded when it changes).
    #[arg(long)]
    inventory: PathBuf,
    /// Interface to serve on (binds DHCP to it; gives the advertised address).
    #[arg(long)]
    interface: Option<String>,
    /// DHCP mode: proxy (answer PXE clients only, beside the home router), full, or off.
    #[arg(long, default_value = "proxy")]
    dhcp: labimg_netboot::DhcpMode,
    /// HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:80")]
    http_addr: std::net::SocketAddr,
    /// TFTP listen address (port 0 turns TFTP off).
    #[arg(long, default_value = "0.0.0.0:69")]
    tftp_addr: std::net::SocketAddr,
    /// Address put in DHCP replies and URLs (default: the interface's).
    #[arg(long)]
    advertise: Option<std::net::Ipv4Addr>,
    /// Full DHCP: first address of the pool.
    #[arg(long)]
    pool_start: Option<std::net::Ipv4Addr>,
    /// Full DHCP: last address of the pool.
    #[arg(long)]
    pool_end: Option<std::net::Ipv4Addr>,
    /// Full DHCP: router to hand out.
    #[arg(long)]
    router: Option<std::net::Ipv4Addr>,
    /// Full DHCP: DNS servers to hand out (repeatable).
    #[arg(long)]
    dns: Vec<std::net::Ipv4Addr>,
    /// State folder for leases and per-node tokens.
    #[arg(long, default_value = "/var/lib/labimg")]
    state_dir: PathBuf,
    /// iPXE binaries (default: <images>/ipxe as it is when it holds all of them, else
    /// <state-dir>/ipxe, fetched from Debian; the images folder is never written).
    #[arg(long)]
    ipxe_dir: Option<PathBuf>,
    /// Serve only profiles whose SHA256SUMS this minisign public key signed and whose
    /// netboot files match it (default: no check, with a warning).
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

impl From<ServeArgs> for labimg_netboot::ServeOptions {
    fn from(a: ServeArgs) -> Self {
        Self {
            images: a.images,
            inventory: a.inventory,
            interface: a.interface,
            dhcp: a.dhcp,
            http_addr: a.http_addr,
            tftp_addr: a.tftp_addr,
            advertise: a.advertise,
            pool_start: a.pool_start,
            pool_end: a.pool_end,
            router: a.router,
            dns: a.dns,
            state_dir: a.state_dir,
            ipxe_dir: a.ipxe_dir,
            public_key: a.public_key,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// List the profiles in the profiles folder.
    List,
    /// Print a profile (with --resolved: after `extends` and `--set`, with every default).
    Show {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(long)]
        resolved: bool,
    },
    /// Check profiles and report every problem with file, line and key.
    Validate {
        /// Profile names or paths.
        #[arg(required = true)]
        profiles: Vec<String>,
    },
}

fn run(args: Args) -> Result<()> {
    let dir = &args.profiles_dir;
    match args.command {
        Command::Build {
            profile,
            out,
            k3s_binary,
            cache,
            embed_secrets,
            sign_key,
            node,
            offline,
        } => {
            let p = cli::load_profile(&profile.profile, &profile.sets, dir)?;
            let opts = build::BuildOptions {
                out_dir: out,
                k3s_binary,
                cache_dir: cache,
                source_date_epoch: None,
                embed_secrets,
                sign_key,
                offline,
                node,
            };
            cli::build(&p, &opts)
        }
        Command::Fetch {
            profile,
            cache,
            offline,
        } => cli::fetch(
            &cli::load_profile(&profile.profile, &profile.sets, dir)?,
            cache,
            offline,
        ),
        Command::Profile(ProfileCommand::List) => cli::profile_list(dir),
        Command::Profile(ProfileCommand::Show { profile, resolved }) => {
            cli::profile_show(&profile.profile, &profile.sets, dir, resolved)
        }
        Command::Profile(ProfileCommand::Validate { profiles }) => {
            cli::profile_validate(&profiles, dir)
        }
        Command::Serve(serve) => labimg_netboot::serve((*serve).into()),
        Command::Inspect { path, public_key } => cli::inspect(&path, public_key.as_deref()),
        Command::Sign { dir, key } => cli::sign(&dir, &key),
        Command::Keygen { dir, encrypt } => cli::keygen(&dir, encrypt),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "labimg",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// Logs to stderr with RFC 3339 UTC timestamps (`2026-11-28T09:14:03.123456Z`:
/// tracing-subscriber's `SystemTime`), which a server's log under podman or in a file
/// needs; `json` gives one object per line for log collectors.
fn init_logging(verbose: u8, format: LogFormat) {
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose, args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
