"""When training runs: cron patterns (`cron`, a leaf that config and registry may import), the
beat leader's lock (`leader`), firing due slots (`dispatch`) and the Celery Beat scheduler."""
