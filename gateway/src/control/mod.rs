//! The controller's gRPC APIs on Unix sockets: the admin control API (`server`, used by the
//! CLI through `client`) and the front API the web front submits requests to (`front`).
pub mod client;
mod devices;
pub mod front;
pub mod server;

pub use client::connect;
pub use front::serve_front;
pub use server::{ControlService, serve};
