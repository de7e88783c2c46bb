//! The chat as a person meets it: real Chromium tabs open the page the server
//! serves, talk to each other, and run the blog's console snippet.

mod common;

use common::webdriver::Browser;
use common::*;
use serde_json::json;
use std::path::Path;

/// Types `text` into the page's input box and presses Enter (submits the form).
fn type_line(browser: &Browser, text: &str) {
    browser.eval(
        "const input = document.getElementById('input'); input.value = arguments[0]; \
         document.getElementById('form').requestSubmit();",
        json!([text]),
    );
}

/// Waits until the page's message pane has a line containing `text`; returns that line's text.
fn wait_for_line(browser: &Browser, text: &str) -> String {
    let script = format!(
        "return [...document.querySelectorAll('#messages .line')].map(e => e.textContent).find(t => t.includes({})) || ''",
        json!(text)
    );
    browser.wait_for(&format!("a line with {text:?}"), &script, PATIENCE).as_str().unwrap_or_default().to_string()
}

fn text_of(browser: &Browser, id: &str) -> String {
    browser.eval("return document.getElementById(arguments[0]).textContent", json!([id])).as_str().unwrap().to_string()
}

/// The blog's console snippet, typed into the current tab's console: it
/// joins the lobby and hears itself.
fn blogs_snippet_joins_the_lobby(browser: &Browser, server: &TestServer) {
    // (`window.ws =` is what `ws =` means in the console; WebDriver scripts run in strict mode.)
    let url = format!("ws://{}", server.addr);
    browser.eval(
        "window.snippet = []; window.ws = new WebSocket(arguments[0]); \
         ws.onmessage = e => { console.log(e.data); window.snippet.push(JSON.parse(e.data)); };",
        json!([url]),
    );
    browser.wait_for("the snippet's socket to open", "return ws.readyState === WebSocket.OPEN", PATIENCE);
    browser.eval("ws.send('hi')", json!([]));
    let got = browser.wait_for(
        "the snippet's own message",
        "return window.snippet.find(e => e.type === 'message') && window.snippet",
        PATIENCE,
    );
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["room"], "lobby");
    let message = got.as_array().unwrap().iter().find(|e| e["type"] == "message").unwrap();
    assert_eq!((message["text"].as_str(), message["room"].as_str()), (Some("hi"), Some("lobby")));
}

