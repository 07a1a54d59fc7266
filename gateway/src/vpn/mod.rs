//! VPN servers behind the gate: persistent tun interfaces made ahead of the unprivileged VPN
//! process, one-time OpenVPN passwords derived from approvals (`password`) and the table of
//! those waiting to be redeemed (`redemption`), and the follower of OpenVPN's
//! management interface that turns an approval's connect window into a session opening.
//!
//! See docs/OPENVPN.md for the OpenVPN server and client settings this expects.
pub mod management;
pub mod openvpn;
pub mod password;
pub mod redemption;
pub mod tun;

pub use openvpn::Follower;
pub use password::derive_token;
pub use redemption::VpnTokens;
