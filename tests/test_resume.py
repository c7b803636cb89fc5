"""Training faults: a run killed mid-epoch (SIGKILL) and restarted with the same command resumes from the last
checkpoint and ends at the same epoch count; an unwritable or too small output folder fails before training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.engines import LastCheckpointSaver, checkpoint_epochs, export_weights, last_checkpoint
from monai_lkcfusion.errors import FusionInputError

REPO = Path(__file__).resolve().parents[1]


def _dataset(root: Path, pairs: int = 24) -> Path:
    """A Harvard-layout folder ``train/MRI-CT/{MRI,CT}/i.png`` of random 32x32 pairs."""
    rng = np.random.default_rng(0)
    for folder in ("MRI", "CT"):
        (root / "train" / "MRI-CT" / folder).mkdir(parents=True)
        for i in range(pairs):
            pixels = (rng.random((32, 32)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / "MRI-CT" / folder / f"{i}.png")
    return root


def _train_args(tmp_path: Path, output: Path, epochs: int = 3, resume: bool = True) -> list[str]:
    fast = tmp_path / "fast.json"
    # about 21 training pairs x 3 crops / batch 2 = ~32 iterations per epoch: long enough to be killed inside one
    fast.write_text(json.dumps({"roi_size": 16, "batch_size": 2, "samples_per_image": 3, "val_interval": 1}))
    data = tmp_path / "data" if (tmp_path / "data").is_dir() else _dataset(tmp_path / "data")
    return ["train", "--config", str(fast), "--preset", "tiny", "--epochs", str(epochs), "--dataset-dir", str(data),
            "-o", str(output), "--device", "cpu", *(["--resume"] if resume else [])]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    exe = REPO / ".venv" / "bin" / "lkcfusion"
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monai_lkcfusion"]
    command += _train_args(tmp_path, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            # the progress bar shows the second iteration of epoch 2: epoch 1 is checkpointed, epoch 2 is half done
            if (out / "checkpoint_epoch=1.pt").is_file() and "Epoch [2/3]: [2/" in log.read_text():
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert last_checkpoint(out).name == "checkpoint_epoch=1.pt"

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-2000:]
    assert "Epoch[1] Complete" not in text and "Epoch[2] Complete" in text and "Epoch[3] Complete" in text
    final = torch.load(last_checkpoint(out), map_location="cpu", weights_only=True)["trainer"]
    assert final["max_epochs"] == 3 and final["iteration"] == 3 * final["epoch_length"]
    assert last_checkpoint(out).name == "checkpoint_epoch=3.pt" and (out / "model.pt").is_file()


def test_checkpoint_cut_short_is_skipped(tmp_path):
    """A run killed while saving leaves a partial newest checkpoint; resuming uses the one before it."""
    torch.save({"network": {"w": torch.ones(64)}}, tmp_path / "checkpoint_epoch=4.pt")
    whole = tmp_path / "checkpoint_epoch=5.pt"
    torch.save({"network": {"w": torch.ones(4096)}}, whole)
    assert last_checkpoint(tmp_path) == whole
    whole.write_bytes(whole.read_bytes()[:-200])
    assert last_checkpoint(tmp_path).name == "checkpoint_epoch=4.pt"
    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(b"")
    assert last_checkpoint(tmp_path) is None


def test_every_nth_checkpoint_is_kept_and_exports(tmp_path):
    """keep_checkpoint_interval 2 over 5 epochs keeps epochs 2, 4 and the newest (5); their weights export."""
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"keep_checkpoint_interval": 2}))
    out = tmp_path / "run"
    assert main([*_train_args(tmp_path, out, epochs=5, resume=False), "--config", str(keep)]) == 0
    kept = sorted(p.name for p in out.glob("checkpoint_epoch=*.pt"))
    assert kept == ["checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]
    assert [epoch for epoch, _ in checkpoint_epochs(out)] == [2, 4, 5]
    weights = [export_weights(out / name, tmp_path / f"{name}.weights") for name in kept]
    second, fourth = (torch.load(w, map_location="cpu", weights_only=True) for w in weights[:2])
    assert second.keys() == fourth.keys() and any(not torch.equal(second[k], fourth[k]) for k in second)
    assert last_checkpoint(out).name == "checkpoint_epoch=5.pt"


def test_a_resume_keeps_the_checkpoints_the_first_session_kept(tmp_path):
    """Epochs 1-3 kept every epoch, then resumed to 5 without the setting: every checkpoint the first session had
    kept was deleted (found by a hand-check helper). Each checkpoint holds the interval it was saved with: what a
    session kept stays, what was only its newest goes, also when a session's one checkpoint was kept (an interval
    cannot be told from one file)."""
    _tiny_run(tmp_path, max_epochs=3, keep_checkpoint_interval=1)
    _tiny_run(tmp_path, max_epochs=5, resume=True)
    assert [epoch for epoch, _ in checkpoint_epochs(tmp_path / "run")] == [1, 2, 3, 5]
    _tiny_run(tmp_path, max_epochs=6, resume=True)  # epoch 5 was only the newest of its session: it goes
    assert [epoch for epoch, _ in checkpoint_epochs(tmp_path / "run")] == [1, 2, 3, 6]
    other = tmp_path / "plain"
    other.mkdir()
    _tiny_run(other, max_epochs=2)
    _tiny_run(other, max_epochs=3, resume=True)
    assert [epoch for epoch, _ in checkpoint_epochs(other / "run")] == [3]
    _tiny_run(other, max_epochs=4, resume=True, keep_checkpoint_interval=4)  # its one checkpoint, kept by its interval
    _tiny_run(other, max_epochs=5, resume=True)
    assert [epoch for epoch, _ in checkpoint_epochs(other / "run")] == [4, 5]


def test_resume_with_settings_that_change_the_run_is_refused(tmp_path, capsys):
    """Another seed moved validation pairs into training (all 3 of a resumed session's had been trained on), another
    key_metric was compared with the old one's best value, another preset ended in a 356-line traceback (found by a
    hand-check helper): the run's record (run.json) is compared first, one line naming what differs."""
    import json as json_module

    _tiny_run(tmp_path, max_epochs=1)
    record = json_module.loads((tmp_path / "run" / "run.json").read_text())
    assert record["key_metric"] == "val_loss" and record["network"]["features"] and record["validation_pairs"]
    assert not set(record["train_pairs"]) & set(record["validation_pairs"])
    assert record["loss"]["ssim_weight"] == 1.0
    # another loss: its val_loss (which picks best_model.pt) was compared with the old loss's best (hand-check helper:
    # all weights 0.1 "improved" it tenfold and replaced best_model.pt and model.pt)
    for change, said in (({"seed": 1}, "validation pairs not among these"),
                         ({"key_metric": "Qabf"}, "key_metric Qabf \\(was"),
                         ({"loss#ssim_weight": 0.1}, "loss ssim_weight 0.1 \\(was 1.0\\): val_loss, which picks")):
        with pytest.raises(FusionInputError, match=f"resumed with other settings than the run's .*{said}"):
            _tiny_run(tmp_path, max_epochs=2, resume=True, **change)
    _tiny_run(tmp_path, max_epochs=2, resume=True, learning_rate=1e-3)  # a schedule setting may change
    assert [epoch for epoch, _ in checkpoint_epochs(tmp_path / "run")] == [2]
    # the record is the run's as it began: an older run's (no "loss") was rewritten by a resume that was then
    # refused, and an allowed change (the loss under another key_metric) replaced what the first epochs used
    older = {key: value for key, value in record.items() if key != "loss"}
    (tmp_path / "run" / "run.json").write_text(json_module.dumps(older))
    with pytest.raises(FusionInputError, match="the run is at epoch 2 already"):
        _tiny_run(tmp_path, max_epochs=1, resume=True)
    assert json_module.loads((tmp_path / "run" / "run.json").read_text()) == older
    args = _train_args(tmp_path, tmp_path / "cli", epochs=1, resume=False)
    assert main(args) == 0
    assert main([*args[:-2], "--device", "cpu", "--preset", "small", "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err  # (a handler an earlier test's logging setup left may print a logging error here)
    errors = [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]
    assert len(errors) == 1 and "resumed with other settings than the run's (network features" in errors[0], errors
    assert "size mismatch" not in err and "state_dict" not in err  # the preset's traceback was load_state_dict's
    (tmp_path / "cli" / "run.json").unlink()  # a run of an older version: no record, resumed as before and given none
    # without a record the checkpoint's network is compared: load_state_dict's traceback (size mismatch) before
    assert main([*args[:-2], "--device", "cpu", "--preset", "small", "--epochs", "2", "--resume"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "its network does not fit this run's (" in errors[0] and "more); resume" in errors[0]
    assert not (tmp_path / "cli" / "run.json").exists()  # (the failed resume wrote its preset as the run's)
    assert main([*args[:-2], "--device", "cpu", "--epochs", "2", "--resume"]) == 0


def test_the_run_record_survives_a_moved_dataset(tmp_path, monkeypatch):
    """Pairs are recorded relative to the folder that holds them all: a dataset renamed or given by relative instead
    of absolute paths resumes (the last three path parts held only for the Harvard layout); one pair less does not."""
    from monai_lkcfusion.engines import check_run_record
    from monai_lkcfusion.networks import LKCFUNet

    def split(root: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        items = [{"mri": f"{root}/p{i}/t1.nii.gz", "other": f"{root}/p{i}/pet.nii.gz"} for i in range(5)]
        return items[:4], items[4:]

    network = LKCFUNet.from_preset("tiny")
    first = tmp_path / "first"
    check_run_record(first, False, network, split(str(tmp_path / "study")), "val_loss")
    torch.save({"network": network.state_dict()}, first / "checkpoint_epoch=1.pt")  # a whole one that fits
    monkeypatch.chdir(tmp_path)
    check_run_record(tmp_path / "second", first / "checkpoint_epoch=1.pt", network, split("study_v2"), "val_loss")
    fewer = split("study_v2")
    with pytest.raises(FusionInputError, match="1 of the run's 4 train pairs not among these 3.*delete .*run.json"):
        check_run_record(tmp_path / "third", first / "checkpoint_epoch=1.pt", network, (fewer[0][:3], fewer[1]),
                         "val_loss")
    dropout = LKCFUNet.from_preset("tiny", dropout=0.0)  # regularisation may change on resume
    check_run_record(tmp_path / "fourth", first / "checkpoint_epoch=1.pt", dropout, split("study"), "val_loss")


def test_keep_interval_that_is_not_a_count_is_refused(tmp_path):
    for bad in (-1, 1.5, True):
        with pytest.raises(FusionInputError, match="keep_interval"):
            LastCheckpointSaver(tmp_path, {}, keep_interval=bad)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("lkcfusion: error:")]


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    """Running as root ignores permission bits, so the output folder is asked for below a regular file."""
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    assert main(_train_args(tmp_path, out, epochs=1)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(out) in errors[0] and "Not a directory" in errors[0], errors


def test_broken_inputs_of_train_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"roi_size": 16,')
    (tmp_path / "list.json").write_text("[1, 2]")  # valid JSON, not settings: was an AttributeError traceback
    (tmp_path / "text.json").write_text('"str"')
    (tmp_path / "broken.yaml").write_text("epochs: [1\n")  # a YAML syntax error was a traceback, exit 1
    args = _train_args(tmp_path, tmp_path / "run", epochs=1)
    cases = [
        (["--config", str(broken)], "broken.json: cannot read config"),
        (["--config", str(tmp_path / "broken.yaml")], "broken.yaml: cannot read config (while parsing a flow"),
        (["--config", str(tmp_path / "list.json")], "list.json: a config holds settings as an object"),
        (["--config", str(tmp_path / "text.json")], "not a str"),
        (["--dataset-dir", str(tmp_path / "nowhere")], "nowhere/train: no such folder"),
        (["--preset", "huge"], "network preset 'huge' is not one of"),
    ]
    for extra, problem in cases:
        assert main([*args, *extra]) == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and problem in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_earlier_run_is_not_overwritten_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"network": {"w": torch.ones(3)}}, out / "checkpoint_epoch=7.pt")
    torch.save({"w": torch.ones(3)}, out / "best_model.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(_train_args(tmp_path, out, epochs=1, resume=False)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "checkpoint_epoch=7.pt of an earlier run; pass --resume" in errors[0], errors
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new either (TensorBoard files were)
    (out / "checkpoint_epoch=7.pt").unlink()  # a finished run whose checkpoints were removed: its model.pt was
    for resume in (False, True):  # replaced without a word (found by a hand-check helper)
        assert main(_train_args(tmp_path, out, epochs=1, resume=resume)) == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "holds best_model.pt of an earlier run and no checkpoint" in errors[0], errors
    assert (out / "best_model.pt").read_bytes() == before["best_model.pt"]
    (tmp_path / "a_file").write_text("x")  # refused before the data are loaded (it was after, under progress bars)
    assert main(_train_args(tmp_path, tmp_path / "a_file", epochs=1, resume=False)) == 2
    captured = capsys.readouterr()
    assert _error_lines(captured.err) == [f"lkcfusion: error: {tmp_path / 'a_file'}: is a file; give a folder for the "
                                          "run's checkpoints and logs"] and "Loading dataset" not in captured.err


def test_too_small_disk_fails_before_training(tmp_path, capsys):
    """A 64 KiB tmpfs cannot hold the checkpoints: refused with the sizes before the first iteration."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert main(_train_args(tmp_path, mount / "run", epochs=1)) == 2
        captured = capsys.readouterr()
        errors = _error_lines(captured.err)
        assert len(errors) == 1 and "MiB free, training needs about" in errors[0], errors
        assert "Epoch[1]" not in captured.out + captured.err and not list((mount / "run").glob("*.pt"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _tiny_run(tmp_path: Path, **overrides):
    from monai_lkcfusion.engines import run_bundle_workflow

    data = tmp_path / "data" if (tmp_path / "data").is_dir() else _dataset(tmp_path / "data", pairs=8)
    return run_bundle_workflow("train.json", (), "train", preset="tiny", dataset_dir=str(data), roi_size=16,
                               batch_size=2, samples_per_image=1, val_fraction=0.25, device=torch.device("cpu"),
                               output_dir=str(tmp_path / "run"), **overrides)


def test_resume_with_more_epochs_stretches_the_lr_schedule(tmp_path):
    """``--resume --epochs 5`` after 2 epochs of a cosine schedule (``T_max = @max_epochs``): the checkpoint restored
    ``T_max = 2``, so the rate ran past the cosine's end and climbed back to the starting rate; then, with the run's
    ``T_max``, the rate stayed at the minimum the 2-epoch cosine had reached for every added epoch (PyTorch steps it
    from the current rate; found by a hand-check helper). The resumed epochs now have a 5-epoch run's rates, and a
    changed learning rate is the resumed run's."""
    import math

    rate, floor = 2e-4, 2e-6  # train.json: learning_rate, eta_min = learning_rate / 100
    _tiny_run(tmp_path, max_epochs=2)
    resumed = _tiny_run(tmp_path, max_epochs=5, resume=True, keep_checkpoint_interval=1)
    scheduler = resumed.parser.get_parsed_content("lr_scheduler")
    assert scheduler.T_max == 5 and scheduler.last_epoch == 5
    for epoch in (3, 4):  # rates after the epoch, as saved with it
        saved = torch.load(tmp_path / "run" / f"checkpoint_epoch={epoch}.pt", weights_only=True)
        expected = floor + (rate - floor) * (1 + math.cos(math.pi * epoch / 5)) / 2
        assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected, rel=1e-6), epoch
    changed = _tiny_run(tmp_path, max_epochs=6, resume=True, learning_rate=1e-3)
    group = changed.parser.get_parsed_content("optimizer").param_groups[0]
    assert group["initial_lr"] == 1e-3 and group["lr"] == pytest.approx(1e-5)  # the end of its cosine: its eta_min


def test_time_limit_stop_validates_and_exports(tmp_path):
    """A time limit that stops after epoch 1 with validation every 2 epochs: that epoch was never validated, so no
    best_model.pt existed and the run ended in "checkpoint not found" without a model."""
    _tiny_run(tmp_path, max_epochs=4, val_interval=2, time_limit=0.001)
    run = tmp_path / "run"
    assert (run / "checkpoint_epoch=1.pt").is_file() and (run / "model.pt").is_file()
    assert (run / "best_model.pt").is_file()


def test_a_damaged_newer_checkpoint_is_named_when_resuming_from_an_older_one(tmp_path):
    """--resume passed over a damaged newer checkpoint with an INFO line only, and later replaced it (hand-check
    helper): a warning names it."""
    from monai_lkcfusion.engines.handlers import ResumeCheckpointLoader

    torch.save({"network": {"w": torch.ones(3)}}, tmp_path / "checkpoint_epoch=1.pt")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"cut short")
    with pytest.warns(UserWarning, match=r"checkpoint_epoch=3.pt cut short or damaged; resuming from "
                                         r"checkpoint_epoch=1.pt"):
        loader = ResumeCheckpointLoader(tmp_path, {}, resume=True)
    assert loader.path.name == "checkpoint_epoch=1.pt"


def test_resuming_from_a_checkpoint_of_other_contents_is_one_line(tmp_path, capsys):
    """A loadable checkpoint without the run's objects ({"a": 1}) ended in MONAI's ValueError traceback, exit 1."""
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"a": 1}, out / "checkpoint_epoch=1.pt")
    assert main(_train_args(tmp_path, out, epochs=2)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "checkpoint_epoch=1.pt: not a checkpoint of this training (no network" in errors[0]


def test_early_stopping_state_is_resumed_and_a_stopped_run_is_not_trained_on(tmp_path, capfd):
    """The early stopper's count was not checkpointed: a run that had stopped early, resumed with the same command,
    trained on to max_epochs and replaced its model.pt (found by a hand-check helper). With the learning rate 0 no
    validation improves: patience 2 stops after epoch 3; the same resume is refused, model.pt untouched; with
    patience 3 it trains exactly one more epoch (the restored count is 2, not 0); a checkpoint without the
    stopper's state (older version) still resumes."""
    still = {"optimizer#lr": 0.0, "val_interval": 1}
    _tiny_run(tmp_path, max_epochs=6, early_stop_patience=2, **still)
    run = tmp_path / "run"
    assert last_checkpoint(run).name == "checkpoint_epoch=3.pt"
    model = (run / "model.pt").read_bytes()
    run_files = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    with pytest.raises(FusionInputError, match=r"checkpoint_epoch=3.pt: the run stopped early: its last 2 "
                                               r"validation\(s\) did not improve .*early_stop_patience 2.*larger"):
        _tiny_run(tmp_path, max_epochs=6, resume=True, early_stop_patience=2, **still)
    # Ignite's own ERROR line repeated the error before the command line's one line
    logged = "".join(capfd.readouterr())
    assert "terminating due to exception" not in logged
    # refused before anything is written (it came after the run's TensorBoard files and rewrote run.json)
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == run_files
    assert (run / "model.pt").read_bytes() == model and last_checkpoint(run).name == "checkpoint_epoch=3.pt"
    _tiny_run(tmp_path, max_epochs=6, resume=True, early_stop_patience=3, **still)
    assert last_checkpoint(run).name == "checkpoint_epoch=4.pt"
    older = torch.load(last_checkpoint(run), weights_only=True)
    del older["early_stop"]
    torch.save(older, last_checkpoint(run))
    _tiny_run(tmp_path, max_epochs=6, resume=True, early_stop_patience=3, **still)  # counts from 0 again: to epoch 6
    assert last_checkpoint(run).name == "checkpoint_epoch=6.pt"


class _Unpicklable:
    """A state whose pickling fails inside torch.save (as a Ctrl-C there would), after the zip was begun."""

    def state_dict(self) -> dict:
        return {"f": lambda: 0}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_save_interrupted_inside_torch_save_leaves_no_checkpoint_and_old_ones_are_skipped(tmp_path, capsys):
    """SIGINT to torchrun during rank 0's save left a 707-byte checkpoint_epoch=2.pt: a valid zip without its data
    (torch.save finishes the archive as it unwinds), which last_checkpoint took as whole, and every later --resume
    ended in a traceback (found by a hand-check helper). Checkpoints and best_model.pt are written atomically now,
    such a file of an earlier version is skipped, and one named by --resume PATH is one line."""
    from ignite.engine import Engine

    from monai_lkcfusion.engines import best_model_saver
    from monai_lkcfusion.networks import LKCFUNet

    net = LKCFUNet.from_preset("tiny")
    engine = Engine(lambda e, b: None)
    LastCheckpointSaver(tmp_path, {"network": net, "broken": _Unpicklable()}).attach(engine)
    with pytest.raises(Exception):
        engine.run([0], max_epochs=1)
    assert not list(tmp_path.iterdir())  # no partial checkpoint_epoch=1.pt (nor a temporary file) left

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"network": net.state_dict()}, run / "checkpoint_epoch=1.pt")
    try:  # what an interrupted, non-atomic save left: the zip's first records, closed as torch.save unwound
        torch.save({"network": net.state_dict(), "broken": {"f": lambda: 0}}, run / "checkpoint_epoch=2.pt")
    except Exception:
        pass
    assert zipfile.is_zipfile(run / "checkpoint_epoch=2.pt")
    assert last_checkpoint(run).name == "checkpoint_epoch=1.pt"
    # cut short among the tensors' records (the slow part of a save): data.pkl is there, a storage is not
    whole = zipfile.ZipFile(run / "checkpoint_epoch=1.pt")
    with zipfile.ZipFile(run / "checkpoint_epoch=3.pt", "w") as cut:
        for info in whole.infolist():
            if not info.filename.endswith("/data/3"):
                cut.writestr(info, whole.read(info))
    assert any(name.endswith("data.pkl") for name in zipfile.ZipFile(run / "checkpoint_epoch=3.pt").namelist())
    assert last_checkpoint(run).name == "checkpoint_epoch=1.pt"
    (run / "checkpoint_epoch=3.pt").unlink()
    from monai_lkcfusion.engines.handlers import ResumeCheckpointLoader

    with pytest.raises(FusionInputError, match=r"checkpoint_epoch=2.pt: not a whole checkpoint \(cut short or "):
        ResumeCheckpointLoader(run, {"network": net}, resume=str(run / "checkpoint_epoch=2.pt"))
    (run / "best_model.pt").write_bytes((run / "checkpoint_epoch=2.pt").read_bytes())
    with pytest.raises(FusionInputError, match=r"best_model.pt: cut short or damaged; delete it to resume"):
        best_model_saver(run, net, "val_loss", resume=True)


