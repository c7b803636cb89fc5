"""torch.distributed: the helpers in one process, and the bundle's multi_gpu_*.json configs and ``lkcfusion train
--nproc`` run with ``torchrun`` in 2 CPU processes (Gloo) on a small Harvard-layout folder the tests make."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_lkcfusion.engines import distributed
from monai_lkcfusion.engines import (
    BufferBroadcastHandler,
    all_gather_objects,
    barrier,
    bundle_config,
    check_replicas,
    distributed_device,
    init_distributed,
    is_main_process,
    last_checkpoint,
    run_bundle_workflow,
    shard_items,
    state_digest,
)
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, load_network

from test_bundle import TINY, _write_harvard_like  # tiny preset, 32x32 crops, batch 2, validation every epoch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = bundle_config("train.json").parent


def test_shard_items_cover_every_item_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for world in (1, 2, 3, 4):
        for n in range(world, 9):
            shards = []
            for rank in range(world):
                monkeypatch.setattr(distributed, "get_rank", lambda r=rank: r)
                monkeypatch.setattr(distributed, "get_world_size", lambda w=world: w)
                shards.append(shard_items(list(range(n))))
            assert [i for shard in shards for i in shard] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    monkeypatch.setattr(distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(distributed, "get_rank", lambda: 2)
    with pytest.raises(FusionInputError, match="2 item.* cannot be shared by 3 processes"):
        shard_items([0, 1])
    with pytest.raises(FusionInputError, match="^2 test pair\\(s\\) cannot be shared by 3 processes"):
        shard_items([0, 1], what="test pair(s)")  # the bundle's configs name what is shared (it said "item(s)")
    assert shard_items([0, 1], allow_empty=True) == []


def test_helpers_in_one_process() -> None:
    """Without torchrun every helper is the single-process identity: rank 0 of 1, nothing to synchronise."""
    assert not init_distributed() and is_main_process()
    assert shard_items([3, 1, 2]) == [3, 1, 2] and all_gather_objects({"a": 1}) == [{"a": 1}]
    barrier()
    net = LKCFUNet.from_preset("tiny")
    BufferBroadcastHandler(net)()
    assert distributed.distributed_network(net, "cpu") is net
    digest = check_replicas(net)
    copy = LKCFUNet.from_preset("tiny")
    copy.load_state_dict(net.state_dict())
    assert state_digest(copy) == digest
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-6
    assert state_digest(copy) != digest


def test_distributed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() >= 2:
        assert distributed_device("cuda") == torch.device("cuda", 1)
    else:
        with pytest.raises(FusionInputError, match="needs cuda:1"):
            distributed_device("cuda:0")


def _torchrun(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m ARGS`` on the CPU (one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _bundle_run(configs: list[str], **overrides: str) -> list[str]:
    """``monai.bundle run`` arguments for the bundle's ``configs`` merged in order."""
    files = [str(CONFIGS / name) for name in configs]
    args = ["monai.bundle", "run", "--config_file", repr(files), "--meta_file", str(CONFIGS / "metadata.json"),
            "--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def ddp_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """train.json + multi_gpu_train.json in 2 processes for 2 epochs: (dataset_dir, output_dir, digest folder).

    A test-only override file adds one step to ``run``: each rank writes the digest of its network and its last
    ``val_loss`` after training (each rank validated a different pair, so equal values mean the metric was reduced).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("no Gloo backend")
    data = _write_harvard_like(tmp_path_factory.mktemp("harvard_like"), n=3, size=(64, 64))
    out, digests = tmp_path_factory.mktemp("ddp_train"), tmp_path_factory.mktemp("digests")
    write_digest = (
        f"$open(r'{digests}/rank' + str(monai_lkcfusion.engines.get_rank()) + '.txt', 'w')"
        ".write(monai_lkcfusion.engines.state_digest(@network) + ' '"
        " + repr(@validate#evaluator.state.metrics['val_loss']))"
    )
    extra = digests.parent / "digest_run.json"
    extra.write_text(json.dumps({"run": ["$@train#trainer.run()", write_digest]}))
    args = _bundle_run(["train.json", "multi_gpu_train.json"], dataset_dir=data, output_dir=out, max_epochs=2, **TINY)
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(extra)]
    args[args.index("--config_file") + 1] = repr(files)
    done = _torchrun(*args)
    assert "network identical on 2 processes" in done.stdout + done.stderr
    return data, out, digests


