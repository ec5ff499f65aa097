"""Probes on the codes: scikit-learn pipeline lookup, hyper-parameter search, fitting,
safe persistence of fitted pipelines, and prediction."""
