"""Client of a TensorFlow Serving model exported by :mod:`uhved_tf.export.saved_model`.

A case (NIfTI files of any subset of the modalities) is prepared exactly as for training
(:meth:`Application.load_case`: reorientation, resampling, crop to the brain, Nyul
standardisation, whitening; checked against the export's ``metadata.json``), sent to the
``segment_volume`` signature over REST or gRPC, and the answer is written back onto the input
files' grid by :meth:`uhved_tf.inference.case.Outputs.write` (segmentation in the label file's values,
synthesis of every modality, uncertainty).

Requests and answers are built and parsed by pure functions (:func:`build_rest_request`,
:func:`parse_rest_response`, :func:`build_grpc_request`, :func:`parse_grpc_response`); transport
problems become one-line :class:`ServingError` messages (server unreachable, model not found,
server error, timeout: each request waits at most ``timeout`` seconds, :data:`DEFAULT_TIMEOUT` unless
given, so a server that accepts and never answers fails the request instead of blocking).

REST (``POST http://HOST:PORT/v1/models/NAME[/versions/N]:predict``) uses TF Serving's columnar
JSON: ``{"signature_name": ..., "inputs": {name: nested lists}}`` -> ``{"outputs": {name: nested
lists}}``. Numbers are written with Python's shortest round-trip repr of each float32 value, so
the server gets exactly the client's float32 arrays. gRPC (``tensorflow-serving-api``, imported
only when used) sends binary tensors and is much smaller for whole volumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from uhved_tf.errors import ConfigError, UhvedError
from uhved_tf.export.saved_model import (MASK_INPUT, METADATA_FILE, SEGMENT_VOLUME, SERVING_DEFAULT,
                                         existing_versions, input_names, read_export_metadata)

log = logging.getLogger(__name__)

PROTOCOLS = ("rest", "grpc")
SIGNATURES = (SEGMENT_VOLUME, SERVING_DEFAULT)
#: Seconds a request waits for the server (``--timeout``). REST: for connecting and for each wait for
#: its answer (a server that accepts and never answers fails after this long); gRPC: the request's deadline.
DEFAULT_TIMEOUT = 120.0
GRPC_PIN = "tensorflow-serving-api==2.21.0"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServingError(UhvedError):
    """TensorFlow Serving could not be reached or answered with an error."""


def _one_line(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 500 else text[:497] + "..."


# --------------------------------------------------------------------------------------------
# addresses
# --------------------------------------------------------------------------------------------
def parse_server(server: str) -> tuple[str, int]:
    """``HOST:PORT`` (also ``http://HOST:PORT`` or ``[::1]:PORT``) -> ``(host, port)``."""
    text = str(server).strip()
    for prefix in ("http://", "grpc://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'--server "{server}": expected HOST:PORT, e.g. localhost:8501 (REST) or localhost:8500 (gRPC)')
    return host, int(port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def rest_url(host: str, port: int, model: str, version: int | None = None) -> str:
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"http://{_hostport(host, port)}{path}:predict"


def _not_found(model: str, version: int | None, where: str, message: str) -> str:
    return (f'model "{model}"' + (f" version {version}" if version is not None else "") + f" not found at {where}: "
            f"{message} (check --model / --version against the server's --model_name and model_base_path versions)")


def _float32_array(value) -> np.ndarray:
    """``value`` as an array, float32 if it is a float array (sent exactly as the client holds it)."""
    arr = np.asarray(value)
    return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr


# --------------------------------------------------------------------------------------------
# REST: pure request / response functions
# --------------------------------------------------------------------------------------------
def build_rest_request(inputs: dict, signature: str = SEGMENT_VOLUME) -> dict:
    """TF Serving's columnar JSON request ``{"signature_name", "inputs": {name: nested lists}}``.

    float arrays are sent as float32 values (exact: Python's float repr round-trips), integer
    arrays as integers."""
    body = {}
    for name, value in inputs.items():
        arr = _float32_array(value)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f'input "{name}": unsupported dtype {arr.dtype}')
        body[name] = arr.tolist()
    return {"signature_name": signature, "inputs": body}


def _as_array(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise ServingError(f'output "{name}" of the server is not a rectangular array ({_one_line(exc)})') from None
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int32)
    if arr.dtype.kind == "b":
        return arr
    raise ServingError(f'output "{name}" of the server is not numeric (got {arr.dtype}; ragged lists?)')


def parse_rest_response(body, output_names=None) -> dict:
    """The JSON answer (dict, str or bytes) -> ``{output name: ndarray}`` (float32 / int32).

    Columnar (``{"outputs": {...}}``, or ``{"outputs": [...]}`` for a one-output signature, named
    by ``output_names``) and row (``{"predictions": [...]}``) answers are read;
    ``{"error": ...}`` raises :class:`ServingError` with the server's message."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            raise ServingError(f"the server's answer is not JSON: {_one_line(body[:200])!r}") from None
    if not isinstance(body, dict):
        raise ServingError(f"the server's answer is not a JSON object (got {type(body).__name__})")
    if "error" in body:
        raise ServingError(f"server error: {_one_line(body['error'])}")
    if "outputs" in body:
        outs = body["outputs"]
        if isinstance(outs, dict):
            return {k: _as_array(k, v) for k, v in outs.items()}
        names = list(output_names or [])
        if len(names) != 1:
            raise ServingError("the server answered one unnamed output; expected the named outputs of the signature")
        return {names[0]: _as_array(names[0], outs)}
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):
            return {k: _as_array(k, [r[k] for r in rows]) for k in rows[0]}
        names = list(output_names or [])
        if len(names) != 1:
            raise ServingError("the server answered unnamed predictions; expected the named outputs of the signature")
        return {names[0]: _as_array(names[0], rows)}
    raise ServingError(f"the server's answer has neither \"outputs\" nor \"predictions\" (keys: {sorted(body)})")


def _rest_error_message(status: int, payload: bytes, where: str, model: str, version) -> str:
    try:
        message = json.loads(payload.decode("utf-8", errors="replace")).get("error")
    except (ValueError, AttributeError):
        message = None
    message = _one_line(message if message is not None else payload.decode("utf-8", errors="replace")[:300])
    if status == 404:
        if "not found" in message.lower() or not message:
            return _not_found(model, version, where, message or "HTTP 404")
        return f"{where} answered HTTP 404: {message}"
    return f"TensorFlow Serving at {where} answered HTTP {status}: {message}"


def rest_predict(host: str, port: int, model: str, inputs: dict, signature: str = SEGMENT_VOLUME,
                 version: int | None = None, timeout: float = DEFAULT_TIMEOUT, output_names=None) -> dict:
    """POST a columnar request; return the parsed outputs or raise :class:`ServingError`."""
    url = rest_url(host, port, model, version)
    where = _hostport(host, port)
    data = json.dumps(build_rest_request(inputs, signature)).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
    opener = urllib.request.build_opener(*handlers)
    log.info("POST %s (%.1f MB, signature %s)", url, len(data) / 1e6, signature)
    try:
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise ServingError(_rest_error_message(exc.code, exc.read() or b"", where, model, version)) from None
    except OSError as exc:  # URLError (its reason), a timeout or a dropped connection
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ServingError(_transport_message(reason, where, "REST", timeout, model, version)) from None
    return parse_rest_response(payload, output_names)


def _timeout_message(where: str, protocol: str, timeout: float, model: str, version) -> str:
    served = f'model "{model}"' + (f" version {version}" if version is not None else "")
    return (f"no answer from TensorFlow Serving at {where} ({protocol}) for {served} within {timeout:g} s "
            f"(--timeout SECONDS, default {DEFAULT_TIMEOUT:g}); raise it if the server needs longer for a volume, "
            f"else check that the server is up and not stuck")


def _transport_message(reason, where: str, protocol: str, timeout: float, model: str = "?", version=None) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return (f"cannot reach TensorFlow Serving at {where} ({protocol}): connection refused; is "
                f"tensorflow_model_server running with --{'rest_api_port' if protocol == 'REST' else 'port'}"
                f"={where.rsplit(':', 1)[-1]}?")
    if isinstance(reason, TimeoutError | socket.timeout):
        return _timeout_message(where, protocol, timeout, model, version)
    if isinstance(reason, socket.gaierror):
        return f"cannot reach TensorFlow Serving at {where} ({protocol}): unknown host ({_one_line(reason)})"
    if isinstance(reason, ConnectionError):
        return f"connection to TensorFlow Serving at {where} ({protocol}) lost: {_one_line(reason) or type(reason).__name__}"
    return f"cannot reach TensorFlow Serving at {where} ({protocol}): {_one_line(reason) or type(reason).__name__}"


# --------------------------------------------------------------------------------------------
# gRPC: pure request / response functions
# --------------------------------------------------------------------------------------------
def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise ConfigError(f"--protocol grpc needs the TensorFlow Serving API package: pip install {GRPC_PIN} "
                          f"(or use --protocol rest)") from None
    return predict_pb2, prediction_service_pb2_grpc


def build_grpc_request(inputs: dict, signature: str = SEGMENT_VOLUME, model: str = "uhved",
                       version: int | None = None, output_filter=()):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` with ``model_spec`` (name,
    signature, version) and one ``TensorProto`` per input (``tf.make_tensor_proto``)."""
    import tensorflow as tf

    predict_pb2, _ = _serving_apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_float32_array(value)))
    request.output_filter.extend(list(output_filter))
    return request


