(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gallery-data").textContent);
  var state = { type: "", sort: "id", dir: "asc", page: 0, size: DATA.page_size };
  var traceWaiters = {}, traceStore = {};
  var MAX_W = 260;  // displayed image width (px); the CSS caps figures at the same width
  var el = function (tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") n.textContent = attrs[k];
      else if (k === "style") n.setAttribute("style", attrs[k]);
      else n.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) n.appendChild(c); });
    return n;
  };
  function num(v) { if (v === null || v === undefined) return NaN; if (v === "inf") return Infinity; if (v === "-inf") return -Infinity; return +v; }
  function fmt(v) {
    var x = num(v);
    if (isNaN(x)) return "–";
    if (!isFinite(x)) return x > 0 ? "∞" : "−∞";
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
    return String(+x.toPrecision(4));
  }
  function sampleScore(s, runIdx, metric) {
    var vals = [];
    s.outputs.forEach(function (o) {
      if (o.run !== runIdx) return;
      o.rows.forEach(function (r) { var x = num(r.m[metric]); if (!isNaN(x)) vals.push(x); });
    });
    if (!vals.length) return NaN;
    if (vals.some(function (x) { return !isFinite(x); })) return vals.reduce(function (a, b) { return a + b; });
    return vals.reduce(function (a, b) { return a + b; }, 0) / vals.length;
  }
  function natural(a, b) {  // ciebench.results.natural_key: digit runs as numbers, before text; spelling breaks ties
    var ra = a.match(/[0-9]+|[^0-9]+/g) || [], rb = b.match(/[0-9]+|[^0-9]+/g) || [];
    for (var i = 0; i < Math.min(ra.length, rb.length); i++) {
      var da = /^[0-9]/.test(ra[i]), db = /^[0-9]/.test(rb[i]);
      if (da !== db) return da ? -1 : 1;
      var x = da ? +ra[i] : ra[i].toLowerCase(), y = db ? +rb[i] : rb[i].toLowerCase();
      if (x !== y) return x < y ? -1 : 1;
    }
    if (ra.length !== rb.length) return ra.length - rb.length;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function filtered() {
    var list = DATA.samples.filter(function (s) { return !state.type || s.edit_type === state.type; });
    if (state.sort === "id") {
      list.sort(function (a, b) { return natural(a.id, b.id); });
      if (state.dir === "desc") list.reverse();
    } else {
      var parts = state.sort.split("|"), runIdx = +parts[0], metric = +parts[1];
      var keyed = list.map(function (s) { return { s: s, k: sampleScore(s, runIdx, metric) }; });
      keyed.sort(function (a, b) {
        var an = isNaN(a.k), bn = isNaN(b.k);
        if (an || bn) return an === bn ? natural(a.s.id, b.s.id) : (an ? 1 : -1);  // undefined last
        if (a.k === b.k) return natural(a.s.id, b.s.id);
        return state.dir === "asc" ? (a.k < b.k ? -1 : 1) : (a.k > b.k ? -1 : 1);
      });
      list = keyed.map(function (x) { return x.s; });
    }
    return list;
  }
  function imageFigure(info, caption, captionNode) {
    var tw = info ? info.w : 160;
    var fig = el("figure", { style: "--tw:" + tw });
    if (info) {
      var img = el("img", { src: info.thumb, width: String(info.w), height: String(info.h), loading: "lazy",
                            decoding: "async", alt: caption });
      fig.appendChild(info.full ? el("a", { href: info.full, target: "_blank", title: "full size " + info.size.join("×") }, [img]) : img);
    }
    var cap = el("figcaption");
    if (captionNode) cap.appendChild(captionNode); else cap.textContent = caption;
    fig.appendChild(cap);
    return fig;
  }
  function metricTable(row, run) {
    var t = el("table", { class: "m" });
    DATA.metrics.forEach(function (m, j) {
      if (!run.has[j]) return;
      t.appendChild(el("tr", null, [el("td", { text: m.title + (m.higher ? " ↑" : " ↓") }), el("td", { class: "v", text: fmt(row.m[j]) })]));
    });
    Object.keys(row.notes || {}).forEach(function (k) {
      t.appendChild(el("tr", null, [el("td", { text: k }), el("td", { class: "v status-bad", text: row.notes[k] })]));
    });
    return t;
  }
  function traceBlock(runIdx, sample, row, title) {
    var d = el("details", { class: "trace" });
    d.appendChild(el("summary", { text: title }));
    var body = el("div", { class: "trace-body" }, [el("span", { text: "loading…" })]);
    d.appendChild(body);
    d.addEventListener("toggle", function () {
      if (!d.open || d.getAttribute("data-loaded")) return;
      d.setAttribute("data-loaded", "1");
      var key = runIdx + "|" + sample.id + "|" + row.seed;
      if (traceStore[key]) { renderTrace(body, traceStore[key]); return; }
      traceWaiters[key] = function (t) { renderTrace(body, t); };
      var s = el("script", { src: row.trace });
      s.onerror = function () { body.textContent = "trace file could not be loaded: " + row.trace; };
      document.body.appendChild(s);
    });
    return d;
  }
  function renderTrace(body, t) {
    var trace = t.trace;
    body.textContent = "";
    if (t.images && t.images.length) {
      var strip = el("div", { class: "row" });
      t.images.forEach(function (info) { strip.appendChild(imageFigure(info, info.name)); });
      body.appendChild(strip);
    }
    if (trace && typeof trace === "object" && Array.isArray(trace.steps)) {
      var rest = {};
      Object.keys(trace).forEach(function (k) { if (k !== "steps") rest[k] = trace[k]; });
      if (Object.keys(rest).length) body.appendChild(el("pre", { text: JSON.stringify(rest, null, 2) }));
      trace.steps.forEach(function (step, i) {
        var name = (step && typeof step === "object") ? (step.name || step.step || step.stage || step.type || "") : String(step);
        body.appendChild(el("details", null, [el("summary", { text: "step " + (i + 1) + (name ? ": " + name : "") }),
                                              el("pre", { text: JSON.stringify(step, null, 2) })]));
      });
    } else {
      body.appendChild(el("pre", { text: JSON.stringify(trace, null, 2) }));
    }
    body.setAttribute("data-rendered", "1");
  }
  window.ciebenchTrace = function (runIdx, sampleId, seed, trace, images) {
    var key = runIdx + "|" + sampleId + "|" + seed;
    traceStore[key] = { trace: trace, images: images || [] };
    if (traceWaiters[key]) { traceWaiters[key](traceStore[key]); delete traceWaiters[key]; }
  };
  function sampleCard(s) {
    var card = el("section", { class: "sample", id: "s-" + s.id, "data-sample-id": s.id, "data-edit-type": s.edit_type });
    card.appendChild(el("h2", null, [el("span", { text: s.id }), el("span", { class: "badge", text: s.edit_type })]));
    if (s.instruction) card.appendChild(el("div", { class: "instr", text: s.instruction }));
    if (s.clip_text && s.clip_text.length) card.appendChild(el("div", { class: "clip", text: "CLIP text: " + s.clip_text.join(" · ") }));
    var row = el("div", { class: "row" }), traces = [];
    if (s.source) row.appendChild(imageFigure(s.source, "source"));
    if (s.overlay) row.appendChild(imageFigure(s.overlay, "mask (edit region)"));
    s.outputs.forEach(function (o) {
      var run = DATA.runs[o.run];
      o.rows.forEach(function (r) {
        var name = el("div", { class: "runname" }, [el("span", { class: "swatch", style: "background:" + run.colour }),
          el("span", { text: run.label + (o.rows.length > 1 ? " · seed " + r.seed : "") + (run.table ? " (" + run.table + ")" : "") })]);
        var cap = el("div", null, [name]);
        if (r.status !== "ok") cap.appendChild(el("div", { class: "status-bad", text: r.status + (r.error ? ": " + r.error : "") }));
        cap.appendChild(metricTable(r, run));
        var fig;
        if (r.img) fig = imageFigure(r.img, run.label, cap);
        else {
          var w0 = s.source ? s.source.w : 160, h0 = s.source ? s.source.h : 120;
          var w = Math.min(w0, MAX_W), h = Math.round(h0 * w / w0);
          fig = el("figure", { style: "--tw:" + w }, [el("div", { class: "placeholder", style: "width:" + w + "px;height:" + h + "px",
                     text: "no image (" + (r.status || "missing") + ")" }), el("figcaption", null, [cap])]);
        }
        if (r.trace) traces.push(traceBlock(o.run, s, r, "Reasoning trace: " + run.label + (o.rows.length > 1 ? " · seed " + r.seed : "")));
        row.appendChild(fig);
      });
    });
    card.appendChild(row);
    traces.forEach(function (t) { card.appendChild(t); });
    return card;
  }
  var cache = { key: null, list: null };
  function current() {  // the filtered, sorted list; recomputed (with the index) only when it changes
    var key = state.type + "\u0000" + state.sort + "\u0000" + state.dir;
    if (cache.key !== key) { cache.key = key; cache.list = filtered(); renderIndex(cache.list); }
    return cache.list;
  }
  function render() {
    var list = current();
    var pages = Math.max(1, Math.ceil(list.length / state.size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var start = state.page * state.size, end = Math.min(list.length, start + state.size);
    var box = document.getElementById("samples");
    box.textContent = "";
    list.slice(start, end).forEach(function (s) { box.appendChild(sampleCard(s)); });
    document.getElementById("status").textContent = list.length
      ? "Showing " + (start + 1) + "–" + end + " of " + list.length + " samples" + (state.type ? " (" + state.type + ")" : "")
      : "No samples";
    document.getElementById("pageinfo").textContent = "page " + (state.page + 1) + " / " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    writeHash();
  }
  function renderIndex(list) {
    var ol = document.getElementById("idlist");
    var frag = document.createDocumentFragment();
    list.forEach(function (s, i) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.href = "#s-" + encodeURIComponent(s.id); a.textContent = s.id;
      a.setAttribute("data-sample-id", s.id); a.setAttribute("data-pos", String(i));
      li.appendChild(a); frag.appendChild(li);
    });
    ol.textContent = "";
    ol.appendChild(frag);
    document.getElementById("idcount").textContent = list.length + " samples";
  }
  function onIndexClick(ev) {  // one delegated handler for thousands of links
    var a = ev.target.closest("a[data-pos]");
    if (!a) return;
    ev.preventDefault();
    state.page = Math.floor(+a.getAttribute("data-pos") / state.size);
    render();
    var target = document.getElementById("s-" + a.getAttribute("data-sample-id"));
    if (target) target.scrollIntoView();
  }
  function writeHash() {
    var h = "type=" + encodeURIComponent(state.type) + "&sort=" + encodeURIComponent(state.sort) + "&dir=" + state.dir + "&page=" + (state.page + 1) + "&size=" + state.size;
    if (location.hash.slice(1) !== h) history.replaceState(null, "", "#" + h);
  }
  function readHash() {
    location.hash.slice(1).split("&").forEach(function (kv) {
      var p = kv.split("="), k = p[0], v = decodeURIComponent(p[1] || "");
      if (k === "type") state.type = v;
      else if (k === "sort" && v) state.sort = v;
      else if (k === "dir" && (v === "asc" || v === "desc")) state.dir = v;
      else if (k === "page" && +v > 0) state.page = +v - 1;
      else if (k === "size" && +v > 0) state.size = +v;
    });
  }
  function setup() {
    readHash();
    var types = {};
    DATA.samples.forEach(function (s) { types[s.edit_type] = (types[s.edit_type] || 0) + 1; });
    var typeSel = document.getElementById("type");
    typeSel.appendChild(el("option", { value: "", text: "all (" + DATA.samples.length + ")" }));
    Object.keys(types).sort().forEach(function (t) { typeSel.appendChild(el("option", { value: t, text: t + " (" + types[t] + ")" })); });
    typeSel.value = state.type;
    var sortSel = document.getElementById("sort");
    sortSel.appendChild(el("option", { value: "id", text: "sample id" }));
    DATA.runs.forEach(function (r, i) {
      var group = el("optgroup", { label: r.label + (r.table ? " (" + r.table + ")" : "") });
      DATA.metrics.forEach(function (m, j) { if (r.has[j]) group.appendChild(el("option", { value: i + "|" + j, text: r.label + ": " + m.title })); });
      sortSel.appendChild(group);
    });
    sortSel.value = state.sort;
    if (sortSel.value !== state.sort) { state.sort = "id"; sortSel.value = "id"; }
    var dirSel = document.getElementById("dir"); dirSel.value = state.dir;
    var sizeSel = document.getElementById("size");
    [10, 20, 50, 100].concat([state.size]).filter(function (v, i, a) { return a.indexOf(v) === i; }).sort(function (a, b) { return a - b; })
      .forEach(function (v) { sizeSel.appendChild(el("option", { value: String(v), text: String(v) })); });
    sizeSel.value = String(state.size);
    typeSel.addEventListener("change", function () { state.type = typeSel.value; state.page = 0; render(); });
    sortSel.addEventListener("change", function () {
      state.sort = sortSel.value; state.page = 0;
      if (state.sort !== "id") {  // default to best-first for the chosen metric
        var m = DATA.metrics[+state.sort.split("|")[1]];
        state.dir = m && !m.higher ? "asc" : "desc"; dirSel.value = state.dir;
      }
      render();
    });
    dirSel.addEventListener("change", function () { state.dir = dirSel.value; state.page = 0; render(); });
    sizeSel.addEventListener("change", function () { state.size = +sizeSel.value; state.page = 0; render(); });
    document.getElementById("prev").addEventListener("click", function () { state.page -= 1; render(); window.scrollTo(0, 0); });
    document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); window.scrollTo(0, 0); });
    document.getElementById("idlist").addEventListener("click", onIndexClick);
    var legend = document.getElementById("legend");
    DATA.runs.forEach(function (r) {
      legend.appendChild(el("span", null, [el("span", { class: "swatch", style: "background:" + r.colour }),
        el("span", { text: r.label + " — " + r.protocol + " on " + r.dataset })]));
    });
    var notes = document.getElementById("notes");
    DATA.notes.forEach(function (n) { notes.appendChild(el("div", { text: n })); });
    render();
  }
  window.ciebenchGallery = { data: DATA, state: state, render: render, filtered: filtered };
  setup();
})();
