//! What `queue list` and `queue show` show of a message: built from its spool record and its
//! copies' tracks by pure functions, the same for the running relay (the admin API) and for a
//! stopped relay's spool (`mailveil spool list|show`).
//!
//! Addresses are shown as the log shows them (the keyed hash of `observe::log`, or in full
//! with `[log] show_addresses`) unless the request asks for them in full; an operator can
//! search by an address or by the hash a log line gave them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observe::Redactor;
use crate::schedule::tracking::{CopyState, Track};
use crate::spool::MessageMeta;

/// A listing's filters as the API and the command line take them (text, checked by
/// [`QueueFilter::parse`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FilterArgs {
    pub provider: Option<String>,
    /// `queued`, `deferred`, `held` or `active`.
    pub state: Option<String>,
    /// A duration such as `30m` or `2h`: messages received at least that long ago.
    pub older_than: Option<String>,
    /// An address, or the redacted form (or hash) a log line shows for it.
    pub rcpt: Option<String>,
    pub message_id: Option<String>,
    #[serde(default)]
    pub show_addresses: bool,
    /// At most this many messages in the answer (the oldest); `0`: all. Default
    /// [`DEFAULT_LIMIT`].
    pub limit: Option<usize>,
}

/// Messages a listing shows unless told otherwise: enough for a terminal, bounded for a
/// queue of a million.
pub const DEFAULT_LIMIT: usize = 1000;

/// The listing's answer: the first `limit` of `messages` (oldest first) and how many passed
/// the filters in all.
pub fn page(mut messages: Vec<MessageView>, limit: Option<usize>) -> serde_json::Value {
    let total = messages.len();
    let limit = match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => usize::MAX,
        n => n,
    };
    messages.truncate(limit);
    serde_json::json!({"messages": messages, "total": total})
}

/// Checked filters: a message is listed when it passes all of them. `provider` and `state`
/// apply to the same copy: "a copy to yahoo that is deferred".
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub provider: Option<String>,
    pub state: Option<CopyState>,
    pub older_than: Option<Duration>,
    pub rcpt: Option<String>,
    pub message_id: Option<String>,
}

/// A filter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown state {0:?}: use queued, deferred, held or active")]
    State(String),
    #[error("older_than {0:?} is not a duration (like 30m, 2h, 1d)")]
    Duration(String),
    #[error("{0} must not be empty; omit it to list everything")]
    Empty(&'static str),
}

impl QueueFilter {
    pub fn parse(args: &FilterArgs) -> Result<QueueFilter, FilterError> {
        let given = |value: &Option<String>, name| match value.as_deref().map(str::trim) {
            Some("") => Err(FilterError::Empty(name)),
            v => Ok(v.map(str::to_string)),
        };
        let state = match given(&args.state, "state")? {
            Some(s) => Some(CopyState::parse_filter(&s).ok_or(FilterError::State(s))?),
            None => None,
        };
        let older_than = match given(&args.older_than, "older_than")? {
            Some(d) => Some(humantime::parse_duration(&d).map_err(|_| FilterError::Duration(d))?),
            None => None,
        };
        Ok(QueueFilter {
            provider: given(&args.provider, "provider")?,
            state,
            older_than,
            rcpt: given(&args.rcpt, "rcpt")?.map(|r| r.to_lowercase()),
            message_id: given(&args.message_id, "message_id")?.map(|m| bare_id(&m).to_string()),
        })
    }

    /// Whether a Message-ID is needed to decide (it is read from the message's bytes).
    /// The listing entry of a message that passes the filter; its Message-ID (from the
    /// message's bytes) is read only when the filter names one. The same for the running queue
    /// and for `mailveil spool`.
    pub fn listed(
        &self,
        meta: &MessageMeta,
        tracks: &[Track],
        message_id: impl FnOnce() -> Option<String>,
        redactor: &Redactor,
        now: u64,
    ) -> Option<MessageView> {
        let mid = self.needs_message_id().then(message_id).flatten();
        self.matches(meta, tracks, mid.as_deref(), redactor, now)
            .then(|| {
                let mut v = summary(meta, tracks, redactor, now);
                v.message_id = mid;
                v
            })
    }

    pub fn needs_message_id(&self) -> bool {
        self.message_id.is_some()
    }

