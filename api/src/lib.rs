//! The one crate through which everything in this project talks to CloudSigma.
//!
//! - [`models`]: serde types of API 2.0 objects and of the server context (always built).
//! - [`context`]: the serial-port server-context client ("cepko"), used by the node agent (always built).
//! - [`pool`]: VLAN address pools, the meta keys the controller writes and the agent reads (always built).
//! - `client` (feature `client`, on by default): the async REST client used by imgbuild, the
//!   controller and the emulator's tests.

pub mod context;
pub mod models;
pub mod pool;

#[cfg(feature = "client")]
pub mod client;

pub use models::*;
