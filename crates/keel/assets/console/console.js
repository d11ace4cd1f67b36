// keel admin console: the only script its pages load (the CSP forbids inline code).
// - The live-events page asks for a single-use ticket and follows the API's WebSocket,
//   resuming after the last event it showed when the connection drops.
// - The overview reloads itself every 30 seconds while the tab is visible.
"use strict";

(function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function followEvents(list) {
    var state = document.getElementById("stream-state");
    var filter = document.getElementById("filter");
    var last = null;
    var delay = 1000;
    var keep = 200;

    function say(text) { if (state) { state.textContent = text; } }

    function matches(type) {
      var prefix = filter ? filter.value.trim() : "";
      return prefix === "" || type.indexOf(prefix) === 0;
    }

    function show(event) {
      var item = document.createElement("li");
      item.dataset.type = event.type;
      var type = document.createElement("span");
      type.className = "type";
      type.textContent = event.type;
      var time = document.createElement("time");
      time.dateTime = event.occurred_at;
      time.textContent = new Date(event.occurred_at).toLocaleString() + " · #" + event.id;
      var data = document.createElement("pre");
      data.textContent = JSON.stringify(event.data, null, 2);
      item.append(type, time, data);
      item.hidden = !matches(event.type);
      list.prepend(item);
      while (list.children.length > keep) { list.removeChild(list.lastChild); }
    }

    if (filter) {
      filter.addEventListener("input", function () {
        Array.prototype.forEach.call(list.children, function (item) {
          item.hidden = !matches(item.dataset.type || "");
        });
      });
    }

    function retry() {
      say("Disconnected; reconnecting in " + Math.round(delay / 1000) + " s…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    }

    function connect() {
      fetch(list.dataset.stream, {
        method: "POST",
        headers: { "x-csrf-token": csrfToken() },
        credentials: "same-origin"
      }).then(function (response) {
        if (response.status === 401) {
          window.location.assign("/admin/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        if (!response.ok) { throw new Error("ticket: " + response.status); }
        return response.json();
      }).then(function (body) {
        if (!body) { return; }
        var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
        var url = scheme + "//" + window.location.host + "/events/ws?ticket=" +
          encodeURIComponent(body.ticket) + (last === null ? "" : "&after=" + last);
        var socket = new WebSocket(url);
        socket.addEventListener("open", function () {
          delay = 1000;
          say("Connected: new events appear at the top.");
        });
        socket.addEventListener("message", function (message) {
          var parsed;
          try { parsed = JSON.parse(message.data); } catch (e) { return; }
          if (parsed.type === "event" && parsed.event) {
            last = parsed.event.id;
            show(parsed.event);
          }
        });
        socket.addEventListener("close", retry);
      }).catch(retry);
    }

    connect();
  }

  function refreshEvery(seconds) {
    setInterval(function () {
      if (document.visibilityState === "visible") { window.location.reload(); }
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var events = document.getElementById("events");
    if (events && events.dataset.stream) { followEvents(events); }
    var refresh = document.querySelector("[data-refresh]");
    if (refresh) { refreshEvery(Number(refresh.dataset.refresh) || 30); }
  });
})();
