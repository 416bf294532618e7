"""The read-only web dashboard (`trainctl ui`): Tornado pages rendered on the server, basic auth.

Reads the registry and the model store below it, writes nothing; only the CLI imports it.
"""
