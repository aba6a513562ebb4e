//! A webhook receiver: a local HTTP server that answers the n-th request (0-based) with
//! `statuses[n]` (the last one repeated) and records each request body. It closes each
//! connection after one answer, so every attempt is visible as its own request; a request
//! whose body never arrives in full is neither recorded nor answered.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Request bodies received so far, in order.
pub type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

/// Starts a receiver on 127.0.0.1; returns its URL (with a token in the path, as webhook
/// URLs often have) and the bodies it records.
pub async fn receiver(statuses: Vec<u16>) -> (String, Bodies) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies: Bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let body = loop {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let Some(body) = body else { continue };
            let n = {
                let mut b = seen.lock().expect("bodies lock");
                b.push(body);
                b.len() - 1
            };
            let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (format!("http://{addr}/hooks/secret-token"), bodies)
}
