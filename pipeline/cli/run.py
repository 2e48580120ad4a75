"""``compressflow run``: one job, from a YAML file and/or flags, on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.errors import UserError
from pipeline.cli.secrets import without_passwords

# The job finished and its best candidate is recorded, but it falls short of the target.
EXIT_TARGET_NOT_MET = 3

# Prefect phones home by default; this machine (and many clusters) has no internet.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a job (shared with ``submit``). Each overrides the YAML file."""
    g = p.add_argument_group("job")
    g.add_argument("--job", help="job spec YAML file (flags below override its fields)")
    g.add_argument("--name", help="job name (default: derived from model and target)")
    g.add_argument("--model", help="zoo name, package.module:factory, model file or s3:// URI")
    g.add_argument("--weights", help="state-dict weights (.safetensors or torch file)")
    g.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the model factory (repeatable)",
    )
    g.add_argument("--data", help="digits | cifar10:<dir> | imagefolder:<dir> | module:callable")
    g.add_argument("--image-size", type=int)
    g.add_argument("--data-limit", type=int, help="use at most this many samples")
    g.add_argument(
        "--learners",
        help="learner or comma-separated chain (channel,int8); alternatives the search "
        "chooses among, separated by ';' ('channel;int8;channel,int8'); or auto",
    )
    g.add_argument(
        "--learner-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a learner's config field, e.g. qat.avg_bits=4 (repeatable)",
    )
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target-speedup", type=float, help="measured speedup factor, e.g. 2")
    t.add_argument("--target-compression", type=float, help="deployable-file ratio, e.g. 4")
    g.add_argument("--runtime", help="torch-cpu | onnxruntime-cpu | cuda")
    g.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="validation accuracy points a candidate may lose and still count (default 5)",
    )
    g.add_argument(
        "--allow-untrained-baseline",
        action="store_true",
        default=None,
        help="search even when the baseline is at chance (nothing at chance is met)",
    )
    g.add_argument(
        "--trust-pickled-models",
        action="store_true",
        default=None,
        help="load pickled full-model files (they run any code they name)",
    )
    g.add_argument(
        "--force-search",
        action="store_true",
        default=None,
        help="search even when calibration shows the target is out of reach",
    )
    g.add_argument("--rounds", type=int, help="full evaluations (fine-tuned candidates) at most")
    g.add_argument(
        "--screen",
        type=int,
        help="screenings (cheap, no fine-tune) to choose the full evaluations from; 0 = off",
    )
    g.add_argument("--minutes", type=float, help="search time budget")
    g.add_argument("--patience", type=int, help="rounds without gain once the target is met")
    g.add_argument("--parallel", type=int, help="candidates proposed and run together")
    g.add_argument("--pretrain-epochs", type=int)
    g.add_argument("--epochs", type=int, help="fine-tune epochs per candidate")
    g.add_argument("--lr", type=float, help="fine-tune learning rate")
    g.add_argument(
        "--distill",
        action="store_true",
        default=None,
        help="distil from the baseline while fine-tuning",
    )
    g.add_argument("--measure-batch", type=int, help="batch size for latency")
    g.add_argument("--threads", type=int, help="threads for latency measurement")
    g.add_argument("--repeats", type=int, help="timed repeats per latency measurement")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    g.add_argument("--experiment", help="MLflow experiment name")
    g.add_argument(
        "--no-register",
        action="store_true",
        default=None,
        help="do not register the best model in the MLflow registry",
    )
    g.add_argument("--output", help="folder or s3://bucket/prefix for models and the summary")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (where fine-tuning runs)")
    g.add_argument("--runner", help="threads | dask (where a batch of candidates runs)")
    g.add_argument("--workers", type=int, help="threads or local Dask worker processes")
    g.add_argument("--dask-address", help="an existing Dask scheduler (implies --runner dask)")
    g.add_argument("--seed", type=int)


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = o
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--model-option {item!r} must look like KEY=VALUE")
        put(f"model.options.{key}", _option_value(value))
    for item in args.learner_option:
        key, sep, value = item.partition("=")
        learner, dot, field = key.partition(".")
        if not (sep and dot and learner and field):
            raise UserError(f"--learner-option {item!r} must look like NAME.KEY=VALUE")
        o.setdefault("learner_options", {}).setdefault(learner, {})[field] = _option_value(value)
    put("name", args.name)
    put("model.source", args.model)
    put("model.weights", args.weights)
    put("data.source", args.data)
    put("data.image_size", args.image_size)
    put("data.limit", args.data_limit)
    put("learners", args.learners)
    # A target given as a flag replaces the file's target of the other kind.
    if args.target_speedup is not None:
        o["target"] = {"speedup": args.target_speedup, "compression": None}
    if args.target_compression is not None:
        o["target"] = {"compression": args.target_compression, "speedup": None}
    put("target.runtime", args.runtime)
    put("target.max_accuracy_drop", args.max_accuracy_drop)
    put("allow_untrained_baseline", args.allow_untrained_baseline)
    put("trust_pickled_models", args.trust_pickled_models)
    put("force_search", args.force_search)
    put("budget.rounds", args.rounds)
    put("budget.screen", args.screen)
    put("budget.minutes", args.minutes)
    put("budget.patience", args.patience)
    put("budget.batch", args.parallel)
    put("finetune.pretrain_epochs", args.pretrain_epochs)
    put("finetune.epochs", args.epochs)
    put("finetune.lr", args.lr)
    put("distillation.enabled", args.distill)
    put("measure.batch_size", args.measure_batch)
    put("measure.threads", args.threads)
    put("measure.repeats", args.repeats)
    put("tracking.uri", args.tracking_uri)
    put("tracking.experiment", args.experiment)
    put("tracking.register_model", False if args.no_register else None)
    put("output", args.output)
    put("device", args.device)
    put("runner.kind", args.runner or ("dask" if args.dask_address else None))
    put("runner.workers", args.workers)
    put("runner.address", args.dask_address)
    put("seed", args.seed)
    return o


