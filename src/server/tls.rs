//! TLS (`wss://` and `https://`) with rustls, driven from the event loop.
//!
//! rustls is sans-IO like the connection layer: it takes ciphertext that
//! the loop read from the socket (`read_tls`), hands back plaintext, takes
//! plaintext to send and gives ciphertext for the loop to write
//! (`write_tls`). Nothing here blocks: a short read or write is the normal
//! case, and whatever rustls cannot send yet makes the connection watch for
//! WRITABLE, exactly as the plain queue does.
//!
//! What a TLS connection may hold beyond a plain one is bounded: rustls
//! keeps at most 16 KiB of received plaintext and one record being received,
//! and its outgoing buffer is limited to [`TLS_BUFFER_LIMIT`]; everything
//! else waits in the connection's own outgoing queue, where the outgoing
//! bound and the slow-consumer policy count it.
//!
//! The handshake is part of the connection's opening: the handshake
//! deadline that bounds the HTTP request covers it, and a handshake that
//! fails (plain HTTP on the TLS port, garbage, a client that rejects the
//! certificate) ends that connection alone, with a line at debug level.

use super::connections::{Sock, interrupted, would_block};
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// What rustls may buffer of ciphertext to send for one connection; the
/// rest waits in the connection's queue, where the outgoing bound counts it.
pub const TLS_BUFFER_LIMIT: usize = 64 << 10;

/// Where the certificate chain and private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files, and makes the server's TLS settings:
    /// TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates. The error
    /// names the file and what is wrong with it.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let cert = self.cert.display();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|err| format!("--tls-cert {cert}: {}", pem_error(&err)))?
            .collect::<Result<_, _>>()
            .map_err(|err| format!("--tls-cert {cert}: {}", pem_error(&err)))?;
        if certs.is_empty() {
            return Err(format!("--tls-cert {cert}: no PEM certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|err| format!("--tls-key {}: {}", self.key.display(), pem_error(&err)))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS: {err}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|err| format!("--tls-cert and --tls-key: {err}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(err: &rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(err) => err.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// One connection's TLS state.
pub(super) struct Tls {
    conn: rustls::ServerConnection,
    /// Our `close_notify` has been queued.
    notified: bool,
}

impl Tls {
    pub fn new(config: &Arc<rustls::ServerConfig>) -> Result<Box<Tls>, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(Arc::clone(config))?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Box::new(Tls { conn, notified: false }))
    }

    /// Ciphertext waits to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Reads ciphertext from `stream` (one `recv`), and decrypts what it
    /// completes. `Ok(0)`: the peer closed TCP. A TLS error ends the
    /// connection: its alert is sent first, if the socket takes it.
    pub fn read_from(&mut self, stream: &TcpStream) -> io::Result<usize> {
        let n = loop {
            match self.conn.read_tls(&mut Sock::of(stream)) {
                Err(err) if interrupted(&err) => continue,
                other => break other?,
            }
        };
        if let Err(err) = self.conn.process_new_packets() {
            let _ = self.flush(stream);
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        Ok(n)
    }

    /// Takes decrypted input into `buf`: `Ok(None)` when there is none now,
    /// `Ok(Some(0))` when the peer has ended the TLS session.
    pub fn plaintext(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.conn.reader().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(err) if would_block(&err) => Ok(None),
            // TCP ended without a close_notify: an end all the same.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(err) => Err(err),
        }
    }

    /// Writes what ciphertext the socket takes.
    pub fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Sock::of(stream)) {
                Ok(_) => {}
                Err(err) if would_block(&err) => break,
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Queues our `close_notify` (once), before our side of TCP is shut.
    pub fn notify_close(&mut self) {
        if !std::mem::replace(&mut self.notified, true) {
            self.conn.send_close_notify();
        }
    }

    /// What the connection's queue writes into: plaintext for rustls to
    /// encrypt, refused with `WouldBlock` once its buffer is at its limit.
    pub fn writer(&mut self) -> TlsWriter<'_> {
        TlsWriter(&mut self.conn)
    }
}

/// See [`Tls::writer`].
pub(super) struct TlsWriter<'a>(&'a mut rustls::ServerConnection);

impl Write for TlsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.writer().write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
