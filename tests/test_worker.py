"""``monai_lkcfusion.apps.worker``: the JSON-lines protocol of the background fusion process, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_lkcfusion.apps.worker import FusionJob, FusionWorker, serve
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.inferers import worker_policy


def _volumes(folder: Path) -> tuple[Path, Path]:
    """A small MRI (16, 12, 5) and a CT on the same grid, as NIfTI."""
    x, y, _ = np.meshgrid(np.arange(16), np.arange(12), np.arange(5), indexing="ij")
    mri = (100 + 50 * np.sin(x / 3.0) * np.cos(y / 2.0)).astype(np.float32)
    ct = np.where(np.hypot(x - 8, y - 6) < 4, 1000.0, -1000.0).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(mri, affine), str(folder / "mri.nii.gz"))
    nib.save(nib.Nifti1Image(ct, affine), str(folder / "ct.nii.gz"))
    return folder / "mri.nii.gz", folder / "ct.nii.gz"


def test_serve_runs_jobs_and_reports_each_step(tmp_path):
    mri, ct = _volumes(tmp_path)
    job = {"mri": str(mri), "other": str(ct), "method": "max", "device": "cpu", "batch_size": 2}
    lines = [
        json.dumps({**job, "id": "a", "output": str(tmp_path / "a.nii.gz")}),
        "",
        "not json",
        json.dumps({**job, "id": "b", "output": str(tmp_path / "b.nii.gz"), "colour": True}),
        json.dumps({**job, "id": "c", "other": str(tmp_path / "missing.nii.gz"), "output": str(tmp_path / "c.nii")}),
        json.dumps({**job, "id": "d", "output": str(tmp_path / "d.nii.gz")}),
        json.dumps({"command": "quit"}),
        json.dumps({**job, "id": "e", "output": str(tmp_path / "e.nii.gz")}),  # after quit: not run
    ]
    events: list[dict] = []
    assert serve(lines, events.append) == 0
    assert events[0]["event"] == "ready"
    by_id = {}
    for event in events[1:]:
        by_id.setdefault(event.get("id"), []).append(event["event"])
    # 5 slices, 2 per network call; on a CPU with several cores the slice workers take one slice per call
    done = [1, 2, 3, 4, 5] if worker_policy(None, None, torch.device("cpu"))[0] > 1 else [2, 4, 5]
    warned = [e.get("message") for e in events if e.get("id") == "a" and e["event"] == "warning"]
    assert by_id["a"] == ["started", *["progress"] * len(done), "done"], warned  # (a loaded run once warned twice)
    assert [e["done"] for e in events if e.get("id") == "a" and e["event"] == "progress"] == done
    assert by_id[""] == ["error"] and "Expecting value" in next(e for e in events if e.get("id") == "")["message"]
    assert by_id["b"] == ["error"] and "unknown field(s) colour" in next(e for e in events if e.get("id") == "b")[
        "message"]
    assert by_id["c"] == ["started", "error"]
    assert "missing.nii.gz: file not found" in next(e for e in events if e.get("id") == "c" and e["event"] == "error")[
        "message"]
    done_a, done_d = (next(e for e in events if e.get("id") == i and e["event"] == "done") for i in "ad")
    assert done_a["shape"] == [1, 16, 12, 5] and done_a["predictor_reused"] is False
    assert done_d["predictor_reused"] is True  # the failed job in between did not drop the predictor
    assert "e" not in by_id and not (tmp_path / "e.nii.gz").exists()
    first, last = (nib.load(tmp_path / f"{i}.nii.gz").get_fdata() for i in "ad")
    np.testing.assert_array_equal(first, last)


def test_worker_keeps_one_predictor_until_the_model_changes(tmp_path):
    mri, ct = _volumes(tmp_path)
    worker = FusionWorker()
    results = [worker.run(FusionJob(str(mri), str(ct), str(tmp_path / f"{m}.nii.gz"), method=m, device="cpu"))
               for m in ("max", "max", "mean", "mean")]
    assert [r["predictor_reused"] for r in results] == [False, True, False, True] and worker.loads == 2


def test_job_fields_are_checked():
    with pytest.raises(FusionInputError, match="missing other, output"):
        FusionJob.from_dict({"mri": "a.nii.gz"})
    with pytest.raises(FusionInputError, match="unknown field"):
        FusionJob.from_dict({"mri": "a", "other": "b", "output": "c", "weight": "w.pt"})
    assert FusionJob.from_dict({"mri": "a", "other": "b", "output": "c", "tta": True}).tta is True
    base = {"mri": "a", "other": "b", "output": "c"}
    for field, value, needle in (("axis", 7, "a volume has axes 0, 1, 2"), ("batch_size", "8", "give a whole number"),
                                 ("batch_size", 0, "batch_size 0: give a whole number of at least 1"),
                                 ("tta", "yes", "give true or false"), ("axis", True, "give a whole number"),
                                 ("method", 3, "give a string")):
        with pytest.raises(FusionInputError, match=needle):
            FusionJob.from_dict({**base, field: value})
    assert FusionJob.from_dict({**base, "axis": None, "weights": None}).axis is None


def test_jobs_never_write_over_their_inputs_and_report_plain_errors(tmp_path):
    """Found by a hand-check helper: a job whose output was its MRI (or other image) replaced the input with the fused
    image ("done"); ``"axis": 2`` on a picture and ``"mri": 5`` came back as IndexError/AttributeError text; a
    request's ``"color": "false"`` (MONAI Label passes strings) kept the colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    mri, pet = tmp_path / "mri.png", tmp_path / "pet.png"
    Image.fromarray((rng.random((24, 20)) * 255).astype(np.uint8)).save(mri)
    Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(pet)
    before = mri.read_bytes(), pet.read_bytes()
    job = {"mri": str(mri), "other": str(pet), "method": "max", "device": "cpu"}
    lines = [json.dumps({**job, "id": "m", "output": str(mri)}), json.dumps({**job, "id": "p", "output": str(pet)}),
             json.dumps({**job, "id": "a", "output": str(tmp_path / "a.png"), "axis": 2}),
             json.dumps({**job, "id": "n", "mri": 5, "output": str(tmp_path / "n.png")})]
    events: list[dict] = []
    serve(lines, events.append)
    errors = {e["id"]: e["message"] for e in events if e["event"] == "error"}
    assert "is the input" in errors["m"] and "is the input" in errors["p"]
    assert (mri.read_bytes(), pet.read_bytes()) == before
    assert errors["n"] == "job: mri 5: give a string" and "a" not in errors and (tmp_path / "a.png").is_file()
    gray = FusionWorker().run(FusionJob(str(mri), str(pet), str(tmp_path / "g.nii.gz"), method="max", color="false"))
    assert gray["shape"][0] == 1


