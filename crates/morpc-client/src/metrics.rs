//! The client's pool metrics (feature `metrics`, through the `metrics` facade); the
//! connection-level ones come from `morpc-backend`. Without the feature every function
//! here is an empty inline.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `morpc_client_backends` | gauge | `address` |
//! | `morpc_client_backend_creations_total` | counter | `outcome` = ok, error |
//! | `morpc_client_busy_total` | counter | (a send found every usable backend busy) |

use morpc_backend::Address;

#[cfg(feature = "metrics")]
pub(crate) fn backends(address: &Address, count: usize) {
    metrics::gauge!("morpc_client_backends", "address" => address.to_string()).set(count as f64);
}

#[cfg(feature = "metrics")]
pub(crate) fn backend_created(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("morpc_client_backend_creations_total", "outcome" => outcome).increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn all_busy() {
    metrics::counter!("morpc_client_busy_total").increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn all_busy() {}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn backends(_address: &Address, _count: usize) {}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn backend_created(_ok: bool) {}
