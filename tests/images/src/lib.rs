//! The client side of the `hello` test image: `hello get URL` resolves the URL's host the way a pod's
//! libc would (/etc/resolv.conf: its nameservers, search list and `ndots`) and prints the body of a
//! plain HTTP GET. A static glibc binary cannot use getaddrinfo in a scratch image (NSS needs
//! shared libraries that are not there), so the name goes out as one DNS A query over UDP,
//! written here: the wire format of a single question is small and the tests below pin it.
//! resolv.conf itself is parsed by the `resolv-conf` crate.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// DNS record type A and class IN (RFC 1035 3.2.2, 3.2.4).
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// The names to try for `name`, in the order glibc's resolver tries them (resolv.conf(5)): a name
/// ending in a dot is absolute and tried alone; a name with at least `ndots` dots is tried as-is
/// first, then with each search domain; a shorter one with the search domains first. So in a pod
/// (`ndots:5`) `hello.default.svc.cluster.local` is tried as
/// `hello.default.svc.cluster.local.default.svc.cluster.local` first, which NXDOMAINs, and so on.
pub fn candidates(name: &str, conf: &resolv_conf::Config) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_string()];
    }
    let dots = name.matches('.').count() as u32;
    let searched: Vec<String> = conf
        .get_last_search_or_domain()
        .map(|d| format!("{name}.{}", d.trim_end_matches('.')))
        .collect();
    let mut out = Vec::with_capacity(searched.len() + 1);
    if dots >= conf.ndots {
        out.push(name.to_string());
        out.extend(searched);
    } else {
        out.extend(searched);
        out.push(name.to_string());
    }
    out
}

/// A DNS query for the A records of `name` (recursion desired), with the given id.
pub fn build_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // flags: RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // AN, NS, AR
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{name:?} is not a valid DNS name (empty or over-long label)"
            ));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_A.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// What one answer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; its A records (possibly none, e.g. only a CNAME or AAAA).
    Found(Vec<Ipv4Addr>),
    /// NXDOMAIN: try the next candidate name.
    NoSuchName,
}

fn be16(buf: &[u8], at: usize) -> Result<u16, String> {
    buf.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "DNS answer cut short".to_string())
}

/// Skips a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(buf: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        let len = *buf.get(at).ok_or("DNS answer cut short in a name")?;
        match len {
            0 => return Ok(at + 1),
            // A compression pointer ends the name in place (RFC 1035 4.1.4).
            l if l & 0xC0 == 0xC0 => return Ok(at + 2),
            l if l & 0xC0 == 0 => at += 1 + l as usize,
            _ => return Err("DNS answer has an unknown label type".into()),
        }
    }
}

/// Parses the answer to the query `id`: its A records, or NXDOMAIN.
pub fn parse_response(id: u16, buf: &[u8]) -> Result<Answer, String> {
    if be16(buf, 0)? != id {
        return Err("DNS answer for another query (id mismatch)".into());
    }
    let flags = be16(buf, 2)?;
    if flags & 0x8000 == 0 {
        return Err("DNS packet is not an answer".into());
    }
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Answer::NoSuchName),
        rcode => return Err(format!("DNS server answered with error code {rcode}")),
    }
    if flags & 0x0200 != 0 {
        return Err("DNS answer truncated (TC); more A records than fit in UDP".into());
    }
    let (qd, an) = (be16(buf, 4)?, be16(buf, 6)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(buf, at)? + 4; // QTYPE, QCLASS
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        at = skip_name(buf, at)?;
        let (rtype, class, len) = (
            be16(buf, at)?,
            be16(buf, at + 2)?,
            be16(buf, at + 8)? as usize,
        );
        let data = buf
            .get(at + 10..at + 10 + len)
            .ok_or("DNS answer cut short in a record")?;
        if rtype == TYPE_A && class == CLASS_IN && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(Answer::Found(addrs))
}

