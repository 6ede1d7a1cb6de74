// The page of `slice2d serve`: upload a scan, follow its job, then show the scan with its maps in
// NiiVue (shipped beside this file) and the severity report beside it.
"use strict";

const WINDOWS = { lung: [-1350, 150], mediastinum: [-160, 240] };  // W1500 L-600, W400 L40 (HU)
const COLOURS = {
  lesions: { 1: [230, 30, 30] },
  lesions2: { 1: [255, 215, 0], 2: [230, 30, 30] },  // ground-glass, consolidation
  lungs: { 1: [0, 229, 255], 2: [0, 255, 106] },
  regions: { 1: [31, 119, 180], 2: [44, 160, 44], 3: [148, 103, 189], 4: [255, 127, 14], 5: [23, 190, 207], 6: [140, 86, 75] },
};
const OVERLAY = {  // title, shown at first, opacity at first
  lesions: ["lesions", true, 0.8], lungs: ["lungs", true, 0.3], zones: ["zones", false, 0.4], lobes: ["lobes", false, 0.4],
};
const DOWNLOADS = [
  ["report_pdf", "one-page report (PDF)"], ["report_json", "report (JSON)"], ["report_png", "report figure (PNG)"],
  ["cohort_csv", "cohort table (CSV)"], ["lesions", "lesion map (NIfTI)"], ["lungs", "lung map (NIfTI)"],
  ["lobes", "lobe map (NIfTI)"], ["zones", "zone map (NIfTI)"], ["maps_zip", "all maps (zip)"],
  ["dicom_seg", "all maps as DICOM SEG"],
];

const $ = (id) => document.getElementById(id);
// nearest-neighbour display keeps label edges sharp; no crosshair: the slider says where we are
const nv = new niivue.Niivue({
  backColor: [0, 0, 0, 1], isRadiologicalConvention: true, show3Dcrosshair: false, isColorbar: false,
  crosshairWidth: 0, isNearestInterpolation: true, dragAndDropEnabled: false, loadingText: "",
});
// what the tests and a curious user can reach from the console
window.slice2d = { nv, job: null, ready: false };

