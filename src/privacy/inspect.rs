//! The report `mailveil inspect` prints: the policy's dry run, shown exactly as it would send.
//!
//! Operators use it to see what a recipient would receive before pointing an application at
//! the relay, so it runs the same [`plan`] and [`render_header`] as the relay itself rather than
//! describing them.

use crate::config::PrivacyConfig;
use crate::envelope::Envelope;

use super::{assess, render_header};

/// What `mailveil inspect` shows: the report (standard output) and, apart from it, why the
/// message would be refused or what the body check found (standard error), so the report's
/// line format stays exactly as SPEC gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub report: String,
    /// `550 5.7.1 ...`, as the client would be answered at end of DATA.
    pub refusal: Option<String>,
    /// The body shows a recipient's address but is relayed (monitor).
    pub body_warning: Option<String>,
}

/// The full report text, every line ending in `\n`:
///
/// ```text
/// decision: split (visible 2)
/// delivery 1/2: MAIL FROM:<app@x> RCPT TO:<a@x>
/// Subject: hello
/// To: a@x
///
/// delivery 2/2: ...
/// ```
///
/// Header lines are shown with LF line endings and without the empty line that ends the
/// header block; the body is not shown (it is never changed). A `reject` decision has no
/// deliveries, so the report is only its first line.
///
/// `message` must be the bytes the relay would plan with: CRLF line ends only (see
/// [`super::bytes::crlf_only`]) and the relay's own `Received` field on top.
pub fn inspect_report(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> String {
    inspect(config, envelope, message).report
}

/// The report and the notes beside it; see [`inspect_report`].
pub fn inspect(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> Inspection {
    let (exposure, plan) = assess(config, envelope, message);
    let mut out = format!(
        "decision: {} (visible {})\n",
        plan.decision.as_str(),
        plan.visible
    );
    let total = plan.deliveries.len();
    for (k, delivery) in plan.deliveries.iter().enumerate() {
        let rcpts: Vec<String> = delivery.rcpt_to.iter().map(|r| format!("<{r}>")).collect();
        out.push_str(&format!(
            "delivery {}/{total}: MAIL FROM:<{}> RCPT TO:{}\n",
            k + 1,
            envelope.mail_from,
            rcpts.join(" ")
        ));
        let header = render_header(message, &delivery.rewrite, &exposure);
        let text = crate::text::lossy(&header);
        let mut lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        // The split leaves "" after the final LF, and the header block's own empty line.
        while lines.last() == Some(&"") {
            lines.pop();
        }
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    Inspection {
        report: out,
        refusal: plan.refusal.map(|r| format!("550 5.7.1 {}", r.text)),
        body_warning: plan.body_warning,
    }
}
