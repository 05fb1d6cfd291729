// Sort a long table by clicking a header (numbers by their raw value); open folded text before printing.
document.querySelectorAll("table.sortable th").forEach(function (th) {
  function sort() {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    function key(r) { var c = r.cells[col]; return c.dataset.key !== undefined ? parseFloat(c.dataset.key) : c.textContent; }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var d = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  th.addEventListener("click", sort);
  th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
});
window.addEventListener("beforeprint", function () {
  document.querySelectorAll("details").forEach(function (d) { d.setAttribute("open", ""); });
});
