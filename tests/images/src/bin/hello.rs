//! The real-node test's workload: answers every HTTP request on :8080 (or $PORT) with one line
//! naming the pod (its hostname), so the test can tell the answer came from the Pod it made.
//! Exits on SIGTERM like any well-behaved container (std's default action for SIGTERM).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
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
