//! The chat as a person meets it: real Chromium (or Firefox) tabs open the
//! page the server serves, talk to each other, and run the blog's console
//! snippet; on a phone-sized viewport, with the keyboard alone, in light and
//! dark, checked by axe-core, with links in messages, and in a hidden tab.

mod common;

use common::webdriver::Browser;
use common::*;
use serde_json::{Value, json};
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
    // The box says so, and nothing can be sent.
    let composer = "return [document.getElementById('input').placeholder, document.getElementById('send').disabled]";
    let offline = browser.eval(composer, json!([]));
    assert!(offline[0].as_str().unwrap().starts_with("Not connected: offline"), "{offline}");
    assert_eq!(offline[1], json!(true));

    // The server comes back on the same address: the page reconnects by itself,
    // as the same nick in the same room.
    let _server = TestServer::at(addr, rust_chat::Config::default());
    browser.wait_for("online again", "return document.getElementById('status').className === 'online'", PATIENCE * 3);
    assert_eq!((text_of(&browser, "nick"), text_of(&browser, "room")), ("carol".into(), "den".into()));
    // A new server is a new epoch: the page cannot know what it missed, and says so,
    // keeping what it showed.
    wait_for_line(&browser, "may be missing");
    assert_eq!(shown_texts(&browser), ["before the restart"]);
    let online = browser.eval(composer, json!([]));
    assert_eq!(online, json!(["Message, or /help for commands", false]));
    type_line(&browser, "back again");
    wait_for_line(&browser, "back again");
}

const ONLINE: &str = "return document.getElementById('status').className === 'online'";
const PHONE: (i64, i64) = (390, 844);
const DESKTOP: (i64, i64) = (1000, 700);
const ENTER: &str = "\u{E007}";
const TAB: &str = "\u{E004}";
const ESCAPE: &str = "\u{E00C}";

/// `target/screenshots/NAME-BROWSER.png`.
fn screenshot(browser: &Browser, name: &str) {
    let which = if browser.is_firefox() { "firefox" } else { "chromium" };
    let path = format!("{}/target/screenshots/{name}-{which}.png", env!("CARGO_MANIFEST_DIR"));
    browser.screenshot(Path::new(&path));
}

/// The id (or else the text) of the focused element.
fn focused(browser: &Browser) -> String {
    let script = "const e = document.activeElement; return e ? (e.id || e.textContent) : ''";
    browser.eval(script, json!([])).as_str().unwrap_or_default().to_string()
}

fn panel_is_open(browser: &Browser) -> bool {
    let script = "return [getComputedStyle(document.getElementById('sidebar')).visibility, \
                  document.getElementById('panel-toggle').getAttribute('aria-expanded')]";
    match browser.eval(script, json!([])) {
        v if v == json!(["visible", "true"]) => true,
        v if v == json!(["hidden", "false"]) => false,
        v => panic!("the panel is half open: {v}"),
    }
}

