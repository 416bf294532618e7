"""The validate stage: `stage` judges a trained model, `model_checks` checks the file and the ONNX
session, `holdout` scores the holdout with every model and judges the scores. Imports `config`,
`protocol` and the bottom layer; never the registry (the stage gets what it judges as arguments).
"""
