"""The gallery page: one self-contained HTML file (CSS and JavaScript inline, no network).

It opens by double-click from Finder (`file://`) and through any sync folder: every
link is relative, the data is an inline JSON array rendered a page at a time (so
2,000 results cost one JSON.parse and 48 cards), posters load lazily, the GIF plays
on hover and the MP4 on click. The live view re-inserts a `<script>` tag for the
status script every 2 s: over `file://` a script may be loaded where fetch() may not.
Everything from a job (prompt, names, errors) is put into the page with textContent,
never as HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

INTERVAL_MS = 2000  # how often the page re-reads the status script
PAGE_SIZE = 48  # cards rendered at a time


def render(data: dict[str, Any], *, title: str) -> str:
    """The whole page for `data` ({"results": [...], "failed": [...], "token", "stale_s", ...})."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Inside <script>: no "</script>", "<!--" or "]]>" can appear, and JS line terminators stay escaped.
    payload = (payload.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
               .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return (
        TEMPLATE_HEAD.replace("@TITLE@", html.escape(title))
        + CSS
        + TEMPLATE_BODY.replace("@WHERE@", html.escape(str(data.get("where", ""))))
        + '<script id="hotfolder-data" type="application/json">' + payload + "</script>\n"
        + "<script>\n" + JS.replace("@INTERVAL@", str(INTERVAL_MS)).replace("@PAGE@", str(PAGE_SIZE))
        + "</script>\n</body>\n</html>\n"
    )


TEMPLATE_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="generator" content="hotfolder">
<title>@TITLE@</title>
<style>
"""

CSS = r"""
:root {
  --bg: #f5f5f3; --panel: #ffffff; --text: #1c1c1e; --muted: #6e6e73; --line: #e2e2df; --chip: #f0f0ed;
  --accent: #2f6bd8; --accent-text: #ffffff; --ok: #1f8a4c; --warn: #b7791f; --bad: #c0392b; --media: #101012;
  --shadow: 0 1px 2px rgba(0,0,0,.05), 0 2px 8px rgba(0,0,0,.04);
  font: 14px/1.45 -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", "DejaVu Sans", Arial, sans-serif;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #141416; --panel: #1d1d20; --text: #ececef; --muted: #9c9ca4; --line: #2d2d32; --chip: #27272b;
          --accent: #7ea6ff; --accent-text: #0d1424; --ok: #4cc37f; --warn: #e0a94a; --bad: #ff7a6b; --media: #0a0a0b;
          --shadow: none; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--text); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
button { font: inherit; color: inherit; }
header.top { position: sticky; top: 0; z-index: 5; display: flex; flex-wrap: wrap; align-items: center; gap: 12px 20px;
  padding: 14px 28px; background: color-mix(in srgb, var(--bg) 88%, transparent);
  backdrop-filter: blur(10px); -webkit-backdrop-filter: blur(10px); border-bottom: 1px solid var(--line); }
.brand { display: flex; align-items: baseline; gap: 10px; min-width: 0; }
.brand h1 { margin: 0; font-size: 18px; font-weight: 650; letter-spacing: -.01em; }
.brand .where { color: var(--muted); font-size: 13px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.live { display: inline-flex; align-items: center; gap: 8px; padding: 5px 12px; border-radius: 999px;
  background: var(--panel); border: 1px solid var(--line); font-size: 13px; max-width: 100%; }
.live .dot { width: 8px; height: 8px; border-radius: 50%; background: var(--muted); flex: none; }
.live[data-state="idle"] .dot, .live[data-state="busy"] .dot { background: var(--ok); }
.live[data-state="busy"] .dot { animation: pulse 1.4s ease-in-out infinite; }
.live[data-state="down"] .dot { background: var(--bad); }
.live[data-state="paused"] .dot { background: var(--warn); }
@keyframes pulse { 50% { opacity: .35; } }
.search { margin-left: auto; position: relative; }
.search input { width: min(360px, 80vw); padding: 8px 12px 8px 32px; border-radius: 9px; border: 1px solid var(--line);
  background: var(--panel); color: var(--text); font: inherit; outline: none; }
.search input:focus { border-color: var(--accent); box-shadow: 0 0 0 3px color-mix(in srgb, var(--accent) 25%, transparent); }
.search svg { position: absolute; left: 10px; top: 50%; transform: translateY(-50%); width: 14px; height: 14px;
  stroke: var(--muted); fill: none; stroke-width: 2; }
.wrap { padding: 18px 28px 48px; max-width: 1680px; margin: 0 auto; }
.down-note { margin: 0 0 16px; padding: 10px 14px; border-radius: 10px; border: 1px solid var(--line);
  background: var(--panel); color: var(--muted); }
.down-note code, .empty code { background: var(--chip); padding: 1px 6px; border-radius: 5px; color: var(--text); }
.now { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 300px); gap: 18px; margin: 0 0 18px; padding: 14px 16px;
  border: 1px solid var(--line); border-radius: 12px; background: var(--panel); box-shadow: var(--shadow); }
.now h2, .queue h2 { margin: 0 0 4px; font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); font-weight: 600; }
.now .job-name { font-weight: 600; }
.now .job-prompt { color: var(--muted); display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }
.bar { height: 6px; border-radius: 3px; background: var(--chip); overflow: hidden; margin: 10px 0 6px; }
.bar > span { display: block; height: 100%; width: 0; background: var(--accent); transition: width .4s ease; }
.now .step { font-size: 12.5px; color: var(--muted); font-variant-numeric: tabular-nums; }
.queue ol { margin: 0; padding-left: 18px; }
.queue li { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.queue .none { color: var(--muted); }
.banner { margin: 0 0 16px; padding: 10px 14px; border-radius: 10px; background: var(--accent); color: var(--accent-text);
  display: flex; gap: 12px; align-items: center; }
.banner button { margin-left: auto; border: 0; border-radius: 7px; padding: 5px 12px; background: var(--accent-text); color: var(--accent); cursor: pointer; }
.tabs { display: flex; gap: 4px; margin: 0 0 16px; border-bottom: 1px solid var(--line); }
.tabs button { border: 0; background: none; padding: 8px 12px; cursor: pointer; color: var(--muted);
  border-bottom: 2px solid transparent; margin-bottom: -1px; font-weight: 550; }
.tabs button[aria-selected="true"] { color: var(--text); border-bottom-color: var(--text); }
.tabs .count { font-weight: 450; color: var(--muted); margin-left: 4px; font-variant-numeric: tabular-nums; }
.tabs button.has-failed .count { color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 18px; }
.card { display: flex; flex-direction: column; background: var(--panel); border: 1px solid var(--line); border-radius: 12px;
  overflow: hidden; box-shadow: var(--shadow); min-width: 0; }
.media { position: relative; display: block; width: 100%; aspect-ratio: 16 / 10; padding: 0; border: 0; margin: 0;
  background: var(--media); cursor: pointer; overflow: hidden; }
.media img { width: 100%; height: 100%; object-fit: contain; display: block; }
.media .noposter { color: #777; font-size: 28px; display: grid; place-items: center; height: 100%; }
.media .play { position: absolute; inset: 0; margin: auto; width: 46px; height: 46px; border-radius: 50%;
  background: rgba(0,0,0,.55); opacity: 0; transition: opacity .15s; }
.media .play::after { content: ""; position: absolute; left: 18px; top: 14px; border-left: 14px solid #fff;
  border-top: 9px solid transparent; border-bottom: 9px solid transparent; }
.media:hover .play, .media:focus-visible .play { opacity: 1; }
.media .len, .media .hit { position: absolute; font-size: 11.5px; padding: 2px 7px; border-radius: 6px; color: #fff;
  background: rgba(0,0,0,.62); font-variant-numeric: tabular-nums; }
.media .len { right: 8px; bottom: 8px; }
.media .hit { left: 8px; top: 8px; background: rgba(31,138,76,.88); }
.card .body { padding: 12px 14px 12px; display: flex; flex-direction: column; gap: 8px; flex: 1; }
.card .prompt { margin: 0; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.facts { display: flex; flex-wrap: wrap; gap: 5px; }
.chip { font-size: 11.5px; line-height: 1.5; padding: 1px 7px; border-radius: 6px; background: var(--chip); color: var(--muted);
  white-space: nowrap; font-variant-numeric: tabular-nums; }
.chip.cache-hit { color: var(--ok); }
.chip.seed { color: var(--text); }
.card .meta { font-size: 12px; color: var(--muted); }
.card .actions { display: flex; gap: 6px; margin-top: auto; align-items: center; }
.btn { border: 1px solid var(--line); background: transparent; border-radius: 7px; padding: 4px 10px; font-size: 12.5px; cursor: pointer; }
.btn:hover { background: var(--chip); }
.btn.primary { background: var(--accent); color: var(--accent-text); border-color: var(--accent); }
.card .actions a { margin-left: auto; font-size: 12.5px; }
.more { display: block; margin: 22px auto 0; }
.empty { color: var(--muted); padding: 36px 0; text-align: center; }
.fails { display: flex; flex-direction: column; gap: 12px; }
.fail { background: var(--panel); border: 1px solid var(--line); border-left: 3px solid var(--bad); border-radius: 10px; padding: 12px 16px; }
.fail-head { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.fail h3 { margin: 0; font-size: 15px; }
.fail .when, .fail .src { color: var(--muted); font-size: 12.5px; }
.fail .status { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--bad); font-weight: 650; }
.fail .message { margin: 6px 0 2px; font-weight: 550; white-space: pre-wrap; overflow-wrap: anywhere; }
.fail .hint { margin: 2px 0; color: var(--muted); }
.fail .prompt { margin: 4px 0; color: var(--muted); }
.fail details { margin-top: 6px; }
.fail summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--chip); padding: 10px 12px; border-radius: 8px;
  font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, "DejaVu Sans Mono", monospace; margin: 6px 0 0; }
.links { display: flex; gap: 14px; font-size: 12.5px; margin-top: 6px; flex-wrap: wrap; }
dialog { border: 0; border-radius: 14px; padding: 0; background: var(--panel); color: var(--text); max-width: min(1180px, 94vw);
  width: 100%; max-height: 92vh; box-shadow: 0 20px 60px rgba(0,0,0,.35); }
dialog::backdrop { background: rgba(10,10,12,.62); }
.dlg { display: flex; flex-direction: column; max-height: 92vh; }
.dlg-head { display: flex; align-items: center; gap: 12px; padding: 12px 16px; border-bottom: 1px solid var(--line); }
.dlg-head h2 { margin: 0; font-size: 15px; flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.dlg-head .x { border: 0; background: var(--chip); width: 28px; height: 28px; border-radius: 50%; cursor: pointer; font-size: 15px; line-height: 1; }
.dlg-body { overflow: auto; padding: 16px; }
.player-body { display: grid; grid-template-columns: minmax(0, 1.6fr) minmax(260px, 1fr); gap: 18px; }
.player-body video { width: 100%; max-height: 70vh; background: var(--media); border-radius: 8px; display: block; }
.details .prompt { margin: 0 0 10px; font-size: 15px; white-space: pre-wrap; }
.details .neg { margin: -4px 0 10px; color: var(--muted); }
.details table { border-collapse: collapse; width: 100%; font-size: 13px; }
.details th { text-align: left; font-weight: 500; color: var(--muted); padding: 3px 12px 3px 0; vertical-align: top; white-space: nowrap; }
.details td { padding: 3px 0; overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
.details .actions { display: flex; gap: 8px; margin-top: 14px; }
.vh { position: absolute; left: -9999px; }
.toml-dialog { max-width: min(720px, 94vw); }
.toml-dialog p { margin: 0 0 10px; color: var(--muted); }
.toml-dialog textarea { width: 100%; min-height: 300px; resize: vertical; padding: 12px; border-radius: 8px; border: 1px solid var(--line);
  background: var(--chip); color: var(--text); font: 12.5px/1.5 ui-monospace, SFMono-Regular, Menlo, "DejaVu Sans Mono", monospace; }
.toml-dialog .row { display: flex; gap: 8px; margin-top: 10px; align-items: center; }
.toml-dialog .row .spacer { flex: 1; }
@media (max-width: 760px) {
  header.top, .wrap { padding-left: 14px; padding-right: 14px; }
  .player-body, .now { grid-template-columns: 1fr; }
  .search { margin-left: 0; width: 100%; } .search input { width: 100%; }
}
"""

TEMPLATE_BODY = """</style>
</head>
<body>
<header class="top">
  <div class="brand"><h1>hotfolder</h1><span class="where" title="@WHERE@">@WHERE@</span></div>
  <div class="live" id="live" data-state="unknown" role="status" aria-live="polite"><span class="dot"></span><span id="live-text">Looking for the daemon\u2026</span></div>
  <label class="search"><svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="11" cy="11" r="7"/><path d="m20 20-4-4"/></svg>
    <input id="q" type="search" placeholder="Search prompts" autocomplete="off" spellcheck="false" aria-label="Search prompts"></label>
</header>
<div class="wrap">
  <noscript><p class="down-note">This page needs JavaScript to show the results; they are the folders beside this file.</p></noscript>
  <div id="banner" class="banner" hidden><span>New results are in.</span><button type="button" id="banner-reload">Show them</button></div>
  <p id="down-note" class="down-note" hidden></p>
  <section id="now" class="now" hidden aria-label="The daemon now">
    <div class="running" id="running"><h2>Making</h2><div class="job-name" id="now-name"></div><div class="job-prompt" id="now-prompt"></div>
      <div class="bar"><span id="now-bar"></span></div><div class="step" id="now-step"></div></div>
    <div class="queue"><h2 id="queue-title">Queue</h2><ol id="queue"></ol></div>
  </section>
  <nav class="tabs" role="tablist">
    <button type="button" role="tab" id="tab-videos" aria-selected="true">Videos<span class="count" id="count-videos"></span></button>
    <button type="button" role="tab" id="tab-failed" aria-selected="false">Failed<span class="count" id="count-failed"></span></button>
  </nav>
  <section id="videos" role="tabpanel" aria-labelledby="tab-videos">
    <div class="grid" id="grid"></div>
    <p class="empty" id="empty-videos" hidden></p>
    <button type="button" class="btn more" id="more-videos" hidden></button>
  </section>
  <section id="failed" role="tabpanel" aria-labelledby="tab-failed" hidden>
    <h2 class="vh">Failed jobs</h2>
    <div class="fails" id="failed-list"></div>
    <p class="empty" id="empty-failed" hidden></p>
    <button type="button" class="btn more" id="more-failed" hidden></button>
  </section>
</div>
<dialog id="player" aria-label="Video"><div class="dlg"><div class="dlg-head"><h2 id="player-title"></h2>
  <button type="button" class="x" data-close aria-label="Close">\u2715</button></div>
  <div class="dlg-body player-body" id="player-body"></div></div></dialog>
<dialog id="toml" class="toml-dialog" aria-label="Job file"><div class="dlg"><div class="dlg-head"><h2 id="toml-title"></h2>
  <button type="button" class="x" data-close aria-label="Close">\u2715</button></div>
  <div class="dlg-body"><p id="toml-note"></p><textarea id="toml-text" readonly spellcheck="false" aria-label="Job file (TOML)"></textarea>
  <div class="row"><button type="button" class="btn primary" id="toml-copy">Copy</button><button type="button" class="btn" id="toml-save">Save .toml</button>
  <button type="button" class="btn" id="toml-reseed" hidden>Another seed</button><span class="spacer"></span>
  <span class="meta" id="toml-status" aria-live="polite"></span></div></div></div></dialog>
"""

JS = r"""(() => {
'use strict';
const DATA = JSON.parse(document.getElementById('hotfolder-data').textContent);
const PAGE = @PAGE@, INTERVAL = @INTERVAL@;
const $ = (id) => document.getElementById(id);

function el(tag, props, ...kids) {
  const n = document.createElement(tag);
  if (props) for (const k in props) {
    const v = props[k];
    if (v == null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = v;
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of kids) if (c != null && c !== false && c !== '') n.append(c);
  return n;
}
const fold = (s) => String(s || '').normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();
const num = (x, d = 1) => (x == null || isNaN(x)) ? '' : String(Math.round(x * 10 ** d) / 10 ** d);
const secs = (s) => s == null ? '' : s < 10 ? num(s, 2) + ' s' : s < 120 ? num(s, 1) + ' s' : Math.round(s / 60) + ' min';
const clock = (s) => s == null ? '' : s < 10 ? num(s, 1) + ' s' : Math.floor(s / 60) + ':' + String(Math.round(s % 60)).padStart(2, '0');
function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const now = new Date(), t = d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
  if (d.toDateString() === now.toDateString()) return 'today ' + t;
  const o = {month: 'short', day: 'numeric'};
  if (d.getFullYear() !== now.getFullYear()) o.year = 'numeric';
  return d.toLocaleDateString([], o) + ', ' + t;
}
function ago(s) {
  if (s == null || !isFinite(s)) return 'a while';
  s = Math.max(0, s);
  if (s < 90) return Math.round(s) + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  if (s < 172800) return Math.round(s / 3600) + ' h';
  return Math.round(s / 86400) + ' days';
}

for (const r of DATA.results) r._hay = fold(r.prompt + ' ' + r.name);
for (const f of DATA.failed) f._hay = fold([f.prompt, f.name, f.source, f.message].join(' '));

// --- cards -------------------------------------------------------------------------
function chip(cls, text, title) { return text ? el('span', {class: 'chip ' + cls, text, title}) : null; }
function card(r) {
  const img = r.jpg ? el('img', {src: r.jpg, loading: 'lazy', decoding: 'async', alt: '', width: r.width, height: r.height})
                    : el('div', {class: 'noposter', text: '\u25B6'});
  const media = el('button', {class: 'media', type: 'button', title: 'Play', 'aria-label': 'Play ' + r.name, onclick: () => play(r)},
    img, el('span', {class: 'play', 'aria-hidden': 'true'}),
    r.duration != null ? el('span', {class: 'len', text: clock(r.duration)}) : null,
    r.cache_hit ? el('span', {class: 'hit', text: 'cache hit'}) : null);
  if (r.gif && r.jpg) {
    const on = () => { img.src = r.gif; }, off = () => { img.src = r.jpg; };
    media.addEventListener('pointerenter', on); media.addEventListener('pointerleave', off);
    media.addEventListener('focus', on); media.addEventListener('blur', off);
  }
  const t = r.timings || {};
  const made = r.cache_hit ? 'from the cache in ' + secs(t.total_s) : 'made in ' + secs(t.total_s);
  const detail = ['load', 'generate', 'encode'].filter((k) => t[k + '_s'] != null).map((k) => k + ' ' + secs(t[k + '_s'])).join(', ');
  return el('article', {class: 'card', 'data-folder': r.folder},
    media,
    el('div', {class: 'body'},
      el('p', {class: 'prompt', text: r.prompt, title: r.prompt}),
      el('div', {class: 'facts'},
        chip('seed', r.seed != null ? 'seed ' + r.seed : ''),
        chip('model', r.model),
        chip('size', r.width && r.height ? r.width + '\u00D7' + r.height : ''),
        chip('duration', r.duration != null ? secs(r.duration) + (r.fps ? ' \u00B7 ' + num(r.fps, 3) + ' fps' : '') : ''),
        chip('mode', r.mode),
        chip('audio', r.audio ? (r.audio === 'none' ? 'silent' : '\u266A ' + r.audio) : '', 'sound'),
        ),
      el('div', {class: 'meta'}, el('span', {class: 'when', text: when(r.finished)}), ' \u00B7 ',
        el('span', {class: 'timings', text: t.total_s != null ? made : '', title: detail})),
      el('div', {class: 'actions'},
        r.toml ? el('button', {class: 'btn again', type: 'button', text: 'Run again', onclick: () => showToml(r, false)}) : null,
        r.toml ? el('button', {class: 'btn vary', type: 'button', text: 'Variations', onclick: () => showToml(r, true)}) : null,
        el('a', {href: r.href, text: 'Folder', title: r.folder}))));
}
function failCard(f) {
  return el('article', {class: 'fail', 'data-folder': f.folder},
    el('div', {class: 'fail-head'}, el('span', {class: 'status', text: f.status}), el('h3', {text: f.name}),
      el('span', {class: 'when', text: when(f.finished)}), f.source ? el('span', {class: 'src', text: f.source}) : null),
    f.prompt ? el('p', {class: 'prompt', text: 'Prompt: ' + f.prompt}) : null,
    el('p', {class: 'message', text: f.message || 'The job failed.'}),
    f.hint ? el('p', {class: 'hint', text: f.hint}) : null,
    f.text ? el('details', null, el('summary', {text: 'error.txt'}), el('pre', {class: 'error-text', text: f.text})) : null,
    el('div', {class: 'links'}, f.error_txt ? el('a', {href: f.error_txt, text: 'error.txt'}) : null,
      f.original ? el('a', {href: f.original, text: 'the job file'}) : null, el('a', {href: f.href, text: 'folder'})));
}

// --- lists, paging, search ---------------------------------------------------------
const views = {
  videos: {all: DATA.results, items: DATA.results, shown: 0, box: $('grid'), make: card, more: $('more-videos'), empty: $('empty-videos')},
  failed: {all: DATA.failed, items: DATA.failed, shown: 0, box: $('failed-list'), make: failCard, more: $('more-failed'), empty: $('empty-failed')},
};
function more(v, n = PAGE) {
  const end = Math.min(v.items.length, v.shown + n), frag = document.createDocumentFragment();
  for (let i = v.shown; i < end; i++) frag.append(v.make(v.items[i]));
  v.box.append(frag);
  v.shown = end;
  const left = v.items.length - end;
  v.more.hidden = left <= 0;
  v.more.textContent = 'Show more (' + left.toLocaleString() + ' more)';
}
function reset(v) { v.box.replaceChildren(); v.shown = 0; more(v); }
for (const v of Object.values(views)) v.more.addEventListener('click', () => more(v));
const io = 'IntersectionObserver' in window ? new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) {
    const v = Object.values(views).find((x) => x.more === e.target);
    if (v && !v.more.hidden) { more(v); io.unobserve(e.target); io.observe(e.target); }
  }
}, {rootMargin: '900px 0px'}) : null;
if (io) for (const v of Object.values(views)) io.observe(v.more);

const q = $('q');
let tab = 'videos';
function counts(words) {
  for (const [name, v] of Object.entries(views)) {
    $('count-' + name).textContent = words ? v.items.length.toLocaleString() + ' of ' + v.all.length.toLocaleString()
                                           : v.all.length.toLocaleString();
    v.empty.hidden = v.items.length > 0;
    v.empty.textContent = words ? 'Nothing matches \u201C' + q.value.trim() + '\u201D.' : (name === 'videos'
      ? 'No videos yet. Drop a prompt file into the inbox folder next to this one.' : 'No failed jobs.');
  }
  $('tab-failed').classList.toggle('has-failed', views.failed.items.length > 0);
}
function filter() {
  const words = fold(q.value).split(/\s+/).filter(Boolean);
  for (const v of Object.values(views)) {
    v.items = words.length ? v.all.filter((x) => words.every((w) => x._hay.includes(w))) : v.all;
    reset(v);
  }
  counts(words.length > 0);
  remember();
}
let typing;
q.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(filter, 120); });
q.addEventListener('keydown', (e) => { if (e.key === 'Enter') { clearTimeout(typing); filter(); } });
function select(name) {
  tab = name;
  for (const n of Object.keys(views)) {
    $(n).hidden = n !== name;
    $('tab-' + n).setAttribute('aria-selected', String(n === name));
  }
  remember();
}
$('tab-videos').addEventListener('click', () => select('videos'));
$('tab-failed').addEventListener('click', () => select('failed'));
function remember() {  // the search and tab survive the reload that shows new results
  const p = new URLSearchParams();
  if (q.value.trim()) p.set('q', q.value.trim());
  if (tab !== 'videos') p.set('tab', tab);
  const hash = p.toString();
  try { history.replaceState(null, '', hash ? '#' + hash : location.pathname + location.search); } catch (e) { /* file:// in some browsers */ }
}