def spec_from_args(args: argparse.Namespace):
    from pipeline import spec as spec_mod

    try:
        # The file as written, completed by the flags, then validated once: a file may
        # leave out what the flags give (its target, say).
        base = spec_mod.load_raw(args.job) if args.job else {}
        if args.model:  # another model: the file's weights and options were for its own
            base = {k: v for k, v in base.items() if k != "model"}
        merged = spec_mod.merge(base, overrides_from_args(args))
        if "target" not in merged:
            raise UserError(
                "no target: give --target-speedup N or --target-compression N "
                "(or a target: block in the job file)"
            )
        return spec_mod.parse(merged)
    except spec_mod.SpecError as err:
        raise UserError(str(err)) from None


def register(sub) -> None:
    p = sub.add_parser("run", help="run one compression job on this machine")
    add_job_arguments(p)
    p.add_argument("--summary-json", help="also write the result summary to this path")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings, the search's progress and the result (Prefect's task "
        "lines and MLflow's download bars still reach their stores, not the screen)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue the job recorded under this "
        "MLflow parent run (its rounds count towards the budget)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The tracking store's password goes to its client's environment variable: the spec
    # the job carries (into Prefect's records too), records and prints has none.
    spec = without_passwords(spec_from_args(args))
    # Heavy imports (torch, Prefect, MLflow) only once a job is really run: --help stays fast.
    from pipeline.runners import INTERRUPTS, Interrupted

    print(
        f"job {spec.job_name}: {spec.learners_text} on {spec.model.source} / "
        f"{spec.data.source}, target {spec.target.kind} >= {spec.target.value:g} "
        f"({spec.target.runtime})",
        flush=True,
    )
    with INTERRUPTS.armed_for_job():
        try:
            code = _run_job(spec, args)
        except Interrupted as err:
            print(f"compressflow: {err} before the search began (no rounds recorded)")
            code = err.exit_code
        except (SystemExit, KeyboardInterrupt) as err:
            if INTERRUPTS.requested:
                raise
            # Not a signal: code of the user's (a model's forward, say) tried to end the job.
            what = (
                f"SystemExit({err.code!r})" if isinstance(err, SystemExit) else "KeyboardInterrupt"
            )
            raise UserError(
                f"user code raised {what} during the job; no summary was written"
            ) from None
        except Exception:
            if not INTERRUPTS.requested:
                raise
            # The signal surfaced as another error somewhere inside Prefect or MLflow.
            print("compressflow: interrupted before the job could record anything")
            code = 128 + (INTERRUPTS.signum or 2)
        if INTERRUPTS.requested:
            # 130 (SIGINT) or 143 (SIGTERM), whatever the job reached. Rounds still running
            # were abandoned: os._exit does not wait for their threads.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + (INTERRUPTS.signum or 2))
    return code


