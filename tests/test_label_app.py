"""MONAI Label app: written by ``lkcfusion label-app``; its inference task fuses a 2-channel volume.

The server test is opt-in (``LKCFUSION_TEST_MONAILABEL=1``): it starts ``monailabel start_server`` from the
MONAI Label virtual environment (``LKCFUSION_MONAILABEL_VENV``, default ``<repo>/.venv-monailabel``) on
127.0.0.1 and fuses a volume over HTTP, as docs/monailabel.md describes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from email.parser import BytesParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.label_app import LABEL_APP_MODEL, write_label_app
from monai_lkcfusion.networks import LKCFUNet, save_network

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("LKCFUSION_MONAILABEL_VENV", REPO / ".venv-monailabel"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_network(LKCFUNet.from_preset("tiny"), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _two_channel_volume(path: Path, shape: tuple[int, int, int] = (20, 18, 6)) -> np.ndarray:
    """Write a synthetic co-registered (X, Y, Z, 2) NIfTI with an anisotropic, oblique affine; return the affine."""
    rng = np.random.default_rng(1)
    x, y, _ = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    mri = 200 * (r < 7) * (1 + 0.2 * np.sin(x / 2)) + 5 * rng.standard_normal(shape)
    ct = 1000.0 * ((r > 6) & (r < 8)) - 1000.0 * (r >= 8)
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.stack([mri, ct], axis=-1).astype(np.float32), affine), str(path))
    return affine


def test_write_label_app_files_and_weights(tmp_path, tiny_weights):
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    for name in ("main.py", "lib/__init__.py", "lib/infers/__init__.py", "lib/infers/fusion.py"):
        compile((app / name).read_text(), str(app / name), "exec")  # valid Python
    assert not (app / "__init__.py").exists()
    copied = app / "model" / f"{LABEL_APP_MODEL}.safetensors"
    assert copied.read_bytes() == tiny_weights.read_bytes()
    with pytest.raises(FusionInputError, match="not empty"):
        write_label_app(app, weights=tiny_weights)
    assert write_label_app(app, weights=tiny_weights, overwrite=True) == app


def test_label_app_cli_errors(tmp_path, capsys):
    assert main(["label-app", str(tmp_path / "app"), "--weights", str(tmp_path / "none.pt")]) == 2
    not_weights = tmp_path / "junk.pt"
    torch.save({"something": torch.zeros(3)}, not_weights)
    assert main(["label-app", str(tmp_path / "app2"), "--weights", str(not_weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("lkcfusion: error:") == 2 and "Traceback" not in err


def _import_app_task(app: Path, monkeypatch):
    """Import the app's ``FusionInferTask``, with a stand-in for ``monailabel`` when it is not installed here."""
    try:
        import monailabel  # noqa: F401
    except ImportError:
        infer_v2 = types.ModuleType("monailabel.interfaces.tasks.infer_v2")

        class InferTask:  # the two members the task uses
            def __init__(self, type, labels, dimension, description, config=None):
                self._config = dict(config or {})

            def config(self):
                return self._config

        infer_v2.InferTask, infer_v2.InferType = InferTask, types.SimpleNamespace(OTHERS="others")
        for name in ("monailabel", "monailabel.interfaces", "monailabel.interfaces.tasks"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, "monailabel.interfaces.tasks.infer_v2", infer_v2)
    monkeypatch.syspath_prepend(str(app))
    for name in [m for m in sys.modules if m == "lib" or m.startswith("lib.")]:
        monkeypatch.delitem(sys.modules, name)
    from lib.infers import FusionInferTask

    return FusionInferTask