    /// Whether the message passes; `message_id` is its Message-ID when
    /// [`needs_message_id`](Self::needs_message_id).
    pub fn matches(
        &self,
        meta: &MessageMeta,
        tracks: &[Track],
        message_id: Option<&str>,
        redactor: &Redactor,
        now: u64,
    ) -> bool {
        if let Some(age) = self.older_than
            && now.saturating_sub(meta.received_at) < age.as_secs()
        {
            return false;
        }
        if self.provider.is_some() || self.state.is_some() {
            let copy_matches = meta.deliveries.iter().zip(tracks).any(|(d, t)| {
                t.state.is_pending()
                    && self.provider.as_ref().is_none_or(|p| &d.provider == p)
                    && self.state.is_none_or(|s| t.state == s)
            });
            if !copy_matches {
                return false;
            }
        }
        if let Some(wanted) = &self.rcpt {
            let addresses = meta
                .deliveries
                .iter()
                .flat_map(|d| &d.planned.rcpt_to)
                .chain(&meta.envelope.rcpt_to);
            if !addresses
                .into_iter()
                .any(|a| address_matches(a, wanted, redactor))
            {
                return false;
            }
        }
        if let Some(wanted) = &self.message_id
            && message_id.map(bare_id) != Some(wanted.as_str())
        {
            return false;
        }
        true
    }
}

/// An address matches itself (any case), the redacted form the log shows (`3f9a1c2b@x.test`)
/// and that form's hash alone (`3f9a1c2b`). `wanted` is lowercase.
fn address_matches(address: &str, wanted: &str, redactor: &Redactor) -> bool {
    if address.to_lowercase() == wanted {
        return true;
    }
    let hashed = redactor.hashed(address);
    hashed == wanted || hashed.split('@').next() == Some(wanted)
}

/// A Message-ID without its angle brackets and surrounding space.
fn bare_id(id: &str) -> &str {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
}

/// The Message-ID field of a header block (unfolded), if it has one.
pub fn message_id(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.to_string();
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next);
            lines.next();
        }
        let id = bare_id(&value);
        return (!id.is_empty()).then(|| id.to_string());
    }
    None
}

/// One message in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub received_at: u64,
    pub age_secs: u64,
    /// The envelope sender, redacted as in the log unless addresses were asked for.
    pub from: String,
    /// Envelope recipients and deliveries (copies) of the message.
    pub recipients: usize,
    pub deliveries: usize,
    /// Copies by state (`queued`, `active`, `deferred`, `held`, `delivered`, `failed`, ...).
    pub states: BTreeMap<String, usize>,
    /// Providers of the copies still to go.
    pub providers: Vec<String>,
    /// The earliest next attempt of a deferred copy (Unix seconds).
    pub next_attempt_at: Option<u64>,
    /// The most attempts any copy has had.
    pub attempts: u32,
    /// Its Message-ID, when it was read (`show`, or a Message-ID filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// One copy in `queue show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryView {
    pub index: usize,
    pub rcpt_to: Vec<String>,
    pub provider: String,
    pub state: CopyState,
    pub attempts: u32,
    pub first_attempt_at: Option<u64>,
    pub last_attempt_at: Option<u64>,
    pub next_attempt_at: Option<u64>,
    /// The code of the last reply (or the final one).
    pub last_code: Option<u16>,
    /// The last reply or error, addresses in it redacted like the rest.
    pub last_reply: Option<String>,
    pub upstream: Option<String>,
}

/// One message in `queue show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageView,
    pub size: u64,
    pub decision: String,
    /// `held`, `released` or `dropped` for a message under a bulk hold.
    pub hold: Option<String>,
    pub copies: Vec<DeliveryView>,
}

/// The listing row of a message.
pub fn summary(meta: &MessageMeta, tracks: &[Track], redactor: &Redactor, now: u64) -> MessageView {
    let mut states = BTreeMap::new();
    let mut providers: Vec<String> = Vec::new();
    for (d, t) in meta.deliveries.iter().zip(tracks) {
        *states.entry(t.state.as_str().to_string()).or_insert(0) += 1;
        if t.state.is_pending() && !providers.contains(&d.provider) {
            providers.push(d.provider.clone());
        }
    }
    providers.sort();
    MessageView {
        id: meta.id.clone(),
        received_at: meta.received_at,
        age_secs: now.saturating_sub(meta.received_at),
        from: redactor.addr(&meta.envelope.mail_from).to_string(),
        recipients: meta.envelope.rcpt_to.len(),
        deliveries: meta.deliveries.len(),
        states,
        providers,
        next_attempt_at: tracks
            .iter()
            .filter(|t| t.state == CopyState::Deferred)
            .filter_map(|t| t.next_at)
            .min(),
        attempts: tracks.iter().map(|t| t.attempts.count).max().unwrap_or(0),
        message_id: None,
    }
}

