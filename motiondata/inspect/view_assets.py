"""Inline CSS and JS of the HTML viewer (no external resource is ever referenced)."""

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f6}
table.kv th{width:14em}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
img{max-width:100%;image-rendering:pixelated;display:block;margin:.3em 0}
.cap{color:#555;font-size:12px;margin:.2em 0}.bad{color:#b00020;font-weight:600}.lang{font-size:1.1em;font-style:italic}
.filters{margin:.6em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}nav{margin-bottom:.5em}
tr.hidden{display:none}
"""

INDEX_JS = """
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('#episodes tr[data-source]'));
  var source = document.getElementById('f-source'), errors = document.getElementById('f-errors');
  var flow = document.getElementById('f-flow'), text = document.getElementById('f-text');
  var count = document.getElementById('f-count');
  function apply(){
    var shown = 0, limit = parseFloat(flow.value), q = text.value.toLowerCase();
    rows.forEach(function(r){
      var ok = (!source.value || r.dataset.source === source.value)
        && (!errors.checked || parseInt(r.dataset.errors, 10) > 0)
        && (isNaN(limit) || limit >= 1 || (r.dataset.flow !== '' && parseFloat(r.dataset.flow) < limit))
        && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.classList.toggle('hidden', !ok); if (ok) shown++;
    });
    count.textContent = shown + ' of ' + rows.length + ' episodes';
  }
  [source, errors, flow, text].forEach(function(el){ el.addEventListener('input', apply); });
  errors.addEventListener('change', apply);
  apply();
})();
"""
