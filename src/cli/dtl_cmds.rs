//! `logdisk dtl serve`: run a DTL server until SIGTERM/SIGINT. Needs no logdisk data dir.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use logdisk::dtl::DtlServer;

#[derive(Subcommand, Debug)]
pub enum DtlCmd {
    /// Run a DTL server (needs no data dir; SIGTERM/SIGINT stop it)
    Serve(DtlServeArgs),
}

#[derive(Args, Debug)]
pub struct DtlServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:7400
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Where the logs of every volume are kept (DIR/VOLUME/)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// File holding the shared access token (clients use the same file)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The server's certificate chain (PEM); clients trust its CA with `dtl.ca_file`
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow what is otherwise refused: plain text (no --tls-cert) and clients without a
    /// token (no --token-file)
    #[arg(long)]
    pub insecure: bool,
}

/// Read the shared token: the file's bytes without surrounding whitespace; never empty.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    if token.len() > logdisk::dtl::protocol::MAX_TOKEN {
        bail!("token file {} holds more than {} bytes", path.display(), logdisk::dtl::protocol::MAX_TOKEN);
    }
    Ok(token)
}

pub fn serve(args: &DtlServeArgs) -> Result<()> {
    let token = match (&args.token_file, args.insecure) {
        (Some(f), _) => Some(read_token(f)?),
        (None, true) => {
            tracing::warn!("--insecure: any client that can reach {} may read and write the DTL", args.listen);
            None
        }
        (None, false) => {
            bail!("refusing to start the DTL server without access control: give --token-file FILE (or --insecure)")
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key, args.insecure) {
        (Some(c), Some(k), _) => Some(logdisk::dtl::tls::server_config(c, k)?),
        (None, None, true) => {
            tracing::warn!("--insecure without --tls-cert: DTL traffic on {} is plain text", args.listen);
            None
        }
        _ => {
            bail!("refusing to start the DTL server in plain text: give --tls-cert FILE --tls-key FILE (or --insecure)")
        }
    };
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let opts = logdisk::dtl::ServerOptions { tls, ..Default::default() };
    let server = DtlServer::start_with(args.listen.as_str(), &args.dir, token, opts)
        .with_context(|| format!("cannot start the DTL server on {}", args.listen))?;
    println!("DTL server listening on {} (dir {})", server.local_addr(), args.dir.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let sig = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!(signal = sig, "DTL server shutting down");
    server.stop();
    Ok(())
}
