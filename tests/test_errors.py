"""Setting parsers shared by the bundle configs, the engines and the CLI: one rule each, one-line messages."""

import pytest

from monai_lkcfusion.errors import FusionInputError, as_count, as_flag, as_names


@pytest.mark.parametrize("value, minimum", [(1, 1), (7, 1), (0, 0), (3, 0)])
def test_as_count_accepts_whole_numbers_from_the_minimum(value, minimum):
    assert as_count(value, "n", minimum=minimum) == value


@pytest.mark.parametrize("value, minimum", [(0, 1), (-1, 0), (True, 0), ("2", 1), (2.0, 1), (None, 0)])
def test_as_count_refuses_what_is_not_a_count_in_one_line(value, minimum):
    with pytest.raises(FusionInputError) as raised:
        as_count(value, "keep_checkpoint_interval", minimum=minimum, unit="epochs")
    message = str(raised.value)
    expected = f"keep_checkpoint_interval {value!r}: give a whole number of epochs of at least {minimum}"
    assert message.startswith(expected)
    assert "\n" not in message and ("(0: off)" in message) == (minimum == 0)


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("TRUE", True), (" false ", False)])
def test_as_flag_reads_bools_and_their_names(value, expected):
    assert as_flag(value, "tta") is expected


@pytest.mark.parametrize("value", ["no", 0, 1, None, "yes"])
def test_as_flag_refuses_anything_else(value):
    with pytest.raises(FusionInputError, match=r"tta .*: give true or false"):
        as_flag(value, "tta")


def test_as_names_keeps_each_name_once_in_order_and_refuses_none():
    assert as_names(["SD", "EN", "SD", "MI", "EN"], "--metrics") == ("SD", "EN", "MI")
    assert as_names("max", "methods") == ("max",)  # one name, not its letters
    with pytest.raises(FusionInputError, match=r"^--metrics: give at least one name$"):
        as_names([], "--metrics")


def test_user_error_finds_the_message_inside_monai_wrappers(tmp_path):
    """In a user's own MONAI pipeline (a Compose in a Compose, a Dataset), a missing file arrives as MONAI's
    RuntimeError("applying transform ..."); ``user_error`` gives the one-line error back (fuse() uses the same)."""
    from monai.data import Dataset
    from monai.transforms import Compose

    from monai_lkcfusion import user_error
    from monai_lkcfusion.transforms import fusion_preprocessing

    dataset = Dataset([{"mri": str(tmp_path / "nope.png"), "other": str(tmp_path / "b.png")}],
                      Compose([Compose([fusion_preprocessing()])]))
    with pytest.raises(RuntimeError) as caught:
        dataset[0]
    found = user_error(caught.value)
    assert isinstance(found, FusionInputError) and str(found) == f"{tmp_path / 'nope.png'}: file not found"
    assert user_error(RuntimeError("a bug")) is None
    disk = OSError(28, "No space left on device", "out.png")
    assert user_error(_raised_from(disk)) is disk
    # a DataLoader worker process re-raises the error as text (its traceback): None before (hand-check helper)
    from monai.data import DataLoader

    with pytest.raises(RuntimeError) as caught:
        next(iter(DataLoader(dataset, batch_size=1, num_workers=1)))
    found = user_error(caught.value)
    assert isinstance(found, FusionInputError) and str(found) == f"{tmp_path / 'nope.png'}: file not found"


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("applying transform") from cause
    except RuntimeError as err:
        return err


