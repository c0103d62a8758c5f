//! The report `mailveil inspect` prints: the policy's dry run, shown exactly as it would send.
//!
//! Operators use it to see what a recipient would receive before pointing an application at
//! the relay, so it runs the same [`plan`] and [`render_header`] as the relay itself rather than
//! describing them.

use crate::config::PrivacyConfig;
use crate::envelope::Envelope;

use super::{plan, render_header};

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
pub fn inspect_report(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> String {
    let plan = plan(config, envelope, message);
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
        let header = render_header(message, &delivery.rewrite);
        let text = String::from_utf8_lossy(&header);
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
    out
}
