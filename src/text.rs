//! Bytes read as text.

use std::borrow::Cow;

/// `bytes` as text, each invalid UTF-8 sequence replaced by U+FFFD, like
/// [`String::from_utf8_lossy`], but valid text (nearly all of it, and mostly ASCII) is
/// recognised by [`std::str::from_utf8`], which checks ASCII a word at a time: the lossy
/// decoder walks byte by byte, and it was the relay's largest own symbol in the loopback
/// profile (every message's body and every log line pass through here).
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_is_borrowed_and_invalid_bytes_are_replaced_like_the_std_decoder() {
        assert!(matches!(
            lossy(b"plain ascii"),
            Cow::Borrowed("plain ascii")
        ));
        assert!(matches!(lossy("Grüße".as_bytes()), Cow::Borrowed("Grüße")));
        for bytes in [
            &b"a\xffb"[..],
            b"\xe2\x82",
            b"ok\xc3\x28 then",
            b"\xf0\x9f\x98",
        ] {
            assert_eq!(lossy(bytes), String::from_utf8_lossy(bytes), "{bytes:?}");
        }
    }
}
