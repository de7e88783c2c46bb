//! TLS for the tests: a self-signed certificate made on the spot (rcgen),
//! and a client that speaks HTTP and WebSocket over rustls.

use super::{Frame, PATIENCE, client_frame, upgrade_request};
use rust_chat::server::TlsFiles;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A certificate for `localhost` and `127.0.0.1` with its key, in PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    pub fn new() -> TestCert {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a certificate");
        let dir = std::env::temp_dir().join(format!("rust-chat-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        TestCert { cert, key, der: made.cert.der().clone(), cert_pem, key_pem }
    }

    pub fn files(&self) -> TlsFiles {
        TlsFiles { cert: self.cert.clone(), key: self.key.clone() }
    }

    /// Writes this certificate and key over `other`'s files.
    pub fn install_over(&self, other: &TestCert) {
        std::fs::write(&other.cert, &self.cert_pem).unwrap();
        std::fs::write(&other.key, &self.key_pem).unwrap();
    }
}

/// A client that trusts only `trusted`.
pub fn client_config(trusted: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// HTTP and WebSocket over TLS, written from the RFCs like `RawClient`.
pub struct TlsClient {
    pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the TLS handshake (an error if it fails).
    pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(PATIENCE))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { stream, buf: Vec::new() })
    }

    /// The certificate the server showed.
    pub fn server_cert(&self) -> CertificateDer<'static> {
        self.stream.conn.peer_certificates().expect("a certificate")[0].clone().into_owned()
    }

    /// The ALPN protocol agreed on.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// `GET path` as plain HTTP: the whole response, read to the end.
    pub fn get(&mut self, path: &str) -> String {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        while self.fill().map(|n| n > 0).unwrap_or(false) {}
        String::from_utf8(std::mem::take(&mut self.buf)).unwrap()
    }

    /// Upgrades to WebSocket at `path`; the response head.
    pub fn upgrade(&mut self, path: &str) -> String {
        self.send(&upgrade_request(path));
        self.upgrade_answer()
    }

    /// The head of the answer to an upgrade request already sent.
    pub fn upgrade_answer(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            assert!(self.fill().expect("the response head") > 0, "EOF before the response head");
        }
    }

    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send(&client_frame(true, opcode, payload, [1, 2, 3, 4]));
    }

    /// The next frame from the server.
    pub fn read_frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.parse() {
                return frame;
            }
            assert!(self.fill().expect("a frame") > 0, "EOF before a frame");
        }
    }

    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, start) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < start + len {
            return None;
        }
        let frame = Frame { fin: b[0] & 0x80 != 0, opcode: b[0] & 0x0F, payload: b[start..start + len].to_vec() };
        self.buf.drain(..start + len);
        Some(frame)
    }

    /// Reads until the server ends the connection: true if it did (TLS
    /// close or TCP EOF, or a reset), false on a timeout.
    pub fn wait_end(&mut self) -> bool {
        loop {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }
}
