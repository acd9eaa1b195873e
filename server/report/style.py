"""The report's stylesheet, inlined in a ``<style>`` element: this module holds only that CSS."""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff;
  --accent:#2563eb; --good:#15803d; --good-bg:#dcfce7; --warn:#a16207; --warn-bg:#fef9c3;
  --bad:#b91c1c; --bad-bg:#fee2e2; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); line-height:1.45;
  font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width:1120px; margin:0 auto; padding:0 20px 40px; }
header.top { max-width:1120px; margin:0 auto; padding:28px 20px 8px; }
.kicker { text-transform:uppercase; letter-spacing:.08em; font-size:11px; color:var(--accent);
  font-weight:700; }
h1 { margin:2px 0 2px; font-size:26px; word-break:break-all; }
.meta { color:var(--muted); }
.tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(128px, 1fr)); gap:10px;
  margin:18px 0 14px; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:10px 12px; }
.tile .label { font-size:12px; color:var(--muted); font-weight:600; }
.tile .value { font-size:22px; font-weight:650; margin-top:2px; font-variant-numeric:tabular-nums; }
.tile .sub { font-size:12px; color:var(--muted); overflow-wrap:anywhere; }
nav { display:flex; flex-wrap:wrap; gap:6px; }
nav a { color:var(--accent); text-decoration:none; padding:3px 10px; border:1px solid var(--line);
  border-radius:999px; background:var(--card); font-size:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px;
  padding:18px 20px; margin-top:16px; }
h2 { margin:0; font-size:18px; }
.lead { margin:4px 0 12px; color:var(--muted); }
.plot { margin:0 0 12px; }
.plot img { display:block; max-width:100%; height:auto; }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { font-size:12px; color:var(--muted);
  font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafafa; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px;
  font-weight:600; background:#f3f4f6; color:#374151; white-space:nowrap; }
.badge.good { background:var(--good-bg); color:var(--good); }
.badge.warn { background:var(--warn-bg); color:var(--warn); }
.badge.bad { background:var(--bad-bg); color:var(--bad); }
.mono { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px;
  overflow-wrap:anywhere; }
.stale { color:var(--bad); font-weight:600; }
.not-run { margin:0; padding:12px 14px; border:1px dashed #d1d5db; border-radius:8px;
  color:var(--muted); background:#fafafa; }
.muted { color:var(--muted); }
.alert { border:1px solid #fecaca; background:var(--bad-bg); color:var(--bad); border-radius:8px;
  padding:10px 14px; margin-bottom:12px; }
.alert ul { margin:4px 0 0; padding-left:20px; }
.bar { background:#eef2ff; border-radius:4px; height:10px; min-width:160px; }
.bar span { display:block; height:10px; border-radius:4px; background:var(--accent); }
.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(200px, 1fr)); gap:12px 20px;
  margin:0; }
.facts dt { font-size:12px; color:var(--muted); font-weight:600; }
.facts dd { margin:2px 0 0; font-weight:600; overflow-wrap:anywhere; }
.facts .wide { grid-column:1 / -1; }
.facts-line { margin:0 0 10px; }
.notes, .warnings { margin:12px 0 0; padding-left:20px; }
.warnings li { color:var(--warn); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
.explain { list-style:none; margin:0; padding:0; }
.explain li { padding:8px 0; border-bottom:1px solid var(--line); }
.explain .said { font-size:15px; line-height:1.9; }
.attr { border-radius:3px; padding:1px 2px; }
"""
