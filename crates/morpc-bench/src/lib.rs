//! The harness behind `morpc-bench` and `morpc bench` ([`loadgen`]), shared with the peers
//! workspace (`benches/peers/`):
//! the minimal hand-written tokio request/response every figure is a ratio to
//! ([`baseline`]), the measuring loop ([`harness`]) and the report ([`report`]).

pub mod baseline;
pub mod harness;
pub mod loadgen;
pub mod report;
