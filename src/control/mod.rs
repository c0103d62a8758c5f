//! Steering the running relay: the admin API ([`admin`]: status, pause/resume, bulk-hold
//! decisions, reload, behind a bearer token), its `mailveil ctl` client ([`ctl`]), the
//! health probe `mailveil ctl health` ([`health`]: no token, for container health checks) and
//! hot reload ([`reload`]: SIGHUP and `POST /reload`); the queue's part of the API
//! ([`queue_api`]), the `ctl queue` and `mailveil spool` commands ([`queue_cli`]) and their
//! tables ([`table`], the shaping part in [`shaping_table`]); `mailveil passwd` ([`passwd`]: an
//! entry for `access.users_file`).
//!
//! The control plane reaches into the relay, the scheduler and inbound to change them; nothing in
//! the data path imports it. It is served under the HTTP limits of [`crate::observe::serve`] and
//! counted in [`crate::observe::Metrics`], like the metrics endpoint.

pub mod admin;
mod apps_table;
pub mod ctl;
pub mod ctl_command;
pub mod health;
pub mod passwd;
pub mod queue_api;
pub mod queue_cli;
pub mod reload;
pub mod shaping_table;
pub mod suppress_api;
pub mod table;
