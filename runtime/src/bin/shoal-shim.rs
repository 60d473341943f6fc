//! `shoal-shim`: the per-container supervisor. All logic lives in
//! `shoal_runtime::process::shim`; this file only hands over the arguments.

fn main() {
    std::process::exit(shoal_runtime::process::shim::main(
        std::env::args_os().collect(),
    ));
}
