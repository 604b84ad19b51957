//! `logdisk` binary: see `logdisk --help`.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        // One clear line; the chain of causes joined.
        let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
