use super::*;

fn meta(id: &str, rcpts: &[&str]) -> MessageMeta {
    MessageMeta::split_sample(id, 1, 5, rcpts)
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
    std::fs::write(dir.path().join("msg/B1.spool.tmp"), b"never acknowledged").unwrap();
    std::fs::write(dir.path().join("msg/B2.spool.tmp"), b"MVS1 B2 2 1 0\n{}x").unwrap();
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
    let failure = FailureRecord {
        rcpt_to: vec!["b@y.test".into()],
        code: 550,
        delivery: 1,
        reason: "permanent".into(),
        reply: "upstream replied 550 5.1.1 no such user to RCPT TO".into(),
        upstream: "up".into(),
        attempts: 2,
        first_attempt_at: Some(7),
        last_attempt_at: Some(9),
        failed_at: 9,
    };
    spool.complete(&m, &[failure]).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    assert_eq!(spool.bytes(), 0);
    let record = std::fs::read_to_string(dir.path().join("failed/C1.json")).unwrap();
    assert!(
        record.contains("b@y.test") && record.contains("550"),
        "{record}"
    );
    let json: serde_json::Value = serde_json::from_str(&record).unwrap();
    let failed = &json["failed"][0];
    assert_eq!(
        failed["reply"],
        "upstream replied 550 5.1.1 no such user to RCPT TO"
    );
    assert_eq!(failed["upstream"], "up");
    assert_eq!(failed["attempts"], 2);
    assert_eq!(failed["first_attempt_at"], 7);
    assert_eq!(failed["last_attempt_at"], 9);
    assert_eq!(json["mail_from"], "s@x.test");
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

#[test]
fn concurrent_stores_are_all_recovered_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let id = format!("T{i:02}");
                let body = format!("message {i}");
                spool.store(&meta(&id, &["a@x.test"]), body.as_bytes())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let found = spool.recover().unwrap();
    assert_eq!(found.len(), 40);
    for (i, r) in found.iter().enumerate() {
        assert_eq!(r.meta.id, format!("T{i:02}"));
        assert_eq!(
            spool.read_message(&r.meta.id).unwrap(),
            format!("message {i}").into_bytes()
        );
    }
}

#[test]
fn a_torn_record_at_the_end_of_a_batch_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    spool.store(&meta("G1", &["a@x.test"]), b"good").unwrap();
    drop(spool);
    let batch = std::fs::read_dir(dir.path().join("msg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "spool"))
        .unwrap();
    let mut bytes = std::fs::read(&batch).unwrap();
    bytes.extend_from_slice(b"MVS1 G2 2 100 0123456789abcdef\n{}only part of it");
    std::fs::write(&batch, bytes).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let found = spool.recover().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].meta.id, "G1");
    assert_eq!(spool.read_message("G1").unwrap(), b"good");
}

#[test]
fn a_batch_goes_when_its_last_message_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let (m1, m2) = (meta("D1", &["a@x.test"]), meta("D2", &["b@y.test"]));
    // Stored from two threads so they may share a batch; either way the outcome is the same.
    let t = {
        let (spool, m2) = (spool.clone(), m2.clone());
        std::thread::spawn(move || spool.store(&m2, b"two").unwrap())
    };
    spool.store(&m1, b"one").unwrap();
    t.join().unwrap();
    spool.complete(&m1, &[]).unwrap();
    spool.flush();
    {
        let reopened = Spool::open(dir.path()).unwrap();
        let found = reopened.recover().unwrap();
        assert_eq!(found.len(), 1, "a done message is not recovered");
        assert_eq!(found[0].meta.id, "D2");
    }
    spool.complete(&m2, &[]).unwrap();
    // The batch may still be open for rounds: it goes once none came for a moment.
    let left = || std::fs::read_dir(dir.path().join("msg")).unwrap().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while left() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(left(), 0, "no files remain once every message is done");
    assert_eq!(spool.bytes(), 0);
}

