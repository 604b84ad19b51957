//! The binary's edge: parse arguments, set up logging, open the data dir, run a command.

pub mod args;
pub mod volume_cmds;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use args::{Cli, Command, VolumeCmd};
use logdisk::config::Config;
use logdisk::datadir::DataDir;

fn init_logging(verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => default,
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, "warn");
    let config = Config::load(cli.global.config.as_deref())?;
    let data_dir = cli
        .global
        .data_dir
        .clone()
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./logdisk-data"));
    let mut dd = DataDir::open(&data_dir, cli.global.backend.as_deref(), config)?;
    match cli.command {
        Command::Volume(cmd) => match cmd {
            VolumeCmd::Create { name, size, cluster_size, sco_size } => {
                volume_cmds::create(&dd, &name, &size, cluster_size.as_deref(), sco_size.as_deref())
            }
            VolumeCmd::List { json } => volume_cmds::list(&dd, json),
            VolumeCmd::Info { name, json } => volume_cmds::info(&mut dd, &name, json),
            VolumeCmd::Delete { name } => volume_cmds::delete(&dd, &name),
            VolumeCmd::Import { name, file, create } => volume_cmds::import(&mut dd, &name, &file, create),
            VolumeCmd::Export { name, file } => volume_cmds::export(&mut dd, &name, &file),
        },
    }
}
