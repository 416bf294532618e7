"""The four stages of a run as plain functions that take their inputs and I/O handles:
`extract`, `train`, `validate`, `deploy`. Imports `sandbox`, `registry` and below, never Celery."""
