// The dashboard page: polls the JSON API every refresh interval and redraws; builds DOM with
// textContent only (names come from volunteers' records).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_POINTS = 5000;
let info = null;
let history = [];
let evalMetric = "";

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) { throw new Error(body.error || response.statusText); }
  return body;
}

const int = (n) => (n === null || n === undefined) ? "–" : Math.round(n).toLocaleString("en-US");
const num = (x, digits) => (x === null || x === undefined || !Number.isFinite(x)) ? "–" : x.toFixed(digits);

function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) { return "–"; }
  s = Math.round(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) { return `${d}d ${h}h`; }
  if (h) { return `${h}h ${m}m`; }
  if (m) { return `${m}m ${sec}s`; }
  return `${sec}s`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function parameters(n) {
  if (n === null || n === undefined) { return "–"; }
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : `${(n / 1e3).toFixed(0)} k`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) { td.className = className; }
  row.appendChild(td);
  return td;
}

function fillTable(id, items, makeRow) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...items.map(makeRow));
}

function setState(kind, text) {
  const badge = $("state");
  badge.className = `badge ${kind}`;
  badge.textContent = text;
}

function renderRun(run) {
  const max = run.max_epochs ? ` / ${run.max_epochs}` : "";
  $("run-id").textContent = run.run_id;
  $("stat-epoch").textContent = `${run.global_epoch}${max}`;
  $("stat-samples").textContent = int(run.samples);
  $("stat-claimed").textContent = int(run.peers.reduce((sum, p) => sum + p.samples, 0));
  $("stat-throughput").textContent = `${num(run.samples_per_second, 1)} /s`;
  $("stat-peers").textContent = String(run.peers.length);
  $("stat-loss").textContent = num(run.loss, 3);
  $("stat-batch").textContent = int(run.target_batch_size);
  $("stat-rejected").textContent = String(run.rejected_records);
  $("stat-rejected").classList.toggle("bad", run.rejected_records > 0);
  const remaining = run.max_epochs ? (run.max_epochs - run.global_epoch) * run.target_batch_size : null;
  let eta = "–";
  if (remaining !== null && remaining <= 0) { eta = "done"; }
  else if (remaining !== null && run.samples_per_second > 0) { eta = duration(remaining / run.samples_per_second); }
  $("stat-eta").textContent = run.max_epochs ? eta : "no limit";
  if (info) { $("stat-elapsed").textContent = duration(run.time - info.created_at); }
  const finished = run.max_epochs && run.global_epoch >= run.max_epochs;
  $("waiting").hidden = run.peers.length > 0 || finished;
  if (finished) { setState("finished", "finished"); }
  else if (run.peers.length === 0) { setState("waiting", "waiting for volunteers"); }
  else { setState("live", "live"); }
}

function renderInfo() {
  $("run-line").textContent = `recipe ${info.recipe} · target batch ${info.target_batch_size}` +
    (info.max_epochs ? ` · ${info.max_epochs} epochs` : "") + ` · refresh ${info.refresh_interval}s`;
  $("stat-model").textContent = parameters(info.model_parameters);
  $("half-life").textContent = duration(info.credit_half_life);
  if (info.join_address) { $("join-command").textContent = `crowdtrain join ${info.join_address}`; }
}

function link(up, down) {  // a peer's measured link, Mbit/s; "–" until it is measured
  const mbps = (v) => num(v, v < 10 ? 1 : 0);
  return up == null && down == null ? "–" : `${mbps(up)} / ${mbps(down)}`;
}

