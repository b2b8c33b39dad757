"""The public names: what users reach for, resolved lazily, and the deprecated ones warning for one release."""

import subprocess
import sys

import pytest

import longclip.runtime as runtime


def test_runtime_exports_what_users_reach_for():
    assert set(runtime.__all__) == {
        "CheckpointError", "DeviceUnavailableError", "EmbeddingStore", "EngineError", "ImageError",
        "ImageLongCLIPEvaluator", "InputError", "LongCLIP", "LongCLIPError", "ModelDirError", "RowError",
        "RunOptions", "RunSummary", "TextError", "WriteError", "preprocess_images", "run_file", "tokenize"}
    for name in runtime.__all__:
        assert getattr(runtime, name).__name__ == name


def test_every_error_users_get_is_a_longclip_error():
    for name in ("CheckpointError", "DeviceUnavailableError", "EngineError", "ImageError", "InputError",
                 "ModelDirError", "RowError", "TextError", "WriteError"):
        assert issubclass(getattr(runtime, name), runtime.LongCLIPError)


def test_parity_error_moved_to_the_exporter_and_warns_where_it_was():
    with pytest.warns(DeprecationWarning, match="longclip.export.ParityError"):
        old = runtime.ParityError
    assert "ParityError" not in runtime.__all__
    code = "import longclip.export as e; print(e.ParityError.__module__, 'ParityError' in e.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["longclip.runtime.contract.errors", "True"]
    assert old.__name__ == "ParityError"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        runtime.Nope  # noqa: B018


def test_importing_the_runtime_loads_no_onnxruntime_and_no_torch():
    code = ("import sys, longclip.runtime, longclip.runtime.report, longclip.runtime.contract.rows; "
            "print(sorted(m for m in ('onnxruntime', 'torch', 'dataflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exporter_reference_model_is_not_a_second_longclip():
    pytest.importorskip("torch", reason="needs the export extra")
    import longclip.export as export

    assert "LongCLIP" not in export.__all__ and "LongCLIPReference" in export.__all__
    with pytest.warns(DeprecationWarning, match="LongCLIPReference"):
        old = export.LongCLIP
    assert old is export.LongCLIPReference and old is not runtime.LongCLIP