/// Asks `server` for the A records of `name`: up to `attempts` tries of `timeout` each (a query is
/// idempotent, so retrying a lost datagram is safe).
pub fn query(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
    attempts: u32,
) -> Result<Answer, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    sock.connect(server)
        .map_err(|e| format!("cannot reach DNS server {server}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // Not security-relevant: the id only pairs the answer with the question.
    let id = (std::process::id() as u16)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(0));
    let q = build_query(id, name)?;
    let mut last = String::new();
    for _ in 0..attempts.max(1) {
        if let Err(e) = sock.send(&q) {
            last = format!("cannot send to DNS server {server}: {e}");
            continue;
        }
        let mut buf = [0u8; 1500];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match parse_response(id, &buf[..n]) {
                    // A stray datagram (old id) is skipped; wait for ours.
                    Err(e) if e.contains("id mismatch") => continue,
                    r => return r,
                },
                Err(e) => {
                    last = format!("no answer from DNS server {server} for {name}: {e}");
                    break;
                }
            }
        }
    }
    Err(last)
}

/// Resolves `host` as a pod's libc would, with `conf` (the contents of /etc/resolv.conf).
pub fn resolve(host: &str, conf: &str) -> Result<Vec<Ipv4Addr>, String> {
    resolve_via(host, conf, 53)
}

/// [`resolve`] with the nameservers' port given (the tests run their server on a free port).
pub fn resolve_via(host: &str, conf: &str, port: u16) -> Result<Vec<Ipv4Addr>, String> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(vec![ip]);
    }
    let conf =
        resolv_conf::Config::parse(conf).map_err(|e| format!("cannot parse resolv.conf: {e}"))?;
    let servers = conf.get_nameservers_or_local();
    let timeout = Duration::from_secs(conf.timeout.max(1) as u64);
    let mut errors = Vec::new();
    for name in candidates(host, &conf) {
        for server in &servers {
            match query(
                SocketAddr::new(IpAddr::from(server), port),
                &name,
                timeout,
                conf.attempts,
            ) {
                Ok(Answer::Found(a)) if !a.is_empty() => return Ok(a),
                // Exists without A records, or does not exist: the next candidate.
                Ok(_) => break,
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Err(format!(
            "{host}: no such name (tried {:?})",
            candidates(host, &conf)
        ))
    } else {
        Err(format!("{host}: {}", errors.join("; ")))
    }
}

/// `http://HOST[:PORT][/PATH]` split into host, port and path.
pub fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!("{url:?}: only http:// is supported"));
    }
    let host = u
        .host_str()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .to_string();
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    Ok((host, u.port().unwrap_or(80), path))
}

