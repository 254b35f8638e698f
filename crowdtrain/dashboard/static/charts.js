// Minimal line charts on <canvas>: time on x, one series, light grid; no dependencies.
"use strict";

const Charts = (() => {
  const PAD = { left: 52, right: 10, top: 8, bottom: 22 };

  function tickStep(lo, hi, count, integer) {
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    return integer ? Math.max(1, Math.round(step)) : step;
  }

  function label(v, step) {
    if (Math.abs(v) < step * 1e-6) { v = 0; }
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    return v.toFixed(Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  }

  function clock(t, withSeconds) {
    return new Date(t * 1000).toTimeString().slice(0, withSeconds ? 8 : 5);
  }

  function setup(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  // points: [[time, value], ...] (value null = gap); opts: {color, empty, minZero, step, integer}
  function draw(canvas, points, opts) {
    const { ctx, w, h } = setup(canvas);
    const style = getComputedStyle(document.documentElement);
    const muted = style.getPropertyValue("--muted").trim(), line = style.getPropertyValue("--line").trim();
    const data = points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    ctx.font = "11px system-ui, sans-serif";
    if (data.length === 0) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.fillText(opts.empty || "no data yet", w / 2, h / 2);
      return;
    }
    let t0 = points[0][0], t1 = points[points.length - 1][0];  // all charts share the history's time span
    if (t1 - t0 < 10) { t0 = t1 - 10; }
    let lo = Math.min(...data.map((p) => p[1])), hi = Math.max(...data.map((p) => p[1]));
    if (opts.minZero) { lo = Math.min(0, lo); }
    if (hi - lo < 1e-9) { hi = lo + (Math.abs(lo) * 0.1 || 1); }
    const margin = (hi - lo) * 0.08;
    if (!opts.minZero || lo < 0) { lo -= margin; }
    hi += margin;
    const x = (t) => PAD.left + (t - t0) / (t1 - t0) * (w - PAD.left - PAD.right);
    const y = (v) => h - PAD.bottom - (v - lo) / (hi - lo) * (h - PAD.top - PAD.bottom);

    ctx.strokeStyle = line;
    ctx.fillStyle = muted;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const step = tickStep(lo, hi, 4, opts.integer);
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      ctx.beginPath(); ctx.moveTo(PAD.left, y(v)); ctx.lineTo(w - PAD.right, y(v)); ctx.stroke();
      ctx.fillText(label(v, step), PAD.left - 6, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xTicks = Math.max(2, Math.floor((w - PAD.left) / 110));
    for (let i = 0; i <= xTicks; i++) {
      const t = t0 + (t1 - t0) * i / xTicks, text = clock(t, t1 - t0 < 600);
      const half = ctx.measureText(text).width / 2 + 2;
      ctx.fillText(text, Math.min(Math.max(x(t), PAD.left + half), w - half), h - PAD.bottom + 6);
    }

    ctx.strokeStyle = opts.color;
    ctx.lineWidth = 1.8;
    ctx.beginPath();
    let started = false, prev = null;
    for (const [t, v] of points) {
      if (v === null || !Number.isFinite(v)) { started = false; continue; }
      if (!started) { ctx.moveTo(x(t), y(v)); started = true; }
      else if (opts.step && prev !== null) { ctx.lineTo(x(t), y(prev)); ctx.lineTo(x(t), y(v)); }
      else { ctx.lineTo(x(t), y(v)); }
      prev = v;
    }
    ctx.stroke();
  }

  return { draw };
})();
