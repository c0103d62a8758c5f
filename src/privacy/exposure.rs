//! Who must not see whom: the private addresses of one message, and which of them some bytes
//! show (SPEC "Privacy policy", version 2).
//!
//! - Private: every envelope recipient, and every address token found in any reading
//!   ([`reading`]) of a recipient field (To, Cc, Bcc, their `Resent-` forms and the other
//!   fields that name recipients), minus the originator (the one address of `From`, the one
//!   of `Sender`) and addresses in `trusted_domains`. An address whose local part holds `%`,
//!   `!`, `:` or a quote is never trusted: it may route to anyone.
//! - Shown: a private address occurs, standing alone ([`address::stands_alone`]), in some
//!   reading of the bytes. The search is one Aho-Corasick automaton over all private
//!   addresses, built once per message, so checking a copy costs time linear in its header
//!   whatever the number of recipients.
//! - May see: a recipient may see its own address; a recipient in a trusted domain (the
//!   operator's own mailbox: archive, Bcc to self) may see everything; and when the visible
//!   set V (private addresses in To/Cc) has at most `max_visible_recipients` addresses, its
//!   members may see each other. A copy is checked against its [`Audience`], summed up once,
//!   so the check is constant time per address shown, however many recipients share it.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::config::PrivacyConfig;
use crate::envelope::Envelope;

use super::address::{self, address_tokens, stands_alone};
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
    matcher: Option<AhoCorasick>,
    /// Private address id of each search pattern (an address may have several spellings).
    pattern_owner: Vec<usize>,
}

impl Exposure {
    /// The private addresses of `message` sent to `envelope` under `config`.
    pub fn assess(config: &PrivacyConfig, envelope: &Envelope, message: &[u8]) -> Exposure {
        let block = fields::scan(message);
        let mut from = KeySet::default();
        let mut sender = KeySet::default();
        let mut header = KeySet::default();
        let mut visible = KeySet::default();
        for field in &block.fields {
            let value = &message[field.value_start..field.end];
            match field.kind {
                FieldKind::From => from.extend(tokens(value)),
                FieldKind::Sender => sender.extend(tokens(value)),
                kind if kind.is_recipient() => {
                    let found = tokens(value);
                    if kind.is_visible() {
                        visible.extend(found.iter().cloned());
                    }
                    header.extend(found);
                }
                _ => {}
            }
        }
        // The originator's own address is not private, but only when the field names exactly
        // one: a From that lists the recipients exempts nobody.
        let originators: Vec<String> = [from, sender]
            .into_iter()
            .filter_map(KeySet::single)
            .collect();
        let trusted_domains = config.trusted_domains.clone();
        let mut exposure = Exposure {
            keys: Vec::new(),
            ids: HashMap::new(),
            visible: Vec::new(),
            visible_count: 0,
            max_visible: config.max_visible_recipients,
            trusted_domains,
            matcher: None,
            pattern_owner: Vec::new(),
        };
        let envelope_keys = envelope.rcpt_to.iter().map(|r| address::key(r));
        for key in envelope_keys.chain(header.order) {
            if originators.contains(&key)
                || exposure.is_trusted_key(&key)
                || exposure.ids.contains_key(&key)
            {
                continue;
            }
            exposure.ids.insert(key.clone(), exposure.keys.len());
            exposure.keys.push(key);
        }
        exposure.visible = vec![false; exposure.keys.len()];
        for key in &visible.order {
            if let Some(&id) = exposure.ids.get(key) {
                exposure.visible[id] = true;
                exposure.visible_count += 1;
            }
        }
        exposure.build_matcher();
        exposure
    }

    fn build_matcher(&mut self) {
        let mut patterns = Vec::with_capacity(self.keys.len());
        for (id, key) in self.keys.iter().enumerate() {
            for spelling in spellings(key) {
                patterns.push(spelling);
                self.pattern_owner.push(id);
            }
        }
        if patterns.is_empty() {
            return;
        }
        self.matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .ok();
        debug_assert!(self.matcher.is_some(), "patterns always build");
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
            if self.is_trusted_key(&key) || !seen.insert(key.clone()) {
                continue;
            }
            audience.members += 1;
            match self.ids.get(&key) {
                Some(&id) => {
                    audience.ids.insert(id);
                    if !self.visible[id] {
                        audience.outside_v += 1;
                    }
                }
                None => audience.outside_v += 1,
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
        audience.members == 0 || (audience.members == 1 && audience.ids.contains(&id))
    }

    /// The ids of the private addresses that any reading of `raw` shows, sorted, no repeats.
    pub fn shown(&self, raw: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        if self.matcher.is_some() {
            each_reading(raw, |text| {
                self.collect_shown(text, &mut out);
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
        self.collect_shown(text, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Pushes the id of every match that stands alone (repeats included: the callers sort).
    fn collect_shown(&self, text: &str, out: &mut Vec<usize>) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        for m in matcher.find_overlapping_iter(text) {
            if stands_alone(text, &m.range()) {
                out.push(self.pattern_owner[m.pattern().as_usize()]);
            }
        }
    }
}

/// The untrusted recipients of a copy, summed up for [`Exposure::all_may_see`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    members: usize,
    /// Members outside V (including those with no private address, such as an operator's
    /// canary mailbox).
    outside_v: usize,
    /// Private address ids of the members.
    ids: std::collections::HashSet<usize>,
}

impl Audience {
    /// No untrusted recipient: nothing is private to anyone.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }
}

/// The ways a private address may be written that a reading does not already bring back to
/// its key: the key itself, and the other form of an internationalised domain (`xn--`).
fn spellings(key: &str) -> Vec<String> {
    let mut out = vec![key.to_string()];
    if let Some((local, domain)) = key.rsplit_once('@') {
        let other = if domain.is_ascii() {
            domain
                .contains("xn--")
                .then(|| idna::domain_to_unicode(domain).0)
        } else {
            idna::domain_to_ascii(domain).ok()
        };
        if let Some(other) = other.map(|d| d.to_lowercase())
            && other != domain
            && !other.is_empty()
        {
            out.push(format!("{local}@{other}"));
        }
    }
    out
}

/// Distinct address keys in every reading of a field value.
fn tokens(value: &[u8]) -> Vec<String> {
    let mut out = KeySet::default();
    each_reading(value, |text| {
        out.extend(
            address_tokens(text)
                .into_iter()
                .map(|r| address::key(&text[r])),
        );
        false
    });
    out.order
}

/// Keys in first-seen order, without repeats.
#[derive(Debug, Default)]
struct KeySet {
    order: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl KeySet {
    fn extend(&mut self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            if self.seen.insert(key.clone()) {
                self.order.push(key);
            }
        }
    }

    /// The one key, when there is exactly one.
    fn single(self) -> Option<String> {
        (self.order.len() == 1).then(|| self.order.into_iter().next().unwrap_or_default())
    }
}
