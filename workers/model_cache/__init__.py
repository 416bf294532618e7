"""The model cache prediction services embed: each organization's current ONNX model, hot-swapped.

    with ModelCache(redis_url, ml_base_path, ["acme-corp"]) as cache:
        prediction = cache.predict("acme-corp", [[71.5, 2.1, 0.03, 1480.0]])

It imports neither Celery nor SQLAlchemy: only redis, onnxruntime, numpy, the standard library
and the hot-swap protocol module `training_tasks.hotswap`.
"""

from workers.model_cache.cache import ModelCache, Prediction
from workers.model_cache.errors import ModelCacheError, ModelRejected, ModelUnavailable
from workers.model_cache.replicas import read_replicas, replicas_key
from workers.model_cache.slots import OrgStats

__all__ = [
    "ModelCache",
    "ModelCacheError",
    "ModelRejected",
    "ModelUnavailable",
    "OrgStats",
    "Prediction",
    "read_replicas",
    "replicas_key",
]
