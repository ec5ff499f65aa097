"""Named scikit-learn pipelines for CNN codes: ``cnncodes fit --clf NAME``.

Each module exposes the same small interface, which a user's own ``--clf my_file.py``
follows too:

- ``build(**params) -> sklearn.pipeline.Pipeline``: an unfitted pipeline; ``params`` use
  ``Pipeline.set_params`` names (``classifier__C=0.1``).
- ``search_space``: ``dict`` of parameter name -> list of candidate values, searched by
  :func:`cnncodes.fit_pipeline`.
- ``path_parameter`` (optional): one key of ``search_space`` that is searched as a
  regularisation path, coarse to fine (every other value in increasing order, then the
  skipped ones beside the best): warm-started when the estimator has ``warm_start``, and
  stopped early once the validation score has clearly fallen.
- ``search_settings`` (optional): ``set_params`` values used while searching only, e.g.
  a looser solver tolerance; the final fit uses the pipeline as built, started from the
  search's own solution at the chosen candidate (:func:`cnncodes.probe.search.fit_final`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LINEAR_PROBE_C", "NAMES"]

NAMES = ("logreg", "torch_logreg", "linear_svm", "rbf_svm", "mlp", "knn")

# Linear-probe studies tune C over 1e-6..1e5; the best value moves by orders of magnitude
# between data sets, so the grid is wide and log-spaced (two values per decade). Shared by
# every linear pipeline so that their chosen C values are comparable.
LINEAR_PROBE_C: list[float] = np.logspace(-6, 5, 23).tolist()
