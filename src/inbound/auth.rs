//! AUTH PLAIN and LOGIN (RFC 4954), offered only under TLS so a password never crosses the
//! network in clear text.
//!
//! Guessing is slowed twice over:
//! - per connection: a failed attempt is answered after a pause that grows with each failure
//!   (1 s, 2 s, ... by default) and the connection is closed with `421 4.7.0` after a few of
//!   them (3 by default);
//! - per source and for the whole relay, across connections: the AUTH failure budget
//!   (`auth_budget.rs`). A source that used its budget is banned for a while: its AUTH is
//!   answered `421 4.7.0` before any password is checked, and the connection closes.
//!
//! With `access.users_file`, passwords are verified against argon2id hashes off the runtime,
//! with a cache of successes (see `crate::credentials`).
//!
//! `*_env`/`*_file` passwords are compared in constant time (BLAKE3 digests, whose equality is constant-time, so
//! neither content nor length leaks through timing), and never logged. A failed attempt is
//! logged with the source and the client's EHLO name; its user name only when it is a configured
//! one: an unknown name is often a password typed (or configured) in the wrong field.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::auth_budget::{Attempt, Gate};
use super::replies;
use super::session::{End, Flow, Input, Rejection, Session, Stream};
use super::{Acceptor, InboundError};
use crate::config::User;
use crate::credentials;
use crate::observe::log::escaped;

/// One client answer in the AUTH exchange.
enum Answer {
    Data(Vec<u8>),
    Cancelled,
    Malformed,
    End(End),
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    pub(super) async fn auth(
        &mut self,
        mechanism: u64,
        initial: String,
    ) -> Result<Flow, InboundError> {
        if !self.ctx.settings.access.auth_enabled() {
            return Ok(self.reject(Rejection::NotImplemented, &replies::AUTH_NOT_AVAILABLE));
        }
        if !self.st.tls {
            tracing::info!(peer = %self.st.peer, "AUTH before STARTTLS refused");
            return Ok(self.reject(Rejection::EncryptionRequired, &replies::ENCRYPTION_REQUIRED));
        }
        if self.st.user.is_some() {
            return Ok(self.reject(Rejection::BadSequence, &replies::ALREADY_AUTHENTICATED));
        }
        if self.st.tx.is_some() {
            return Ok(self.reject(Rejection::BadSequence, &replies::AUTH_IN_TRANSACTION));
        }
        // A banned source is refused before it sends a password, let alone has one checked.
        let gate = self.ctx.admission.auth().gate(self.st.ticket.source());
        if gate != Gate::Open {
            return Ok(self.auth_refused(gate));
        }
        let credentials = match mechanism {
            AUTH_PLAIN => self.plain(&initial).await?,
            AUTH_LOGIN => self.login(&initial).await?,
            _ => return Ok(self.reject(Rejection::NotImplemented, &replies::AUTH_MECHANISM)),
        };
        match credentials {
            Ok((name, password)) => self.verify(name, &password).await,
            Err(Answer::Cancelled) => Ok(self.reject(Rejection::Syntax, &replies::AUTH_CANCELLED)),
            Err(Answer::End(end)) => Ok(self.end(end)),
            Err(Answer::Malformed | Answer::Data(_)) => {
                Ok(self.reject(Rejection::Syntax, &replies::AUTH_MALFORMED))
            }
        }
    }

