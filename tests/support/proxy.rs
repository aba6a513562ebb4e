//! A TCP proxy that can cut the connection between the job and the broker: the broker
//! advertises the proxy's address, so every client connection (bootstrap and data) goes
//! through it. `cut()` closes every open connection and refuses new ones until
//! `restore()`: to the job this is a broker that went away (connection refused) and came
//! back with its data intact, the way a broker restart with persistent storage looks. The
//! development broker keeps its data in memory, so stopping the process itself would lose
//! the topics; the proxy is how the outage test models the outage.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections refused while cut.
    pub refused: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port; `target` is filled in later by [`Proxy::forward_to`].
    pub fn bind() -> (Proxy, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (
            Proxy {
                addr,
                cut: Arc::new(AtomicBool::new(false)),
                open: Arc::new(Mutex::new(Vec::new())),
                refused: Arc::new(AtomicU64::new(0)),
            },
            listener,
        )
    }

    /// Starts forwarding connections accepted on `listener` to `target`.
    pub fn forward_to(&self, listener: TcpListener, target: String) {
        let cut = Arc::clone(&self.cut);
        let open = Arc::clone(&self.open);
        let refused = Arc::clone(&self.refused);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut open = open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let _ = from.set_read_timeout(Some(Duration::from_secs(3600)));
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
