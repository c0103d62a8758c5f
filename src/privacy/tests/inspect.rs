use super::{config, crlf, envelope, split};
use crate::config::PrivacyMode;
use crate::privacy::inspect_report;

#[test]
fn split_report() {
    let m =
        crlf("From: app@x.com\nTo: \"Al\" <a@x.com>, b@y.com\nBcc: c@z.com\nSubject: s\n\nbody\n");
    let env = envelope("app@x.com", &["a@x.com", "b@y.com", "c@z.com"]);
    assert_eq!(
        inspect_report(&split(), &env, &m),
        "decision: split (visible 2)\n\
         delivery 1/3: MAIL FROM:<app@x.com> RCPT TO:<a@x.com>\n\
         From: app@x.com\nTo: \"Al\" <a@x.com>\nSubject: s\n\n\
         delivery 2/3: MAIL FROM:<app@x.com> RCPT TO:<b@y.com>\n\
         From: app@x.com\nTo: b@y.com\nSubject: s\n\n\
         delivery 3/3: MAIL FROM:<app@x.com> RCPT TO:<c@z.com>\n\
         From: app@x.com\nTo: c@z.com\nSubject: s\n\n"
    );
}

#[test]
fn pass_bcc_reject_reports() {
    let env = envelope("", &["a@x.com", "b@y.com"]);
    let one = b"To: a@x.com\nBcc: b@y.com\n\nbody\n";
    assert_eq!(
        inspect_report(
            &config(PrivacyMode::Reject, 1, &[]),
            &envelope("", &["a@x.com"]),
            one
        ),
        "decision: pass (visible 1)\ndelivery 1/1: MAIL FROM:<> RCPT TO:<a@x.com>\nTo: a@x.com\n\n"
    );
    let two = b"To: a@x.com, b@y.com\n\nbody\n";
    assert_eq!(
        inspect_report(&config(PrivacyMode::Bcc, 1, &[]), &env, two),
        "decision: bcc (visible 2)\ndelivery 1/1: MAIL FROM:<> RCPT TO:<a@x.com> <b@y.com>\nTo: undisclosed-recipients:;\n\n"
    );
    assert_eq!(
        inspect_report(&config(PrivacyMode::Reject, 1, &[]), &env, two),
        "decision: reject (visible 2)\n"
    );
}