function renderPeers(doc) {
  $("peers-empty").hidden = doc.peers.length > 0;
  $("peers").closest(".table-wrap").hidden = doc.peers.length === 0;
  fillTable("peers", doc.peers, (p) => {
    const row = document.createElement("tr");
    row.className = p.online ? "online" : "departed";
    row.dataset.peerId = p.peer_id;
    const id = cell(row, "");
    const dot = document.createElement("span");
    dot.className = p.online ? "dot on" : "dot";
    id.append(dot, document.createTextNode(`…${p.short_id}`));
    id.title = p.peer_id;
    cell(row, p.name || "–", "peer-name");
    cell(row, p.role);
    cell(row, p.device);
    cell(row, String(p.epoch), "num");
    cell(row, p.online ? num(p.samples_per_second, 1) : "departed", "num");
    cell(row, link(p.upload_mbps, p.download_mbps), "num peer-link");
    cell(row, int(p.samples), "num");
    cell(row, int(p.samples_averaged), "num");
    const share = cell(row, `${(p.share * 100).toFixed(1)}%`, "num");
    const bar = document.createElement("span");
    bar.className = "share";
    bar.style.width = `${Math.round(p.share * 40)}px`;
    share.appendChild(bar);
    cell(row, `${p.averaging_rounds} / ${p.averaging_failures}`, "num");
    cell(row, `${duration(p.last_seen_s)} ago`, "num");
    return row;
  });
}

function renderOffenders(run) {  // peers that honest peers rejected or banned (their integrity reports)
  const offenders = run.offenders || [];
  $("offenders-section").hidden = offenders.length === 0;
  fillTable("offenders", offenders, (o) => {
    const row = document.createElement("tr");
    row.className = o.banned_by > 0 ? "banned" : "";
    const id = cell(row, `…${o.peer_id.slice(-8)}`);
    id.title = o.peer_id;
    cell(row, String(o.strikes), "num");
    cell(row, o.banned_by > 0 ? `${o.banned_by} peer${o.banned_by > 1 ? "s" : ""}` : "–", "num");
    return row;
  });
}

function renderLeaderboard(doc) {
  fillTable("leaderboard", doc.entries, (e, i) => {
    const row = document.createElement("tr");
    if (!e.online) { row.className = "departed"; }
    cell(row, String(i + 1), "num");
    cell(row, e.name);
    cell(row, int(e.recent_average_per_hour), "num");
    cell(row, int(e.samples_averaged), "num");
    cell(row, int(e.samples_claimed), "num");
    cell(row, String(e.peers), "num");
    return row;
  });
}

function renderCheckpoints(doc) {
  $("checkpoints-empty").hidden = doc.checkpoints.length > 0;
  $("checkpoints").closest(".table-wrap").hidden = doc.checkpoints.length === 0;
  fillTable("checkpoints", doc.checkpoints, (c) => {
    const row = document.createElement("tr");
    cell(row, c.epoch === null ? "–" : String(c.epoch), "num");
    const link = document.createElement("a");
    link.href = c.url;
    link.textContent = c.name;
    cell(row, "").appendChild(link);
    cell(row, new Date(c.time * 1000).toLocaleString());
    cell(row, bytes(c.size), "num");
    return row;
  });
}

function renderCharts() {
  const series = (key) => history.map((p) => [p.time, p[key]]);
  Charts.draw($("chart-loss"), series("loss"), { color: "#dc2626" });
  $("eval-caption").textContent = evalMetric ? `Evaluation: ${evalMetric}` : "Evaluation metric";
  Charts.draw($("chart-eval"), series("eval_value"),
    { color: "#7c3aed", empty: "not reported (volunteers: join --evaluate)" });
  Charts.draw($("chart-throughput"), series("samples_per_second"), { color: "#2563eb", minZero: true });
  Charts.draw($("chart-peers"), series("peers_online"), { color: "#15803d", minZero: true, step: true, integer: true });
}

async function loadHistory() {
  const since = history.length ? history[history.length - 1].time : 0;
  const doc = await getJSON(`/api/history?since=${since}&max_points=${MAX_POINTS}`);
  evalMetric = doc.eval_metric || evalMetric;
  history = history.concat(doc.points).slice(-MAX_POINTS);
}

async function refresh() {
  try {
    info = await getJSON("/api/info");
    renderInfo();
    const [run, peers, board, checkpoints] = await Promise.all(
      ["/api/run", "/api/peers", "/api/leaderboard", "/api/checkpoints"].map(getJSON));
    await loadHistory();
    renderRun(run);
    renderPeers(peers);
    renderOffenders(run);
    renderLeaderboard(board);
    renderCheckpoints(checkpoints);
    renderCharts();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    setState("offline", `no connection: ${error.message}`);
  } finally {
    setTimeout(refresh, 1000 * (info ? info.refresh_interval : 2));
  }
}

window.addEventListener("resize", renderCharts);
refresh();