def _mri_and_pet(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """An MRI (oblique, anisotropic grid) and a 'PET' of the same anatomy on a coarser, shifted grid."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = folder / "pair.nii.gz"
    affine = _two_channel_volume(pair)
    both = nib.load(pair).get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image(both[..., 0], affine), str(folder / "mri.nii.gz"))
    pet_affine = affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    pet_affine[:3, 3] += [0.4, -0.3, 0.0]
    nib.save(nib.Nifti1Image(np.maximum(both[::2, ::2, :, 1], 0) + 10.0, pet_affine), str(folder / "pet.nii.gz"))
    return folder / "mri.nii.gz", folder / "pet.nii.gz", affine


@pytest.fixture(autouse=True)
def _results_in_the_test_folder(tmp_path, monkeypatch):
    """The task writes each result to a temporary file that MONAI Label's server deletes once sent; called directly
    here, they went to /tmp and stayed (5 per run): the test's folder takes them."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_infer_task_fuses_two_images_like_lkcfusion_fuse(tmp_path, tiny_weights, monkeypatch):
    """MRI + second image (any grid) -> float image on the MRI grid, the same as ``lkcfusion fuse``."""
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    mri, pet, affine = _mri_and_pet(tmp_path / "studies")
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    for key in ("other", "label"):  # params {"other": ...} (the app resolves an ID to this path) or the upload
        path, result = task({"image": str(mri), key: str(pet)})
        fused = nib.load(path)
        assert fused.shape == (20, 18, 6) and result["shape"] == [20, 18, 6] and result["channels"] == 1
        assert fused.get_data_dtype() == np.float32
        np.testing.assert_allclose(fused.affine, affine, atol=1e-5)
    assert main(["fuse", str(mri), str(pet), "-o", str(tmp_path / "cli.nii.gz"), "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(fused.get_fdata(), nib.load(tmp_path / "cli.nii.gz").get_fdata())
    path, _ = task({"image": str(mri), "other": str(pet), "method": "max", "mask_background": False})
    assert not np.array_equal(nib.load(path).get_fdata(), fused.get_fdata())  # request options reach the fusion


def test_an_unknown_image_id_is_refused_not_read_as_the_working_folder(tmp_path, tiny_weights, monkeypatch):
    """MONAI Label's datastore turns an unknown image ID into image="", which the task read as the server's working
    folder: a DICOM series lying there was fused without a word (hand-check helper). Refused in one line."""
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    mri, pet, _ = _mri_and_pet(tmp_path / "studies")
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    monkeypatch.chdir(tmp_path / "studies")
    with pytest.raises(ValueError, match=r"^image: no MRI given \(an image ID not in the studies folder\?\)"):
        task({"image": "", "other": str(pet)})
    # the app names the ID before that (a stand-in for MONAI Label's app base and datastore)
    base = types.ModuleType("monailabel.interfaces.app")
    base.MONAILabelApp = type("MONAILabelApp", (), {"__init__": lambda self, **kwargs: None,
                                                    "infer": lambda self, request, datastore=None: request})
    monkeypatch.setitem(sys.modules, "monailabel.interfaces.app", base)
    sys.modules["monailabel"].__version__ = "stand-in"
    monkeypatch.delitem(sys.modules, "main", raising=False)
    from main import LKCFusionApp

    served = LKCFusionApp(str(app), str(tmp_path / "studies"), {})
    ids = {"mri": str(mri), "pet": str(pet)}
    studies = types.SimpleNamespace(get_image_uri=lambda image_id: ids.get(image_id, ""))
    assert served.infer({"image": "mri", "other": "pet"}, studies) == {"image": "mri", "other": str(pet)}
    with pytest.raises(ValueError, match=r"^image='mri_typo': no such image ID in the studies folder"):
        served.infer({"image": "mri_typo", "other": "pet"}, studies)
    with pytest.raises(ValueError, match=r"^other='pet_typo': no such image ID"):
        served.infer({"image": str(pet), "other": "pet_typo"}, studies)


def test_a_request_the_task_cannot_serve_is_answered_422_with_its_reason(tmp_path, tiny_weights, monkeypatch):
    """Every user error (unknown ID, missing second image, a bad parameter) reached a Slicer user as a bare
    "Internal Server Error" (500), the reason only in the server's log (hand-check helper on a real server): they
    are FastAPI's HTTPException 422 with the one-line reason; a bug stays a 500 with its traceback in the log."""
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    mri, pet, _ = _mri_and_pet(tmp_path / "studies")
    _import_app_task(app, monkeypatch)  # the stand-in monailabel modules and the app's lib on sys.path

    class HTTPException(Exception):  # a stand-in for fastapi's (MONAI Label's server framework)
        def __init__(self, status_code: int, detail: str) -> None:
            super().__init__(detail)
            self.status_code, self.detail = status_code, detail

    monkeypatch.setitem(sys.modules, "fastapi", types.SimpleNamespace(HTTPException=HTTPException))
    failures = {"user": FusionInputError("params: axis '2': give a whole number"), "bug": KeyError("a bug")}

    def base_infer(self, request, datastore=None):
        raise failures[request.get("fail", "user")]

    base = types.ModuleType("monailabel.interfaces.app")
    base.MONAILabelApp = type("MONAILabelApp", (), {"__init__": lambda self, **kwargs: None, "infer": base_infer})
    monkeypatch.setitem(sys.modules, "monailabel.interfaces.app", base)
    sys.modules["monailabel"].__version__ = "stand-in"
    monkeypatch.delitem(sys.modules, "main", raising=False)
    from main import LKCFusionApp

    served = LKCFusionApp(str(app), str(tmp_path / "studies"), {})
    studies = types.SimpleNamespace(get_image_uri=lambda image_id: "")
    for request, detail in (({"image": "mri_typo", "other": str(pet)}, "image='mri_typo': no such image ID"),
                            ({"image": str(mri), "other": str(pet)}, "params: axis '2': give a whole number")):
        with pytest.raises(HTTPException) as caught:
            served.infer(request, studies)
        assert caught.value.status_code == 422 and caught.value.detail.startswith(detail), caught.value.detail
    with pytest.raises(KeyError, match="a bug"):
        served.infer({"image": str(mri), "other": str(pet), "fail": "bug"}, studies)


def test_infer_task_fuses_the_two_channels_of_one_volume(tmp_path, tiny_weights, monkeypatch):
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    volume = tmp_path / "pair.nii.gz"
    affine = _two_channel_volume(volume)
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    path, result = task({"image": str(volume)})
    fused = nib.load(path)
    assert fused.shape[:3] == (20, 18, 6) and result["shape"] == [20, 18, 6]
    assert fused.get_data_dtype() == np.float32
    np.testing.assert_allclose(fused.affine, affine, atol=1e-5)
    data = fused.get_fdata()
    assert np.isfinite(data).all() and data.std() > 0
    one_channel = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(one_channel))
    with pytest.raises(ValueError, match="expected 2 channels"):
        task({"image": str(one_channel)})


def test_a_two_channel_request_fuses_as_the_two_files_would(tmp_path, tiny_weights, monkeypatch):
    """The channels went in as in-memory tensors, whose float values in [0, 1] are taken as already scaled, while
    ``lkcfusion fuse`` percentile-scales the same values read from a file: a PET channel in [0, 0.88] fused up to 0.15
    off (hand-check helper on a real MONAI Label server). Both channels now go in as files."""
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(3)
    x, y, _ = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (20, 18, 6)], indexing="ij")
    mri = 300 * np.exp(-((x - 10) ** 2 + (y - 9) ** 2) / 40) + 5 * rng.random(x.shape)
    pet = 0.88 * np.exp(-((x - 7) ** 2 + (y - 11) ** 2) / 10) * rng.uniform(0.5, 1.0, x.shape)  # in [0, 1]
    for name, data in (("pair", np.stack([mri, pet], axis=-1)), ("mri", mri), ("pet", pet)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(tmp_path / f"{name}.nii.gz"))
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    path, result = task({"image": str(tmp_path / "pair.nii.gz")})
    assert main(["fuse", str(tmp_path / "mri.nii.gz"), str(tmp_path / "pet.nii.gz"), "-o", str(tmp_path / "cli.nii.gz"),
                 "--weights", str(tiny_weights), "--device", "cpu", "-q"]) == 0
    np.testing.assert_array_equal(nib.load(path).get_fdata(), nib.load(tmp_path / "cli.nii.gz").get_fdata())
    assert not list(tmp_path.glob("lkcfusion-channels-*"))  # the channel files are removed again


