"""`trainctl`: the commands (`main`, with `database`, `schedule`, `secrets`, `metrics`, `report`,
`ui` and `demo`, which is `make run`), what they share (`common`) and how they show things (`views`, `tables`,
`progress`). The top layer: it may import anything, `workers` included.
"""
