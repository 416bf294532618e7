"""What `make run` runs on: synthetic SCADA sensor histories a failure classifier can learn from
(`scada`; `events`: failures in a maintenance log, for window models), the demo organizations
(`orgs`), the comparison of a window model with single readings (`event_comparison`), an embedded
Redis server, and child processes that die with their parent. `trainctl demo`
(`training_tasks/cli/demo.py`) drives the whole job. Imports the layers below the service."""

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