/// An HTTP/1.0 GET of `url`, the host resolved with `resolv_conf`; returns the status and body.
pub fn http_get(url: &str, resolv_conf: &str, timeout: Duration) -> Result<(u16, String), String> {
    let (host, port, path) = split_url(url)?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolve(&host, resolv_conf)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip.into(), port))
            .collect(),
    };
    let addr = addrs[0];
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {host} ({addr}): {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One buffer, one write_all: `write!` on a socket sends each piece of the
    // format separately, and a server that answers after the first piece and
    // closes turns the next piece into EPIPE (seen in CI as "Broken pipe").
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: hello\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the answer of {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} sent no HTTP header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} sent no HTTP status line"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const POD_RESOLV: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                              nameserver 10.96.0.10\noptions ndots:5\n";

    fn conf(s: &str) -> resolv_conf::Config {
        resolv_conf::Config::parse(s).unwrap()
    }

    #[test]
    fn short_names_try_the_search_list_first() {
        assert_eq!(
            candidates("hello", &conf(POD_RESOLV)),
            [
                "hello.default.svc.cluster.local",
                "hello.svc.cluster.local",
                "hello.cluster.local",
                "hello"
            ]
        );
        // Four dots < ndots:5: still the search list first (why pods query FQDNs 4 times).
        let c = candidates("hello.default.svc.cluster.local", &conf(POD_RESOLV));
        assert_eq!(
            c[0],
            "hello.default.svc.cluster.local.default.svc.cluster.local"
        );
        assert_eq!(c.last().unwrap(), "hello.default.svc.cluster.local");
    }

    #[test]
    fn names_with_enough_dots_or_a_final_dot_go_first_or_alone() {
        let c = candidates("a.b", &conf("search x.y\noptions ndots:1\n"));
        assert_eq!(c, ["a.b", "a.b.x.y"]);
        assert_eq!(
            candidates("hello.default.", &conf(POD_RESOLV)),
            ["hello.default"]
        );
        // No search list: only the name itself.
        assert_eq!(
            candidates("hello", &conf("nameserver 1.1.1.1\n")),
            ["hello"]
        );
    }

    #[test]
    fn query_is_rfc1035_wire_format() {
        let q = build_query(0x1234, "ab.c").unwrap();
        assert_eq!(
            q,
            [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'a', b'b', 1, b'c', 0, 0, 1, 0, 1]
        );
        assert!(build_query(1, "a..b").is_err());
        assert!(build_query(1, &"x".repeat(64)).is_err());
    }

    /// An answer to `query` (id, question copied) with A records behind compression pointers, the
    /// way CoreDNS writes them, plus a CNAME-typed record that must be skipped.
    fn answer(query: &[u8], rcode: u16, addrs: &[[u8; 4]]) -> Vec<u8> {
        let mut a = query.to_vec();
        a[2..4].copy_from_slice(&(0x8180u16 | rcode).to_be_bytes());
        a[6..8].copy_from_slice(&((addrs.len() + 1) as u16).to_be_bytes());
        // CNAME record pointing nowhere useful: type 5, rdata = a pointer to the question name.
        a.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 2, 0xC0, 12]);
        for ip in addrs {
            a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
            a.extend_from_slice(ip);
        }
        a
    }

    #[test]
    fn answers_are_parsed_through_compression_and_errors_are_told_apart() {
        let q = build_query(7, "hello.default.svc.cluster.local").unwrap();
        let a = answer(&q, 0, &[[10, 96, 1, 2], [10, 96, 1, 3]]);
        assert_eq!(
            parse_response(7, &a).unwrap(),
            Answer::Found(vec![
                Ipv4Addr::new(10, 96, 1, 2),
                Ipv4Addr::new(10, 96, 1, 3)
            ])
        );
        assert_eq!(
            parse_response(7, &answer(&q, 3, &[])).unwrap(),
            Answer::NoSuchName
        );
        assert!(parse_response(7, &answer(&q, 2, &[]))
            .unwrap_err()
            .contains("error code 2"));
        assert!(parse_response(8, &a).unwrap_err().contains("id mismatch"));
        assert!(
            parse_response(7, &a[..a.len() - 2]).is_err(),
            "a cut answer must not parse"
        );
        assert!(parse_response(7, &q).is_err(), "a query is not an answer");
    }

    /// A DNS server on a free loopback port that knows one name; reports every name it was asked.
    fn fake_dns(known: &'static str, ip: [u8; 4]) -> (u16, mpsc::Receiver<String>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let q = &buf[..n];
                // Decode the question's labels back into a name.
                let (mut at, mut labels) = (12, Vec::new());
                while q[at] != 0 {
                    let l = q[at] as usize;
                    labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + l]).to_string());
                    at += 1 + l;
                }
                let name = labels.join(".");
                let reply = if name == known {
                    answer(q, 0, &[ip])
                } else {
                    answer(q, 3, &[])
                };
                let _ = tx.send(name);
                let _ = sock.send_to(&reply, peer);
            }
        });
        (port, rx)
    }

    #[test]
    fn resolve_walks_the_search_list_like_a_pod() {
        let (port, asked) = fake_dns("hello.default.svc.cluster.local", [10, 96, 7, 7]);
        let conf = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                    nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n";
        assert_eq!(
            resolve_via("hello", conf, port).unwrap(),
            [Ipv4Addr::new(10, 96, 7, 7)]
        );
        assert_eq!(asked.recv().unwrap(), "hello.default.svc.cluster.local");
        // The FQDN with 4 dots: three NXDOMAINs from the search list, then the name itself.
        assert_eq!(
            resolve_via("hello.default.svc.cluster.local", conf, port).unwrap(),
            [Ipv4Addr::new(10, 96, 7, 7)]
        );
        let seen: Vec<String> = asked.try_iter().collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[3], "hello.default.svc.cluster.local");
        let err = resolve_via("nothere", conf, port).unwrap_err();
        assert!(err.contains("no such name"), "{err}");
    }

    #[test]
    fn http_get_returns_status_and_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole head, as a real server does, before answering.
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let path = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let body = format!("you asked {path}\n");
            let _ = write!(
                c,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let (status, body) = http_get(
            &format!("http://127.0.0.1:{port}/x?y=1"),
            "",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(status, 404);
        assert_eq!(body, "you asked GET /x?y=1 HTTP/1.0\n");
        assert!(split_url("https://a/").is_err());
        assert_eq!(
            split_url("http://h.svc:8080").unwrap(),
            ("h.svc".into(), 8080, "/".into())
        );
    }
}
