//! The capture format shared by the `dir` upstream and `mailveil sink`: `DIR/<id>.eml` holding
//! the message exactly as received, and `DIR/<id>.json` holding
//! `{"mail_from": "...", "rcpt_to": ["..."]}`.
//!
//! INTERFACE (to be implemented by the upstream work).