def parse_grpc_response(response) -> dict:
    """``PredictResponse`` -> ``{output name: ndarray}``."""
    import tensorflow as tf
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def grpc_predict(host: str, port: int, model: str, inputs: dict, signature: str = SEGMENT_VOLUME,
                 version: int | None = None, timeout: float = DEFAULT_TIMEOUT, output_filter=()) -> dict:
    import grpc

    _, service = _serving_apis()
    where = _hostport(host, port)
    request = build_grpc_request(inputs, signature, model, version, output_filter)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    log.info("gRPC Predict %s (%.1f MB, model %s, signature %s)", where, request.ByteSize() / 1e6, model, signature)
    with grpc.insecure_channel(where, options=options) as channel:
        stub = service.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise ServingError(_grpc_message(exc, where, model, version, timeout)) from None
    return parse_grpc_response(response)


def _grpc_message(exc, where: str, model: str, version, timeout: float) -> str:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = _one_line(exc.details() if hasattr(exc, "details") else exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach TensorFlow Serving at {where} (gRPC): {details}; is tensorflow_model_server "
                f"running with --port={where.rsplit(':', 1)[-1]}?")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return _timeout_message(where, "gRPC", timeout, model, version)
    if code == grpc.StatusCode.NOT_FOUND:
        return _not_found(model, version, where, details)
    name = code.name if code is not None else "error"
    return f"TensorFlow Serving at {where} answered {name}: {details}"


