// Prospect's charts, drawn with the vendored Chart.js (static/vendor/chartjs, see its README):
// one library for every chart, with axes, a legend that shows each series' colour, and tooltips.
(function () {
  "use strict";
  var COLORS = { primary: "#1d4ed8", good: "#15803d", bad: "#b91c1c", violet: "#6d28d9", grid: "#e4e7eb", ink: "#52606d" };

  function baseOptions(xTitle, yTitle) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 14, boxHeight: 3, color: COLORS.ink } },
        tooltip: { enabled: true },
      },
      scales: {
        x: { title: { display: !!xTitle, text: xTitle, color: COLORS.ink }, grid: { color: COLORS.grid }, ticks: { color: COLORS.ink, maxRotation: 0, autoSkip: true } },
        y: { title: { display: !!yTitle, text: yTitle, color: COLORS.ink }, grid: { color: COLORS.grid }, ticks: { color: COLORS.ink } },
      },
    };
  }

  // series: [{label, color, points: [[x, y], ...]}]; x is numeric (the training step).
  function line(canvas, series, axes) {
    axes = axes || {};
    var options = baseOptions(axes.x || "step", axes.y || "");
    options.scales.x.type = "linear";
    options.parsing = false;
    var chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: series.map(function (s) {
        return { label: s.label, borderColor: s.color, backgroundColor: s.color, borderWidth: 2, pointRadius: 0,
                 pointHoverRadius: 4, tension: 0, data: toXY(s.points) };
      }) },
      options: options,
    });
    return {
      chart: chart,
      update: function (newSeries) {
        newSeries.forEach(function (s, i) { chart.data.datasets[i].data = toXY(s.points); });
        chart.update("none");
      },
    };
  }

  function toXY(points) { return points.map(function (p) { return { x: p[0], y: p[1] }; }); }

  function bar(canvas, labels, values, axes) {
    axes = axes || {};
    var options = baseOptions(axes.x || "", axes.y || "");
    options.scales.y.beginAtZero = true;
    options.scales.y.ticks.precision = 0;
    options.plugins.legend.display = !!axes.label;
    return new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: axes.label || "", data: values, backgroundColor: axes.color || COLORS.primary }] },
      options: options,
    });
  }

  window.ProspectCharts = { line: line, bar: bar, COLORS: COLORS };
})();
