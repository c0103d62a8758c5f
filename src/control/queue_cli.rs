//! The queue commands of the `mailveil` binary: `mailveil ctl queue ...` (a running relay,
//! through the admin API: [`QueueCommand`]) and `mailveil spool ...` (a stopped relay's spool
//! directory, read with the relay's own recovery code: [`SpoolCommand`]). Both print the same
//! tables ([`super::table`]) and, with `--json`, the same JSON.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::ctl::Action;
use super::table;
use crate::observe::Redactor;
use crate::schedule::queue::RetryTarget;
use crate::schedule::queue::view::{self, FilterArgs, QueueFilter};
use crate::schedule::tracking::{self, CopyState};
use crate::spool::inspect::{self, InspectError};
use crate::spool::{Spool, unix_now};

/// Exit codes (as `main.rs`): refused or not found, and bad usage or unreadable input.
const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 64;

/// The filters of `queue list` / `spool list`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// Only messages with a copy still to go to this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// Only messages with a copy in this state (with --provider: a copy of that provider).
    #[arg(long, value_parser = ["queued", "deferred", "held", "active"])]
    pub state: Option<String>,
    /// Only messages received at least this long ago (30m, 2h, 1d).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// Only messages to this recipient: the address, or the redacted form a log line shows
    /// (3f9a1c2b@example.com), or its hash alone.
    #[arg(long, value_name = "ADDRESS|HASH")]
    pub rcpt: Option<String>,
    /// Only the message with this Message-ID (angle brackets optional).
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    /// Show addresses in full (by default as the log shows them).
    #[arg(long)]
    pub show_addresses: bool,
    /// List at most this many messages, the oldest (0: all).
    #[arg(long, default_value_t = view::DEFAULT_LIMIT)]
    pub limit: usize,
}

impl ListArgs {
    fn filter_args(&self) -> FilterArgs {
        FilterArgs {
            provider: self.provider.clone(),
            state: self.state.clone(),
            older_than: self.older_than.clone(),
            rcpt: self.rcpt.clone(),
            message_id: self.message_id.clone(),
            show_addresses: self.show_addresses,
            limit: Some(self.limit),
        }
    }
}

/// `mailveil ctl queue ...`: the queue of a running relay.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// Messages with copies still to go, oldest first (filters combine).
    List(ListArgs),
    /// One message: each copy's state, attempts, last reply, next attempt, upstream.
    Show {
        /// The queue id (`queue list`, or `queue_id` in the log).
        id: String,
        /// Show addresses in full (by default as the log shows them).
        #[arg(long)]
        show_addresses: bool,
    },
    /// Make deferred copies due now: of one message, of one provider, or all.
    Retry {
        /// The message whose deferred copies go now.
        #[arg(required_unless_present_any = ["provider", "all"])]
        id: Option<String>,
        /// Every deferred copy of this provider instead.
        #[arg(long, conflicts_with_all = ["id", "all"])]
        provider: Option<String>,
        /// Every deferred copy instead.
        #[arg(long, conflicts_with_all = ["id", "provider"])]
        all: bool,
    },
    /// Delete a message: none of its copies not yet sent goes out, no bounce. Durable when
    /// answered.
    Delete { id: String },
    /// Fail every copy of a message not yet sent, with a bounce to the sender when
    /// `[spool] bounce` is on. Durable when answered.
    Bounce { id: String },
}

impl QueueCommand {
    /// The admin request.
    pub fn action(self) -> Action {
        match self {
            QueueCommand::List(args) => Action::QueueList {
                filter: args.filter_args(),
            },
            QueueCommand::Show { id, show_addresses } => Action::QueueShow { id, show_addresses },
            QueueCommand::Retry { id, provider, all } => Action::QueueRetry {
                target: match (id, provider) {
                    (Some(id), _) => RetryTarget::Message(id),
                    (None, Some(p)) => RetryTarget::Provider(p),
                    (None, None) => {
                        debug_assert!(all, "clap requires one of them");
                        RetryTarget::All
                    }
                },
            },
            QueueCommand::Delete { id } => Action::QueueDelete { id },
            QueueCommand::Bounce { id } => Action::QueueBounce { id },
        }
    }
}

