//! OpenVPN's management protocol, the part xdpgate speaks: the `>CLIENT:` notifications of
//! `--management-client-auth` (each followed by `>CLIENT:ENV,name=value` lines up to
//! `>CLIENT:ENV,END`) and the `client-auth-nt` / `client-deny` answers. Pure: no I/O.
use std::{collections::HashMap, net::IpAddr};

/// What a client notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEventKind {
    /// A new client authenticates; must be answered.
    Connect,
    /// A connected client renegotiates; must be answered.
    Reauth,
    /// The client's tunnel is up.
    Established,
    /// The client is gone.
    Disconnect,
}

/// One complete client notification with its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// What happened.
    pub kind: ClientEventKind,
    /// OpenVPN's client id (CID).
    pub cid: u64,
    /// Key id (KID), for `Connect` and `Reauth`.
    pub kid: Option<u64>,
    /// The `ENV` variables (`username`, `password`, `untrusted_ip`, `trusted_ip`, ...).
    pub env: HashMap<String, String>,
}

impl ClientEvent {
    /// The `username` the client sent.
    pub fn username(&self) -> Option<&str> {
        self.env.get("username").map(String::as_str)
    }

    /// The `password` the client sent.
    pub fn password(&self) -> Option<&str> {
        self.env.get("password").map(String::as_str)
    }

    /// The client's real (outer) address: `trusted_ip`/`untrusted_ip` or their IPv6 forms,
    /// with IPv4-mapped IPv6 addresses turned into IPv4.
    pub fn real_address(&self) -> Option<IpAddr> {
        ["trusted_ip", "untrusted_ip", "trusted_ip6", "untrusted_ip6"]
            .iter()
            .find_map(|key| self.env.get(*key).and_then(|v| v.parse::<IpAddr>().ok()))
            .map(|addr| match addr {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            })
    }
}

/// Assembles `>CLIENT:` notifications from management lines.
#[derive(Debug, Default)]
pub struct Parser {
    current: Option<ClientEvent>,
}

impl Parser {
    /// A parser expecting a fresh notification.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without its line ending); returns a notification once its `ENV,END`
    /// arrives. Other lines (`>INFO`, `SUCCESS:`, `>CLIENT:ADDRESS`, ...) are ignored.
    pub fn feed(&mut self, line: &str) -> Option<ClientEvent> {
        let line = line.trim_end_matches('\r');
        if let Some(env) = line.strip_prefix(">CLIENT:ENV,") {
            let current = self.current.as_mut()?;
            if env == "END" {
                return self.current.take();
            }
            let (name, value) = env.split_once('=').unwrap_or((env, ""));
            current.env.insert(name.to_owned(), value.to_owned());
            return None;
        }
        let rest = line.strip_prefix(">CLIENT:")?;
        let (kind, args) = rest.split_once(',').unwrap_or((rest, ""));
        let kind = match kind {
            "CONNECT" => ClientEventKind::Connect,
            "REAUTH" => ClientEventKind::Reauth,
            "ESTABLISHED" => ClientEventKind::Established,
            "DISCONNECT" => ClientEventKind::Disconnect,
            _ => return None,
        };
        let mut numbers = args.split(',').map(|n| n.trim().parse::<u64>().ok());
        let cid = numbers.next().flatten()?;
        let kid = numbers.next().flatten();
        self.current = Some(ClientEvent {
            kind,
            cid,
            kid,
            env: HashMap::new(),
        });
        None
    }
}

/// The command accepting a client (`client-auth-nt CID KID`).
pub fn accept_command(cid: u64, kid: u64) -> String {
    format!("client-auth-nt {cid} {kid}\n")
}

/// The command refusing a client with a reason for OpenVPN's log; the client is told only
/// `AUTH_FAILED`.
pub fn deny_command(cid: u64, kid: u64, reason: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " ._-:".contains(*c))
        .collect();
    format!("client-deny {cid} {kid} \"{reason}\"\n")
}

/// The command cutting a live client (`client-kill CID`): OpenVPN drops the session and
/// reports its `DISCONNECT`.
pub fn kill_command(cid: u64) -> String {
    format!("client-kill {cid}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_notification_is_assembled_from_env_lines() {
        let mut parser = Parser::new();
        let lines = [
            ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
            ">CLIENT:CONNECT,7,1",
            ">CLIENT:ENV,untrusted_ip=10.201.60.1",
            ">CLIENT:ENV,username=alice",
            ">CLIENT:ENV,password=a=b",
            ">CLIENT:ENV,END",
        ];
        let events: Vec<ClientEvent> = lines.iter().filter_map(|l| parser.feed(l)).collect();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(
            (event.kind, event.cid, event.kid),
            (ClientEventKind::Connect, 7, Some(1))
        );
        assert_eq!(event.username(), Some("alice"));
        assert_eq!(event.password(), Some("a=b"), "values keep their = signs");
        assert_eq!(event.real_address(), Some("10.201.60.1".parse().unwrap()));
    }

    #[test]
    fn established_and_disconnect_have_no_kid_and_other_lines_are_ignored() {
        let mut parser = Parser::new();
        assert_eq!(parser.feed("SUCCESS: client-auth command succeeded"), None);
        assert_eq!(parser.feed(">CLIENT:ADDRESS,3,10.8.0.2,1"), None);
        assert_eq!(
            parser.feed(">CLIENT:ENV,stray=1"),
            None,
            "ENV outside a notification"
        );
        parser.feed(">CLIENT:ESTABLISHED,3\r");
        parser.feed(">CLIENT:ENV,trusted_ip6=::ffff:10.0.0.9");
        let event = parser.feed(">CLIENT:ENV,END").unwrap();
        assert_eq!(
            (event.kind, event.cid, event.kid),
            (ClientEventKind::Established, 3, None)
        );
        assert_eq!(
            event.real_address(),
            Some("10.0.0.9".parse().unwrap()),
            "mapped address unmapped"
        );
        parser.feed(">CLIENT:DISCONNECT,3");
        let event = parser.feed(">CLIENT:ENV,END").unwrap();
        assert_eq!(event.kind, ClientEventKind::Disconnect);
        assert_eq!(event.real_address(), None);
    }

    #[test]
    fn commands_are_well_formed_and_reasons_cannot_inject() {
        assert_eq!(accept_command(4, 0), "client-auth-nt 4 0\n");
        assert_eq!(
            deny_command(4, 1, "bad \"token\"\nkill 1"),
            "client-deny 4 1 \"bad tokenkill 1\"\n"
        );
        assert_eq!(kill_command(7), "client-kill 7\n");
    }
}