/// Everything `queue show` says about a message.
pub fn detail(
    meta: &MessageMeta,
    tracks: &[Track],
    message_id: Option<String>,
    redactor: &Redactor,
    now: u64,
) -> MessageDetail {
    let mut summary = summary(meta, tracks, redactor, now);
    summary.message_id = message_id;
    let copies = meta
        .deliveries
        .iter()
        .zip(tracks)
        .enumerate()
        .map(|(index, (d, t))| {
            let a = &t.attempts;
            let tried = a.count > 0;
            DeliveryView {
                index,
                rcpt_to: d
                    .planned
                    .rcpt_to
                    .iter()
                    .map(|r| redactor.addr(r).to_string())
                    .collect(),
                provider: d.provider.clone(),
                state: t.state,
                attempts: a.count,
                first_attempt_at: tried.then_some(a.first),
                last_attempt_at: tried.then_some(a.last),
                next_attempt_at: (t.state == CopyState::Deferred)
                    .then_some(t.next_at)
                    .flatten(),
                last_code: a.code.or(t.final_code),
                last_reply: (!a.reply.is_empty()).then(|| redactor.text(&a.reply).to_string()),
                upstream: (!a.upstream.is_empty()).then(|| a.upstream.clone()),
            }
        })
        .collect();
    let hold = meta.hold.as_ref().map(|h| {
        match h.state {
            crate::spool::HoldState::Held => "held",
            crate::spool::HoldState::Released => "released",
            crate::spool::HoldState::Dropped => "dropped",
        }
        .to_string()
    });
    MessageDetail {
        summary,
        size: meta.size,
        decision: format!("{:?}", meta.decision).to_lowercase(),
        hold,
        copies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tracking::from_spool;
    use crate::spool::LogEntry;

    #[test]
    fn filters_and_views() {
        let meta = MessageMeta::split_sample("M1", 100, 10, &["Ann@x.test", "bob@y.test"]);
        let log = [LogEntry::Deferred {
            index: 1,
            next_at: 500,
        }];
        let tracks = from_spool(&meta, &log, &[], 200);
        let redactor = Redactor::new(false, [7; 32]);
        let parse = |args: FilterArgs| QueueFilter::parse(&args).unwrap();
        let pass = |f: &QueueFilter, mid| f.matches(&meta, &tracks, mid, &redactor, 200);
        assert!(pass(&parse(FilterArgs::default()), None));
        let deferred = parse(FilterArgs {
            state: Some("deferred".into()),
            ..FilterArgs::default()
        });
        assert!(pass(&deferred, None));
        let held = parse(FilterArgs {
            state: Some("held".into()),
            ..FilterArgs::default()
        });
        assert!(!pass(&held, None));
        let by_hash = redactor.hashed("ann@x.test");
        for rcpt in [
            "ann@x.test",
            "ANN@X.TEST",
            &by_hash,
            by_hash.split('@').next().unwrap(),
        ] {
            let f = parse(FilterArgs {
                rcpt: Some(rcpt.into()),
                ..FilterArgs::default()
            });
            assert!(pass(&f, None), "{rcpt}");
        }
        let nobody = parse(FilterArgs {
            rcpt: Some("carl@x.test".into()),
            ..FilterArgs::default()
        });
        assert!(!pass(&nobody, None));
        let old = parse(FilterArgs {
            older_than: Some("2m".into()),
            ..FilterArgs::default()
        });
        assert!(!pass(&old, None), "100 s old");
        let mid = parse(FilterArgs {
            message_id: Some("<a@b>".into()),
            ..FilterArgs::default()
        });
        assert!(pass(&mid, Some("a@b")) && !pass(&mid, Some("c@b")) && !pass(&mid, None));
        assert!(
            QueueFilter::parse(&FilterArgs {
                state: Some("lost".into()),
                ..FilterArgs::default()
            })
            .is_err()
        );
        let view = detail(&meta, &tracks, Some("a@b".into()), &redactor, 200);
        assert_eq!(view.summary.states["deferred"], 1);
        assert_eq!(view.summary.next_attempt_at, Some(500));
        assert!(!serde_json::to_string(&view).unwrap().contains("ann@"));
    }

    #[test]
    fn message_ids_are_found_in_folded_headers() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID:\r\n <abc@d.test>\r\n\r\n").as_deref(),
            Some("abc@d.test")
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <b@c>\r\n"), None);
    }
}
