//! Test support shared by morpc's crates (not published).
//!
//! - [`golden`]: the frames produced by MatrixOne's Go implementation (copied from
//!   `shared/wire/`) and a parser for their format.
//! - [`proxy`]: a fault-injecting TCP proxy for reliability tests (loopback only).
//! - [`time`]: generous bounds (`within`, `eventually`) for tests on slow machines.

pub mod golden;
pub mod proxy;
pub mod time;
