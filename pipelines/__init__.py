"""Named scikit-learn pipelines for CNN codes: ``cnncodes fit --clf NAME``.

Each module exposes the same small interface, which a user's own ``--clf my_file.py``
follows too:

- ``build(**params) -> sklearn.pipeline.Pipeline``: an unfitted pipeline; ``params`` use
  ``Pipeline.set_params`` names (``classifier__C=0.1``).
- ``search_space``: ``dict`` of parameter name -> list of candidate values, searched by
  :func:`cnncodes.fit_pipeline`.
- ``path_parameter`` (optional): one key of ``search_space`` that is searched in
  increasing order as a regularisation path: warm-started when the estimator has
  ``warm_start``, and stopped early once the validation score has clearly fallen.
"""

from __future__ import annotations

__all__ = ["NAMES"]

NAMES = ("logreg", "linear_svm", "rbf_svm", "mlp", "knn")
