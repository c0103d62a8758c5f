//! Damaged batches: every intact record is recovered, the batch is kept under `corrupt/`.

use super::*;

/// Bytes of a batch file as the committer writes it: one record per `(id, body)`, then `lines`.
fn batch_bytes(records: &[(&str, &[u8])], lines: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, body) in records {
        let meta = serde_json::to_vec(&meta(id, &["a@x.test", "b@y.test"])).unwrap();
        out.extend_from_slice(
            format::RecordHeader::new(id, &meta, body)
                .to_line()
                .as_bytes(),
        );
        out.extend_from_slice(&meta);
        out.extend_from_slice(body);
    }
    out.extend_from_slice(lines.as_bytes());
    out
}

const BATCH: &str = "01BATCH";

/// Seven messages R0..R6 with CRLF bodies, R1 with one copy delivered.
fn seven() -> (Vec<(String, Vec<u8>)>, String) {
    let records: Vec<(String, Vec<u8>)> = (0..7)
        .map(|i| {
            (
                format!("R{i}"),
                format!("Subject: {i}\r\n\r\nbody of message {i}\r\n").into_bytes(),
            )
        })
        .collect();
    let lines = BatchLogLine::outcome_line("R1", &LogEntry::Delivered { index: 0, at: 3 });
    (records, lines)
}

fn seven_bytes() -> Vec<u8> {
    let (records, lines) = seven();
    let refs: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(i, b)| (i.as_str(), b.as_slice()))
        .collect();
    batch_bytes(&refs, &lines)
}

/// Where record `id`'s header starts in `bytes`.
fn record_at(bytes: &[u8], id: &str) -> usize {
    memchr::memmem::find(bytes, format!("MVS1 {id} ").as_bytes()).unwrap()
}

/// Opens a spool holding one batch with `bytes` and recovers it: (spool, ids recovered, dir).
fn recover_from(bytes: &[u8]) -> (Spool, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("msg")).unwrap();
    std::fs::write(dir.path().join(format!("msg/{BATCH}.spool")), bytes).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids = spool
        .recover()
        .unwrap()
        .into_iter()
        .map(|r| r.meta.id)
        .collect();
    (spool, ids, dir)
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Every recovered message reads back as written; the damaged batch is counted and a copy of
/// it (byte for byte what was found) is under corrupt/.
fn assert_intact_and_kept(spool: &Spool, found: &[String], damaged: &[u8], dir: &Path) {
    let (records, _) = seven();
    for id in found {
        let body = &records.iter().find(|(i, _)| i == id).unwrap().1;
        assert_eq!(&spool.read_message(id).unwrap(), body, "{id}");
    }
    assert_eq!(spool.corrupt_batches(), 1);
    let kept = std::fs::read(dir.join(format!("corrupt/{BATCH}.spool")))
        .expect("a copy of the damaged batch is kept under corrupt/");
    assert_eq!(kept, damaged);
}

#[test]
fn a_flipped_byte_in_a_body_costs_only_that_message() {
    let mut bytes = seven_bytes();
    let at = memchr::memmem::find(&bytes, b"body of message 3").unwrap();
    bytes[at + 2] ^= 0x01;
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found, ids(&["R0", "R1", "R2", "R4", "R5", "R6"]));
    assert_intact_and_kept(&spool, &found, &bytes, dir.path());
}

#[test]
fn a_flipped_byte_in_a_meta_costs_only_that_message() {
    let mut bytes = seven_bytes();
    let header = record_at(&bytes, "R0");
    let at = header + memchr::memmem::find(&bytes[header..], b"s@x.test").unwrap();
    bytes[at] = b't';
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found, ids(&["R1", "R2", "R3", "R4", "R5", "R6"]));
    assert_intact_and_kept(&spool, &found, &bytes, dir.path());
}

