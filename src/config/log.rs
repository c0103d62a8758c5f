//! `[log]`: the log format and whether addresses are shown.

use super::raw::RawLog;
use super::values::Problems;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub show_addresses: bool,
}

pub(super) fn validate_log(raw: RawLog, p: &mut Problems) -> LogConfig {
    let format = match raw.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            p.push("log.format", format!("{other:?} is not one of text, json"));
            LogFormat::Text
        }
    };
    LogConfig {
        format,
        show_addresses: raw.show_addresses.unwrap_or(false),
    }
}
