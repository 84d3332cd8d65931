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
