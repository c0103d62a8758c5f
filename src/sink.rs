//! `mailveil sink`: a capture SMTP server on mailin-embedded (upstream stand-in for development
//! and tests). INTERFACE (to be implemented by the upstream work).