@pytest.mark.slow
def test_ddp_train_writes_one_set_and_identical_replicas(ddp_trained: tuple[Path, Path, Path]) -> None:
    _, out, digests = ddp_trained
    written = sorted(p.name for p in out.iterdir())
    assert written == ["best_model.pt", "checkpoint_epoch=2.pt", "model.pt", "run.json", "tensorboard"]
    # TensorBoard: the two writers (batch loss, validation metrics) of one process only (the pid ends the name)
    events = list((out / "tensorboard").iterdir())
    assert len(events) == 2 and len({re.search(r"\.(\d+)\.\d+$", p.name).group(1) for p in events}) == 1
    rank0, rank1 = ((digests / f"rank{rank}.txt").read_text() for rank in (0, 1))
    assert rank0 == rank1  # the same network and the same val_loss on both ranks
    rank0 = rank0.split()[0]
    checkpoint = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["network"])
    net = LKCFUNet.from_preset("tiny")
    net.load_state_dict(checkpoint["network"])
    assert state_digest(net) == rank0  # what rank 0 saved is what every rank holds
    model = load_network(out / "model.pt")
    assert isinstance(model, LKCFUNet) and model(torch.rand(1, 2, 40, 36)).shape == (1, 1, 40, 36)


@pytest.mark.slow
def test_cli_train_nproc_resumes_under_ddp(ddp_trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``lkcfusion train --nproc 2 --resume``: torchrun, DDP, continue the 2-process run from epoch 2 to 3."""
    data, out, _ = ddp_trained
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "monai_lkcfusion", "train", "--nproc", "2", "--config", str(preset),
               "--dataset-dir", str(data), "--output", str(out), "--epochs", "3", "--resume", "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "network identical on 2 processes" in log and "Epoch [3/3]" in log and "Epoch [2/3]" not in log
    assert f"Restored all variables from {out}/checkpoint_epoch=2.pt" in log
    assert last_checkpoint(out).name == "checkpoint_epoch=3.pt" and not (out / "checkpoint_epoch=2.pt").exists()
    assert len(list((out / "tensorboard").iterdir())) == 4  # one more pair of writers, rank 0's
    load_network(out / "model.pt")


@pytest.fixture
def one_thread():
    """Run the single-process reference with one intra-op thread, as each torchrun process has (OMP_NUM_THREADS=1):
    CPU convolutions sum in another order with another thread count, which can move an 8-bit output by one level."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_ddp_evaluate_equals_single_process(one_thread, ddp_trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, out, _ = ddp_trained
    common = {"dataset_dir": str(data), "weights": str(out / "model.pt"), "metrics": ["EN", "Qabf", "SSIM"]}
    run_bundle_workflow("evaluate.json", workflow_type="infer", output_dir=str(tmp_path / "one"), **common)
    args = _bundle_run(["evaluate.json", "multi_gpu_evaluate.json"], output_dir=tmp_path / "two",
                       dataset_dir=data, weights=out / "model.pt", metrics="['EN','Qabf','SSIM']")
    _torchrun(*args)
    for table in ("metrics.csv", "summary.csv"):  # gathered over the ranks, written once, in the same order
        assert (tmp_path / "two" / table).read_text() == (tmp_path / "one" / table).read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metrics.csv", "summary.csv"]


@pytest.mark.slow
def test_ddp_batch_fusion_is_byte_identical(one_thread, ddp_trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, out, _ = ddp_trained
    pairs = data / "test" / "MRI-PET"
    run_bundle_workflow("inference.json", workflow_type="infer", dataset_dir=str(pairs), weights=str(out / "model.pt"),
                        output_dir=str(tmp_path / "one"))
    args = _bundle_run(["inference.json", "multi_gpu_inference.json"], dataset_dir=pairs,
                       weights=out / "model.pt", output_dir=tmp_path / "two")
    log = _torchrun(*args)
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in two] == [p.name for p in one] == ["fused_0.png", "fused_1.png", "fused_2.png"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    summary = re.findall(r"fused \d+ of \d+ pairs.*", log.stdout + log.stderr)
    assert summary == ["fused 3 of 3 pairs on 2 processes (2 + 1)"]  # every pair once, one summary


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_launcher_passes_sigterm_on(monkeypatch):
    """A SIGTERM to `lkcfusion train --nproc N` reaches torchrun (here a stand-in child that exits 7 on it), so no
    worker trains on after the command has ended."""
    import signal
    import threading
    import time

    from monai_lkcfusion.cli import launch

    child = ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             "print('ready', flush=True)\ntime.sleep(60)")
    real_popen = subprocess.Popen
    started = threading.Event()

    def popen(argv, **kwargs):
        process = real_popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # the child's handler is in place
        started.set()
        return process

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    before = signal.getsignal(signal.SIGTERM)
    def stop_the_command() -> None:  # as a scheduler would, once the launcher waits
        if started.wait(30):
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_the_command, daemon=True).start()
    start = time.perf_counter()
    assert launch.run_processes(["train"], 2) == 7
    assert time.perf_counter() - start < 30 and signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("config, dataset, message", [
    ({"batch_size": 0}, "data", "batch_size 0: give a whole number of at least 1"),
    ({"keep_checkpoint_interval": "2"}, "data", "keep_checkpoint_interval '2': give a whole number"),
    (None, "data", "config file not found"),
    ({}, "nowhere", "nowhere/train: no such folder"),
    ({"preset": "nosuch"}, "data", "network preset 'nosuch' is not one of"),  # found by a hand-check helper
    ({"init_weights": "missing.pt", "network_def": "$monai_lkcfusion.networks.load_network(@init_weights)"}, "data",
     "missing.pt"),
])
def test_cli_train_nproc_refuses_bad_input_before_torchrun(tmp_path, monkeypatch, capsys, config, dataset, message):
    """Every process would refuse the same input: `lkcfusion train --nproc 2` says it once, exit 2, and starts no
    torchrun (which printed its own ChildFailedError traceback and exited 1)."""
    from monai_lkcfusion.cli import launch, main

    data = tmp_path / "data"
    _write_harvard_like(data)
    override = tmp_path / "override.json"
    if config is not None:
        override.write_text(json.dumps({**TINY, **config}))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    code = main(["train", "--nproc", "2", "--config", str(override), "--dataset-dir", str(tmp_path / dataset),
                 "--output", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lkcfusion: error:") and message in err[-1], err
    assert not (tmp_path / "run").exists()


def test_cli_train_nproc_refuses_a_resume_that_changes_the_run_before_torchrun(tmp_path, monkeypatch, capsys):
    """A resume with another split was refused inside torchrun, once per process, then torchrun's traceback (found
    by a review helper): the launcher checks the run record first, one line, exit 2, and writes nothing."""
    from monai_lkcfusion.cli import launch, main
    from monai_lkcfusion.engines import check_run_record
    from monai_lkcfusion.networks import LKCFUNet

    data = _write_harvard_like(tmp_path / "data")
    run = tmp_path / "run"
    items = [{"mri": str(data / f"m{i}.png"), "other": str(data / f"o{i}.png")} for i in range(4)]
    check_run_record(run, False, LKCFUNet.from_preset("tiny"), (items[:3], items[3:]), "val_loss")  # another run's
    torch.save({"network": {}}, run / "checkpoint_epoch=1.pt")
    record = (run / "run.json").read_text()
    override = tmp_path / "override.json"
    override.write_text(json.dumps(TINY))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    code = main(["train", "--nproc", "2", "--config", str(override), "--dataset-dir", str(data), "--output", str(run),
                 "--device", "cpu", "--resume", "--epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lkcfusion: error:") and "resumed with other settings" in err[-1], err
    assert (run / "run.json").read_text() == record


def test_cli_train_nproc_refuses_fewer_validation_pairs_than_processes(tmp_path, monkeypatch, capsys):
    """Each process validates its share: with fewer validation pairs than processes every process printed a generic
    "item(s) cannot be shared" line and torchrun a ChildFailedError traceback, exit 1 (found by a hand-check helper)."""
    from monai_lkcfusion.cli import launch, main

    _write_harvard_like(tmp_path / "data")
    override = tmp_path / "override.json"
    override.write_text(json.dumps(TINY))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    code = main(["train", "--nproc", "4", "--config", str(override), "--dataset-dir", str(tmp_path / "data"),
                 "--output", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("validation pair(s) for 4 processes: each process validates its share; use "
                                          "fewer processes or a larger val_fraction"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, message", [
    ({"early_stop_patience": 2}, "checkpoint_epoch=1.pt: the run stopped early: its last 2 validation(s)"),
    ({"preset": "small"}, "checkpoint_epoch=1.pt: its network does not fit this run's (stem_conv.weight"),
])
def test_cli_train_nproc_refuses_a_resume_every_process_would_refuse(tmp_path, monkeypatch, capsys, config, message):
    """A resume of a run that stopped early, or of a checkpoint whose network does not fit (a run without run.json),
    is refused by each process as it loads the checkpoint: the launcher checks it first, one line, no torchrun."""
    from monai_lkcfusion.cli import launch, main
    from monai_lkcfusion.networks import LKCFUNet

    data = _write_harvard_like(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    network = LKCFUNet.from_preset("tiny").state_dict()
    torch.save({"network": network, "early_stop": {"counter": 2, "best_score": -0.5}}, run / "checkpoint_epoch=1.pt")
    override = tmp_path / "override.json"
    override.write_text(json.dumps({**TINY, **config}))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    code = main(["train", "--nproc", "2", "--config", str(override), "--dataset-dir", str(data), "--output", str(run),
                 "--device", "cpu", "--resume", "--epochs", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lkcfusion: error:") and message in err[-1], err


@pytest.mark.skipif(sys.platform != "linux", reason="SIGINT forwarding is POSIX, the parent-death signal Linux")
def test_launcher_stops_torchrun_on_sigint_and_when_killed(monkeypatch, tmp_path, process_ends):
    """A SIGINT to `lkcfusion train --nproc N` alone (an IDE's stop button) printed "interrupted" and left torchrun
    and its workers training, as did a SIGKILL of it (hand-check helper): SIGINT is passed on and waited for, then
    the command is interrupted; a killed launcher's torchrun gets SIGTERM from the kernel."""
    import signal
    import threading
    import time

    from monai_lkcfusion.cli import launch

    child = ("import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(3))\n"
             "print('ready', flush=True)\ntime.sleep(60)")
    real_popen = subprocess.Popen
    children = []

    def popen(argv, **kwargs):
        process = real_popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, **kwargs)
        process.stdout.readline()
        children.append(process)
        return process

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    threading.Thread(target=lambda: (time.sleep(1.5), os.kill(os.getpid(), signal.SIGINT)), daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        launch.run_processes(["train"], 2)
    assert children and children[0].returncode == 3  # it got the SIGINT and had ended

    parent = tmp_path / "parent.py"  # a launcher whose torchrun is a sleeper; killed with SIGKILL
    parent.write_text(
        "import subprocess, sys\nfrom monai_lkcfusion.cli import launch\nreal = subprocess.Popen\n"
        "def popen(argv, **kwargs):\n"
        "    process = real([sys.executable, '-c', 'import time; time.sleep(60)'], **kwargs)\n"
        "    print(process.pid, flush=True)\n    return process\n"
        "launch.subprocess.Popen = popen\nlaunch.run_processes(['train'], 2)\n")
    launcher = real_popen([sys.executable, str(parent)], stdout=subprocess.PIPE, text=True)
    pid = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait()

    assert process_ends(pid)


def test_a_process_that_lost_its_peer_says_one_line(monkeypatch, capsys):
    """A bad image read by one rank: that rank printed its one line, and every other rank a 98-line Gloo traceback
    ("Connection closed by peer"; hand-check helper). In a torchrun launch such an error, however wrapped, is one
    line pointing at the other process's error, from the lkcfusion command and from run_bundle alike; outside a
    launch, and for other errors, nothing changes."""
    import runpy

    from monai_lkcfusion.cli import main
    from monai_lkcfusion.cli import train as train_command
    from monai_lkcfusion.engines import PEER_FAILED_MESSAGE, peer_failed
    from monai_lkcfusion.run_bundle import run_bundle_command

    def lost() -> RuntimeError:
        try:
            try:
                raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:390")
            except RuntimeError as gloo:
                raise RuntimeError("Failed to evaluate ConfigExpression: $@train#trainer.run()") from gloo
        except RuntimeError as wrapped:
            return wrapped

    assert not peer_failed(lost())  # not launched by torchrun
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert peer_failed(lost()) and not peer_failed(RuntimeError("a bug"))
    monkeypatch.setattr("monai_lkcfusion.engines.distributed.stop_with_launcher", lambda: None)  # not on pytest

    def stopped(*args, **kwargs):
        raise lost()

    monkeypatch.setattr(train_command, "run", stopped)
    monkeypatch.setattr(runpy, "run_module", stopped)
    assert main(["train", "--dataset-dir", "d", "-o", "o"]) == 1
    assert run_bundle_command(["run", "--config_file", "x.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lkcfusion: error: {PEER_FAILED_MESSAGE}"] * 2, err
    monkeypatch.setattr(train_command, "run", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--dataset-dir", "d", "-o", "o"])


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux")
def test_a_torchrun_worker_ends_when_torchrun_is_killed(tmp_path, process_ends):
    """torchrun starts each worker in a session of its own: a SIGKILLed torchrun (or `kill -9` of the group) left
    both workers training and writing checkpoints into the run folder (hand-check helper). A worker asks the
    kernel for SIGTERM when its parent dies (`stop_with_launcher`, called by the lkcfusion command and run_bundle);
    here a stand-in torchrun starts a stand-in worker and is killed."""
    import signal

    worker = ("import time\nfrom monai_lkcfusion.engines.distributed import stop_with_launcher\n"
              "stop_with_launcher()\nprint('ready', flush=True)\ntime.sleep(60)")
    middle = tmp_path / "torchrun.py"
    middle.write_text("import os, subprocess, sys, time\n"
                      "env = {**os.environ, 'LOCAL_RANK': '0', 'WORLD_SIZE': '2'}\n"
                      f"child = subprocess.Popen([sys.executable, '-c', {worker!r}], env=env, stdout=subprocess.PIPE,"
                      " text=True, start_new_session=True)\n"
                      "child.stdout.readline()\nprint(child.pid, flush=True)\ntime.sleep(60)\n")
    torchrun = subprocess.Popen([sys.executable, str(middle)], stdout=subprocess.PIPE, text=True)
    pid = int(torchrun.stdout.readline())
    torchrun.send_signal(signal.SIGKILL)
    torchrun.wait()

    assert process_ends(pid)


_WORKER = """import os, signal, sys, time
if os.environ["RANK"] == "1":
    time.sleep(1)
    {failure}
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun's process handling is tested on Linux")
@pytest.mark.parametrize("failure, code, last_line", [
    ("print('lkcfusion: error: 3.png: cannot read image', file=sys.stderr); sys.exit(2)", 2,
     "lkcfusion: error: 3.png: cannot read image"),
    ("os.kill(os.getpid(), signal.SIGKILL)", 1, ("lkcfusion: error: the process of rank 1 was ended by SIGKILL "
                                                 "(killed from outside, or out of memory); torchrun stopped the others")),
    ("raise RuntimeError('a bug')", 1,
     "lkcfusion: error: the process of rank 1 failed with exit code 1 (its error is printed above)"),
])
def test_a_failed_process_ends_the_launch_in_one_line(tmp_path, failure, code, last_line):
    """`lkcfusion train --nproc N` ended every failed process with torchrun's ChildFailedError traceback and failure
    report (about 40 lines) and exit code 1, also when the process had stopped on the user's error (a damaged
    image: one line, exit 2) or was killed (hand-check helper). The launcher's torchrun ends such a launch promptly
    with the user's error's exit code 2, or one line naming the rank and how it ended; a worker's own traceback (a
    bug) stays, as do torchrun's log lines (which process it stopped)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(failure=failure))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "monai_lkcfusion.cli.launch", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50)
    err = [line for line in done.stderr.strip().splitlines() if not re.match(r"[IWE]\d{4} ", line)]  # torch's log
    assert done.returncode == code and err[-1] == last_line, done.stderr
    assert "ChildFailedError" not in done.stderr and "FAILED" not in done.stderr
    assert ("Traceback" in done.stderr) == ("a bug" in failure)  # the worker's, only for a bug


def test_the_launcher_starts_the_one_line_torchrun(monkeypatch):
    """`lkcfusion train --nproc N` starts `python -m monai_lkcfusion.cli.launch` (torchrun with one-line failures),
    not `torch.distributed.run` itself."""
    from monai_lkcfusion.cli import launch

    started = []

    class Finished:
        def __init__(self, argv, **kwargs):
            started.append(argv)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Finished)
    assert launch.run_processes(["train", "--epochs", "1"], 3) == 0
    assert started == [[sys.executable, "-m", "monai_lkcfusion.cli.launch", "--standalone", "--nproc_per_node=3",
                        "-m", "monai_lkcfusion", "train", "--epochs", "1"]]


@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
def test_multi_gpu_configs_keep_every_initialize_step(workflow: str) -> None:
    """A multi_gpu_*.json replaces its workflow's whole `initialize` list: train.json's check that validation items
    are 2D slices (added later) was missing from multi_gpu_train.json, so a volume left whole trained a whole
    distributed epoch before failing at validation (hand-check helper). Each keeps its workflow's steps in order."""
    configs = REPO / "bundle" / "configs"  # this checkout's configs, which bundle_config() finds when installed
    single = json.loads((configs / f"{workflow}.json").read_text()).get("initialize", [])
    multi = iter(json.loads((configs / f"multi_gpu_{workflow}.json").read_text())["initialize"])
    assert all(step in multi for step in single), f"multi_gpu_{workflow}.json lacks a step of {workflow}.json"


def test_only_rank_0_shows_the_caching_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank of a `--nproc 2` run drew CacheDataset's "Loading dataset" bars (4 interleaved bars, hand-check
    helper): multi_gpu_train.json leaves them to rank 0, as it does the other console output."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundle" / "configs"  # this checkout's configs, which bundle_config() finds when installed
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "get_rank", lambda r=rank: r)
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
        for dataset in ("train#dataset", "validate#dataset"):
            assert parser.get_parsed_content(f"{dataset}#progress") is (rank == 0)
