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

// An apply's steps, as they start and end, one list item per object and step.
function showStep(step) {
  var list = document.getElementById("steps");
  var key = step.address + " " + step.what;
  var item = Array.prototype.find.call(list.children, function (li) { return li.dataset.key === key; });
  if (!item) {
    item = document.createElement("li");
    item.dataset.key = key;
    item.dataset.address = step.address;
    list.appendChild(item);
  }
  item.dataset.state = step.state;
  item.textContent = step.address + ": " + step.what + ": " + step.state +
    (step.seconds === null ? "" : " (" + step.seconds + " s)") + (step.message ? ": " + step.message : "");
}

// An object page's charts: drawn again by the server after each round of samples.
function refreshCharts(holder) {
  fetch(holder.dataset.samples, { credentials: "same-origin" })
    .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
    .then(function (html) { holder.innerHTML = html; })
    .catch(function () { /* the next round tries again */ });
}

document.addEventListener("DOMContentLoaded", function () {
  var steps = document.getElementById("steps");
  var charts = document.querySelector("[data-samples]");
  if (!document.querySelector("[data-live]") && !steps && !charts) {
    return;
  }
  var events = new EventSource("/events");
  events.addEventListener("overview", function (event) { refreshLive(event.data); });
  if (charts) {
    events.addEventListener("samples", function () { refreshCharts(charts); });
  }
  var activity = document.getElementById("activity");
  if (activity) {  // serve --watch: the loop's events, newest first, the last 50
    events.addEventListener("loop", function (event) {
      var said = JSON.parse(event.data);
      var item = document.createElement("li");
      item.dataset.kind = said.kind;
      if (said.address) { item.dataset.address = said.address; }
      item.textContent = new Date().toLocaleTimeString() + "  " + said.line;
      activity.insertBefore(item, activity.firstChild);
      while (activity.children.length > 50) { activity.removeChild(activity.lastChild); }
    });
  }
  if (steps) {
    var said = document.getElementById("said");
    events.addEventListener("step", function (event) { showStep(JSON.parse(event.data)); });
    events.addEventListener("applied", function (event) {
      var answer = JSON.parse(event.data);
      said.textContent = "apply " + answer.verdict + (answer.errors.length ? ": " + answer.errors.join("; ") : "");
    });
  }
});

// Forms that change something (a rollback) ask first, then post with the page's CSRF
// token in a header; what the server said goes to the page's status line.
document.addEventListener("DOMContentLoaded", function () {
  var csrf = document.querySelector('meta[name="csrf"]').content;
  var said = document.getElementById("said");
  document.querySelectorAll("form[data-post]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
        return;
      }
      if (said) { said.textContent = "working..."; }
      // Ticked boxes (consent to replace a VM's disk) go as query parameters.
      var ticked = Array.prototype.map.call(form.querySelectorAll("input[type=checkbox]:checked"),
        function (box) { return encodeURIComponent(box.name) + "=" + encodeURIComponent(box.value); });
      var url = form.getAttribute("action") + (ticked.length ? "?" + ticked.join("&") : "");
      fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } })
        .then(function (response) { return response.json(); })
        .then(function (answer) {
          if (said) { said.textContent = answer.message; }
          if (answer.ok && !form.hasAttribute("data-stay")) {
            window.setTimeout(function () { window.location.reload(); }, 1500);
          }
        })
        .catch(function (error) { if (said) { said.textContent = "failed: " + error; } });
    });
  });
});
