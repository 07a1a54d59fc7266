//! VPN servers behind the gate: persistent tun interfaces made ahead of the unprivileged VPN
//! process, one-time OpenVPN tokens derived from approvals, and the follower of OpenVPN's
//! management interface that turns an approval's connect window into a session opening.
//!
//! See docs/OPENVPN.md for the OpenVPN server and client settings this expects.
pub mod management;
pub mod openvpn;
pub mod token;
pub mod tokens;
pub mod tun;

pub use openvpn::Follower;
pub use token::derive_token;
pub use tokens::VpnTokens;
