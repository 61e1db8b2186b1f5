//! `labimg`: bake immutable K3s node images and netboot them.
//!
//! A thin shim: parse the command line, call the library, print errors and turn
//! them into exit statuses ([`cli::exit`]). Options are declared on the library
//! types (`BuildOptions`, `ServeOptions`, `labimg_builder::cli`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use labimg_builder::{build::BuildOptions, cli};
use labimg_netboot::ServeOptions;

/// Bake immutable, Talos-like K3s node images (Raspberry Pi 5, Proxmox) and serve them over the network.
#[derive(Parser)]
#[command(
    name = "labimg",
    version,
    propagate_version = true,
    after_long_help = cli::EXIT_STATUS_HELP
)]
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
        /// Print one JSON object summing up the build on stdout when it is done (logs
        /// stay on stderr).
        #[arg(long)]
        json: bool,
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
    /// Secure Boot: create a key set (PK, KEK, db), sign and verify EFI binaries.
    #[command(subcommand)]
    Secureboot(cli::SecurebootCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (labimg.1 and one per subcommand) into a folder.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn run(args: Args) -> Result<()> {
    let dir = &args.global.profiles_dir;
    match args.command {
        Command::Build {
            profile,
            opts,
            json,
        } => cli::build(&profile.load(dir)?, &opts, json),
        Command::Fetch(a) => cli::fetch(&a.profile.load(dir)?, a.cache, a.offline),
        Command::Profile(c) => c.run(dir),
        Command::Serve(opts) => labimg_netboot::serve(*opts),
        Command::Logs(a) => labimg_netboot::logs::show(&a),
        Command::Inspect(a) if a.json => cli::inspect_json(&a.path, a.public_key.as_deref()),
        Command::Inspect(a) => cli::inspect(&a.path, a.public_key.as_deref()),
        Command::Sign(a) => cli::sign(&a.dir, &a.key),
        Command::Keygen(a) => cli::keygen(&a.dir, a.encrypt),
        Command::Secureboot(c) => c.run(),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "labimg", &mut script);
            let mut out = cli::stdout();
            out.write_all(&script)?;
            Ok(out.flush()?)
        }
        Command::Man { out } => write_man_pages(&out),
    }
}

/// Every man page of the command tree, as (file name, roff), parents first:
/// `labimg.1`, `labimg-build.1`, … `labimg-profile-list.1`. Hidden commands and
/// clap's `help` have none.
fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        pages.push((man.get_filename(), roff));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), pages)?;
        }
        Ok(())
    }
    let mut cmd = Args::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, &mut pages)?;
    Ok(pages)
}

/// `labimg man --out DIR` (hidden): what `tests/man.rs` compares with builder/man/.
fn write_man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, roff) in man_pages()? {
        let path = dir.join(name);
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit with clap's status 2; --help and --version with 0.
    let args = Args::parse();
    args.global.init_logging();
    match run(args).and_then(|()| Ok(cli::stdout().flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::is_stdout_closed(&e) => ExitCode::from(cli::exit::STDOUT_CLOSED),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
