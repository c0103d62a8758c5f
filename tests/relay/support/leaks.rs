//! The harness of `tests/privacy_leaks.rs`: send many hostile messages through one real
//! `mailveil run` process per privacy mode, then judge every delivered copy from outside.
//!
//! A message is a [`Case`]: its bytes (holding `<MID>`, replaced by a unique Message-ID), its
//! envelope, the addresses the test knows to be private, the client that sends it, and what
//! each mode must do with it ([`Expect`]). [`run_mode`] sends a batch of cases (Python's
//! smtplib for most, a raw socket where a library would normalise the bytes, lettre for
//! some), waits until the relay's queue is empty, and checks, for every case:
//! - refused (5xx at end of DATA): no copy of it was delivered;
//! - accepted: every distinct envelope recipient got exactly one copy, every copy is CRLF-only
//!   without NUL, and no copy shows a private address other than its own recipient's, under
//!   `mailveil::fuzzing::oracle::shows` (header and body) and under the outside view
//!   (`tests/support/outside_view.py`, Python's `email` package, run once per batch);
//! - and what the case expects of this mode (refused with a given reply, or so many copies).
//!
//! At the end of each run the relay's log must hold none of the addresses used. Failures are
//! collected, not thrown one at a time, so one run reports every leak it found.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailveil::fuzzing::oracle::{self, Kind, Oracle};

use crate::support::scripted_smtp::ScriptedSmtp;
use crate::support::{BIN, PATIENCE, RawSmtp, RelayProc, http_get, lettre_send};

/// The privacy modes the promise holds in (monitor relays exposing copies on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Split,
    Bcc,
    Reject,
    /// Relays exposing copies unchanged: only for proving the checks find leaks.
    Monitor,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Split, Mode::Bcc, Mode::Reject];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Split => "split",
            Mode::Bcc => "bcc",
            Mode::Reject => "reject",
            Mode::Monitor => "monitor",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one mode must do with a case, on top of "refused, or delivered without a leak".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Refused at end of DATA: the reply has this code and enhanced status (`"550 5.7.1"`)
    /// and, when given, mentions this word.
    Refused {
        reply: &'static str,
        mention: Option<&'static str>,
    },
    /// Accepted, in this many deliveries when given.
    Delivered { copies: Option<usize> },
    /// Refused, or delivered without a leak.
    Either,
}

/// Refused for privacy: `550 5.7.1`.
pub const REFUSED: Expect = Expect::Refused {
    reply: "550 5.7.1",
    mention: None,
};

/// Refused because of the body: `550 5.7.1 body part ...`.
pub const REFUSED_BODY: Expect = Expect::Refused {
    reply: "550 5.7.1",
    mention: Some("body"),
};

/// NUL in DATA: `550 5.6.0`.
pub const REFUSED_NUL: Expect = Expect::Refused {
    reply: "550 5.6.0",
    mention: None,
};

pub const DELIVERED: Expect = Expect::Delivered { copies: None };

pub fn delivered(copies: usize) -> Expect {
    Expect::Delivered {
        copies: Some(copies),
    }
}

/// How a case reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Python's smtplib (bytes are sent as they are, dot-stuffed).
    Smtplib,
    /// [`RawSmtp`]: exact bytes, for bare CR, leading white space, odd RCPT arguments.
    Raw,
    /// lettre.
    Lettre,
}

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct Case {
    pub label: String,
    pub mail_from: String,
    /// Envelope recipients as the relay should understand them (and copies name them).
    pub rcpt_to: Vec<String>,
    /// What follows `RCPT TO:` on the wire, when it is not `<address>` (raw client only).
    pub rcpt_args: Option<Vec<Vec<u8>>>,
    /// Addresses no copy may show except to themselves: the envelope recipients plus the
    /// addresses the case planted in recipient fields.
    pub private: Vec<String>,
    /// The message; `<MID>` is replaced by the case's Message-ID.
    pub data: Vec<u8>,
    pub client: Client,
    expect: [Expect; 3],
    /// Split copies must show their own recipient in their one `To` field.
    pub own_to: bool,
    /// `mailveil inspect` on the same bytes must decide as `run` did.
    pub inspect: bool,
}