// --- the player --------------------------------------------------------------------
function row(label, value) { return value === '' || value == null ? null : el('tr', null, el('th', {text: label}), el('td', {text: String(value)})); }
function play(r) {
  const t = r.timings || {};
  const video = el('video', {src: r.video, poster: r.jpg, controls: true, autoplay: true, loop: true, playsinline: true, preload: 'auto'});
  const links = el('div', {class: 'links'},
    ...[['video', 'MP4'], ['gif', 'GIF'], ['jpg', 'thumbnail'], ['meta', 'metadata'], ['log', 'log'], ['job', 'job file']]
      .filter(([k]) => r[k]).map(([k, label]) => el('a', {href: r[k], text: label})), el('a', {href: r.href, text: 'folder'}));
  $('player-title').textContent = r.name + ' \u00B7 ' + when(r.finished);
  $('player-body').replaceChildren(
    el('div', null, video),
    el('div', {class: 'details'},
      el('p', {class: 'prompt', text: r.prompt}),
      r.negative_prompt ? el('p', {class: 'neg', text: 'Not: ' + r.negative_prompt}) : null,
      el('table', null, el('tbody', null,
        row('Seed', r.seed != null ? r.seed + (r.seed_random ? ' (drawn)' : '') : ''),
        row('Model', r.model), row('Backend', [r.backend, r.device].filter(Boolean).join(' on ')),
        row('Size', r.width && r.height ? r.width + ' \u00D7 ' + r.height : ''),
        row('Length', r.duration != null ? secs(r.duration) + ', ' + r.num_frames + ' frames at ' + num(r.fps, 3) + ' fps' : ''),
        row('Mode', [r.mode, r.steps ? r.steps + ' steps' : '', r.format].filter(Boolean).join(', ')),
        row('Sound', r.audio), row('Cache', r.cache_hit ? 'hit: the model was not used' : 'miss: made by the model'),
        row('Timings', ['load', 'generate', 'encode', 'total', 'wait'].filter((k) => t[k + '_s'] != null)
          .map((k) => k + ' ' + secs(t[k + '_s'])).join(' \u00B7 ')),
        row('Finished', when(r.finished)), row('Job', r.source),
        row('Files', (r.attachments || []).join(', ')),
        row('Adjusted', (r.adjustments || []).join('; ')), row('Note', r.warning))),
      el('div', {class: 'actions'},
        r.toml ? el('button', {class: 'btn primary', type: 'button', text: 'Run again', onclick: () => showToml(r, false)}) : null,
        r.toml ? el('button', {class: 'btn', type: 'button', text: 'Variations', onclick: () => showToml(r, true)}) : null),
      links));
  $('player').showModal();
}
$('player').addEventListener('close', () => {
  for (const v of $('player-body').querySelectorAll('video')) { v.pause(); v.removeAttribute('src'); v.load(); }
  $('player-body').replaceChildren();
});
for (const d of document.querySelectorAll('dialog')) {
  d.addEventListener('click', (e) => { if (e.target === d || e.target.hasAttribute('data-close')) d.close(); });
}

