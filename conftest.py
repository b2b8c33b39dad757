"""Collection rules for --doctest-modules, which imports every module under tests/ and runtime/."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("dataflow") is None:  # collected in the .venv-dataflow run of .ci/run
    collect_ignore.append("runtime/cli/dataflow_operator.py")
if importlib.util.find_spec("torch") is None:  # the torch-free run: its tests skip, this helper cannot import
    collect_ignore.append("tests/official.py")
if any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "prometheus_client", "httpx")):
    # the serve extra is not installed (the DataFlow run): its modules cannot import, its tests skip
    collect_ignore += ["runtime/serve", "tests/serve/serve_live.py"]