impl Case {
    /// A message some recipient's unchanged copy would show another private address in:
    /// reject mode must refuse it; split and bcc refuse it or deliver it without a leak.
    pub fn exposing(label: impl Into<String>, rcpt_to: &[&str], data: Vec<u8>) -> Case {
        let rcpt_to: Vec<String> = rcpt_to.iter().map(|r| r.to_string()).collect();
        Case {
            label: label.into(),
            mail_from: "app@sender.test".into(),
            private: rcpt_to.clone(),
            rcpt_to,
            rcpt_args: None,
            data,
            client: Client::Smtplib,
            expect: [Expect::Either, Expect::Either, REFUSED],
            own_to: false,
            inspect: false,
        }
    }

    /// A message that shows nobody anything it must not: delivered in every mode.
    pub fn control(label: impl Into<String>, rcpt_to: &[&str], data: Vec<u8>) -> Case {
        Case::exposing(label, rcpt_to, data).all(DELIVERED)
    }

    /// What `mode` must do with this case (monitor: anything).
    pub fn expect(&self, mode: Mode) -> &Expect {
        static ANYTHING: Expect = Expect::Either;
        self.expect.get(mode.index()).unwrap_or(&ANYTHING)
    }

    pub fn split(mut self, e: Expect) -> Case {
        self.expect[Mode::Split.index()] = e;
        self
    }

    pub fn bcc(mut self, e: Expect) -> Case {
        self.expect[Mode::Bcc.index()] = e;
        self
    }

    pub fn reject(mut self, e: Expect) -> Case {
        self.expect[Mode::Reject.index()] = e;
        self
    }

    pub fn all(mut self, e: Expect) -> Case {
        self.expect = [e.clone(), e.clone(), e];
        self
    }

    pub fn raw(mut self) -> Case {
        self.client = Client::Raw;
        self
    }

    pub fn lettre(mut self) -> Case {
        self.client = Client::Lettre;
        self
    }

    pub fn also_private(mut self, addresses: &[&str]) -> Case {
        self.private.extend(addresses.iter().map(|a| a.to_string()));
        self
    }

    pub fn own_to(mut self) -> Case {
        self.own_to = true;
        self
    }

    pub fn inspect(mut self) -> Case {
        self.inspect = true;
        self
    }

    pub fn rcpt_args(mut self, args: &[&[u8]]) -> Case {
        self.rcpt_args = Some(args.iter().map(|a| a.to_vec()).collect());
        self.client = Client::Raw;
        self
    }

    fn message_id(i: usize) -> String {
        format!("<leak-{i}.case@ids.test>")
    }

    fn bytes(&self, i: usize) -> Vec<u8> {
        let mid = Case::message_id(i);
        let at = memchr::memmem::find(&self.data, b"<MID>")
            .unwrap_or_else(|| panic!("case {:?} has no <MID>", self.label));
        [&self.data[..at], mid.as_bytes(), &self.data[at + 5..]].concat()
    }
}

/// Four fresh recipients per case, so a copy can only be confused with its own message.
pub struct Cast {
    pub a: String,
    pub b: String,
    pub c: String,
    pub d: String,
}

impl Cast {
    pub fn abc(&self) -> [&str; 3] {
        [&self.a, &self.b, &self.c]
    }

    pub fn abcd(&self) -> [&str; 4] {
        [&self.a, &self.b, &self.c, &self.d]
    }
}

/// Hands out [`Cast`]s: `ann.k2n7@east.test`...
pub struct Kit {
    tag: &'static str,
    n: usize,
}

impl Kit {
    pub fn new(tag: &'static str) -> Kit {
        Kit { tag, n: 0 }
    }

    pub fn cast(&mut self) -> Cast {
        self.n += 1;
        let t = format!("{}n{}", self.tag, self.n);
        Cast {
            a: format!("ann.{t}@east.test"),
            b: format!("bob.{t}@west.test"),
            c: format!("cat.{t}@north.test"),
            d: format!("dan.{t}@south.test"),
        }
    }
}