def _run_job(spec: Any, args: argparse.Namespace) -> int:
    from pipeline.job import preflight

    # Preflight first: a bad input is reported before Prefect and the flow are imported.
    try:
        found = preflight.check(spec, args.resume, args.summary_json)
    except preflight.PreflightError as err:
        raise UserError(str(err)) from None

    from pipeline.cli import prefect_api
    from pipeline.cli.faults import fault_line, fault_types
    from pipeline.flows import SearchFault, compress
    from pipeline.job.render import table
    from pipeline.job.runlock import RunBusy
    from pipeline.records.links import ui_command
    from pipeline.records.redact import redact
    from pipeline.records.storage import StorageError
    from pipeline.runners import INTERRUPTS, Interrupted, RunnerError
    from pipeline.sources.data import DataSourceError
    from pipeline.sources.guard import UserCodeExit
    from pipeline.sources.models import ModelSourceError

    shape = "x".join(map(str, found.input_shape))
    print(
        f"preflight: {found.train_size} training samples of {shape}, "
        f"{found.num_classes} classes; the model takes them"
        + ("" if found.has_weights else " (no weights: the baseline is trained first)"),
        flush=True,
    )
    try:
        user_errors = (
            DataSourceError,
            ModelSourceError,
            StorageError,
            RunnerError,
            preflight.PreflightError,
            UserCodeExit,
            RunBusy,
            Interrupted,
        )
        faults = () if args.debug else fault_types()
        quiet = (*user_errors, *faults, SearchFault)
        with (
            prefect_api.serving() as api,
            prefect_api.quiet_console(quiet),
            prefect_api.only_warnings(getattr(args, "quiet", False)),
        ):
            if api is not None:
                INTERRUPTS.on_exit.append(api.kill_now)
            summary = compress(spec, resume_run_id=args.resume)
    except prefect_api.PrefectStartError as err:
        print(f"compressflow: error: {err}", file=sys.stderr)
        return 1
    except user_errors as err:  # PreflightError: a baseline at chance, found once it is trained
        if isinstance(err, Interrupted):
            raise
        raise UserError(str(err)) from None
    except faults as err:
        print(f"compressflow: error: {fault_line(err)}", file=sys.stderr)
        return 1
    except SearchFault as err:
        return _search_fault(err, args)
    print()
    print(table(summary))
    if args.summary_json:
        try:
            write_summary(summary, args.summary_json)
        except (OSError, StorageError) as err:
            why = f"--summary-json {args.summary_json} could not be written ({err})"
            print(f"compressflow: error: {why}; the run folder's summary.json has it",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"summary: {args.summary_json}")
    print(f"MLflow UI: {redact(ui_command(spec.tracking.uri))}")
    if INTERRUPTS.requested:
        print(f"stopped: {summary['stop_reason']} (resume with --resume "
              f"{summary['mlflow']['parent_run_id']})")  # fmt: skip
    return 0 if summary["target_met"] else EXIT_TARGET_NOT_MET


def _search_fault(err: Any, args: argparse.Namespace) -> int:
    """Exit 1 for a search stopped by an error, after the report of what finished (the
    run folder's summary.json, and --summary-json where it can be written)."""
    import traceback

    from pipeline.cli.faults import fault_line, fault_types
    from pipeline.job.render import table

    cause = err.__cause__
    if args.debug or not isinstance(cause, fault_types()):
        traceback.print_exception(cause, file=sys.stderr)
    summary = err.summary
    if summary is not None:
        print()
        print(table(summary))
        if args.summary_json:
            try:
                write_summary(summary, args.summary_json)
                print(f"summary: {args.summary_json}")
            except Exception as failed:  # noqa: BLE001 - the fault itself may stop this
                print(f"compressflow: --summary-json not written ({failed})", file=sys.stderr)
    kept = (
        f"the {len(summary['candidates'])} round(s) that finished are reported in the run "
        "folder's summary.json"
        if summary is not None
        else "the summary could not be written"
    )
    print(f"compressflow: error: {fault_line(cause)}; {kept}", file=sys.stderr)
    return 1


def write_summary(summary: dict[str, Any], destination: str) -> None:
    """Write the summary to a local path or an s3:// URI."""
    import tempfile

    from pipeline.records import storage

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "summary.json"
        local.write_text(json.dumps(summary, indent=2))
        storage.put(local, destination)
