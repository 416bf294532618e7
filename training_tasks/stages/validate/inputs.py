"""What a run hands the validate stage besides the model: the window spec of a window model, the
failure events and the range they are judged in, and the purge gap extract kept."""

from __future__ import annotations

from typing import TypedDict

from training_tasks.config.training import TrainingConfig
from training_tasks.config.window_features import WindowSpec
from training_tasks.stages.extract.result import ExtractResult
from training_tasks.stages.validate.event_checks import EventScope


class RunInputs(TypedDict):
    """The keyword arguments of `validate` that come from the run's config and extract."""

    windows: WindowSpec | None
    events: EventScope | None
    purge_gap_s: float


def run_inputs(config: TrainingConfig, data: ExtractResult | None) -> RunInputs:
    """`validate(..., **run_inputs(config, data))`: the run's windows, events and purge gap.

    Without the extract's result (a run recorded before it was kept whole) there are no events.
    """
    if data is None:
        return {"windows": config.windows, "events": None, "purge_gap_s": 0.0}
    events = None
    if data.events_path is not None and config.label_horizon_s is not None:
        events = EventScope(data.events_path, data.split_at, config.end, config.label_horizon_s)
    return {"windows": config.windows, "events": events, "purge_gap_s": data.purge_gap_s}
