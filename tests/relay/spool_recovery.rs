//! A damaged spool through the real binary: the relay accepts mail while its upstream is down
//! and is stopped; then one batch gets a changed byte in a message, one is cut short in its last
//! record and one gets a record header with a huge length (`MVS1 <id> 18446744073709551566 0
//! <check>`, which used to panic at start). Restarted with a working (capture) upstream, the
//! relay starts, delivers every intact message, keeps each damaged batch under `corrupt/`, logs
//! and counts it, and empties `msg/`.

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailveil::spool::format::RecordHeader;
use support::*;

/// Concurrent clients: several messages per commit round, so batches hold several records.
const CLIENTS: usize = 8;

/// A record of a batch file, as found before the damage.
struct Record {
    header: usize,
    header_len: usize,
    message: std::ops::Range<usize>,
    message_id: String,
}

fn message_id(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or("<none>")
        .to_string()
}

/// The records of a healthy batch file, in order.
fn records(bytes: &[u8]) -> Vec<Record> {
    // Later rounds' records follow outcome lines (and the room is zeros): found by their magic.
    let mut found = Vec::new();
    for at in memchr::memmem::find_iter(bytes, b"MVS1 ") {
        let Some((header, header_len)) = RecordHeader::parse(&bytes[at..]) else {
            continue;
        };
        let start = at + header_len + header.meta_len;
        let message = start..start + header.message_len;
        if message.end > bytes.len() {
            continue;
        }
        found.push(Record {
            header: at,
            header_len,
            message_id: message_id(&bytes[message.clone()]),
            message: message.clone(),
        });
    }
    found
}

fn batches(msg: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(msg)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn config(smtp: SocketAddr, metrics: SocketAddr, work: &Path, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "{smtp}"
[spool]
dir = "{spool}"
retry_initial = "1s"
retry_max = "1s"
upstream_cool_off = "1s"
[metrics]
listen = "{metrics}"
{upstream}
"#,
        spool = work.join("spool").display(),
    )
}

