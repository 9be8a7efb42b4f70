// Batch progress: while the batch is unfinished, ask the JSON API for its counts every two seconds
// and update the numbers and bars in place; once every image is done, load the batch page again so
// the results appear. No inline script (the CSP forbids it) and nothing from outside this server.
(function () {
  "use strict";
  showUploadReport();
  var section = document.querySelector("[data-poll]");
  if (!section) { return; }
  var url = section.getAttribute("data-poll");
  var doneUrl = section.getAttribute("data-done-url");
  var INTERVAL_MS = 2000;

  function setText(selector, value) {
    var el = document.querySelector(selector);
    if (el) { el.textContent = String(value); }
  }

  function show(batch) {
    Object.keys(batch.progress).forEach(function (stage) {
      setText('[data-progress="' + stage + '"]', batch.progress[stage]);
    });
    Object.keys(batch.counts).forEach(function (status) {
      setText('[data-status="' + status + '"]', batch.counts[status]);
    });
    setText("[data-done]", batch.done);
    document.querySelector('[data-bar="analysed"]').value = batch.done;
    document.querySelector('[data-bar="reviewed"]').value = batch.progress.reviewed;
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); }  // signed out: the page asks to sign in
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (batch) {
        show(batch);
        if (batch.finished) { window.location.replace(doneUrl); } else { window.setTimeout(poll, INTERVAL_MS); }
      })
      .catch(function () { window.setTimeout(poll, INTERVAL_MS * 3); });  // server busy or restarting: keep trying
  }

  window.setTimeout(poll, INTERVAL_MS);

  // The upload page (static/upload.js) leaves its summary and every file that did not go in here when
  // it opens this page; shown once.
  function showUploadReport() {
    var report = document.getElementById("upload-report");
    var key = report && "dermatriage.upload-report:" + report.getAttribute("data-batch");
    var saved = null;
    try {
      saved = key && JSON.parse(window.sessionStorage.getItem(key));
      if (saved) { window.sessionStorage.removeItem(key); }
    } catch (e) { saved = null; }
    if (!saved) { return; }
    report.querySelector("h2").textContent = saved.headline;
    var list = report.querySelector("ul");
    saved.problems.forEach(function (p) {
      var item = document.createElement("li");
      item.className = p.state;
      var name = document.createElement("strong");
      name.textContent = p.path;
      item.appendChild(name);
      item.appendChild(document.createTextNode(": " + p.state + (p.detail ? " — " + p.detail : "")));
      list.appendChild(item);
    });
    report.hidden = false;
  }
}());
