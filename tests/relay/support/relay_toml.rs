//! The pieces of relay config (TOML) that most tests share, as macros expanding to string
//! literals so a test's config can stay a `const` built with `concat!`. Placeholders (`{dir}`,
//! `{metrics}`, `{admin}`) are filled by `InProcessRelay::start` and `RelayProc::start`. Inside
//! `format!`, pass a piece as a named argument (`{storage}` with `storage = spool_and_outbox!()`)
//! so its braces are not read as format placeholders.
#![allow(dead_code, unused_macros, unused_imports)]

/// A spool in `{dir}/spool` and one capture upstream, `outbox`, writing to `{dir}/outbox`;
/// with an argument, that line of TOML is added to `[spool]` (e.g. `retry_initial = "1s"`).
macro_rules! spool_and_outbox {
    () => {
        "[spool]\ndir = \"{dir}/spool\"\n[[upstream]]\nname = \"outbox\"\ndir = \"{dir}/outbox\"\n"
    };
    ($spool_line:literal) => {
        concat!(
            "[spool]\ndir = \"{dir}/spool\"\n",
            $spool_line,
            "\n[[upstream]]\nname = \"outbox\"\ndir = \"{dir}/outbox\"\n"
        )
    };
}

/// The listener on `{smtp}` as `relay.test`, open to loopback, splitting every message that shows
/// more than one recipient.
macro_rules! split_relay {
    () => {
        "[server]\nlisten = \"{smtp}\"\nhostname = \"relay.test\"\n[access]\nnetworks = [\"127.0.0.0/8\"]\n[privacy]\nmode = \"split\"\nmax_visible_recipients = 1\n"
    };
}

/// The metrics listener on `{metrics}`.
macro_rules! metrics_listener {
    () => {
        "[metrics]\nlisten = \"{metrics}\"\n"
    };
}

/// The admin API on `{admin}`, its token read from `TEST_ADMIN_TOKEN`.
macro_rules! admin_listener {
    () => {
        "[admin]\nlisten = \"{admin}\"\ntoken_env = \"TEST_ADMIN_TOKEN\"\n"
    };
}

pub(crate) use {admin_listener, metrics_listener, split_relay, spool_and_outbox};

/// An `[[upstream]]` named `name` on 127.0.0.1:`port` (a scripted server), with `tls` and
/// `timeout` as written in the config (`"none"`, `"10s"`).
pub fn scripted_upstream(name: &str, port: u16, tls: &str, timeout: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\ntimeout = \"{timeout}\"\n"
    )
}
