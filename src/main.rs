//! The `mailveil` command: CLI -> Config -> run. Exit codes: 0 ok, 64 invalid configuration or
//! usage, 1 runtime failure (and, for `ctl`, a request the admin API refused), 69 admin API
//! unreachable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use mailveil::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LoadOptions, LogFormat};
use mailveil::envelope::Envelope;

/// Exit code for a configuration or usage error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the admin API cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

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
        /// the JSON answer unless `--table` is given.
        #[arg(long, global = true)]
        json: bool,
        /// `status` as a table (the other commands print tables by default).
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

#[derive(Subcommand)]
enum CtlAction {
    /// Is the relay of the config file ready? GET /readyz on [metrics] listen, else the SMTP
    /// greeting on [server] listen. No token needed. Exit 0 healthy, 1 not (one line says why).
    Health {
        /// Give up on each step after this long (e.g. "3s"); keep it below the orchestrator's
        /// own health check timeout so the reason is printed.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Paused flags, queue depth per provider, upstream health: the API's JSON answer,
    /// indented (`--table`: a table).
    Status,
    /// The queue: list, show, retry, delete, bounce messages (tables; --json).
    Queue {
        #[command(subcommand)]
        command: mailveil::control::queue_cli::QueueCommand,
    },
    /// Stop starting upstream deliveries (all, or one provider's); inbound keeps spooling.
    /// Kept in the spool through restarts; with [cluster], on every replica.
    Pause {
        #[arg(long)]
        provider: Option<String>,
    },
    /// Start delivering again; copies waiting for a retry are due at once.
    Resume {
        #[arg(long)]
        provider: Option<String>,
    },
    /// Re-read and apply the configuration file (like SIGHUP).
    Reload,
    /// Messages under a bulk hold: id, age, recipient and copy counts (JSON).
    Held {
        /// Show the sender and canary recipients in full.
        #[arg(long)]
        show_addresses: bool,
    },
    /// Send the held copies of a message under a bulk hold.
    Release { id: String },
    /// Never send the held copies of a message under a bulk hold; it leaves the spool.
    Drop { id: String },
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
        } => ctl(admin, token, token_file, &config, action, json, table),
        Command::Spool { config, command } => {
            use mailveil::control::queue_cli;
            let shows = std::fs::read_to_string(&config)
                .is_ok_and(|text| queue_cli::log_shows_addresses(&text));
            ExitCode::from(queue_cli::spool(command, shows))
        }
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

/// `mailveil ctl`: exit 0 when the API accepted the request, 1 when it refused (401, 404,
/// 422, ...), 69 when it cannot be reached, 64 when no token is available.
fn ctl(
    admin: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    config: &Path,
    action: CtlAction,
    json: bool,
    table: bool,
) -> ExitCode {
    use mailveil::control::ctl;
    if let CtlAction::Health { timeout } = action {
        return health(config, timeout);
    }
    let text = std::fs::read_to_string(config).ok();
    let url = admin
        .or_else(|| text.as_deref().and_then(ctl::url_from_config))
        .unwrap_or_else(|| ctl::DEFAULT_ADMIN_URL.to_string());
    let Some(token) = ctl_token(token, token_file, text.as_deref()) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let action = match action {
        CtlAction::Health { .. } => unreachable!("answered above"),
        CtlAction::Status => ctl::Action::Status,
        CtlAction::Queue { command } => command.action(),
        CtlAction::Pause { provider } => ctl::Action::Pause { provider },
        CtlAction::Resume { provider } => ctl::Action::Resume { provider },
        CtlAction::Reload => ctl::Action::Reload,
        CtlAction::Held { show_addresses } => ctl::Action::Held { show_addresses },
        CtlAction::Release { id } => ctl::Action::Release { id },
        CtlAction::Drop { id } => ctl::Action::Drop { id },
    };
    match ctl::send(&url, &token, &action) {
        Ok(answer) => {
            // SPEC: `ctl status` prints the API's answer (indented JSON); tables are for the
            // commands the SPEC does not name, or `status --table`.
            let human = match action {
                ctl::Action::Status => table,
                _ => !json,
            };
            let rendered = (answer.is_success() && human)
                .then(|| mailveil::control::queue_cli::human(&action, &answer.body))
                .flatten();
            match rendered {
                Some(text) => print!("{text}"),
                None => println!("{}", indented_json(&answer.body)),
            }
            if answer.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("mailveil ctl: the admin API answered {}", answer.status);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mailveil ctl: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// A JSON answer indented for reading (still JSON for scripts); any other text as it came.
fn indented_json(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.trim_end().to_string())
}

/// `mailveil ctl health`: exit 0 and one line on stdout when the relay of `config` is ready,
/// 1 and one line on stderr when it is not, 64 when the config file cannot be read.
fn health(config: &Path, timeout: std::time::Duration) -> ExitCode {
    use mailveil::control::health;
    if timeout.is_zero() {
        eprintln!("mailveil ctl health: --timeout must be longer than 0s");
        return ExitCode::from(EXIT_CONFIG);
    }
    let target = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))
        .and_then(|text| {
            health::target_from_config(&text).map_err(|e| format!("{}: {e}", config.display()))
        });
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mailveil ctl health: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match health::probe(target, timeout) {
        Ok(said) => {
            println!("healthy: {said}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The admin token for `ctl`, from (in order) `--token`, `--token-file`, `MAILVEIL_ADMIN_TOKEN`,
/// the variable named by the config's `admin.token_env`. `None` (after saying why on stderr)
/// when there is none.
fn ctl_token(
    token: Option<String>,
    token_file: Option<PathBuf>,
    config_text: Option<&str>,
) -> Option<String> {
    use mailveil::control::ctl;
    if let Some(token) = token {
        // SPEC keeps `--token`; say what it costs.
        eprintln!(
            "mailveil ctl: warning: --token shows the admin token to every user of this machine \
             (ps, /proc/PID/cmdline); set {} or use --token-file PATH instead",
            ctl::TOKEN_ENV
        );
        return Some(token);
    }
    if let Some(path) = token_file {
        return match ctl::read_token_file(&path) {
            Ok(file) => {
                if file.readable_by_others {
                    eprintln!(
                        "mailveil ctl: warning: {} is readable by group or others; \
                         `chmod 600` it so only its owner can hold the admin token",
                        path.display()
                    );
                }
                Some(file.token)
            }
            Err(e) => {
                eprintln!("mailveil ctl: {e}");
                None
            }
        };
    }
    let from_env = |var: &str| std::env::var(var).ok().filter(|t| !t.is_empty());
    let token = from_env(ctl::TOKEN_ENV).or_else(|| {
        let var = config_text.and_then(ctl::token_env_from_config)?;
        from_env(&var)
    });
    if token.is_none() {
        eprintln!(
            "mailveil ctl: no admin token: set {} (or the variable named by admin.token_env) \
             or pass --token-file PATH",
            ctl::TOKEN_ENV
        );
    }
    token
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
        let line = String::from_utf8_lossy(&self.line);
        let line = mailveil::observe::log::guard_line(&line, self.format, self.ansi);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
