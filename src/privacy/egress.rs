//! The egress check: may this header block leave, to these recipients?
//!
//! It is the last word on every copy, at end of DATA (so a refusal is a `550` to the client)
//! and again just before the copy is handed to an upstream (so a bug anywhere between the two
//! fails the copy instead of delivering it). It reads only bytes: every field of the header
//! block, under every reading ([`super::reading`]), searched for every private address
//! ([`Exposure`]). It does not use the address parser, the field classification of the
//! rewrite or the decision; it only needs the field boundaries to name where it found
//! something, and a field boundary it draws wrongly changes that name, not the verdict.

use super::exposure::{Audience, Exposure};
use super::{fields, reading};

/// Why a header block may not leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// Name of the first field found showing an address (as written, sanitised for a reply).
    pub field: String,
    /// Distinct private addresses shown that some recipient must not see.
    pub addresses: usize,
    /// The field holds an encoded-word in a charset the relay cannot decode, which may show
    /// anyone's address (`addresses` then counts only what could be read).
    pub unreadable: bool,
}

/// Checks `header` for a copy delivered to `audience`.
pub fn check(exposure: &Exposure, header: &[u8], audience: &Audience) -> Result<(), Leak> {
    if exposure.private_count() == 0 || audience.is_empty() {
        return Ok(());
    }
    let block = fields::scan(header);
    let mut first: Option<String> = None;
    let mut leaked: Vec<usize> = Vec::new();
    let mut unreadable = false;
    for field in &block.fields {
        let bytes = trim_line_end(&header[field.start..field.end]);
        if !could_show_address(bytes) {
            continue;
        }
        let bad: Vec<usize> = exposure
            .shown(bytes)
            .into_iter()
            .filter(|&id| !exposure.all_may_see(audience, id))
            .collect();
        let cannot_read =
            reading::has_undecodable_word(bytes) && exposure.any_hidden_from(audience);
        if bad.is_empty() && !cannot_read {
            continue;
        }
        first.get_or_insert_with(|| field_name(&header[field.start..field.value_start]));
        leaked.extend(bad);
        unreadable |= cannot_read;
    }
    match first {
        None => Ok(()),
        Some(field) => {
            leaked.sort_unstable();
            leaked.dedup();
            Err(Leak {
                field,
                addresses: leaked.len(),
                unreadable,
            })
        }
    }
}

/// False when no reading of `bytes` can hold an `@`: no `@`, no `%` (`%40`), no `=` (an
/// encoded-word) and nothing outside ASCII (`＠`, and legacy charsets). Most fields (Date,
/// Subject, Content-Type) are skipped by this one pass.
pub fn could_show_address(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|&b| b == b'@' || b == b'%' || b == b'=' || b >= 0x80)
}

fn trim_line_end(bytes: &[u8]) -> &[u8] {
    bytes.strip_suffix(b"\r\n").unwrap_or(bytes)
}

/// The field name as the reply and the log show it: printable ASCII only, at most 64
/// characters; the lines before the first field have none.
fn field_name(name_and_colon: &[u8]) -> String {
    let name = name_and_colon
        .strip_suffix(b":")
        .unwrap_or(name_and_colon)
        .trim_ascii();
    let name: String = name
        .iter()
        .filter(|b| b.is_ascii_graphic() && **b != b'@')
        .take(64)
        .map(|&b| b as char)
        .collect();
    if name.is_empty() {
        "(unnamed header line)".into()
    } else {
        name
    }
}
