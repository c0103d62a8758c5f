//! The last look at a copy before it is handed to an upstream: the privacy egress check on the
//! exact header about to be sent, and the one view of the bytes (CRLF only, no NUL). The same
//! checks passed at end of DATA; a copy that fails here is never sent (its outcome is
//! [`Outcome::Stopped`](super::Outcome::Stopped); the queue fails it, see `Inner::stop`).

use crate::privacy::{self, Decision, Exposure};
use crate::spool::{DeliveryRecord, MessageMeta};

/// The `upstream` label of a copy that never reached one.
pub(in crate::schedule) const NO_UPSTREAM: &str = "none";

/// Why a copy was stopped by the check before sending.
#[derive(Debug, thiserror::Error)]
pub(in crate::schedule) enum Stopped {
    #[error("the {} field would show {} other recipient address(es)", .0.field, .0.addresses)]
    Shows(privacy::egress::Leak),
    #[error("the copy holds a bare CR, a bare LF or a NUL")]
    Bytes,
}

/// The egress check of one copy, on the exact header it is about to send (after the DKIM
/// signature): no private address its recipients must not see, and nothing but CRLF line
/// ends and no NUL in the header or the shared body. Monitor mode relays exposing copies on
/// purpose; its copies are only checked for bytes.
pub(super) fn check_copy(
    meta: &MessageMeta,
    record: &DeliveryRecord,
    exposure: &Exposure,
    header: &[u8],
    message_clean: bool,
) -> Result<(), Stopped> {
    if !message_clean || !privacy::bytes::is_clean(header) {
        return Err(Stopped::Bytes);
    }
    if meta.decision == Decision::Monitor {
        return Ok(());
    }
    let audience = exposure.audience(record.planned.rcpt_to.iter().map(String::as_str));
    privacy::egress::check(exposure, header, &audience).map_err(Stopped::Shows)
}
