//! The supervisor (to be written).
use std::ffi::OsString;

/// Entry point of the `shoal-shim` binary; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let _ = args;
    1
}