def test_a_job_that_fails_unexpectedly_does_not_stop_the_worker(tmp_path, monkeypatch):
    """Whatever one job raises is its error event; the jobs after it still run."""
    mri, ct = _volumes(tmp_path)
    job = {"mri": str(mri), "other": str(ct), "method": "max", "device": "cpu"}
    lines = [json.dumps({**job, "id": "bad", "axis": 7, "output": str(tmp_path / "a.nii.gz")}),
             json.dumps({**job, "id": "boom", "output": str(tmp_path / "b.nii.gz")}),
             json.dumps({**job, "id": "good", "output": str(tmp_path / "c.nii.gz")})]
    real_run = FusionWorker.run

    def run(self, job, progress=None):
        if job.id == "boom":
            raise IndexError("tuple index out of range")
        return real_run(self, job, progress)

    monkeypatch.setattr(FusionWorker, "run", run)
    events: list[dict] = []
    assert serve(lines, events.append) == 0
    errors = {e["id"]: e["message"] for e in events if e["event"] == "error"}
    assert "axis 7: a volume has axes 0, 1, 2" in errors["bad"]
    assert errors["boom"] == "IndexError: tuple index out of range"
    assert any(e["event"] == "done" and e["id"] == "good" for e in events) and (tmp_path / "c.nii.gz").exists()


def test_worker_loads_the_weights_file_again_when_it_changes(tmp_path):
    import torch

    from monai_lkcfusion.networks import LKCFUNet, save_network

    mri, ct = _volumes(tmp_path)
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "w.pt")
    worker = FusionWorker()

    def run() -> bool:
        job = FusionJob(str(mri), str(ct), str(tmp_path / "f.nii.gz"), weights=str(weights), device="cpu")
        return worker.run(job)["predictor_reused"]

    assert [run(), run()] == [False, True]
    torch.manual_seed(1)
    save_network(LKCFUNet.from_preset("tiny"), weights)  # new weights in the same file
    assert [run(), run()] == [False, True] and worker.loads == 2
