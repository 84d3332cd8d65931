// Live state: follows the console's event stream for the nodes this page shows and updates
// their states without a reload. Pages work without it; this only keeps them current.
(function () {
  "use strict";
  var shown = document.querySelectorAll("[data-node], [data-live-node]");
  if (!shown.length) { return; }
  var names = [];
  shown.forEach(function (element) {
    var name = element.getAttribute("data-node") || element.getAttribute("data-live-node");
    if (names.indexOf(name) < 0) { names.push(name); }
  });
  var source = new EventSource("/ui/live?nodes=" + encodeURIComponent(names.join(",")));
  source.addEventListener("node", function (message) {
    var change;
    try { change = JSON.parse(message.data); } catch (error) { return; }
    var name = CSS.escape(change.name);
    document.querySelectorAll('[data-node="' + name + '"] [data-state], [data-live-node="' + name + '"] [data-state]').forEach(function (element) {
      element.textContent = change.provision_state;
      element.className = "state state-" + change.provision_state;
    });
  });
})();

// Uploads from the image page: the file goes in pieces through the API's resumable upload,
// the bar moving with each; the upload's id is kept in localStorage under the file's name,
// size and date, so that choosing the same file again (after a failure, a reload or a lost
// connection) goes on from where the server says it stands.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form) { return; }
  var PIECE = 4 * 1024 * 1024;
  var csrf = document.querySelector('meta[name="csrf"]').getAttribute("content");
  var progress = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var image = form.getAttribute("data-image");
  function headers(extra) {
    var all = { "X-CSRF-Token": csrf };
    Object.keys(extra || {}).forEach(function (name) { all[name] = extra[name]; });
    return all;
  }
  function failure(response) {
    return response.json().then(function (body) { return new Error(body.error ? body.error.message : response.statusText); },
      function () { return new Error(response.status + " " + response.statusText); });
  }
  function pause(milliseconds) { return new Promise(function (resolve) { setTimeout(resolve, milliseconds); }); }
  async function where(id) {
    var response = await fetch("/ui/uploads/" + encodeURIComponent(id), { headers: headers(), credentials: "same-origin" });
    return response.ok ? (await response.json()).offset : null;
  }
  async function upload(file, kind, checksum) {
    var key = "kiln-upload:" + image + ":" + kind + ":" + file.name + ":" + file.size + ":" + file.lastModified;
    var id = localStorage.getItem(key);
    var offset = id ? await where(id) : null;
    if (offset === null) {
      var created = await fetch("/ui/uploads", { method: "POST", credentials: "same-origin",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ image: image, checksum: checksum || null }) });
      if (!created.ok) { throw await failure(created); }
      id = (await created.json()).id;
      offset = 0;
      localStorage.setItem(key, id);
    }
    progress.max = file.size || 1;
    var failures = 0;
    while (offset < file.size) {
      progress.value = offset;
      status.textContent = "Sent " + offset + " of " + file.size + " bytes.";
      var response = null;
      try {
        response = await fetch("/ui/uploads/" + encodeURIComponent(id), { method: "PATCH", credentials: "same-origin",
          headers: headers({ "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" }),
          body: file.slice(offset, Math.min(offset + PIECE, file.size)) });
      } catch (error) { response = null; }
      if (response && response.ok) {
        offset = (await response.json()).offset;
        failures = 0;
      } else if (response && response.status === 409 && response.headers.get("Upload-Offset") !== null) {
        offset = Number(response.headers.get("Upload-Offset"));
      } else if (response && response.status < 500) {
        throw await failure(response);
      } else {
        failures += 1;
        if (failures > 5) { throw new Error("the server did not take the upload after 5 tries; choose the file again to go on"); }
        status.textContent = "Connection lost; trying again…";
        await pause(1000 * failures);
        var resumed = await where(id).catch(function () { return null; });
        if (resumed !== null) { offset = resumed; }
      }
    }
    progress.value = file.size;
    status.textContent = "Checking and storing the new version…";
    var version = await fetch("/ui/images/" + encodeURIComponent(image) + "/versions", { method: "POST", credentials: "same-origin",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ artifacts: [{ kind: kind, upload: id }], note: "uploaded from the console: " + file.name }) });
    if (!version.ok) { throw await failure(version); }
    localStorage.removeItem(key);
    location.reload();
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var file = document.getElementById("upload-file").files[0];
    if (!file) { return; }
    var kind = document.getElementById("upload-kind").value;
    var checksum = document.getElementById("upload-checksum").value.trim();
    upload(file, kind, checksum).catch(function (error) { status.textContent = "Upload failed: " + error.message; });
  });
})();

// The serial console on a node's page: what the node prints after the page was made,
// asked for from the offset the page (then each answer) gives: every second while the line
// is read and the page is seen, every ten while it is not read, and never again once the
// server refuses (the session ended, or the node is gone).
(function () {
  "use strict";
  var screen = document.getElementById("console");
  if (!screen) { return; }
  var node = screen.getAttribute("data-console");
  var after = Number(screen.getAttribute("data-console-end") || "0");
  var decoder = new TextDecoder("utf-8");
  var waits = 0;
  function bytes(base64) {
    var text = atob(base64), out = new Uint8Array(text.length);
    for (var index = 0; index < text.length; index += 1) { out[index] = text.charCodeAt(index); }
    return out;
  }
  function next(seconds) { setTimeout(follow, seconds * 1000); }
  function follow() {
    if (document.hidden) { next(1); return; }
    fetch("/ui/nodes/" + encodeURIComponent(node) + "/console?after=" + after, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (output) {
        if (!output) { return; }
        if (output.data) {
          var atBottom = screen.scrollTop + screen.clientHeight >= screen.scrollHeight - 4;
          screen.textContent += decoder.decode(bytes(output.data), { stream: true });
          if (screen.textContent.length > 262144) { screen.textContent = screen.textContent.slice(-262144); }
          if (atBottom) { screen.scrollTop = screen.scrollHeight; }
        }
        after = output.end;
        next(output.connected ? 1 : 10);
      }, function () { waits += 1; next(Math.min(30, 2 * waits)); });
  }
  screen.scrollTop = screen.scrollHeight;
  next(1);
})();
