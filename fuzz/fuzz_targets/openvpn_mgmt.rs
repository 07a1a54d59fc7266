//! OpenVPN management-line parser (`vpn::management::Parser`) on arbitrary line streams, and
//! the commands built from what it returns. Checks: no panic; every event carries a CID the
//! notification line named; the commands sent back are one line each and a deny reason
//! cannot break out of its quotes (no command injection into the management socket).
#![no_main]
use libfuzzer_sys::fuzz_target;
use xdpgate::vpn::management::{Parser, accept_command, deny_command, kill_command};

fn one_line(command: &str) {
    assert!(
        command.ends_with('\n'),
        "command {command:?} does not end its line"
    );
    assert_eq!(
        command.matches(['\n', '\r']).count(),
        1,
        "command {command:?} spans lines"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parser = Parser::new();
    for line in text.split('\n') {
        let Some(event) = parser.feed(line) else {
            continue;
        };
        let _ = (event.username(), event.password(), event.real_address());
        if let Some(std::net::IpAddr::V6(v6)) = event.real_address() {
            assert!(
                v6.to_ipv4_mapped().is_none(),
                "real_address kept an IPv4-mapped address"
            );
        }
        let kid = event.kid.unwrap_or(0);
        one_line(&accept_command(event.cid, kid));
        one_line(&kill_command(event.cid));
        // The reason may come from anywhere, e.g. a username: it must stay one quoted word.
        for reason in [
            line,
            event.username().unwrap_or(""),
            event.password().unwrap_or(""),
        ] {
            let deny = deny_command(event.cid, kid, reason);
            one_line(&deny);
            assert_eq!(
                deny.matches('"').count(),
                2,
                "deny reason escaped its quotes: {deny:?}"
            );
        }
    }
});