#[test]
fn a_flipped_byte_in_a_check_costs_only_that_message() {
    let mut bytes = seven_bytes();
    let header = record_at(&bytes, "R6");
    let newline = header + memchr::memchr(b'\n', &bytes[header..]).unwrap();
    bytes[newline - 1] = if bytes[newline - 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found, ids(&["R0", "R1", "R2", "R3", "R4", "R5"]));
    assert_intact_and_kept(&spool, &found, &bytes, dir.path());
}

#[test]
fn a_truncated_batch_gives_up_only_what_is_cut_off() {
    let bytes = seven_bytes();
    let cut = &bytes[..record_at(&bytes, "R5") + 40];
    let (spool, found, dir) = recover_from(cut);
    assert_eq!(found, ids(&["R0", "R1", "R2", "R3", "R4"]));
    assert_intact_and_kept(&spool, &found, cut, dir.path());
}

#[test]
fn a_crafted_huge_length_neither_panics_nor_hides_the_records_after_it() {
    let bytes = seven_bytes();
    for length in [
        "18446744073709551566 0",
        "0 18446744073709551615",
        "5 99999",
    ] {
        // The header of R2 replaced by one with a huge length (the rest of R2 stays).
        let header = record_at(&bytes, "R2");
        let end = header + memchr::memchr(b'\n', &bytes[header..]).unwrap();
        let mut damaged = bytes[..header].to_vec();
        damaged.extend_from_slice(format!("MVS1 R2 {length} 0123456789abcdef").as_bytes());
        damaged.extend_from_slice(&bytes[end..]);
        let (spool, found, dir) = recover_from(&damaged);
        assert_eq!(
            found,
            ids(&["R0", "R1", "R3", "R4", "R5", "R6"]),
            "{length}"
        );
        assert_intact_and_kept(&spool, &found, &damaged, dir.path());
    }
}

#[test]
fn garbage_appended_to_a_batch_loses_nothing() {
    let mut bytes = seven_bytes();
    bytes.extend_from_slice(
        b"\x00\xffnot a record\r\nMVS1 nonsense\nMVO1 R3 3 delivered 9 #00000000\n",
    );
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found, ids(&["R0", "R1", "R2", "R3", "R4", "R5", "R6"]));
    assert_intact_and_kept(&spool, &found, &bytes, dir.path());
    // R1's outcome line before the garbage still counts.
    let r1 = spool
        .recover()
        .unwrap()
        .into_iter()
        .find(|r| r.meta.id == "R1");
    assert_eq!(
        r1.unwrap().log,
        vec![LogEntry::Delivered { index: 0, at: 3 }]
    );
}

#[test]
fn a_damaged_outcome_line_is_ignored_and_the_others_are_read() {
    let (records, mut lines) = seven();
    let damaged_line = BatchLogLine::outcome_line("R2", &LogEntry::Delivered { index: 1, at: 4 });
    // A flipped digit turns "R2 1 delivered" into "R2 3 delivered": the check catches it.
    lines.push_str(&damaged_line.replace("R2 1 delivered", "R2 3 delivered"));
    lines.push_str(&BatchLogLine::outcome_line(
        "R4",
        &LogEntry::Delivered { index: 1, at: 5 },
    ));
    let refs: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(i, b)| (i.as_str(), b.as_slice()))
        .collect();
    let bytes = batch_bytes(&refs, &lines);
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found, ids(&["R0", "R1", "R2", "R3", "R4", "R5", "R6"]));
    assert_intact_and_kept(&spool, &found, &bytes, dir.path());
    let log = |id: &str| {
        spool
            .recover()
            .unwrap()
            .into_iter()
            .find(|r| r.meta.id == id)
            .unwrap()
            .log
    };
    assert_eq!(log("R1"), vec![LogEntry::Delivered { index: 0, at: 3 }]);
    assert_eq!(log("R2"), vec![], "the damaged line is not believed");
    assert_eq!(log("R4"), vec![LogEntry::Delivered { index: 1, at: 5 }]);
}

