"""``driftwarden`` command line: worker, demo, check-config, reference build, topics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from app.errors import DriftwardenError


def _load(path: str):  # type: ignore[no-untyped-def]
    from app.settings import load_settings

    return load_settings(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file)
    where = settings.kafka.bootstrap or "the embedded broker"
    print(f"{args.file}: OK: {len(settings.models)} model(s), {len(settings.sources)} source(s), "
          f"kafka at {where}")
    for name, model in settings.models.items():
        ref = model.reference.file or f"warm-up of {model.reference.warmup} events"
        print(f"  {name}: {len(model.features)} features, task {model.task}, reference {ref}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from app.plan import build_plan, last_retrains, render_json, render_text

    settings = _load(args.config)
    if args.model is not None and args.model not in settings.models:
        raise DriftwardenError(f"model {args.model!r} is not in {args.config}; "
                               f"configured: {sorted(settings.models)}")
    models = [args.model] if args.model is not None else list(settings.models)
    retrains = last_retrains(settings, args.bootstrap or settings.kafka.bootstrap, models,
                             args.timeout)
    plan = build_plan(settings, models, retrains, config=args.config)
    print(render_json(plan) if args.format == "json" else render_text(plan))
    return 1 if args.strict and plan["gap_count"] else 0


def cmd_reference_build(args: argparse.Namespace) -> int:
    from app.reference import build_reference, read_rows

    settings = _load(args.config)
    if args.model not in settings.models:
        raise DriftwardenError(f"model {args.model!r} is not in {args.config}; "
                               f"configured: {sorted(settings.models)}")
    model = settings.models[args.model]
    data = Path(args.data)
    rows = read_rows(data, model.features, model.segments)
    ref = build_reference(rows, args.model, model, version=args.version,
                          origin=f"file:{data.name}")
    out = Path(args.out or f"{args.model}{'-' + args.version if args.version else ''}"
               ".reference.json")
    import orjson

    out.write_bytes(orjson.dumps(ref.to_dict(), option=orjson.OPT_INDENT_2))
    print(ref.summary())
    print(f"written to {out}")
    if args.publish:
        from app.references_topic import publish_reference

        if not args.version:
            raise DriftwardenError("--publish needs --version: the topic holds references "
                                   "per model version")
        bootstrap = args.bootstrap or settings.kafka.bootstrap
        if not bootstrap:
            raise DriftwardenError("--publish needs kafka.bootstrap or --bootstrap")
        asyncio.run(publish_reference(bootstrap, settings, ref))
        print(f"published to {settings.topics.name('references')} as "
              f"{args.model}/{args.version}")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from app.kafka import ensure_topics

    settings = _load(args.config)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise DriftwardenError("no bootstrap server: set kafka.bootstrap or pass --bootstrap")
    asyncio.run(ensure_topics(bootstrap, settings))
    print(f"topics ready on {bootstrap}: {', '.join(settings.topics.all_names())}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.worker import run_worker

    settings = _load(args.config)
    return run_worker(settings, bootstrap=args.bootstrap, log_level=args.log_level)


def cmd_replay(args: argparse.Namespace) -> int:
    from app.replay import run_replay

    settings = _load(args.config)
    predictions = Path(args.predictions)
    extra = {"outcomes": args.outcomes, "model_events": args.model_events,
             "inputs": args.inputs}
    for path in (args.predictions, *extra.values()):
        if path is not None and not Path(path).is_file():
            raise DriftwardenError(f"{path}: no such file")
    out = Path(args.out)
    from app.reference import load_reference_json
    from app.runtime import tune_gc, tune_malloc

    tune_malloc()
    installed = [load_reference_json(Path(p)) for p in args.reference or []]
    tune_gc()
    summary = run_replay(settings, predictions, out, progress=not args.no_progress,
                         installed=installed,
                         **{k: Path(v) for k, v in extra.items() if v is not None})
    print(f"replayed {summary.lines} lines: {summary.events} events, {summary.rejected} "
          f"rejected; {summary.windows} windows closed, {summary.alerts} alerts")
    for feature, count in sorted(summary.alerts_by_feature.items(), key=lambda kv: -kv[1]):
        print(f"  {feature}: {count} alerts")
    print(f"outputs in {out}/: alerts.jsonl, evaluations.jsonl, retrain-triggers.jsonl, "
          "deadletter.jsonl")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo.run import run_demo, run_external, standalone_config

    if args.write_config:
        import yaml

        Path(args.write_config).write_text(
            "# The demo's monitor file for a real Kafka, written by `driftwarden demo "
            "--write-config`.\n" + yaml.safe_dump(standalone_config(), sort_keys=False))
        print(f"written to {args.write_config}")
        return 0
    if args.bootstrap:
        if not args.config:
            raise DriftwardenError("demo --bootstrap needs -c/--config (e.g. examples/demo.yaml)")
        return run_external(args.bootstrap, Path(args.config), duration=args.duration,
                            rate=args.rate, seed=args.seed)
    return run_demo(duration=args.duration, rate=args.rate, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftwarden",
                                description="Streaming monitoring and drift detection for ML "
                                            "models on Kafka.")
    sub = p.add_subparsers(dest="command", required=True)
    from app.bridge import add_parser as add_alertmanager_bridge

    add_alertmanager_bridge(sub)
    from app.retrain_listener import add_parser as add_retrain_listener

    add_retrain_listener(sub)

    w = sub.add_parser("worker", help="run a stream-processing worker")
    w.add_argument("-c", "--config", required=True, help="the monitor YAML file")
    w.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap)")
    w.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error"])
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("demo", help="end-to-end demo on the embedded broker")
    d.add_argument("--duration", type=float, default=60.0,
                   help="seconds of producing (default 60; the whole demo takes ~20 s more)")
    d.add_argument("--rate", type=int, default=2000, help="events per second (default 2000)")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--bootstrap", help="produce to this Kafka instead (a worker must run "
                                      "with the same monitor file; no embedded broker)")
    d.add_argument("-c", "--config", help="with --bootstrap: the demo's monitor file")
    d.add_argument("--write-config", metavar="FILE",
                   help="write the demo's monitor file for a real Kafka and exit")
    d.set_defaults(func=cmd_demo)

    rp = sub.add_parser("replay", help="run the monitoring engine offline over JSON-lines files")
    rp.add_argument("-c", "--config", required=True)
    rp.add_argument("--predictions", required=True,
                    help="JSON lines: one prediction event, or an array of them, per line")
    rp.add_argument("--outcomes", help="JSON lines of outcome events (ground-truth labels)")
    rp.add_argument("--model-events", help="JSON lines of model lifecycle events")
    rp.add_argument("--inputs", help="JSON lines of source records (mlmon.inputs events)")
    rp.add_argument("--out", required=True, help="folder for the output JSON-lines files")
    rp.add_argument("--reference", action="append", metavar="FILE",
                    help="a version's reference (*.reference.json); repeatable")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(func=cmd_replay)

    c = sub.add_parser("check-config", help="validate a monitor file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    pl = sub.add_parser("plan", help="each model's operating plan: monitoring, data "
                                     "dependencies, what happens when it degrades; and gaps")
    pl.add_argument("-c", "--config", required=True, help="the monitor YAML file")
    pl.add_argument("--model", help="only this model")
    pl.add_argument("--strict", action="store_true", help="exit 1 when any gap is listed")
    pl.add_argument("--format", choices=["text", "json"], default="text")
    pl.add_argument("--bootstrap", help="Kafka bootstrap servers for the last retrain "
                                        "(overrides kafka.bootstrap)")
    pl.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to read the model-events topic (default 5)")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("reference", help="reference data")
    rsub = r.add_subparsers(dest="reference_command", required=True)
    rb = rsub.add_parser("build", help="build a reference from a CSV, JSON lines or Parquet file")
    rb.add_argument("data")
    rb.add_argument("-c", "--config", required=True)
    rb.add_argument("--model", required=True)
    rb.add_argument("--version")
    rb.add_argument("--out", help="output file (default MODEL[-VERSION].reference.json)")
    rb.add_argument("--publish", action="store_true",
                    help="also publish it to the references topic (needs --version)")
    rb.add_argument("--bootstrap", help="Kafka bootstrap servers for --publish")
    rb.set_defaults(func=cmd_reference_build)

    t = sub.add_parser("topics", help="Kafka topics")
    tsub = t.add_subparsers(dest="topics_command", required=True)
    tc = tsub.add_parser("create", help="create every topic with its partition count")
    tc.add_argument("-c", "--config", required=True)
    tc.add_argument("--bootstrap")
    tc.set_defaults(func=cmd_topics_create)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DriftwardenError as exc:
        print(f"driftwarden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
