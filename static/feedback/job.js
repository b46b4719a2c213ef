// Job page: polls the job's status URL about once a second, moves the progress bar, and reloads
// the page once the job is over (the server renders the result, the errors, the skipped lines).
// A snapshot job that started a training run ("retrain now") goes on to that run's page instead.
(function () {
  "use strict";
  var root = document.getElementById("job-live");
  if (!root) return;
  var url = root.getAttribute("data-status-url");
  var bar = document.getElementById("job-progress");
  var text = document.getElementById("job-progress-text");
  var badge = document.getElementById("job-status");
  var DONE = { succeeded: true, failed: true };
  if (DONE[root.getAttribute("data-status")]) return;

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (job) {
        if (job) {
          bar.value = job.progress;
          text.textContent = Math.round(job.progress * 100) + "%";
          badge.textContent = job.status;
          badge.className = "badge status-" + job.status;
          if (job.status === "succeeded" && job.result && job.result.run_url) {
            window.location.assign(job.result.run_url);
            return;
          }
          if (DONE[job.status]) { window.location.reload(); return; }
        }
        window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 500);
})();
