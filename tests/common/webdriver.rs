//! A minimal W3C WebDriver client, spoken as JSON over plain HTTP/1.1 on a
//! `TcpStream`, for headless Chromium (through chromedriver) or Firefox
//! (through geckodriver).
//!
//! Browser tests need Debian's `chromium` and `chromium-driver`. `.ci/run`
//! installs them; on a machine without them the tests print a loud notice and
//! pass without running, except under CI (`CI` set), where a missing browser
//! fails the test. `RUST_CHAT_BROWSER=firefox` runs the same tests in Firefox
//! (`firefox-esr` and a `geckodriver` on the PATH or in `GECKODRIVER`); run
//! that inside a network namespace with only loopback, since Firefox has no
//! single switch for its background connections:
//! `unshare -n sh -c 'ip link set lo up && RUST_CHAT_BROWSER=firefox cargo test --offline --test browser'`.
//!
//! Both browsers are driven only through what works in both: the window's
//! size sets the viewport (`set_viewport`), minimizing it hides the page
//! (`document.hidden`, with `visibilitychange`), and `start_dark` asks for
//! `prefers-color-scheme: dark` (Chromium through CDP's
//! `Emulation.setEmulatedMedia`, Firefox through a preference at start).
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running chromedriver or geckodriver with one browser session, both ended on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: PathBuf,
    /// Firefox only: where the driver's output (with the page's console) goes.
    console_log: Option<PathBuf>,
}

fn find(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    path.exists().then_some(path)
}

