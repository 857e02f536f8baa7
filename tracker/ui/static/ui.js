// tracker's pages: the live list kept current, and ages that tick.
//
// Every fact of a call is set as text (textContent), never parsed as HTML: a callback's tag and
// numbers are whatever the caller's side sent. The list is read from /api/live, which the
// server answers from one snapshot shared by every watcher.
"use strict";

(function () {
  function age(seconds) {
    if (!isFinite(seconds) || seconds < 0) {
      return "—";
    }
    seconds = Math.floor(seconds);
    var hours = Math.floor(seconds / 3600);
    var minutes = Math.floor((seconds % 3600) / 60);
    var rest = seconds % 60;
    var text = (hours ? hours + "h " : "") + (hours || minutes ? minutes + "m " : "") + rest + "s";
    return text;
  }

  function cell(text) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    return td;
  }

  function badge(text) {
    var td = document.createElement("td");
    var span = document.createElement("span");
    span.className = "badge badge-" + String(text).replace(/[^a-z_]/g, "");
    span.textContent = String(text);
    td.appendChild(span);
    return td;
  }

  function tickAges(table, serverNow, fetchedAt) {
    var elapsed = (Date.now() - fetchedAt) / 1000;
    table.querySelectorAll("td.age").forEach(function (td) {
      var start = Date.parse(td.dataset.start || "");
      td.textContent = isNaN(start) ? "—" : age((serverNow - start) / 1000 + elapsed);
    });
  }

  function watchLive(table) {
    var source = table.dataset.source;
    var pages = table.dataset.pages;
    var every = Math.max(1000, 1000 * parseFloat(table.dataset.refresh || "1"));
    var body = table.tBodies[0];
    var count = document.getElementById("live-count");
    var status = document.getElementById("live-status");
    var empty = document.getElementById("live-empty");
    var firstRow = body.rows[0];
    var serverNow = Date.parse(firstRow ? firstRow.cells[6].dataset.now : "") || Date.now();
    var fetchedAt = Date.now();

    function show(live) {
      var rows = document.createDocumentFragment();
      live.calls.forEach(function (call) {
        var tr = document.createElement("tr");
        tr.dataset.callId = call.call_id;
        var link = document.createElement("a");
        link.className = "call-id";
        link.href = pages + "/calls/" + encodeURIComponent(call.call_id);
        link.textContent = call.call_id;
        var first = document.createElement("td");
        first.appendChild(link);
        tr.appendChild(first);
        tr.appendChild(cell(call.account_id));
        tr.appendChild(cell(call.direction));
        tr.appendChild(cell(call.from_number));
        tr.appendChild(cell(call.to_number));
        tr.appendChild(badge(call.state));
        var ageCell = cell("");
        ageCell.className = "age";
        ageCell.dataset.start = call.start_time || "";
        tr.appendChild(ageCell);
        rows.appendChild(tr);
      });
      body.replaceChildren(rows);
      count.textContent = String(live.count);
      empty.hidden = live.calls.length > 0;
      serverNow = Date.parse(live.now);
      fetchedAt = Date.now();
      status.textContent = "as of " + live.now;
      tickAges(table, serverNow, fetchedAt);
    }

    function poll() {
      fetch(source, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("the server answered " + response.status);
          }
          return response.json();
        })
        .then(show)
        .catch(function (error) {
          status.textContent = "not updated: " + error.message;
        })
        .finally(function () {
          window.setTimeout(poll, every);
        });
    }

    tickAges(table, serverNow, fetchedAt);
    window.setInterval(function () {
      tickAges(table, serverNow, fetchedAt);
    }, 1000);
    window.setTimeout(poll, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) {
      watchLive(live);
    }
  });
})();
