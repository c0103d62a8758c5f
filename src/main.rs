//! The `mailveil` command: CLI -> Config -> run. Exit codes: 0 ok, 64 invalid configuration or
//! usage, 1 runtime failure (and, for `ctl`, a request the admin API refused), 69 admin API
//! unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use mailveil::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LoadOptions, LogFormat};
use mailveil::envelope::Envelope;

use mailveil::control::ctl_command::{self, CtlAction, EXIT_CONFIG};

#[derive(Parser)]
#[command(
    name = "mailveil",
    version,
    about = "SMTP relay that never lets a recipient see another recipient's address"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Run {
        /// Configuration file.
        #[arg(short, long, env = "MAILVEIL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration file as `run` would before it listens (TLS files and their
    /// pairing, key types, CA files, DKIM keys, secret files, the spool directory); print every
    /// problem with its key path. Exit 64 when there is one.
    CheckConfig {
        #[arg(short, long, env = "MAILVEIL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Do not read the environment variables named by `*_env` keys (they need not be set):
        /// check a file outside the environment it runs in. Everything else is still checked.
        #[arg(long)]
        no_secrets: bool,
    },
    /// Dry run of the privacy policy on a message file; no network.
    Inspect {
        #[arg(short, long, env = "MAILVEIL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The message (.eml).
        message: PathBuf,
        /// Envelope sender (default: the From: address).
        #[arg(long)]
        from: Option<String>,
        /// Envelope recipient, repeatable (default: the To/Cc/Bcc addresses).
        #[arg(long = "to")]
        to: Vec<String>,
    },
    /// Talk to a running relay's admin API: status, pause/resume deliveries, reload, bulk holds.
    Ctl {
        /// Admin API base URL (default: `[admin] listen` of the config file, else
        /// http://127.0.0.1:9726).
        #[arg(long, env = "MAILVEIL_ADMIN_URL")]
        admin: Option<String>,
        /// Bearer token. Avoid: every user of the machine can read a command line (`ps`).
        /// Without it, the token comes from --token-file, else env MAILVEIL_ADMIN_TOKEN, else
        /// the variable named by the config's `admin.token_env`.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// File holding the bearer token (its trailing line end is ignored); should be
        /// readable by its owner only.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Configuration file, read only for the admin address and token variable (and, for
        /// `health`, the listen addresses). Accepted before or after the action.
        #[arg(short, long, global = true, env = "MAILVEIL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print the admin API's JSON answer instead of a table (for scripts); `status` prints
        /// it whenever stdout is not a terminal.
        #[arg(long, global = true)]
        json: bool,
        /// `status` as a table also when stdout is not a terminal.
        #[arg(long, global = true, conflicts_with = "json")]
        table: bool,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Inspect a stopped relay's spool directory: list, show, delete messages.
    Spool {
        /// The relay's configuration file, read only for `[log] show_addresses` (addresses are
        /// shown as its log shows them).
        #[arg(short, long, env = "MAILVEIL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        command: mailveil::control::queue_cli::SpoolCommand,
    },
    /// Make a `[[credential]]` entry (argon2id hash) for `access.users_file`; the password is
    /// read from stdin (asked twice without echo on a terminal) or made with --generate.
    Passwd(mailveil::control::passwd::PasswdArgs),
    /// A capture SMTP server: stores each message as DIR/<id>.eml + DIR/<id>.json.
    Sink {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
        /// Certificate chain (PEM) to offer STARTTLS with.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config, no_secrets } => {
            let options = LoadOptions {
                skip_env_secrets: no_secrets,
            };
            match Config::load_with(&config, options) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("  warning: {w}");
                    }
                    if no_secrets {
                        println!(
                            "{}: ok (the *_env variables were not read: --no-secrets)",
                            config.display()
                        );
                    } else {
                        println!("{}: ok", config.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let unset_env = e
                        .problems
                        .iter()
                        .any(|p| p.path.ends_with("_env") && p.message.ends_with("is not set"));
                    if unset_env {
                        println!(
                            "to check the file without its environment: mailveil check-config --no-secrets -c {}",
                            config.display()
                        );
                    }
                    config_failure(&config, &e)
                }
            }
        }
        Command::Inspect {
            config,
            message,
            from,
            to,
        } => inspect(config, message, from, to),
        Command::Ctl {
            admin,
            token,
            token_file,
            config,
            json,
            table,
            action,
        } => ctl_command::run(
            ctl_command::Target {
                admin,
                token,
                token_file,
                config: &config,
            },
            action,
            ctl_command::Output { json, table },
        ),
        Command::Spool { config, command } => {
            use mailveil::control::queue_cli;
            let shows = std::fs::read_to_string(&config)
                .is_ok_and(|text| queue_cli::log_shows_addresses(&text));
            ExitCode::from(queue_cli::spool(command, shows))
        }
        Command::Passwd(args) => mailveil::control::passwd::run(args),
        Command::Sink {
            listen,
            dir,
            tls_cert,
            tls_key,
        } => {
            init_logging(LogFormat::Text);
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| mailveil::sink::SinkTls { cert, key });
            match mailveil::sink::run(listen, dir, tls) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mailveil sink: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_failure(path: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("{}: {e}", path.display());
    for p in &e.problems {
        eprintln!("  {p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return config_failure(&path, &e),
    };
    init_logging(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailveil: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = mailveil::error_chain(e.as_ref());
            tracing::error!("{text}");
            eprintln!("mailveil: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let listeners =
        mailveil::Listeners::bind(&config.server, &config.metrics, config.admin.as_ref()).await?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        signals.cancel();
    });
    let options = mailveil::RunOptions {
        config_path: Some(path),
        reload_on_sighup: true,
    };
    // Its last log line says what was left in the spool.
    mailveil::run_with(config, listeners, shutdown, options).await?;
    Ok(())
}

fn inspect(config: PathBuf, message: PathBuf, from: Option<String>, to: Vec<String>) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => return config_failure(&config, &e),
    };
    let bytes = match std::fs::read(&message) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mailveil inspect: cannot read {}: {e}", message.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The same bytes `run` plans with: CRLF line ends only, NUL refused, our trace field on
    // top.
    let bytes = match mailveil::privacy::bytes::crlf_only(&bytes) {
        Ok(b) => b.into_owned(),
        Err(e) => {
            println!("decision: reject (visible 0)");
            eprintln!("mailveil inspect: refused: 550 5.6.0 {e}; nothing would be accepted");
            return ExitCode::SUCCESS;
        }
    };
    let envelope = Envelope {
        mail_from: from
            .or_else(|| mailveil::privacy::header_from(&bytes))
            .unwrap_or_default(),
        rcpt_to: if to.is_empty() {
            mailveil::privacy::header_recipients(&bytes)
        } else {
            to
        },
    };
    let client = mailveil::envelope::ClientInfo {
        peer: ([127, 0, 0, 1], 0).into(),
        helo: "inspect".into(),
        tls: false,
        user: None,
    };
    let received = mailveil::relay::received_field(&client, &config.server.hostname, "INSPECT");
    let message = [received.as_bytes(), &bytes].concat();
    let inspection = mailveil::privacy::inspect::inspect(&config.privacy, &envelope, &message);
    print!("{}", inspection.report);
    if let Some(refusal) = inspection.refusal {
        eprintln!("mailveil inspect: refused: {refusal}");
    }
    if let Some(part) = inspection.body_warning {
        eprintln!("mailveil inspect: body check (monitor): {part} shows a recipient's address");
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAILVEIL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(GuardedStderr { format, ansi });
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Standard error, every line passed through `observe::log::guard_line` as it is written: the
/// check that no call site let a control character from outside into the log.
struct GuardedStderr {
    format: LogFormat,
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for GuardedStderr {
    type Writer = GuardedLine;

    fn make_writer(&'a self) -> GuardedLine {
        GuardedLine {
            format: self.format,
            ansi: self.ansi,
            line: Vec::new(),
        }
    }
}

/// One event's output, collected (the formatter writes it in one piece) and written on drop.
struct GuardedLine {
    format: LogFormat,
    ansi: bool,
    line: Vec<u8>,
}

impl std::io::Write for GuardedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for GuardedLine {
    fn drop(&mut self) {
        use std::io::Write;
        let line = mailveil::text::lossy(&self.line);
        let line = mailveil::observe::log::guard_line(&line, self.format, self.ansi);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
