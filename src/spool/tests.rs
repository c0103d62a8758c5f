use super::*;
use crate::envelope::Envelope;
use crate::privacy::{Decision, PlannedDelivery, Rewrite};

fn meta(id: &str, rcpts: &[&str]) -> MessageMeta {
    MessageMeta {
        id: id.into(),
        received_at: 1,
        envelope: Envelope {
            mail_from: "s@x.test".into(),
            rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
        },
        decision: Decision::Split,
        size: 5,
        deliveries: rcpts
            .iter()
            .map(|r| DeliveryRecord {
                planned: PlannedDelivery {
                    rcpt_to: vec![r.to_string()],
                    rewrite: Rewrite::OnlyRecipient {
                        address: r.to_string(),
                        display_name: None,
                    },
                },
                provider: "default".into(),
            })
            .collect(),
    }
}

#[test]
fn stored_message_is_recovered_with_its_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool
        .store(&meta("A1", &["a@x.test", "b@y.test"]), b"hello")
        .unwrap();
    spool
        .append("A1", &[LogEntry::Delivered { index: 1, at: 2 }])
        .unwrap();
    assert_eq!(spool.bytes(), 5);

    let reopened = Spool::open(dir.path()).unwrap();
    let found = reopened.recover().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].meta.deliveries.len(), 2);
    assert_eq!(found[0].log, vec![LogEntry::Delivered { index: 1, at: 2 }]);
    assert_eq!(reopened.read_message("A1").unwrap(), b"hello");
    assert_eq!(reopened.bytes(), 5);
}

#[test]
fn half_written_messages_are_swept_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("msg/B1.eml"), b"never acknowledged").unwrap();
    std::fs::write(dir.path().join("msg/B2.json.tmp"), b"{").unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("msg")).unwrap().count(),
        0
    );
}

#[test]
fn completion_removes_the_message_and_keeps_a_failure_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = meta("C1", &["a@x.test", "b@y.test"]);
    spool.store(&m, b"hello").unwrap();
    spool.complete(&m, &[(1, 550)]).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    assert_eq!(spool.bytes(), 0);
    let record = std::fs::read_to_string(dir.path().join("failed/C1.json")).unwrap();
    assert!(
        record.contains("b@y.test") && record.contains("550"),
        "{record}"
    );
    assert!(
        !record.contains("a@x.test"),
        "only the failed delivery is recorded"
    );
}

#[test]
fn redaction_key_is_stable_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Spool::open(dir.path()).unwrap().redaction_key().unwrap();
    let k2 = Spool::open(dir.path()).unwrap().redaction_key().unwrap();
    assert_eq!(k1, k2);
}
