//! The layers' arrows never point up (docs/architecture.md): this test reads
//! the code of each folder and fails on any reference that would make one.
//!
//! It looks at every line of non-test code that is not a comment, for paths
//! into the crate's other layers (`crate::server`, `super::message`, ...),
//! for the I/O crates (`mio`, `socket2`, `std::net`), and for the clock
//! (`Instant::now`, `SystemTime`). Test code (`tests.rs`, and what follows
//! `#[cfg(test)]`) may build a clock or a server to drive the layer under
//! test, so it is not read.

use std::path::{Path, PathBuf};

/// Where each layer lives, and what its code must never name.
const RULES: &[(&str, &[&str])] = &[
    (
        "src/protocol",
        &[
            "crate::connection",
            "crate::server",
            "crate::app",
            "crate::chat",
            "crate::echo",
            "crate::config",
            "mio::",
            "socket2",
            "std::net",
            "Instant",
            "SystemTime",
        ],
    ),
    // Close codes and `ProtocolError` live in protocol/mod.rs, so the codec needs nothing above it.
    ("src/protocol/frame.rs", &["message::", "crate::protocol::message", "deflate::"]),
    (
        "src/connection",
        &[
            "crate::server",
            "crate::app",
            "crate::chat",
            "crate::echo",
            "mio::",
            "socket2",
            "std::net",
            "Instant::now",
            "SystemTime",
        ],
    ),
    (
        "src/app",
        &["crate::server", "crate::chat", "crate::echo", "mio::", "socket2", "std::net", "Instant::now", "SystemTime"],
    ),
    ("src/chat", &["crate::server", "crate::connection", "mio::", "socket2", "std::net", "Instant::now", "SystemTime"]),
    (
        "src/echo.rs",
        &[
            "crate::server",
            "crate::connection",
            "crate::chat",
            "mio::",
            "socket2",
            "std::net",
            "Instant::now",
            "SystemTime",
        ],
    ),
    // A broker carries messages of any type between event loops: it knows no connection, app or socket.
    (
        "src/broker",
        &[
            "crate::app",
            "crate::chat",
            "crate::server",
            "crate::connection",
            "crate::echo",
            "mio::",
            "std::net",
            "Instant::now",
            "SystemTime",
        ],
    ),
    // The server knows applications only through the `App` trait.
    ("src/server", &["crate::chat", "crate::echo"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(path: &Path, into: &mut Vec<PathBuf>) {
    if path.is_file() {
        into.push(path.to_path_buf());
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            into.push(path);
        }
    }
}

/// The lines of `file` that are code, not comments, up to its tests.
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("").to_string()))
        .filter(|(_, line)| !line.trim().is_empty())
        .collect()
}

/// Every (file, line, forbidden name) that breaks a rule.
fn violations() -> Vec<String> {
    let mut found = Vec::new();
    for (place, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&root().join(place), &mut files);
        assert!(!files.is_empty(), "{place} has no code: the rules are out of date");
        for file in files {
            for (number, line) in code_lines(&file) {
                for name in *forbidden {
                    if line.contains(name) {
                        let shown = file.strip_prefix(root()).unwrap().display();
                        found.push(format!("{shown}:{number}: names `{name}`: {}", line.trim()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_layer_reaches_up_or_sideways() {
    let found = violations();
    assert!(found.is_empty(), "arrows that must not exist (see docs/architecture.md):\n{}", found.join("\n"));
}

#[test]
fn the_reader_sees_the_arrows_that_do_exist() {
    // If the scan read nothing, the test above would pass for nothing: these
    // allowed arrows must be visible to it.
    let lines = |place: &str| {
        let mut files = Vec::new();
        rust_files(&root().join(place), &mut files);
        files.iter().flat_map(|f| code_lines(f)).map(|(_, line)| line).collect::<Vec<_>>()
    };
    assert!(lines("src/server").iter().any(|l| l.contains("crate::app")), "server -> app");
    assert!(lines("src/server").iter().any(|l| l.contains("mio::")), "server -> mio");
    assert!(lines("src/connection").iter().any(|l| l.contains("crate::protocol")), "connection -> protocol");
    assert!(lines("src/chat").iter().any(|l| l.contains("crate::app")), "chat -> app");
    // And a line that breaks a rule is caught: the server naming the chat.
    let bad = "use crate::chat::Chat;";
    assert!(RULES.iter().any(|(place, forbidden)| *place == "src/server" && forbidden.iter().any(|n| bad.contains(n))));
}
