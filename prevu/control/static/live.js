// prevu's live dashboard: follows Server-Sent Events and updates the page in place.
// Without JavaScript the pages are complete; this only keeps them current.
"use strict";
(function () {
  function update(row, preview) {
    row.querySelectorAll("[data-field]").forEach(function (cell) {
      var name = cell.getAttribute("data-field");
      if (!(name in preview)) return;
      cell.textContent = preview[name];
      if (name === "status") cell.className = "status " + preview.status;
    });
  }
  var table = document.querySelector("[data-events]");
  if (table) {
    var events = new EventSource(table.getAttribute("data-events"));
    events.addEventListener("preview", function (event) {
      var preview = JSON.parse(event.data);
      var row = document.querySelector('tr[data-preview="' + CSS.escape(preview.id) + '"]');
      if (row) update(row, preview);
      else if (table.getAttribute("data-filter") === "all") window.location.reload();
    });
  }
  var facts = document.querySelector("table.facts[data-preview]");
  var log = document.getElementById("log");
  if (facts && log) {
    var stream = new EventSource(log.getAttribute("data-follow"));
    var append = function (pre) {
      return function (event) {
        var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.appendChild(document.createTextNode(event.data + "\n"));
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      };
    };
    stream.onmessage = append(log);
    var run = document.getElementById("run");
    if (run) stream.addEventListener("run", append(run));
    var status = new EventSource("/events?preview=" + encodeURIComponent(facts.getAttribute("data-preview")));
    status.addEventListener("preview", function (event) { update(facts, JSON.parse(event.data)); });
  }
})();
