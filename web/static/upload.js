// Bulk upload on the portal's first page.
//
// Choose files or a folder, or drop folders and files anywhere on the page. Folders are walked to
// the bottom; hidden files and Thumbs.db / desktop.ini are left out, and files that are not JPEG,
// PNG or WEBP are listed as skipped and never sent. Each photograph keeps its path inside the
// dropped folder as its name. The photographs go up PARALLEL requests at a time under one overall
// progress bar (of files answered, not bytes sent: a file is done when the server has said what
// became of it), each with its own state; a request that fails is tried again after a growing pause,
// once the server has said which of its files arrived anyway. Adding to a batch that already holds
// part of the folder (a tab closed half-way, a lost connection) sends only what the batch lacks:
// the server is asked by SHA-256 where the browser can compute one (crypto.subtle exists only on
// https:// and localhost pages), else by name.
//
// A manifest.csv at the top of a folder (or, ticked, the folder convention <patient>/<lesion>/) says
// whose lesion each photograph shows. The server checks it before a batch is made or a photograph is
// sent (the same rules as for every uploader); if anything is wrong, every problem is listed and
// nothing is uploaded. Each request then carries its files' fields as its `manifest` part.
//
// No inline script (the CSP forbids it) and nothing from outside this server.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form || !window.FormData || !window.Promise || !window.fetch) { return; }  // the plain form still works

  var PARALLEL = 3;  // a few at a time: one slow request does not hold up the rest, nor does one upload the server
  var ATTEMPTS = 5;
  var REMEMBER = "dermatriage.folder-batch:";  // localStorage: folder name -> batch it went into
  var REPORT = "dermatriage.upload-report:";  // sessionStorage: this upload's problems, for the batch page
  var TRANSIENT = [0, 429, 500, 502, 503, 504];
  var SYSTEM_FILES = ["thumbs.db", "desktop.ini"];
  var LABELS = {already: "already in the batch"};  // states are shown by their names, but for this one
  var MANIFEST = "manifest.csv";
  var LAYOUT = "patient/lesion";
  var extensions = form.getAttribute("data-extensions").split(",");
  var maxFileBytes = Number(form.getAttribute("data-max-file-bytes"));
  var filesPerRequest = Math.min(10, Number(form.getAttribute("data-max-files")));
  var bytesPerRequest = Math.min(16 * 1024 * 1024, Number(form.getAttribute("data-max-request-bytes")) - 64 * 1024);
  var csrf = form.querySelector("input[name=csrf_token]").value;
  var batchSelect = document.getElementById("batch");
  var view = {
    chosen: document.getElementById("chosen"), section: document.getElementById("bulk"),
    summary: document.getElementById("bulk-summary"), bar: document.getElementById("bulk-progress"),
    percent: document.getElementById("bulk-percent"), status: document.getElementById("bulk-status"),
    rows: document.getElementById("bulk-files"), dropzone: document.getElementById("dropzone"),
    button: form.querySelector("button[type=submit]"), layout: document.getElementById("layout"),
    problems: document.getElementById("manifest-problems")
  };
  var files = [];  // {file, path, size, state, detail, row} for everything chosen
  var manifests = {};  // top folder -> its manifest.csv (a File), which is read, never sent as a photograph
  var run = null;  // the upload under way or last finished: {batchId, names (image id -> path), stopped, done}

  // ------------------------------------------------------------------ choosing

  function ignored(path) {
    var parts = path.split("/");
    return parts.some(function (p) { return p.charAt(0) === "."; }) ||
      SYSTEM_FILES.indexOf(parts[parts.length - 1].toLowerCase()) >= 0;
  }

  function isPhoto(path) {
    var dot = path.lastIndexOf(".");
    return dot > path.lastIndexOf("/") && extensions.indexOf(path.slice(dot).toLowerCase()) >= 0;
  }

  function choose(picked) {
    if (run && !run.done) { return; }  // one upload at a time
    run = null;
    showProblems([]);
    manifests = {};
    picked = picked.filter(function (p) {
      var parts = p.path.split("/");
      if (parts.length === 2 && parts[1] === MANIFEST) { manifests[parts[0]] = p.file; return false; }
      return true;
    });
    files = picked.filter(function (p) { return !ignored(p.path); })
      .sort(function (a, b) { return a.path < b.path ? -1 : a.path > b.path ? 1 : 0; })
      .map(function (p) {
        var photo = isPhoto(p.path);
        return {file: p.file, path: p.path, size: p.file.size, photo: photo,
                state: photo ? "waiting" : "skipped", detail: photo ? "" : "not a JPEG, PNG or WEBP file; not sent"};
      });
    drawTable();
    var photos = files.filter(function (f) { return f.photo; });
    view.chosen.textContent = photos.length + " photographs (" + megabytes(total(photos)) + ") and " +
      (files.length - photos.length) + " other files chosen." +
      (Object.keys(manifests).length ? " With " + MANIFEST + ": it is checked before anything is sent." : "");
    view.status.textContent = suggestBatch();
    showProgress();
  }

  function fromInput(input) {
    choose(Array.prototype.map.call(input.files, function (f) {
      return {file: f, path: f.webkitRelativePath || f.name};
    }));
  }

  // A dropped folder arrives as a directory entry; its reader answers in portions (100 at a time in
  // Chrome) until it answers with none.
  function walk(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve, reject) {
        entry.file(function (f) { resolve([{file: f, path: entry.fullPath.replace(/^\/+/, "")}]); }, reject);
      });
    }
    if (entry.name.charAt(0) === ".") { return Promise.resolve([]); }  // .git, .Trashes: nothing of ours
    var reader = entry.createReader();
    var children = [];
    return new Promise(function (resolve, reject) {
      (function more() {
        reader.readEntries(function (some) {
          if (!some.length) { resolve(children); return; }
          children = children.concat(some);
          more();
        }, reject);
      }());
    }).then(function (all) { return Promise.all(all.map(walk)); }).then(flatten);
  }

  function dropped(event) {
    event.preventDefault();
    view.dropzone.classList.remove("over");
    if (run && !run.done) { return; }  // one upload at a time
    // Entries must be taken while the event is being handled; reading them may come later.
    var walks = Array.prototype.map.call(event.dataTransfer.items || [], function (item) {
      var entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      if (entry) { return walk(entry); }
      var f = item.kind === "file" ? item.getAsFile() : null;
      return Promise.resolve(f ? [{file: f, path: f.name}] : []);
    });
    view.chosen.textContent = "Reading the dropped folders…";
    Promise.all(walks).then(flatten).then(function (picked) {
      if (picked.length) { choose(picked); } else { view.chosen.textContent = "No files were dropped."; }
    }, function (error) {
      view.chosen.textContent = "The dropped folder could not be read (" + error + ").";
    });
  }

  // The folder's name -> the batch it went into, so dropping it again resumes that batch.
  function roots() {
    var names = {};
    files.forEach(function (f) { if (f.path.indexOf("/") > 0) { names[f.path.split("/")[0]] = true; } });
    return Object.keys(names);
  }

  function suggestBatch() {
    if (batchSelect.value) { return ""; }
    var ids = roots().map(function (name) { return stored(localStorage, REMEMBER + name); });
    if (!ids.length || ids.some(function (id) { return !id || id !== ids[0]; })) { return ""; }
    offerBatch(ids[0]);
    batchSelect.value = ids[0];
    newBatchOnly();
    return "This folder went into batch #" + ids[0] + " before: only what that batch lacks will be sent. " +
      "Choose “a new batch” to start again.";
  }

  function offerBatch(id) {
    if (!batchSelect.querySelector('option[value="' + id + '"]')) {
      var option = document.createElement("option");
      option.value = id;
      option.textContent = "batch #" + id;
      batchSelect.appendChild(option);
    }
  }

  function newBatchOnly() { form.elements.name.disabled = Boolean(batchSelect.value); }

  // ------------------------------------------------------------------ the table and the bar

  function drawTable() {
    var body = document.createDocumentFragment();
    files.forEach(function (f) {
      var row = document.createElement("tr");
      ["name", "size", "state"].forEach(function (kind) {
        var cell = document.createElement("td");
        cell.className = kind;
        row.appendChild(cell);
      });
      row.cells[0].textContent = f.path;
      row.cells[1].textContent = megabytes(f.size);
      f.row = row;
      drawState(f);
      body.appendChild(row);
    });
    view.rows.textContent = "";
    view.rows.appendChild(body);
    view.section.hidden = files.length === 0;
  }

  function drawState(f) {
    f.row.className = f.state;
    f.row.setAttribute("data-state", f.state);
    f.row.cells[2].textContent = (LABELS[f.state] || f.state) + (f.detail ? ": " + f.detail : "");
  }

  function setState(f, state, detail) {
    f.state = state;
    f.detail = detail || "";
    drawState(f);
    showProgressSoon();
  }

  // The totals walk every file, and each file changes state several times: redrawing them on every
  // change would grow with the square of the file count, so changes within 100 ms share one redraw.
  var redraw = null;
  function showProgressSoon() {
    if (redraw === null) { redraw = window.setTimeout(function () { redraw = null; showProgress(); }, 100); }
  }

  function counts() {
    var c = {accepted: 0, already: 0, duplicate: 0, rejected: 0, skipped: 0, failed: 0, finished: 0};
    files.forEach(function (f) {
      if (f.state in c) { c[f.state] += 1; }
      if (f.photo && ["accepted", "already", "duplicate", "rejected", "failed"].indexOf(f.state) >= 0) { c.finished += 1; }
    });
    return c;
  }

  function headline() {
    var c = counts();
    var text = c.accepted + " accepted, " + (c.already ? c.already + " already in the batch, " : "") +
      c.duplicate + " duplicate, " + (c.rejected + c.skipped) + " rejected";
    var notes = [];
    if (c.skipped) { notes.push(c.skipped + " not a JPEG, PNG or WEBP file, not sent"); }
    if (c.failed) { notes.push(c.failed + " could not be sent"); }
    return text + (notes.length ? " (" + notes.join("; ") + ")" : "");
  }

  function showProgress() {
    var photos = files.filter(function (f) { return f.photo; });
    var c = counts();
    var share = photos.length ? c.finished / photos.length : 1;
    view.bar.value = share;
    view.percent.textContent = Math.floor(share * 100) + "%";
    view.summary.textContent = (run ? (run.done ? "This upload: " : "Uploading into batch #" + run.batchId + ": ") : "Chosen: ") +
      (run ? headline() : photos.length + " to upload") + " — " + c.finished + " of " + photos.length + " files";
  }

  // ------------------------------------------------------------------ talking to the server

  // XMLHttpRequest rather than fetch: its timeout covers the whole exchange.
  function request(method, url, body) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      if (body && !(body instanceof FormData)) {
        xhr.setRequestHeader("Content-Type", "application/json");
        body = JSON.stringify(body);
      }
      xhr.timeout = 300000;
      xhr.onload = function () {
        var json = null;
        try { json = JSON.parse(xhr.responseText); } catch (e) { json = null; }
        resolve({status: xhr.status, json: json || {}});
      };
      xhr.onerror = xhr.ontimeout = function () { resolve({status: 0, json: {error: "the connection failed"}}); };
      xhr.send(body || null);
    });
  }

  function Stop(message) { this.message = message; }

  // An answer that ends the whole upload: signed out, no such batch, refused.
  function fatal(answer) {
    if (answer.status === 401) { return new Stop("You are signed out. Sign in again, then drop the folder again: what arrived stays."); }
    if (answer.status === 404) { return new Stop("The batch no longer exists."); }
    if (answer.status === 400 && /CSRF/.test(answer.json.error || "")) {
      return new Stop("The page has expired. Reload it and drop the folder again: what arrived stays.");
    }
    if (answer.status === 403) { return new Stop(answer.json.error || "Not allowed."); }
    return null;
  }

  function pause(attempt) {  // 1, 2, 4, 8 s, give or take, so uploaders that failed together spread out
    return new Promise(function (resolve) { setTimeout(resolve, 1000 * Math.pow(2, attempt - 1) * (0.5 + Math.random())); });
  }

  // JSON calls (new batch, what is missing): tried again while the failure is transient.
  function callJson(method, url, body, attempt) {
    attempt = attempt || 1;
    return request(method, url, body).then(function (answer) {
      var stop = fatal(answer);
      if (stop) { throw stop; }
      if (TRANSIENT.indexOf(answer.status) >= 0 && attempt < ATTEMPTS) {
        return pause(attempt).then(function () { return callJson(method, url, body, attempt + 1); });
      }
      if (answer.status < 200 || answer.status >= 300) {
        throw new Stop(answer.json.error || "The server answered " + answer.status + ".");
      }
      return answer.json;
    });
  }

  function sha256(f) {
    return f.file.arrayBuffer().then(function (buffer) { return crypto.subtle.digest("SHA-256", buffer); })
      .then(function (digest) {
        return Array.prototype.map.call(new Uint8Array(digest), function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
      });
  }

  // Settle the files the batch already holds; resolve to those still to send. `arrived` says what a
  // file found there is: "already" (there before this upload) or "accepted" (by a try whose answer was lost).
  function dropPresent(group, arrived) {
    if (!group.length) { return Promise.resolve(group); }
    var url = "/api/batches/" + run.batchId + "/missing";
    if (window.crypto && crypto.subtle) {
      return group.reduce(function (chain, f) {  // one file in memory at a time
        return chain.then(function () { return sha256(f).then(function (h) { f.sha256 = h; }); });
      }, Promise.resolve()).then(function () {
        return callJson("POST", url, {sha256: group.map(function (f) { return f.sha256; })});
      }).then(function (answer) {
        var present = answer.present.sha256;
        return group.filter(function (f) {
          var there = present[f.sha256];
          if (!there) { return true; }
          if (there.name === f.path) { setState(f, arrived); } else { setState(f, "duplicate", "same file as " + there.name); }
          return false;
        });
      });
    }
    return callJson("POST", url, {names: group.map(function (f) { return f.path; })}).then(function (answer) {
      var present = answer.present.names;
      return group.filter(function (f) {
        if (!(f.path in present)) { return true; }
        setState(f, arrived, arrived === "already" ? "a file of the same name" : "");
        return false;
      });
    });
  }

  function sendGroup(group, attempt) {
    if (!group.length || run.stopped) { return Promise.resolve(); }
    group.forEach(function (f) { setState(f, "uploading", attempt > 1 ? "attempt " + attempt + " of " + ATTEMPTS : ""); });
    var body = new FormData();
    group.forEach(function (f) { body.append("files", f.file, f.path); });
    var rows = group.filter(function (f) { return run.fields[f.path]; }).map(function (f) {
      return Object.assign({path: f.path}, run.fields[f.path]);
    });
    if (rows.length) { body.append("manifest", JSON.stringify(rows)); }
    return request("POST", "/api/batches/" + run.batchId + "/images", body).then(function (answer) {
      return answered(group, attempt, answer);
    });
  }

  function answered(group, attempt, answer) {
    var stop = fatal(answer);
    if (stop) { throw stop; }
    if (answer.status === 200 && answer.json.files) {
      answer.json.files.forEach(function (result, i) {
        if (result.status === "accepted") { run.names[result.image_id] = group[i].path; }
        var detail = result.status === "duplicate" ? "same file as " + (run.names[result.image_id] || "image #" + result.image_id)
          : result.reason;
        setState(group[i], result.status, result.status === "accepted" ? "" : detail);
      });
      return null;
    }
    if (answer.status === 413 && group.length > 1) {  // a proxy in between takes less than the server
      var half = Math.ceil(group.length / 2);
      return sendGroup(group.slice(0, half), attempt).then(function () { return sendGroup(group.slice(half), attempt); });
    }
    if (TRANSIENT.indexOf(answer.status) >= 0) { return retry(group, attempt, answer.json.error || "HTTP " + answer.status); }
    group.forEach(function (f) {
      setState(f, answer.status === 413 ? "rejected" : "failed", answer.json.error || "HTTP " + answer.status);
    });
    return null;
  }

  function retry(group, attempt, why) {
    if (attempt >= ATTEMPTS) {
      group.forEach(function (f) { setState(f, "failed", "could not be sent (" + why + ")"); });
      return null;
    }
    group.forEach(function (f) { setState(f, "retrying", why + "; trying again shortly"); });
    // The failed attempt may have reached the server after all: ask before sending again.
    return pause(attempt).then(function () {
      return dropPresent(group, "accepted").catch(function (error) {
        if (error instanceof Stop) { throw error; }
        return group;
      });
    }).then(function (rest) { return sendGroup(rest, attempt + 1); });
  }

  // The batch records the files it was never sent, as it records those it rejected, so that whoever
  // opens it later (another user, this tab reloaded) sees what the folder held besides its photographs.
  function reportUnsent() {
    var unsent = files.filter(function (f) { return f.state === "skipped" || f.unsent; });
    var url = "/api/batches/" + run.batchId + "/skipped";
    var chain = Promise.resolve();
    for (var start = 0; start < unsent.length; start += 1000) {
      (function (part) {
        chain = chain.then(function () {
          return callJson("POST", url, {files: part.map(function (f) {
            return {name: f.path, size: f.size, reason: f.detail.charAt(0).toUpperCase() + f.detail.slice(1) + "."};
          })});
        });
      }(unsent.slice(start, start + 1000)));
    }
    return chain.catch(function (error) {
      if (error instanceof Stop) { throw error; }  // signed out or no batch: the whole upload stops anyway
    });  // otherwise the photographs matter more than this record of what was not sent
  }

  // ------------------------------------------------------------------ the manifest

  function ManifestProblems(problems) { this.problems = problems; }

  // Ask the server to read each top folder's manifest (or its <patient>/<lesion>/ folders) against the
  // folder's photographs; resolve to {name as sent: fields}, or reject with every problem.
  // A user of several sites chooses the new batch's site on the page; the manifest is checked at that site.
  function withSite(body) {
    var site = form.elements.site ? form.elements.site.value : "";
    if (site) { body.site = Number(site); }
    return body;
  }

  function checkManifests() {
    var layout = view.layout && view.layout.checked ? LAYOUT : null;
    var photos = files.filter(function (f) { return f.photo; });
    var fields = {};
    var problems = [];
    var checked = roots().filter(function (root) { return manifests[root] || layout; });
    return checked.reduce(function (chain, root) {
      var inside = photos.filter(function (f) { return f.path.indexOf(root + "/") === 0; })
        .map(function (f) { return f.path.slice(root.length + 1); });
      return chain.then(function () {
        return manifests[root] ? manifests[root].text() : null;
      }).then(function (text) {
        var body = {files: inside, manifest: text, layout: layout};
        // Added to a batch: checked at that batch's site; a new batch: at the site chosen.
        if (batchSelect.value) { body.batch = Number(batchSelect.value); } else { withSite(body); }
        return request("POST", "/api/uploads/manifest", body);
      }).then(function (answer) {
        var stop = fatal(answer);
        if (stop) { throw stop; }
        var where = root + "/" + (manifests[root] ? MANIFEST : "") + " ";
        if (answer.status === 422) {
          answer.json.problems.forEach(function (p) { problems.push(where + p.text); });
        } else if (answer.status !== 200) {
          throw new Stop(answer.json.error || "The server answered " + answer.status + " about " + where + ".");
        } else {
          Object.keys(answer.json.files).forEach(function (p) { fields[root + "/" + p] = answer.json.files[p]; });
        }
      });
    }, Promise.resolve()).then(function () {
      if (problems.length) { throw new ManifestProblems(problems); }
      return fields;
    });
  }

  function showProblems(problems) {
    if (!view.problems) { return; }
    view.problems.hidden = !problems.length;
    var list = view.problems.querySelector("ul");
    list.textContent = "";
    view.problems.querySelector("h2").textContent = problems.length + (problems.length === 1 ? " problem" : " problems") +
      " with the patients and lesions; nothing was uploaded. Correct them and choose the folder again.";
    problems.forEach(function (text) {
      var item = document.createElement("li");
      item.textContent = text;
      list.appendChild(item);
    });
  }

  // ------------------------------------------------------------------ the upload

  function cut(photos) {
    var groups = [];
    var group = [];
    var bytes = 0;
    photos.forEach(function (f) {
      if (group.length && (group.length >= filesPerRequest || bytes + f.size > bytesPerRequest)) {
        groups.push(group);
        group = [];
        bytes = 0;
      }
      group.push(f);
      bytes += f.size;
    });
    if (group.length) { groups.push(group); }
    return groups;
  }

  function start(event) {
    event.preventDefault();
    if (run && !run.done) { return; }
    var waiting = files.filter(function (f) { return f.state === "waiting"; });
    if (!waiting.length) {
      view.chosen.textContent = files.length ? "Nothing left to send among the files chosen; choose or drop them again to check what the batch lacks."
        : "Choose or drop photographs first.";
      return;
    }
    var resume = Boolean(batchSelect.value);
    run = {batchId: batchSelect.value, names: {}, fields: {}, stopped: false, done: false};
    view.button.disabled = true;
    view.status.textContent = "Checking…";
    showProblems([]);
    var name = form.elements.name.value.trim();
    // The manifest first: a wrong one stops everything before a batch is made or a file is sent.
    var batch = checkManifests().then(function (fields) {
      run.fields = fields;
      view.status.textContent = "";
      return resume ? Number(batchSelect.value) : callJson("POST", "/api/batches", withSite({name: name || roots().join(", ")}));
    });
    batch.then(function (answer) {
      run.batchId = resume ? answer : answer.batch_id;
      // Dropping the folder again, in this tab or a new one, suggests the same batch.
      roots().forEach(function (root) { store(localStorage, REMEMBER + root, String(run.batchId)); });
      var sendable = waiting.filter(function (f) {
        if (f.size <= maxFileBytes) { return true; }
        f.unsent = true;
        setState(f, "rejected", "larger than the server's limit of " + megabytes(maxFileBytes) + "; not sent");
        return false;
      });
      var queue = cut(sendable);
      var worker = function () {
        var group = queue.shift();
        if (!group || run.stopped) { return Promise.resolve(); }
        return (resume ? dropPresent(group, "already") : Promise.resolve(group))
          .then(function (rest) { return sendGroup(rest, 1); }).then(worker);
      };
      var workers = [reportUnsent()];
      for (var i = 0; i < PARALLEL; i += 1) { workers.push(worker()); }
      return Promise.all(workers);
    }).then(finished, function (error) {
      if (error instanceof ManifestProblems) {  // nothing was sent: the files stay waiting for a corrected folder
        run = null;
        view.button.disabled = false;
        view.status.textContent = "Nothing was uploaded.";
        showProblems(error.problems);
        return;
      }
      run.stopped = true;
      finished(error instanceof Stop ? error.message : "The upload stopped: " + error);
    });
  }

  function finished(problem) {
    run.done = true;
    view.button.disabled = false;
    files.forEach(function (f) {
      if (["waiting", "uploading", "retrying"].indexOf(f.state) >= 0) { setState(f, "failed", "not sent: the upload stopped"); }
    });
    showProgress();
    var c = counts();
    if (typeof problem === "string") {
      say(problem);
    } else if (c.failed) {
      say(c.failed + " files could not be sent. Drop the folder again to send only what is missing.");
    } else if (c.accepted) {
      say("Every file has an answer. The photographs are being analysed; the batch's page opens when they are done.");
      follow(run);
    } else if (c.already) {
      say("All " + c.already + " photographs were already in the batch; nothing new was added.");
    } else {
      say("Nothing new was added.");
    }
  }

  function say(text) {
    view.status.textContent = text + " ";
    if (run && run.batchId) {
      var link = document.createElement("a");
      link.href = "/batches/" + run.batchId;
      link.textContent = "Open batch #" + run.batchId;
      view.status.appendChild(link);
    }
  }

  // Like the batch page, follow the analysis, then open the batch with its results. A new choice of
  // files stops following.
  function follow(which) {
    var url = "/api/batches/" + which.batchId + "?images=0";
    (function poll() {
      if (run !== which) { return; }
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) { if (!response.ok) { throw new Error("HTTP " + response.status); } return response.json(); })
        .then(function (batch) {
          if (run !== which) { return; }
          say("Analysing: " + batch.done + " of " + batch.total + " done; the batch's page opens when every photograph is done.");
          if (batch.finished) {
            keepReport(which.batchId);
            window.location.assign(batch.url);
          } else {
            window.setTimeout(poll, 2000);
          }
        })
        .catch(function () { window.setTimeout(poll, 6000); });
    }());
  }

  // What went wrong in this upload that the batch does not record itself (it lists its rejected and
  // skipped files), for the batch page: duplicates and files that could not be sent.
  function keepReport(batchId) {
    var problems = files.filter(function (f) { return ["accepted", "already", "rejected", "skipped"].indexOf(f.state) < 0; })
      .slice(0, 500).map(function (f) { return {path: f.path, state: f.state, detail: f.detail}; });
    store(sessionStorage, REPORT + batchId, JSON.stringify({headline: "This upload: " + headline(), problems: problems}));
  }

  // ------------------------------------------------------------------ small things

  function flatten(lists) { return [].concat.apply([], lists); }
  function total(list) { return list.reduce(function (sum, f) { return sum + f.size; }, 0); }
  function megabytes(bytes) { return bytes >= 1e6 ? (bytes / 1e6).toFixed(1) + " MB" : Math.ceil(bytes / 1e3) + " kB"; }
  function stored(storage, key) { try { return storage.getItem(key); } catch (e) { return null; } }
  function store(storage, key, value) { try { storage.setItem(key, value); } catch (e) { /* private mode: no memory */ } }

  view.dropzone.hidden = false;
  document.getElementById("files").addEventListener("change", function (e) { fromInput(e.target); });
  document.getElementById("folder").addEventListener("change", function (e) { fromInput(e.target); });
  document.addEventListener("dragover", function (e) { e.preventDefault(); view.dropzone.classList.add("over"); });
  document.addEventListener("dragleave", function (e) { if (!e.relatedTarget) { view.dropzone.classList.remove("over"); } });
  document.addEventListener("drop", dropped);
  batchSelect.addEventListener("change", function () { view.status.textContent = ""; newBatchOnly(); });
  newBatchOnly();
  form.addEventListener("submit", start);
}());
