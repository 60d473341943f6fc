//! Tests of the image store through its public API: import, load of every archive format,
//! layer contents and overlay semantics, removal and garbage collection, concurrency, hostile
//! archives, and interoperability with umoci and skopeo. Fixtures are built in memory.
// A failed unwrap is the test's assertion.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod hostile;
mod load;
mod remove;
mod save;
mod tools;
