
(function () {
  "use strict";
  function cellValue(row, idx) {
    var cell = row.children[idx];
    return cell ? cell.getAttribute("data-value") : null;
  }
  function sortBy(table, th) {
    var heads = Array.prototype.slice.call(th.parentNode.children);
    var idx = heads.indexOf(th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var numeric = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) { return [r, i]; });
    rows.sort(function (a, b) {
      var va = cellValue(a[0], idx), vb = cellValue(b[0], idx);
      var ma = va === null || va === "", mb = vb === null || vb === "";
      if (ma || mb) { return ma && mb ? a[1] - b[1] : (ma ? 1 : -1); }  /* missing values last, both ways */
      var c = numeric ? parseFloat(va) - parseFloat(vb) : va.localeCompare(vb);
      if (!asc) { c = -c; }
      return c || a[1] - b[1];
    });
    rows.forEach(function (p) { body.appendChild(p[0]); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function (ev) {
        if (ev.target.closest && ev.target.closest("a")) { return; }
        sortBy(table, th);
      });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, th); }
      });
    });
  });

  var node = document.getElementById("answers-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function fmt(x) { return x === null || x === undefined ? "-" : x.toFixed(2); }
  function oneLine(s, n) {
    s = (s || "").replace(/\s+/g, " ").trim();
    return s.length > n ? s.slice(0, n) + "\u2026" : s;
  }
  Array.prototype.forEach.call(document.querySelectorAll(".viewer"), function (viewer) {
    var benches = (data.runs[viewer.getAttribute("data-run")] || {}).benchmarks || [];
    var bSel = viewer.querySelector(".viewer-benchmark"), qSel = viewer.querySelector(".viewer-question");
    var setting = viewer.querySelector(".viewer-setting"), prompt = viewer.querySelector(".question-text");
    var refBox = viewer.querySelector(".viewer-reference"), ref = viewer.querySelector(".reference-answer");
    var refSummary = refBox.querySelector("summary"), cards = viewer.querySelector(".cards");
    benches.forEach(function (b, i) {
      var o = el("option", null, b.label + " (" + b.questions.length + " questions)");
      o.value = b.key;
      bSel.appendChild(o);
    });
    function bench() { return benches[bSel.selectedIndex] || null; }
    function fillQuestions() {
      var b = bench();
      while (qSel.firstChild) { qSel.removeChild(qSel.firstChild); }
      if (!b) { return; }
      b.questions.forEach(function (q) {
        var text = q.id + (q.category ? " [" + q.category + "]" : "");
        text += " \u2014 " + (q.question ? oneLine(q.question, 80) : "(question text not recorded)");
        var o = el("option", null, text);
        o.value = q.id;
        qSel.appendChild(o);
      });
      while (setting.firstChild) { setting.removeChild(setting.firstChild); }
      [b.setting ? "Setting: " + b.setting + "." : "", b.score_note].forEach(function (s) {
        if (s) { setting.appendChild(el("span", null, s)); setting.appendChild(el("br")); }
      });
    }
    function card(row, kind, a) {
      var c = el("div", "card " + (kind === "reference" ? "reference" : "method"));
      c.setAttribute("data-row", row);
      var head = el("div", "card-head");
      head.appendChild(el("span", "card-row", row));
      var score = el("span", "card-score");
      if (a) {
        var parts = ["score " + fmt(a.score)];
        if (a.expected_score !== undefined) { parts.push("E[rating] " + fmt(a.expected_score)); }
        score.appendChild(document.createTextNode(parts.join(" \u00b7 ")));
        var counts = {}, order = [];
        (a.outcomes || []).forEach(function (o) {
          if (!(o in counts)) { counts[o] = 0; order.push(o); }
          counts[o] += 1;
        });
        var outs = el("span", "card-outcomes");
        order.forEach(function (o) {
          outs.appendChild(el("span", "outcome " + (/^(win|tie|loss)$/.test(o) ? o : "other"),
                              o + (counts[o] > 1 ? " \u00d7" + counts[o] : "")));
        });
        score.appendChild(outs);
      }
      head.appendChild(score);
      c.appendChild(head);
      if (!a) {
        c.className += " missing";
        c.appendChild(el("div", "empty", "not judged on this question"));
        return c;
      }
      if (a.question) { c.appendChild(el("div", "section", "question (this row)")); c.appendChild(el("pre", "card-question", a.question)); }
      c.appendChild(el("div", "section", "answer"));
      c.appendChild(el("pre", "card-answer", a.answer === null ? "(no answer recorded)" : a.answer));
      if (a.reference_answer) {
        c.appendChild(el("div", "section", "reference answer (this row)"));
        c.appendChild(el("pre", "card-reference", a.reference_answer));
      }
      c.appendChild(el("div", "section", "judge"));
      c.appendChild(el("pre", "card-rationale", a.rationale === null ? "(no rationale recorded)" : a.rationale));
      return c;
    }
    function show() {
      var b = bench();
      while (cards.firstChild) { cards.removeChild(cards.firstChild); }
      if (!b) { return; }
      var q = b.questions[qSel.selectedIndex];
      if (!q) { return; }
      prompt.textContent = q.question === null ? "(question text not recorded in the judgments)" : q.question;
      refBox.hidden = !q.reference_answer;
      refSummary.textContent = "Reference answer" + (b.reference ? " (" + b.reference + ")" : "");
      ref.textContent = q.reference_answer || "";
      b.rows.forEach(function (r) { cards.appendChild(card(r.row, r.kind, q.answers[r.row] || null)); });
    }
    bSel.addEventListener("change", function () { fillQuestions(); show(); });
    qSel.addEventListener("change", show);
    fillQuestions();
    show();
  });
})();
