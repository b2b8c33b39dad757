"""read_manifest: every field checked for type and range; each problem one line naming folder, field, value, fix."""

import json

import pytest

from conftest import copy_model
from longclip.runtime import ModelDirError
from longclip.runtime.contract.manifest import read_manifest

NAN = float("nan")


def _set(dotted, value):
    def edit(manifest):
        *parents, last = dotted.split(".")
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value

    return edit


def _refused(folder, *fragments):
    with pytest.raises(ModelDirError) as err:
        read_manifest(folder)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    for fragment in (str(folder), *fragments):
        assert fragment in message, message
    return message


REEXPORT = "re-export with `longclip-export CHECKPOINT -o DIR`"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("image.size", -5, "image.size is -5, expected an integer in 1..4096"),
    ("image.size", 0, "image.size is 0, expected an integer in 1..4096"),
    ("image.size", 100_000, "image.size is 100000, expected an integer in 1..4096"),
    ("image.size", "32", "image.size is '32', expected an integer"),
    ("image.size", 32.0, "image.size is 32.0, expected an integer"),
    ("image.size", True, "image.size is True, expected an integer"),
    ("image.std", [0, 0, 0], "image.std is [0, 0, 0], expected 3 finite numbers, each > 0"),
    ("image.std", [0.3, -0.2, 0.3], "image.std is [0.3, -0.2, 0.3], expected 3 finite numbers, each > 0"),
    ("image.mean", [NAN, 0.4, 0.4], "image.mean is [nan, 0.4, 0.4], expected 3 finite numbers"),
    ("image.mean", [0.5, 0.5], "image.mean is [0.5, 0.5], expected 3 finite numbers"),
    ("image.mean", "0.5", "image.mean is '0.5', expected 3 finite numbers"),
    ("image", 5, "image is 5, expected an object"),
    ("text.context_length", 249, "text.context_length is 249, expected an integer in 1..248"),
    ("text.context_length", 0, "text.context_length is 0, expected an integer in 1..248"),
    ("embed_dim", 0, "embed_dim is 0, expected an integer >= 1"),
    ("embed_dim", "32", "embed_dim is '32', expected an integer >= 1"),
    ("precision", "fp64", "precision is 'fp64', expected one of fp32, fp16, int8"),
    ("attention", "flash", "attention is 'flash', expected one of fused, explicit"),
    ("variant", 7, "variant is 7, expected a string"),
    ("row_invariant", "yes", "row_invariant is 'yes', expected true or false"),
    ("row_invariant", 1, "row_invariant is 1, expected true or false"),
    ("graphs.vision.file", "/etc/hostname", "graphs.vision.file is '/etc/hostname', expected a file name inside"),
    ("graphs.text.file", "../x.onnx", "graphs.text.file is '../x.onnx', expected a file name inside the folder"),
    ("graphs.text.file", "sub/../../tiny/text.onnx", "graphs.text.file is 'sub/../../tiny/text.onnx', expected"),
    ("graphs.text.file", "", "graphs.text.file is '', expected a file name inside the folder"),
    ("graphs.text.file", None, "graphs.text.file is None, expected a file name inside the folder"),
    ("graphs.text.sha256", "abc", "graphs.text.sha256 is 'abc', expected 64 hex digits"),
    ("graphs.text.sha256", "g" * 64, f"graphs.text.sha256 is {'g' * 64!r}, expected 64 hex digits"),
    ("graphs.text.files", "text.onnx", "graphs.text.files is 'text.onnx', expected a list of file names"),
    ("graphs.text.files", ["text.onnx", "/etc/passwd"], "graphs.text.files is '/etc/passwd', expected a file name"),
    ("graphs.text.data_sha256", {"text.onnx": "ab" * 32}, "graphs.text.data_sha256 is 'text.onnx', expected one of"),
    ("graphs.text.data_sha256", [], "graphs.text.data_sha256 is [], expected an object"),
])
def test_each_bad_field_is_one_line_naming_it(tiny_model_dir, tmp_path, field, value, message):
    folder = copy_model(tiny_model_dir, tmp_path / "tiny", _set(field, value))
    _refused(folder, f"model folder {str(folder)!r}: manifest.json {message}", REEXPORT)


def test_a_manifest_that_is_not_an_object(tiny_model_dir, tmp_path):
    for n, body in enumerate(["[]", "null", '"text"', "3"]):
        folder = copy_model(tiny_model_dir, tmp_path / f"m{n}")
        (folder / "manifest.json").write_text(body)
        _refused(folder, f"manifest.json is {json.loads(body)!r}, expected a JSON object", REEXPORT)


