// somnus serve: keep the page's live parts current. No build step, no dependency.
// The server sends an "overview" event with a new version number whenever what it
// shows changed; the table body is fetched again, with the page's own filters.
"use strict";

function refreshLive(version) {
  document.querySelectorAll("[data-live]").forEach(function (table) {
    var body = table.querySelector("tbody");
    if (body && body.dataset.version === String(version)) {
      return;
    }
    fetch(table.dataset.live + window.location.search, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var holder = document.createElement("tbody");
        table.replaceChild(holder, table.querySelector("tbody"));
        holder.outerHTML = html;
      })
      .catch(function () { /* the next event tries again */ });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  if (!document.querySelector("[data-live]")) {
    return;
  }
  var events = new EventSource("/events");
  events.addEventListener("overview", function (event) { refreshLive(event.data); });
});
