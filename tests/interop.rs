//! Interop: a WebSocket client nobody here wrote (Python's `websockets`),
//! with compression on, round-trips messages through the server.
//!
//! `.ci/run` installs it into `target/interop-venv`; elsewhere the test skips
//! loudly, except under CI, where a missing client fails it.

mod common;

use common::TestServer;
use std::path::Path;
use std::process::Command;

#[test]
fn pythons_websockets_library_negotiates_deflate_and_round_trips() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python");
    if !python.exists() {
        assert!(std::env::var_os("CI").is_none(), "target/interop-venv is missing under CI (.ci/run makes it)");
        eprintln!(
            "\n*** SKIPPED interop test: python3 -m venv target/interop-venv && target/interop-venv/bin/pip install websockets ***\n"
        );
        return;
    }
    let server = TestServer::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/websockets_client.py");
    let output = Command::new(python).arg(script).arg(format!("ws://{}", server.addr)).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("interop ok: permessage-deflate"), "{stdout}");
}
