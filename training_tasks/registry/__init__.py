"""All SQL of the service database: organizations, runs and their control, model versions,
deployments, schedules, retention, the audit trail and the Prometheus metrics read from them.
Imports `db`, `protocol`, `config` and the bottom layer; the rows it returns are typed."""
