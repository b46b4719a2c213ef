// Live run page: polls the run's JSON progress about once a second and updates the phase,
// progress bar, end state, charts and log in place (no page reload), until the run and the
// evaluation gate are done. The elapsed time ticks every second, so the page moves from the start.
(function () {
  "use strict";
  var root = document.getElementById("run-live");
  if (!root) return;
  var url = root.getAttribute("data-progress-url");
  var POLL_MS = 1000;
  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  var C = window.ProspectCharts.COLORS;
  var CHARTS = [
    { id: "chart-loss", y: "loss", series: [["loss", "loss", C.primary]] },
    { id: "chart-reward", y: "reward", series: [["reward_desirable", "desirable", C.good], ["reward_undesirable", "undesirable", C.bad]] },
    { id: "chart-z0", y: "z0", series: [["z0", "z0", C.violet]] },
  ];
  var PHASE_ORDER = ["queued", "preparing", "reference", "training", "evaluating", "done"];
  var charts = {};
  var shownProgress = 0;
  var lastData = null;

  function seriesFrom(metrics, name) {
    var values = (metrics && metrics[name]) || [];
    var steps = (metrics && metrics.step) || [];
    return values.map(function (v, i) { return [typeof steps[i] === "number" ? steps[i] : i, v]; })
      .filter(function (p) { return typeof p[1] === "number" && isFinite(p[1]); });
  }

  function drawCharts(metrics) {
    CHARTS.forEach(function (spec) {
      var series = spec.series.map(function (s) { return { label: s[1], color: s[2], points: seriesFrom(metrics, s[0]) }; });
      if (!charts[spec.id]) {
        var canvas = document.getElementById(spec.id);
        if (canvas) charts[spec.id] = window.ProspectCharts.line(canvas, series, { x: "step", y: spec.y });
      } else {
        charts[spec.id].update(series);
      }
    });
  }

  function seconds(text) {
    var t = Date.parse(text || "");
    return isNaN(t) ? null : t;
  }

  function tickElapsed() {
    var el = document.getElementById("run-elapsed");
    var status = root.getAttribute("data-status");
    var start = seconds(root.getAttribute("data-started-at")) || seconds(root.getAttribute("data-created-at"));
    if (!el || start === null) return;
    var end = TERMINAL[status] ? (seconds(root.getAttribute("data-finished-at")) || Date.now()) : Date.now();
    var s = Math.max(0, Math.round((end - start) / 1000));
    var text = s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
    el.textContent = (status === "queued" ? "queued for " : TERMINAL[status] ? "took " : "running for ") + text;
  }

  function showPhase(phase) {
    var at = PHASE_ORDER.indexOf(phase.key);
    document.querySelectorAll("#run-phases li").forEach(function (li) {
      var i = PHASE_ORDER.indexOf(li.getAttribute("data-phase"));
      li.className = at < 0 ? "" : (i < at ? "done" : (i === at ? "current" : ""));
      if (i === at) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
    });
    var p = document.getElementById("run-phase");
    p.setAttribute("data-phase", phase.key);
    document.getElementById("run-phase-label").textContent = phase.label;
    document.getElementById("run-phase-detail").textContent = phase.detail;
  }

  function endText(data) {
    if (data.status === "succeeded") {
      if (!data.version) return "Produced no version.";
      var reason = data.version.status_reason ? ": " + data.version.status_reason : "";
      return "Produced " + data.version.name + " (" + data.version.status + ")" + reason;
    }
    if (data.status === "cancelled") {
      var why = data.error || "cancelled";
      return why.charAt(0).toUpperCase() + why.slice(1) + "; no model version was produced.";
    }
    return "No model version was produced. The reason is below.";
  }

  function render(data) {
    lastData = data;
    var phase = data.phase || { key: data.status, label: data.status, detail: "", overall: data.progress || 0 };
    // The bar only moves forward (a late poll never takes it back).
    shownProgress = Math.max(shownProgress, Math.max(0, Math.min(1, Number(phase.overall) || 0)));
    var bar = document.getElementById("run-progress");
    bar.value = shownProgress;
    bar.setAttribute("data-value", shownProgress.toFixed(4));
    document.getElementById("run-progress-text").textContent = Math.round(shownProgress * 100) + "%";
    showPhase(phase);

    var status = document.getElementById("run-status");
    status.textContent = data.status;
    status.className = "badge status-" + data.status;
    root.setAttribute("data-status", data.status);
    root.setAttribute("data-started-at", data.started_at || "");
    root.setAttribute("data-finished-at", data.finished_at || "");
    // The evaluation gate's state of the produced version ("" when none yet, "done" once decided).
    root.setAttribute("data-gate", data.version ? (data.version.evaluation_state || "not-required") : "");

    var log = document.getElementById("run-log");
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = data.log_text || "Nothing logged yet.";
    if (atBottom) log.scrollTop = log.scrollHeight;

    drawCharts(data.metrics);

    var cancel = document.getElementById("run-cancel");
    if (cancel) cancel.hidden = !!TERMINAL[data.status];
    var end = document.getElementById("run-end");
    if (TERMINAL[data.status]) {
      end.hidden = false;
      end.className = "card end-state " + data.status;
      document.getElementById("run-end-title").textContent = data.status.charAt(0).toUpperCase() + data.status.slice(1);
      document.getElementById("run-end-text").textContent = endText(data);
      document.getElementById("run-version").textContent = data.version ? data.version.name : "";
      var error = document.getElementById("run-error");
      error.textContent = data.error || "";
      error.hidden = !(data.error && data.status === "failed");
    }
    tickElapsed();
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
        else root.setAttribute("data-watching", "done");
      })
      .catch(function () { setTimeout(poll, POLL_MS * 3); });  // transient error: back off, keep watching
  }

  setInterval(tickElapsed, 1000);
  tickElapsed();
  poll();
})();