/// Where the relay delivers.
pub enum Upstream<'a> {
    /// A `dir` upstream in the relay's directory (`.eml` + `.json` per copy).
    Outbox,
    /// A scripted SMTP server in the test process (records the DATA bytes).
    Scripted(&'a ScriptedSmtp),
}

/// The operator's own domain in every relay of these tests (`trusted_domains`): its
/// mailboxes are not private and may see everything (an archive, a Bcc to self).
pub const TRUSTED_DOMAIN: &str = "corp.test";

/// True for an address in [`TRUSTED_DOMAIN`] that cannot route elsewhere (SPEC: `%`, `!`
/// and source routes are never trusted; nor are quoted local parts, which may hide them).
pub fn is_trusted(address: &str) -> bool {
    let address = lower(address);
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            domain == TRUSTED_DOMAIN
                && !local.is_empty()
                && !local.contains(['%', '!', '"', ':', '@', '\\', ' '])
        }
        None => false,
    }
}

/// Relay configuration for a mode (`body_check = "reject"` unless `extra` sets it); `extra`
/// is appended to `[privacy]`, `log` replaces the default `[log]` section when not empty.
pub fn relay_config(mode: Mode, extra: &str, upstream: &Upstream<'_>, log: &str) -> String {
    let upstream = match upstream {
        Upstream::Outbox => "name = \"outbox\"\ndir = \"{dir}/outbox\"".to_string(),
        Upstream::Scripted(s) => format!(
            "name = \"scripted\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"",
            s.port()
        ),
    };
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[metrics]
listen = "{{metrics}}"
[privacy]
mode = "{mode}"
max_visible_recipients = 1
{body_check}
trusted_domains = ["{TRUSTED_DOMAIN}"]
{extra}
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "2s"
[[upstream]]
{upstream}
{log}
"#,
        mode = mode.name(),
        body_check = if extra.contains("body_check") {
            ""
        } else {
            "body_check = \"reject\""
        },
    )
}

/// One copy as the upstream received it.
#[derive(Debug, Clone)]
pub struct Capture {
    pub rcpt_to: Vec<String>,
    /// The message (dot-unstuffed).
    pub bytes: Vec<u8>,
    /// The bytes as they crossed the wire (a scripted upstream records them still
    /// dot-stuffed); the same as `bytes` for a `dir` upstream.
    pub wire: Vec<u8>,
    /// The copy as a file, for the outside view.
    pub path: PathBuf,
}

/// What a run found: failures (empty when everything held) and a one-line summary.
pub struct RunReport {
    pub mode: Mode,
    pub failures: Vec<String>,
    pub summary: String,
    /// The relay's log at the end of the run.
    pub log: String,
    /// Final reply per case.
    pub replies: Vec<String>,
    /// Copies per case.
    pub copies: Vec<Vec<Capture>>,
}

/// Sends `cases` through a fresh relay in `mode` and checks everything the module doc lists.
pub async fn run_mode(
    mode: Mode,
    cases: &[Case],
    extra: &str,
    upstream: Upstream<'_>,
) -> RunReport {
    let config = relay_config(mode, extra, &upstream, "");
    let relay = RelayProc::start(&config, &[]).await;
    let started = Instant::now();
    let replies = send_all(relay.smtp, cases, relay.dir.path()).await;
    wait_for_empty_queue(&relay).await;
    let delivered = collect(&upstream, &relay);
    let mut failures = Vec::new();
    let log = relay.proc_.log_text();
    let copies = judge(mode, cases, &replies, delivered, &log, &mut failures);
    outside_view(mode, cases, &copies, relay.dir.path(), &mut failures).await;
    inspect_parity(mode, cases, &replies, &copies, &relay, &mut failures).await;
    let log = relay.proc_.log_text();
    let used = addresses_used(cases);
    for found in addresses_in_log(&log, &used) {
        failures.push(format!(
            "[{}] the relay log shows the raw address {found}",
            mode.name()
        ));
    }
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    let summary = format!(
        "{}: {} messages, {} accepted ({} copies), {} refused, {:.1}s",
        mode.name(),
        cases.len(),
        accepted,
        copies.iter().map(Vec::len).sum::<usize>(),
        cases.len() - accepted,
        started.elapsed().as_secs_f64()
    );
    RunReport {
        mode,
        failures,
        summary,
        log,
        replies,
        copies,
    }
}

