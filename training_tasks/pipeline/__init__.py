"""A run's life: submitting it, the stage runner around each stage (lease, heartbeat, record, map
errors), the stage bodies, leases, recovery of stuck runs, scratch data, disk space and alerts.
Imports `stages`, `sandbox`, `registry`, `runtime` and below; enqueueing is a parameter, never Celery.
"""
