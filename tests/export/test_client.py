"""The TensorFlow Serving client: request building and parsing against the real
``tensorflow-serving-api`` protobufs and TF Serving's REST JSON layout, and the whole client path
(NIfTI files -> preprocessing -> request -> NIfTI outputs on the input grid) against stand-ins.

``tensorflow_model_server`` cannot be installed on the CI machine (it is neither on PyPI nor in
Debian), so the end-to-end tests talk to stand-ins on 127.0.0.1: an ``http.server`` answering
``POST /v1/models/<name>[/versions/<n>]:predict`` and a ``grpcio`` server implementing
``PredictionService.Predict``, both with the outputs of the exported SavedModel itself
(``tf.saved_model.load`` + the requested signature), and with TF Serving's error answers (404
"Servable not found for request: ...", ``{"error": ...}``, gRPC NOT_FOUND). They check our side
of the protocol, not TF Serving's.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, HTTPServer

import nibabel as nib
import numpy as np
import pytest

from tests.export.test_export import exported_project

NAMES = ("t1", "t1c", "t2", "flair")
MAX_REQUESTS = 40


# --------------------------------------------------------------------------------------------
# pure functions (fast)
# --------------------------------------------------------------------------------------------
def test_parse_server():
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.client import parse_server, rest_url
    assert parse_server("localhost:8501") == ("localhost", 8501)
    assert parse_server("http://10.0.0.2:8501/") == ("10.0.0.2", 8501)
    assert parse_server("[::1]:8500") == ("::1", 8500)
    assert rest_url("localhost", 8501, "uhved") == "http://localhost:8501/v1/models/uhved:predict"
    assert rest_url("::1", 8501, "uhved", 3) == "http://[::1]:8501/v1/models/uhved/versions/3:predict"
    for bad in ("localhost", "localhost:http", ":8501", "host:70000"):
        with pytest.raises(UhvedError, match="HOST:PORT"):
            parse_server(bad)


def test_rest_request_is_columnar_json_with_exact_float32_values(rng):
    from uhved_tf.export.client import build_rest_request
    vol = rng.normal(size=(3, 4, 2)).astype(np.float32)
    body = build_rest_request({"t1": vol, "modality_mask": np.array([1, 0, 0, 1], np.float32)}, "segment_volume")
    assert set(body) == {"signature_name", "inputs"} and body["signature_name"] == "segment_volume"
    back = json.loads(json.dumps(body))
    assert back["inputs"]["modality_mask"] == [1.0, 0.0, 0.0, 1.0]
    arr = np.asarray(back["inputs"]["t1"], np.float32)
    assert arr.shape == (3, 4, 2) and np.array_equal(arr, vol)


def test_parse_rest_response_layouts():
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.client import parse_rest_response
    out = parse_rest_response(json.dumps({"outputs": {"seg_labels": [[0, 4]], "uncertainty": [[0.5, 0.25]]}}))
    assert out["seg_labels"].dtype == np.int32 and out["seg_labels"].tolist() == [[0, 4]]
    assert out["uncertainty"].dtype == np.float32
    assert parse_rest_response({"outputs": [[1.0]]}, ["uncertainty"])["uncertainty"].shape == (1, 1)
    rows = parse_rest_response({"predictions": [{"seg_labels": [1, 2]}, {"seg_labels": [4, 0]}]})
    assert rows["seg_labels"].tolist() == [[1, 2], [4, 0]]
    with pytest.raises(UhvedError, match="server error: Servable not found"):
        parse_rest_response(b'{"error": "Servable not found for request: Latest(x)"}')
    with pytest.raises(UhvedError, match="not JSON"):
        parse_rest_response(b"<html>proxy error</html>")


def test_grpc_request_and_response_use_the_serving_protobufs(rng):
    pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from uhved_tf.export.client import build_grpc_request, parse_grpc_response
    vol = rng.normal(size=(5, 4, 3)).astype(np.float32)
    mask = np.array([0, 1, 0, 1], np.float32)
    req = build_grpc_request({"t1c": vol, "modality_mask": mask}, "segment_volume", "uhved", version=3,
                             output_filter=["seg_probabilities"])
    assert isinstance(req, predict_pb2.PredictRequest)
    assert (req.model_spec.name, req.model_spec.signature_name, req.model_spec.version.value) == \
        ("uhved", "segment_volume", 3)
    assert list(req.output_filter) == ["seg_probabilities"]
    assert req.inputs["t1c"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in req.inputs["t1c"].tensor_shape.dim] == [5, 4, 3]
    np.testing.assert_array_equal(tf.make_ndarray(req.inputs["t1c"]), vol)
    wire = predict_pb2.PredictRequest.FromString(req.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(wire.inputs["modality_mask"]), mask)
    assert not build_grpc_request({"t1": vol}, model="m").model_spec.HasField("version")

    resp = predict_pb2.PredictResponse()
    resp.outputs["seg_labels"].CopyFrom(tf.make_tensor_proto(np.array([[0, 4]], np.int32)))
    resp.outputs["uncertainty"].CopyFrom(tf.make_tensor_proto(vol))
    parsed = parse_grpc_response(predict_pb2.PredictResponse.FromString(resp.SerializeToString()))
    assert parsed["seg_labels"].dtype == np.int32 and parsed["seg_labels"].tolist() == [[0, 4]]
    np.testing.assert_array_equal(parsed["uncertainty"], vol)


# --------------------------------------------------------------------------------------------
# stand-in servers answering with the SavedModel's own outputs
# --------------------------------------------------------------------------------------------
class StandInServing:
    """What the stand-ins answer: ``model`` -> {version: loaded SavedModel}; ``fail`` / ``delay``
    simulate a server error and a slow server."""

    def __init__(self, exports: dict):
        import tensorflow as tf
        self.models = {"uhved": {v: tf.saved_model.load(str(p)) for v, p in exports.items()}}
        self.fail: tuple[int, str] | None = None
        self.delay = 0.0
        self.requests = 0

    def find(self, name, version):
        versions = self.models.get(name)
        if not versions or (version is not None and version not in versions):
            what = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            return None, f"Servable not found for request: {what}"
        return versions[version if version is not None else max(versions)], None

    def run(self, loaded, signature, inputs):
        import tensorflow as tf
        fn = loaded.signatures[signature]
        return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _http_handler(state: StandInServing):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):       # keep the test output clean
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            state.requests += 1
            if state.requests > MAX_REQUESTS:
                return self.answer(503, {"error": "stand-in: too many requests"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if state.delay:
                time.sleep(state.delay)
            if state.fail:
                return self.answer(state.fail[0], {"error": state.fail[1]})
            m = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
            if not m:
                return self.answer(404, {"error": f"Malformed request: POST {self.path}"})
            loaded, error = state.find(m.group(1), int(m.group(2)) if m.group(2) else None)
            if error:
                return self.answer(404, {"error": error})
            try:
                outputs = state.run(loaded, body.get("signature_name", "serving_default"),
                                    {k: np.asarray(v, np.float32) for k, v in body["inputs"].items()})
            except Exception as exc:  # TF Serving answers 400 with the message
                return self.answer(400, {"error": " ".join(str(exc).split())[:500]})
            self.answer(200, {"outputs": {k: v.tolist() for k, v in outputs.items()}})

    return Handler


def test_a_server_that_accepts_and_never_answers_fails_after_the_timeout_with_one_line():
    """The request fails after ``timeout`` seconds (default 120; it was 600, ten minutes of a
    blocked client) and says what timed out: server, protocol, model, seconds, how to wait longer."""
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.client import DEFAULT_TIMEOUT, predict

    assert DEFAULT_TIMEOUT == 120
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    inputs = {"t1": np.zeros((2, 2, 2), np.float32), "modality_mask": np.ones(4, np.float32)}
    t0 = time.perf_counter()
    try:
        with pytest.raises(UhvedError) as info:
            predict(f"127.0.0.1:{port}", "uhved", inputs, version=3, timeout=0.5)
    finally:
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
    assert accepted, "the stand-in server did not accept the connection"
    assert time.perf_counter() - t0 < 10
    assert str(info.value) == (f'no answer from TensorFlow Serving at 127.0.0.1:{port} (REST) for model "uhved" '
                               f"version 3 within 0.5 s (--timeout SECONDS, default 120); raise it if the server "
                               f"needs longer for a volume, else check that the server is up and not stuck")


def test_the_client_timeout_is_documented_in_help_and_docs():
    from uhved_tf.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "(default 120 s;" in " ".join(commands["client"].format_help().split())
    docs = " ".join((Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text().split())
    assert "`--timeout SECONDS` (default 120) bounds each request" in docs and "default 600" not in docs


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return exported_project(tmp_path_factory)


@pytest.fixture(scope="module")
def serving(project):
    return StandInServing({1: project["v1"].path, 2: project["v2"].path})


@pytest.fixture(scope="module")
def http_server(serving):
    server = HTTPServer(("127.0.0.1", 0), _http_handler(serving))
    server.timeout = 30
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def grpc_server(serving):
    pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            serving.requests += 1
            version = request.model_spec.version.value if request.model_spec.HasField("version") else None
            loaded, error = serving.find(request.model_spec.name, version)
            if error:
                context.abort(grpc.StatusCode.NOT_FOUND, error)
            outputs = serving.run(loaded, request.model_spec.signature_name or "serving_default",
                                  {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1),
                         options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait(10)


@pytest.fixture(autouse=True)
def _reset(request):
    yield
    if "serving" in request.fixturenames:
        state = request.getfixturevalue("serving")
        state.fail, state.delay = None, 0.0


def _files(project, modalities=("t1ce", "flair")):
    data = project["root"] / "data"
    case_dir = next(p.parent for p in sorted(data.rglob("*_flair.nii.gz")))
    sid = case_dir.name
    return sid, {m: case_dir / f"{sid}_{m}.nii.gz" for m in modalities}


def _client(project, server, out, *extra, files=None):
    from uhved_tf.cli import _add_config_args
    from uhved_tf.export.commands import COMMANDS, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"), _add_config_args)
    flags = []
    for m, path in (files or _files(project)[1]).items():
        flags += [f"--{'t1c' if m == 't1ce' else m}", str(path)]
    args = parser.parse_args(["client", "-c", str(project["cfg_path"]), "--server", server, "-o", str(out),
                              *flags, *map(str, extra)])
    return COMMANDS["client"](args, project["cfg"])


def _python_outputs(project, files, out):
    """The Python inference path (``uhved_tf inference``'s) on the same case, written as NIfTI."""
    from uhved_tf.application import Application
    from uhved_tf.io.discovery import Subject

    app = Application(project["cfg"])                     # fresh: its WindowPredictor starts at call 0
    modality = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "Flair"}
    case = app.load_case(Subject(files[0], {modality[m]: p for m, p in files[1].items()}), with_label=False)
    subset = tuple(m for m in project["cfg"].modalities if case.data_mask[project["cfg"].modalities.index(m)])
    res = app.predictor(project["model"])(case, [subset])[0]
    return app.outputs.write(case, res, out, overwrite=True)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_client_writes_outputs_on_the_input_grid_equal_to_local_inference(project, http_server, grpc_server,
                                                                        protocol, tmp_path):
    sid, files = _files(project)
    server = http_server if protocol == "rest" else grpc_server
    assert _client(project, server, tmp_path / "served", "--protocol", protocol, "--subject-id", sid) == 0
    expected = [f"{sid}_seg.nii.gz", f"{sid}_uncertainty.nii.gz"] + [f"{sid}_{m}_synth.nii.gz"
                                                                      for m in ("T1", "T1c", "T2", "Flair")]
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == sorted(expected)
    reference = nib.load(str(files["flair"]))
    local = {p.name: p for p in _python_outputs(project, (sid, files), tmp_path / "local")}
    for name in expected:
        img = nib.load(str(tmp_path / "served" / name))
        assert img.shape == reference.shape
        np.testing.assert_allclose(img.affine, reference.affine, atol=1e-6)
        served, mine = np.asarray(img.dataobj), np.asarray(nib.load(str(local[name])).dataobj)
        if name.endswith("_seg.nii.gz"):
            assert set(np.unique(served)) <= {0, 1, 2, 4}
            np.testing.assert_array_equal(served, mine)
        else:
            np.testing.assert_allclose(served, mine, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_client_refuses_to_overwrite_and_checks_the_metadata(project, http_server, tmp_path):
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.client import preprocess_settings_for

    out = tmp_path / "out"
    assert _client(project, http_server, out, "--version", "1") == 0
    with pytest.raises(UhvedError, match="exists") as info:
        _client(project, http_server, out, "--version", "1")
    assert "\n" not in str(info.value)
    meta = json.loads((project["v2"].path / "assets" / "metadata.json").read_text())
    bad = dict(meta, preprocess_settings=dict(meta["preprocess_settings"], whitening=False))
    app = project["app"]
    local = dict(now=app.metadata(), config_settings=app.preprocess_settings, histogram=app.model_dir.histogram)
    with pytest.raises(UhvedError, match="whitening"):
        preprocess_settings_for(app.cfg, bad, "meta.json", **local)
    with pytest.raises(UhvedError, match="label_values"):
        preprocess_settings_for(app.cfg, dict(meta, label_values=[0, 1, 2, 3]), "meta.json", **local)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_unreachable_server_is_one_line(project, protocol, tmp_path):
    if protocol == "grpc":
        pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    from uhved_tf.errors import UhvedError
    port = _free_port()
    with pytest.raises(UhvedError) as info:
        _client(project, f"127.0.0.1:{port}", tmp_path, "--protocol", protocol, "--timeout", "20")
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "cannot reach" in message
    if protocol == "rest":
        assert "connection refused" in message


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_unknown_model_is_servable_not_found(project, http_server, grpc_server, protocol, tmp_path):
    from uhved_tf.errors import UhvedError
    server = http_server if protocol == "rest" else grpc_server
    with pytest.raises(UhvedError) as info:
        _client(project, server, tmp_path, "--protocol", protocol, "--model", "uhvde")
    message = str(info.value)
    assert "\n" not in message
    assert 'model "uhvde" not found' in message and "Servable not found for request: Latest(uhvde)" in message
    with pytest.raises(UhvedError, match=r"version 9 not found.*Specific\(uhved, 9\)"):
        _client(project, server, tmp_path, "--protocol", protocol, "--version", "9")


@pytest.mark.slow
def test_server_error_and_timeout_are_one_line(project, serving, http_server, tmp_path):
    from uhved_tf.errors import UhvedError
    serving.fail = (500, "Internal: could not allocate\n  tensor of shape [...]")
    with pytest.raises(UhvedError) as info:
        _client(project, http_server, tmp_path)
    assert str(info.value) == (f"TensorFlow Serving at {http_server} answered HTTP 500: Internal: could not "
                               f"allocate tensor of shape [...]")
    serving.fail, serving.delay = None, 3.0
    with pytest.raises(UhvedError, match=r"no answer from TensorFlow Serving at .* within 1 s") as info:
        _client(project, http_server, tmp_path, "--timeout", "1")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_request_message_comes_from_the_model(project, serving, http_server):
    """Wrong inputs (a mask of length 3, an empty subset) reach the SavedModel; its error comes back
    in one line."""
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.client import predict
    inputs = {n: np.zeros((8, 8, 8), np.float32) for n in NAMES}
    inputs["modality_mask"] = np.ones(3, np.float32)
    with pytest.raises(UhvedError, match="answered HTTP 400") as info:
        predict(http_server, "uhved", inputs)
    assert "\n" not in str(info.value)
    inputs["modality_mask"] = np.zeros(4, np.float32)
    with pytest.raises(UhvedError, match="answered HTTP 400.*modality_mask: no modality is available") as info:
        predict(http_server, "uhved", inputs)


@pytest.mark.slow
def test_serving_default_over_rest_pads_a_non_divisible_volume(project, http_server):
    from uhved_tf.export.client import predict
    rng = np.random.default_rng(1)
    inputs = {n: rng.normal(size=(1, 9, 11, 7)).astype(np.float32) for n in NAMES}
    inputs["modality_mask"] = np.array([[0, 1, 0, 1]], np.float32)
    out = predict(http_server, "uhved", inputs, signature="serving_default", version=1)
    assert out["seg_probabilities"].shape == (1, 9, 11, 7, 4)
    assert out["seg_labels"].dtype == np.int32 and out["flair_synth"].shape == (1, 9, 11, 7)


@pytest.mark.slow
def test_cli_subcommands_once_wired(project, tmp_path):
    """Through ``python -m uhved_tf`` once ``uhved_tf/cli.py`` registers ``export`` and ``client``."""
    import os
    import subprocess
    import sys

    from uhved_tf import cli
    if "client" not in cli.COMMANDS or "export" not in cli.COMMANDS:
        pytest.skip("export / client are not wired into uhved_tf.cli yet")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    port = _free_port()
    _, files = _files(project)
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", "client", "-c", str(project["cfg_path"]), "--server",
                           f"127.0.0.1:{port}", "--t1c", str(files["t1ce"]), "-o", str(tmp_path), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("uhved_tf client: error:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", "export", "-c", str(project["cfg_path"]), "--version",
                           "1", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "exists; pass --overwrite" in proc.stderr, proc.stderr[-2000:]