#[test]
fn a_message_whose_copies_were_all_delivered_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = meta("E1", &["a@x.test", "b@y.test"]);
    spool.store(&m, b"x").unwrap();
    spool
        .append(
            "E1",
            &[
                LogEntry::Delivered { index: 0, at: 1 },
                LogEntry::Delivered { index: 1, at: 1 },
            ],
        )
        .unwrap();
    // Crash before `complete`: the records alone say the message is done.
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("msg")).unwrap().count(),
        0
    );
}

#[test]
fn hold_decisions_survive_recovery_and_a_dropped_message_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let held = |id: &str| MessageMeta {
        hold: Some(Hold {
            canaries: vec![0],
            state: HoldState::Held,
        }),
        ..meta(id, &["a@x.test", "b@x.test", "c@x.test"])
    };
    {
        let spool = Spool::open(dir.path()).unwrap();
        for id in ["HELD", "REL", "DROP", "DROPWAIT"] {
            spool.store(&held(id), b"bytes").unwrap();
        }
        let canary_done = [LogEntry::Delivered { index: 0, at: 2 }];
        spool.append("HELD", &canary_done).unwrap();
        spool.append("REL", &canary_done).unwrap();
        spool.record_hold("REL", HoldState::Released).unwrap();
        spool.append("DROP", &canary_done).unwrap();
        spool.record_hold("DROP", HoldState::Dropped).unwrap();
        spool.record_hold("DROPWAIT", HoldState::Dropped).unwrap();
        spool.flush();
    }
    let spool = Spool::open(dir.path()).unwrap();
    let found = spool.recover().unwrap();
    let state = |id: &str| {
        found
            .iter()
            .find(|r| r.meta.id == id)
            .map(|r| r.meta.hold.as_ref().unwrap().state)
    };
    assert_eq!(state("HELD"), Some(HoldState::Held));
    assert_eq!(state("REL"), Some(HoldState::Released));
    // Dropped with its canary final: nothing left to do, so it is not recovered at all.
    assert_eq!(state("DROP"), None);
    // Dropped while its canary was still pending: the canary still goes out.
    assert_eq!(state("DROPWAIT"), Some(HoldState::Dropped));
}

mod damage;

#[test]
fn rounds_share_an_open_batch_until_it_is_full_or_idle() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body = vec![b'x'; 3000];
    // One round each (each store waits for its own); the first batch has 32 KiB of room.
    let ids: Vec<String> = (0..30).map(|i| format!("F{i}")).collect();
    for id in &ids {
        spool.store(&meta(id, &["a@x.test"]), &body).unwrap();
    }
    let spools = || {
        std::fs::read_dir(dir.path().join("msg"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "spool")
            })
            .count()
    };
    let batches = spools();
    assert!(
        (2..=10).contains(&batches),
        "30 rounds of 3 KiB share a few batches: {batches}"
    );
    for id in &ids {
        spool
            .append(
                id,
                &[LogEntry::Deferred {
                    index: 0,
                    next_at: 9,
                }],
            )
            .unwrap();
    }
    spool.flush();
    {
        let reopened = Spool::open(dir.path()).unwrap();
        let found = reopened.recover().unwrap();
        assert_eq!(reopened.corrupt_batches(), 0);
        let got: Vec<&str> = found.iter().map(|r| r.meta.id.as_str()).collect();
        let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(got, want);
        for r in &found {
            assert_eq!(
                r.log,
                vec![LogEntry::Deferred {
                    index: 0,
                    next_at: 9
                }]
            );
            assert_eq!(reopened.read_message(&r.meta.id).unwrap(), body);
        }
    }
    // Every message done: the batches go, the open one once no round came for a moment.
    for id in &ids {
        spool.complete(&meta(id, &["a@x.test"]), &[]).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while spools() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(spools(), 0, "no batch is left once every message is done");
}
