//! Who must not see whom: the private addresses of one message, and which of them some bytes
//! show (SPEC "Privacy policy", version 2).
//!
//! - Private: every envelope recipient, and every address token found in any reading
//!   ([`reading`]) of a recipient field (To, Cc, Bcc, their `Resent-` forms and the other
//!   fields that name recipients), minus the originator (the one address of `From`, the one
//!   of `Sender`) and addresses in `trusted_domains`. An address whose local part holds `%`,
//!   `!`, `:` or a quote is never trusted: it may route to anyone.
//! - Shown: a private address occurs, standing alone ([`address::stands_alone`]), in some
//!   reading of the bytes. The search ([`Finder`]) is anchored at each `@`: the domain after it
//!   is looked up in a table of the private addresses' domains, and only the few positions
//!   before it where an address could start are looked up among that domain's local parts. The
//!   table is built once per message in time linear in the number of addresses, and a search
//!   costs time linear in the text (times the longest private local part), whatever the
//!   number of recipients. (An Aho-Corasick automaton over the addresses was the first design:
//!   building it took 0.7 s for 40,000 addresses, measured; see docs/benchmarks.md.)
//! - May see: a recipient may see its own address; a recipient in a trusted domain (the
//!   operator's own mailbox: archive, Bcc to self) may see everything; and when the visible
//!   set V (private addresses in To/Cc) has at most `max_visible_recipients` addresses, its
//!   members may see each other. A copy is checked against its [`Audience`], summed up once,
//!   so the check is constant time per address shown, however many recipients share it.

use std::collections::HashMap;

use crate::config::PrivacyConfig;
use crate::envelope::Envelope;

use super::address::{self, address_tokens};
use super::fields::{self, FieldKind};
use super::reading::each_reading;

/// The privacy facts of one message, built once at end of DATA (and again from the spool
/// before its copies are sent).
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// Comparison keys ([`address::key`]) of the private addresses; an address's id is its index.
    keys: Vec<String>,
    ids: HashMap<String, usize>,
    /// In To/Cc (the visible set V), per id.
    visible: Vec<bool>,
    visible_count: usize,
    max_visible: usize,
    trusted_domains: Vec<String>,
    finder: Finder,
}

impl Exposure {
    /// The private addresses of `message` sent to `envelope` under `config`.
    pub fn assess(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> Exposure {
        let block = fields::scan(message);
        let mut exposure = Exposure {
            max_visible: config.max_visible_recipients,
            trusted_domains: config.trusted_domains.clone(),
            ..Exposure::default()
        };
        // Every candidate once, with whether To/Cc show it: envelope recipients first, then the
        // recipient fields in header order.
        for r in &envelope.rcpt_to {
            exposure.candidate(address::key(r), false);
        }
        let mut from = KeySet::default();
        let mut sender = KeySet::default();
        for field in &block.fields {
            let value = &message[field.value_start..field.end];
            match field.kind {
                FieldKind::From => each_token(value, |key| from.insert(key)),
                FieldKind::Sender => each_token(value, |key| sender.insert(key)),
                kind if kind.is_recipient() => {
                    each_token(value, |key| exposure.candidate(key, kind.is_visible()))
                }
                _ => {}
            }
        }
        // The originator's own address is not private, but only when the field names exactly
        // one: a From that lists the recipients exempts nobody. Trusted addresses are not
        // private either. Both leave the table before ids are final.
        for key in [from.single(), sender.single()].into_iter().flatten() {
            exposure.withdraw(&key);
        }
        let trusted: Vec<String> = exposure
            .keys
            .iter()
            .filter(|k| exposure.is_trusted_key(k))
            .cloned()
            .collect();
        for key in &trusted {
            exposure.withdraw(key);
        }
        exposure.visible_count = exposure.visible.iter().filter(|&&v| v).count();
        exposure.build_finder();
        exposure
    }

    /// Adds `key` to the private addresses (once), noting when To/Cc show it.
    fn candidate(&mut self, key: String, visible: bool) {
        match self.ids.get(&key) {
            Some(&id) => self.visible[id] |= visible,
            None => {
                self.ids.insert(key.clone(), self.keys.len());
                self.keys.push(key);
                self.visible.push(visible);
            }
        }
    }

    /// Removes `key` from the private addresses (the last one takes its id).
    fn withdraw(&mut self, key: &str) {
        let Some(id) = self.ids.remove(key) else {
            return;
        };
        self.keys.swap_remove(id);
        self.visible.swap_remove(id);
        if let Some(moved) = self.keys.get(id) {
            self.ids.insert(moved.clone(), id);
        }
    }

    fn build_finder(&mut self) {
        for (id, key) in self.keys.iter().enumerate() {
            self.finder.add(key, id);
            if let Some(other) = spellings(key) {
                self.finder.add(&other, id);
            }
        }
    }

    /// Number of private addresses.
    pub fn private_count(&self) -> usize {
        self.keys.len()
    }

    /// The private address with this id, as its comparison key.
    pub fn address(&self, id: usize) -> &str {
        &self.keys[id]
    }

    /// True when `address` is one of the private addresses.
    pub fn is_private(&self, address: &str) -> bool {
        self.ids.contains_key(&address::key(address))
    }

    /// |V|: the private addresses in To/Cc.
    pub fn visible_count(&self) -> usize {
        self.visible_count
    }

    /// True when the id is in V.
    pub fn is_visible(&self, id: usize) -> bool {
        self.visible[id]
    }

    /// True for an address in a trusted domain that cannot route elsewhere.
    pub fn is_trusted(&self, address: &str) -> bool {
        self.is_trusted_key(&address::key(address))
    }

    fn is_trusted_key(&self, key: &str) -> bool {
        let Some((local, domain)) = key.rsplit_once('@') else {
            return false;
        };
        !local.is_empty()
            && !local.contains(['%', '!', ':', '"', '@', '\\', ' '])
            && self.trusted_domains.iter().any(|d| d == domain)
    }

    /// The recipients of one copy (or of every copy, for the shared body), as
    /// [`Self::all_may_see`] needs them.
    pub fn audience<'a>(&self, recipients: impl IntoIterator<Item = &'a str>) -> Audience {
        let mut audience = Audience::default();
        let mut seen = std::collections::HashSet::new();
        for r in recipients {
            let key = address::key(r);
            if self.is_trusted_key(&key) {
                continue;
            }
            // Envelope recipients are private, so a repeat is the same id. (A recipient without
            // one is an operator's canary mailbox, given once.)
            let id = self.ids.get(&key).copied();
            if id.is_some_and(|id| !seen.insert(id)) {
                continue;
            }
            audience.members += 1;
            audience.only = if audience.members == 1 { id } else { None };
            if id.is_none_or(|id| !self.visible[id]) {
                audience.outside_v += 1;
            }
        }
        audience
    }

