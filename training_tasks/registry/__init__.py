"""The registry: organizations, runs, model versions and audit events in the service database."""
