// geoseg's explorer, the browser side: it draws what Python holds and sends what the person does.
// The imagery and the polygons arrive as binary buffers over the widget's comm (no second server);
// polygons are drawn by deck.gl on the GPU; the score slider is a GPU filter (no re-upload).
import { Deck, MapView, WebMercatorViewport } from "@deck.gl/core";
import { BitmapLayer, GeoJsonLayer, PathLayer, PolygonLayer, ScatterplotLayer } from "@deck.gl/layers";
import { TileLayer } from "@deck.gl/geo-layers";
import { DataFilterExtension } from "@deck.gl/extensions";
import earcut from "earcut";

const MODES = [
  ["pan", "Pan / select", "Drag to pan; click an object to see it and review it"],
  ["positive", "+ Example", "Drag a box around an example of what to find"],
  ["negative", "− Example", "Drag a box around an example of what not to find"],
  ["object", "Object", "Click an object to outline it alone (Alt-click: not this)"],
  ["review", "Review box", "Drag a box: every object in it is selected, then A / R / U"],
];
const REVIEW_COLOR = { 1: [40, 200, 80], 2: [220, 40, 40] };
// Past this many objects only the selected ones are outlined: outlines cost far more than fills to draw
// (they are most of a frame where WebGL runs in software), and the fills carry the colours.
const OUTLINED = 20000;

