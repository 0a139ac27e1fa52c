//! Test support shared by morpc's crates (not published).
//!
//! [`golden`] holds the frames produced by MatrixOne's Go implementation (copied from
//! `shared/wire/`) and a parser for their format.

pub mod golden;