def test_infer_task_keeps_one_predictor_between_requests(tmp_path, tiny_weights, monkeypatch):
    import monai_lkcfusion.networks as networks

    calls = []
    real = networks.optimize_for_inference
    monkeypatch.setattr(networks, "optimize_for_inference", lambda net, *a, **k: calls.append(1) or real(net, *a, **k))
    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    mri, pet, _ = _mri_and_pet(tmp_path / "studies")
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    first, r1 = task({"image": str(mri), "other": str(pet)})
    _, r2 = task({"image": str(tmp_path / "studies" / "pair.nii.gz")})
    third, r3 = task({"image": str(mri), "other": str(pet)})
    assert len(calls) == 1 and task.worker.loads == 1 and r3["predictor_loads"] == 1
    assert (r1["predictor_reused"], r2["predictor_reused"], r3["predictor_reused"]) == (False, True, True)
    assert np.array_equal(nib.load(first).get_fdata(), nib.load(third).get_fdata())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (as ``curl -F name=@file`` / ``-F name=value`` sends it) and its content type."""
    boundary = "lkcfusion-test-boundary"
    body = b""
    for name, (filename, content) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, fields: dict[str, tuple[str | None, bytes]] | None = None) -> tuple[bytes, str]:
    body, content_type = _multipart(fields) if fields else (b"", "application/x-www-form-urlencoded")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read(), response.headers.get("Content-Type", "")


def _parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of MONAI Label's default (multipart) reply: ``params`` (JSON) and ``image``."""
    message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.get_payload()}


