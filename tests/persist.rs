//! The binary on its own data directory (issue 20): what it acknowledged
//! survives a restart and a `kill -9`, a client resumes across the restart,
//! a full disk is refused with `unavailable`, a bad data dir is exit 2.
//! Real files in a temp dir, the real binary, raw WebSocket clients.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A fresh data directory for one test, removed when it ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let dir = std::env::temp_dir().join(format!("rust-chat-persist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `seq` of every message in a welcome's history, and their texts.
fn history(welcome: &Value) -> (Vec<u64>, Vec<String>) {
    let history = welcome["history"].as_array().expect("a history");
    let seqs = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let texts = history.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    (seqs, texts)
}

/// A random number in `0..n` (std's hasher keys come from the OS).
fn random_below(n: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8) % n
}

#[test]
fn rooms_seq_epoch_and_history_come_back_after_a_restart_and_a_client_resumes_across_it() {
    let dir = DataDir::new("restart");
    let args = ["--data-dir", dir.arg(), "--rate-limit", "0"];
    let mut server = Spawned::start(&args);
    let (mut a, welcome) = ChatClient::join(server.addr, "room=kept&nick=a");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        a.say(&format!("m{i}"));
        assert_eq!(a.expect("message")["seq"], i, "acknowledged with its number");
    }
    // And one in the lobby, which always exists.
    let (mut l, lobby) = ChatClient::join(server.addr, "");
    let lobby_epoch = lobby["epoch"].as_str().unwrap().to_string();
    l.say("in the lobby");
    assert_eq!(l.expect("message")["seq"], 1);
    drop((a, l));
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));

    let server = Spawned::start(&args);
    // A client that saw up to 3 resumes: 4 and 5, same epoch, recovered.
    let (mut b, welcome) = ChatClient::join(server.addr, &format!("room=kept&nick=b&since=3&epoch={epoch}"));
    assert_eq!(welcome["epoch"], epoch.as_str(), "{welcome}");
    assert_eq!(welcome["seq"], 5);
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(history(&welcome), (vec![4, 5], vec!["m4".into(), "m5".into()]));
    // A newcomer gets the whole history, and numbering goes on from it.
    let (mut c, welcome) = ChatClient::join(server.addr, "room=kept&nick=c");
    assert_eq!(history(&welcome).0, vec![1, 2, 3, 4, 5]);
    b.expect("join");
    c.say("after the restart");
    assert_eq!(c.expect("message")["seq"], 6);
    assert_eq!(b.expect("message")["seq"], 6);
    let (_, lobby) = ChatClient::join(server.addr, "");
    assert_eq!(lobby["epoch"], lobby_epoch.as_str());
    assert_eq!(history(&lobby), (vec![1], vec!["in the lobby".into()]));
    // With an epoch from before, the resume is refused as another count.
    let (_, other) = ChatClient::join(server.addr, "room=kept&since=3&epoch=0123456789abcdef");
    assert_eq!(other["recovered"], false, "{other}");
}

#[test]
fn a_kill_9_at_a_random_point_loses_no_acknowledged_message() {
    let dir = DataDir::new("kill");
    let args = ["--data-dir", dir.arg(), "--rate-limit", "0", "--history", "2000"];
    let mut server = Spawned::start(&args);
    let (mut a, _) = ChatClient::join(server.addr, "room=busy&nick=a");
    // Every message at once from a second handle on the socket; the acks are read here.
    let mut writer = a.raw.stream.try_clone().unwrap();
    let frames: Vec<u8> =
        (0..1000u32).flat_map(|i| client_frame(true, 0x1, format!("m{i}").as_bytes(), i.to_be_bytes())).collect();
    let sending = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&frames);
    });
    let kill_after = 1 + random_below(999);
    let mut acked = 0;
    while let Some(frame) = a.raw.try_read_frame() {
        let event: Value = serde_json::from_slice(&frame.payload).unwrap();
        if event["type"] != "message" {
            continue;
        }
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(seq, acked + 1, "acknowledgements in order");
        assert_eq!(event["text"], format!("m{}", seq - 1));
        acked = seq;
        if acked == kill_after {
            server.child.kill().unwrap();
        }
    }
    let _ = server.child.wait();
    let _ = sending.join();
    assert!(acked >= kill_after, "{acked} acknowledged, the kill came after {kill_after}");
    eprintln!("killed after {kill_after} acknowledgements; {acked} had reached the sender");

    let server = Spawned::start(&args);
    let (_, welcome) = ChatClient::join(server.addr, "room=busy");
    let (seqs, texts) = history(&welcome);
    let last = welcome["seq"].as_u64().unwrap();
    assert!(last >= acked, "the store has {last}, the sender saw {acked}");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "in order, contiguous, from the first");
    assert!(texts.iter().enumerate().all(|(i, text)| *text == format!("m{i}")), "each message as it was said");
}

