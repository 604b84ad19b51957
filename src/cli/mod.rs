//! The binary's edge: parse arguments, set up logging, open the data dir, run a command.

pub mod args;
pub mod backup;
pub mod dtl_cmds;
pub mod nbd_serve;
pub mod serve;
pub mod volume_cmds;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use args::{Cli, Command, VolumeCmd};
use dtl_cmds::DtlCmd;
use logdisk::config::Config;
use logdisk::datadir::DataDir;

fn init_logging(verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => default,
        1 => "info",
        _ => "debug",
    };
    // The AWS SDK logs the access key id at debug level: keep its crates at info or
    // quieter unless RUST_LOG asks otherwise.
    let quiet = "aws_smithy_runtime=info,aws_smithy_runtime_api=info,aws_config=info,aws_sdk_s3=info,aws_sigv4=info,hyper=info,hyper_util=info,h2=info,rustls=info";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},{quiet}")));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let is_serve = matches!(cli.command, Command::Serve(_) | Command::Dtl(DtlCmd::Serve(_)));
    init_logging(cli.global.verbose, if is_serve { "info" } else { "warn" });
    // The DTL server keeps other hosts' writes in its own dir: no data dir, no config.
    if let Command::Dtl(DtlCmd::Serve(args)) = &cli.command {
        return dtl_cmds::serve(args);
    }
    let mut config = Config::load(cli.global.config.as_deref())?;
    let keys = logdisk::crypto::store::sources(&cli.global.key_file, &cli.global.key_command);
    config.encryption.key_files.extend(cli.global.key_file.iter().cloned());
    config.encryption.key_commands.extend(cli.global.key_command.iter().cloned());
    let data_dir = cli
        .global
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./logdisk-data"));
    let request = volume_cmds::request_of(&cli.command, &keys)?;
    let mut dd = match DataDir::open(&data_dir, cli.global.backend.as_deref(), config) {
        Ok(dd) => dd,
        Err(e @ logdisk::Error::DataDirInUse { .. }) => {
            // A daemon holds the data dir: management commands go through its control socket.
            if !keys.is_empty() {
                // The daemon reads the keys (by id) from the sources the command names.
                let add = logdisk::control::protocol::Request::AddKeys { sources: keys.clone() };
                if let Some(Err(e)) = logdisk::control::client::try_request(&data_dir, &add) {
                    return Err(e.into());
                }
            }
            let answer = request.and_then(|req| logdisk::control::client::try_request(&data_dir, &req));
            return match answer {
                Some(v) => volume_cmds::print_result(&cli.command, &v?),
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(req) = request {
        return volume_cmds::run_request(&mut dd, &cli.command, req);
    }
    match cli.command {
        Command::Serve(args) => serve::serve(dd, args),
        Command::Volume(VolumeCmd::Import { name, file, diff: true, .. }) => backup::import_diff(&mut dd, &name, &file),
        Command::Volume(VolumeCmd::Import { name, file, create, offset, .. }) => {
            volume_cmds::import(&mut dd, &name, &file, create, &offset)
        }
        Command::Volume(VolumeCmd::Export { name, file, since: Some(since) }) => {
            backup::export_since(&mut dd, &name, &since, &file)
        }
        Command::Volume(VolumeCmd::Export { name, file, .. }) => volume_cmds::export(&mut dd, &name, &file),
        Command::Dtl(_) => unreachable!("dtl commands run before the data dir is opened"),
        _ => unreachable!("management commands are requests"),
    }
}
