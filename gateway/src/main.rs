//! The `xdpgate` binary: controller, admin CLI (and, later, web front and client).
mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use cli::{
    AuditCommand, Cli, ClientCommand, ClientsCommand, Command, NoticesCommand, OpeningsCommand,
    ServersCommand, admin,
};
use xdpgate::{
    client,
    config::{Config, WebConfig},
    controller,
    gate::loader,
    web,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("xdpgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, &cli.log)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("xdpgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn dispatch(command: Command, log_filter: &str) -> anyhow::Result<String> {
    match command {
        Command::Controller { config } => {
            let config = Config::load(&config)?;
            controller::run(config).await?;
            Ok(String::new())
        }
        Command::Run { config } => {
            xdpgate::supervisor::run(&config, log_filter).await?;
            Ok(String::new())
        }
        Command::Detach { config } => {
            let config = Config::load(&config)?;
            let removed = loader::detach_all(&config.bpffs_dir)
                .with_context(|| format!("cleaning {}", config.bpffs_dir.display()))?;
            Ok(format!(
                "removed {} pinned object(s); the gate is detached\n",
                removed.len()
            ))
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            let services: usize = config.servers.iter().map(|s| s.services.len()).sum();
            let mut out = String::new();
            for warning in config.warnings() {
                out.push_str(&format!("warning: {warning}\n"));
            }
            out.push_str(&format!(
                "ok: {} server(s), {services} service(s)\n",
                config.servers.len()
            ));
            Ok(out)
        }
        Command::Cluster { command } => cli::cluster::run(command).await,
        Command::Devices { command } => cli::devices::run(command).await,
        Command::Client {
            command: ClientCommand::Device { command },
        } => cli::devices::run_client(command),
        Command::Servers {
            command: ServersCommand::List { target },
        } => admin::servers_list(&target.socket).await,
        Command::Openings { command } => match command {
            OpeningsCommand::Add {
                target,
                server,
                ip,
                ttl,
            } => admin::openings_add(&target.socket, &server, ip, ttl).await,
            OpeningsCommand::List { target, server } => {
                admin::openings_list(&target.socket, server.as_deref()).await
            }
            OpeningsCommand::Revoke { target, server, ip } => {
                admin::openings_revoke(&target.socket, server.as_deref(), ip).await
            }
        },
        Command::Clients { command } => match command {
            ClientsCommand::Add {
                target,
                name,
                servers,
            } => admin::clients_add(&target.socket, &name, &servers).await,
            ClientsCommand::List { target } => admin::clients_list(&target.socket).await,
            ClientsCommand::Disable { target, name } => {
                admin::clients_set_enabled(&target.socket, &name, false).await
            }
            ClientsCommand::Enable { target, name } => {
                admin::clients_set_enabled(&target.socket, &name, true).await
            }
            ClientsCommand::Remove { target, name } => {
                admin::clients_remove(&target.socket, &name).await
            }
        },
        Command::Audit {
            command:
                AuditCommand::Tail {
                    target,
                    count,
                    all,
                    before,
                    unauthenticated,
                    json,
                },
        } => {
            let query = admin::AuditQuery {
                count: if all { u64::MAX } else { count },
                before,
                samples: unauthenticated,
                json,
            };
            admin::audit_tail(&target.socket, &query).await
        }
        Command::Web { config } => {
            web::run(WebConfig::load(&config)?).await?;
            Ok(String::new())
        }
        Command::Client {
            command:
                ClientCommand::Enroll {
                    link,
                    profile,
                    device_name,
                    force,
                },
        } => {
            let options = client::EnrollOptions {
                link: &link,
                profile: &profile,
                device_name: device_name.as_deref(),
                force,
            };
            Ok(client::enroll(&options).await?)
        }
        Command::Client {
            command:
                ClientCommand::Connect {
                    profile,
                    server,
                    public_ipv4,
                    public_ipv6,
                    device_name,
                    json,
                    passcode,
                    openvpn_auth,
                },
        } => {
            let options = client::ConnectOptions {
                profile: &profile,
                server: server.as_deref(),
                public_ipv4,
                public_ipv6,
                device_name: device_name.as_deref(),
                json,
                passcode: passcode.as_deref(),
            };
            Ok(client::connect_with(&options, openvpn_auth.as_deref()).await?)
        }
        Command::Notices {
            command: NoticesCommand::Status { target },
        } => admin::notices(&target.socket, false).await,
        Command::Notices {
            command: NoticesCommand::Clear { target },
        } => admin::notices(&target.socket, true).await,
        Command::Status { target } => admin::status(&target.socket).await,
        Command::Health { target } => admin::health(&target.socket).await,
    }
}
