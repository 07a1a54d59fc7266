//! What the kernel has attached to an interface right now, asked over rtnetlink
//! (`RTM_GETLINK`, the `IFLA_XDP` attributes), never remembered from start-up.
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The XDP state of one interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelXdp {
    /// The interface does not exist (in this network namespace).
    NoInterface,
    /// No XDP program is attached.
    None,
    /// A program is attached.
    Attached {
        /// Its program id.
        prog_id: u32,
        /// `native`, `generic`, `offload` or `multi`.
        mode: &'static str,
    },
}

impl std::fmt::Display for KernelXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoInterface => f.write_str("no such interface"),
            Self::None => f.write_str("no XDP program attached"),
            Self::Attached { prog_id, mode } => {
                write!(f, "XDP program {prog_id} attached ({mode})")
            }
        }
    }
}

/// Failure to ask the kernel.
#[derive(Debug, thiserror::Error)]
#[error("asking the kernel about {interface} over rtnetlink: {reason}")]
pub struct QueryError {
    interface: String,
    reason: String,
}

/// Asks the kernel what XDP program `interface` has now.
pub fn query(interface: &str) -> Result<KernelXdp, QueryError> {
    let fail = |reason: String| QueryError {
        interface: interface.to_owned(),
        reason,
    };
    let Ok(index) = nix::net::if_::if_nametoindex(interface) else {
        return Ok(KernelXdp::NoInterface);
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| fail(e.to_string()))?;
    socket.bind_auto().map_err(|e| fail(e.to_string()))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail(e.to_string()))?;
    let mut message = LinkMessage::default();
    message.header.index = index;
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(message)),
    );
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut request = vec![0; packet.buffer_len()];
    packet.serialize(&mut request);
    socket.send(&request, 0).map_err(|e| fail(e.to_string()))?;
    let mut answer = vec![0; 64 * 1024];
    let size = socket
        .recv(&mut &mut answer[..], 0)
        .map_err(|e| fail(e.to_string()))?;
    let bytes = answer.get(..size).unwrap_or_default();
    let reply: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(bytes).map_err(|e| fail(e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(xdp_of(&link)),
        NetlinkPayload::Error(err) if err.code.is_some() => {
            let code = err.code.map_or(0, |c| -c.get());
            if code == libc::ENODEV {
                Ok(KernelXdp::NoInterface)
            } else {
                Err(fail(err.to_io().to_string()))
            }
        }
        other => Err(fail(format!("unexpected answer {other:?}"))),
    }
}

fn xdp_of(link: &LinkMessage) -> KernelXdp {
    let mut prog_id = None;
    let mut mode = "unknown";
    for attribute in &link.attributes {
        if let LinkAttribute::Xdp(xdp) = attribute {
            for item in xdp {
                match item {
                    LinkXdp::ProgId(id) => prog_id = Some(*id),
                    LinkXdp::Attached(attached) => {
                        mode = match attached {
                            XdpAttached::None => return KernelXdp::None,
                            XdpAttached::Driver => "native",
                            XdpAttached::SocketBuffer => "generic",
                            XdpAttached::Hardware => "offload",
                            XdpAttached::Multiple => "multi",
                            _ => "unknown",
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    match prog_id {
        Some(prog_id) if prog_id != 0 => KernelXdp::Attached { prog_id, mode },
        _ => KernelXdp::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_a_missing_interface_is_reported() {
        // Loopback exists in every namespace and nothing here attaches XDP to it.
        assert_eq!(
            query("lo").unwrap_or_else(|e| panic!("{e}")),
            KernelXdp::None
        );
        assert_eq!(
            query("xdpgate-none0").unwrap_or_else(|e| panic!("{e}")),
            KernelXdp::NoInterface
        );
    }
}
