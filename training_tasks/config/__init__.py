"""Settings from the environment, and the JSON an organization or a training request is made of,
checked field by field: `settings`, `org` (organization config), `training` (a training request),
`json_input` (JSON text from outside), `sql_url` (database URLs read without SQLAlchemy). Imports
`protocol`, the modules beside `errors.py` and `beat_schedules.cron`; never Celery, kombu or
SQLAlchemy.
"""
