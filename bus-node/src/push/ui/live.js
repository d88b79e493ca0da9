// The live page: events from this node's SSE stream as they arrive. It reads the
// stream with fetch (EventSource hands named events only to listeners for names known
// in advance, and every event type is a name here) and parses it as the SSE
// specification says; after a disconnect it opens the stream again from the last id it
// showed (`Last-Event-ID`), so nothing is missed or shown twice. With `#key=<api key>`
// in the address (the fragment is never sent to a server) it sends that key.
"use strict";

const MAX_ROWS = 500;   // rows shown; the oldest go first
const MAX_HELD = 5000;  // events held while paused; past it, the page resumes from the stream
const $ = (id) => document.getElementById(id);

const state = {
  abort: null,
  lastId: "",        // the last event id shown (or held)
  node: "",
  shown: 0,
  held: [],
  paused: false,
  overflowed: false, // too much held while paused: read again from lastId on resume
  retryMs: 2000,
  retryTimer: null,
  generation: 0,     // each connect() has its own; an older reader stops
  types: "",         // the filter of the connection being made (shown once its hello came)
};

function key() {
  const m = location.hash.match(/(?:^#|&)key=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

function types() {
  return $("filter").value.split(",").map((t) => t.trim()).filter(Boolean);
}

function setStatus(kind, text) {
  const s = $("status");
  s.dataset.state = kind;
  s.textContent = text;
}

function showCounts() {
  const held = state.held.length;
  $("counts").textContent = `${state.shown} shown` + (held ? `, ${held} held while paused` : "");
}

function stop() {
  state.generation += 1; // the reader running stops, and does not retry
  clearTimeout(state.retryTimer);
  if (state.abort) state.abort.abort();
  state.abort = null;
}

function retry(generation, why, delayMs = state.retryMs) {
  if (generation !== state.generation) return;
  setStatus("reconnecting", `${why}; reconnecting`);
  state.retryTimer = setTimeout(connect, delayMs);
}

async function connect() {
  stop();
  const generation = state.generation;
  const abort = new AbortController();
  state.abort = abort;
  const params = new URLSearchParams();
  const t = types();
  state.types = t.join(",");
  delete $("status").dataset.types; // set again by this connection's hello
  if (t.length) params.set("types", state.types);
  const headers = { accept: "text/event-stream" };
  if (state.lastId) headers["last-event-id"] = state.lastId;
  const k = key();
  if (k) headers["x-api-key"] = k;
  let response;
  try {
    response = await fetch(`/v1/events/stream?${params}`, { headers, signal: abort.signal, cache: "no-store" });
  } catch (e) {
    return retry(generation, "disconnected");
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    const why = problem.detail || `the node answered ${response.status}`;
    if (generation !== state.generation) return;
    // A bad filter, a wrong key, a pattern the key may not read: asking again every few
    // seconds changes nothing (and counts as failed logins); the next apply tries again.
    if ([400, 401, 403].includes(response.status)) return setStatus("refused", `${why}; change the filter or the key and apply`);
    const after = Number(response.headers.get("retry-after"));
    return retry(generation, why, after > 0 ? after * 1000 : state.retryMs);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { name: "", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || generation !== state.generation) break;
      buffer += value;
      // Lines end at \r\n, \r or \n; keep a partial last line (and a lone \r) for later.
      const lines = buffer.split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (generation !== state.generation) break; // stopped by an event of this chunk
        if (line === "") {
          dispatch(event);
          event = { name: "", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: heartbeat, or why the node closed
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") event.name = v;
        else if (field === "data") event.data.push(v);
        else if (field === "id") event.id = v;
        else if (field === "retry" && /^\d+$/.test(v)) state.retryMs = Number(v);
      }
    }
  } catch (e) {
    // Aborted, or the connection broke.
  }
  retry(generation, "the stream ended");
}

function dispatch(e) {
  if (e.data.length === 0) return;
  const data = e.data.join("\n");
  if (e.name === "bus.push.hello") {
    const hello = JSON.parse(data);
    state.node = hello.node;
    $("status").dataset.types = state.types;
    setStatus(state.paused ? "paused" : "live", `${state.paused ? "paused" : "live"} on node ${hello.node}`);
    return;
  }
  if (e.name === "bus.push.gap") {
    const gap = JSON.parse(data);
    const why = gap.reason === "epoch" ? "the stream was made again" : "the stream no longer holds them";
    notice(`events from #${gap.requested} are gone (${why}); going on from #${gap.first_seq}`);
    return;
  }
  onEvent({ lastEventId: e.id || "", type: e.name || "message", data });
}

function onEvent(e) {
  // Overflowed while paused: the page reads again from the last event held, on resume.
  if (state.overflowed) return;
  if (!e.lastEventId || e.lastEventId === state.lastId) return;
  state.lastId = e.lastEventId;
  const item = { id: e.lastEventId, type: e.type, data: e.data, node: state.node };
  if (state.paused) {
    if (state.held.length < MAX_HELD) {
      state.held.push(item);
    } else if (!state.overflowed) {
      // Stop holding: on resume the page reads again from the last event it holds.
      state.overflowed = true;
      state.lastId = state.held[state.held.length - 1].id;
      stop();
    }
    showCounts();
    return;
  }
  show(item);
}

function show(item) {
  $("empty").hidden = true;
  const seq = item.id.slice(item.id.lastIndexOf(":") + 1);
  let event = {};
  try { event = JSON.parse(item.data); } catch (_) { event = { data: item.data }; }
  const li = document.createElement("li");
  li.dataset.seq = seq;
  li.dataset.type = item.type;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  for (const [cls, text] of [["seq", `#${seq}`], ["type", item.type], ["time", event.time || ""], ["node", item.node]]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    summary.append(span);
  }
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(event, null, 2);
  details.append(summary, pre);
  li.append(details);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  state.shown += 1;
  showCounts();
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  $("events").prepend(li);
}

function togglePause() {
  state.paused = !state.paused;
  const button = $("pause");
  button.setAttribute("aria-pressed", String(state.paused));
  button.textContent = state.paused ? "resume" : "pause";
  if (state.paused) {
    setStatus("paused", `paused on node ${state.node}`);
    return;
  }
  const held = state.held;
  state.held = [];
  held.forEach(show);
  setStatus("live", `live on node ${state.node}`);
  if (state.overflowed) {
    state.overflowed = false;
    connect();
  }
  showCounts();
}

document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    // A new filter starts from now: what the old one skipped is not replayed.
    state.lastId = "";
    connect();
  });
  $("pause").addEventListener("click", togglePause);
  showCounts();
  connect();
});