def test_a_resumed_evaluator_knows_the_runs_best_so_far(tmp_path):
    """After a resume MONAI's evaluator started its best-metric tracking afresh: the first validation, however much
    worse than the run's best, was logged as "Got new best metric" at the resumed epoch (hand-check helper; the
    saver's own tracking was restored, so best_model.pt stayed right). best_model.pt records the best value and
    epoch now and a resumed evaluator starts from them: with the learning rate 0, epoch 3 is no new best."""
    _tiny_run(tmp_path, max_epochs=2, val_interval=1)
    record = torch.load(tmp_path / "run" / "best_model.pt", weights_only=True)["best"]
    assert record["epoch"] in (1, 2)
    resumed = _tiny_run(tmp_path, max_epochs=3, resume=True, val_interval=1, **{"optimizer#lr": 0.0})
    state = resumed.parser.get_parsed_content("validate#evaluator").state
    assert state.best_metric_epoch == record["epoch"] and state.best_metric == pytest.approx(record["value"])
    assert torch.load(tmp_path / "run" / "best_model.pt", weights_only=True)["best"] == record


def test_best_model_survives_an_interrupted_save_of_a_better_one(tmp_path, monkeypatch):
    """Ignite removes a fixed-name checkpoint before it writes the new one: a Ctrl-C while a better best_model.pt
    was written left none, and the resumed run chose its best among the resumed epochs only (review helper). The
    old file stays until the new one replaces it whole; the files keep the umask's permissions."""
    import os

    from ignite.engine import Engine, Events

    from monai_lkcfusion.engines import best_model_saver
    from monai_lkcfusion.engines import handlers as handlers_module
    from monai_lkcfusion.networks import LKCFUNet

    losses = {1: 2.0, 2: 1.0}
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "key_metric_name", "val_loss"))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_loss=losses[e.state.epoch]))
    best_model_saver(tmp_path, LKCFUNet.from_preset("tiny"), "val_loss").attach(engine)
    real_save = torch.save

    def interrupted(obj, path, *args, **kwargs):
        if engine.state.epoch == 2:
            raise KeyboardInterrupt
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(handlers_module.torch, "save", interrupted)
    previous = os.umask(0o027)
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run([0], max_epochs=2)
    finally:
        os.umask(previous)
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.pt"]  # epoch 1's, whole; no temporary file
    held = torch.load(tmp_path / "best_model.pt", weights_only=True)
    assert held["checkpointer"]["_saved"][0][0] == -2.0  # epoch 1's loss (negated: lower is better)
    assert (tmp_path / "best_model.pt").stat().st_mode & 0o777 == 0o640  # the umask's, not 0644


