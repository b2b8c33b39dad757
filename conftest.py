"""Collection rules for the doctests of runtime/ (pytest runs them with --doctest-modules)."""

import importlib.util

# Only importable where DataFlow is installed (the .venv-dataflow run in .ci/run collects it).
collect_ignore = [] if importlib.util.find_spec("dataflow") else ["runtime/dataflow_operator.py"]
