use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::control::reload::scheduler_config;
use crate::envelope::Envelope;
use crate::observe::{Metrics, Redactor};
use crate::privacy::{Decision, PlannedDelivery, Rewrite};
use crate::spool::{DeliveryRecord, MessageMeta, Spool, unix_now};
use crate::upstream::Upstream;

use super::Scheduler;

struct Fixture {
    _dir: tempfile::TempDir,
    outbox: std::path::PathBuf,
    spool: Arc<Spool>,
    scheduler: Scheduler,
    metrics: Metrics,
}

fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let config = Config::from_toml(&format!(
        "{extra}\n[spool]\ndir = \"{}\"\n[[upstream]]\nname = \"outbox\"\ndir = \"{}\"\n",
        dir.path().join("spool").display(),
        outbox.display()
    ))
    .unwrap();
    let spool = Arc::new(Spool::open(&config.spool.dir).unwrap());
    let upstreams = vec![Upstream::from_config(&config.upstreams[0], "test").unwrap()];
    let metrics = Metrics::new();
    let scheduler = Scheduler::new(
        spool.clone(),
        upstreams,
        scheduler_config(&config),
        None,
        metrics.clone(),
        Redactor::plain(),
        crate::schedule::suppress::Suppressions::open(&config.spool.dir, metrics.clone()).unwrap(),
    );
    Fixture {
        _dir: dir,
        outbox,
        spool,
        scheduler,
        metrics,
    }
}

/// Spools and enqueues a message with one delivery per recipient, like a split.
fn submit(f: &Fixture, tag: &str, rcpts: &[String]) {
    let message = format!("Subject: {tag}\r\n\r\nbody\r\n").into_bytes();
    let meta = MessageMeta {
        id: Spool::new_id(),
        received_at: unix_now(),
        envelope: Envelope {
            mail_from: "s@src.test".into(),
            rcpt_to: rcpts.to_vec(),
        },
        decision: Decision::Split,
        size: message.len() as u64,
        deliveries: rcpts
            .iter()
            .map(|r| DeliveryRecord {
                planned: PlannedDelivery {
                    rcpt_to: vec![r.clone()],
                    rewrite: Rewrite::Unchanged,
                },
                provider: "default".into(),
            })
            .collect(),
        hold: None,
        privacy: None,
        app: None,
    };
    f.spool.store(&meta, &message).unwrap();
    f.scheduler.enqueue(meta, Some(Arc::new(message)), &[]);
}

async fn captured(f: &Fixture, n: usize) -> Vec<crate::capture::Captured> {
    for _ in 0..400 {
        let got = crate::capture::read_all(&f.outbox).unwrap();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} deliveries arrived");
}

