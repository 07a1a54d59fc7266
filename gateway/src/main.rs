//! The `xdpgate` binary: controller, admin CLI (and, later, web front and client).
mod cli;

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use cli::{
    AuditCommand, Cli, ClientCommand, ClientsCommand, Command, KeysCommand, LogFormat,
    NoticesCommand, OpeningsCommand, ServersCommand, WebCertCommand, admin,
};
use xdpgate::{
    client,
    config::{Config, WebConfig},
    controller,
    gate::loader,
    web,
};

/// See `gateway/Cargo.toml` for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_format);
    // The web front runs on one thread: on a multi-thread runtime a request's wake-ups
    // (its connection, the front socket) can be futex wakes of another worker, once the
    // largest cost per request in its profile. One front process per core scales it out
    // (the cluster design).
    let mut builder = if matches!(cli.command, Command::Web { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("xdpgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Health = cli.command {
        let health = runtime.block_on(admin::health(&cli.socket));
        print!("{}", health.line);
        return ExitCode::from(health.code);
    }
    match runtime.block_on(dispatch(cli.command, &cli.socket, &cli.log, cli.log_format)) {
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

/// Writes man pages (`man1/`) and shell completions (`completions/`) from the clap definitions.
fn generate_docs(out: &Path) -> anyhow::Result<String> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let man = out.join("man1");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("writing man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "xdpgate", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(format!(
        "wrote man pages to {} and completions to {}\n",
        man.display(),
        completions.display()
    ))
}

/// Logs go to stderr: text with ANSI colours only when stderr is a terminal, or JSON lines
/// whose keys are the event's and its spans' fields.
fn init_tracing(filter: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

async fn dispatch(
    command: Command,
    socket: &Path,
    log_filter: &str,
    log_format: LogFormat,
) -> anyhow::Result<String> {
    match command {
        Command::Controller { config } => {
            let loaded = Config::load(&config)?;
            controller::run(loaded, Some(config)).await?;
            Ok(String::new())
        }
        Command::Run { config } => {
            xdpgate::supervisor::run(&config, log_filter, log_format.as_str()).await?;
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
        Command::Devices { command } => cli::devices::run(socket, command).await,
        Command::Client {
            command: ClientCommand::Device { command },
        } => cli::devices::run_client(command),
        Command::Servers {
            command: ServersCommand::List,
        } => admin::servers_list(socket).await,
        Command::Openings { command } => match command {
            OpeningsCommand::Add { server, ip, ttl } => {
                admin::openings_add(socket, &server, ip, ttl).await
            }
            OpeningsCommand::List { server } => {
                admin::openings_list(socket, server.as_deref()).await
            }
            OpeningsCommand::Revoke { server, ip } => {
                admin::openings_revoke(socket, server.as_deref(), ip).await
            }
        },
        Command::Clients { command } => match command {
            ClientsCommand::Add { name, servers } => {
                admin::clients_add(socket, &name, &servers).await
            }
            ClientsCommand::Reenroll { name } => admin::clients_reenroll(socket, &name).await,
            ClientsCommand::List => admin::clients_list(socket).await,
            ClientsCommand::Disable { name } => {
                admin::clients_set_enabled(socket, &name, false).await
            }
            ClientsCommand::Enable { name } => {
                admin::clients_set_enabled(socket, &name, true).await
            }
            ClientsCommand::Remove { name } => admin::clients_remove(socket, &name).await,
        },
        Command::Audit {
            command:
                AuditCommand::Tail {
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
            admin::audit_tail(socket, &query).await
        }
        Command::Web { config } => {
            web::run(WebConfig::load(&config)?).await?;
            Ok(String::new())
        }
        Command::WebCert {
            command: WebCertCommand::Renew { config, days },
        } => {
            let web = WebConfig::load(&config)?;
            let pin = xdpgate::tls::renew_self_signed(&web.cert, &web.key, days)?;
            Ok(format!(
                "renewed {} (same key, valid {days} days); new enrollment links pin sha256:{}\nrestart the web front to serve it; existing profiles keep working (they trust the key)\n",
                web.cert.display(),
                xdpgate::tls::to_hex(&pin)
            ))
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
            command: NoticesCommand::Status,
        } => admin::notices(socket, false).await,
        Command::Notices {
            command: NoticesCommand::Clear,
        } => admin::notices(socket, true).await,
        Command::GenerateDocs { out } => generate_docs(&out),
        Command::Status => admin::status(socket).await,
        Command::Health => Ok(admin::health(socket).await.line),
        Command::Reload => admin::reload(socket).await,
        Command::Keys {
            command: KeysCommand::Rotate { overlap_days },
        } => {
            anyhow::ensure!(
                overlap_days.is_finite() && overlap_days > 0.0,
                "--overlap-days must be a positive number"
            );
            // Whole seconds; the controller refuses what is out of range.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let overlap_secs = (overlap_days * 86_400.0).round() as u64;
            admin::keys_rotate(socket, overlap_secs).await
        }
    }
}
