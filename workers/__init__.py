"""What runs in other processes: the worker's start-up hooks and bootsteps (`worker_hooks`,
`org_queues`, `reaper`), the model cache prediction services embed (`model_cache`, which imports
only `training_tasks.protocol`, `.errors` and `.files`) and the reference prediction service."""
