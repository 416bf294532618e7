"""`trainctl`: the commands (`main`), what they share (`common`), and how they show things (`views`).
The top layer: it may import anything, `workers` included.
"""
