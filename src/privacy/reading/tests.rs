use super::*;

fn readings(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_reading(raw.as_bytes(), |r| {
        out.push(r.to_string());
        false
    });
    out
}

fn any_contains(raw: &str, needle: &str) -> bool {
    each_reading(raw.as_bytes(), |r| r.to_lowercase().contains(needle))
}

#[test]
fn encoded_words_are_decoded_repeatedly() {
    assert!(any_contains("=?utf-8?q?bob=40y.test?=", "bob@y.test"));
    assert!(any_contains("=?UTF-8?B?Ym9iQHkudGVzdA==?=", "bob@y.test"));
    // Encoded twice: the outer word decodes to another encoded word.
    let inner = "=?utf-8?q?bob=40y.test?=";
    let outer = format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(inner)
    );
    assert!(any_contains(&outer, "bob@y.test"));
    // Glued to text, in quotes, split over adjacent words.
    assert!(any_contains(
        "\"x=?utf-8?q?bob?= =?utf-8?q?=40y.test?=\"",
        "xbob@y.test"
    ));
    // Legacy charsets: GB2312 fullwidth at sign.
    assert!(any_contains("=?gb2312?b?Ym9io8B5LnRlc3Q=?=", "bob@y.test"));
}

#[test]
fn compatibility_and_invisible_characters() {
    assert!(any_contains("bob＠y．test", "bob@y.test"));
    assert!(any_contains("ｂｏｂ@y.test", "bob@y.test"));
    assert!(any_contains("bo\u{200b}b@y.te\u{ad}st", "bob@y.test"));
    assert!(any_contains("BOB@Y.TEST", "bob@y.test"));
    assert!(any_contains("ÄNN@Y.TEST", "änn@y.test"));
}

#[test]
fn obsolete_syntax_comments_and_escapes() {
    assert!(any_contains("bob (x) @ y . test", "bob@y.test"));
    assert!(any_contains("\"bob\"@y.test", "bob@y.test"));
    assert!(any_contains("\"bob\\@y.test\" <a@b>", "bob@y.test"));
    assert!(any_contains("mailto:bob%40y.test", "bob@y.test"));
    assert!(any_contains("bob@y.\r\n test", "bob@y.test"));
    assert!(!any_contains("\"b@y, x\"@z", "x@z"));
}

#[test]
fn charsets_that_cannot_be_decoded_are_reported() {
    for word in [
        "=?utf-7?Q?bob+AEA-y.test?=",
        "=?UTF-32?B?AAAAYg==?=",
        "=?hz-gb-2312?Q?~{#@~}?=",
        "=?iso-2022-kr?Q?x?=",
        "=?x-made-up?Q?x?=",
        // Hidden inside a word that decodes.
        "=?utf-8?b?PT91dGYtNz9RP3g/PQ==?=",
    ] {
        assert!(has_undecodable_word(word.as_bytes()), "{word}");
    }
    for word in [
        "=?utf-8?q?x?=",
        "=?gb2312?b?o8A=?=",
        "=?unknown-8bit?q?x?=",
        "no words",
    ] {
        assert!(!has_undecodable_word(word.as_bytes()), "{word}");
    }
}

#[test]
fn percent_escapes_have_a_reading_of_their_own() {
    // Compacting would glue ".txt" to the domain; the unescaped reading keeps it apart.
    assert!(any_contains(
        "filename*=utf-8''list%20for%20bob%40y.test%20.txt",
        "bob@y.test .txt"
    ));
}

#[test]
fn lenient_base64() {
    assert_eq!(base64_lenient(b"Ym9i !QHkudGVzdA=="), b"bob@y.test");
    assert_eq!(base64_lenient(b"Ym9"), b"bo");
}

#[test]
fn identical_readings_are_skipped() {
    assert_eq!(readings("plain@x.test"), ["plain@x.test"]);
}

#[test]
fn hostile_input_stays_linear() {
    // Each of these would cost a scan to the end of the text per `=?` in a naive decoder.
    for text in [
        "=?a".repeat(300_000),
        "=?utf-8?q?".repeat(100_000),
        "(".repeat(300_000),
    ] {
        each_reading(text.as_bytes(), |_| false);
    }
}