def test_only_a_run_that_stopped_early_is_refused_and_a_lowered_patience_resumes(tmp_path):
    """A run interrupted at 3 validations without improvement under patience 10 and resumed with patience 3 was told
    it had "stopped early" (review helper): the state holds the patience it was counted against, and only a run that
    reached it is refused. A bad patience is named as a setting, not blamed on the checkpoint."""
    from monai_lkcfusion.engines import check_resume
    from monai_lkcfusion.networks import LKCFUNet

    network = LKCFUNet.from_preset("tiny")
    cases = (({"counter": 3, "patience": 10}, 3, False), ({"counter": 3, "patience": 3}, 3, True),
             ({"counter": 3, "patience": 3}, 4, False), ({"counter": 3}, 3, True),
             ({"counter": 3, "patience": 3}, 0, False))
    for saved, patience, refused in cases:
        torch.save({"network": network.state_dict(), "early_stop": {"best_score": -1.0, **saved}},
                   tmp_path / "checkpoint_epoch=4.pt")
        if refused:
            with pytest.raises(FusionInputError, match="the run stopped early"):
                check_resume(tmp_path, True, network, patience)
        else:
            check_resume(tmp_path, True, network, patience)
    with pytest.raises(FusionInputError, match="^early_stop_patience -1: give a whole number"):
        check_resume(tmp_path, True, network, -1)