#[test]
fn what_a_crash_leaves_after_the_outcome_lines_is_not_damage() {
    let mut bytes = seven_bytes();
    bytes.extend_from_slice(b"\0\0\0\0");
    bytes.extend_from_slice(
        BatchLogLine::outcome_line("R5", &LogEntry::Delivered { index: 0, at: 6 }).as_bytes(),
    );
    bytes.extend_from_slice(b"MVO1 R5 1 deliv\0\0\0");
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found.len(), 7);
    assert_eq!(spool.corrupt_batches(), 0);
    assert!(!dir.path().join(format!("corrupt/{BATCH}.spool")).exists());
}

#[test]
fn a_damaged_batch_with_nothing_left_to_deliver_is_moved_aside_not_deleted() {
    let (records, _) = seven();
    let refs: Vec<(&str, &[u8])> = records[..2]
        .iter()
        .map(|(i, b)| (i.as_str(), b.as_slice()))
        .collect();
    let mut bytes = batch_bytes(
        &refs,
        &[BatchLogLine::done_line("R0"), BatchLogLine::done_line("R1")].concat(),
    );
    bytes.extend_from_slice(b"garbage\n");
    let (spool, found, dir) = recover_from(&bytes);
    assert!(found.is_empty());
    assert_eq!(spool.corrupt_batches(), 1);
    assert!(!dir.path().join(format!("msg/{BATCH}.spool")).exists());
    assert_eq!(
        std::fs::read(dir.path().join(format!("corrupt/{BATCH}.spool"))).unwrap(),
        bytes
    );
    // Nothing recognisable at all (zeros over the whole file): kept too.
    let (spool, found, dir) = recover_from(&vec![0; 4096]);
    assert!(found.is_empty());
    assert_eq!(spool.corrupt_batches(), 1);
    assert!(dir.path().join(format!("corrupt/{BATCH}.spool")).exists());
}

#[test]
fn a_damaged_batch_goes_when_its_intact_messages_are_done_and_its_copy_stays() {
    let mut bytes = seven_bytes();
    let at = memchr::memmem::find(&bytes, b"body of message 3").unwrap();
    bytes[at] ^= 0x20;
    let (spool, found, dir) = recover_from(&bytes);
    assert_eq!(found.len(), 6);
    for r in spool.recover().unwrap() {
        spool.complete(&r.meta, &[]).unwrap();
    }
    assert!(
        !dir.path().join(format!("msg/{BATCH}.spool")).exists(),
        "the batch goes as usual"
    );
    assert_eq!(
        std::fs::read(dir.path().join(format!("corrupt/{BATCH}.spool"))).unwrap(),
        bytes,
        "the copy stays for the operator"
    );
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(
        spool.recover().unwrap().is_empty(),
        "corrupt/ is not replayed"
    );
}

#[test]
fn a_record_under_a_damaged_header_id_is_recovered_under_its_meta_id() {
    let bytes = seven_bytes();
    let header = record_at(&bytes, "R4");
    let mut damaged = bytes.clone();
    damaged[header + 6] = b'9'; // "MVS1 R4" -> "MVS1 R9"
    let (spool, found, dir) = recover_from(&damaged);
    assert_eq!(found.len(), 7);
    assert_intact_and_kept(&spool, &found, &damaged, dir.path());
}

/// Found by the `recovery` fuzz target: a message whose last line has no line end, followed by
/// damage that starts with a newline, held a line that read as another message's outcome.
#[test]
fn an_outcome_line_inside_an_intact_record_is_content_not_an_outcome() {
    let body: &[u8] = b"Subject: x\r\n\r\nMVO1 R1 0 delivered 5";
    let mut bytes = batch_bytes(&[("R0", body), ("R1", b"Subject: y\r\n\r\nhi\r\n")], "");
    let end_of_r0 = record_at(&bytes, "R1");
    bytes.splice(end_of_r0..end_of_r0, b"\njunk".iter().copied());
    let reading = super::read::read_batch(&bytes);
    assert_eq!(reading.records.len(), 2, "both records intact");
    assert!(
        reading.lines.is_empty(),
        "no outcome is read from a message: {:?}",
        reading.lines
    );
    assert!(!reading.damage.is_empty(), "the junk is damage");
}