/// A name no other test in any process will use.
fn unique_tag() -> String {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Waits for the driver to write `marker` followed by its port into `log`.
fn wait_for_port(log: &std::path::Path, marker: &str) -> SocketAddr {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find(marker) {
            let digits: String = text[at + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(port) = digits.parse::<u16>() {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                if TcpStream::connect(addr).is_ok() {
                    return addr;
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the WebDriver server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|p| p.exists())
}

impl Browser {
    /// Starts the browser the environment asks for (Chromium unless
    /// `RUST_CHAT_BROWSER=firefox`), or returns `None` (after a loud notice)
    /// when it is not installed, outside CI.
    pub fn start(test: &str) -> Option<Browser> {
        Browser::start_with(test, false)
    }

    /// As `start`, with pages that see `prefers-color-scheme: dark`. (In
    /// Chromium, for the first tab only: the emulation is per tab.)
    pub fn start_dark(test: &str) -> Option<Browser> {
        Browser::start_with(test, true)
    }

    fn start_with(test: &str, dark: bool) -> Option<Browser> {
        match std::env::var("RUST_CHAT_BROWSER").as_deref() {
            Ok("firefox") => Browser::start_firefox(test, dark),
            _ => {
                let browser = Browser::start_chromium(test)?;
                if dark {
                    browser.cdp(
                        "Emulation.setEmulatedMedia",
                        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
                    );
                }
                Some(browser)
            }
        }
    }

    /// Whether this is Firefox (else Chromium): only geckodriver's output is kept, for the console.
    pub fn is_firefox(&self) -> bool {
        self.console_log.is_some()
    }

    fn start_firefox(test: &str, dark: bool) -> Option<Browser> {
        let driver = std::env::var_os("GECKODRIVER").map(PathBuf::from).or_else(|| on_path("geckodriver"));
        let (Some(driver), Some(firefox)) = (driver, find("FIREFOX", "/usr/bin/firefox-esr")) else {
            panic!("{test}: RUST_CHAT_BROWSER=firefox, but firefox-esr or geckodriver is missing");
        };
        let tag = unique_tag();
        let console_log = std::env::temp_dir().join(format!("rust-chat-geckodriver-{tag}.log"));
        let log = std::fs::File::create(&console_log).unwrap();
        // Port 0: the driver picks a free port itself and says which (no race for it).
        let child = Command::new(driver)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start geckodriver");
        let addr = wait_for_port(&console_log, "Listening on 127.0.0.1:");
        let profile = std::env::temp_dir().join(format!("rust-chat-firefox-{tag}"));
        // Firefox's toolbars keep its window at least 500 px wide, too wide
        // for a phone's viewport; the test profile lets them shrink.
        std::fs::create_dir_all(profile.join("chrome")).unwrap();
        std::fs::write(profile.join("chrome/userChrome.css"), "* { min-width: 0 !important; }\n").unwrap();
        let mut browser =
            Browser { driver: child, addr, session: String::new(), profile, console_log: Some(console_log) };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "firefox",
            // The TLS tests' certificates are self-signed, made in the test.
            "acceptInsecureCerts": true,
            "moz:firefoxOptions": {
                "binary": firefox,
                "args": ["-headless", "-profile", browser.profile],
                "prefs": {
                    // The page's console goes to standard output, where the test reads it.
                    "devtools.console.stdout.content": true,
                    // The profile's userChrome.css is read.
                    "toolkit.legacyUserProfileCustomizations.stylesheets": true,
                    // What the system's dark setting would say (0 light, 1 dark).
                    "ui.systemUsesDarkTheme": i32::from(dark),
                },
            },
        }}});
        let reply = browser.request("POST", "/session", Some(caps));
        browser.session = reply["value"]["sessionId"].as_str().expect("a session id").to_string();
        browser.request("POST", &browser.session_path("/window/rect"), Some(json!({"width": 1000, "height": 700})));
        Some(browser)
    }

    fn start_chromium(test: &str) -> Option<Browser> {
        let (Some(driver), Some(chromium)) =
            (find("CHROMEDRIVER", "/usr/bin/chromedriver"), find("CHROMIUM", "/usr/bin/chromium"))
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: chromium/chromedriver missing under CI (.ci/run should install them)"
            );
            eprintln!("\n*** SKIPPED {test}: chromium and chromedriver are not installed ***");
            eprintln!("*** apt-get install chromium chromium-driver to run the browser tests ***\n");
            return None;
        };
        let tag = unique_tag();
        let driver_log = std::env::temp_dir().join(format!("rust-chat-chromedriver-{tag}.log"));
        let log = std::fs::File::create(&driver_log).unwrap();
        // Port 0: the driver picks a free port itself and says which (no race for it).
        let child = Command::new(driver)
            .arg("--port=0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let addr = wait_for_port(&driver_log, "started successfully on port ");
        let _ = std::fs::remove_file(&driver_log);
        let profile = std::env::temp_dir().join(format!("rust-chat-chromium-{tag}"));
        let mut browser = Browser { driver: child, addr, session: String::new(), profile, console_log: None };
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1000,700",
            &format!("--user-data-dir={}", browser.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The TLS tests' certificates are self-signed, made in the test.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let reply = browser.request("POST", "/session", Some(caps));
        browser.session = reply["value"]["sessionId"].as_str().expect("a session id").to_string();
        Some(browser)
    }

    /// One WebDriver command; panics with the driver's message on an error.
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.addr).expect("connect to chromedriver");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        // chromedriver may keep the connection open: read by Content-Length, not to EOF.
        let mut response = Vec::new();
        let mut chunk = [0u8; 65536];
        let (head, json) = loop {
            let n = stream.read(&mut chunk).expect("chromedriver response");
            assert!(n > 0, "chromedriver closed the connection early");
            response.extend_from_slice(&chunk[..n]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&response[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                break (head, String::from_utf8_lossy(&response[end + 4..end + 4 + length]).into_owned());
            }
        };
        let value: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
        assert!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {head}\n{json}");
        value
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.request("POST", &self.session_path("/url"), Some(json!({"url": url})));
    }

    /// The handle of the current window.
    pub fn window(&self) -> String {
        self.request("GET", &self.session_path("/window"), None)["value"].as_str().expect("a window handle").to_string()
    }

    /// Opens a new tab and switches to it; returns its handle.
    pub fn new_tab(&self) -> String {
        let reply = self.request("POST", &self.session_path("/window/new"), Some(json!({"type": "tab"})));
        let handle = reply["value"]["handle"].as_str().expect("a new window").to_string();
        self.switch_to(&handle);
        handle
    }

    /// Makes `handle` the window that commands act on.
    pub fn switch_to(&self, handle: &str) {
        self.request("POST", &self.session_path("/window"), Some(json!({"handle": handle})));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.request("POST", &self.session_path("/execute/sync"), Some(json!({"script": script, "args": args})))
            ["value"]
            .take()
    }

    /// Evaluates `script` until it returns something truthy, or panics after `within`.
    pub fn wait_for(&self, what: &str, script: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let value = self.eval(script, json!([]));
            let truthy = !matches!(&value, Value::Null | Value::Bool(false)) && value != json!("") && value != json!(0);
            if truthy {
                return value;
            }
            assert!(start.elapsed() < within, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A Chrome DevTools Protocol command through chromedriver, on the current tab (Chromium only).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.request("POST", &self.session_path("/goog/cdp/execute"), Some(json!({"cmd": cmd, "params": params})))
            ["value"]
            .take()
    }

    /// Sizes the window so that the page's viewport is `width` × `height`
    /// CSS pixels. The window's own frame differs by browser, so it is
    /// measured (the window's rect against the page's inner size, read
    /// together) and made up for; a window manager may apply a new size a
    /// moment late (after a restore, say), so this measures again until the
    /// viewport is right or a few seconds have passed.
    pub fn set_viewport(&self, width: i64, height: i64) {
        let rect = self.session_path("/window/rect");
        let inner = "return [window.innerWidth, window.innerHeight]";
        let start = Instant::now();
        let mut want = (width, height);
        loop {
            self.request("POST", &rect, Some(json!({"width": want.0, "height": want.1})));
            std::thread::sleep(Duration::from_millis(50));
            let got = self.eval(inner, json!([]));
            if got == json!([width, height]) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the viewport is {got}, not {width}x{height}");
            let outer = self.request("GET", &rect, None);
            let (outer_w, outer_h) = (outer["value"]["width"].as_i64(), outer["value"]["height"].as_i64());
            let (inner_w, inner_h) = (got[0].as_i64(), got[1].as_i64());
            if let (Some(ow), Some(oh), Some(iw), Some(ih)) = (outer_w, outer_h, inner_w, inner_h) {
                want = (width + ow - iw, height + oh - ih);
            }
        }
    }

    /// Minimizes the window: its page is hidden, as in a background tab.
    pub fn minimize(&self) {
        self.request("POST", &self.session_path("/window/minimize"), Some(json!({})));
    }

    /// Brings a minimized window back (at about the window size given) so
    /// that its page is shown: setting a window's rect restores it first
    /// (WebDriver, "Set Window Rect").
    pub fn restore(&self, width: i64, height: i64) {
        let rect = self.session_path("/window/rect");
        self.request("POST", &rect, Some(json!({"width": width, "height": height})));
        // Shown is what the callers need; the exact size may settle a moment
        // later (a restore is not instant in every window manager), and no
        // caller measures it.
        self.wait_for("the window restored", "return document.visibilityState === 'visible'", Duration::from_secs(10));
    }

    /// The WebDriver reference of the first element matching `css`.
    pub fn find(&self, css: &str) -> Value {
        let reply =
            self.request("POST", &self.session_path("/element"), Some(json!({"using": "css selector", "value": css})));
        reply["value"].clone()
    }

    fn element_id(&self, css: &str) -> String {
        let element = self.find(css);
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str);
        id.unwrap_or_else(|| panic!("no element id for {css}: {element}")).to_string()
    }

    /// Types `text` into the element matching `css` key by key, as a user would
    /// (`\u{E007}` is Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element_id(css);
        self.request("POST", &self.session_path(&format!("/element/{id}/value")), Some(json!({"text": text})));
    }

    /// Runs `script` (a function body whose last argument is a callback,
    /// after `args`) and returns the value it calls back with.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.request("POST", &self.session_path("/execute/async"), Some(json!({"script": script, "args": args})))
            ["value"]
            .take()
    }

    /// Clicks the element matching `css` as a user would (scrolled into view,
    /// at its centre; an element covered or hidden there is an error).
    pub fn click(&self, css: &str) {
        let id = self.element_id(css);
        self.request("POST", &self.session_path(&format!("/element/{id}/click")), Some(json!({})));
    }

    /// Presses and releases one key (a character, or a WebDriver key code
    /// such as `\u{E00C}` for Escape or `\u{E004}` for Tab) on the focused element.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
        ]}]});
        self.request("POST", &self.session_path("/actions"), Some(actions));
    }

    /// The page's console errors so far.
    pub fn console_errors(&self) -> Vec<String> {
        if let Some(log) = &self.console_log {
            // Firefox prints consoles as `console.error: ...` and uncaught
            // errors as `JavaScript error: URL, line N: ...`; the browser's own
            // (its update and settings services, offline here) name no page of ours.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return text
                .lines()
                .filter(|line| line.contains("console.error") || line.contains("JavaScript error"))
                .filter(|line| line.contains("127.0.0.1") || line.contains("FaviconLoader"))
                .map(str::to_string)
                .collect();
        }
        self.console().into_iter().filter(|(level, _)| level == "SEVERE").map(|(_, text)| text).collect()
    }

    /// The browser console's messages so far (level and text), Chromium only.
    pub fn console(&self) -> Vec<(String, String)> {
        let logs = self.request("POST", &self.session_path("/se/log"), Some(json!({"type": "browser"})));
        logs["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (e["level"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot of the page.
    pub fn screenshot(&self, path: &std::path::Path) {
        let value = self.request("GET", &self.session_path("/screenshot"), None);
        let b64 = value["value"].as_str().expect("screenshot data");
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = self.session_path("");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.request("DELETE", &path, None)));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        if let Some(log) = &self.console_log {
            let _ = std::fs::remove_file(log);
        }
    }
}