#[test]
fn two_tabs_chat_and_the_blogs_snippet_joins_the_lobby() {
    let Some(browser) = Browser::start("two_tabs_chat_and_the_blogs_snippet_joins_the_lobby") else { return };
    let server = TestServer::start();
    let origin = format!("http://{}/", server.addr);
    let online = "return document.getElementById('status').className === 'online' && \
                  document.getElementById('nick').textContent.startsWith('guest-')";

    // The page loads its script, its style and its socket under its Content
    // Security Policy (anything it blocked would show: a page without style,
    // offline, or a violation event from here on).
    let watch_policy = "window.violations = []; document.addEventListener('securitypolicyviolation', \
                        e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI))";
    let styled = "return getComputedStyle(document.body).display === 'flex'";
    let tab_a = browser.window();
    browser.goto(&origin);
    browser.wait_for("tab A online", online, PATIENCE);
    browser.wait_for("tab A styled by /chat.css", styled, PATIENCE);
    browser.eval(watch_policy, json!([]));
    let nick_a = text_of(&browser, "nick");
    let tab_b = browser.new_tab();
    browser.goto(&origin);
    browser.wait_for("tab B online", online, PATIENCE);
    browser.eval(watch_policy, json!([]));
    let nick_b = text_of(&browser, "nick");
    assert_ne!(nick_a, nick_b);
    assert_eq!(text_of(&browser, "room"), "lobby");

    // A says something; B shows it with A's nick and a time.
    browser.switch_to(&tab_a);
    wait_for_line(&browser, &format!("{nick_b} joined lobby"));
    type_line(&browser, "hello from A");
    browser.switch_to(&tab_b);
    let line = wait_for_line(&browser, "hello from A");
    assert!(line.contains(&nick_a), "{line}");
    assert!(line.chars().take(5).collect::<String>().contains(':'), "a time first: {line}");
    let members = text_of(&browser, "members");
    assert!(members.contains(&nick_a) && members.contains(&nick_b), "{members}");

    // B takes a nick: both tabs see it, and B's header follows.
    type_line(&browser, "/nick bob");
    wait_for_line(&browser, &format!("{nick_b} is now known as bob"));
    assert_eq!(text_of(&browser, "nick"), "bob");
    browser.switch_to(&tab_a);
    wait_for_line(&browser, &format!("{nick_b} is now known as bob"));
    assert!(text_of(&browser, "members").contains("bob"));

    // Markup from a user is shown as text, never run or rendered.
    let evil = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"><b>bold</b>";
    type_line(&browser, evil);
    browser.switch_to(&tab_b);
    let line = wait_for_line(&browser, "<script>window.pwned = 1</script>");
    assert!(line.contains(evil), "{line}");
    let injected = browser.eval(
        "return [document.querySelectorAll('#messages script, #messages img, #messages b').length, window.pwned ?? null]",
        json!([]),
    );
    assert_eq!(injected, json!([0, null]));
    // And its text is isolated for bidirectional layout, so that right-to-left
    // or override characters in it cannot reorder the rest of the line.
    let isolated = browser.eval(
        "const t = [...document.querySelectorAll('#messages .line .text')].pop(); \
         return [t.dir, getComputedStyle(t).unicodeBidi]",
        json!([]),
    );
    assert_eq!(isolated, json!(["auto", "isolate"]));

    // /join from the box moves B; A sees B leave.
    type_line(&browser, "/join den");
    browser.wait_for("B in den", "return document.getElementById('room').textContent === 'den'", PATIENCE);
    browser.switch_to(&tab_a);
    wait_for_line(&browser, "bob left lobby");
    type_line(&browser, "/join den");
    browser.wait_for("A in den", "return document.getElementById('room').textContent === 'den'", PATIENCE);

    blogs_snippet_joins_the_lobby(&browser, &server);

    browser.switch_to(&tab_a);
    type_line(&browser, "hi bob, welcome to the den");
    browser.switch_to(&tab_b);
    wait_for_line(&browser, "welcome to the den");
    type_line(&browser, "/me waves from the den");
    wait_for_line(&browser, "waves from the den");
    let name =
        format!("/target/screenshots/chat-{}.png", std::env::var("RUST_CHAT_BROWSER").unwrap_or("chromium".into()));
    browser.screenshot(Path::new(&(env!("CARGO_MANIFEST_DIR").to_string() + &name)));

    for tab in [&tab_a, &tab_b] {
        browser.switch_to(tab);
        let errors = browser.console_errors();
        assert!(errors.is_empty(), "console errors: {errors:?}");
        let violations = browser.eval("return window.violations", json!([]));
        assert_eq!(violations, json!([]), "the page's policy blocked something it does");
    }
}

