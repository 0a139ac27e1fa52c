//! Test support shared by morpc's crates (not published).
//!
//! - [`golden`]: the frames produced by MatrixOne's Go implementation (copied from
//!   `shared/wire/`) and a parser for their format.
//! - [`proxy`]: a fault-injecting TCP proxy for reliability tests (loopback only).

pub mod golden;
pub mod proxy;
