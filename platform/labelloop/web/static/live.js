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
    tr.appendChild(cell(r.message || "", null, "small"));
    tr.appendChild(cell(r.updated_at, null, "small"));
    return tr;
  }

  function update(tr, r) {
    tr.setAttribute("data-status", r.status);
    var status = tr.querySelector('[data-field="status"]');
    status.textContent = r.status;
    status.className = "status " + r.status;
    tr.querySelector('[data-field="stage"]').textContent = r.stage || "";
    tr.querySelector('[data-field="epoch"]').textContent = training(r);
    tr.querySelector('[data-field="loss"]').textContent = loss(r);
    tr.cells[7].textContent = r.message || "";
    tr.cells[8].textContent = r.updated_at || "";
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
