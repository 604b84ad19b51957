//! `logdisk` binary: see `logdisk --help`.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        // One clear line; the chain of causes joined, without a cause the message
        // already ends with (an IO error names its OS error and also has it as source:
        // "cannot write TLog 41: No space left on device (os error 28)" once, not twice).
        let mut msg = String::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if msg.ends_with(&cause) {
                continue;
            }
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&cause);
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