    /// PLAIN: `authzid NUL authcid NUL passwd`, in the initial response or after `334 `.
    async fn plain(
        &mut self,
        initial: &str,
    ) -> Result<Result<(String, Vec<u8>), Answer>, InboundError> {
        let raw = match initial {
            "" => match self.challenge("").await? {
                Answer::Data(d) => d,
                other => return Ok(Err(other)),
            },
            text => match decode(text.as_bytes()) {
                Answer::Data(d) => d,
                other => return Ok(Err(other)),
            },
        };
        let mut parts = raw.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Err(Answer::Malformed));
        };
        // Acting for another identity (authzid) is not supported.
        if !authzid.is_empty() && authzid != authcid {
            return Ok(Err(Answer::Malformed));
        }
        match String::from_utf8(authcid.to_vec()) {
            Ok(name) => Ok(Ok((name, password.to_vec()))),
            Err(_) => Ok(Err(Answer::Malformed)),
        }
    }

    /// LOGIN: user name (possibly as initial response), then password, each after a prompt.
    async fn login(
        &mut self,
        initial: &str,
    ) -> Result<Result<(String, Vec<u8>), Answer>, InboundError> {
        let name = match initial {
            "" => self.challenge("VXNlcm5hbWU6").await?, // "Username:"
            text => decode(text.as_bytes()),
        };
        let Answer::Data(name) = name else {
            return Ok(Err(name));
        };
        let password = match self.challenge("UGFzc3dvcmQ6").await? {
            // "Password:"
            Answer::Data(password) => password,
            other => return Ok(Err(other)),
        };
        match String::from_utf8(name) {
            Ok(name) => Ok(Ok((name, password))),
            Err(_) => Ok(Err(Answer::Malformed)),
        }
    }

    /// Sends `334 <prompt>` and reads one base64 line.
    async fn challenge(&mut self, prompt: &str) -> Result<Answer, InboundError> {
        self.write_raw(b"334 ");
        self.write_raw(prompt.as_bytes());
        self.write_raw(b"\r\n");
        Ok(match self.next_line().await? {
            Input::Line(range) => decode(self.line(range)),
            Input::TooLong => Answer::Malformed,
            Input::End(end) => Answer::End(end),
        })
    }

    /// Answers an AUTH the budget refuses (`421 4.7.0`, nothing checked) and closes.
    fn auth_refused(&mut self, gate: Gate) -> Flow {
        let (why, reply) = match gate {
            Gate::Exhausted { .. } => (Rejection::AuthThrottled, &replies::AUTH_EXHAUSTED),
            Gate::Banned { .. } | Gate::Open => (Rejection::AuthBanned, &replies::AUTH_BANNED),
        };
        self.reply(reply);
        self.count(why);
        tracing::debug!(peer = %self.st.peer, reason = why.reason(), "AUTH refused unchecked");
        Flow::Close
    }

    async fn verify(&mut self, name: String, password: &[u8]) -> Result<Flow, InboundError> {
        let access = &self.ctx.settings.access;
        let source = self.st.ticket.source();
        let budget = self.ctx.admission.auth();
        let attempt = if access.credentials.is_empty() {
            // Only `*_env`/`*_file` passwords: cheap, checked under the budget's lock.
            budget.attempt(source, || check(&access.users, &name, password))
        } else {
            match self.verify_stored(&name, password).await? {
                Ok(true) => Attempt::Succeeded,
                Ok(false) => budget.failed(source),
                Err(gate) => Attempt::Refused(gate),
            }
        };
        let (banned, exhausted) = match attempt {
            Attempt::Succeeded => {
                tracing::info!(peer = %self.st.peer, user = %escaped(&name), "AUTH succeeded");
                self.st.user = Some(name);
                self.st.trust();
                self.reply(&replies::AUTH_OK);
                return Ok(Flow::Continue);
            }
            Attempt::Refused(gate) => return Ok(self.auth_refused(gate)),
            Attempt::Failed { banned, exhausted } => (banned, exhausted),
        };
        let known = self.ctx.settings.access.has_login(&name);
        self.ctx
            .metrics
            .auth_failures
            .with_label_values(&[if known { name.as_str() } else { "unknown" }])
            .inc();
        self.st.auth_failures += 1;
        self.count(Rejection::AuthFailed);
        tracing::info!(
            peer = %self.st.peer,
            user = %escaped(if known { name.as_str() } else { "(not a configured user)" }),
            helo = %self.st.helo_for_log(),
            failures = self.st.auth_failures,
            "AUTH failed"
        );
        if let Some(ban) = banned {
            tracing::warn!(
                %source,
                ban_secs = ban.as_secs(),
                budget = %self.ctx.settings.access.auth_failures_per_source,
                "AUTH failure budget of this source exhausted; AUTH refused to it until the ban ends"
            );
        }
        if exhausted {
            tracing::warn!(
                budget = %self.ctx.settings.access.auth_failures_total,
                "AUTH failure budget of the relay exhausted; AUTH refused to everybody until it refills"
            );
        }
        // Earlier replies go out now; only the 535 waits, longer after each failure.
        self.flush().await?;
        let delay = self
            .ctx
            .tuning
            .auth_failure_delay
            .saturating_mul(self.st.auth_failures);
        tokio::time::sleep(delay).await;
        self.reply(&replies::AUTH_FAILED);
        if banned.is_some() {
            self.reply(&replies::AUTH_BANNED);
            return Ok(Flow::Close);
        }
        if self.st.auth_failures >= self.ctx.tuning.max_auth_failures {
            self.reply(&replies::TOO_MANY_AUTH_FAILURES);
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// Checks a password with a users file configured: the success cache first; else, holding
    /// a hashing permit (and only once the budget's gate is still open), argon2 on a blocking
    /// thread. A login of `access.users` is checked as before, plus a dummy hash, so it costs
    /// what any other login costs. `Err` is a gate that closed while waiting for the permit.
    async fn verify_stored(
        &mut self,
        name: &str,
        password: &[u8],
    ) -> Result<Result<bool, Gate>, InboundError> {
        let access = &self.ctx.settings.access;
        let today = credentials::today();
        let admission = self.ctx.admission.clone();
        if admission
            .verified()
            .hit(&access.credentials, name, password, today)
        {
            return Ok(Ok(true));
        }
        let plain = check(&access.users, name, password);
        let _permit = credentials::HASHING
            .acquire()
            .await
            .expect("the hashing semaphore is never closed");
        let gate = admission.auth().gate(self.st.ticket.source());
        if gate != Gate::Open {
            return Ok(Err(gate));
        }
        let stored = access.credentials.clone();
        let (name, password) = (name.to_string(), password.to_vec());
        let hashed = tokio::task::spawn_blocking(move || {
            credentials::verify_blocking(&stored, admission.verified(), &name, &password, today)
        })
        .await
        .unwrap_or(false);
        Ok(Ok(plain || hashed))
    }
}

/// Decodes one client answer: `*` cancels, `=` is the empty initial response.
fn decode(line: &[u8]) -> Answer {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"*" => Answer::Cancelled,
        b"=" => Answer::Data(Vec::new()),
        text => match BASE64.decode(text) {
            Ok(bytes) => Answer::Data(bytes),
            Err(_) => Answer::Malformed,
        },
    }
}