function setStatus(text, isError = false) {
  $("progress").hidden = false;
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function upload(file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { $("bar").value = e.loaded / e.total; setStatus(`uploading ${Math.round(100 * e.loaded / e.total)} %`); }
    };
    xhr.onload = () => (xhr.status === 202 ? resolve(xhr.response) : reject(new Error(xhr.response?.error || `upload refused (${xhr.status})`)));
    xhr.onerror = () => reject(new Error("the server cannot be reached"));
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

async function follow(jobId) {
  for (;;) {
    const response = await fetch(`/api/jobs/${jobId}`, { cache: "no-store" });
    const job = await response.json();
    if (job.state === "done") return job;
    if (job.state === "failed" || !response.ok) throw new Error(job.error || `failed (${response.status})`);
    $("bar").removeAttribute("value");  // indeterminate while it works
    const what = job.state === "queued" ? `queued (${job.ahead} ahead)` : `${job.state} ${job.elapsed_s} s`;
    setStatus(`${job.name}: ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

function labelColormap(key, labels, lesionClasses) {
  const table = key === "lesions" ? (lesionClasses === 2 ? COLOURS.lesions2 : COLOURS.lesions)
    : key === "lungs" ? COLOURS.lungs : COLOURS.regions;
  const values = Object.keys(labels).map(Number);
  const cmap = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const v of values) {
    const [r, g, b] = table[v] || [255, 255, 255];
    cmap.R.push(r); cmap.G.push(g); cmap.B.push(b); cmap.A.push(255); cmap.I.push(v); cmap.labels.push(labels[v]);
  }
  return cmap;
}

function setWindow(name) {
  const [lo, hi] = WINDOWS[name];
  nv.volumes[0].cal_min = lo;
  nv.volumes[0].cal_max = hi;
  nv.updateGLVolume();
  for (const b of document.querySelectorAll("#window-presets button")) b.classList.toggle("on", b.dataset.window === name);
}

function sliceCount() { return nv.volumes[0].dimsRAS[3]; }

function showSlice(k) {
  const pos = nv.scene.crosshairPos;
  nv.scene.crosshairPos = [pos[0], pos[1], (k + 0.5) / sliceCount()];
  nv.drawScene();
  syncSlider();
}

function syncSlider() {
  const k = Math.min(sliceCount() - 1, Math.floor(nv.scene.crosshairPos[2] * sliceCount()));
  $("slice").value = k;
  $("slice-no").textContent = `${k + 1} / ${sliceCount()}`;
}

function overlayRow(index, overlay, lesionClasses) {
  const [title, shown, opacity] = OVERLAY[overlay.key];
  const row = document.createElement("tr");
  row.innerHTML = `<td><label><input type="checkbox" id="show-${overlay.key}"> ${title}</label></td>
    <td><input type="range" id="opacity-${overlay.key}" min="0" max="1" step="0.05"></td><td class="legend"></td>`;
  const box = row.querySelector("input[type=checkbox]");
  const slider = row.querySelector("input[type=range]");
  box.checked = shown;
  slider.value = opacity;
  const apply = () => nv.setOpacity(index, box.checked ? Number(slider.value) : 0);
  box.onchange = apply;
  slider.onchange = apply;  // once the slider is let go: each change redraws every layer
  const cmap = labelColormap(overlay.key, overlay.labels, lesionClasses);
  row.querySelector(".legend").innerHTML = cmap.I.slice(1).map((_, i) =>
    `<span class="swatch" style="background:rgb(${cmap.R[i + 1]},${cmap.G[i + 1]},${cmap.B[i + 1]})"></span>${cmap.labels[i + 1]}`).join(" ");
  return row;
}

async function showViewer(view, report) {
  const [lo, hi] = view.intensity === "HU" ? WINDOWS.lung : [0, 255];
  const volumes = [{ url: view.scan, colormap: "gray", cal_min: lo, cal_max: hi, trustCalMinMax: true }]
    .concat(view.overlays.map((o) => ({ url: o.url, colormap: "gray", opacity: 0 })));
  await nv.loadVolumes(volumes);
  // colours and opacities set first, then one redraw: each redraw recomputes every layer
  view.overlays.forEach((o, i) => {
    const [, shown, opacity] = OVERLAY[o.key];
    nv.volumes[i + 1].setColormapLabel(labelColormap(o.key, o.labels, report.lesion_classes));
    nv.volumes[i + 1].opacity = shown ? opacity : 0;
  });
  nv.updateGLVolume();
  const rows = $("overlays").tBodies[0];
  rows.replaceChildren(...view.overlays.map((o, i) => overlayRow(i + 1, o, report.lesion_classes)).reverse());
  $("window-presets").hidden = view.intensity !== "HU";
  $("slice").max = sliceCount() - 1;
  nv.scene.crosshairPos = nv.mm2frac(view.focus_mm);
  nv.drawScene();
  syncSlider();
}

function showReport(job) {
  const r = job.report;
  $("case").textContent = r.case;
  $("tss").textContent = `TSS ${r.tss} / ${r.tss_max}${r.category ? ` · ${r.category}` : ""}`;
  $("totals").textContent = `${r.scheme} scheme · total PI ${r.total_pi.toFixed(1)} % · lesion ${r.lesion_ml.toFixed(0)} mL of ${r.lung_ml.toFixed(0)} mL lung`;
  $("note").textContent = r.note || "";
  const cuts = (r.cut_points_percent || []).map((c) => `<span class="cut" style="left:${c}%"></span>`).join("");
  $("bars").innerHTML = Object.entries(r.regions).map(([name, reg]) => {
    const pi = reg.pi ?? 0;
    return `<div class="barrow" data-region="${name}"><span class="name">${name}</span>
      <span class="track"><span class="fill" style="width:${Math.min(100, pi)}%; display:block"></span>${cuts}</span>
      <span class="value">${reg.pi === null ? "–" : pi.toFixed(1) + " %"} · score ${reg.score}</span></div>`;
  }).join("");
  $("downloads").replaceChildren(...DOWNLOADS.filter(([key]) => job.links[key]).map(([key, title]) => {
    const li = document.createElement("li");
    li.innerHTML = `<a id="dl-${key}" href="${job.links[key]}" download>${title}</a>`;
    return li;
  }));
}

$("upload").onsubmit = async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  if (file.size > limits.max_upload_bytes) {
    setStatus(`${file.name}: ${Math.ceil(file.size / 2 ** 20)} MiB, over the upload limit of ${limits.max_upload_bytes / 2 ** 20} MiB`, true);
    return;
  }
  $("go").disabled = true;
  window.slice2d.ready = false;
  try {
    const queued = await upload(file);
    const job = await follow(queued.job);
    window.slice2d.job = job;
    $("result").hidden = false;
    showReport(job);
    await showViewer(job.view, job.report);
    $("bar").value = 1;
    setStatus(`${job.name}: done in ${job.elapsed_s} s`);
    window.slice2d.ready = true;
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("go").disabled = false;
  }
};

let limits = { max_upload_bytes: Infinity };
fetch("/api/limits").then((r) => r.json()).then((l) => { limits = l; });
$("slice").oninput = () => showSlice(Number($("slice").value));
for (const b of document.querySelectorAll("#window-presets button")) b.onclick = () => setWindow(b.dataset.window);
nv.onLocationChange = () => syncSlider();
nv.attachToCanvas($("viewer"));
nv.setSliceType(nv.sliceTypeAxial);
