// Everything lives in this function, so the page adds no globals: the
// blog's console snippet (`ws = new WebSocket(...)`) still works here.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const messages = $("messages"), input = $("input"), status = $("status"), sendButton = $("send");
  const toggle = $("panel-toggle"), sidebar = $("sidebar");
  const params = new URLSearchParams(location.search);
  let socket = null, nick = params.get("nick") || "", room = params.get("room") || "";
  let members = [], rooms = [], retry = 0, roomTimer = null;
  // Where this tab is in its room's messages: the room's epoch and the last
  // seq shown, and the messages shown (the last MAX_KEPT), kept in
  // sessionStorage so that a reconnect or a reload resumes with `since`
  // instead of losing what was said meanwhile.
  const STORE = "rust-chat", MAX_KEPT = 200;
  let epoch = "", seq = 0, shown = [], saveTimer = null;
  // Messages that arrived while the tab was hidden, counted in its title.
  let unread = 0;
  const PLACEHOLDER = input.placeholder;

  // Every piece of user text goes in through textContent: shown, never parsed as HTML.
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function scrolled(fn) {
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    fn();
    if (atBottom) messages.scrollTop = messages.scrollHeight;
  }
  function clock(ms) {
    const d = new Date(ms);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }
  function system(text, cls = "system") {
    scrolled(() => messages.appendChild(el("div", "line " + cls, text)));
  }
  // Saved at most every 100 ms while messages flow, and at once when the page goes.
  function save() {
    if (saveTimer === null) saveTimer = setTimeout(saveNow, 100);
  }
  function saveNow() {
    clearTimeout(saveTimer);
    saveTimer = null;
    try { sessionStorage.setItem(STORE, JSON.stringify({ room, nick, epoch, seq, shown })); } catch { /* full or off */ }
  }
  function restore() {
    let kept;
    try { kept = JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch { return; }
    if (!kept || typeof kept.room !== "string") return;
    // A room or nick in the address wins; the kept messages only go with their room.
    if (!nick) nick = kept.nick || "";
    if (!room) room = kept.room;
    if (room.toLowerCase() !== kept.room.toLowerCase()) return;
    epoch = kept.epoch || ""; seq = kept.seq || 0;
    shown = Array.isArray(kept.shown) ? kept.shown.slice(-MAX_KEPT) : [];
    shown.forEach(render);
  }
  // A message event from the room we are in: shown once, in seq order.
  function showMessage(ev) {
    if (ev.room === room && ev.seq <= seq) return;
    if (ev.room === room) seq = ev.seq;
    render(ev);
    if (document.hidden && ev.nick !== nick) { unread++; showTitle(); }
    shown.push(ev);
    if (shown.length > MAX_KEPT) shown.shift();
    save();
  }
  // http(s) URLs in a message: from the scheme to the next space, less the
  // punctuation that usually ends a sentence around a link. A `<` just
  // before one also ends it at the first `>`, for the `<https://…>` habit.
  const URL_START = /\bhttps?:\/\//gi, TRAILING = /[.,;:!?'"]+$/;
  function links(text) {
    const found = [];
    for (const match of text.matchAll(URL_START)) {
      const start = match.index;
      if (found.length && start < found[found.length - 1].end) continue;
      let end = start;
      while (end < text.length && !/\s/.test(text[end])) end++;
      let url = text.slice(start, end);
      if (text[start - 1] === "<" && url.includes(">")) url = url.slice(0, url.indexOf(">"));
      url = url.replace(TRAILING, "");
      // A closing bracket the URL did not open belongs to the sentence.
      const opens = (url.match(/\(/g) || []).length;
      if (url.endsWith(")") && (url.match(/\)/g) || []).length > opens) url = url.slice(0, -1).replace(TRAILING, "");
      if (isWebAddress(url)) found.push({ start, end: start + url.length, url });
    }
    return found;
  }
  function isWebAddress(url) {
    try {
      const parsed = new URL(url);
      return (parsed.protocol === "http:" || parsed.protocol === "https:") && parsed.hostname !== "";
    } catch { return false; }
  }
  // The message's text as text nodes, and its URLs as links whose href and
  // text are the URL as written: built node by node, never parsed as HTML.
  function messageText(text) {
    const span = el("span", "text");
    let at = 0;
    for (const { start, end, url } of links(text)) {
      span.append(text.slice(at, start));
      const a = el("a", "", url);
      a.href = url;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      span.append(a);
      at = end;
    }
    span.append(text.slice(at));
    return span;
  }
  function render(ev) {
    const line = el("div", "line" + (ev.action ? " action" : ""));
    line.dataset.seq = ev.seq;
    const text = messageText(ev.text);
    text.dir = "auto";
    line.append(el("span", "time", clock(ev.time)), el("span", "nick", ev.nick), text);
    scrolled(() => messages.appendChild(line));
  }
  function showMembers() {
    const list = $("members");
    list.replaceChildren(...members.map((m) => el("li", m === nick ? "me" : "", m)));
    showRooms();
  }
  // The room list comes from /rooms (on joining, then every 15 s); our own
  // room's count is kept current from the member list in between.
  function showRooms() {
    const list = rooms.some((r) => r.name === room) ? rooms : rooms.concat([{ name: room, members: 0 }]);
    $("rooms").replaceChildren(...list.map((r) => {
      if (r.name === room) r = { name: r.name, members: members.length };
      const label = r.name + " (" + r.members + ")";
      if (r.name === room) {
        const li = el("li", "current", label);
        li.setAttribute("aria-current", "true");
        return li;
      }
      const button = el("button", "", label);
      button.type = "button";
      button.addEventListener("click", () => { closePanel(); send("/join " + r.name); });
      const li = el("li");
      li.append(button);
      return li;
    }));
  }
  function showIdentity() {
    $("nick").textContent = nick;
    $("room").textContent = room;
    showTitle();
  }
  function showTitle() {
    document.title = (unread ? "(" + unread + ") " : "") + "rust-chat" + (room ? ": " + room : "");
  }
  // The badge, and the message box: while not connected it says so and
  // nothing can be sent (what is typed stays, to be sent once back).
  function setStatus(text, cls) {
    status.textContent = text;
    status.className = cls;
    const online = cls === "online";
    sendButton.disabled = !online;
    input.placeholder = online ? PLACEHOLDER : "Not connected: " + text;
  }
  function send(text) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(text);
  }

  const handlers = {
    welcome(ev) {
      const sameRoom = ev.room === room && ev.epoch === epoch;
      nick = ev.nick; room = ev.room; members = ev.members;
      if (ev.recovered === undefined) {
        // A first connection, or a /join: the room's recent messages.
        messages.replaceChildren(); shown = []; seq = 0;
      } else if (!ev.recovered) {
        // What we showed stays; the gap is said out loud.
        system("Some messages may be missing: the server no longer has everything said since you left.", "error gap");
        if (!sameRoom) seq = 0;
      }
      epoch = ev.epoch;
      ev.history.forEach(showMessage);
      seq = Math.max(seq, ev.seq);
      if (ev.recovered) system("Reconnected to " + room + " as " + nick + ": nothing was missed.");
      else system("You are in " + room + " as " + nick + ". Type /help for commands.");
      showIdentity(); showMembers(); send("/rooms"); save();
    },
    message: showMessage,
    join(ev) { members.push(ev.nick); showMembers(); system(ev.nick + " joined " + ev.room); },
    leave(ev) { members = members.filter((m) => m !== ev.nick); showMembers(); system(ev.nick + " left " + ev.room); },
    nick(ev) {
      members = members.map((m) => (m === ev.old ? ev.nick : m));
      // Kept, so that a reload comes back as the same person.
      if (ev.old === nick) { nick = ev.nick; showIdentity(); save(); }
      showMembers();
      system(ev.old + " is now known as " + ev.nick);
    },
    who(ev) { members = ev.members; showMembers(); system("In " + ev.room + ": " + ev.members.join(", ")); },
    rooms(ev) { rooms = ev.rooms; showRooms(); },
    help(ev) { ev.commands.forEach((c) => system(c.usage + " — " + c.description)); },
    error(ev) { system(ev.message, "error"); },
  };

  function connect() {
    const query = new URLSearchParams();
    if (room) query.set("room", room);
    if (nick) query.set("nick", nick);
    if (epoch) { query.set("since", seq); query.set("epoch", epoch); }
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/chat" + (query.size ? "?" + query : ""));
    socket.onopen = () => {
      retry = 0;
      setStatus("online", "online");
      clearInterval(roomTimer);
      roomTimer = setInterval(() => send("/rooms"), 15000);
    };
    socket.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      const handler = handlers[ev.type];
      if (handler) handler(ev);
    };
    socket.onclose = (e) => {
      clearInterval(roomTimer);
      // Back off 0.5 s, 1 s, 2 s … up to 15 s, with some jitter.
      const delay = Math.min(15000, 500 * 2 ** retry++) * (0.75 + Math.random() / 2);
      setStatus("offline — reconnecting in " + Math.round(delay / 1000) + " s", "offline");
      system("Disconnected" + (e.reason ? " (" + e.reason + ")" : "") + "; reconnecting…");
      setTimeout(connect, delay);
    };
  }

  // Hidden again only when shown: the count is of what came while away.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && unread) { unread = 0; showTitle(); }
  });

  // The sidebar as a panel (narrow screens, where the toggle is shown):
  // opening moves focus into it, Escape or a click on the messages closes it
  // and gives focus back to the toggle.
  function openPanel() {
    document.body.classList.add("panel-open");
    toggle.setAttribute("aria-expanded", "true");
    sidebar.focus();
  }
  function closePanel() {
    if (!document.body.classList.contains("panel-open")) return;
    const hadFocus = sidebar.contains(document.activeElement);
    document.body.classList.remove("panel-open");
    toggle.setAttribute("aria-expanded", "false");
    if (hadFocus) toggle.focus();
  }
  toggle.addEventListener("click", () => {
    if (document.body.classList.contains("panel-open")) closePanel(); else openPanel();
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closePanel(); });
  $("chat").addEventListener("click", closePanel);

  // The visual viewport leaves out an on-screen keyboard where the layout
  // viewport does not (Safari): the page is kept to its height, so the box
  // stays in sight. Not while pinch-zoomed, when it is smaller for another reason.
  if (window.visualViewport) {
    const fit = () => {
      const root = document.documentElement.style;
      if (visualViewport.scale > 1.01) root.removeProperty("--app-height");
      else root.setProperty("--app-height", visualViewport.height + "px");
    };
    visualViewport.addEventListener("resize", fit);
    fit();
  }

  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (text.trim() === "") return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      system("Not connected: the message was not sent.", "error");
      return;
    }
    socket.send(text);
    input.value = "";
  });

  // Leaving the page (or going into the back-forward cache) closes the
  // socket at once, so the room hears we left; coming back from that cache
  // resumes where we were.
  window.addEventListener("pagehide", () => {
    saveNow();
    if (!socket) return;
    socket.onclose = null;
    socket.close(1000, "page closed");
    clearInterval(roomTimer);
  });
  window.addEventListener("pageshow", (e) => { if (e.persisted) connect(); });

  setStatus(status.textContent, "");
  restore();
  connect();
})();