/// True when some configured user has this name and password. Every user is compared, with
/// no early exit, so timing does not tell which names exist.
fn check(users: &[User], name: &str, password: &[u8]) -> bool {
    let name_digest = blake3::hash(name.as_bytes());
    let password_digest = blake3::hash(password);
    let mut found = false;
    for user in users {
        let name_ok = blake3::hash(user.name.as_bytes()) == name_digest;
        let password_ok = blake3::hash(user.password.expose().as_bytes()) == password_digest;
        found |= name_ok & password_ok;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn checks_name_and_password() {
        let users = vec![
            User {
                name: "a".into(),
                password: Secret::new("pa"),
            },
            User {
                name: "b".into(),
                password: Secret::new("pb"),
            },
        ];
        assert!(check(&users, "b", b"pb"));
        assert!(!check(&users, "a", b"pb"), "another user's password");
        assert!(!check(&users, "c", b"pa"));
        assert!(!check(&[], "a", b"pa"));
    }

    #[test]
    fn decodes_answers() {
        assert!(matches!(decode(b"*\r\n"), Answer::Cancelled));
        assert!(matches!(decode(b"!!!\r\n"), Answer::Malformed));
        assert!(matches!(decode(b"YQ==\r\n"), Answer::Data(d) if d == b"a"));
        assert!(matches!(decode(b"=\r\n"), Answer::Data(d) if d.is_empty()));
    }
}
