// Live pipeline progress on the project page: polls the page's live.json and updates the
// pipeline table (status, stage, epoch, loss) and the image counts without a reload.
(function () {
  "use strict";
  var table = document.getElementById("pipelines");
  if (!table) return;
  var url = table.getAttribute("data-live");
  var body = table.tBodies[0];

  function cell(text, field, cls) {
    var td = document.createElement("td");
    if (field) td.setAttribute("data-field", field);
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : String(text);
    return td;
  }

  function training(r) {
    var t = r.training;
    if (!t) return "";
    return t.status + (t.epoch ? " · epoch " + t.epoch + "/" + t.epochs : "");
  }

  function loss(r) {
    var t = r.training;
    return t && t.loss != null ? Number(t.loss).toFixed(4) : "";
  }

  function row(r) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-run", r.id);
    tr.appendChild(cell("#" + r.id));
    tr.appendChild(cell(r.trigger));
    tr.appendChild(cell(r.requested_by || ""));
    var st = cell("", null);
    var span = document.createElement("span");
    span.setAttribute("data-field", "status");
    st.appendChild(span);
    tr.appendChild(st);
    tr.appendChild(cell(r.stage || "", "stage"));
    tr.appendChild(cell("", "epoch"));
    tr.appendChild(cell("", "loss"));
    tr.appendChild(cell("", "curve"));
    tr.appendChild(cell(r.message || "", null, "small"));
    tr.appendChild(cell(r.updated_at, null, "small"));
    return tr;
  }

  // The same drawing as charts.sparkline on the server.
  function spark(td, pts) {
    var ns = "http://www.w3.org/2000/svg";
    var w = 120, h = 28;
    td.textContent = "";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("data-points", JSON.stringify(pts || []));
    td.appendChild(svg);
    if (!pts || pts.length < 2) return;
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    var xs = pts.map(function (p) { return p[0]; }), ys = pts.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 - x0 < 1e-12) x1 = x0 + 1;
    if (y1 - y0 < 1e-12) y1 = y0 + (Math.abs(y0) || 1);
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2563eb");
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("points", pts.map(function (p) {
      return (2 + (p[0] - x0) / (x1 - x0) * (w - 4)).toFixed(1) + "," +
        (2 + (1 - (p[1] - y0) / (y1 - y0)) * (h - 4)).toFixed(1);
    }).join(" "));
    svg.appendChild(line);
  }

  function update(tr, r) {
    tr.setAttribute("data-status", r.status);
    var status = tr.querySelector('[data-field="status"]');
    status.textContent = r.status;
    status.className = "status " + r.status;
    tr.querySelector('[data-field="stage"]').textContent = r.stage || "";
    tr.querySelector('[data-field="epoch"]').textContent = training(r);
    tr.querySelector('[data-field="loss"]').textContent = loss(r);
    spark(tr.querySelector('[data-field="curve"]'), r.training ? r.training.curve : []);
    tr.cells[8].textContent = r.message || "";
    tr.cells[9].textContent = r.updated_at || "";
  }

  function apply(data) {
    var none = body.querySelector("tr.none");
    if (none && data.pipelines.length) none.remove();
    var busy = false;
    for (var i = data.pipelines.length - 1; i >= 0; i--) {
      var r = data.pipelines[i];
      var tr = body.querySelector('tr[data-run="' + r.id + '"]');
      if (!tr) {
        tr = row(r);
        body.insertBefore(tr, body.firstChild);
      }
      update(tr, r);
      if (r.status === "queued" || r.status === "running") busy = true;
    }
    var counts = document.getElementById("counts");
    if (counts) {
      Object.keys(data.counts).forEach(function (k) {
        var el = counts.querySelector('[data-field="' + k + '"]');
        if (el) el.textContent = data.counts[k];
      });
    }
    table.setAttribute("data-refreshed", String(Date.now()));
    return busy;
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) throw new Error("live update: HTTP " + resp.status);
        return resp.json();
      })
      .then(function (data) {
        setTimeout(poll, apply(data) ? 1500 : 5000);
      })
      .catch(function () {
        setTimeout(poll, 10000);
      });
  }

  setTimeout(poll, 1500);
})();