def test_a_damaged_newest_checkpoint_is_passed_over_by_the_whole_resume(tmp_path):
    """The resume loader passed over a cut-short newest checkpoint with a warning, but the checkpoint saver then
    read every checkpoint's keep interval and crashed on it (a traceback; hand-check helper). The run resumes from
    the whole one and replaces the damaged file."""
    _tiny_run(tmp_path, max_epochs=2)
    run = tmp_path / "run"
    (run / "checkpoint_epoch=3.pt").write_bytes((run / "checkpoint_epoch=2.pt").read_bytes()[:707])
    with pytest.warns(UserWarning, match=r"checkpoint_epoch=3.pt cut short or damaged; resuming from"):
        _tiny_run(tmp_path, max_epochs=4, resume=True)
    assert last_checkpoint(run).name == "checkpoint_epoch=4.pt"
    assert [epoch for epoch, _ in checkpoint_epochs(run)] == [4]


@pytest.mark.parametrize("patience", ["3", None, -1, 1.5, True])
def test_a_patience_that_is_not_a_count_is_refused_before_anything_is_written(tmp_path, patience):
    """early_stop_patience "3" or null ended in a 67-line TypeError after run.json was written; -1, 1.5 and true
    trained without a word (hand-check helper): one line naming the setting, before the output folder exists."""
    with pytest.raises(FusionInputError, match="^early_stop_patience .*: give a whole number"):
        _tiny_run(tmp_path, max_epochs=1, early_stop_patience=patience)
    assert not (tmp_path / "run").exists()