/// Waits until `/readyz` answers 200; fails with the log if the relay exits first.
async fn wait_ready(metrics: SocketAddr, relay: &mut Proc) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let end = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = relay.child.try_wait() {
            panic!("relay exited ({status}); log:\n{}", relay.log_text());
        }
        let mut answer = Vec::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(metrics).await
            && s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_ok()
            && s.read_to_end(&mut answer).await.is_ok()
            && answer.starts_with(b"HTTP/1.0 200")
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "not ready; log:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_round(smtp: SocketAddr, round: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let id = format!("r{round}c{c}@src.test");
                let m = message(
                    &[
                        "From: app@src.test",
                        "To: rcpt@x.test",
                        &format!("Message-ID: <{id}>"),
                    ],
                    &format!("keep me: round {round} client {c}\r\n"),
                );
                let reply = lettre_send(smtp, Some("app@src.test"), &["rcpt@x.test"], &m)
                    .await
                    .unwrap();
                assert!(reply.starts_with("250"), "{reply}");
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_starts_delivers_every_intact_message_and_keeps_the_bad_batches() {
    let work = tempfile::tempdir().unwrap();
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (smtp, metrics) = (addr(free_port()), addr(free_port()));
    let cfg = work.path().join("mailveil.toml");
    let cfg_s = cfg.display().to_string();
    let down = format!(
        "[[upstream]]\nname = \"down\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"2s\"\n",
        free_port()
    );
    std::fs::write(&cfg, config(smtp, metrics, work.path(), &down)).unwrap();

    // 1. Accept mail while the upstream is down, until three batches hold several records.
    let mut relay = spawn_mailveil(&["run", "-c", &cfg_s], &work.path().join("relay1.log"), &[]);
    wait_for_port(smtp, &mut relay);
    let msg = work.path().join("spool/msg");
    let mut accepted = Vec::new();
    for round in 0..30 {
        accepted.extend(send_round(smtp, round).await);
        let multi = batches(&msg)
            .iter()
            .filter(|(_, b)| records(b).len() >= 2)
            .count();
        if multi >= 3 {
            break;
        }
    }
    assert_eq!(relay.terminate(), Some(0), "clean stop");
    println!(
        "{} messages accepted into {} batches",
        accepted.len(),
        batches(&msg).len()
    );

    // 2. Damage three batches with several records each.
    let mut multi: Vec<(PathBuf, Vec<u8>)> = batches(&msg)
        .into_iter()
        .filter(|(_, b)| records(b).len() >= 2)
        .collect();
    assert!(
        multi.len() >= 3,
        "{} messages in {} batches, only {} with several records",
        accepted.len(),
        batches(&msg).len(),
        multi.len()
    );
    multi.truncate(3);
    let mut lost = BTreeSet::new();
    let mut damaged = Vec::new();
    for (n, (path, bytes)) in multi.into_iter().enumerate() {
        let recs = records(&bytes);
        let mut bytes = bytes;
        match n {
            0 => {
                // A changed byte in the middle record's message.
                let r = &recs[recs.len() / 2];
                let at = r.message.start
                    + memchr::memmem::find(&bytes[r.message.clone()], b"keep me").unwrap();
                bytes[at] ^= 0x20;
                lost.insert(r.message_id.clone());
            }
            1 => {
                // Cut short inside the last record (its outcome lines go with it).
                let r = recs.last().unwrap();
                bytes.truncate(r.message.start + r.message.len() / 2);
                lost.insert(r.message_id.clone());
            }
            _ => {
                // The first record's header gets a huge meta length (the issue's crash).
                let r = &recs[0];
                let (header, _) = RecordHeader::parse(&bytes[r.header..]).unwrap();
                let crafted = format!(
                    "MVS1 {} 18446744073709551566 0 {}\n",
                    header.id, header.check
                );
                bytes.splice(r.header..r.header + r.header_len, crafted.into_bytes());
                lost.insert(r.message_id.clone());
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        damaged.push((path.file_name().unwrap().to_owned(), bytes));
    }

    // 3. Restart with a capture upstream: the relay starts and delivers every intact message.
    let outbox = work.path().join("outbox");
    let capture = format!(
        "[[upstream]]\nname = \"outbox\"\ndir = \"{}\"\n",
        outbox.display()
    );
    std::fs::write(&cfg, config(smtp, metrics, work.path(), &capture)).unwrap();
    let mut relay = spawn_mailveil(&["run", "-c", &cfg_s], &work.path().join("relay2.log"), &[]);
    wait_ready(metrics, &mut relay).await;
    let intact: BTreeSet<String> = accepted
        .iter()
        .filter(|id| !lost.contains(*id))
        .cloned()
        .collect();
    let captured = wait_for_captures(&outbox, intact.len()).await;
    let delivered: BTreeSet<String> = captured.iter().map(|c| message_id(&c.bytes)).collect();
    assert_eq!(delivered, intact, "every intact message, and only those");

    // Every batch in msg/ goes once its intact messages are done; the damaged ones stay under
    // corrupt/, byte for byte as they were found.
    let end = Instant::now() + PATIENCE;
    while !batches(&msg).is_empty() {
        assert!(
            Instant::now() < end,
            "msg/ empties once everything is delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let corrupt = work.path().join("spool/corrupt");
    let mut kept: Vec<_> = std::fs::read_dir(&corrupt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    kept.sort();
    let mut names: Vec<_> = damaged.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(kept, names, "the damaged batches are kept under corrupt/");
    for (name, bytes) in &damaged {
        assert_eq!(&std::fs::read(corrupt.join(name)).unwrap(), bytes);
    }
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        metric(&text, "mailveil_spool_corrupt_batches_total"),
        Some(3.0)
    );
    let log = relay.log_text();
    assert_eq!(log.matches("damaged spool batch").count(), 3, "{log}");
    for (name, _) in &damaged {
        let batch = name.to_string_lossy().replace(".spool", "");
        assert!(log.contains(&batch), "the log names {batch}:\n{log}");
    }
    assert_eq!(relay.terminate(), Some(0), "SIGTERM exits cleanly");
}
