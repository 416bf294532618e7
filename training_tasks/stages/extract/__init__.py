"""The extract stage: `stage` streams an organization's sensor rows into Parquet, `source` checks
names against the SCADA schema and builds the query (a `plan`), `errors` maps driver errors to
the service's errors. Imports `config` and the bottom layer; SQLAlchemy only to read the SCADA side.
"""