@pytest.mark.monailabel
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LKCFUSION_TEST_MONAILABEL") != "1", reason="opt-in: LKCFUSION_TEST_MONAILABEL=1")
def test_monailabel_server_fuses_two_images_over_http(tmp_path, tiny_weights):
    monailabel = VENV / "bin" / "monailabel"
    if not monailabel.is_file():
        pytest.skip(f"no MONAI Label venv at {VENV} (see docs/monailabel.md)")
    app = tmp_path / "app"
    assert main(["label-app", str(app), "--weights", str(tiny_weights)]) == 0
    studies = tmp_path / "studies"
    mri, pet, affine = _mri_and_pet(studies)
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [str(monailabel), "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--conf", "models", "lkcfusion", "--conf", "device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}  # = an activated venv
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as response:
                    assert LABEL_APP_MODEL in response.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(2)
        # 1. both images by ID from the studies folder: image=mri, params={"other": "pet"}
        t0 = time.time()
        by_id, _ = _post(f"{base}/infer/lkcfusion?image=mri&output=image",
                         {"params": (None, json.dumps({"other": "pet"}).encode())})
        first_seconds = time.time() - t0
        (tmp_path / "by_id.nii.gz").write_bytes(by_id)
        # 2. both uploaded (file = MRI, label = PET), default multipart reply: params JSON + image
        t0 = time.time()
        reply, content_type = _post(f"{base}/infer/lkcfusion", {"file": ("mri.nii.gz", mri.read_bytes()),
                                                                "label": ("pet.nii.gz", pet.read_bytes())})
        second_seconds = time.time() - t0
        parts = _parts(reply, content_type)
        (tmp_path / "uploaded.nii.gz").write_bytes(parts["image"])
        params = json.loads(parts["params"])
        # 3. one 2-channel volume by ID, JSON only
        two_channel, _ = _post(f"{base}/infer/lkcfusion?image=pair&output=json")
        # 4. a request the task cannot serve: 422 and its reason (a bare 500 "Internal Server Error" before)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(f"{base}/infer/lkcfusion?image=mri&output=json",
                  {"params": (None, json.dumps({"other": "pet", "axis": "2"}).encode())})
        reason = refused.value.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    results = [nib.load(str(tmp_path / name)) for name in ("by_id.nii.gz", "uploaded.nii.gz")]
    for fused in results:
        assert fused.shape == (20, 18, 6)  # the MRI's grid, not the PET's (10, 9, 6)
        assert fused.get_data_dtype() == np.float32
        np.testing.assert_allclose(fused.affine, affine, atol=1e-5)
        assert np.isfinite(fused.get_fdata()).all()
    np.testing.assert_array_equal(results[0].get_fdata(), results[1].get_fdata())
    assert params["predictor_reused"] is True and params["predictor_loads"] == 1, params
    assert json.loads(two_channel)["predictor_loads"] == 1
    assert refused.value.code == 422 and "axis '2': give a whole number" in reason, (refused.value.code, reason)
    print(f"\nfirst request {first_seconds:.2f} s, second {second_seconds:.2f} s; server: {params}")


def test_picture_requests_give_the_file_shape_and_bad_params_leave_no_file(tmp_path, tiny_weights, monkeypatch):
    """Hand-check helper: a 2D request's reply said ``shape [H, W]`` while the file is (W, H, 1, ...); ``"axis": "2"``
    (a string) reached fuse() and gave a message that contradicted itself; every failed request left an empty
    temporary NIfTI behind (the server deletes only a result it sends)."""
    from PIL import Image

    app = write_label_app(tmp_path / "app", weights=tiny_weights)
    task = _import_app_task(app, monkeypatch)(weights=str(app / "model" / "lkcfusion.safetensors"))
    rng = np.random.default_rng(3)
    mri, pet = tmp_path / "mri.png", tmp_path / "pet.png"
    Image.fromarray(rng.integers(0, 256, (24, 40), dtype=np.uint8)).save(mri)  # 24 rows, 40 columns
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(pet)
    for options in ({}, {"color": False}):
        path, result = task({"image": str(mri), "other": str(pet), **options})
        written = nib.load(path).shape
        assert result["shape"] == list(written[:3]) and written[:2] == (40, 24), (result, written)
        assert result["channels"] == (1 if options else 3)
    path, _ = task({"image": str(mri), "other": str(pet), "device": None})  # null: the app's device
    assert nib.load(path).shape[:2] == (40, 24)
    before = sorted(tmp_path.glob("*.nii.gz"))
    bad = {"axis": ("2", r"^params: axis '2': give a whole number$"),
           "tta": ("yes", r"^params: tta 'yes': give true or false$"),
           "batch_size": (0, r"^params: batch_size 0: "),
           "device": (0, r"^params: device 0: give a string$")}  # was "--device 0: Invalid device string"
    for key, (value, message) in bad.items():
        with pytest.raises(FusionInputError, match=message):
            task({"image": str(mri), "other": str(pet), key: value})
    with pytest.raises(FusionInputError, match="unknown fusion method .nope."):
        task({"image": str(mri), "other": str(pet), "method": "nope"})
    with pytest.raises(FusionInputError):
        task({"image": str(mri), "other": str(tmp_path / "missing.png")})
    assert sorted(tmp_path.glob("*.nii.gz")) == before
