"""The dashboard's page templates (Tornado templates, every `{{ }}` HTML-escaped).

Kept in a module rather than in .html files so that an installed wheel carries them with no
package-data entry. Only the trend chart goes in raw: `chart.py` escapes what it draws.
"""

from __future__ import annotations

from tornado.template import DictLoader

BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Training service{% end %}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 2rem 2rem; color: #222; }
header { display: flex; gap: 1rem; align-items: baseline; border-bottom: 1px solid #ddd; }
header a { color: inherit; text-decoration: none; font-weight: 600; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f6f6f6; font-weight: 600; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: .7rem; font-size: 12px; }
.good { background: #d9f2e3; color: #14532d; } .bad { background: #fde2e1; color: #7f1d1d; }
.warn { background: #fdf0d5; color: #78350f; } .busy { background: #dbeafe; color: #1e3a8a; }
.idle { background: #eee; color: #444; }
.deployed-row { background: #f0faf4; }
.error { color: #7f1d1d; white-space: pre-wrap; max-width: 48rem; }
ul.reasons { margin: 0; padding-left: 1.1rem; color: #7f1d1d; }
.muted { color: #777; }
</style>
</head>
<body>
<header><a href="/">Training service</a><span class="muted">read-only dashboard</span></header>
{% block body %}{% end %}
<p class="muted">Generated {{ generated_at }}.</p>
</body>
</html>
"""

OVERVIEW = """{% extends "base.html" %}
{% block title %}Organizations · Training service{% end %}
{% block body %}
<h1>Organizations</h1>
{% if not orgs %}<p>No organization is registered. Register one with
<code>trainctl org create ORG --config org.json</code>.</p>{% end %}
{% if orgs %}
<table id="organizations">
<tr><th>Organization</th><th>Health</th><th>Deployed version</th><th>Deployed</th>
<th>Latest run</th><th>Queued</th></tr>
{% for row in orgs %}{% set org = row["org"] %}
<tr data-org="{{ org.org_id }}">
<td><a href="/orgs/{{ url_escape(org.org_id) }}">{{ org.org_id }}</a>
  {% if org.name != org.org_id %}<span class="muted">{{ org.name }}</span>{% end %}</td>
<td><span class="badge {{ row["health"].css }}" title="{{ row["health"].detail }}">{{ row["health"].label }}</span></td>
<td class="mono deployed-version">{{ org.deployed_version or "none" }}</td>
<td>{{ row["deployed_ago"] }}</td>
<td>{{ org.run_status or "no runs" }}{% if org.run_stage and org.run_status not in ("succeeded", "validated") %} at {{ org.run_stage }}{% end %}</td>
<td>{{ row["latest_run"] }}</td>
</tr>
{% end %}
</table>
{% end %}
{% end %}
"""

ORG = """{% extends "base.html" %}
{% block title %}{{ org_id }} · Training service{% end %}
{% block body %}
<h1>{{ name }} <span class="muted mono">{{ org_id }}</span>
<span class="badge {{ health.css }}">{{ health.label }}</span></h1>
<p>{{ health.detail }}. Deployed version: <code id="deployed-version">{{ deployed or "none" }}</code>
{% if previous %}(previous: <code>{{ previous }}</code>){% end %}</p>

<h2>Metrics by version</h2>
{% if chart %}<figure id="trend">{% raw chart %}</figure>
{% else %}<p class="muted">No version has validation metrics yet.</p>{% end %}

<h2>Versions</h2>
{% if not versions %}<p class="muted">No model version yet.</p>{% end %}
{% if versions %}
<table id="versions">
<tr><th>Version</th><th>Status</th><th>Created</th>
{% for metric in metric_names %}<th>{{ metric }}</th>{% end %}<th>Report</th></tr>
{% for v in versions %}
<tr data-version="{{ v.version }}"{% if v.deployed %} class="deployed-row"{% end %}>
<td class="mono">{{ v.version }}{% if v.deployed %} <span class="badge good">deployed</span>{% end %}</td>
<td>{{ v.status }}{% if v.failures %}<ul class="reasons">{% for reason in v.failures %}<li>{{ reason }}</li>{% end %}</ul>{% end %}</td>
<td>{{ v.created_at }}</td>
{% for metric in metric_names %}<td>{{ "%.3f" % v.metrics[metric] if metric in v.metrics else "—" }}</td>{% end %}
<td>{% if v.has_report %}<a class="report" href="/orgs/{{ url_escape(org_id) }}/versions/{{ url_escape(v.version) }}/report.html">report</a>{% else %}<span class="muted">no report</span>{% end %}</td>
</tr>
{% end %}
</table>
{% end %}

<h2>Runs <span class="muted">(newest {{ runs_shown }})</span></h2>
{% if not runs %}<p class="muted">No run yet. Start one with <code>trainctl train {{ org_id }}</code>.</p>{% end %}
{% if runs %}
<table id="runs">
<tr><th>Queued</th><th>Version</th><th>Status</th><th>Stage reached</th><th>Duration</th>
<th>Trigger</th><th>Error</th></tr>
{% for run in runs %}
<tr data-run="{{ run.run_id }}" data-status="{{ run.status }}">
<td>{{ run.queued_at }}</td><td class="mono">{{ run.version }}</td><td>{{ run.status }}</td>
<td>{{ run.stage_reached }}</td><td>{{ run.duration }}</td><td>{{ run.trigger }}</td>
<td class="error">{{ run.error or "" }}</td>
</tr>
{% end %}
</table>
{% end %}

<h2>Schedule</h2>
{% if schedule is None %}<p class="muted">No schedule. Set one with
<code>trainctl schedule {{ org_id }} "0 2 * * 0"</code>.</p>{% end %}
{% if schedule is not None %}
<p id="schedule"><code>{{ schedule.pattern }}</code> in {{ schedule.timezone }},
{{ "enabled" if schedule.enabled else "disabled" }}.</p>
{% if schedule.next_runs %}<p>Next runs:</p>
<ol id="next-runs">{% for slot in schedule.next_runs %}<li>{{ slot }}</li>{% end %}</ol>{% end %}
{% if schedule.recent %}<p>Recently recorded slots:</p>
<table id="slots"><tr><th>Scheduled for</th><th>Outcome</th><th>Run or reason</th></tr>
{% for at, outcome, what in schedule.recent %}
<tr><td>{{ at }}</td><td>{{ outcome }}</td><td>{{ what }}</td></tr>{% end %}
</table>{% end %}
{% end %}
{% end %}
"""

ERROR = """{% extends "base.html" %}
{% block title %}{{ status }} · Training service{% end %}
{% block body %}
<h1>{{ status }} {{ reason }}</h1>
<p>{{ message }}</p>
{% end %}
"""


def loader() -> DictLoader:
    """The templates by name, autoescaped as HTML."""
    return DictLoader(
        {"base.html": BASE, "overview.html": OVERVIEW, "org.html": ORG, "error.html": ERROR},
        autoescape="xhtml_escape",
    )
