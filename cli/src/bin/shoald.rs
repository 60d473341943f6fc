//! `shoald`: the node daemon. Parses its flags, sets up logging, prepares the Unix socket
//! (refusing one another daemon answers on) and hands over to [`shoal_cli::daemon::run`]
//! until SIGINT or SIGTERM.

use std::fs;
use std::io::{self, IsTerminal};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use shoal_cli::client::Host;
use shoal_cli::daemon::{self, Config};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Group-readable socket: root and the socket's group (an admin group) may use the daemon.
const SOCKET_MODE: u32 = 0o660;

/// shoald: runs containers on this node and serves the shoal API on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "shoald", version)]
struct Args {
    /// Root directory of persistent state (images, containers)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/shoal")]
    data_root: PathBuf,
    /// Socket to listen on
    #[arg(
        short = 'H',
        long = "host",
        value_name = "unix:///PATH",
        default_value = shoal_cli::client::DEFAULT_HOST
    )]
    host: String,
    /// Path of the shoal-shim binary (default: next to shoald)
    #[arg(long, value_name = "PATH", hide = true)]
    shim: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    let host: Host = args.host.parse()?;
    let mut config = Config::new(&args.data_root);
    if let Some(shim) = args.shim {
        config.runtime.shim = shim;
    }
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let listener = bind(host.path())?;
        let served = daemon::run(config, listener, shutdown_signal()).await;
        // The socket is ours (bind checked nobody else answers on it): leave no stale file.
        if let Err(err) = fs::remove_file(host.path()) {
            tracing::warn!(socket = %host.path().display(), error = %err, "cannot remove socket");
        }
        served.with_context(|| format!("shoald on {host}"))
    })
}

/// Binds `path`, replacing a stale socket file but refusing one a live daemon answers on.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is listening on {}; give each shoald its own -H",
            path.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            // Nobody answers: a socket left by a daemon that died. Anything else at that
            // path is not ours to delete.
            let is_socket = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if !is_socket {
                bail!("{} exists and is not a socket", path.display());
            }
            fs::remove_file(path)
                .with_context(|| format!("remove stale socket {}", path.display()))?;
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the daemon can still be stopped by SIGKILL; containers
        // survive that by design.
        tracing::warn!("cannot install signal handlers; stop shoald with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
