"""Running an untrusted program with limits: `runner` (the public entry), the `launcher` it execs
or a fork server's child runs (`forkserver` on the worker's side, `zygote` and `inprocess` in the
fork server), the `mounts` it sees, its `processes`, `output` and `result`. Imports only the bottom
layer (`errors`, `files`).
"""
