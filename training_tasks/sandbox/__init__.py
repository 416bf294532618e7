"""Running an untrusted program with limits: `runner` (the public entry), the `launcher` it execs,
the `mounts` it sees, its `output` and its `result`. Imports only the bottom layer (`errors`, `files`).
"""
