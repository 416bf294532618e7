"""The validate stage: `stage` judges a trained model, `loading` reads and loads it, `model_checks`
checks the ONNX session and contract, `recorded` holds the model's metadata to what the run
recorded, `holdout` reads and scores the holdout with every model (`windows`: a window model's
holdout, `window_checks`: its in-graph statistics against the reference), `scorers` feeds each
model, `deployed` opens the model it must not be worse than, `metrics` scores it at the model's
threshold with 95% intervals, `events` and `event_checks` the failures it catches, `verdicts`
judges the scores, `report` is validation.json, `inputs` is what a run hands the stage.
Imports `config`, `protocol`, extract's result and the bottom layer; never the registry (the
stage gets what it judges as arguments).
"""