#[test]
fn on_a_phone_the_messages_take_the_width_and_the_sidebar_is_a_panel() {
    let Some(browser) = Browser::start("on_a_phone_the_messages_take_the_width_and_the_sidebar_is_a_panel") else {
        return;
    };
    let server = TestServer::start();
    // Someone in the lobby, so that the room list has a room to join.
    let (_quinn, _) = ChatClient::join(server.addr, "room=lobby&nick=quinn");
    browser.set_viewport(PHONE.0, PHONE.1);
    browser.goto(&format!("http://{}/?nick=pia&room=den", server.addr));
    browser.wait_for("online", ONLINE, PATIENCE);
    browser.wait_for("the lobby in the room list", "return document.querySelector('#rooms button')", PATIENCE);

    // The messages take the width; the sidebar is closed.
    let widths = browser.eval(
        "return [document.getElementById('messages').getBoundingClientRect().width, window.innerWidth]",
        json!([]),
    );
    let (list, viewport) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(list >= 0.9 * viewport, "the message list is {list} px of {viewport}");
    assert!(!panel_is_open(&browser));
    // Everything to tap is at least 44 px each way (the room buttons too, in the closed panel).
    let small = browser.eval(
        "return [...document.querySelectorAll('button, input')].map(e => [e.id || e.textContent, e.getBoundingClientRect()]) \
         .filter(([_, r]) => r.width < 44 || r.height < 44).map(([name, r]) => name + ': ' + r.width + 'x' + r.height)",
        json!([]),
    );
    assert_eq!(small, json!([]), "tap targets smaller than 44 px");

    // The header's button opens the panel and puts focus in it; Tab reaches
    // the room list, Enter joins the room, and the panel closes behind it.
    browser.click("#panel-toggle");
    assert!(panel_is_open(&browser));
    assert_eq!(focused(&browser), "sidebar");
    browser.press(TAB);
    assert!(focused(&browser).starts_with("lobby"), "focus on {:?}", focused(&browser));
    browser.press(ENTER);
    browser.wait_for("in the lobby", "return document.getElementById('room').textContent === 'lobby'", PATIENCE);
    assert!(!panel_is_open(&browser));
    assert_eq!(focused(&browser), "panel-toggle");
    // Escape closes it too, and so does the button, pressed again.
    browser.click("#panel-toggle");
    assert!(panel_is_open(&browser));
    browser.press(ESCAPE);
    assert!(!panel_is_open(&browser));
    assert_eq!(focused(&browser), "panel-toggle");
    browser.click("#panel-toggle");
    browser.click("#panel-toggle");
    assert!(!panel_is_open(&browser));

    // A message typed and sent from the box, which sits inside the viewport.
    browser.click("#input");
    browser.type_into("#input", &format!("hello from a phone{ENTER}"));
    wait_for_line(&browser, "hello from a phone");
    let bottom = browser.eval(
        "return document.getElementById('input').getBoundingClientRect().bottom <= window.innerHeight",
        json!([]),
    );
    assert_eq!(bottom, json!(true));

    // On a desktop the sidebar is a column again, and the button is gone.
    browser.set_viewport(DESKTOP.0, DESKTOP.1);
    let desktop = browser.eval(
        "return [getComputedStyle(document.getElementById('sidebar')).visibility, \
                 getComputedStyle(document.getElementById('panel-toggle')).display]",
        json!([]),
    );
    assert_eq!(desktop, json!(["visible", "none"]));
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[test]
fn the_keyboard_alone_reaches_the_box_the_button_and_the_room_list_with_focus_shown() {
    let Some(browser) =
        Browser::start("the_keyboard_alone_reaches_the_box_the_button_and_the_room_list_with_focus_shown")
    else {
        return;
    };
    let server = TestServer::start();
    let (_quinn, _) = ChatClient::join(server.addr, "room=lobby&nick=quinn");
    browser.goto(&format!("http://{}/?nick=kim&room=den", server.addr));
    browser.wait_for("online", ONLINE, PATIENCE);
    browser.wait_for("the lobby in the room list", "return document.querySelector('#rooms button')", PATIENCE);
    // The box has focus on arrival; from there Tab goes to Send, then to
    // the rooms to join; Shift is not needed to see where focus is.
    browser.wait_for("focus in the box", "return document.activeElement.id === 'input'", PATIENCE);
    let outline = "const s = getComputedStyle(document.activeElement); \
                   return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2";
    browser.press(TAB);
    assert_eq!(focused(&browser), "send");
    assert_eq!(browser.eval(outline, json!([])), json!(true), "no visible focus on Send");
    browser.press(TAB);
    assert!(focused(&browser).starts_with("lobby"), "focus on {:?}", focused(&browser));
    assert_eq!(browser.eval(outline, json!([])), json!(true), "no visible focus on the room");
    browser.press(ENTER);
    browser.wait_for("in the lobby", "return document.getElementById('room').textContent === 'lobby'", PATIENCE);
    // Every control has a name a screen reader can say, and the list is a polite live region.
    let unnamed = browser.eval(
        "return [...document.querySelectorAll('button, input, [role=log]')] \
         .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()) \
         .map(e => e.outerHTML)",
        json!([]),
    );
    assert_eq!(unnamed, json!([]));
    let live = browser
        .eval("const m = document.getElementById('messages'); return [m.getAttribute('aria-live'), m.role]", json!([]));
    assert_eq!(live, json!(["polite", "log"]));
}

/// The axe-core script that `.ci/run` installs (`npm install --prefix target/axe`).
fn axe_source(test: &str) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/axe/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "{test}: {} missing under CI ({e})", path.display());
            eprintln!("\n*** SKIPPED {test}: {} is missing ({e}) ***", path.display());
            eprintln!(
                "*** install it as .ci/run does: npm install --prefix target/axe axe-core@VERSION --no-save ***\n"
            );
            None
        }
    }
}