/// Runs `cases` in every mode at once (one relay each) and fails with every problem found.
pub async fn run_all_modes(class: &str, cases: Vec<Case>) {
    let runs = Mode::ALL.map(|mode| {
        let cases = cases.clone();
        tokio::spawn(async move { run_mode(mode, &cases, "", Upstream::Outbox).await })
    });
    let mut failures = Vec::new();
    for run in runs {
        let report = run.await.expect("run does not panic");
        eprintln!("{class}: {}", report.summary);
        failures.extend(report.failures);
    }
    assert_no_failures(class, &failures);
}

pub fn assert_no_failures(class: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{class}: {} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Sending

/// smtplib: one connection, MAIL/RCPT/DATA per job, the final reply of each as `[code, text]`.
const SMTPLIB_SENDER: &str = r#"
import base64, json, smtplib, sys
port, path = int(sys.argv[1]), sys.argv[2]
out, s = [], None
for job in json.load(open(path)):
    try:
        if s is None:
            s = smtplib.SMTP('127.0.0.1', port, timeout=30)
            s.ehlo('smtplib.leaks.test')
        utf8 = not all(a.isascii() for a in [job['from']] + job['to'])
        code, msg = s.mail(job['from'], ['SMTPUTF8'] if utf8 else [])
        if code == 250:
            ok = [s.rcpt(r) for r in job['to']]
            good = [c for c, _ in ok if c in (250, 251)]
            if good:
                code, msg = s.data(base64.b64decode(job['data']))
            else:
                code, msg = ok[-1]
                s.rset()
        else:
            s.rset()
        out.append([code, msg.decode('utf-8', 'replace')])
    except smtplib.SMTPException as e:
        out.append([getattr(e, 'smtp_code', 0), str(e)])
        try:
            s.close()
        except Exception:
            pass
        s = None
if s is not None:
    s.quit()
json.dump(out, sys.stdout)
"#;

/// Sends every case with its client; the final reply of each, `"<code> <text>"`.
pub async fn send_all(smtp: SocketAddr, cases: &[Case], work: &Path) -> Vec<String> {
    let mut replies = vec![String::new(); cases.len()];
    let smtplib: Vec<usize> = (0..cases.len())
        .filter(|&i| cases[i].client == Client::Smtplib)
        .collect();
    if !smtplib.is_empty() {
        let jobs: Vec<serde_json::Value> = smtplib
            .iter()
            .map(|&i| {
                serde_json::json!({
                    "from": cases[i].mail_from,
                    "to": cases[i].rcpt_to,
                    "data": STANDARD.encode(cases[i].bytes(i)),
                })
            })
            .collect();
        let file = work.join("smtplib-jobs.json");
        std::fs::write(&file, serde_json::to_vec(&jobs).unwrap()).unwrap();
        let port = smtp.port().to_string();
        let out = python(&["-c", SMTPLIB_SENDER, &port, &file.display().to_string()]).await;
        let answers: Vec<(u16, String)> = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("smtplib sender output: {e}: {}", lossy(&out)));
        assert_eq!(answers.len(), smtplib.len(), "one answer per job");
        for (&i, (code, text)) in smtplib.iter().zip(answers) {
            replies[i] = format!("{code} {}", text.replace('\n', " "));
        }
    }
    for (i, case) in cases.iter().enumerate() {
        match case.client {
            Client::Smtplib => {}
            Client::Raw => replies[i] = send_raw(smtp, case, &case.bytes(i)).await,
            Client::Lettre => {
                let to: Vec<&str> = case.rcpt_to.iter().map(String::as_str).collect();
                replies[i] =
                    match lettre_send(smtp, Some(&case.mail_from), &to, &case.bytes(i)).await {
                        Ok(reply) => reply,
                        Err(e) => format!(
                            "{} {e}",
                            e.status().map_or("000".to_string(), |c| c.to_string())
                        ),
                    };
            }
        }
    }
    replies
}

