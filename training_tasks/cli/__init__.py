"""`trainctl`: the commands (`main`, with `schedule`, `secrets`, `metrics` and `demo`, which is
`make run`), what they share (`common`) and how they show things (`views`).
The top layer: it may import anything, `workers` included.
"""
