//! The real-node test's workload: answers every HTTP request on :8080 (or $PORT) with one line
//! naming the pod (its hostname, which the kubelet sets to the pod name), so the test can tell which
//! Pod answered. Exits on SIGTERM like any well-behaved container (std's default action for SIGTERM).
//!
//! `hello get URL` is the client: resolves the host through /etc/resolv.conf (search list, ndots;
//! see the library) and prints the body of an HTTP GET; exits 1 unless the status is 200. So
//! `kubectl exec POD -- /hello get http://hello.default.svc.cluster.local:8080/` tests cluster DNS,
//! the Service's ClusterIP (kube-proxy) and the pod network (CNI) in one go.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => serve(),
        ["get", url] => get(url),
        _ => {
            eprintln!("usage: hello                 serve HTTP on :8080 (or $PORT)\n       hello get http://HOST[:PORT]/PATH");
            std::process::exit(2);
        }
    }
}

fn get(url: &str) {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    match test_images::http_get(url, &conf, Duration::from_secs(10)) {
        Ok((status, body)) => {
            print!("{body}");
            if status != 200 {
                eprintln!("hello: GET {url}: HTTP status {status}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("hello: GET {url}: {e}");
            std::process::exit(1);
        }
    }
}

fn serve() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on :{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("hello: listening on :{port}");
    let body = format!("hello from pod {host}\n");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // Read the request head (up to the empty line); its content does not matter.
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => continue,
        });
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