#[test]
fn the_page_over_https_chats_over_wss() {
    let Some(browser) = Browser::start("the_page_over_https_chats_over_wss") else { return };
    let cert = common::tls::TestCert::new();
    let server = TestServer::with_config(config(|c| c.server.tls = Some(cert.files())));
    let page = format!("https://{}/?nick=tess&room=secure", server.addr);
    browser.goto(&page);
    browser.wait_for("online over wss", "return document.getElementById('status').className === 'online'", PATIENCE);
    browser.wait_for("styled", "return getComputedStyle(document.body).display === 'flex'", PATIENCE);
    assert_eq!(browser.eval("return location.protocol", json!([])), json!("https:"));
    let (mut other, _) = {
        // A member over TLS from outside the browser.
        let mut client =
            common::tls::TlsClient::connect(server.addr, common::tls::client_config(&[&cert.der])).unwrap();
        assert!(client.upgrade("/chat?nick=ursula&room=secure").starts_with("HTTP/1.1 101 "));
        let welcome = client.read_frame();
        (client, welcome)
    };
    wait_for_line(&browser, "ursula joined secure");
    type_line(&browser, "hello over wss");
    let heard = loop {
        let event: serde_json::Value = serde_json::from_slice(&other.read_frame().payload).unwrap();
        if event["type"] == "message" {
            break event;
        }
    };
    assert_eq!((heard["nick"].as_str(), heard["text"].as_str()), (Some("tess"), Some("hello over wss")));
    other.send_frame(TEXT, b"and back");
    wait_for_line(&browser, "and back");
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// The texts of the messages the page shows, in order.
fn shown_texts(browser: &Browser) -> Vec<String> {
    let texts = browser
        .eval("return [...document.querySelectorAll('#messages .line .text')].map(e => e.textContent)", json!([]));
    texts.as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

#[test]
fn the_page_resumes_what_it_missed_across_a_reload_or_says_it_cannot() {
    let Some(browser) = Browser::start("the_page_resumes_what_it_missed_across_a_reload_or_says_it_cannot") else {
        return;
    };
    let server = TestServer::with_config(config(|c| {
        c.chat.history_len = 5;
        c.chat.rate_limit_per_sec = 0;
    }));
    let page = format!("http://{}/", server.addr);
    let online = "return document.getElementById('status').className === 'online'";
    browser.goto(&format!("{page}?nick=dave&room=den"));
    browser.wait_for("online", online, PATIENCE);
    let (mut eve, _) = ChatClient::join(server.addr, "room=den&nick=eve");
    for text in ["before 1", "before 2"] {
        eve.say(text);
        eve.until("message");
    }
    wait_for_line(&browser, "before 2");

    // The tab goes elsewhere (another page of the same site, so that the tab
    // keeps its session storage); two messages are said meanwhile.
    let elsewhere = format!("{page}elsewhere");
    browser.goto(&elsewhere);
    assert_eq!(eve.until("leave")["nick"], "dave");
    for text in ["away 1", "away 2"] {
        eve.say(text);
        eve.until("message");
    }
    // Back, by the bare address: the tab remembers its room, nick and place.
    browser.goto(&page);
    wait_for_line(&browser, "away 2");
    assert_eq!((text_of(&browser, "nick"), text_of(&browser, "room")), ("dave".into(), "den".into()));
    assert_eq!(shown_texts(&browser), ["before 1", "before 2", "away 1", "away 2"], "each once, in order");
    wait_for_line(&browser, "nothing was missed");
    let gaps = browser.eval("return document.querySelectorAll('#messages .gap').length", json!([]));
    assert_eq!(gaps, json!(0));

    // Away for longer than the history (5 messages): the page says so, and keeps what it had.
    browser.goto(&elsewhere);
    assert_eq!(eve.until("leave")["nick"], "dave");
    for i in 1..=7 {
        eve.say(&format!("long away {i}"));
        eve.until("message");
    }
    browser.goto(&page);
    wait_for_line(&browser, "long away 7");
    wait_for_line(&browser, "may be missing");
    let texts = shown_texts(&browser);
    assert_eq!(texts[..4], ["before 1", "before 2", "away 1", "away 2"], "{texts:?}");
    assert_eq!(texts[4..], ["long away 3", "long away 4", "long away 5", "long away 6", "long away 7"]);
    // (The page "elsewhere" is a 404, and so is its favicon: the browser says so.)
    let errors: Vec<String> = browser.console_errors().into_iter().filter(|e| !e.contains("status of 404")).collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[test]
fn the_page_says_it_is_offline_and_reconnects_when_the_server_restarts() {
    let Some(browser) = Browser::start("the_page_says_it_is_offline_and_reconnects_when_the_server_restarts") else {
        return;
    };
    let server = TestServer::start();
    let addr = server.addr;
    browser.goto(&format!("http://{addr}/?nick=carol&room=den"));
    browser.wait_for("online", "return document.getElementById('status').className === 'online'", PATIENCE);
    assert_eq!((text_of(&browser, "nick"), text_of(&browser, "room")), ("carol".into(), "den".into()));
    type_line(&browser, "before the restart");
    wait_for_line(&browser, "before the restart");

    drop(server);
    let status = browser.wait_for(
        "the page to notice",
        "const s = document.getElementById('status'); return s.className === 'offline' && s.textContent",
        PATIENCE,
    );
    assert!(status.as_str().unwrap().contains("reconnecting"), "{status}");
    wait_for_line(&browser, "Disconnected");

    // The server comes back on the same address: the page reconnects by itself,
    // as the same nick in the same room.
    let _server = TestServer::at(addr, rust_chat::Config::default());
    browser.wait_for("online again", "return document.getElementById('status').className === 'online'", PATIENCE * 3);
    assert_eq!((text_of(&browser, "nick"), text_of(&browser, "room")), ("carol".into(), "den".into()));
    // A new server is a new epoch: the page cannot know what it missed, and says so,
    // keeping what it showed.
    wait_for_line(&browser, "may be missing");
    assert_eq!(shown_texts(&browser), ["before the restart"]);
    type_line(&browser, "back again");
    wait_for_line(&browser, "back again");
}