#[test]
fn a_full_disk_is_refused_with_unavailable_and_the_server_goes_on() {
    let dir = DataDir::new("full");
    std::fs::create_dir_all(&dir.0).unwrap();
    let binary = env!("CARGO_BIN_EXE_rust-chat");
    // A file-size limit stands in for a full disk: past it writes fail
    // (EFBIG; the signal that would kill the process is ignored).
    let limit_kib = 1024;
    let start = || {
        let script = format!("trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"", limit_kib * 2);
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script, binary, "--bind", "127.0.0.1:0", "--data-dir", dir.arg(), "--rate-limit", "0"])
            .args(["--history", "100000", "--history-bytes", "64MiB", "--no-deflate"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr: std::net::SocketAddr =
            line.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap().parse().unwrap();
        (child, addr)
    };
    let (mut child, addr) = start();
    let (mut a, _) = ChatClient::join(addr, "room=big&nick=a");
    let (mut b, _) = ChatClient::join(addr, "room=big&nick=b");
    a.expect("join");
    let text = "x".repeat(4000);
    let (mut shown, mut refused) = (0u64, 0);
    // 1 MiB of file at most, 4 KB a message: it fills within a few hundred.
    for _ in 0..2000 {
        a.say(&text);
        let event = a.event();
        match event["type"].as_str() {
            Some("message") => {
                shown += 1;
                assert_eq!(event["seq"], shown, "numbers stay contiguous");
                assert_eq!(b.expect("message")["seq"], shown);
            }
            Some("error") => {
                assert_eq!(event["code"], "unavailable", "{event}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            _ => panic!("{event}"),
        }
    }
    assert!(refused == 3, "the disk never filled ({shown} stored)");
    assert!(shown > 0, "nothing fitted at all");
    // The server goes on: the connection is open, commands answer, and a
    // newcomer sees exactly what was shown.
    a.say("/who");
    assert_eq!(a.expect("who")["members"].as_array().unwrap().len(), 2);
    let (_, welcome) = ChatClient::join(addr, "room=big&nick=c");
    assert_eq!(welcome["seq"], shown);
    assert_eq!(history(&welcome).0, (1..=shown).collect::<Vec<_>>());
    let mut echo = RawClient::open(addr, "/echo");
    echo.send_text("still here");
    assert_eq!(echo.read_frame().payload, b"still here");
    // Nothing refused was seen by b (only c coming and going).
    b.raw.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Some(frame) = b.raw.try_read_frame() {
        let event: Value = serde_json::from_slice(&frame.payload).unwrap();
        assert!(event["type"] == "join" || event["type"] == "leave", "b saw {event}");
    }
    child.kill().unwrap();
    let _ = child.wait();

    // Started again (with the same limit), the store opens and holds what was shown.
    let (mut child, addr) = start();
    let (_, welcome) = ChatClient::join(addr, "room=big");
    assert_eq!(welcome["seq"], shown);
    assert_eq!(history(&welcome).0, (1..=shown).collect::<Vec<_>>());
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn a_data_dir_that_cannot_be_used_is_exit_2_with_a_clear_message() {
    let dir = DataDir::new("bad");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("chat.redb"), b"this is not a store, only some text that is long enough".repeat(100))
        .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", dir.arg()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chat.redb") && !stderr.contains("panicked"), "{stderr}");
    // A data dir that is a file.
    let file = dir.0.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    // Two servers on one data dir: the second is refused.
    let good = DataDir::new("taken");
    let _first = Spawned::start(&["--data-dir", good.arg()]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", good.arg()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn with_no_persist_nothing_is_written_and_a_restart_forgets() {
    let dir = DataDir::new("none");
    let args = ["--data-dir", dir.arg(), "--no-persist"];
    let server = Spawned::start(&args);
    let (mut a, _) = ChatClient::join(server.addr, "");
    a.say("gone after the restart");
    assert_eq!(a.expect("message")["seq"], 1);
    drop((a, server));
    assert!(!dir.0.exists(), "--no-persist made the data dir");
    let server = Spawned::start(&args);
    let (_, welcome) = ChatClient::join(server.addr, "");
    assert_eq!(welcome["seq"], 0);
}