/// One transaction over a raw socket; returns the final reply (or the first refusal).
pub async fn send_raw(smtp: SocketAddr, case: &Case, data: &[u8]) -> String {
    let (mut c, greeting) = RawSmtp::connect(smtp).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = c.cmd("EHLO raw.leaks.test").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let mail = c.cmd(&format!("MAIL FROM:<{}>", case.mail_from)).await;
    if !mail.starts_with("250") {
        return mail.trim_end().to_string();
    }
    let args: Vec<Vec<u8>> = case.rcpt_args.clone().unwrap_or_else(|| {
        case.rcpt_to
            .iter()
            .map(|r| format!("<{r}>").into_bytes())
            .collect()
    });
    let mut accepted = 0;
    let mut last = String::new();
    for arg in &args {
        c.send(&[b"RCPT TO:".as_slice(), arg, b"\r\n"].concat())
            .await;
        last = c.reply().await;
        accepted += usize::from(last.starts_with("250"));
    }
    if accepted == 0 {
        return last.trim_end().to_string();
    }
    let go = c.cmd("DATA").await;
    if !go.starts_with("354") {
        return go.trim_end().to_string();
    }
    c.send(data).await;
    if !data.ends_with(b"\r\n") {
        c.send(b"\r\n").await;
    }
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    c.cmd("QUIT").await;
    reply.trim_end().replace("\r\n", " ")
}