def test_pool_threads_an_error_left_running_are_waited_for():
    """MONAI's CacheDataset loads in a ThreadPool that an error terminates without joining its threads; a worker still
    in PyTorch's C++ code when the interpreter exited aborted the process after its one-line error (exit 134;
    hand-check helper, about half the runs under load). The CLI waits for such workers on its error path; the idle
    workers of a pool still open are not waited for (the review: every exit waited 30 s)."""
    import threading
    import time
    from multiprocessing.pool import ThreadPool

    from monai_lkcfusion.errors import finish_pool_threads

    started, release = threading.Event(), threading.Event()

    def task(_: int) -> None:
        started.set()
        release.wait(30)

    with ThreadPool(1) as pool:  # terminated on leaving the block, its worker still in the task
        pool.map_async(task, [0])
        assert started.wait(10)
    workers = list(pool._pool)
    assert all(worker.is_alive() for worker in workers)
    open_pool = ThreadPool(1)  # idle workers that never end: not waited for
    try:
        import warnings

        import torch.distributed  # noqa: F401 (its deprecated reduce_op warned when asked its __class__)

        begin = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a FutureWarning line came before the CLI's one-line error
            finish_pool_threads(timeout=0.2)  # the task still runs: the wait ends at the timeout
        assert 0.15 < time.monotonic() - begin < 5 and all(worker.is_alive() for worker in workers)
        threading.Timer(0.3, release.set).start()
        finish_pool_threads(timeout=20)
        assert not any(worker.is_alive() for worker in workers) and time.monotonic() - begin < 10
    finally:
        release.set()
        open_pool.terminate()


def test_worker_tracebacks_give_the_users_error_not_a_bugs():
    """The review of the DataLoader text parsing: a FusionInputError raised directly in a worker came back as a
    FusionInputError whose message was the whole traceback (printed as one huge line), and a KeyError raised while
    handling a FusionInputError was reported as the user's error, hiding the bug."""
    import torch.utils.data

    from monai_lkcfusion import user_error

    class Raising(torch.utils.data.Dataset):
        def __init__(self, bug: bool | str) -> None:
            self.bug = bug

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            if self.bug == "disk":  # came back as an OSError whose message was the whole traceback (re-check helper)
                raise OSError(28, "No space left on device", "out.png")
            try:
                raise FusionInputError("x.png: file not found")
            except FusionInputError:
                if self.bug:
                    raise KeyError("a bug while handling it")  # noqa: B904 (implicit chaining is the point)
                raise

    for bug, expected in ((False, "x.png: file not found"), (True, None),
                          ("disk", "[Errno 28] No space left on device: 'out.png'")):
        with pytest.raises(Exception) as caught:
            next(iter(torch.utils.data.DataLoader(Raising(bug), num_workers=1)))
        found = user_error(caught.value)
        assert (None if found is None else str(found)) == expected, (bug, str(found)[:200])



def _wrapped_user_error(*args, **kwargs):
    try:
        raise FusionInputError("mri.png: file not\n found")
    except FusionInputError as err:
        raise RuntimeError("applying transform <LoadFusionImaged>") from err


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def _bug(*args, **kwargs):
    raise ValueError("a bug")


@pytest.mark.parametrize("failure, code, line", [
    (_wrapped_user_error, 2, "lkcfusion: error: mri.png: file not found"),
    (_interrupted, 130, "lkcfusion: interrupted"),
    (_bug, None, None),
])
def test_both_command_fronts_share_one_rule_for_errors(monkeypatch, capsys, failure, code, line):
    """``lkcfusion`` and ``python -m monai_lkcfusion.run_bundle`` had their own copies of the exit-code rules: the
    user's error inside one of MONAI's ``RuntimeError`` wrappers was one line from ``run_bundle`` but a traceback from
    ``lkcfusion``. One rule now (``cli.run_command``): one line, exit 2; Ctrl-C 130; a bug keeps its traceback."""
    import runpy

    from monai_lkcfusion.cli import main
    from monai_lkcfusion.cli import metrics as metrics_command
    from monai_lkcfusion.run_bundle import run_bundle_command

    monkeypatch.setattr("monai_lkcfusion.engines.distributed.stop_with_launcher", lambda: None)
    monkeypatch.setattr(metrics_command, "run", failure)
    monkeypatch.setattr(runpy, "run_module", failure)
    fronts = (lambda: main(["metrics", "--fused", "f.png", "--mri", "a.png", "--other", "b.png"]),
              lambda: run_bundle_command(["run", "--config_file", "x.json"]))
    for front in fronts:
        if code is None:
            with pytest.raises(ValueError, match="a bug"):
                front()
        else:
            assert front() == code
    if line is not None:
        assert capsys.readouterr().err.splitlines() == [line, line]
