//! `labimg`: bake immutable K3s node images and netboot them.
//!
//! A thin shim: parse the command line, call the library, print errors. Options are
//! declared on the library types (`BuildOptions`, `ServeOptions`, `labimg_builder::cli`).

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use labimg_builder::{build::BuildOptions, cli};
use labimg_netboot::ServeOptions;

/// Bake immutable, Talos-like K3s node images (Raspberry Pi 5, Proxmox) and serve them over the network.
#[derive(Parser)]
#[command(name = "labimg", version, propagate_version = true)]
struct Args {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a profile's disk images, netboot artifacts, SHA256SUMS and manifest.json.
    Build {
        #[command(flatten)]
        profile: cli::ProfileArgs,
        #[command(flatten)]
        opts: BuildOptions,
    },
    /// Resolve, download and verify every Debian package a profile needs; print the set.
    Fetch(cli::FetchArgs),
    /// List, show or validate profiles.
    #[command(subcommand)]
    Profile(cli::ProfileCommand),
    /// Run the netboot appliance: DHCP (proxy or full), TFTP and HTTP for PXE, iPXE and Raspberry Pi clients.
    Serve(Box<ServeOptions>),
    /// Show a netbooted node's log lines, as it shipped them to `labimg serve`.
    Logs(labimg_netboot::logs::LogsArgs),
    /// Describe a built image folder (or its manifest.json) and check its SHA256SUMS.
    Inspect(cli::InspectArgs),
    /// Sign a built folder's SHA256SUMS with a minisign secret key (writes SHA256SUMS.minisig).
    Sign(cli::SignArgs),
    /// Create a minisign key pair (labimg.key, labimg.pub) in a folder.
    Keygen(cli::KeygenArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

fn run(args: Args) -> Result<()> {
    let dir = &args.global.profiles_dir;
    match args.command {
        Command::Build { profile, opts } => cli::build(&profile.load(dir)?, &opts),
        Command::Fetch(a) => cli::fetch(&a.profile.load(dir)?, a.cache, a.offline),
        Command::Profile(c) => c.run(dir),
        Command::Serve(opts) => labimg_netboot::serve(*opts),
        Command::Logs(a) => labimg_netboot::logs::show(&a),
        Command::Inspect(a) => cli::inspect(&a.path, a.public_key.as_deref()),
        Command::Sign(a) => cli::sign(&a.dir, &a.key),
        Command::Keygen(a) => cli::keygen(&a.dir, a.encrypt),
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut Args::command(), "labimg", &mut out);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.global.init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
