//! The server as a person meets it: a real Chromium opens the page the server
//! serves and runs the blog's console snippet against it.

mod common;

use common::webdriver::Browser;
use common::*;
use serde_json::json;

#[test]
fn the_blogs_console_snippet_gets_its_message_back() {
    let Some(browser) = Browser::start("the_blogs_console_snippet_gets_its_message_back") else { return };
    let server = TestServer::start();
    let origin = format!("http://{}/", server.addr);
    browser.goto(&origin);

    // The page's own echo tester connects, and its text box round-trips.
    browser.wait_for(
        "the page to connect",
        "return document.getElementById('log').textContent.includes('connected')",
        PATIENCE,
    );
    browser.eval(
        "const input = document.getElementById('text'); input.value = arguments[0]; \
         document.getElementById('form').requestSubmit();",
        json!(["<b>hello</b> from the page"]),
    );
    let echoed = browser.wait_for(
        "the page's echo",
        "return [...document.querySelectorAll('#log .got')].map(e => e.textContent).join('\\n')",
        PATIENCE,
    );
    assert_eq!(echoed, json!("← <b>hello</b> from the page"), "echoed, and shown as text");
    assert_eq!(browser.eval("return document.querySelectorAll('#log b').length", json!([])), json!(0));

    // The blog's snippet, as typed into the console: connect, then send.
    let url = format!("ws://{}", server.addr);
    browser.eval(
        "window.got = []; window.ws = new WebSocket(arguments[0]); ws.binaryType = 'arraybuffer'; \
         ws.onmessage = e => { console.log(e.data); \
           window.got.push(e.data instanceof ArrayBuffer ? Array.from(new Uint8Array(e.data)) : e.data); };",
        json!([url]),
    );
    browser.wait_for("the snippet's socket to open", "return window.ws.readyState === WebSocket.OPEN", PATIENCE);
    browser.eval("ws.send('hi'); ws.send(new Uint8Array([1, 2, 255]));", json!([]));
    let got = browser.wait_for("the echo of 'hi'", "return window.got.length >= 2 && window.got", PATIENCE);
    assert_eq!(got, json!(["hi", [1, 2, 255]]));

    // A clean close from the browser side is answered.
    browser.eval(
        "window.closeInfo = null; ws.onclose = e => window.closeInfo = [e.code, e.wasClean]; ws.close(1000);",
        json!([]),
    );
    let closed = browser.wait_for("the close handshake", "return window.closeInfo", PATIENCE);
    assert_eq!(closed, json!([1000, true]));

    browser.screenshot(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots/echo-page.png")));
    let errors: Vec<_> = browser.console().into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
