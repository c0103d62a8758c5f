//! Nothing answered `250` is lost when the relay process is killed with SIGKILL: during inbound
//! load (upstream down or up, at several points, and in the middle of a transaction) and while
//! deliveries are in flight to a slow upstream. After a restart on the same spool with a working
//! upstream, every copy of every `250`'d message arrives at least once; duplicates (copies that
//! were in flight at the kill) are counted and printed, losses fail the test.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use support::*;

/// Each message shows its three recipients, so the relay splits it into three copies.
const RCPTS: [&str; 3] = ["ann@x.test", "ben@y.test", "cat@z.test"];
/// Concurrent inbound clients.
const CLIENTS: usize = 4;
/// Longer than [`PATIENCE`]: a restarted relay drains a few hundred copies, possibly on a busy
/// machine.
const DRAIN_PATIENCE: Duration = Duration::from_secs(90);

/// A (Message-ID, recipient) pair: one copy.
type Copy = (String, String);

struct Setup {
    work: tempfile::TempDir,
    smtp: SocketAddr,
    config: PathBuf,
    runs: usize,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let port = free_port();
        Setup {
            smtp: format!("127.0.0.1:{port}").parse().unwrap(),
            config: work.path().join("mailveil.toml"),
            work,
            runs: 0,
        }
    }

    /// (Re)writes the config: same listener and spool, upstream on `upstream_port`.
    fn configure(&self, upstream_port: u16, max_connections: usize) {
        let text = format!(
            r#"
[server]
listen = "{smtp}"
[spool]
dir = "{spool}"
retry_initial = "1s"
retry_max = "1s"
upstream_cool_off = "1s"
[[upstream]]
name = "up"
host = "127.0.0.1"
port = {upstream_port}
tls = "none"
timeout = "20s"
max_connections = {max_connections}
"#,
            smtp = self.smtp,
            spool = self.work.path().join("spool").display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn start_relay(&mut self) -> Proc {
        self.runs += 1;
        let log = self.work.path().join(format!("relay{}.log", self.runs));
        let cfg = self.config.display().to_string();
        let mut relay = spawn_mailveil(&["run", "-c", &cfg], &log, &[]);
        wait_for_port(self.smtp, &mut relay);
        relay
    }
}

/// Concurrent lettre clients sending messages with unique Message-IDs until stopped or the
/// relay goes away; `accepted` collects the ids answered `250`.
struct Load {
    accepted: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(smtp: SocketAddr, tag: &str) -> Load {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|c| {
                let (accepted, stop, tag) = (accepted.clone(), stop.clone(), tag.to_string());
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let id = format!("{tag}-c{c}-m{n}@load.test");
                        let m = message(
                            &[
                                "From: app@load.test",
                                "To: ann@x.test, ben@y.test, cat@z.test",
                                &format!("Message-ID: <{id}>"),
                                "Subject: crash test",
                            ],
                            "line one\r\nline two\r\n",
                        );
                        match lettre_send(smtp, Some("app@load.test"), &RCPTS, &m).await {
                            Ok(reply) if reply.starts_with("250") => {
                                accepted.lock().unwrap().push(id)
                            }
                            // The relay was killed: this client is done.
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        Load {
            accepted,
            stop,
            clients,
        }
    }

    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Waits until at least `n` messages were accepted.
    async fn wait_accepted(&self, n: usize) {
        let end = Instant::now() + PATIENCE;
        while self.count() < n {
            assert!(
                Instant::now() < end,
                "only {} of {n} accepted",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients (after the relay was killed) and returns the accepted ids.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            tokio::time::timeout(PATIENCE, c)
                .await
                .expect("clients stop once the relay is gone")
                .unwrap();
        }
        self.accepted.lock().unwrap().clone()
    }
}

fn copies_of(ids: &[String]) -> BTreeSet<Copy> {
    ids.iter()
        .flat_map(|id| RCPTS.iter().map(move |r| (id.clone(), r.to_string())))
        .collect()
}

fn message_id(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or("<none>")
        .to_string()
}

/// Every copy the sink captured, duplicates included.
fn captured_copies(dir: &Path) -> Vec<Copy> {
    mailveil::capture::read_all(dir)
        .unwrap_or_default()
        .iter()
        .flat_map(|c| {
            let id = message_id(&c.bytes);
            c.rcpt_to.iter().map(move |r| (id.clone(), r.clone()))
        })
        .collect()
}

/// Waits until `got()` contains every copy in `want`; returns what arrived.
async fn wait_for_copies(want: &BTreeSet<Copy>, got: impl Fn() -> Vec<Copy>) -> Vec<Copy> {
    let end = Instant::now() + DRAIN_PATIENCE;
    loop {
        let arrived = got();
        let distinct: BTreeSet<Copy> = arrived.iter().cloned().collect();
        let missing: Vec<&Copy> = want.difference(&distinct).collect();
        if missing.is_empty() {
            return arrived;
        }
        assert!(
            Instant::now() < end,
            "{} accepted copies never arrived, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints and returns the number of copies that arrived more than once.
fn report_duplicates(test: &str, arrived: &[Copy]) -> usize {
    let mut seen: HashMap<&Copy, usize> = HashMap::new();
    for c in arrived {
        *seen.entry(c).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{test}: {} copies arrived, {} distinct, {duplicates} duplicate(s)",
        arrived.len(),
        seen.len()
    );
    duplicates
}

fn start_sink_at(port: u16, dir: &Path, log: &Path) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let dir_s = dir.display().to_string();
    let mut p = spawn_mailveil(&["sink", "--listen", &listen, "--dir", &dir_s], log, &[]);
    wait_for_port(listen.parse().unwrap(), &mut p);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_inbound_load_at_several_points_loses_nothing() {
    let mut setup = Setup::new();
    let sink_port = free_port();
    let captured = setup.work.path().join("captured");
    setup.configure(sink_port, 10);
    let mut accepted = Vec::new();

    // 1. Upstream down: everything accepted stays spooled. Kill after ~10 accepted.
    let mut relay = setup.start_relay();
    let load = Load::start(setup.smtp, "p1");
    load.wait_accepted(10).await;
    relay.kill9();
    accepted.extend(load.finish().await);
    let after_first = accepted.len();

    // 2. Upstream up: the restarted relay recovers phase 1 and delivers while new mail comes
    //    in. Kill after ~40 more accepted.
    let _sink = start_sink_at(sink_port, &captured, &setup.work.path().join("sink.log"));
    let mut relay = setup.start_relay();
    let load = Load::start(setup.smtp, "p2");
    load.wait_accepted(40).await;
    relay.kill9();
    accepted.extend(load.finish().await);
    let after_second = accepted.len();

    // 3. Mid-transaction: one client is inside DATA (message not finished) when the kill
    //    comes, while the others keep sending.
    let mut relay = setup.start_relay();
    let load = Load::start(setup.smtp, "p3");
    load.wait_accepted(5).await;
    let (mut raw, greeting) = RawSmtp::connect(setup.smtp).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(raw.cmd("EHLO raw.test").await.starts_with("250"));
    assert!(
        raw.cmd("MAIL FROM:<app@load.test>")
            .await
            .starts_with("250")
    );
    assert!(raw.cmd("RCPT TO:<ann@x.test>").await.starts_with("250"));
    assert!(raw.cmd("DATA").await.starts_with("354"));
    raw.send(b"From: app@load.test\r\nTo: ann@x.test\r\nMessage-ID: <unfinished@load.test>\r\n\r\nhalf a bo")
        .await;
    load.wait_accepted(load.count() + 3).await;
    relay.kill9();
    accepted.extend(load.finish().await);
    let after_third = accepted.len();
    drop(raw);

    // 4. Restart with the upstream up: every copy of every accepted message arrives.
    let mut relay = setup.start_relay();
    let want = copies_of(&accepted);
    let arrived = wait_for_copies(&want, || captured_copies(&captured)).await;
    println!(
        "accepted {} messages ({} copies): {after_first} before kill 1, {} before kill 2, {} before kill 3",
        accepted.len(),
        want.len(),
        after_second - after_first,
        after_third - after_second
    );
    report_duplicates("inbound load", &arrived);
    let unacknowledged: BTreeSet<&String> = arrived
        .iter()
        .filter(|c| !want.contains(*c))
        .map(|(id, _)| id)
        .collect();
    println!(
        "{} message(s) delivered that were spooled but whose 250 the kill cut off (allowed)",
        unacknowledged.len()
    );
    assert!(
        !arrived.iter().any(|(id, _)| id == "unfinished@load.test"),
        "a message killed before the end of DATA was never accepted"
    );
    // Rounds written into a batch's room while the kill came are no damage at the next start.
    for run in 1..=setup.runs {
        let log = std::fs::read_to_string(setup.work.path().join(format!("relay{run}.log")))
            .unwrap_or_default();
        assert!(
            !log.contains("damaged spool batch"),
            "a kill -9 is not damage (start {run}):\n{log}"
        );
    }
    assert_eq!(relay.terminate(), Some(0), "SIGTERM exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_deliveries_in_flight_loses_nothing() {
    let mut setup = Setup::new();
    // Slow upstreams: each message waits 2 s before its final reply, so with 4 connections
    // copies are in flight when the relay is killed.
    let slow_script = || Script {
        data_end_delay: Duration::from_secs(2),
        ..Script::default()
    };
    let slow = ScriptedSmtp::start(slow_script()).await;
    setup.configure(slow.port(), 4);
    let mut relay = setup.start_relay();
    let load = Load::start(setup.smtp, "d");
    load.wait_accepted(20).await;
    let in_flight_1 = kill_with_copies_in_flight(&mut relay, &slow).await;
    let accepted = load.finish().await;

    // Restart on the same spool, still slow: recovered copies are in flight when it is killed
    // a second time.
    let slower = ScriptedSmtp::start(slow_script()).await;
    setup.configure(slower.port(), 4);
    let mut relay = setup.start_relay();
    let in_flight_2 = kill_with_copies_in_flight(&mut relay, &slower).await;

    // Restart with a fast upstream.
    let fast = ScriptedSmtp::start(Script::default()).await;
    setup.configure(fast.port(), 4);
    let mut relay = setup.start_relay();
    let servers = [&slow, &slower, &fast];
    let all_copies = || -> Vec<Copy> {
        servers
            .iter()
            .flat_map(|s| s.record().messages)
            .flat_map(|m| {
                let id = message_id(&m.data);
                m.rcpt_to
                    .into_iter()
                    .map(move |r| (id.clone(), r))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let want = copies_of(&accepted);
    wait_for_copies(&want, all_copies).await;
    // The slow upstreams finish the sessions that were open at the kills (they count what they
    // read completely as received, as a real server would).
    let end = Instant::now() + PATIENCE;
    while slow.record().active + slower.record().active > 0 {
        assert!(Instant::now() < end, "slow upstream sessions never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = all_copies();
    println!(
        "accepted {} messages ({} copies); {in_flight_1} then {in_flight_2} copies in flight at the kills",
        accepted.len(),
        want.len()
    );
    report_duplicates("deliveries in flight", &arrived);
    assert!(
        !servers.iter().any(|s| s.record().saw("MAIL FROM:<>")),
        "no bounces: nothing failed"
    );
    assert_eq!(relay.terminate(), Some(0), "SIGTERM exits cleanly");
}

/// Waits until `upstream` has read at least two messages it has not answered yet, then kills
/// the relay; returns how many were unanswered at the kill.
async fn kill_with_copies_in_flight(relay: &mut Proc, upstream: &ScriptedSmtp) -> usize {
    let unanswered = || {
        let r = upstream.record();
        r.commands.iter().filter(|c| *c == "DATA").count() - r.messages.len()
    };
    let end = Instant::now() + PATIENCE;
    while unanswered() < 2 {
        assert!(
            Instant::now() < end,
            "no deliveries in flight: {:?}",
            upstream.record()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.kill9();
    let n = unanswered();
    assert!(n > 0, "copies were in flight at the kill");
    n
}