/// Runs `python3 ARGS`, bounded by [`PATIENCE`] (killed by PID when it overruns); stdout.
pub async fn python(args: &[&str]) -> Vec<u8> {
    let child = tokio::process::Command::new("python3")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("python3 finishes within patience")
        .unwrap();
    assert!(
        out.status.success(),
        "python3 failed ({}): {}",
        out.status,
        lossy(&out.stderr)
    );
    out.stdout
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until every delivery the relay queued reached a final outcome
/// (`mailveil_queue_messages` is 0 in every lane).
pub async fn wait_for_empty_queue(relay: &RelayProc) {
    let end = Instant::now() + PATIENCE;
    loop {
        let (_, text) = http_get(relay.metrics, "/metrics").await;
        let queued: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("mailveil_queue_messages{")
                    || l.starts_with("mailveil_queue_messages ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if queued == 0.0 {
            return;
        }
        assert!(
            Instant::now() < end,
            "{queued} deliveries still queued after {PATIENCE:?}; log:\n{}",
            relay.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every copy the upstream holds.
fn collect(upstream: &Upstream<'_>, relay: &RelayProc) -> Vec<Capture> {
    match upstream {
        Upstream::Outbox => mailveil::capture::read_all(&relay.outbox())
            .unwrap()
            .into_iter()
            .map(|c| Capture {
                path: relay.outbox().join(format!("{}.eml", c.id)),
                rcpt_to: c.rcpt_to,
                wire: c.bytes.clone(),
                bytes: c.bytes,
            })
            .collect(),
        Upstream::Scripted(s) => {
            let dir = relay.dir.path().join("scripted");
            std::fs::create_dir_all(&dir).unwrap();
            s.record()
                .messages
                .into_iter()
                .enumerate()
                .map(|(n, m)| {
                    let path = dir.join(format!("{n}.eml"));
                    std::fs::write(&path, &m.data).unwrap();
                    Capture {
                        rcpt_to: m.rcpt_to,
                        bytes: m.data,
                        wire: m.raw,
                        path,
                    }
                })
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Judging

/// `reply` has the code and enhanced status of `want` (`"550 5.7.1"`): the code first, the
/// status anywhere (lettre puts words between them).
pub fn reply_is(reply: &str, want: &str) -> bool {
    let (code, status) = want.split_once(' ').unwrap_or((want, ""));
    reply.starts_with(code) && reply.contains(status)
}

/// The header block of a copy: up to and including the first empty line (independent of the
/// product's scanner).
pub fn split_copy(bytes: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while let Some(nl) = memchr::memchr(b'\n', &bytes[i..]) {
        let next = i + nl + 1;
        let rest = &bytes[next..];
        for end in [b"\r\n".as_slice(), b"\n"] {
            if rest.starts_with(end) {
                let at = next + end.len();
                return (&bytes[..at], &bytes[at..]);
            }
        }
        i = next;
    }
    (bytes, &[])
}

/// CRLF line ends only, no NUL.
pub fn bytes_problem(bytes: &[u8]) -> Option<String> {
    for (i, &b) in bytes.iter().enumerate() {
        let problem = match b {
            0 => "NUL",
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => "bare CR",
            b'\n' if i == 0 || bytes[i - 1] != b'\r' => "bare LF",
            _ => continue,
        };
        let from = i.saturating_sub(30);
        let to = (i + 30).min(bytes.len());
        return Some(format!(
            "{problem} at byte {i}: {:?}",
            lossy(&bytes[from..to])
        ));
    }
    None
}

/// An address as the tests compare it: lower case, and `"plain"@d` written `plain@d` (the
/// same mailbox; SPEC: compared case-insensitively, duplicates delivered once).
pub fn lower(address: &str) -> String {
    let address = address.trim().to_lowercase();
    if let Some((local, domain)) = address.rsplit_once('@')
        && let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"'))
        && !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
    {
        return format!("{inner}@{domain}");
    }
    address
}

/// The private addresses `copy` must not show: all of them but its own recipient's (when
/// it has one untrusted recipient); none when all its recipients are trusted.
pub fn forbidden(case: &Case, copy: &Capture) -> Vec<String> {
    let members: Vec<String> = copy
        .rcpt_to
        .iter()
        .filter(|r| !is_trusted(r))
        .map(|r| lower(r))
        .collect();
    if members.is_empty() {
        return Vec::new();
    }
    let own = (members.len() == 1).then(|| members[0].clone());
    let mut out: Vec<String> = case
        .private
        .iter()
        .filter(|p| !is_trusted(p))
        .map(|p| lower(p))
        .filter(|p| Some(p) != own.as_ref())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn judge(
    mode: Mode,
    cases: &[Case],
    replies: &[String],
    delivered: Vec<Capture>,
    log: &str,
    failures: &mut Vec<String>,
) -> Vec<Vec<Capture>> {
    let mut by_case: Vec<Vec<Capture>> = vec![Vec::new(); cases.len()];
    let ids: Vec<String> = (0..cases.len()).map(Case::message_id).collect();
    for copy in delivered {
        match ids
            .iter()
            .position(|id| memchr::memmem::find(&copy.bytes, id.as_bytes()).is_some())
        {
            Some(i) => by_case[i].push(copy),
            None => failures.push(format!(
                "[{}] a copy of no message sent (smuggled?) to {:?}: {:?}",
                mode.name(),
                copy.rcpt_to,
                lossy(&copy.bytes[..copy.bytes.len().min(300)])
            )),
        }
    }
    for (i, case) in cases.iter().enumerate() {
        let reply = &replies[i];
        let copies = &by_case[i];
        let mut fail = |what: String| {
            failures.push(format!(
                "[{}] {}: {what} (reply {reply:?})",
                mode.name(),
                case.label
            ))
        };
        let accepted = reply.starts_with("250");
        if !accepted && !reply.starts_with('5') {
            fail("neither accepted nor refused".into());
        }
        if !accepted && !copies.is_empty() {
            fail(format!(
                "refused, yet {} copies were delivered",
                copies.len()
            ));
        }
        match case.expect(mode) {
            Expect::Refused {
                reply: want,
                mention,
            } => {
                if !reply_is(reply, want) {
                    fail(format!("must be refused with {want}"));
                } else if let Some(word) = mention
                    && !reply.to_lowercase().contains(word)
                {
                    fail(format!("the refusal must mention {word:?}"));
                }
            }
            Expect::Delivered { copies: want } => {
                if !accepted {
                    fail("must be delivered".into());
                } else if let Some(n) = want
                    && copies.len() != *n
                {
                    fail(format!(
                        "must be delivered in {n} copies, got {}",
                        copies.len()
                    ));
                }
            }
            Expect::Either => {}
        }
        if !accepted {
            continue;
        }
        // Every distinct envelope recipient got exactly one copy, and nobody else did.
        let mut want: Vec<String> = case.rcpt_to.iter().map(|r| lower(r)).collect();
        want.sort();
        want.dedup();
        let mut got: Vec<String> = copies
            .iter()
            .flat_map(|c| c.rcpt_to.iter().map(|r| lower(r)))
            .collect();
        got.sort();
        if got != want {
            // What the relay logged about this message explains where the copies went.
            let id = reply.rsplit(' ').next().unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| id.len() > 10 && l.contains(id) && !l.contains(" accepted "))
                .collect();
            fail(format!(
                "accepted, but the copies went to {got:?} instead of {want:?}; the relay logged:\n  {}",
                lines.join("\n  ")
            ));
        }
        for copy in copies {
            if let Some(problem) = bytes_problem(&copy.wire) {
                fail(format!("copy to {:?} holds a {problem}", copy.rcpt_to));
            }
            let (header, body) = split_copy(&copy.bytes);
            for address in forbidden(case, copy) {
                if oracle::shows(header, &address) {
                    fail(format!(
                        "the header of the copy to {:?} shows {address} (oracle):\n{}",
                        copy.rcpt_to,
                        lossy(header)
                    ));
                }
                if oracle::shows(body, &address) {
                    fail(format!(
                        "the body of the copy to {:?} shows {address} (oracle)",
                        copy.rcpt_to
                    ));
                }
            }
            if case.own_to && mode == Mode::Split {
                let oracle = Oracle::scan(header);
                let to = oracle.joined(Kind::To).to_lowercase();
                let own = copy.rcpt_to.first().map(|r| lower(r)).unwrap_or_default();
                if oracle.count(Kind::To) != 1 || !to.contains(&own) {
                    fail(format!("the split copy to {own} has To {to:?}"));
                }
            }
        }
    }
    by_case
}

/// The outside view (`outside_view.py`) over every delivered copy, in one Python run.
async fn outside_view(
    mode: Mode,
    cases: &[Case],
    copies: &[Vec<Capture>],
    work: &Path,
    failures: &mut Vec<String>,
) {
    let mut jobs = Vec::new();
    let mut label_of: BTreeMap<String, String> = BTreeMap::new();
    for (case, copies) in cases.iter().zip(copies) {
        for copy in copies {
            let file = copy.path.display().to_string();
            label_of.insert(file.clone(), case.label.clone());
            jobs.push(serde_json::json!({ "file": file, "forbidden": forbidden(case, copy) }));
        }
    }
    if jobs.is_empty() {
        return;
    }
    let findings = outside_view_findings(work, &jobs).await;
    for f in findings {
        let file = f["file"].as_str().unwrap_or_default();
        failures.push(format!(
            "[{}] {}: the outside view shows {} in {} of {file}: {:?}",
            mode.name(),
            label_of.get(file).map_or("?", String::as_str),
            f["address"],
            f["where"],
            f["text"].as_str().unwrap_or_default()
        ));
    }
}

/// Runs `tests/support/outside_view.py` over `jobs` (`{file, forbidden}`); its findings.
pub async fn outside_view_findings(
    work: &Path,
    jobs: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    let file = work.join("outside-view-jobs.json");
    std::fs::write(&file, serde_json::to_vec(jobs).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/relay/support/outside_view.py"
    );
    let out = python(&[script, &file.display().to_string()]).await;
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("outside_view.py output: {e}: {}", lossy(&out)))
}

/// `mailveil inspect` on the bytes of each case marked [`Case::inspect`] decides as `run` did:
/// refused by one exactly when refused by the other, and as many split copies.
async fn inspect_parity(
    mode: Mode,
    cases: &[Case],
    replies: &[String],
    copies: &[Vec<Capture>],
    relay: &RelayProc,
    failures: &mut Vec<String>,
) {
    for (i, case) in cases.iter().enumerate().filter(|(_, c)| c.inspect) {
        let file = relay.dir.path().join(format!("inspect-{i}.eml"));
        std::fs::write(&file, case.bytes(i)).unwrap();
        let mut args = vec![
            "inspect".to_string(),
            "-c".into(),
            relay.config.display().to_string(),
            file.display().to_string(),
            "--from".into(),
            case.mail_from.clone(),
        ];
        for r in &case.rcpt_to {
            args.extend(["--to".to_string(), r.clone()]);
        }
        let child = tokio::process::Command::new(BIN)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("inspect finishes within patience")
            .unwrap();
        let report = lossy(&out.stdout);
        let decision = report
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("decision: "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("?")
            .to_string();
        let run_refused = !replies[i].starts_with("250");
        let inspect_refused = decision == "reject";
        let deliveries = report
            .lines()
            .filter(|l| l.starts_with("delivery "))
            .count();
        let mut problem = String::new();
        if run_refused != inspect_refused {
            let _ = write!(
                problem,
                "run {} it, inspect decided {decision:?}",
                if run_refused { "refused" } else { "accepted" }
            );
        } else if !run_refused && mode == Mode::Split && deliveries != copies[i].len() {
            let _ = write!(
                problem,
                "run delivered {} copies, inspect plans {deliveries}",
                copies[i].len()
            );
        }
        if !problem.is_empty() {
            failures.push(format!(
                "[{}] {}: inspect and run differ: {problem} (reply {:?}; inspect stderr {:?})",
                mode.name(),
                case.label,
                replies[i],
                lossy(&out.stderr).trim()
            ));
        }
    }
}

/// Every address a batch used, lower case: envelope recipients and planted ones.
pub fn addresses_used(cases: &[Case]) -> BTreeSet<String> {
    cases
        .iter()
        .flat_map(|c| c.private.iter().chain(&c.rcpt_to))
        .map(|a| lower(a))
        .collect()
}

/// The addresses of `used` that occur in `log` as they are (case-insensitively).
pub fn addresses_in_log(log: &str, used: &BTreeSet<String>) -> Vec<String> {
    let log = log.to_lowercase();
    used.iter()
        .filter(|a| log.contains(a.as_str()))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// Building messages

/// Fields every message has; `<MID>` becomes the case's Message-ID.
pub const FROM: &str = "From: Notices <app@sender.test>";
pub const MID: &str = "Message-ID: <MID>";
pub const SUBJECT: &str = "Subject: Your statement is ready";
pub const DATE: &str = "Date: Mon, 01 Jun 2026 10:00:00 +0000";

/// A CRLF message from header lines (each without its line end) and a body.
pub fn mail(lines: &[String], body: &str) -> Vec<u8> {
    let mut m = String::new();
    for l in lines {
        m.push_str(l);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.into_bytes()
}

/// The standard fields with `leak` lines at `position` (0: first, 1: after From, 2: last).
pub fn with_fields(leak: &[String], position: usize) -> Vec<String> {
    let mut lines: Vec<String> = [FROM, MID, SUBJECT, DATE].map(String::from).to_vec();
    let at = match position {
        0 => 0,
        1 => 1,
        _ => lines.len(),
    };
    for (k, l) in leak.iter().enumerate() {
        lines.insert(at + k, l.clone());
    }
    lines
}

/// RFC 2047 Q word (`=?charset?Q?...?=`) encoding every byte that is not a letter or digit.
pub fn q_word(charset: &str, text: &str) -> String {
    let mut out = format!("=?{charset}?Q?");
    for b in text.bytes() {
        match b {
            b' ' => out.push('_'),
            b if b.is_ascii_alphanumeric() => out.push(b as char),
            b => {
                let _ = write!(out, "={b:02X}");
            }
        }
    }
    out.push_str("?=");
    out
}

/// RFC 2047 B word.
pub fn b_word(charset: &str, text: &str) -> String {
    format!("=?{charset}?B?{}?=", STANDARD.encode(text))
}

/// `text` with ASCII letters, digits, `@` and `.` as their fullwidth forms.
pub fn fullwidth(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() {
                char::from_u32(c as u32 - 0x21 + 0xff01).unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

/// `%XX` for every `@` (as in `mailto:` URLs and RFC 2231 values).
pub fn percent_at(address: &str) -> String {
    address.replace('@', "%40")
}

/// Base64 on one line (for encoded-words).
pub fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Base64 in 76-character lines, CRLF ended.
pub fn base64_lines(data: &[u8]) -> String {
    let text = STANDARD.encode(data);
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}