// --- Run again and Variations --------------------------------------------------------
let tomlOf = null;
const newSeed = () => crypto.getRandomValues(new Uint32Array(1))[0];
function variation(r, seed) {
  return r.toml.replace(/^seed = \d+$/m, 'seed = ' + seed)
    .replace(/^# Run again: .*$/m, '# A variation of ' + r.name + ': the same prompt with seed ' + seed + ' (it was ' + r.seed + ').')
    .replace(/^# Save it as .*$/m, '# Save it as a .toml file in the inbox to make it.');
}
function showToml(r, vary) {
  let seed = vary ? newSeed() : r.seed;
  const fill = () => {
    $('toml-text').value = vary ? variation(r, seed) : r.toml;
    tomlOf = {name: vary ? r.name + '-' + seed : r.name};
  };
  $('toml-title').textContent = (vary ? 'Variation: ' : 'Run again: ') + r.name;
  $('toml-note').textContent = vary
    ? 'The same job with a new seed: save it into the inbox (or copy it there) for another take on this prompt.'
    : 'This job file makes the same video: save it into the inbox (or copy it there). With the same prompt and seed it comes straight from the cache.';
  $('toml-reseed').hidden = !vary;
  $('toml-reseed').onclick = () => { seed = newSeed(); fill(); };
  $('toml-status').textContent = '';
  fill();
  if ($('player').open) $('player').close();
  $('toml').showModal();
}
$('toml-copy').addEventListener('click', async () => {
  const text = $('toml-text').value;
  let ok = false;
  try { await navigator.clipboard.writeText(text); ok = true; } catch (e) { ok = false; }
  if (!ok) { $('toml-text').focus(); $('toml-text').select(); try { ok = document.execCommand('copy'); } catch (e) { ok = false; } }
  $('toml-status').textContent = ok ? 'Copied.' : 'Select the text and copy it.';
});
$('toml-save').addEventListener('click', () => {
  const url = URL.createObjectURL(new Blob([$('toml-text').value], {type: 'application/toml'}));
  const a = el('a', {href: url, download: ((tomlOf && tomlOf.name) || 'job') + '.toml'});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  $('toml-status').textContent = 'Saved to your downloads: move it into the inbox.';
});

// --- the live view -------------------------------------------------------------------
const STAGES = {loading: 'loading the model', generating: 'generating', denoise: 'denoising', encoding: 'encoding', decode: 'decoding'};
function showStatus(st) {
  const dm = (st && st.daemon) || {};
  const age = typeof dm.heartbeat_unix === 'number' ? Date.now() / 1000 - dm.heartbeat_unix : null;
  const alive = dm.state === 'running' && age != null && age < DATA.stale_s;
  const live = $('live'), text = $('live-text'), note = $('down-note');
  window.hotfolderAlive = alive;
  if (!alive) {
    live.dataset.state = 'down';
    text.textContent = !st || !dm.state ? 'The daemon is not running'
      : dm.state === 'stopped' ? 'The daemon is not running (stopped ' + ago(age) + ' ago)'
      : 'The daemon is not running (no heartbeat for ' + ago(age) + ')';
    note.hidden = false;
    note.replaceChildren('The daemon is not running, so new prompt files wait in the inbox. Start it with ',
      el('code', {text: 'hotfolder run'}), ', or ', el('code', {text: 'hotfolder agent install'}), ' to start it at login.');
    $('now').hidden = true;
  } else {
    const running = st.running, queue = st.queue || [];
    live.dataset.state = running ? 'busy' : 'idle';
    const p = (running && running.progress) || {};
    const others = st.running_others || [];  // several workers (a cluster): the others' jobs, named after the first
    text.textContent = running ? 'Running: making ' + running.name + (p.percent ? ' (' + Math.round(p.percent) + '%)' : '')
      + (others.length ? ' and ' + others.map((o) => o.name + (o.worker ? ' on ' + o.worker : '')).join(', ') : '')
      : queue.length ? 'Running: ' + queue.length + ' queued' : 'Running: waiting for prompt files';
    note.hidden = !st.paused;
    if (st.paused) {  // e.g. a full disk: jobs wait until there is room again
      live.dataset.state = 'paused';
      text.textContent = 'Paused: ' + String(st.paused).split(';')[0];
      note.replaceChildren('Paused: ' + st.paused);
    }
    $('now').hidden = !running && !queue.length;
    $('running').hidden = !running;
    if (running) {
      $('now-name').textContent = running.name || running.source || '';
      $('now-prompt').textContent = running.prompt || '';
      $('now-bar').style.width = Math.max(0, Math.min(100, p.percent || 0)) + '%';
      const stage = STAGES[p.stage] || p.stage || 'starting';
      $('now-step').textContent = [stage, p.total_steps ? 'step ' + p.step + ' of ' + p.total_steps : '',
        p.percent ? Math.round(p.percent) + '%' : '', p.eta_s != null ? 'about ' + ago(p.eta_s) + ' left' : ''].filter(Boolean).join(' \u00B7 ');
    }
    const total = st.queue_total != null ? st.queue_total : queue.length;
    $('queue-title').textContent = 'Queue' + (total ? ' (' + total + ')' : '');
    $('queue').replaceChildren(...(queue.length ? queue.slice(0, 8).map((j) => el('li', {text: j.name || j.source, title: j.source}))
      : [el('li', {class: 'none', text: 'empty'})]), ...(total > 8 ? [el('li', {class: 'none', text: '+ ' + (total - 8) + ' more'})] : []));
  }
  if (st && st.gallery && st.gallery !== DATA.token) newResults(st.gallery);
}
function newResults(token) {
  let seen = null;
  try { seen = sessionStorage.getItem('hotfolder-reloaded'); } catch (e) { seen = null; }
  if (seen === token) return;  // this page is already the newest one written: never reload in a loop
  const busy = $('player').open || $('toml').open || document.activeElement === q;
  if (busy) { $('banner').hidden = false; return; }
  try { sessionStorage.setItem('hotfolder-reloaded', token); } catch (e) { /* no storage: reload anyway */ }
  location.reload();
}
$('banner-reload').addEventListener('click', () => location.reload());
function poll() {
  window.hotfolderStatus = undefined;
  const s = document.createElement('script');
  s.src = DATA.status_script + '?t=' + Date.now();
  s.onload = () => { s.remove(); showStatus(window.hotfolderStatus || null); };
  s.onerror = () => { s.remove(); showStatus(null); };
  document.head.append(s);
}

// --- start ---------------------------------------------------------------------------
const start = new URLSearchParams(location.hash.slice(1));
if (start.get('q')) q.value = start.get('q');
filter();
select(start.get('tab') === 'failed' ? 'failed' : 'videos');
document.title = 'hotfolder \u00B7 ' + DATA.results.length.toLocaleString() + ' video' + (DATA.results.length === 1 ? '' : 's');
window.hotfolderRendered = performance.now();
poll();
setInterval(poll, INTERVAL);
})();
"""
