"""The validate stage: `stage` judges a trained model, `model_checks` checks the file and the ONNX
session, `recorded` holds the model's metadata to what the run recorded (derived features, decision
threshold), `holdout` reads and scores the holdout with every model, `metrics` scores it at the
model's threshold with 95% intervals, `verdicts` judges the scores, `report` is validation.json.
Imports `config`, `protocol` and the bottom layer; never the registry (the stage gets what it
judges as arguments).
"""
