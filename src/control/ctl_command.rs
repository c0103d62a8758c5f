//! `mailveil ctl`: the command line of the admin API (status, pause/resume, reload, bulk holds,
//! the queue) and the token-less `ctl health`. Parses nothing itself beyond clap's arguments:
//! the requests and the token rules are in [`ctl`], the tables in [`queue_cli`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::{ctl, health, queue_cli};

/// Exit code for a configuration or usage error (EX_USAGE in sysexits.h).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the admin API cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Which admin API, with which token, and the config file that names them.
pub struct Target<'a> {
    pub admin: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub config: &'a Path,
}

/// How answers are printed: `--json`, `--table`.
pub struct Output {
    pub json: bool,
    pub table: bool,
}

#[derive(Subcommand)]
pub enum CtlAction {
    /// Is the relay of the config file ready? GET /readyz on [metrics] listen, else the SMTP
    /// greeting on [server] listen. No token needed. Exit 0 healthy, 1 not (one line says why).
    Health {
        /// Give up on each step after this long (e.g. "3s"); keep it below the orchestrator's
        /// own health check timeout so the reason is printed.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Paused flags, queue depth per provider, upstream health: the API's JSON answer (a
    /// table on a terminal or with `--table`).
    Status,
    /// The queue: list, show, retry, delete, bounce messages (tables; --json).
    Queue {
        #[command(subcommand)]
        command: queue_cli::QueueCommand,
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
    /// Shaping rules' slowdowns and suspensions in force.
    Shaping {
        #[command(subcommand)]
        command: ShapingCommand,
    },
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
    /// The suppression list: recipients never sent to (JSON answers).
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
}

#[derive(Subcommand)]
pub enum SuppressCommand {
    /// Put a recipient on the list (with [cluster], for the fleet).
    Add {
        address: String,
        /// Why (kept with the entry, at most 200 characters).
        #[arg(long)]
        note: Option<String>,
        /// The entry lapses after this long (e.g. "30d"); without it, it stays.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Take a recipient off the list.
    Remove { address: String },
    /// Is this recipient on the list? (Answer `{"suppressed": ...}`.)
    Check { address: String },
    /// Every entry: hashes, reasons, when added (the list keeps no addresses).
    List,
}

#[derive(Subcommand)]
pub enum ShapingCommand {
    /// Lift the slowdowns and suspensions in force (every provider's and upstream's, or one
    /// provider's or upstream's) before their time: the configured limits apply again at once;
    /// with [cluster] on every replica.
    Clear {
        #[arg(long, conflicts_with = "upstream")]
        provider: Option<String>,
        /// An upstream slowed by an upstream-scoped rule (e.g. SES' throttling reply).
        #[arg(long)]
        upstream: Option<String>,
    },
}

/// `mailveil ctl`: exit 0 when the API accepted the request, 1 when it refused (401, 404,
/// 422, ...), 69 when it cannot be reached, 64 when no token is available.
pub fn run(target: Target<'_>, action: CtlAction, output: Output) -> ExitCode {
    let Target {
        admin,
        token,
        token_file,
        config,
    } = target;
    let Output { json, table } = output;
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
        CtlAction::Shaping {
            command: ShapingCommand::Clear { provider, upstream },
        } => ctl::Action::ShapingClear { provider, upstream },
        CtlAction::Held { show_addresses } => ctl::Action::Held { show_addresses },
        CtlAction::Release { id } => ctl::Action::Release { id },
        CtlAction::Drop { id } => ctl::Action::Drop { id },
        CtlAction::Suppress { command } => {
            use ctl::SuppressAction as S;
            let (command, address, note, expires) = match command {
                SuppressCommand::Add {
                    address,
                    note,
                    expires,
                } => (S::Add, Some(address), note, expires),
                SuppressCommand::Remove { address } => (S::Remove, Some(address), None, None),
                SuppressCommand::Check { address } => (S::Check, Some(address), None, None),
                SuppressCommand::List => (S::List, None, None, None),
            };
            ctl::Action::Suppress {
                command,
                address,
                note,
                expires,
            }
        }
    };
    match ctl::send(&url, &token, &action) {
        Ok(answer) => {
            // SPEC: `ctl status` prints the API's answer. Scripts (stdout not a terminal) get it
            // as the API sent it; a person at a terminal, or `--table`, gets a table. The
            // commands the SPEC does not name print tables unless `--json`.
            let human = match action {
                ctl::Action::Status => table || (!json && std::io::stdout().is_terminal()),
                _ => !json,
            };
            let rendered = (answer.is_success() && human)
                .then(|| queue_cli::human(&action, &answer.body))
                .flatten();
            match rendered {
                Some(text) => print!("{text}"),
                None => println!("{}", answer.body.trim_end()),
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

/// `mailveil ctl health`: exit 0 and one line on stdout when the relay of `config` is ready,
/// 1 and one line on stderr when it is not, 64 when the config file cannot be read.
fn health(config: &Path, timeout: std::time::Duration) -> ExitCode {
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
