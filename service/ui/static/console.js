// Paxos Event Store console: the reader's local time in the title of every <time>.
// Pages are complete without this file; it only adds the hover text.
(function () {
  "use strict";
  function localise(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var when = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        times[i].title = when.toLocaleString() + " (your local time)";
      }
    }
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSettle", function (e) { localise(e.target); });
})();
