"""Helpers the tests share: local servers, worker and beat processes, a fake clock, the chaos
service, registry rows and small ONNX models. Nothing here is a test.
"""
