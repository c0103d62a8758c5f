//! Nothing accepted is lost: the relay process is killed with SIGKILL after answering 250 while
//! its upstream is down; restarted on the same spool, it delivers what it accepted.

use crate::support;

use std::net::SocketAddr;

use support::*;

#[tokio::test]
async fn accepted_mail_survives_kill_9_and_is_delivered_after_restart() {
    let work = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let sink_port = free_port();
    let captured = work.path().join("captured");
    let config = work.path().join("mailveil.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{smtp_port}"
[spool]
dir = "{spool}"
retry_initial = "1s"
retry_max = "1s"
[[upstream]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
timeout = "5s"
[log]
show_addresses = false
"#,
            spool = work.path().join("spool").display()
        ),
    )
    .unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    let cfg = config.display().to_string();

    let mut relay = spawn_mailveil(&["run", "-c", &cfg], &work.path().join("relay1.log"), &[]);
    wait_for_port(smtp, &mut relay);
    let rcpts = ["alice@x.test", "bob@y.test", "carol@z.test"];
    for i in 0..5 {
        let m = message(
            &[
                "From: app@src.test",
                "To: alice@x.test, bob@y.test, carol@z.test",
                &format!("Message-ID: <m{i}@src.test>"),
            ],
            "keep me\r\n",
        );
        let reply = lettre_send(smtp, Some("app@src.test"), &rcpts, &m)
            .await
            .unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    }
    relay.kill9();
    let log1 = relay.log_text();
    assert!(
        // Local parts with letters outside [0-9a-f], so a redacted hash cannot end with one.
        !log1.contains("alice@x.test") && !log1.contains("carol@z.test"),
        "addresses are redacted in logs by default:\n{log1}"
    );
    assert!(!log1.contains("keep me"), "bodies never logged");

    let (_sink, _) = {
        // The upstream comes back on the port the relay was configured with.
        let dir_s = captured.display().to_string();
        let listen = format!("127.0.0.1:{sink_port}");
        let mut p = spawn_mailveil(
            &["sink", "--listen", &listen, "--dir", &dir_s],
            &work.path().join("sink.log"),
            &[],
        );
        wait_for_port(listen.parse().unwrap(), &mut p);
        (p, ())
    };
    let mut relay = spawn_mailveil(&["run", "-c", &cfg], &work.path().join("relay2.log"), &[]);
    wait_for_port(smtp, &mut relay);
    let copies = wait_for_captures(&captured, 15).await;
    let mut ids: Vec<(String, String)> = copies
        .iter()
        .map(|c| {
            let text = String::from_utf8_lossy(&c.bytes);
            let mid = text
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string();
            (mid, c.rcpt_to[0].clone())
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        15,
        "every accepted copy delivered exactly once per (message, recipient)"
    );
    assert_eq!(relay.terminate(), Some(0), "SIGTERM exits cleanly");
}