/// The table `ctl` prints for a successful answer to `action` (`None`: print the JSON, as
/// for the commands that have no table).
pub fn human(action: &Action, body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let now = unix_now();
    Some(match action {
        // The apps and shaping tables (`apps_table.rs`, `shaping_table.rs`) follow the rest.
        Action::Status => {
            table::status(&v) + &super::apps_table::apps(&v) + &super::shaping_table::shaping(&v)
        }
        Action::QueueList { .. } => table::queue_list(&v, now),
        Action::QueueShow { .. } => table::queue_show(&v, now),
        Action::QueueRetry { .. } => table::retried(&v),
        Action::QueueDelete { .. } | Action::QueueBounce { .. } => table::removal(&v),
        Action::ShapingClear { .. } => super::shaping_table::cleared(&v),
        Action::Pause { .. }
        | Action::Resume { .. }
        | Action::Reload
        | Action::Held { .. }
        | Action::Release { .. }
        | Action::Drop { .. }
        | Action::Suppress { .. } => return None,
    })
}

/// `mailveil spool ...`: a stopped relay's spool directory.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SpoolCommand {
    /// Messages a start would queue, oldest first (filters as `ctl queue list`).
    List {
        /// The spool directory (`[spool] dir`).
        dir: PathBuf,
        #[command(flatten)]
        filter: ListArgs,
        /// Print JSON (the admin API's shapes) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message: each copy's state, attempts, last reply, next attempt, upstream.
    Show {
        /// The spool directory (`[spool] dir`).
        dir: PathBuf,
        /// The queue id.
        id: String,
        /// Show addresses in full (by default as the log shows them).
        #[arg(long)]
        show_addresses: bool,
        /// Print JSON (the admin API's shapes) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a message (synced before it returns); refused while a relay runs on the spool.
    Delete {
        /// The spool directory (`[spool] dir`).
        dir: PathBuf,
        /// The queue id.
        id: String,
        /// Print JSON (the admin API's shapes) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Whether the relay's config file shows addresses in its log (`[log] show_addresses`), read
/// without validating the rest (the relay's secrets need not be set where the tool runs).
pub fn log_shows_addresses(config_text: &str) -> bool {
    let Ok(table) = config_text.parse::<toml::Table>() else {
        return false;
    };
    table
        .get("log")
        .and_then(|l| l.get("show_addresses"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Runs a `mailveil spool` command; returns the exit code. `log_shows_addresses`: the
/// relay's `[log] show_addresses`, so the listing shows addresses as its log does.
pub fn spool(command: SpoolCommand, log_shows_addresses: bool) -> u8 {
    let (json, result) = match command {
        SpoolCommand::List {
            dir,
            mut filter,
            json,
        } => {
            filter.show_addresses |= log_shows_addresses;
            (json, spool_list(&dir, &filter))
        }
        SpoolCommand::Show {
            dir,
            id,
            show_addresses,
            json,
        } => (
            json,
            spool_show(&dir, &id, show_addresses || log_shows_addresses),
        ),
        SpoolCommand::Delete { dir, id, json } => (json, spool_delete(&dir, &id)),
    };
    match result {
        Ok((value, text)) => {
            if json {
                println!("{value}");
            } else {
                print!("{text}");
            }
            0
        }
        Err((code, message)) => {
            eprintln!("mailveil spool: {message}");
            code
        }
    }
}

type Outcome = Result<(Value, String), (u8, String)>;

fn read(dir: &Path) -> Result<inspect::Inspection, (u8, String)> {
    let found = inspect::read(dir).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    if found.relay_running {
        eprintln!(
            "mailveil spool: warning: a relay is running on {}; this is a snapshot (use `mailveil ctl queue`)",
            dir.display()
        );
    }
    for problem in &found.problems {
        eprintln!("mailveil spool: damaged: {problem}");
    }
    Ok(found)
}

/// The log's redaction (its key is in the spool), or addresses in full when asked.
fn redactor(dir: &Path, show_addresses: bool) -> Redactor {
    match Spool::read_redaction_key(dir) {
        Some(key) => Redactor::new(show_addresses, key),
        None if show_addresses => Redactor::plain(),
        None => Redactor::hiding(),
    }
}

fn spool_list(dir: &Path, args: &ListArgs) -> Outcome {
    let filter =
        QueueFilter::parse(&args.filter_args()).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let found = read(dir)?;
    let redactor = redactor(dir, args.show_addresses);
    let now = unix_now();
    let messages: Vec<view::MessageView> = found
        .messages
        .iter()
        .filter_map(|m| {
            let tracks = tracking::from_spool(&m.meta, &m.log, &m.attempts, now);
            let message_id = || view::message_id(&m.header);
            filter.listed(&m.meta, &tracks, message_id, &redactor, now)
        })
        .collect();
    let mut value = view::page(messages, Some(args.limit));
    value["damaged"] = json!(found.problems);
    let text = table::queue_list(&value, now);
    Ok((value, text))
}

fn spool_show(dir: &Path, id: &str, show_addresses: bool) -> Outcome {
    let found = read(dir)?;
    let m = found
        .messages
        .iter()
        .find(|m| m.meta.id == id)
        .ok_or_else(|| (EXIT_REFUSED, InspectError::NotFound(id.into()).to_string()))?;
    let now = unix_now();
    let tracks = tracking::from_spool(&m.meta, &m.log, &m.attempts, now);
    let detail = view::detail(
        &m.meta,
        &tracks,
        view::message_id(&m.header),
        &redactor(dir, show_addresses),
        now,
    );
    let value = json!({"message": detail});
    let text = table::queue_show(&value, now);
    Ok((value, text))
}

fn spool_delete(dir: &Path, id: &str) -> Outcome {
    let deleted = inspect::delete(dir, id).map_err(|e| {
        let code = match e {
            InspectError::RelayRunning(_) | InspectError::NotFound(_) => EXIT_REFUSED,
            InspectError::NotASpool(_) | InspectError::Spool(_) => EXIT_USAGE,
        };
        (code, e.to_string())
    })?;
    let tracks = tracking::from_spool(&deleted.meta, &deleted.log, &deleted.attempts, unix_now());
    let removed = tracks
        .iter()
        .filter(|t| t.state.is_pending() && t.state != CopyState::Active)
        .count();
    let value = json!({
        "id": id,
        "action": "deleted",
        "removed": removed,
        "in_flight": 0,
        "bounces": 0,
    });
    let text = table::removal(&value);
    Ok((value, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Queue {
        #[command(subcommand)]
        command: QueueCommand,
    }

    #[derive(clap::Parser)]
    struct SpoolCli {
        #[command(subcommand)]
        command: SpoolCommand,
    }

    #[test]
    fn commands_are_well_formed_and_map_to_requests() {
        Queue::command().debug_assert();
        SpoolCli::command().debug_assert();
        use clap::Parser;
        let parse = |args: &[&str]| Queue::try_parse_from(args).map(|q| q.command.action());
        assert_eq!(
            parse(&["q", "retry", "--provider", "yahoo"]).unwrap(),
            Action::QueueRetry {
                target: RetryTarget::Provider("yahoo".into())
            }
        );
        assert_eq!(
            parse(&["q", "retry", "--all"]).unwrap(),
            Action::QueueRetry {
                target: RetryTarget::All
            }
        );
        assert!(parse(&["q", "retry"]).is_err());
        assert!(parse(&["q", "retry", "ID", "--all"]).is_err());
        assert!(parse(&["q", "list", "--state", "lost"]).is_err());
    }

    #[test]
    fn the_log_setting_is_read_without_the_rest_of_the_config() {
        assert!(log_shows_addresses(
            "[log]\nshow_addresses = true\n[admin]\ntoken_env = \"UNSET\"\n"
        ));
        assert!(!log_shows_addresses("[log]\nformat = \"json\"\n"));
        assert!(!log_shows_addresses("not toml"));
    }
}
