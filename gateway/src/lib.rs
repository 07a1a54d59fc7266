//! xdpgate: an eBPF/XDP dynamic firewall gateway that keeps VPN ports invisible until a
//! client's approval opens them for that client's addresses.
//!
//! The `xdpgate` binary (`main.rs`) is a thin CLI over these modules.
pub mod approval;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod controller;
pub mod decisions;
pub mod device;
pub mod enrollment;
pub mod gate;
pub mod metrics;
pub mod opening_record;
pub mod openings;
pub mod passcode;
pub mod reload;
pub mod shutdown;
pub mod signed_notice;
pub mod store;
pub mod supervisor;
pub mod vpn;

// The web front and what it shares with the controller (TLS, sd_notify, the metrics
// listener, the cluster client side) are the `xdpgate-web` crate, which cannot reach keys,
// maps or state; these names keep the paths users and tests know.
pub use xdpgate_web::{self as web, service, tls};
