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
pub mod service;
pub mod shutdown;
pub mod signed_notice;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod vpn;
pub mod web;
