"""What `make run` runs on: a synthetic SCADA sensor history a failure classifier can learn from,
an embedded Redis server, and child processes that die with their parent. `trainctl demo`
(`training_tasks/cli/demo.py`) drives the whole job. Imports only the bottom layer."""

from training_tasks.demo.scada import (
    ACME_LAYOUT,
    GLOBEX_LAYOUT,
    ScadaLayout,
    demo_org_config,
    generate_sensor_frame,
    iter_sensor_frames,
    write_scada_postgres,
    write_scada_sqlite,
)

__all__ = [
    "ACME_LAYOUT",
    "GLOBEX_LAYOUT",
    "ScadaLayout",
    "demo_org_config",
    "generate_sensor_frame",
    "iter_sensor_frames",
    "write_scada_postgres",
    "write_scada_sqlite",
]
