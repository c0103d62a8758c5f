//! Criterion benchmarks for the per-message CPU work of the relay: finding the visible
//! recipients (the RFC 5322 address parser), the privacy checks on the bytes (private
//! addresses, egress check, body check) at 1k/10k/40k addresses, planning the split, rendering
//! and checking each copy's header block, and decoding the DATA stream.
//! Run: `cargo bench --bench privacy`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mailveil::config::{BodyCheck, PrivacyConfig, PrivacyMode};
use mailveil::envelope::Envelope;
use mailveil::inbound::DotDecoder;
use mailveil::privacy::{self, Rewrite};

/// A newsletter whose To: shows `n` addresses, with a 4 KiB body.
fn leaky_message(n: usize) -> (Vec<u8>, Vec<String>) {
    let rcpts: Vec<String> = (0..n)
        .map(|i| format!("user{i}@dest{}.test", i % 7))
        .collect();
    let mut m = String::from("From: News <news@src.test>\r\nSubject: index methodology update\r\n");
    m.push_str("Message-ID: <bench@src.test>\r\nMIME-Version: 1.0\r\nTo: ");
    m.push_str(
        &rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| format!("\"Customer {i}\" <{r}>"))
            .collect::<Vec<_>>()
            .join(",\r\n "),
    );
    m.push_str("\r\n\r\n");
    for _ in 0..64 {
        m.push_str(&"x".repeat(62));
        m.push_str("\r\n");
    }
    (m.into_bytes(), rcpts)
}

fn split_config() -> PrivacyConfig {
    PrivacyConfig {
        mode: PrivacyMode::Split,
        max_visible_recipients: 1,
        trusted_domains: Vec::new(),
        body_check: BodyCheck::Reject,
    }
}

/// The privacy checks on a message whose To: shows n addresses, all of them envelope
/// recipients: the private-address table, the egress check of one header block (the
/// unchanged one, every field and every reading), and the whole policy at end of DATA (also
/// the check of all n split copies and the body). Each must grow linearly with n.
fn header_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("header_scan");
    group.sample_size(10);
    for n in [1_000, 10_000, 40_000] {
        let (message, rcpts) = leaky_message(n);
        let envelope = Envelope {
            mail_from: "news@src.test".into(),
            rcpt_to: rcpts,
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("private_addresses", n),
            &message,
            |b, m| {
                b.iter(|| privacy::Exposure::assess(&split_config(), &envelope, m).private_count())
            },
        );
        let exposure = privacy::Exposure::assess(&split_config(), &envelope, &message);
        let header = &message[..privacy::body_offset(&message)];
        let everyone = exposure.audience(envelope.rcpt_to.iter().map(String::as_str));
        group.bench_with_input(BenchmarkId::new("egress_check", n), &header, |b, h| {
            b.iter(|| privacy::egress::check(&exposure, h, &everyone).is_err())
        });
        group.bench_with_input(BenchmarkId::new("whole_policy", n), &message, |b, m| {
            b.iter(|| {
                privacy::assess(&split_config(), &envelope, m)
                    .1
                    .deliveries
                    .len()
            })
        });
    }
    group.finish();
}

fn parser(c: &mut Criterion) {
    let mut group = c.benchmark_group("visible_recipients");
    for n in [1, 100, 1000] {
        let (message, _) = leaky_message(n);
        group.throughput(Throughput::Bytes(message.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &message, |b, m| {
            b.iter(|| privacy::visible_recipients(m, &[]))
        });
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("split");
    for n in [100, 1000] {
        let (message, rcpts) = leaky_message(n);
        let envelope = Envelope {
            mail_from: "news@src.test".into(),
            rcpt_to: rcpts,
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("plan", n), &message, |b, m| {
            b.iter(|| privacy::plan(&split_config(), &envelope, m))
        });
        let (exposure, plan) = privacy::assess(&split_config(), &envelope, &message);
        group.bench_with_input(
            BenchmarkId::new("render_all_copies", n),
            &message,
            |b, m| {
                b.iter(|| {
                    plan.deliveries
                        .iter()
                        .map(|d| privacy::render_header(m, &d.rewrite, &exposure).len())
                        .sum::<usize>()
                })
            },
        );
        // What the queue does per copy before sending: render, then the egress check.
        group.bench_with_input(
            BenchmarkId::new("render_and_check_all_copies", n),
            &message,
            |b, m| {
                b.iter(|| {
                    plan.deliveries
                        .iter()
                        .filter(|d| {
                            let h = privacy::render_header(m, &d.rewrite, &exposure);
                            let who = exposure.audience(d.rcpt_to.iter().map(String::as_str));
                            privacy::egress::check(&exposure, &h, &who).is_ok()
                        })
                        .count()
                })
            },
        );
    }
    group.finish();
    let (message, _) = leaky_message(1);
    let only = Rewrite::OnlyRecipient {
        address: "user0@dest0.test".into(),
        display_name: Some("Customer 0".into()),
    };
    let none = privacy::Exposure::default();
    c.bench_function("render_header/one_copy", |b| {
        b.iter(|| privacy::render_header(&message, &only, &none))
    });
}

fn data_decoder(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..(1 << 14) {
        wire.extend_from_slice(b"..a dot-stuffed line of a 1 MiB message body, 64 bytes long!\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("dot_decoder");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("1MiB_in_4KiB_reads", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            let mut decoder = DotDecoder::new(usize::MAX);
            for chunk in wire.chunks(4096) {
                let _ = decoder.feed(chunk, &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, parser, header_scan, rewrite, data_decoder);
criterion_main!(benches);
