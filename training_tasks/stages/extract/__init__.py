"""The extract stage: `stage` streams an organization's sensor rows into Parquet, `source` checks
names against the SCADA schema and builds the query, `errors` maps driver errors to service errors.
"""