def predict(server: str, model: str, inputs: dict, *, protocol: str = "rest", signature: str = SEGMENT_VOLUME,
            version: int | None = None, timeout: float = DEFAULT_TIMEOUT, output_names=None) -> dict:
    """Send ``inputs`` to ``signature`` of ``model`` on ``server`` (HOST:PORT); outputs as arrays."""
    host, port = parse_server(server)
    if protocol == "rest":
        return rest_predict(host, port, model, inputs, signature, version, timeout, output_names)
    if protocol == "grpc":
        return grpc_predict(host, port, model, inputs, signature, version, timeout,
                            output_filter=output_names or ())
    raise ConfigError(f'--protocol "{protocol}": expected one of {", ".join(PROTOCOLS)}')


# --------------------------------------------------------------------------------------------
# metadata: the client must prepare cases as the exported model was trained
# --------------------------------------------------------------------------------------------
def find_metadata(model_dir, model: str, version: int | None, path=None) -> tuple[dict | None, Path | None]:
    """``--metadata`` if given; else the local export ``<model_dir>/export/<model>/<version or
    latest>``; else the training ``<model_dir>/metadata.json``; else ``(None, None)``."""
    if path:
        return read_export_metadata(path), Path(path)
    base = model_dir.export_dir / model
    versions = existing_versions(base)
    chosen = version if version is not None else (max(versions) if versions else None)
    exported = [base / str(chosen) / "assets" / METADATA_FILE] if chosen is not None else []
    for p in [*exported, model_dir.metadata]:
        if p.is_file():
            return read_export_metadata(p), p
    return None, None


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def preprocess_settings_for(cfg, meta: dict | None, source=None, *, now: dict, config_settings, histogram: Path):
    """The :class:`PreprocessSettings` to prepare a case for the exported model (``now``: the
    config's model metadata; ``config_settings()``: the config's own settings; ``histogram``: the
    config's landmarks file).

    Raises :class:`ConfigError` naming the setting when the config disagrees with the metadata
    (modalities, label values, number of classes, any preprocessing parameter, landmarks). With
    an export's metadata the landmarks come from it (the config's landmarks file may be absent)."""
    from uhved_tf.data.cases import PreprocessSettings

    where = str(source) if source else "the export metadata"
    if meta is None:
        log.warning("no metadata.json of the exported model found (give --metadata): preparing the case from the "
                    "config alone")
        return config_settings()
    for key in ("modalities", "label_values", "num_classes"):
        if key in meta and _jsonable(meta[key]) != _jsonable(now[key]):
            raise ConfigError(f"{where}: the model was exported with {key} = {meta[key]} but the config says "
                              f"{now[key]}; use the config the model was trained with")
    saved = meta.get("preprocess_settings")
    if saved is None:       # a training metadata.json: compare the preprocessing summary
        for key, value in (meta.get("preprocessing") or {}).items():
            if key != "histogram_ref_file" and _jsonable(value) != _jsonable(now["preprocessing"].get(key)):
                raise ConfigError(f"{where}: the model was trained with preprocessing {key} = {value} but the config "
                                  f"says {now['preprocessing'].get(key)}; use the training config")
        return config_settings()
    landmarks = None
    saved_landmarks = (meta.get("preprocessing") or {}).get("landmarks")
    if saved_landmarks is not None:
        landmarks = {m: np.asarray(v, np.float64) for m, v in saved_landmarks.items()}
        if cfg.network.normalisation and histogram.exists():
            from uhved_tf.data.histogram import read_landmarks
            mine = read_landmarks(histogram, cfg.modalities)
            for m, arr in mine.items():
                if m not in landmarks or not np.allclose(arr, landmarks[m], rtol=1e-6, atol=1e-6):
                    raise ConfigError(f"{where}: the Nyul landmarks of {m} in {histogram} differ from the "
                                      f"exported model's; use the model's landmarks file (assets/) or the training "
                                      f"[NETWORK] histogram_ref_file")
    settings = PreprocessSettings.from_config(cfg, landmarks=landmarks)
    if cfg.network.normalisation and landmarks is None:
        raise ConfigError(f"{where}: the config uses [NETWORK] normalisation = True but the model was exported "
                          f"without landmarks; use the training config")
    current = _jsonable(dataclasses.asdict(settings))
    for key, value in saved.items():
        if key != "landmarks" and key in current and _jsonable(value) != current[key]:
            raise ConfigError(f"{where}: the model was exported with preprocessing {key} = {value} but the config "
                              f"gives {current[key]}; use the training config")
    return settings


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------
def volume_inputs(case, modalities, names=None) -> dict:
    """``segment_volume`` inputs of a prepared case: one [D, H, W] array per modality (zeros when
    missing) and ``modality_mask`` [M]."""
    names = names or input_names(modalities)
    inputs = {n: np.ascontiguousarray(case.image[..., i], np.float32) for i, n in enumerate(names)}
    inputs[MASK_INPUT] = np.asarray(case.data_mask, np.float32)
    return inputs


