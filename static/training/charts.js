// A tiny SVG line chart, hand-written so the staff pages need no CDN or bundler (no network at runtime).
// lineChart(svg, series) draws every series [{name, color, points: [[x, y], ...]}] on shared axes.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PAD = { left: 48, right: 10, top: 10, bottom: 22 };

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value) {
    if (!isFinite(value)) return "";
    var abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e4)) return value.toExponential(1);
    return String(Math.round(value * 1000) / 1000);
  }

  function lineChart(svg, series) {
    var width = svg.clientWidth || Number(svg.getAttribute("width")) || 320;
    var height = svg.clientHeight || Number(svg.getAttribute("height")) || 160;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);

    var xs = [], ys = [];
    series.forEach(function (s) {
      s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); });
    });
    if (!xs.length) {
      svg.appendChild(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", "class": "chart-empty" }, "no data yet"));
      return;
    }
    var xMin = Math.min.apply(null, xs), xMax = Math.max.apply(null, xs);
    var yMin = Math.min.apply(null, ys), yMax = Math.max.apply(null, ys);
    if (xMax === xMin) { xMax = xMin + 1; }
    if (yMax === yMin) { yMax += 0.5; yMin -= 0.5; }
    var plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
    function sx(x) { return PAD.left + (x - xMin) / (xMax - xMin) * plotW; }
    function sy(y) { return PAD.top + (1 - (y - yMin) / (yMax - yMin)) * plotH; }

    svg.appendChild(el("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, "class": "chart-frame" }));
    [yMin, (yMin + yMax) / 2, yMax].forEach(function (y) {
      svg.appendChild(el("line", { x1: PAD.left, x2: PAD.left + plotW, y1: sy(y), y2: sy(y), "class": "chart-grid" }));
      svg.appendChild(el("text", { x: PAD.left - 4, y: sy(y) + 4, "text-anchor": "end", "class": "chart-label" }, fmt(y)));
    });
    svg.appendChild(el("text", { x: PAD.left, y: height - 6, "class": "chart-label" }, "step " + fmt(xMin)));
    svg.appendChild(el("text", { x: PAD.left + plotW, y: height - 6, "text-anchor": "end", "class": "chart-label" }, fmt(xMax)));

    series.forEach(function (s, index) {
      if (!s.points.length) return;
      var d = s.points.map(function (p, i) { return (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1); }).join(" ");
      svg.appendChild(el("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 1.8, "class": "chart-line", "data-series": s.name }));
      if (s.points.length === 1) {
        svg.appendChild(el("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 2.5, fill: s.color }));
      }
      svg.appendChild(el("text", { x: PAD.left + 6, y: PAD.top + 14 + 14 * index, fill: s.color, "class": "chart-legend" }, s.name));
    });
  }

  window.ProspectCharts = { lineChart: lineChart };
})();
