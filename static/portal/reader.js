// Case page: image viewer (zoom, pan, window/level, invert, fullscreen), keyboard-only answering,
// idempotent submit (client-generated submission id, retried on network errors), prefetch of the next case.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("case-data").textContent);
  const form = document.getElementById("answer-form");
  const errorBox = document.getElementById("error");
  const submitButton = document.getElementById("submit");
  const shownAt = performance.now();
  const submissionId = (crypto.randomUUID && crypto.randomUUID()) ||
    "10000000-1000-4000-8000-100000000000".replace(/[018]/g, c =>
      (c ^ crypto.getRandomValues(new Uint8Array(1))[0] & 15 >> c / 4).toString(16));
  let nextUrl = null;
  let busy = false;
  let leaving = false;  // saved and navigating away: further keys must not change or resend the answer

  // ---- viewer ----------------------------------------------------------------------------------------------------
  const view = { zoom: 1, x: 0, y: 0, brightness: 1, contrast: 1, invert: false };
  const images = Array.from(document.querySelectorAll(".viewer img"));
  const hud = document.getElementById("hud");
  const changed = (v, base) => Math.abs(v - base) > 1e-6;
  function render() {
    const filter = `brightness(${view.brightness}) contrast(${view.contrast})` + (view.invert ? " invert(1)" : "");
    images.forEach(img => {
      img.style.transform = `translate(-50%, -50%) translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
      img.style.filter = filter;
    });
    const parts = [];  // the HUD says only what differs from the plain fitted image
    if (changed(view.zoom, 1)) parts.push(`${Math.round(view.zoom * 100)}%`);
    if (changed(view.brightness, 1) || changed(view.contrast, 1))
      parts.push(`B ${view.brightness.toFixed(2)} · C ${view.contrast.toFixed(2)}`);
    if (view.invert) parts.push("inverted");
    if (hud) hud.textContent = parts.join("  ·  ");
  }
  // The CSS fits the image to its viewer using this aspect ratio (display renditions are square, but need not be).
  images.forEach(img => {
    const fit = () => { if (img.naturalWidth) img.style.setProperty("--aspect", img.naturalWidth / img.naturalHeight); };
    if (img.complete) fit(); else img.addEventListener("load", fit);
  });
  function reset() { Object.assign(view, { zoom: 1, x: 0, y: 0, brightness: 1, contrast: 1, invert: false }); render(); }
  function zoomBy(f) { view.zoom = Math.min(12, Math.max(0.5, view.zoom * f)); render(); }
  document.querySelectorAll(".viewer").forEach(fig => {
    fig.addEventListener("wheel", e => { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15); }, { passive: false });
    fig.addEventListener("contextmenu", e => e.preventDefault());
    fig.addEventListener("pointerdown", e => {
      if (boxMode && e.button === 0) { startBox(fig, e); return; }
      const start = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, b: view.brightness, c: view.contrast };
      const windowing = e.button === 2;
      fig.setPointerCapture(e.pointerId);
      const move = ev => {
        const dx = ev.clientX - start.x, dy = ev.clientY - start.y;
        if (windowing) {  // horizontal = contrast (window width), vertical = brightness (level)
          view.contrast = Math.max(0.2, start.c * Math.exp(dx / 300));
          view.brightness = Math.max(0.2, start.b * Math.exp(-dy / 300));
        } else { view.x = start.vx + dx; view.y = start.vy + dy; }
        render();
      };
      const up = () => { fig.removeEventListener("pointermove", move); fig.removeEventListener("pointerup", up); };
      fig.addEventListener("pointermove", move); fig.addEventListener("pointerup", up);
    });
  });
  render();

  // ---- artifact boxes (rubric) ---------------------------------------------------------------------------------------
  let boxMode = false;
  const boxes = [];
  function setBoxMode(on) { boxMode = on; document.getElementById("viewers").classList.toggle("boxing", on); }
  function boxCount() { const count = document.getElementById("box-count"); if (count) count.textContent = boxes.length; }
  // By keyboard: B puts a draft box on the (first) image; arrows move it, Shift+arrows resize it, Enter or B keeps
  // it, Esc drops it. Coordinates are fractions of the image, as the mouse's boxes are.
  let draft = null, draftEl = null;
  const STEP = 0.02;
  function drawDraft() {
    const fig = draftEl.parentElement, r = fig.querySelector("img").getBoundingClientRect(), fr = fig.getBoundingClientRect();
    Object.assign(draftEl.style, { left: (r.left - fr.left + draft.x * r.width) + "px", top: (r.top - fr.top + draft.y * r.height) + "px",
      width: draft.w * r.width + "px", height: draft.h * r.height + "px" });
  }
  function startDraft() {
    const fig = document.querySelector(".viewer");
    draftEl = document.createElement("div"); draftEl.className = "box draft"; fig.appendChild(draftEl);
    draft = { x: 0.4, y: 0.4, w: 0.2, h: 0.2 };
    setBoxMode(true); drawDraft();
  }
  function moveDraft(dx, dy, resize) {
    const round = v => Math.round(v * 1000) / 1000;
    if (resize) {
      draft.w = round(Math.min(1 - draft.x, Math.max(STEP, draft.w + dx)));
      draft.h = round(Math.min(1 - draft.y, Math.max(STEP, draft.h + dy)));
    } else {
      draft.x = round(Math.min(1 - draft.w, Math.max(0, draft.x + dx)));
      draft.y = round(Math.min(1 - draft.h, Math.max(0, draft.y + dy)));
    }
    drawDraft();
  }
  function endDraft(keep) {
    if (keep) { boxes.push({ ...draft }); draftEl.classList.remove("draft"); } else draftEl.remove();
    draft = null; draftEl = null; boxCount(); setBoxMode(false);
  }
  function draftKey(e) {
    const k = e.key, d = { ArrowLeft: [-STEP, 0], ArrowRight: [STEP, 0], ArrowUp: [0, -STEP], ArrowDown: [0, STEP] }[k];
    if (d) moveDraft(d[0], d[1], e.shiftKey);
    else if (k === "Enter" || k === "b" || k === "B") endDraft(true);
    else if (k === "Escape") endDraft(false);
    else return false;
    return true;
  }
  function startBox(fig, e) {
    if (draft) endDraft(false);  // the mouse takes over from a keyboard draft
    const img = fig.querySelector("img"); const r = img.getBoundingClientRect();
    const el = document.createElement("div"); el.className = "box"; fig.appendChild(el);
    const fr = fig.getBoundingClientRect();
    const x0 = e.clientX, y0 = e.clientY;
    fig.setPointerCapture(e.pointerId);
    const move = ev => {
      const l = Math.min(x0, ev.clientX), t = Math.min(y0, ev.clientY);
      Object.assign(el.style, { left: (l - fr.left) + "px", top: (t - fr.top) + "px",
        width: Math.abs(ev.clientX - x0) + "px", height: Math.abs(ev.clientY - y0) + "px" });
    };
    const up = ev => {
      fig.removeEventListener("pointermove", move); fig.removeEventListener("pointerup", up);
      const clamp = v => Math.min(1, Math.max(0, v));
      const x = clamp((Math.min(x0, ev.clientX) - r.left) / r.width), y = clamp((Math.min(y0, ev.clientY) - r.top) / r.height);
      const w = clamp((Math.max(x0, ev.clientX) - r.left) / r.width) - x, h = clamp((Math.max(y0, ev.clientY) - r.top) / r.height) - y;
      if (w > 0.005 && h > 0.005) boxes.push({ x, y, w, h }); else el.remove();
      boxCount(); setBoxMode(false);
    };
    fig.addEventListener("pointermove", move); fig.addEventListener("pointerup", up);
  }

  // ---- rubric scales --------------------------------------------------------------------------------------------------
  const criteria = Array.from(document.querySelectorAll(".criterion"));
  let active = 0;
  criteria.forEach((fs, i) => {
    const scale = fs.querySelector(".scale");
    for (let v = +fs.dataset.min; v <= +fs.dataset.max; v++) {
      const label = document.createElement("label"); label.className = "choice small";
      label.innerHTML = `<input type="radio" name="score-${fs.dataset.criterion}" value="${v}"><span class="num">${v}</span>`;
      scale.appendChild(label);
    }
    fs.addEventListener("click", () => setActive(i));
  });
  function setActive(i) { active = Math.max(0, Math.min(criteria.length - 1, i)); criteria.forEach((c, j) => c.classList.toggle("active", j === active)); }
  if (criteria.length) setActive(0);

  function check(name, value) {
    const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) { input.checked = true; return true; }
    return false;
  }

  // Prefill when revising an earlier answer.
  if (data.answer) {
    const a = data.answer;
    if (a.cannot_assess) form.cannot_assess.checked = true;
    if (a.call) { check("call", a.call); check("confidence", a.confidence); }
    if (a.scores) Object.entries(a.scores).forEach(([k, v]) => check("score-" + k, v));
    if (a.comment && form.comment) form.comment.value = a.comment;
    if (a.choice) check("choice", a.choice);
    (a.boxes || []).forEach(b => boxes.push(b));
  }

  function answer() {
    if (form.cannot_assess.checked) return { cannot_assess: true, reason: "unreadable" };
    if (data.kind === "realism") {
      const call = form.querySelector('input[name="call"]:checked'), conf = form.querySelector('input[name="confidence"]:checked');
      return { call: call && call.value, confidence: conf ? +conf.value : null };
    }
    if (data.kind === "rubric") {
      const scores = {};
      criteria.forEach(fs => { const c = fs.querySelector("input:checked"); scores[fs.dataset.criterion] = c ? +c.value : null; });
      return { scores, comment: form.comment ? form.comment.value : "", boxes };
    }
    const choice = form.querySelector('input[name="choice"]:checked');
    return { choice: choice && choice.value };
  }

  function showError(message) { errorBox.textContent = message; errorBox.hidden = false; }

  async function post(body, attempt) {
    try {
      const response = await fetch("/portal/api/submit", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": window.CSRF_TOKEN },
        body: JSON.stringify(body),
      });
      return response;
    } catch (err) {  // network error: the same submission id makes the retry safe
      if (attempt < 4) { await new Promise(r => setTimeout(r, 400 * 2 ** attempt)); return post(body, attempt + 1); }
      throw err;
    }
  }

  async function submit() {
    if (busy || leaving) return;
    busy = true; submitButton.disabled = true; errorBox.hidden = true;
    const body = { task: data.task, answer: answer(), submission_id: submissionId,
      time_spent_ms: Math.round(performance.now() - shownAt) };
    try {
      const response = await post(body, 0);
      const result = await response.json().catch(() => ({}));
      if (!response.ok) { showError(result.error || `Could not save (HTTP ${response.status}).`); return; }
      leaving = true;
      window.location.assign(nextUrl || data.next_url);
    } catch (err) {
      showError("Could not reach the server. Your answer is kept on this page; press Enter to try again.");
    } finally { busy = false; submitButton.disabled = leaving; }
  }
  form.addEventListener("submit", e => { e.preventDefault(); submit(); });

  // ---- prefetch the next case ---------------------------------------------------------------------------------------
  fetch(`/portal/api/next?queue=${encodeURIComponent(data.queue)}&after=${encodeURIComponent(data.task)}`,
        { credentials: "same-origin" })
    .then(r => r.ok ? r.json() : null)
    .then(next => {
      if (!next) return;
      if (next.done) { nextUrl = next.done_url; return; }
      nextUrl = next.url;
      next.images.forEach(src => { const im = new Image(); im.src = src; });
    }).catch(() => {});

  // ---- keyboard -------------------------------------------------------------------------------------------------------
  document.addEventListener("keydown", e => {
    const typing = e.target.tagName === "TEXTAREA";
    if (typing) { if (e.key === "Escape") e.target.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (leaving || (e.repeat && (k === "Enter" || k === "Backspace"))) { e.preventDefault(); return; }
    if (draft) { if (draftKey(e)) e.preventDefault(); return; }
    let handled = true;
    if (k === "Enter") submit();
    else if (k === "Backspace") { const prev = document.getElementById("prev"); if (prev) window.location.assign(prev.href); }
    else if (data.kind === "realism" && (k === "r" || k === "R")) check("call", "real");
    else if (data.kind === "realism" && (k === "s" || k === "S")) check("call", "synthetic");
    else if (/^[0-9]$/.test(k) && k !== "0") {
      if (data.kind === "realism") check("confidence", k);
      else if (data.kind === "rubric" && criteria.length) { if (check("score-" + criteria[active].dataset.criterion, k)) setActive(active + 1); }
      else handled = false;
    }
    else if (data.kind === "preference" && k === "ArrowLeft") check("choice", "left");
    else if (data.kind === "preference" && k === "ArrowRight") check("choice", "right");
    else if (data.kind === "preference" && (k === "n" || k === "N")) check("choice", "none");
    else if (k === "ArrowUp" && criteria.length) setActive(active - 1);
    else if (k === "ArrowDown" && criteria.length) setActive(active + 1);
    else if (k === "x" || k === "X") form.cannot_assess.checked = !form.cannot_assess.checked;
    else if ((k === "c" || k === "C") && form.comment) form.comment.focus();
    else if ((k === "b" || k === "B") && data.kind === "rubric") startDraft();
    else if (k === "Escape" && boxMode) setBoxMode(false);
    else if (k === "+" || k === "=") zoomBy(1.25);
    else if (k === "-" || k === "_") zoomBy(0.8);
    else if (k === "0") reset();
    else if (k === "[") { view.brightness = Math.max(0.2, view.brightness - 0.1); render(); }
    else if (k === "]") { view.brightness += 0.1; render(); }
    else if (k === ",") { view.contrast = Math.max(0.2, view.contrast - 0.1); render(); }
    else if (k === ".") { view.contrast += 0.1; render(); }
    else if (k === "i" || k === "I") { view.invert = !view.invert; render(); }
    else if (k === "f" || k === "F") {
      if (document.fullscreenElement) document.exitFullscreen(); else document.getElementById("viewers").requestFullscreen().catch(() => {});
    }
    else if (k === "?") { const d = document.querySelector(".keys"); d.open = !d.open; }
    else handled = false;
    if (handled) e.preventDefault();
  });
})();
