//! `mailveil sink`: a capture SMTP server on mailin-embedded (upstream stand-in for development
//! and tests). INTERFACE (to be implemented by the upstream work).
/// STUB until merge.
pub struct SinkTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}
/// STUB until merge.
pub fn run(_l: std::net::SocketAddr, _d: std::path::PathBuf, _t: Option<SinkTls>) -> std::io::Result<()> {
    unimplemented!()
}
