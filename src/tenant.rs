//! Apps as tenants (`[[app]]`, `docs/apps.md`): the header half of sender rights. The app is
//! recognised and its MAIL FROM checked by the listener (`inbound/mail.rs`); at end of DATA
//! every `From:` address, and `Sender:` if present, must match the app's `header_senders`.
//! The fields are read with the privacy policy's own scanner and address reader, so the check
//! sees the same addresses the policy does; a field it cannot read fully is refused (fail
//! closed).

use crate::config::AppConfig;
use crate::privacy::fields::{self, FieldKind};
use crate::privacy::recipients::parse_field;

/// The header field (`From` or `Sender`) whose addresses the app may not use, or `None` when
/// the message's author fields are allowed. A message without `From:` is refused too (`From`).
pub fn header_refusal(app: &AppConfig, message: &[u8]) -> Option<&'static str> {
    let mut saw_from = false;
    for field in fields::scan(message).fields {
        let name = match field.kind {
            FieldKind::From => {
                saw_from = true;
                "From"
            }
            FieldKind::Sender => "Sender",
            _ => continue,
        };
        let parsed = parse_field(&message[field.value_start..field.end]);
        let allowed = parsed.error.is_none()
            && !parsed.addresses.is_empty()
            && parsed
                .addresses
                .iter()
                .all(|a| app.header_allowed(&a.address));
        if !allowed {
            return Some(name);
        }
    }
    (!saw_from).then_some("From")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn app() -> std::sync::Arc<AppConfig> {
        let c = Config::from_toml(
            "[[upstream]]\nname = \"o\"\ndir = \"/tmp/mailveil-tenant-tests\"\n[[app]]\nname = \"billing\"\nlogins = [\"b\"]\nsenders = [\"@example.com\"]\nheader_senders = [\"invoices@example.com\", \"@news.example.com\"]\n",
        )
        .unwrap();
        c.apps.apps[0].clone()
    }

    fn check(headers: &str) -> Option<&'static str> {
        header_refusal(&app(), format!("{headers}\r\n\r\nbody\r\n").as_bytes())
    }

    #[test]
    fn every_from_and_sender_address_must_match() {
        assert_eq!(
            check("From: Invoices <invoices@EXAMPLE.com>\r\nTo: a@x.test"),
            None
        );
        assert_eq!(
            check("From: a@news.example.com, invoices@example.com"),
            None
        );
        assert_eq!(
            check("From: a@news.example.com, ceo@example.com"),
            Some("From")
        );
        assert_eq!(check("From: ceo@example.com"), Some("From"));
        assert_eq!(
            check("From: invoices@example.com\r\nSender: ops@example.com"),
            Some("Sender")
        );
        assert_eq!(
            check("From: invoices@example.com\r\nSender: bot@news.example.com"),
            None
        );
    }

    #[test]
    fn a_missing_or_unreadable_from_is_refused() {
        assert_eq!(check("To: a@x.test\r\nSubject: hi"), Some("From"));
        assert_eq!(check("From: nobody"), Some("From"));
        assert_eq!(
            check("From: \"ceo@example.com\" <invoices@example.com>"),
            Some("From")
        );
        assert_eq!(
            check("From: invoices@example.com\r\nFrom: x@evil.test"),
            Some("From")
        );
    }
}
