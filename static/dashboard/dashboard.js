// Live progress for the admin dashboard: polls each round's progress JSON and updates its bars in place.
// Plain JS, served from our own static files (no CDN). Reloads the page when a round changes stage.
(function () {
  "use strict";
  function pct(done, total) { return total ? Math.min(100, Math.round(100 * done / total)) : 0; }
  function setBar(root, name, done, total, text) {
    var bar = root.querySelector('[data-bar="' + name + '"]');
    if (!bar) return;
    bar.querySelector(".fill").style.width = pct(done, total) + "%";
    bar.querySelector(".label").textContent = text || (done + " / " + (total || "?"));
  }
  function update(root, p) {
    if (p.generation) setBar(root, "generation", p.generation.done, p.generation.total);
    if (p.cleaning) setBar(root, "cleaning", p.cleaning.done, p.cleaning.total);
    if (p.labeling) {
      setBar(root, "labeling", p.labeling.answered, p.labeling.planned);
      (p.labeling.readers || []).forEach(function (r) {
        setBar(root, "reader-" + r.reader, r.answered, p.labeling.cases);  // a reader reads each case once at most
      });
    }
    ["reward", "finetune"].forEach(function (name) {
      var run = p[name];
      if (run) setBar(root, name, run.step, run.total,
        run.step + " / " + (run.total || "?") + (run.loss !== null && run.loss !== undefined ? " · loss " + run.loss.toFixed(4) : ""));
    });
    if (p.evaluation) setBar(root, "evaluation", p.evaluation.done, p.evaluation.total,
      p.evaluation.done + " / " + p.evaluation.total + " · " + p.evaluation.now);
    var status = root.querySelector("[data-status]");
    if (status && status.getAttribute("data-status") !== p.status) window.location.reload();
  }
  function poll(root) {
    var url = root.getAttribute("data-progress-url");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) { if (p) update(root, p); })
      .catch(function () { /* keep polling: the server may be restarting */ })
      .finally(function () {
        var s = root.querySelector("[data-status]");
        var live = s && ["done", "failed", "cancelled", "draft"].indexOf(s.getAttribute("data-status")) < 0;
        if (live) window.setTimeout(function () { poll(root); }, 2000);
      });
  }
  document.querySelectorAll("[data-progress-url]").forEach(poll);
})();
