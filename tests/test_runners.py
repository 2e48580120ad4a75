"""The runner block of a job, the task runner it becomes, and the device each candidate
gets: GPUs are mocked (this machine has none), so picking is tested by its rules."""

import argparse
import os

import pytest

from pipeline import flows, runners
from pipeline.cli.run import add_job_arguments, overrides_from_args
from pipeline.spec import SpecError, parse

TARGET = {"target": {"speedup": 2.0}}


def test_the_runner_block_defaults_to_threads_and_round_trips():
    spec = parse(TARGET)
    assert (spec.runner.kind, spec.runner.workers, spec.runner.address) == ("threads", None, None)
    dask = parse({**TARGET, "runner": {"kind": "dask", "workers": 2}})
    assert parse(dask.to_dict()) == dask


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        ({"kind": "ray"}, "runner.kind 'ray' is unknown; allowed: ('threads', 'dask')"),
        ({"address": "tcp://10.0.0.5:8786"}, "it needs runner.kind dask"),
        ({"kind": "dask", "workers": 2, "address": "tcp://h:8786"}, "not both"),
        ({"kind": "dask", "workers": 0}, "runner.workers"),
        ({"kind": "dask", "threads": 2}, "runner.threads: unknown key"),
    ],
)
def test_a_bad_runner_block_fails_naming_the_field(runner, message):
    with pytest.raises(SpecError, match="invalid job spec") as err:
        parse({**TARGET, "runner": runner})
    assert message in str(err.value)


def test_a_device_may_name_one_gpu_but_nothing_else():
    assert parse({**TARGET, "device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(SpecError, match="device 'gpu' is unknown"):
        parse({**TARGET, "device": "gpu"})


def flags(*argv):
    p = argparse.ArgumentParser()
    add_job_arguments(p)
    return overrides_from_args(p.parse_args(list(argv)))


def test_runner_flags_become_the_runner_block():
    assert flags("--runner", "dask", "--workers", "3")["runner"] == {"kind": "dask", "workers": 3}
    # A scheduler address alone means Dask.
    assert flags("--dask-address", "tcp://h:8786")["runner"] == {
        "kind": "dask",
        "address": "tcp://h:8786",
    }
    assert "runner" not in flags("--rounds", "2")


def test_threads_run_a_batch_at_once_unless_told_otherwise():
    from prefect.task_runners import ThreadPoolTaskRunner

    pool = runners.task_runner(parse(TARGET).runner, batch=3)
    assert isinstance(pool, ThreadPoolTaskRunner) and pool._max_workers == 3
    one = runners.task_runner(parse({**TARGET, "runner": {"workers": 1}}).runner, batch=3)
    assert one._max_workers == 1


def test_dask_runs_a_local_cluster_of_processes_or_joins_a_scheduler():
    from prefect_dask import DaskTaskRunner

    local = runners.task_runner(parse({**TARGET, "runner": {"kind": "dask"}}).runner, batch=2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    kwargs = local.cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"], kwargs["processes"]) == (2, 1, True)
    assert kwargs["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    remote = parse({**TARGET, "runner": {"kind": "dask", "address": "tcp://h:8786"}}).runner
    assert runners.task_runner(remote, batch=2).address == "tcp://h:8786"


def test_an_unreachable_scheduler_fails_before_any_training():
    import dask

    from tests.servers import free_port

    runner = parse(
        {**TARGET, "runner": {"kind": "dask", "address": f"tcp://127.0.0.1:{free_port()}"}}
    ).runner
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(runners.RunnerError, match="cannot reach the Dask scheduler at tcp://"),
        runners.started(runner, batch=2),
    ):
        pass


def _worker_env():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def test_local_dask_workers_get_their_share_of_cores_and_glibcs_own_malloc_tuning():
    runner = parse({**TARGET, "runner": {"kind": "dask", "workers": 1}}).runner
    with runners.started(runner, batch=2) as pool:
        envs = list(pool.client.run(_worker_env).values())
    # Dask's MALLOC_TRIM_THRESHOLD_ made fine-tuning 2-3x slower than in-process.
    assert envs == [(None, str(os.cpu_count() or 1))]


@pytest.mark.parametrize(
    ("requested", "slot", "gpus", "expected"),
    [
        ("cpu", 3, 2, "cpu"),
        ("auto", 3, 0, "cpu"),
        ("auto", 3, 2, "cuda:1"),
        ("cuda", 0, 2, "cuda:0"),
        ("cuda", 5, 4, "cuda:1"),
        ("cuda:3", 0, 4, "cuda:3"),  # pinned by the user
    ],
)
def test_each_worker_gets_one_gpu_by_its_slot(requested, slot, gpus, expected):
    assert runners.pick_device(requested, slot, gpus) == expected


def test_asking_for_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(runners.RunnerError, match="sees no CUDA device"):
        runners.pick_device("cuda", 0, 0)


class FakeWorker:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize(("name", "slot"), [(1, 1), ("gpu-node-3", 3), ("7", 7)])
def test_the_slot_is_the_dask_workers_index(monkeypatch, name, slot):
    import distributed

    monkeypatch.setattr(distributed, "get_worker", lambda: FakeWorker(name))
    assert runners.worker_slot(default=-1) == slot


def test_outside_dask_the_slot_is_the_default_and_odd_names_stay_stable(monkeypatch):
    assert runners.worker_slot(default=5) == 5
    import distributed

    monkeypatch.setattr(distributed, "get_worker", lambda: FakeWorker("alpha"))
    assert runners.worker_slot(default=-1) == runners.worker_slot(default=-2) >= 0


@pytest.fixture()
def two_gpus(monkeypatch):
    import torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_a_candidate_trains_and_is_timed_on_its_gpu(two_gpus):
    assert runners.device_here("auto", slot=5) == "cuda:1"
    # Made torch's current device, so "cuda" timing and synchronize use the same GPU.
    assert two_gpus == ["cuda:1"]
    assert runners.device_here("cpu", slot=5) == "cpu" and two_gpus == ["cuda:1"]


def test_the_candidate_task_hands_the_picked_device_to_the_candidate(two_gpus, monkeypatch):
    seen = {}

    def fake_evaluate(spec, device, *args):
        seen.update(spec=spec, device=device, round=args[3])
        return {}

    monkeypatch.setattr(flows.candidate, "evaluate", fake_evaluate)
    spec = parse({**TARGET, "device": "cuda"})
    flows.evaluate_candidate.fn(spec, "baseline.pt", 1, {}, 4, "work")
    # The same spec object (never re-parsed), and the device picked where the task ran.
    assert seen == {"spec": spec, "device": "cuda:0", "round": 4} and seen["spec"] is spec
    assert spec.device == "cuda"  # the job's own spec is left as it was


def test_inside_a_prefect_task_on_dask_the_slot_is_the_workers(prefect_harness):
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    @task
    def slot(i: int) -> int:
        return runners.worker_slot(default=-1)

    @flow
    def slots() -> list[int]:
        with DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": False}
        ) as pool:
            return [pool.submit(slot, {"i": i}).result() for i in range(4)]

    result = slots()
    assert len(result) == 4 and set(result) <= {0, 1}  # never the outside-Dask default, -1
