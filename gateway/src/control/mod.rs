//! The local control API (tonic over a Unix socket): the admin CLI talks to the controller
//! through it.
pub mod client;
pub mod server;

pub use client::connect;
pub use server::{ControlService, serve};