/// Seven records R0..R6 followed by room (zeros), as the committer leaves a batch taking rounds;
/// returns the bytes and where R6's record starts.
fn seven_with_room() -> (Vec<u8>, usize) {
    let (records, _) = seven();
    let refs: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(i, b)| (i.as_str(), b.as_slice()))
        .collect();
    let mut bytes = batch_bytes(&refs, "");
    let r6 = record_at(&bytes, "R6");
    bytes.resize(bytes.len() + 8192, 0);
    (bytes, r6)
}

#[test]
fn a_round_torn_in_a_batchs_room_is_not_damage() {
    // Every way a crash can leave the last round written into the room: the file system wrote
    // some of its sectors (or pages) and not others, which still read as zeros.
    let (whole, r6) = seven_with_room();
    let end = memchr::memmem::find(&whole[r6..], b"body of message 6\r\n").unwrap() + r6 + 19;
    // Each sector of R6 after its first left unwritten, and all of them.
    let first = (r6 + 1).next_multiple_of(512);
    assert!(first < end, "R6 spans a sector boundary");
    let mut cases: Vec<std::ops::Range<usize>> =
        (first..end).step_by(512).map(|b| b..b + 512).collect();
    cases.push(first..end.next_multiple_of(512));
    for unwritten in cases {
        let mut bytes = whole.clone();
        bytes[unwritten.clone()].fill(0);
        // An outcome line written after the torn round (never synced either) still counts.
        let line_at = end.max(unwritten.end);
        bytes.splice(
            line_at..line_at,
            BatchLogLine::outcome_line("R2", &LogEntry::Delivered { index: 1, at: 5 }).into_bytes(),
        );
        let reading = read::read_batch(&bytes);
        assert!(
            reading.damage.is_empty(),
            "{unwritten:?}: {:?}",
            reading.damage
        );
        assert_eq!(reading.torn, 1, "{unwritten:?}");
        let (spool, found, dir) = recover_from(&bytes);
        assert_eq!(found, ids(&["R0", "R1", "R2", "R3", "R4", "R5"]));
        assert_eq!(spool.corrupt_batches(), 0, "{unwritten:?}");
        assert!(!dir.path().join(format!("corrupt/{BATCH}.spool")).exists());
        let r2 = spool
            .recover()
            .unwrap()
            .into_iter()
            .find(|r| r.meta.id == "R2");
        assert_eq!(
            r2.unwrap().log,
            vec![LogEntry::Delivered { index: 1, at: 5 }]
        );
    }
}

#[test]
fn damage_to_the_last_record_before_a_batchs_room_is_still_damage() {
    let (whole, r6) = seven_with_room();
    // A changed byte, and the file cut short inside the record (room and all).
    let mut flipped = whole.clone();
    let at = memchr::memmem::find(&flipped, b"body of message 6").unwrap();
    flipped[at] ^= 0x20;
    let cut = whole[..r6 + 60].to_vec();
    // A torn round that left an intact record after the damaged one is not a crash's
    // leftover that recovery can tell apart: kept for the operator too.
    let mut then_intact = whole.clone();
    then_intact[at] ^= 0x20;
    let (records, _) = seven();
    let refs: Vec<(&str, &[u8])> = records[..1]
        .iter()
        .map(|(_, b)| ("R7", b.as_slice()))
        .collect();
    let r7 = batch_bytes(&refs, "");
    let place = then_intact.len() - 4096;
    then_intact[place..place + r7.len()].copy_from_slice(&r7);
    for (what, bytes) in [
        ("flipped", flipped),
        ("cut", cut),
        ("then intact", then_intact),
    ] {
        let reading = read::read_batch(&bytes);
        assert_eq!(reading.torn, 0, "{what}");
        let (spool, found, dir) = recover_from(&bytes);
        assert!(!found.contains(&"R6".to_string()), "{what}");
        assert_eq!(spool.corrupt_batches(), 1, "{what}");
        assert!(
            dir.path().join(format!("corrupt/{BATCH}.spool")).exists(),
            "{what}"
        );
    }
}
