//! A DNS server on 127.0.0.1 (UDP) answering from a table, for the relay's MX routing: names
//! in the table get their records of the asked type (none: NODATA), other names NXDOMAIN.
//! Stops when dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, TXT};
use hickory_proto::rr::{Name, RData, Record};
use tokio::task::JoinHandle;

/// Records by owner name (lower case, with the final dot).
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<String, Vec<RData>>,
}

impl Zone {
    fn add(&mut self, name: &str, data: RData) -> &mut Zone {
        let key = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.records.entry(key).or_default().push(data);
        self
    }

    pub fn mx(&mut self, domain: &str, preference: u16, host: &str) -> &mut Zone {
        let exchange = Name::from_ascii(format!("{}.", host.trim_end_matches('.'))).unwrap();
        self.add(domain, RData::MX(MX::new(preference, exchange)))
    }

    /// RFC 7505: `MX 0 .`.
    pub fn null_mx(&mut self, domain: &str) -> &mut Zone {
        self.add(domain, RData::MX(MX::new(0, Name::root())))
    }

    pub fn a(&mut self, host: &str, ip: Ipv4Addr) -> &mut Zone {
        self.add(host, RData::A(A(ip)))
    }

    pub fn txt(&mut self, name: &str, text: &str) -> &mut Zone {
        self.add(name, RData::TXT(TXT::new(vec![text.to_string()])))
    }

    /// The name exists with no records (NODATA for every type).
    pub fn exists(&mut self, name: &str) -> &mut Zone {
        let key = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.records.entry(key).or_default();
        self
    }
}

pub struct DnsServer {
    pub addr: SocketAddr,
    /// MX queries answered so far.
    pub mx_queries: Arc<AtomicUsize>,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl DnsServer {
    pub async fn start(zone: Zone) -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let table = zone.clone();
        let mx_queries = Arc::new(AtomicUsize::new(0));
        let counter = mx_queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true);
                for q in query.queries() {
                    answer.add_query(q.clone());
                    if q.query_type() == hickory_proto::rr::RecordType::MX {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let name = q.name().to_ascii().to_ascii_lowercase();
                    let zone = table.lock().unwrap();
                    match zone.records.get(&name) {
                        None => {
                            answer.set_response_code(ResponseCode::NXDomain);
                        }
                        Some(records) => {
                            for data in records.iter().filter(|d| d.record_type() == q.query_type())
                            {
                                answer.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    60,
                                    data.clone(),
                                ));
                            }
                        }
                    }
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            mx_queries,
            zone,
            task,
        }
    }

    /// Replaces the table (answers change at once; the relay's cache keeps old ones for their
    /// 60 s TTL).
    pub fn set(&self, zone: Zone) {
        *self.zone.lock().unwrap() = zone;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
