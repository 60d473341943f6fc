//! `shoal`: the client. Parses the command line (usage errors exit 125, as Docker's do) and
//! runs it against the daemon; the command's outcome decides the exit code.

use std::io::Write;

use clap::Parser;
use shoal_cli::commands::{self, Cli, EXIT_SHOAL_FAILED};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not failures.
            let code = if err.use_stderr() {
                EXIT_SHOAL_FAILED
            } else {
                0
            };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: start the async runtime: {err}");
            std::process::exit(EXIT_SHOAL_FAILED);
        }
    };
    let code = runtime.block_on(commands::run(cli)).report();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit with the runtime still alive: dropping it would wait for its blocking threads,
    // and a read of stdin (exec -i, run -i) blocks until the user types something.
    std::process::exit(code);
}
