//! `xdpgate cluster ...`: the cluster CA, node certificates, and the operator's view.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use xdpgate::cluster::{self, ClusterRoutes};
use xdpgate::config::WebConfig;

/// `xdpgate cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Node certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Ask every controller of a web node's `[web.cluster]` for its servers, health and
    /// version (uses that node's certificate).
    Status {
        /// Configuration file with a `[web]` section that has `[web.cluster]`.
        #[arg(long)]
        config: PathBuf,
    },
}

/// `xdpgate cluster ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a cluster CA: `DIR/ca.pem` and `DIR/ca.key` (0600). Keep the key offline.
    Init {
        /// Folder to create the CA in (created 0700).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start a CA rollover: a new CA in `--to`, and `TO/trust.pem` + `TO/trust-crl.pem`
    /// holding both CAs and their CRLs. Give every node the bundle as `ca` and `crl`, then
    /// renew each node's certificate with the new CA, then give every node the new CA alone.
    Rollover {
        /// The CA in use.
        #[arg(long)]
        from: PathBuf,
        /// Folder for the new CA (created 0700).
        #[arg(long)]
        to: PathBuf,
    },
    /// Write `OUT/trust.pem` and `OUT/trust-crl.pem` from these CAs (after a revocation
    /// during a rollover, to refresh the bundle).
    Bundle {
        /// A CA folder; give it once per CA, the newest first.
        #[arg(long, required = true)]
        ca: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `xdpgate cluster cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a node certificate: `OUT/node.pem`, `OUT/node.key` (0600), `OUT/ca.pem`.
    Issue {
        /// The CA folder (from `cluster ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// The node name (its DNS name), e.g. `web-1` or `gw-a`.
        #[arg(long)]
        name: String,
        /// What the certificate may do: serve the cluster API (`controller`) or call it
        /// (`web`: web nodes and the operator's `cluster status`). Never both.
        #[arg(long, value_enum)]
        role: Role,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = cluster::ca::NODE_VALID_DAYS)]
        days: i64,
    },
    /// Renew a node certificate before it expires (or move it to a new CA): a new key and
    /// certificate with the same name and role, signed by `--ca`, written to `--out`.
    Renew {
        /// The CA folder to sign with.
        #[arg(long)]
        ca: PathBuf,
        /// The node's current certificate (its `node.pem`).
        #[arg(long)]
        cert: PathBuf,
        /// Output folder (must not hold a node's files yet).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = cluster::ca::NODE_VALID_DAYS)]
        days: i64,
    },
    /// Revoke a node certificate: adds it to `CA/crl.pem` (signed by the CA). Copy that file
    /// to every node and name it as `crl` in `[cluster]` / `[web.cluster]`.
    Revoke {
        /// The CA folder.
        #[arg(long)]
        ca: PathBuf,
        /// The node certificate to revoke (its `node.pem`).
        #[arg(long)]
        cert: PathBuf,
    },
}

/// The role of a node certificate.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    /// Serves the cluster API (serverAuth).
    Controller,
    /// Calls the cluster API (clientAuth).
    Web,
}

/// Runs a cluster command and returns what to print.
pub async fn run(command: ClusterCommand) -> anyhow::Result<String> {
    match command {
        ClusterCommand::Ca {
            command: CaCommand::Init { dir },
        } => {
            let cert = cluster::ca::init(&dir)?;
            Ok(format!("cluster CA created: {}\n", cert.display()))
        }
        ClusterCommand::Cert {
            command:
                CertCommand::Issue {
                    ca,
                    name,
                    role,
                    out,
                    days,
                },
        } => {
            let role = match role {
                Role::Controller => cluster::ca::NodeRole::Controller,
                Role::Web => cluster::ca::NodeRole::Web,
            };
            let files = cluster::ca::issue(&ca, &name, role, days, &out)?;
            Ok(format!(
                "issued {name}: {} {} (CA {})\n",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))
        }
        ClusterCommand::Ca {
            command: CaCommand::Rollover { from, to },
        } => {
            let bundle = cluster::ca::rollover(&from, &to)?;
            Ok(format!(
                "new cluster CA: {}\ntrust both while nodes move: ca = {:?}, crl = {:?}\n",
                to.join(cluster::ca::CA_CERT).display(),
                bundle.trust,
                bundle.crls
            ))
        }
        ClusterCommand::Ca {
            command: CaCommand::Bundle { ca, out },
        } => {
            let dirs: Vec<&std::path::Path> = ca.iter().map(PathBuf::as_path).collect();
            let bundle = cluster::ca::bundle(&dirs, &out)?;
            Ok(format!(
                "bundle: {} {}\n",
                bundle.trust.display(),
                bundle.crls.display()
            ))
        }
        ClusterCommand::Cert {
            command:
                CertCommand::Renew {
                    ca,
                    cert,
                    out,
                    days,
                },
        } => {
            let files = cluster::ca::renew(&ca, &cert, days, &out)?;
            Ok(format!(
                "renewed: {} {} (CA {})\n",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))
        }
        ClusterCommand::Cert {
            command: CertCommand::Revoke { ca, cert },
        } => {
            let (crl, serial) = cluster::ca::revoke(&ca, &cert)?;
            Ok(format!(
                "revoked serial {serial}; revocation list {} (copy it to every node's `crl`)\n",
                crl.display()
            ))
        }
        ClusterCommand::Status { config } => status(&WebConfig::load(&config)?).await,
    }
}

async fn status(config: &WebConfig) -> anyhow::Result<String> {
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("the [web] section has no [web.cluster]");
    };
    let routes = ClusterRoutes::new(cluster, Duration::from_secs(3))?;
    routes.refresh().await;
    let mut out = String::new();
    let mut all_ok = true;
    for (node, client) in routes.status().iter().zip(routes.controllers()) {
        let health = match client.health().await {
            Ok(status) => status,
            Err(err) => format!("UNREACHABLE ({})", err.code()),
        };
        all_ok &= node.reachable && health == "SERVING";
        let _ = writeln!(
            out,
            "{}\t{}\t{}\tversion={}\tservers={}",
            node.name,
            node.address,
            health,
            if node.version.is_empty() {
                "-"
            } else {
                &node.version
            },
            if node.servers.is_empty() {
                "-".to_owned()
            } else {
                node.servers.join(",")
            },
        );
        if let Some(error) = &node.error {
            let _ = writeln!(out, "\terror: {error}");
        }
    }
    if !all_ok {
        print!("{out}");
        anyhow::bail!("some controllers are not healthy");
    }
    Ok(out)
}
