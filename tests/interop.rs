//! Interop: a WebSocket client nobody here wrote (Python's `websockets`),
//! with compression on, round-trips messages through the server.
//!
//! `.ci/run` installs it into `target/interop-venv`; elsewhere the test skips
//! loudly, except under CI, where a missing client fails it.

mod common;

use common::TestServer;
use common::tls::TestCert;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python, or `None` (outside CI) when it is not there.
fn python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python");
    if !python.exists() {
        assert!(std::env::var_os("CI").is_none(), "target/interop-venv is missing under CI (.ci/run makes it)");
        eprintln!(
            "\n*** SKIPPED interop test: python3 -m venv target/interop-venv && target/interop-venv/bin/pip install websockets ***\n"
        );
        return None;
    }
    Some(python)
}

/// Runs the Python client with `args`; its standard output.
fn run_client(python: &Path, args: &[String]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/websockets_client.py");
    let output = Command::new(python).arg(script).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[test]
fn pythons_websockets_library_negotiates_deflate_and_round_trips() {
    let Some(python) = python() else { return };
    let server = TestServer::start();
    let stdout = run_client(&python, &[format!("ws://{}", server.addr)]);
    assert!(stdout.contains("interop ok: permessage-deflate"), "{stdout}");
}

#[test]
fn pythons_websockets_library_does_the_same_over_wss() {
    let Some(python) = python() else { return };
    let cert = TestCert::new();
    let server = TestServer::with_config(common::config(|c| c.server.tls = Some(cert.files())));
    let stdout = run_client(&python, &[format!("wss://{}", server.addr), cert.cert.display().to_string()]);
    assert!(stdout.contains("interop ok: permessage-deflate"), "{stdout}");
    assert!(stdout.contains(" over TLSv1."), "{stdout}");
}