def outputs_to_result(outputs: dict, modalities, shape, names=None) -> dict:
    """Signature outputs -> the ``predict_volume`` result dict that ``Outputs.write``
    takes (``seg_prob``, ``synth`` when the model synthesises, ``uncertainty``)."""
    names = names or input_names(modalities)
    for key in ("seg_probabilities", "uncertainty"):
        if key not in outputs:
            raise ServingError(f'the server\'s answer lacks the "{key}" output (got {", ".join(sorted(outputs))}); '
                               f"is this a uhved_tf export?")
    result = {"seg_prob": np.asarray(outputs["seg_probabilities"], np.float32),
              "uncertainty": np.asarray(outputs["uncertainty"], np.float32)}
    synth = [f"{n}_synth" for n in names]
    if all(s in outputs for s in synth):
        result["synth"] = np.stack([np.asarray(outputs[s], np.float32) for s in synth], axis=-1)
    for key, arr in result.items():
        if tuple(arr.shape[:3]) != tuple(shape):
            raise ServingError(f'the server answered "{key}" of shape {tuple(arr.shape)} for a volume of shape '
                               f"{tuple(shape)}")
    return result


def request_case(case, cfg, meta: dict | None, *, server: str, model: str, version: int | None = None,
                 protocol: str = "rest", signature: str = SEGMENT_VOLUME, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Send a prepared case to the server; its answer as a local prediction's result dict."""
    names = [(meta or {}).get("input_names", {}).get(m) for m in cfg.modalities]
    names = names if all(names) else input_names(cfg.modalities)
    inputs = volume_inputs(case, cfg.modalities, names)
    synthesises = (meta or {}).get("synthesises", getattr(_network_class(cfg), "synthesises", False))
    wanted = ["seg_probabilities", "uncertainty"] + ([f"{n}_synth" for n in names] if synthesises else [])
    if signature == SERVING_DEFAULT:
        inputs = {k: v[None] for k, v in inputs.items()}
    outputs = predict(server, model, inputs, protocol=protocol, signature=signature, version=version,
                      timeout=timeout, output_names=wanted if protocol == "grpc" else None)
    if signature == SERVING_DEFAULT:
        outputs = {k: v[0] for k, v in outputs.items()}
    return outputs_to_result(outputs, cfg.modalities, case.image.shape[:3], names)


def _network_class(cfg):
    try:
        from uhved_tf.model.registry import get_network_class
        return get_network_class(cfg.network.name)
    except UhvedError:
        return None
