//! SMTP replies shared by the stages that must answer a client: a code, an enhanced status code
//! (RFC 3463) and a text.

use std::fmt;

/// One SMTP reply. Rendered as a single line `CODE X.Y.Z text` (or multi-line if `text` has
/// several lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `5.7.1`.
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// True for 4xx: the client may try again later.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = self.text.lines().peekable();
        if lines.peek().is_none() {
            return write!(f, "{} {}\r\n", self.code, self.status);
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            write!(f, "{}{}{} {}\r\n", self.code, sep, self.status, line)?;
        }
        Ok(())
    }
}
