//! The integration tests that talk to mailveil over real sockets: the real binary started as a
//! process (`support::RelayProc`), the relay in-process on port 0, the `mailveil sink`, scripted
//! upstreams, real TLS, real Redis. One test binary for all of them: each module used to be a
//! binary of its own, and linking 27 binaries (each with its own copy of `support`) took more of
//! CI's time than running them. Run one file's tests with `cargo test --test relay <module>::`.

mod support;

mod admin;
mod admission;
mod app_limits;
mod apps;
mod bounce;
mod budgets;
mod bulk_hold;
mod cli;
mod cluster;
mod cluster_auth;
mod crash;
mod credentials;
mod dane;
mod deploy;
mod deploy_rules;
mod direct_mx;
mod disk_full;
mod dkim;
mod drain;
mod events;
mod health;
mod hostile;
mod http_limits;
mod inbound_tls_auth;
mod metrics_docs;
mod mta_sts;
mod mx;
mod observability;
mod pause;
mod permissions;
mod privacy_leaks;
mod process_metrics;
mod queue_control;
mod queue_faults;
mod queue_lanes;
mod relay_e2e;
mod reload;
mod restart;
mod shaping;
mod shaping_fleet;
mod shaping_replies;
mod spool_recovery;
mod startup_checks;
mod suppression;
mod threshold_fleet;
mod upstream;
mod upstream_fleet;
mod upstream_hostile;
mod upstream_limits;
mod upstream_pipelining;
mod upstream_tls;
