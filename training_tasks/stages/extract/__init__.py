"""The extract stage: `stage` streams an organization's sensor rows into Parquet, split by time
with a purge gap (`split`), as single readings or per-asset window rows (`window_query`,
`window_stream`), plus the failures (`events`); `columns` and `source` check names against the
SCADA schema and build and stream the query (a `plan`), `errors` maps driver errors to the
service's errors. Imports `config` and the bottom layer; SQLAlchemy only to read the SCADA side.
"""
