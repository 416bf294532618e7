"""report.html: one Jinja2 template, autoescaped, with its styles inline and no scripts.

Every value from data or config (organization, feature names, check details, error texts) goes
through autoescaping; the figures are data URIs, so the page opens with no network at all.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jinja2

# No script, no request: only inline styles and data: images may load (the page needs nothing else).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ org }} {{ version }}: {{ verdict }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 2em auto; max-width: 1100px;
  padding: 0 1em; }
h1 { font-size: 1.4em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 2em;
  border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .6em;
  border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; padding: .2em .7em; border-radius: 4px; color: #fff;
  font-weight: 600; } .passed { background: #2e7d32; } .rejected { background: #c62828; }
.ok { color: #2e7d32; } .bad { color: #c62828; } .skip { color: #777; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs figure { margin: 0; }
figcaption { font-size: .9em; color: #555; } .note { color: #555; font-style: italic; }
.significant { color: #c62828; font-weight: 600; } .moderate { color: #d9730d; }
</style>
</head>
<body>
<h1>{{ org }} &middot; {{ version }}</h1>
<p><span class="verdict {{ 'passed' if passed else 'rejected' }}">{{ verdict }}</span>
 decision threshold {{ threshold | num }} &middot; {{ rows }} holdout rows
 &middot; model {{ size_mb | num }} MB, sha256 <code>{{ sha256 }}</code></p>
{% if failures %}<h2>Why it was rejected</h2><ul>{% for f in failures %}<li>{{ f }}</li>
{% endfor %}</ul>{% endif %}
{% if warnings %}<h2>Warnings</h2><ul>{% for w in warnings %}<li>{{ w }}</li>{% endfor %}</ul>
{% endif %}
<h2>Checks</h2>
<table><tr><th>check</th><th>result</th><th class="n">measured</th><th class="n">threshold</th>
<th class="n">95% interval</th><th>detail</th></tr>
{% for c in checks %}<tr><td>{{ c.name }}</td><td class="{{ c.css }}">{{ c.result }}</td>
<td class="n">{{ c.value | num }}</td><td class="n">{{ c.limit | num }}</td>
<td class="n">{{ c.interval }}</td><td>{{ c.detail }}</td></tr>
{% endfor %}</table>
<h2>Metrics at the decision threshold</h2>
<table><tr><th>metric</th><th class="n">value</th><th class="n">95% interval</th>
<th class="n">evidence</th></tr>
{% for m in metrics %}<tr><td>{{ m.name }}</td><td class="n">{{ m.value | num }}</td>
<td class="n">{{ m.interval }}</td><td class="n">{{ m.evidence }}</td></tr>{% endfor %}</table>
{% if confusion %}<h3>Confusion matrix at threshold {{ threshold | num }}</h3>
<table><tr><th></th><th class="n">alarm</th><th class="n">no alarm</th></tr>
<tr><th>failed</th><td class="n">{{ confusion.truePositives }}</td>
<td class="n">{{ confusion.falseNegatives }}</td></tr>
<tr><th>normal</th><td class="n">{{ confusion.falsePositives }}</td>
<td class="n">{{ confusion.trueNegatives }}</td></tr></table>{% endif %}
<h2>Holdout curves</h2>
{% if comparison_note %}<p>{{ comparison_note }}</p>{% endif %}
{% if figures %}<div class="figs">{% for fig in figures %}<figure>
<img src="{{ fig.src }}" alt="{{ fig.caption }}"><figcaption>{{ fig.caption }}</figcaption>
</figure>{% endfor %}</div>{% else %}<p class="note">{{ curves_missing }}</p>{% endif %}
<h2>Feature importance (gain)</h2>
{% if importance %}<img src="{{ importance }}" alt="feature importance by gain">
{% else %}<p class="note">{{ importance_missing }}</p>{% endif %}
<h2>Data</h2>
{% if data %}<table><tr><th></th><th>from</th><th>to</th><th class="n">rows</th>
<th class="n">positives</th></tr>
{% for d in data %}<tr><th>{{ d.name }}</th><td>{{ d.start }}</td><td>{{ d.end }}</td>
<td class="n">{{ d.rows }}</td><td class="n">{{ d.positives }}</td></tr>{% endfor %}</table>
{% endif %}
{% if drift_note %}<p>{{ drift_note }}</p>{% endif %}
{% if features %}<table><tr><th>feature (training set)</th><th class="n">missing</th>
<th class="n">mean</th><th class="n">std</th><th class="n">min</th><th class="n">median</th>
<th class="n">max</th>{% if drift %}<th class="n">PSI</th><th>drift</th>{% endif %}</tr>
{% for f in features %}<tr><td>{{ f.name }}</td><td class="n">{{ f.missing }}</td>
<td class="n">{{ f.mean | num }}</td><td class="n">{{ f.std | num }}</td>
<td class="n">{{ f.min | num }}</td><td class="n">{{ f.median | num }}</td>
<td class="n">{{ f.max | num }}</td>{% if drift %}<td class="n">{{ f.psi | num }}</td>
<td class="{{ f.level }}">{{ f.level }}</td>{% endif %}</tr>{% endfor %}</table>
{% else %}<p class="note">{{ data_missing }}</p>{% endif %}
{% if problems %}<h2>Parts of this report that could not be drawn</h2><ul>
{% for p in problems %}<li>{{ p }}</li>{% endfor %}</ul>{% endif %}
<p class="note">Validated in {{ duration_s | num }} s. PSI: below 0.1 stable, 0.1&ndash;0.25
moderate, above 0.25 significant.</p>
</body>
</html>
"""


def render(context: dict[str, Any]) -> str:
    """The page for `context`; a missing name is an error, never a blank."""
    return _template().render(csp=CSP, **context)


def number(value: Any) -> str:
    """A number with 4 significant digits; text as it is; nothing for None."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["num"] = number
    return env.from_string(TEMPLATE)