/// axe-core's violations of the WCAG 2 A and AA rules on the page as it
/// is, each as its rule and the elements at fault.
fn axe_violations(browser: &Browser, axe: &str) -> Vec<String> {
    // The script arrives as a WebDriver script, not from the page, so the
    // page's policy does not apply to it and nothing is fetched.
    if browser.eval("return typeof window.axe", json!([])) != json!("object") {
        browser.eval(&format!("{axe}\n;window.axe = axe;"), json!([]));
    }
    let result = browser.eval_async(
        "const done = arguments[arguments.length - 1]; \
         axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}}).then(r => done({ \
           passes: r.passes.map(p => p.id), \
           violations: r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ') + ' (' + n.failureSummary + ')').join('; ')), \
         }), e => done({error: String(e)}));",
        json!([]),
    );
    assert!(result["error"].is_null(), "axe failed: {}", result["error"]);
    // The rules that matter most here did run (and passed).
    let passes = result["passes"].as_array().unwrap();
    for rule in ["color-contrast", "button-name", "label", "aria-allowed-attr"] {
        assert!(passes.contains(&json!(rule)), "axe did not pass {rule}: {result}");
    }
    result["violations"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn axe_finds_no_wcag_a_or_aa_violations_in_light_or_dark_on_a_phone_or_a_desktop() {
    let test = "axe_finds_no_wcag_a_or_aa_violations_in_light_or_dark_on_a_phone_or_a_desktop";
    let Some(axe) = axe_source(test) else { return };
    for dark in [false, true] {
        let Some(browser) = (if dark { Browser::start_dark(test) } else { Browser::start(test) }) else { return };
        let scheme = if dark { "dark" } else { "light" };
        assert_eq!(browser.eval("return matchMedia('(prefers-color-scheme: dark)').matches", json!([])), json!(dark));
        let server = TestServer::start();
        let (_quinn, _) = ChatClient::join(server.addr, "room=lobby&nick=quinn");
        let (mut rosa, _) = ChatClient::join(server.addr, "room=den&nick=rosa");
        browser.goto(&format!("http://{}/?nick=sam&room=den", server.addr));
        browser.wait_for("online", ONLINE, PATIENCE);
        // The page with every kind of line in it: messages, a link, an
        // action, system lines and an error.
        rosa.say("Morning! The notes are at https://example.com/notes?week=12 if you missed them.");
        rosa.say("/me pours coffee");
        type_line(&browser, "thanks, reading them now");
        type_line(&browser, "/nosuchcommand");
        wait_for_line(&browser, "thanks, reading them now");
        wait_for_line(&browser, "pours coffee");
        browser.wait_for("an error line", "return document.querySelector('#messages .error')", PATIENCE);
        browser.wait_for("the lobby in the room list", "return document.querySelector('#rooms button')", PATIENCE);
        // (Focus out of the box, so that the pictures show no caret.)
        browser.eval("document.activeElement.blur()", json!([]));

        browser.set_viewport(DESKTOP.0, DESKTOP.1);
        let violations = axe_violations(&browser, &axe);
        assert!(violations.is_empty(), "desktop, {scheme}: {violations:#?}");
        screenshot(&browser, &format!("desktop-{scheme}"));

        browser.set_viewport(PHONE.0, PHONE.1);
        let violations = axe_violations(&browser, &axe);
        assert!(violations.is_empty(), "phone, {scheme}: {violations:#?}");
        screenshot(&browser, &format!("phone-{scheme}"));
        browser.click("#panel-toggle");
        assert!(panel_is_open(&browser));
        let violations = axe_violations(&browser, &axe);
        assert!(violations.is_empty(), "phone with the panel open, {scheme}: {violations:#?}");
        screenshot(&browser, &format!("phone-panel-{scheme}"));
    }
}

/// The line with `text` in it: its text, and each link's href as written, href as
/// the browser reads it, text, rel and target; and the tags of all the elements in its text.
fn links_in_line(browser: &Browser, text: &str) -> Value {
    wait_for_line(browser, text);
    browser.eval(
        "const line = [...document.querySelectorAll('#messages .line')].find(e => e.textContent.includes(arguments[0])); \
         const body = line.querySelector('.text'); \
         return {text: body.textContent, \
                 links: [...body.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.href, a.textContent, a.rel, a.target]), \
                 tags: [...body.querySelectorAll('*')].map(e => e.tagName.toLowerCase())}",
        json!([text]),
    )
}

#[test]
fn web_addresses_in_messages_become_links_and_nothing_else_does() {
    let Some(browser) = Browser::start("web_addresses_in_messages_become_links_and_nothing_else_does") else { return };
    let server = TestServer::start();
    browser.goto(&format!("http://{}/?nick=lee&room=den", server.addr));
    browser.wait_for("online", ONLINE, PATIENCE);
    let rel = "noopener noreferrer";

    type_line(&browser, "look: https://example.com/a?b=<c>");
    let got = links_in_line(&browser, "look: ");
    assert_eq!(got["text"], "look: https://example.com/a?b=<c>");
    let url = "https://example.com/a?b=<c>";
    assert_eq!(got["links"], json!([[url, "https://example.com/a?b=%3Cc%3E", url, rel, "_blank"]]));
    assert_eq!(got["tags"], json!(["a"]));

    type_line(&browser, "javascript:alert(1)");
    let got = links_in_line(&browser, "javascript:alert(1)");
    assert_eq!((got["text"].as_str(), &got["tags"]), (Some("javascript:alert(1)"), &json!([])));

    // The punctuation of the sentence around a link stays outside it.
    type_line(&browser, "(the guide is at HTTP://example.org/guide_(v2).) and <https://example.net/x>, ok?");
    let got = links_in_line(&browser, "the guide is at");
    assert_eq!(got["text"], "(the guide is at HTTP://example.org/guide_(v2).) and <https://example.net/x>, ok?");
    let links: Vec<_> = got["links"].as_array().unwrap().iter().map(|l| l[0].clone()).collect();
    assert_eq!(links, [json!("HTTP://example.org/guide_(v2)"), json!("https://example.net/x")]);

    // Markup stays text; only its address is a link, and other schemes, or a
    // scheme with no host, are not.
    let evil = "<a href=\"https://evil.example/\" onclick=\"alert(1)\">x</a> ftp://example.com/f http:// https://[nope";
    type_line(&browser, evil);
    let got = links_in_line(&browser, "evil.example");
    assert_eq!(got["text"], evil);
    let links: Vec<_> = got["links"].as_array().unwrap().iter().map(|l| l[0].clone()).collect();
    assert_eq!(links, [json!("https://evil.example/")]);
    assert_eq!(got["tags"], json!(["a"]));
    let clicks = browser.eval("return document.querySelectorAll('#messages [onclick]').length", json!([]));
    assert_eq!(clicks, json!(0));
}

#[test]
fn a_hidden_tab_counts_unread_messages_in_its_title_until_it_is_shown() {
    let Some(browser) = Browser::start("a_hidden_tab_counts_unread_messages_in_its_title_until_it_is_shown") else {
        return;
    };
    let server = TestServer::start();
    browser.set_viewport(DESKTOP.0, DESKTOP.1);
    browser.goto(&format!("http://{}/?nick=max&room=den", server.addr));
    browser.wait_for("online", ONLINE, PATIENCE);
    let (mut nia, _) = ChatClient::join(server.addr, "room=den&nick=nia");
    wait_for_line(&browser, "nia joined den");
    nia.say("seen at once");
    wait_for_line(&browser, "seen at once");
    let title = "return document.title";
    assert_eq!(browser.eval(title, json!([])), json!("rust-chat: den"));

    // Minimized, the page is hidden as a background tab is (the browser says so, not the test).
    browser.minimize();
    browser.wait_for("the page hidden", "return document.visibilityState === 'hidden'", PATIENCE);
    for text in ["one", "two", "three"] {
        nia.say(text);
        nia.until("message");
    }
    wait_for_line(&browser, "three");
    browser.wait_for("(3) in the title", "return document.title === '(3) rust-chat: den'", PATIENCE);

    browser.restore(DESKTOP.0, DESKTOP.1);
    browser.wait_for("the page shown", "return document.visibilityState === 'visible'", PATIENCE);
    browser.wait_for("the count cleared", "return document.title === 'rust-chat: den'", PATIENCE);
    // Shown, new messages are read as they come.
    nia.say("four");
    wait_for_line(&browser, "four");
    assert_eq!(browser.eval(title, json!([])), json!("rust-chat: den"));
}

#[test]
fn two_nodes_through_one_redis_are_one_chat_a_tab_on_each() {
    let Some(browser) = Browser::start("two_nodes_through_one_redis_are_one_chat_a_tab_on_each") else { return };
    let Some(redis) = common::redis::RedisServer::start(None) else { return };
    let nodes = [Spawned::start(&["--redis", &redis.url()]), Spawned::start(&["--redis", &redis.url()])];
    let tab_a = browser.window();
    browser.goto(&format!("http://{}/?nick=max&room=den", nodes[0].addr));
    browser.wait_for("tab A online", ONLINE, PATIENCE);
    let tab_b = browser.new_tab();
    browser.goto(&format!("http://{}/?nick=nia&room=den", nodes[1].addr));
    browser.wait_for("tab B online", ONLINE, PATIENCE);
    assert!(text_of(&browser, "members").contains("max"), "B's welcome lists A's member");
    browser.switch_to(&tab_a);
    wait_for_line(&browser, "nia joined den");
    type_line(&browser, "hello from node A");
    browser.switch_to(&tab_b);
    wait_for_line(&browser, "hello from node A");
    type_line(&browser, "and back from node B");
    browser.switch_to(&tab_a);
    wait_for_line(&browser, "and back from node B");
    // One order: both tabs show the two messages the same way round.
    let order =
        |browser: &Browser| shown_texts(browser).into_iter().filter(|t| t.contains("from node")).collect::<Vec<_>>();
    let a = order(&browser);
    browser.switch_to(&tab_b);
    assert_eq!(order(&browser), a);
    assert_eq!(a.len(), 2, "{a:?}");
}
