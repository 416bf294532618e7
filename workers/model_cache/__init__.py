"""The model cache prediction services embed: each organization's current ONNX model, hot-swapped.

    with ModelCache(redis_url, ml_base_path, ["acme-corp"]) as cache:
        prediction = cache.predict("acme-corp", [[71.5, 2.1, 0.03, 1480.0]])

An organization served by a window model takes windows instead, [n, length, columns] float32,
oldest bucket first: `cache.window_spec("acme-corp")` says the length, interval and columns.

While Redis holds no announcement of an organization it serves the deployment the
`models/<org>/current` link names, verified like an announced one (see `fallback`).

On a host that does not share the training service's folder, give it the object store
(`model_store_url=`, default MODEL_STORE_URL): deployed models are fetched by their `modelKey`
into `ml_base_path` and verified before they load (see `remote`, docs/object-storage.md).

It imports neither Celery nor SQLAlchemy, LightGBM or pandas: only redis, onnxruntime, numpy,
the standard library and `training_tasks.protocol`, `.errors` and `.files` (make lint checks it).
"""

from training_tasks.protocol.replicas import read_replicas, replicas_key
from workers.model_cache.cache import ModelCache, Prediction
from workers.model_cache.errors import ModelCacheError, ModelRejected, ModelUnavailable
from workers.model_cache.fallback import Fallback, LinkFallback, no_fallback
from workers.model_cache.slots import OrgStats

__all__ = [
    "Fallback",
    "LinkFallback",
    "ModelCache",
    "ModelCacheError",
    "ModelRejected",
    "ModelUnavailable",
    "OrgStats",
    "Prediction",
    "no_fallback",
    "read_replicas",
    "replicas_key",
]
