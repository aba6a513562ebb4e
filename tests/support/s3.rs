//! A real S3-compatible server for the tests: moto's server (`moto_server`, moto 5.2) on a
//! free 127.0.0.1 port, started like the broker and stopped on drop, with a bucket of its
//! own per test. Where it is: $SHOPSTREAM_MOTO_SERVER, `moto_server` on PATH, `python3 -m
//! moto.server`, or a venv outside the clone ($SHOPSTREAM_TOOLS or
//! ~/.cache/shopstream/tools/moto-venv) into which it is installed when none is found.
//!
//! The store reaches it through `store.options` (endpoint, plain HTTP, test credentials),
//! so nothing in the process environment changes. [`S3Server::start_behind_proxy`] puts a
//! [`super::proxy::Proxy`] in between, which the outage test cuts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::proxy::Proxy;

/// A moto server, stopped on drop.
pub struct S3Server {
    child: Child,
    /// `127.0.0.1:PORT` of the server itself.
    pub addr: String,
    /// The endpoint clients use (the proxy's address when behind one).
    pub endpoint: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The command that runs moto's server, installing moto into a venv when none is found.
fn moto_command() -> Command {
    if let Ok(path) = std::env::var("SHOPSTREAM_MOTO_SERVER") {
        return Command::new(path);
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("moto_server", &["--help"]) {
        return Command::new("moto_server");
    }
    if works("python3", &["-c", "import moto.server, flask, werkzeug"]) {
        let mut command = Command::new("python3");
        command.args(["-m", "moto.server"]);
        return command;
    }
    let tools = std::env::var("SHOPSTREAM_TOOLS").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/shopstream/tools"),
        PathBuf::from,
    );
    let venv = tools.join("moto-venv");
    let server = venv.join("bin/moto_server");
    if !server.exists() {
        std::fs::create_dir_all(&tools).expect("tools dir");
        assert!(
            works("python3", &["-m", "venv", &venv.to_string_lossy()]),
            "cannot create a venv at {} for moto (python3 -m venv)",
            venv.display()
        );
        let pip = venv.join("bin/pip");
        let installed = Command::new(&pip)
            .args(["install", "--quiet", "moto[server]>=5.1,<6"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "cannot install moto[server] into {}",
            venv.display()
        );
    }
    Command::new(server)
}

impl S3Server {
    /// A server on a free port, reached directly.
    pub fn start() -> S3Server {
        let mut server = Self::spawn();
        server.endpoint = server.addr.clone();
        server
    }

    /// A server reached only through a proxy (which can cut it off).
    pub fn start_behind_proxy() -> (S3Server, Proxy) {
        let mut server = Self::spawn();
        let (proxy, listener) = Proxy::bind();
        proxy.forward_to(listener, server.addr.clone());
        server.endpoint = proxy.addr.clone();
        (server, proxy)
    }

    fn spawn() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let log = dir.path().join("moto.log");
        let out = File::create(&log).unwrap();
        let child = moto_command()
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start moto_server");
        let server = S3Server {
            child,
            addr: format!("127.0.0.1:{port}"),
            endpoint: String::new(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(&server.addr, "GET", "/", &[]).is_none() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {} within 60 s; log: {}",
                server.addr,
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates a bucket with a name of its own and returns the name.
    pub fn bucket(&self, name: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let bucket = format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )
        .to_lowercase()
        .replace('_', "-");
        let status = http(&self.addr, "PUT", &format!("/{bucket}"), &[]).expect("moto answers");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "create bucket {bucket}: {status}"
        );
        bucket
    }

    /// `store.options` that reach this server with test credentials.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", format!("http://{}", self.endpoint)),
            ("aws_allow_http", "true".to_string()),
            ("aws_access_key_id", "testing".to_string()),
            ("aws_secret_access_key", "testing".to_string()),
            ("aws_region", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request (no body); the status line, or `None` when nothing answers.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_string)
}