def test_unreadable_or_deeply_nested_json(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "tiny")
    (folder / "manifest.json").write_text('{"format": ')
    _refused(folder, "cannot read", "manifest.json", "Expecting value", REEXPORT)
    (folder / "manifest.json").write_bytes(b"\xff\xfe{}")
    _refused(folder, "cannot read", "codec can't decode")
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(folder, "cannot read", "recursion")


def test_a_missing_field_is_named(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "tiny", lambda m: m["image"].pop("size"))
    _refused(folder, "manifest.json has no image.size", REEXPORT)
    folder = copy_model(tiny_model_dir, tmp_path / "tiny2", lambda m: m.pop("graphs"))
    _refused(folder, "manifest.json has no graphs.vision.file", REEXPORT)


def test_a_graph_symlinked_out_of_the_folder(tiny_model_dir, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((tiny_model_dir / "text.onnx").read_bytes())
    folder = copy_model(tiny_model_dir, tmp_path / "tiny", _set("graphs.text.file", "link.onnx"))
    (folder / "link.onnx").symlink_to(outside)
    _refused(folder, "graphs.text.file is 'link.onnx', expected a file that stays inside the folder once symlinks "
                     "resolve")
    folder = copy_model(tiny_model_dir, tmp_path / "loop", _set("graphs.text.file", "loop.onnx"))
    (folder / "loop.onnx").symlink_to(folder / "loop.onnx")
    _refused(folder, "graphs.text.file is 'loop.onnx', expected a file that stays inside")


def test_a_folder_missing_a_graph_or_its_data(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "tiny")
    (folder / "vision.onnx").unlink()
    _refused(folder, "graphs.vision.file names 'vision.onnx', which is not a file in the folder: the folder is "
                     "incomplete; re-export or re-download it")
    folder = copy_model(tiny_model_dir, tmp_path / "data", _set("graphs.text.files", ["text.onnx", "text.onnx.data"]))
    _refused(folder, "graphs.text.files names 'text.onnx.data', which is not a file in the folder")


def test_what_a_good_manifest_reads_as(tiny_model_dir):
    m = read_manifest(tiny_model_dir)
    assert (m.image_size, m.context_length, m.embed_dim, m.precision, m.attention) == (32, 248, 32, "fp32", "explicit")
    assert m.std == (0.26862954, 0.26130258, 0.27577711)
    assert m.graphs["vision"].files == (tiny_model_dir / "vision.onnx",)
    assert m.graphs["text"].sha256 == {tiny_model_dir / "text.onnx": m.text_sha256}
    assert m.row_invariant is True


def test_older_manifests_still_read(tiny_model_dir, tmp_path):
    """Before --attention there was no attention field; before data_sha256, no hash of external data."""

    def older(manifest):
        manifest.pop("attention")
        for graph in manifest["graphs"].values():
            graph.pop("data_sha256")
            graph.pop("files")
            graph["sha256"] = graph["sha256"].upper()

    folder = copy_model(tiny_model_dir, tmp_path / "old", older)
    m = read_manifest(folder)
    assert m.attention == "explicit" and m.vision_sha256 == read_manifest(tiny_model_dir).vision_sha256
    assert m.graphs["text"].files == (folder / "text.onnx",)


def test_an_int8_folder_from_before_row_invariance_warns_once(tiny_model_dir, tmp_path, caplog):
    """No row_invariant field: fp32/fp16 folders are row-invariant as they are (the runtime fixed their text
    lengths); an int8 one had per-batch activation scales, and says so once per folder, however often loaded."""
    from longclip.runtime import LongCLIP

    def older(precision):
        def edit(manifest):
            manifest.pop("row_invariant", None)
            manifest.pop("activation_scales", None)
            manifest["precision"] = precision
        return edit

    fp32 = copy_model(tiny_model_dir, tmp_path / "fp32", older("fp32"))
    int8 = copy_model(tiny_model_dir, tmp_path / "int8", older("int8"))
    assert read_manifest(fp32).row_invariant is True and read_manifest(int8).row_invariant is False
    LongCLIP(fp32)
    assert "per-batch activation scales" not in caplog.text
    LongCLIP(int8)
    LongCLIP(int8)
    warned = [r for r in caplog.records if "per-batch activation scales" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and str(int8) in warned[0].getMessage()
    assert "--precision int8" in warned[0].getMessage()
