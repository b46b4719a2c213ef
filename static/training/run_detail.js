// Live run page: polls the run's JSON progress endpoint about once a second and updates the
// progress bar, status, charts and log tail in place (no page reload), until the run ends.
(function () {
  "use strict";
  var root = document.getElementById("run-live");
  if (!root) return;
  var url = root.getAttribute("data-progress-url");
  var POLL_MS = 1000;
  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  var CHARTS = [
    { id: "chart-loss", series: [["loss", "#1f77b4"]] },
    { id: "chart-reward", series: [["reward_desirable", "#2ca02c"], ["reward_undesirable", "#d62728"]] },
    { id: "chart-z0", series: [["z0", "#9467bd"]] },
  ];

  // The engine's metrics arrive as one object per logged step; accept a dict of series too.
  function seriesFrom(metrics, name) {
    if (!metrics) return [];
    if (Array.isArray(metrics)) {
      return metrics
        .filter(function (row) { return row && typeof row[name] === "number" && isFinite(row[name]); })
        .map(function (row, i) { return [typeof row.step === "number" ? row.step : i, row[name]]; });
    }
    var values = metrics[name] || [];
    var steps = metrics.step || [];
    return values.map(function (v, i) { return [typeof steps[i] === "number" ? steps[i] : i, v]; })
      .filter(function (p) { return typeof p[1] === "number" && isFinite(p[1]); });
  }

  function render(data) {
    var progress = Math.max(0, Math.min(1, Number(data.progress) || 0));
    var bar = document.getElementById("run-progress");
    bar.value = progress;
    bar.setAttribute("data-value", progress.toFixed(4));
    document.getElementById("run-progress-text").textContent = Math.round(progress * 100) + "%";
    var status = document.getElementById("run-status");
    status.textContent = data.status;
    status.className = "status status-" + data.status;
    root.setAttribute("data-status", data.status);
    // The evaluation gate's state of the produced version ("" when none yet, "done" once decided).
    root.setAttribute("data-gate", data.version ? (data.version.evaluation_state || "not-required") : "");

    var log = document.getElementById("run-log");
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = data.log_tail || "";
    if (atBottom) log.scrollTop = log.scrollHeight;

    var error = document.getElementById("run-error");
    error.textContent = data.error || "";
    error.hidden = !data.error;

    CHARTS.forEach(function (chart) {
      var svg = document.getElementById(chart.id);
      if (!svg) return;
      window.ProspectCharts.lineChart(svg, chart.series.map(function (s) {
        return { name: s[0], color: s[1], points: seriesFrom(data.metrics, s[0]) };
      }));
    });

    var cancel = document.getElementById("run-cancel");
    if (cancel) cancel.hidden = !!TERMINAL[data.status];
    var done = document.getElementById("run-done");
    if (done && TERMINAL[data.status]) {
      done.hidden = false;
      if (data.version) {
        var verdict = data.version.status_reason ? " — " + data.version.status_reason : "";
        document.getElementById("run-version").textContent =
          data.version.name + " (" + data.version.status + ")" + verdict;
      }
    }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        render(data);
        // Keep watching after the run ends while the evaluation gate is still deciding its version.
        var gating = data.version && (data.version.evaluation_state === "pending" || data.version.evaluation_state === "running");
        if (!TERMINAL[data.status] || gating) setTimeout(poll, POLL_MS);
      })
      .catch(function () { setTimeout(poll, POLL_MS * 3); });  // transient error: back off, keep watching
  }

  poll();
})();
