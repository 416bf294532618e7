"""The model report of a version: `evidence` turns holdout scores into curve data, `profile`
summarizes a training set and measures drift (PSI), `plots` draws them (matplotlib, Agg, inline
SVG), `page` renders the self-contained report.html (Jinja2, autoescaped), `build` ties them to
the artifacts folder. Imports only numpy, pyarrow, matplotlib, Jinja2 and the bottom layer.
"""
