// Charts over the vendored uPlot (window.uPlot, /console/uPlot.iife.min.js).

const COLORS = ["#2563eb", "#dc2626", "#059669", "#9333ea"];

function width(el) {
  return Math.max(320, Math.min(900, el.clientWidth || 640));
}

// a line chart; series: [{label, values}] over xs (null where a series has no point)
export function lineChart(el, title, xs, series, xLabel = "step") {
  const opts = {
    title,
    width: width(el),
    height: 280,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { label: "" }],
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
      points: { show: true, size: 5 },
    }))],
  };
  const data = [xs, ...series.map((s) => s.values)];
  const chart = new window.uPlot(opts, data, el);
  return {
    update(xs2, series2) {
      chart.setData([xs2, ...series2.map((s) => s.values)]);
    },
    destroy() {
      chart.destroy();
    },
  };
}

// a histogram of token lengths with a marker at `mark` (the recommended max length)
export function histogram(el, title, edges, counts, mark) {
  const xs = edges.slice(0, -1);
  const step = edges.length > 1 ? edges[1] - edges[0] : 1;
  const opts = {
    title,
    width: width(el),
    height: 240,
    scales: { x: { time: false, range: [0, Math.max(edges[edges.length - 1], mark || 0) + step] } },
    axes: [{ label: "tokens per conversation" }, { label: "conversations" }],
    series: [{ label: "tokens from" }, {
      label: "conversations", fill: "rgba(37,99,235,0.35)", stroke: COLORS[0],
      paths: window.uPlot.paths.bars({ size: [1, Infinity], align: 1 }), points: { show: false },
    }],
    hooks: {
      draw: [(u) => {
        if (!mark) return;
        const x = u.valToPos(mark, "x", true);
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = COLORS[1];
        ctx.setLineDash([6, 4]);
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(x, u.bbox.top);
        ctx.lineTo(x, u.bbox.top + u.bbox.height);
        ctx.stroke();
        ctx.fillStyle = COLORS[1];
        ctx.font = `${12 * devicePixelRatio}px sans-serif`;
        ctx.fillText(` max_length ${mark}`, x, u.bbox.top + 14 * devicePixelRatio);
        ctx.restore();
      }],
    },
  };
  return new window.uPlot(opts, [xs, counts], el);
}