function bytes(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}
function typed(Type, view) {
  const b = bytes(view).slice(); // aligned copy
  return new Type(b.buffer);
}
function hex(color) {
  const n = parseInt(color.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// deck.gl's binary GeoJSON (loaders.gl layout) from our buffers; triangles by earcut, so holes stay holes
function binary(msg, buffers) {
  const positions = typed(Float64Array, buffers[0]);
  const owners = typed(Uint32Array, buffers[1]);
  const polys = typed(Uint32Array, buffers[2]);
  const rings = typed(Uint32Array, buffers[3]);
  const triangles = [];
  let r = 0;
  for (let p = 0; p + 1 < polys.length; p++) {
    const start = polys[p], stop = polys[p + 1];
    const holes = [];
    while (r < rings.length && rings[r] < start) r++;
    for (let k = r + 1; k < rings.length && rings[k] < stop; k++) holes.push(rings[k] - start);
    const local = earcut(positions.subarray(2 * start, 2 * stop), holes, 2);
    for (const i of local) triangles.push(i + start);
  }
  const n = msg.features;
  const properties = new Array(n);
  for (let i = 0; i < n; i++) properties[i] = { i };
  const none = () => ({ value: new Uint32Array(0), size: 1 });
  return {
    count: n,
    data: {
      points: { type: "Point", positions: { value: new Float64Array(0), size: 2 }, featureIds: none(),
        globalFeatureIds: none(), numericProps: {}, properties: [] },
      lines: { type: "LineString", positions: { value: new Float64Array(0), size: 2 },
        pathIndices: { value: new Uint32Array([0]), size: 1 }, featureIds: none(), globalFeatureIds: none(),
        numericProps: {}, properties: [] },
      polygons: { type: "Polygon", positions: { value: positions, size: 2 },
        polygonIndices: { value: polys, size: 1 }, primitivePolygonIndices: { value: rings, size: 1 },
        triangles: { value: new Uint32Array(triangles), size: 1 },
        featureIds: { value: owners, size: 1 }, globalFeatureIds: { value: owners, size: 1 },
        numericProps: {}, properties },
    },
  };
}

// each feature's rings, as [first vertex, vertex past the last]
function ringsOf(count, owners, rings) {
  const out = Array.from({ length: count }, () => []);
  for (let r = 0; r + 1 < rings.length; r++) out[owners[rings[r]]].push([rings[r], rings[r + 1]]);
  return out;
}

// a map tile's image, on the tile's own bounds
function bitmap(props) {
  const [[west, south], [east, north]] = props.tile.boundingBox;
  return props.data ? new BitmapLayer(props, { data: null, image: props.data, bounds: [west, south, east, north] })
    : null;
}

function element(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function render({ model, el }) {
  // --- the controls ---
  const prompt = element("input", { type: "text", class: "gs-prompt", placeholder: "a prompt: building, tree…",
    "aria-label": "prompt" });
  prompt.value = model.get("prompt");
  const run = element("button", { class: "gs-run", title: "Segment the view (Enter)" }, ["Run"]);
  const runAll = element("button", { class: "gs-run-all", title: "Segment the whole source in the background" },
    ["Run all"]);
  const cancel = element("button", { class: "gs-cancel", title: "Stop the run" }, ["Cancel"]);
  const slider = element("input", { type: "range", min: "0", max: "1", step: "0.01", class: "gs-threshold",
    "aria-label": "score threshold" });
  const sliderValue = element("span", { class: "gs-threshold-value" });
  const modes = element("div", { class: "gs-modes", role: "radiogroup" });
  for (const [name, label, title] of MODES) {
    modes.append(element("button", { class: "gs-mode", "data-mode": name, title,
      onclick: () => { model.set("mode", name); model.save_changes(); } }, [label]));
  }
  const status = element("div", { class: "gs-status", role: "status" });
  const legend = element("div", { class: "gs-legend" });
  const info = element("div", { class: "gs-info" });
  const mapDiv = element("div", { class: "gs-map", tabindex: "0" });
  const credit = element("div", { class: "gs-credit" });
  el.classList.add("geoseg-explorer");
  el.append(
    element("div", { class: "gs-bar" }, [prompt, run, runAll, cancel,
      element("label", { class: "gs-slider" }, ["score ≥ ", slider, sliderValue]), modes]),
    element("div", { class: "gs-body" }, [mapDiv, element("div", { class: "gs-side" }, [legend, info])]),
    element("div", { class: "gs-foot" }, [status, credit]),
  );

  // --- what the map holds ---
  let results = null; // {count, data, uid, score, label, review, area, level, labels, colors}
  let found = []; // provisional batches while a run goes on
  const hidden = new Set(); // labels switched off in the legend
  let drag = null; // a box being drawn: [lon0, lat0, lon1, lat1]
  let version = 0; // bumped when the objects or their reviews change (colours recomputed)
  const tiles = new Map();
  let nextTile = 1;
  // ms from a message (or a slider move, or Run) to the first frame drawn with it, for benchmarks/explore.py
  const timings = {};
  let pendingTiming = null;
  let runStart = null;

  const send = (msg) => model.send(msg);
  prompt.addEventListener("input", () => { model.set("prompt", prompt.value); model.save_changes(); });
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); startRun("view"); } });
  run.addEventListener("click", () => startRun("view"));
  runAll.addEventListener("click", () => startRun("all"));
  cancel.addEventListener("click", () => send({ kind: "cancel" }));
  slider.addEventListener("input", () => {
    const t = performance.now();
    pendingTiming = ["slider", t];
    setThreshold(Number(slider.value), true);
    timings.slider_js = performance.now() - t; // the main thread's share: layers and legend, not the drawing
  });

  function startRun(area) {
    runStart = performance.now();
    model.set("prompt", prompt.value);
    model.save_changes();
    send({ kind: "run", area });
  }
  function setThreshold(t, save) {
    slider.value = String(t);
    sliderValue.textContent = t.toFixed(2);
    if (save) { model.set("threshold", t); model.save_changes(); }
    redraw();
  }

  // --- the map ---
  const view = new MapView({ repeat: false });
  const initial = fitBounds(model.get("view_lonlat").length === 4 ? model.get("view_lonlat") : model.get("bounds"));
  const deck = new Deck({
    parent: mapDiv,
    views: view,
    initialViewState: initial,
    controller: { doubleClickZoom: false, keyboard: false },
    getCursor: ({ isDragging, isHovering }) =>
      model.get("mode") !== "pan" ? "crosshair" : isHovering ? "pointer" : isDragging ? "grabbing" : "grab",
    onViewStateChange: ({ viewState: vs }) => {
      clearTimeout(onViewStateChangeTimer);
      onViewStateChangeTimer = setTimeout(saveView, 150);
      return vs;
    },
    onAfterRender: () => {
      if (pendingTiming) { timings[pendingTiming[0]] = performance.now() - pendingTiming[1]; pendingTiming = null; }
    },
    onLoad: () => { if (model.get("view_lonlat").length !== 4) saveView(); },
    onClick: (pick, event) => clicked(pick, event),
    onDragStart: (pick) => { if (drawing()) drag = [...pick.coordinate, ...pick.coordinate]; },
    onDrag: (pick) => { if (drag && pick.coordinate) { drag[2] = pick.coordinate[0]; drag[3] = pick.coordinate[1]; redraw(); } },
    onDragEnd: () => { if (drag) finishBox(); },
    layers: [],
  });
  el.deck = deck; // for tests and the curious: the deck.gl instance
  el.timings = timings;
  let onViewStateChangeTimer = null;

  function fitBounds(bb) {
    const w = mapDiv.clientWidth || 800, h = mapDiv.clientHeight || 500;
    const vp = new WebMercatorViewport({ width: w, height: h });
    const fitted = vp.fitBounds([[bb[0], bb[1]], [bb[2], bb[3]]], { padding: 10 });
    return { longitude: fitted.longitude, latitude: fitted.latitude, zoom: fitted.zoom, pitch: 0, bearing: 0 };
  }
  function saveView() {
    const vp = deck.getViewports()[0];
    if (!vp) return;
    const [w, s, e, n] = vp.getBounds();
    model.set("view_lonlat", [w, s, e, n]);
    model.save_changes();
  }
  function drawing() {
    return ["positive", "negative", "review"].includes(model.get("mode"));
  }
  function finishBox() {
    const [x0, y0, x1, y1] = drag;
    drag = null;
    const box = { west: Math.min(x0, x1), south: Math.min(y0, y1), east: Math.max(x0, x1), north: Math.max(y0, y1) };
    if (box.east - box.west < 1e-9 || box.north - box.south < 1e-9) { redraw(); return; }
    const mode = model.get("mode");
    if (mode === "review") {
      send({ kind: "select", bounds: [box.west, box.south, box.east, box.north] });
      mapDiv.focus(); // for the A / R / U keys
    } else {
      model.set("boxes", [...model.get("boxes"), { ...box, positive: mode === "positive", prompt: prompt.value || null }]);
      model.save_changes();
    }
    redraw();
  }
  function clicked(pick, event) {
    const mode = model.get("mode");
    if (mode === "object" && pick.coordinate) {
      const positive = !(event && event.srcEvent && event.srcEvent.altKey);
      const clicks = model.get("clicks");
      model.set("clicks", [...clicks, { lon: pick.coordinate[0], lat: pick.coordinate[1], positive,
        object: String(clicks.length + 1) }]);
      model.save_changes();
      send({ kind: "objects" });
      return;
    }
    if (mode !== "pan") return;
    const uid = pick.layer && pick.layer.id.startsWith("results") && pick.index >= 0 ? results.uid[pick.index] : null;
    model.set("selected", uid === null ? [] : [uid]);
    model.save_changes();
    mapDiv.focus();
  }
  // A / R / U / Esc anywhere in the widget but the prompt box; kept from JupyterLab's own shortcuts
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.addEventListener("keydown", (e) => {
    if (e.target === prompt || e.ctrlKey || e.metaKey || e.altKey) return;
    const value = { a: "accepted", r: "rejected", u: null }[e.key.toLowerCase()];
    if (value !== undefined && model.get("selected").length) {
      send({ kind: "review", value });
    } else if (e.key === "Escape") {
      model.set("selected", []);
      model.save_changes();
    } else {
      return;
    }
    e.preventDefault();
    e.stopPropagation();
  });

  function rasterLayer() {
    return new TileLayer({
      id: "imagery",
      minZoom: 0,
      maxZoom: model.get("max_zoom"),
      extent: model.get("bounds"),
      tileSize: 256,
      maxRequests: 8,
      getTileData: ({ index: { x, y, z }, signal }) => new Promise((resolve) => {
        const id = nextTile++;
        tiles.set(id, resolve);
        send({ kind: "tile", x, y, z, id });
        signal.addEventListener("abort", () => { tiles.delete(id); resolve(null); });
      }).then((buf) => (buf ? createImageBitmap(new Blob([bytes(buf)], { type: "image/png" })) : null)),
      renderSubLayers: bitmap,
    });
  }
  function baseLayer() {
    const url = model.get("basemap");
    if (!url) return null;
    return new TileLayer({
      id: "basemap", data: url, minZoom: 0, maxZoom: 19, tileSize: 256,
      onTileError: () => {}, // offline: the plain background shows
      renderSubLayers: bitmap,
    });
  }

  function resultsLayer() {
    if (!results || !results.count) return null;
    const t = model.get("threshold");
    const { score, label, review, colors } = results;
    const fromClick = results.clicked;
    const visible = colors.map((_, k) => (hidden.has(k) ? 0 : 1));
    return new GeoJsonLayer({
      id: "results",
      data: results.data,
      pickable: model.get("mode") === "pan",
      stroked: results.count <= OUTLINED,
      filled: true,
      lineWidthUnits: "pixels",
      getFillColor: (f) => {
        const i = f.properties.i;
        return [...(REVIEW_COLOR[review[i]] || hex(colors[label[i]])), review[i] === 2 ? 50 : 100];
      },
      getLineColor: (f) => [...(REVIEW_COLOR[review[f.properties.i]] || hex(colors[label[f.properties.i]])), 255],
      getLineWidth: (f) => (review[f.properties.i] ? 2.5 : 1.2),
      getFilterValue: (f) => [fromClick[f.properties.i] ? 1 : score[f.properties.i], visible[label[f.properties.i]]],
      filterRange: [[t, 2], [1, 1]],
      extensions: [new DataFilterExtension({ filterSize: 2 })],
      updateTriggers: { getFillColor: version, getLineColor: version, getLineWidth: version,
        getFilterValue: `${version}:${[...hidden].join()}` },
    });
  }
  function selectionLayer() {
    const sel = model.get("selected");
    if (!results || !sel.length) return null;
    const paths = [];
    for (const u of sel) {
      const i = results.uidIndex.get(u);
      for (const [start, stop] of (i === undefined ? [] : results.rings[i])) {
        paths.push(results.data.polygons.positions.value.subarray(2 * start, 2 * stop));
      }
    }
    return new PathLayer({ id: "selection", data: paths, getPath: (d) => d, positionFormat: "XY",
      widthUnits: "pixels", getWidth: 3, getColor: [255, 230, 0, 255] });
  }
  function foundLayers() {
    return found.map((f, k) => new GeoJsonLayer({
      id: `found-${k}`, data: f.data, stroked: true, filled: true, lineWidthUnits: "pixels",
      getFillColor: [255, 255, 255, 40], getLineColor: [255, 255, 255, 200], getLineWidth: 1,
      getFilterValue: (x) => f.score[x.properties.i], filterRange: [model.get("threshold"), 2],
      extensions: [new DataFilterExtension({ filterSize: 1 })],
    }));
  }
  function drawnLayers() {
    const boxes = model.get("boxes").map((bx) => ({ ...bx, polygon: [[bx.west, bx.south], [bx.east, bx.south],
      [bx.east, bx.north], [bx.west, bx.north]] }));
    if (drag) {
      const [x0, y0, x1, y1] = drag;
      boxes.push({ positive: model.get("mode") !== "negative", review: model.get("mode") === "review",
        polygon: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]] });
    }
    return [
      new PolygonLayer({ id: "boxes", data: boxes, getPolygon: (d) => d.polygon, filled: false, stroked: true,
        lineWidthUnits: "pixels", getLineWidth: 2,
        getLineColor: (d) => (d.review ? [255, 230, 0] : d.positive ? [40, 200, 80] : [220, 40, 40]) }),
      new ScatterplotLayer({ id: "clicks", data: model.get("clicks"), getPosition: (d) => [d.lon, d.lat],
        radiusUnits: "pixels", getRadius: 5, stroked: true, lineWidthUnits: "pixels", getLineWidth: 2,
        getFillColor: (d) => (d.positive ? [40, 200, 80] : [220, 40, 40]), getLineColor: [255, 255, 255] }),
    ];
  }
  function redraw() {
    deck.setProps({
      layers: [base, raster, resultsLayer(), selectionLayer(), ...foundLayers(), ...drawnLayers()].filter(Boolean),
      controller: { doubleClickZoom: false, keyboard: false, dragPan: !drawing() },
    });
    legendUpdate();
    infoUpdate();
  }
  // one instance of each tile layer, so their tiles are kept between redraws
  const raster = rasterLayer();
  const base = baseLayer();

  function shownCount(k) {
    if (!results) return 0;
    const t = model.get("threshold");
    let n = 0;
    for (let i = 0; i < results.count; i++) {
      if (results.label[i] === k && (results.score[i] >= t || results.clicked[i]) && results.review[i] !== 2) n++;
    }
    return n;
  }
  function legendUpdate() {
    legend.replaceChildren();
    if (!results) return;
    results.labels.forEach((name, k) => {
      const box = element("input", { type: "checkbox", "aria-label": `show ${name}` });
      box.checked = !hidden.has(k);
      box.addEventListener("change", () => { if (box.checked) hidden.delete(k); else hidden.add(k); redraw(); });
      legend.append(element("label", { class: "gs-layer", "data-label": name }, [box,
        element("span", { class: "gs-swatch", style: `background:${results.colors[k]}` }),
        element("span", { class: "gs-name" }, [name]),
        element("span", { class: "gs-count" }, [String(shownCount(k))])]));
    });
  }
  function infoUpdate() {
    const sel = model.get("selected");
    info.replaceChildren();
    if (!sel.length || !results) return;
    const buttons = element("div", { class: "gs-review" }, [
      element("button", { class: "gs-accept", onclick: () => send({ kind: "review", value: "accepted" }) }, ["Accept (A)"]),
      element("button", { class: "gs-reject", onclick: () => send({ kind: "review", value: "rejected" }) }, ["Reject (R)"]),
      element("button", { class: "gs-clear", onclick: () => send({ kind: "review", value: null }) }, ["Clear (U)"]),
    ]);
    if (sel.length > 1) {
      info.append(element("div", { class: "gs-selected" }, [`${sel.length} objects selected`]), buttons);
      return;
    }
    const i = results.uidIndex.get(sel[0]);
    if (i === undefined) return;
    const rows = [["object", String(sel[0])], ["label", results.labels[results.label[i]]],
      ["score", results.score[i].toFixed(3)], ["area", `${results.area[i].toFixed(1)} m²`],
      ["level", String(results.level[i])], ["review", ["—", "accepted", "rejected"][results.review[i]]]];
    info.append(element("table", { class: "gs-object" },
      rows.map(([k, v]) => element("tr", {}, [element("th", {}, [k]), element("td", { "data-key": k }, [v])]))), buttons);
  }

  model.on("msg:custom", (msg, buffers) => {
    if (msg.kind === "tile") {
      const resolve = tiles.get(msg.id);
      tiles.delete(msg.id);
      if (resolve) resolve(buffers.length ? buffers[0] : null);
    } else if (msg.kind === "results") {
      pendingTiming = runStart !== null ? ["first_objects", runStart] : ["results", performance.now()];
      runStart = null;
      const geo = binary(msg, buffers);
      results = { ...geo, uid: Array.from(typed(Uint32Array, buffers[4])), score: typed(Float32Array, buffers[5]),
        label: typed(Uint16Array, buffers[6]), review: typed(Uint8Array, buffers[7]),
        area: typed(Float32Array, buffers[8]), level: typed(Uint8Array, buffers[9]),
        clicked: typed(Uint8Array, buffers[10]),
        labels: msg.labels, colors: msg.colors };
      results.uidIndex = new Map(results.uid.map((u, i) => [u, i]));
      results.rings = ringsOf(results.count, typed(Uint32Array, buffers[1]), typed(Uint32Array, buffers[3]));
      found = [];
      version++;
      redraw();
    } else if (msg.kind === "found") {
      if (msg.clear) found = [];
      else if (runStart !== null) { pendingTiming = ["first_objects", runStart]; runStart = null; }
      if (!msg.clear) found.push({ ...binary(msg, buffers), score: typed(Float32Array, buffers[4]) });
      redraw();
    } else if (msg.kind === "review") {
      const v = { accepted: 1, rejected: 2 }[msg.value] || 0;
      for (const u of msg.uids) if (results.uidIndex.has(u)) results.review[results.uidIndex.get(u)] = v;
      version++;
      redraw();
    }
  });
  model.on("change:threshold", () => setThreshold(model.get("threshold"), false));
  model.on("change:selected", redraw); // the selection is a layer of its own: the objects' colours stay
  model.on("change:mode", () => { modeUpdate(); redraw(); });
  model.on("change:boxes", redraw);
  model.on("change:clicks", redraw);
  model.on("change:status", () => { status.textContent = model.get("status"); });
  model.on("change:running", () => { run.disabled = runAll.disabled = model.get("running"); cancel.disabled = !model.get("running"); });
  model.on("change:view_lonlat", () => {
    const v = model.get("view_lonlat");
    const vp = deck.getViewports()[0];
    if (v.length !== 4 || !vp) return;
    const [w, s, e, n] = vp.getBounds();
    if (Math.abs(w - v[0]) + Math.abs(s - v[1]) + Math.abs(e - v[2]) + Math.abs(n - v[3]) > 1e-9) {
      deck.setProps({ initialViewState: { ...fitBounds(v), transitionDuration: 0 } });
    }
  });
  function modeUpdate() {
    for (const btn of modes.children) btn.classList.toggle("gs-active", btn.dataset.mode === model.get("mode"));
  }

  status.textContent = model.get("status");
  credit.textContent = model.get("basemap") ? model.get("credit") : "";
  run.disabled = runAll.disabled = model.get("running");
  cancel.disabled = !model.get("running");
  modeUpdate();
  setThreshold(model.get("threshold"), false);
  send({ kind: "ready" });
  return () => deck.finalize();
}

export default { render };
