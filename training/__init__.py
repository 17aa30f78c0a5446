"""The training stage: labels, churn / conversion / next-step / uplift models, MLflow, registry.

Modules: ``labels`` (labels with observation dates, time splits), ``dataset`` (features through
the Feast feature services), ``models`` and ``uplift`` (estimators with scikit-learn
conventions), ``calibration``, ``metrics``, ``plots``, ``truth`` (simulator ground truth),
``tracking`` and ``registry`` (MLflow runs, aliases, gated promotion), ``pipeline`` (what
``journeyml train`` runs), ``cli``, and ``bundle``: the model-version format and its loader,
the one module serving imports.
"""