    /// May every member of `audience` see the private address `id`? A recipient may see its
    /// own address; when V is within `max_visible_recipients`, members of V may see V.
    /// Trusted recipients are not members: they may see anything.
    pub fn all_may_see(&self, audience: &Audience, id: usize) -> bool {
        if self.visible_count <= self.max_visible && self.visible[id] {
            return audience.outside_v == 0;
        }
        audience.members == 0 || (audience.members == 1 && audience.only == Some(id))
    }

    /// True when some member of `audience` may not see some private address: what a text we
    /// cannot read (an encoded-word in an unknown charset) must be assumed to show.
    pub fn any_hidden_from(&self, audience: &Audience) -> bool {
        (0..self.keys.len()).any(|id| !self.all_may_see(audience, id))
    }

    /// The ids of the private addresses that any reading of `raw` shows, sorted, no repeats.
    pub fn shown(&self, raw: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        if !self.finder.is_empty() {
            each_reading(raw, |text| {
                self.finder.find(text, &mut out);
                false
            });
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The ids of the private addresses `text` shows as it is (one reading), sorted, no repeats.
    pub fn shown_in_text(&self, text: &str) -> Vec<usize> {
        let mut out = Vec::new();
        self.finder.find(text, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Finds known addresses in text, standing alone ([`address::stands_alone`]), in one pass
/// anchored at each `@`. Equivalent to searching for every address as a substring and keeping
/// the matches with nothing glued to either side: the domain of a match must be the whole
/// domain run after its `@` (one lookup), and its local part must start where the character
/// before is not a local-part character (a few lookups, within the longest local part of that
/// domain). Case-insensitive.
#[derive(Debug, Clone, Default)]
struct Finder {
    domains: HashMap<String, Locals>,
}

#[derive(Debug, Clone, Default)]
struct Locals {
    ids: HashMap<String, usize>,
    /// Bytes of the longest local part: how far before an `@` a start is looked for.
    longest: usize,
}

impl Finder {
    /// Adds `address` (lower case, as [`address::key`] writes it) under `id`.
    fn add(&mut self, address: &str, id: usize) {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return;
        };
        if !self.domains.contains_key(domain) {
            self.domains.insert(domain.to_string(), Locals::default());
        }
        let Some(locals) = self.domains.get_mut(domain) else {
            return;
        };
        locals.longest = locals.longest.max(local.len());
        if !locals.ids.contains_key(local) {
            locals.ids.insert(local.to_string(), id);
        }
    }

    fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Pushes the id of every known address that stands alone in `text` (repeats included).
    fn find(&self, text: &str, out: &mut Vec<usize>) {
        if self.domains.is_empty() {
            return;
        }
        let mut key = String::new();
        for at in memchr::memchr_iter(b'@', text.as_bytes()) {
            let Some(end) = address::domain_end(text, at + 1) else {
                continue;
            };
            lower_into(&text[at + 1..end], &mut key);
            let Some(locals) = self.domains.get(key.as_str()) else {
                continue;
            };
            let mut floor = at.saturating_sub(locals.longest);
            while !text.is_char_boundary(floor) {
                floor -= 1;
            }
            let mut before = text[..floor].chars().next_back();
            for (i, c) in text[floor..at].char_indices() {
                let start = floor + i;
                if !before.is_some_and(address::joins_local) {
                    lower_into(&text[start..at], &mut key);
                    if let Some(&id) = locals.ids.get(key.as_str()) {
                        out.push(id);
                    }
                }
                before = Some(c);
            }
        }
    }
}

/// `text` in lower case, into `buf` (reused: no allocation per lookup).
fn lower_into(text: &str, buf: &mut String) {
    buf.clear();
    if text.is_ascii() {
        buf.push_str(text);
        buf.make_ascii_lowercase();
    } else {
        buf.extend(text.chars().flat_map(char::to_lowercase));
    }
}

/// The untrusted recipients of a copy, summed up for [`Exposure::all_may_see`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    members: usize,
    /// Members outside V (including those with no private address, such as an operator's
    /// canary mailbox).
    outside_v: usize,
    /// The private address id of the one member, when there is exactly one.
    only: Option<usize>,
}

impl Audience {
    /// No untrusted recipient: nothing is private to anyone.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }
}

/// The other way a private address may be written that no reading brings back to its key:
/// the other form of an internationalised domain (`xn--`).
fn spellings(key: &str) -> Option<String> {
    let (local, domain) = key.rsplit_once('@')?;
    let other = if domain.is_ascii() {
        domain
            .contains("xn--")
            .then(|| idna::domain_to_unicode(domain).0)
    } else {
        idna::domain_to_ascii(domain).ok()
    };
    other
        .map(|d| d.to_lowercase())
        .filter(|d| d != domain && !d.is_empty())
        .map(|d| format!("{local}@{d}"))
}

/// Calls `add` with the key of every address token in every reading of a field value (the same
/// address may come more than once).
fn each_token(value: &[u8], mut add: impl FnMut(String)) {
    each_reading(value, |text| {
        for range in address_tokens(text) {
            add(address::key(&text[range]));
        }
        false
    });
}

/// Whether a field (From, Sender) names exactly one address, and which.
#[derive(Debug, Default)]
enum KeySet {
    #[default]
    Empty,
    One(String),
    Many,
}

impl KeySet {
    fn insert(&mut self, key: String) {
        *self = match std::mem::take(self) {
            KeySet::Empty => KeySet::One(key),
            KeySet::One(one) if one == key => KeySet::One(one),
            KeySet::One(_) | KeySet::Many => KeySet::Many,
        };
    }

    /// The one key, when there is exactly one.
    fn single(self) -> Option<String> {
        match self {
            KeySet::One(one) => Some(one),
            KeySet::Empty | KeySet::Many => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition the finder implements: every occurrence of every address as a substring
    /// (case-insensitive) that stands alone.
    fn naive(addresses: &[String], text: &str) -> Vec<usize> {
        let lower = text.to_lowercase();
        let mut out: Vec<usize> = Vec::new();
        if lower.len() != text.len() {
            return out;
        }
        for (id, a) in addresses.iter().enumerate() {
            let hit = lower
                .match_indices(a.as_str())
                .any(|(i, m)| address::stands_alone(&lower, &(i..i + m.len())));
            if hit {
                out.push(id);
            }
        }
        out
    }

    fn finder(addresses: &[String]) -> Finder {
        let mut f = Finder::default();
        for (id, a) in addresses.iter().enumerate() {
            f.add(a, id);
        }
        f
    }

    fn found(f: &Finder, text: &str) -> Vec<usize> {
        let mut out = Vec::new();
        f.find(text, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn finds_what_stands_alone() {
        let addresses: Vec<String> = [
            "ann@y.test",
            "joann@y.test",
            "o'brien@y.test",
            "\"b@y, x\"@z.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = finder(&addresses);
        assert_eq!(found(&f, "To: <ANN@Y.TEST>"), [0]);
        assert_eq!(found(&f, "joann@y.test, ann@y.test.evil, ann@y.testx"), [1]);
        assert_eq!(found(&f, "'o'brien@y.test' brien@y.test"), [2]);
        assert_eq!(found(&f, "To: \"b@y, x\"@z.test"), [3]);
        assert_eq!(found(&f, "sentence ends with ann@y.test."), [0]);
    }

    proptest! {
        #[test]
        fn finder_equals_the_substring_definition(
            locals in prop::collection::vec("[a-c'.+]{1,4}", 1..6),
            domains in prop::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2})?", 1..3),
            text in "[a-cA-C'.+@<> \"-]{0,60}",
        ) {
            let addresses: Vec<String> = locals
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{l}@{}", domains[i % domains.len()]))
                .filter(|a| !a.starts_with('.') && !a.contains(".@"))
                .collect();
            let f = finder(&addresses);
            // Duplicate addresses keep the first id; compare sets of addresses.
            let names = |ids: Vec<usize>| {
                let mut v: Vec<&str> = ids.iter().map(|&i| addresses[i].as_str()).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            prop_assert_eq!(names(found(&f, &text)), names(naive(&addresses, &text)));
        }
    }
}
