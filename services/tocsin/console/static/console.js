// tocsin console: small, no build step. (1) Times: every <time data-local> is shown in
// the viewer's own time zone. (2) The incident list follows /incidents/events (server-sent
// events) and refetches its rows, as the signed-in user, when an incident changes. (3) An
// incident page reloads when that incident changes, unless the viewer is writing a note,
// keeping the confirmation of the action just taken.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      var opts = el.dataset.local === "time"
        ? { hour: "2-digit", minute: "2-digit" }
        : { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" };
      el.title = el.textContent;
      el.textContent = d.toLocaleString([], opts);
    });
  }

  function live(table) {
    if (!window.EventSource) return;
    var status = document.querySelector("[data-live-status]");
    var pending = null, inflight = false, again = false;
    function refresh() {
      if (inflight) { again = true; return; }
      inflight = true;
      fetch(table.dataset.live + window.location.search, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { window.location.reload(); return null; }
          return r.text();
        })
        .then(function (html) {
          if (html === null) return;
          var holder = document.createElement("table");
          holder.innerHTML = html;
          var body = holder.querySelector("tbody");
          if (body) { table.replaceChild(body, table.querySelector("tbody")); localTimes(body); }
        })
        .catch(function () { if (status) status.textContent = "Live updates interrupted; retrying."; })
        .finally(function () { inflight = false; if (again) { again = false; refresh(); } });
    }
    var source = new EventSource(table.dataset.events);
    source.addEventListener("incident", function () {
      clearTimeout(pending);
      pending = setTimeout(refresh, 100);
    });
    source.addEventListener("signed-out", function () { window.location.reload(); });
    var lost = false;
    source.onopen = function () {
      if (status) status.textContent = "Updates live.";
      table.dataset.connected = "1";
      if (lost) { lost = false; refresh(); }  // whatever changed while the feed was away
    };
    source.onerror = function () {
      lost = true;
      if (status) status.textContent = "Live updates interrupted; reconnecting.";
    };
  }

  var submitting = false;
  document.addEventListener("submit", function () { submitting = true; }, true);
  window.addEventListener("pageshow", function () { submitting = false; });

  var SHOWN = {triggered: 1, acknowledged: 1, resolved: 1, snoozed: 1, unsnoozed: 1,
    reassigned: 1};

  function watchIncident(marker) {
    if (!window.EventSource) return;
    var source = new EventSource(marker.dataset.events);
    source.addEventListener("incident", function (event) {
      var data = {};
      try { data = JSON.parse(event.data); } catch (e) { return; }
      if (data.id !== marker.dataset.watchIncident) return;
      // A change this page already shows (the action just taken here, whose event may
      // come after the page it led to loaded) does not reload it: its confirmation stays.
      // A timeline entry (escalated, a status update) keeps the version: it reloads.
      if (SHOWN[data.kind] && Number(data.version) <= Number(marker.dataset.version)) return;
      var note = document.getElementById("note");
      // A form being sent (an action just clicked) leads to the page as it is now: a
      // reload then would replace that page, and its confirmation, with this one's.
      var busy = submitting || (note && note.value.trim() !== "") ||
        (document.activeElement && document.activeElement.tagName === "SELECT");
      if (!busy) { source.close(); keepNotice(); window.location.reload(); }
    });
    marker.dataset.connected = "1";
  }

  // The confirmation of an action just taken ("Acknowledged #2") survives a reload for a
  // later change (a timeline entry appended a moment after): kept for this one page.
  var NOTICE = "tocsin.notice";
  function keepNotice() {
    var notice = document.querySelector("#main > p.notice[role=status]");
    if (!notice) return;
    try {
      sessionStorage.setItem(NOTICE, window.location.pathname + "\n" + notice.textContent);
    } catch (e) { /* storage off: the reloaded page shows the state, not the notice */ }
  }
  function restoreNotice() {
    var kept = null;
    try {
      kept = sessionStorage.getItem(NOTICE);
      sessionStorage.removeItem(NOTICE);
    } catch (e) { return; }
    if (!kept) return;
    var at = kept.indexOf("\n");
    var main = document.getElementById("main");
    if (kept.slice(0, at) !== window.location.pathname || !main) return;
    if (main.querySelector("#main > p.notice[role=status]")) return;
    var p = document.createElement("p");
    p.className = "notice";
    p.setAttribute("role", "status");
    p.textContent = kept.slice(at + 1);
    main.insertBefore(p, main.firstChild);
  }

  document.addEventListener("DOMContentLoaded", function () {
    restoreNotice();
    localTimes(document);
    document.querySelectorAll("table[data-live]").forEach(live);
    document.querySelectorAll("[data-watch-incident]").forEach(watchIncident);
  });
})();
