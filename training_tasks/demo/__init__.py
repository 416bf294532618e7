"""Demo data and `make run`: a synthetic SCADA sensor history a failure classifier can learn from,
the embedded Redis server, and the whole job started and stopped in one command. The top layer."""

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
