//! Handshakes in memory between the real configurations: roles and revocation hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::mtls::{NodeTls, client_config, server_config};
use crate::cluster::ca::{self, NodeRole};

fn node(ca_dir: &Path, dir: &Path, name: &str, role: NodeRole) -> NodeTls {
    let files = ca::issue(ca_dir, name, role, 30, &dir.join(name)).unwrap();
    NodeTls {
        ca: files.ca,
        cert: files.cert,
        key: files.key,
        crl: None,
    }
}

/// Moves what `from` has to send into `to`; false when `to` refuses it.
fn pump(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if !buf.is_empty() {
        to.read_tls(&mut buf.as_slice()).unwrap();
        if to.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

/// Runs a TLS 1.3 handshake between `client` (calling `server_name`) and `server`; true
/// when both sides complete it.
fn handshake(client: &NodeTls, server: &NodeTls, server_name: &str) -> bool {
    let mut c = ClientConnection::new(
        std::sync::Arc::new(client_config(client).unwrap()),
        ServerName::try_from(server_name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(std::sync::Arc::new(server_config(server).unwrap())).unwrap();
    for _ in 0..10 {
        if !pump(&mut c, &mut s) || !pump(&mut s, &mut c) {
            return false;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            // The server's verdict on the client certificate arrives with its next flight.
            return pump(&mut c, &mut s);
        }
    }
    false
}

#[test]
fn each_certificate_works_only_in_its_role_and_revoked_ones_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir).unwrap();
    let gw = node(&ca_dir, dir.path(), "gw-a", NodeRole::Controller);
    let web = node(&ca_dir, dir.path(), "web-1", NodeRole::Web);
    let gw2 = node(&ca_dir, dir.path(), "gw-b", NodeRole::Controller);
    let web2 = node(&ca_dir, dir.path(), "web-2", NodeRole::Web);
    assert!(
        handshake(&web, &gw, "gw-a"),
        "a web node calls a controller"
    );
    assert!(
        !handshake(&web, &web2, "web-2"),
        "a web certificate cannot serve as a controller"
    );
    assert!(
        !handshake(&gw2, &gw, "gw-a"),
        "a controller certificate cannot call as a web node"
    );

    let (crl, serial) = ca::revoke(&ca_dir, &web2.cert).unwrap();
    assert_eq!(serial.len(), 32, "a 16-byte serial: {serial}");
    let (crl_again, _) = ca::revoke(&ca_dir, &gw2.cert).unwrap();
    assert_eq!(crl, crl_again);
    let with_crl = |n: &NodeTls| NodeTls {
        crl: Some(crl.clone()),
        ..n.clone()
    };
    assert!(
        handshake(&with_crl(&web), &with_crl(&gw), "gw-a"),
        "unrevoked pairs still work with the CRL"
    );
    assert!(
        !handshake(&web2, &with_crl(&gw), "gw-a"),
        "a revoked web certificate is refused by the controller"
    );
    assert!(
        !handshake(&with_crl(&web), &gw2, "gw-b"),
        "a revoked controller certificate is refused by the web node"
    );
    assert!(
        handshake(&web2, &gw, "gw-a"),
        "without the CRL the same pair would pass (the CRL is what refuses it)"
    );
}

/// A node's TLS files with its trust (`ca`, `crl`) replaced.
fn trusting(node: &NodeTls, ca: &Path, crl: Option<&Path>) -> NodeTls {
    NodeTls {
        ca: ca.to_owned(),
        crl: crl.map(Path::to_owned),
        ..node.clone()
    }
}

/// A CA rollover with two web nodes and a controller moving one at a time: at every step
/// both web nodes reach the controller; at the end a certificate of the old CA is refused,
/// and a revocation by the new CA holds.
#[test]
fn a_ca_rollover_moves_nodes_one_by_one_without_a_refused_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("ca-old");
    ca::init(&old).unwrap();
    let mut gw = node(&old, dir.path(), "gw-a", NodeRole::Controller);
    let mut webs = [
        node(&old, dir.path(), "web-1", NodeRole::Web),
        node(&old, dir.path(), "web-2", NodeRole::Web),
    ];
    let all_pass = |gw: &NodeTls, webs: &[NodeTls; 2], step: &str| {
        for web in webs {
            assert!(handshake(web, gw, "gw-a"), "{step}: {:?} → gw-a", web.cert);
        }
    };
    all_pass(&gw, &webs, "before");

    let new = dir.path().join("ca-new");
    let bundle = ca::rollover(&old, &new).unwrap();
    // 1. Every node trusts both CAs (and both CRLs), one after the other.
    gw = trusting(&gw, &bundle.trust, Some(&bundle.crls));
    all_pass(&gw, &webs, "controller trusts the bundle");
    for i in 0..2 {
        webs[i] = trusting(&webs[i], &bundle.trust, Some(&bundle.crls));
        all_pass(&gw, &webs, "a web node trusts the bundle");
    }
    // 2. Every node gets a certificate of the new CA, same name and role.
    let renewed = |n: &NodeTls, name: &str| {
        let files = ca::renew(&new, &n.cert, 30, &dir.path().join(format!("{name}-new"))).unwrap();
        NodeTls {
            cert: files.cert,
            key: files.key,
            ..n.clone()
        }
    };
    let old_web_1 = webs[0].clone();
    gw = renewed(&gw, "gw-a");
    all_pass(&gw, &webs, "controller renewed");
    webs[0] = renewed(&webs[0], "web-1");
    all_pass(&gw, &webs, "web-1 renewed");
    webs[1] = renewed(&webs[1], "web-2");
    all_pass(&gw, &webs, "web-2 renewed");
    // The renewal kept the role: the renewed web certificate still cannot serve.
    assert!(!handshake(&gw, &webs[1], "web-2"));
    // 3. Every node drops the old CA.
    let new_ca = new.join(ca::CA_CERT);
    let new_crl = new.join(ca::CRL);
    gw = trusting(&gw, &new_ca, Some(&new_crl));
    all_pass(&gw, &webs, "controller trusts the new CA only");
    for i in 0..2 {
        webs[i] = trusting(&webs[i], &new_ca, Some(&new_crl));
        all_pass(&gw, &webs, "a web node trusts the new CA only");
    }
    // The old CA is gone: its certificates are refused.
    assert!(
        !handshake(&trusting(&old_web_1, &new_ca, None), &gw, "gw-a"),
        "a certificate of the old CA is refused after the rollover"
    );
    // Revocation by the new CA holds.
    let (crl, _) = ca::revoke(&new, &webs[1].cert).unwrap();
    let gw_revoking = trusting(&gw, &new_ca, Some(&crl));
    assert!(handshake(&webs[0], &gw_revoking, "gw-a"));
    assert!(
        !handshake(&webs[1], &gw_revoking, "gw-a"),
        "revoked by the new CA"
    );
}
