"""What other processes read and write: ids, the file layout under ML_BASE_PATH, the hot-swap,
replica and beat-status keys, the keyring for secrets and model files, the checks of an ONNX file.

The bottom layer: imports only `training_tasks.errors`, `.files` and `.fields`, never Celery, kombu
or SQLAlchemy, so a prediction service can embed it (`workers.model_cache` does).
"""