#[tokio::test]
async fn pause_holds_deliveries_and_resume_releases_them() {
    let f = fixture("");
    f.scheduler.pause(None).await.unwrap();
    submit(&f, "held", &["a@x.test".into(), "b@x.test".into()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        crate::capture::read_all(&f.outbox).unwrap().is_empty(),
        "paused: nothing sent"
    );
    let status = f.scheduler.status();
    assert!(status.paused);
    assert_eq!(
        status
            .providers
            .iter()
            .find(|p| p.name == "default")
            .unwrap()
            .queued,
        2
    );
    f.scheduler.resume(None).await.unwrap();
    assert_eq!(captured(&f, 2).await.len(), 2);
    // A copy is visible in the outbox a moment before its outcome is recorded (the capture
    // writer syncs its directory after that): wait for the queue, bounded.
    let queued = || {
        f.scheduler
            .status()
            .providers
            .iter()
            .find(|p| p.name == "default")
            .unwrap()
            .queued
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while (queued() != 0 || !f.spool.recover().unwrap().is_empty())
        && std::time::Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queued(), 0);
    assert!(
        f.spool.recover().unwrap().is_empty(),
        "completed message left the spool"
    );
}

/// The pause is in the spool's record: a scheduler started over the same spool (a restart)
/// is paused before it queues anything, and says where the pause comes from.
#[tokio::test]
async fn a_pause_holds_in_a_scheduler_started_over_the_same_spool() {
    let f = fixture("");
    f.scheduler.pause(Some("yahoo")).await.unwrap();
    f.scheduler.pause(None).await.unwrap();
    let config = Config::from_toml(&format!(
        "[spool]\ndir = \"{}\"\n[[upstream]]\nname = \"outbox\"\ndir = \"{}\"\n",
        f.spool.root().display(),
        f.outbox.display()
    ))
    .unwrap();
    let upstreams = vec![Upstream::from_config(&config.upstreams[0], "test").unwrap()];
    let metrics = Metrics::new();
    let again = Scheduler::new(
        f.spool.clone(),
        upstreams,
        scheduler_config(&config),
        None,
        metrics.clone(),
        Redactor::plain(),
        crate::schedule::suppress::Suppressions::open(&config.spool.dir, metrics.clone()).unwrap(),
    );
    let status = again.status();
    assert!(status.paused);
    let sources: Vec<(String, String)> = status
        .pauses
        .iter()
        .map(|p| (p.provider.clone(), format!("{:?}", p.source)))
        .collect();
    assert_eq!(
        sources,
        [
            ("all".into(), "Spool".into()),
            ("yahoo".into(), "Spool".into())
        ]
    );
    assert!(
        status
            .providers
            .iter()
            .any(|p| p.name == "yahoo" && p.paused)
    );
    let text = metrics.render();
    assert!(
        text.contains("mailveil_paused{provider=\"all\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mailveil_paused{provider=\"yahoo\"} 1"),
        "{text}"
    );
    again.resume(None).await.unwrap();
    assert!(!again.status().paused);
    assert!(
        metrics
            .render()
            .contains("mailveil_paused{provider=\"all\"} 0")
    );
}

#[tokio::test]
async fn pausing_one_provider_leaves_the_others_flowing() {
    let f = fixture("");
    f.scheduler.pause(Some("yahoo")).await.unwrap();
    assert!(f.scheduler.pause(Some("no-such-provider")).await.is_err());
    submit(&f, "flows", &["a@x.test".into()]);
    assert_eq!(captured(&f, 1).await.len(), 1);
    let status = f.scheduler.status();
    assert!(
        status
            .providers
            .iter()
            .any(|p| p.name == "yahoo" && p.paused)
    );
    assert!(!status.paused);
}

#[tokio::test]
async fn a_transactional_message_overtakes_a_queued_fan_out() {
    let f = fixture("[[provider]]\nname = \"default\"\nmax_connections = 1");
    f.scheduler.pause(None).await.unwrap();
    let fan_out: Vec<String> = (0..50).map(|i| format!("n{i}@x.test")).collect();
    submit(&f, "newsletter", &fan_out);
    submit(&f, "password-reset", &["user@x.test".into()]);
    f.scheduler.resume(None).await.unwrap();
    let got = captured(&f, 51).await;
    // Capture ids are ordered by arrival; the reset must come out first.
    let first = got.iter().min_by(|a, b| a.id.cmp(&b.id)).unwrap();
    assert!(
        String::from_utf8_lossy(&first.bytes).contains("password-reset"),
        "first delivered was not the reset"
    );
}

#[tokio::test]
async fn reloaded_provider_limits_apply_to_existing_lanes() {
    let f = fixture(
        "[[provider]]\nname = \"alpha\"\ndomains = [\"a.test\"]\nmessages_per_second = 1.0\nmax_connections = 2",
    );
    f.scheduler.pause(Some("alpha")).await.unwrap(); // creates the lane
    let alpha = |f: &Fixture| {
        let status = f.scheduler.status();
        let p = status
            .providers
            .into_iter()
            .find(|p| p.name == "alpha")
            .unwrap();
        (p.messages_per_second, p.concurrency)
    };
    assert_eq!(alpha(&f), (Some(1.0), 2));
    let dir = f._dir.path();
    let reloaded = Config::from_toml(&format!(
        "[[provider]]\nname = \"alpha\"\ndomains = [\"a.test\"]\nmessages_per_second = 20.0\nmax_connections = 5\n[spool]\ndir = \"{}\"\n[[upstream]]\nname = \"outbox\"\ndir = \"{}\"\n",
        dir.join("spool").display(),
        f.outbox.display()
    ))
    .unwrap();
    let upstreams = vec![Upstream::from_config(&reloaded.upstreams[0], "test").unwrap()];
    f.scheduler
        .apply_config(scheduler_config(&reloaded), upstreams);
    assert_eq!(alpha(&f), (Some(20.0), 5));
}

/// A message as mailveil 0.1 planned it: `To: alice` to alice and bob passed unchanged (the
/// mail-merge leak). Spooled before an upgrade, it reaches the queue of version 2, whose check
/// before sending stops the copy: failed with a record, never delivered.
#[tokio::test]
async fn check_before_sending_stops_an_exposing_copy() {
    let f = fixture("");
    let message =
        b"From: app@src.test\r\nTo: \"Alice\" <alice@x.test>\r\nSubject: merge\r\n\r\nHi\r\n"
            .to_vec();
    let rcpts = vec!["alice@x.test".to_string(), "bob@y.test".to_string()];
    let planned = |rcpt_to: Vec<String>| DeliveryRecord {
        planned: PlannedDelivery {
            rcpt_to,
            rewrite: Rewrite::Unchanged,
        },
        provider: "default".into(),
    };
    let meta = MessageMeta {
        id: Spool::new_id(),
        received_at: unix_now(),
        envelope: Envelope {
            mail_from: "app@src.test".into(),
            rcpt_to: rcpts.clone(),
        },
        decision: Decision::Pass,
        size: message.len() as u64,
        // Alice's own copy may show Alice; the copy for both may not.
        deliveries: vec![planned(vec![rcpts[0].clone()]), planned(rcpts.clone())],
        hold: None,
        privacy: None,
        app: None,
    };
    let id = meta.id.clone();
    f.spool.store(&meta, &message).unwrap();
    f.scheduler.enqueue(meta, Some(Arc::new(message)), &[]);
    let got = captured(&f, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = crate::capture::read_all(&f.outbox).unwrap();
    assert_eq!(got_now.len(), 1, "only Alice's own copy leaves");
    assert_eq!(got[0].rcpt_to, ["alice@x.test"]);
    let blocked = f
        .metrics
        .privacy_blocked
        .with_label_values(&["field"])
        .get();
    assert_eq!(blocked, 1);
    let failed = f
        .metrics
        .deliveries
        .with_label_values(&["default", "none", "failed"])
        .get();
    assert_eq!(failed, 1);
    let record = f
        ._dir
        .path()
        .join("spool/failed")
        .join(format!("{id}.json"));
    for _ in 0..100 {
        if record.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(record.exists(), "the failure is recorded");
}

/// A message spooled by 0.1 with a bare CR in its body goes out with CRLF line ends only.
#[tokio::test]
async fn legacy_bare_cr_is_sent_as_crlf() {
    let f = fixture("");
    let message = b"Subject: old\r\n\r\nline one\rline two\r\n".to_vec();
    let meta = MessageMeta {
        id: Spool::new_id(),
        received_at: unix_now(),
        envelope: Envelope {
            mail_from: "s@src.test".into(),
            rcpt_to: vec!["a@x.test".into()],
        },
        decision: Decision::Pass,
        size: message.len() as u64,
        deliveries: vec![DeliveryRecord {
            planned: PlannedDelivery {
                rcpt_to: vec!["a@x.test".into()],
                rewrite: Rewrite::Unchanged,
            },
            provider: "default".into(),
        }],
        hold: None,
        privacy: None,
        app: None,
    };
    f.spool.store(&meta, &message).unwrap();
    // As after a restart: no bytes in memory, read back from the spool.
    f.scheduler.enqueue(meta, None, &[]);
    let got = captured(&f, 1).await;
    let eml = &got[0].bytes;
    assert!(crate::privacy::bytes::is_clean(eml), "{eml:?}");
    assert!(eml.ends_with(b"line one\r\nline two\r\n"));
}

#[tokio::test]
async fn a_copy_recorded_handed_off_is_never_sent_again_after_a_restart() {
    let f = fixture("");
    let rcpts = ["a@x.test".to_string(), "b@x.test".to_string()];
    let message = b"Subject: handed\r\n\r\nbody\r\n".to_vec();
    let mut meta =
        MessageMeta::split_sample(&Spool::new_id(), unix_now(), 0, &["a@x.test", "b@x.test"]);
    meta.size = message.len() as u64;
    for d in &mut meta.deliveries {
        d.planned.rewrite = Rewrite::Unchanged;
    }
    f.spool.store(&meta, &message).unwrap();
    f.spool
        .append(
            &meta.id,
            &[crate::spool::LogEntry::HandedOff { index: 0, at: 1 }],
        )
        .unwrap();
    f.spool.flush();
    // What a restart reads back from the spool.
    let reopened = Spool::open(f.spool.root()).unwrap();
    let recovered = reopened.recover().unwrap();
    drop(reopened);
    assert_eq!(recovered.len(), 1);
    assert_eq!(
        recovered[0].log,
        vec![crate::spool::LogEntry::HandedOff { index: 0, at: 1 }]
    );
    f.scheduler
        .enqueue(meta, Some(Arc::new(message)), &recovered[0].log);
    let got = captured(&f, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = crate::capture::read_all(&f.outbox).unwrap();
    assert_eq!(got_now.len(), 1, "only the copy not handed off is sent");
    assert_eq!(got[0].rcpt_to, vec![rcpts[1].clone()]);
    assert_eq!(f.spool.bytes(), 0, "the message left the spool");
}
