"""The Kubernetes commands of `dreambooth-job`: submit, submit-generate, batch, status, report, cancel.

    dreambooth-job submit --instance-data s3://photos/dog/ --class-noun dog --output s3://runs/dog/ \\
        --image registry/dreambooth-job:0.1.0 --queue gpu-night
    dreambooth-job submit-generate --model s3://runs/dog/ --output s3://gen/dog/ --num-images 8 \\
        --image registry/dreambooth-job:0.1.0
    dreambooth-job batch night-42.yaml --cluster-config cluster.yaml --max-parallel 8
    dreambooth-job batch night-42.yaml --dry-run -o yaml          # every Job, no cluster needed
    dreambooth-job status --batch night-42.yaml --watch
    dreambooth-job report --batch night-42.yaml --output s3://runs/night-42/report/
    dreambooth-job cancel --batch night-42.yaml

They only parse and print; the work is in client, feed, status and report. Their errors end in
cli_boundary.py, like every command's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import yaml

from dreambooth_job.cli_options import resolve_train_config, train_options
from dreambooth_job.config.field_types import flag_name
from dreambooth_job.config.policy_checks import policy_problems
from dreambooth_job.config.sources import load_config_file
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.generation import generate_config
from dreambooth_job.k8s import client as k8s
from dreambooth_job.k8s.batch import SET_BY_THE_POD, Batch, BatchFileError, load_batch
from dreambooth_job.k8s.batch_report import summary, write_report
from dreambooth_job.k8s.feed import render_batch, submit_batch
from dreambooth_job.k8s.generate_job import GenerateJobSpec
from dreambooth_job.k8s.manifest import BATCH_LABEL, JobSpec, label_value
from dreambooth_job.k8s.options import cluster_options, connection_options, resolve_cluster_settings
from dreambooth_job.k8s.status import (
    JOB_NAME_LABEL,
    JobStatus,
    Phase,
    attach_result,
    batch_status,
    describe,
    format_duration,
    get_status,
)


def _connect(params: dict[str, Any]) -> k8s.Connection:
    return k8s.Connection.from_environment(params.get("kubeconfig"), params.get("context"))


def _print_manifests(manifests: list[dict], fmt: str) -> None:
    if fmt == "json":
        body = manifests[0] if len(manifests) == 1 else {
            "apiVersion": "v1", "kind": "List", "items": manifests}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(yaml.safe_dump_all(manifests, sort_keys=False), nl=False)


def _sets(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        values[key.strip()] = value
    return values


_output_format = click.option("-o", "--format", "fmt", type=click.Choice(["yaml", "json"]),
                              default="yaml", show_default=True, help="Format of --dry-run.")
_set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                           help="Default train option of every subject (overrides the file's "
                                "defaults; a row's own value wins). Repeatable.")


# ----------------------------------------------------------------------------------------------

@click.command()
@train_options
@cluster_options
@connection_options
@click.option("--replace", is_flag=True, help="Replace the subject's Job if it has finished.")
@click.option("--dry-run", is_flag=True, help="Print the Job instead of creating it.")
@_output_format
def submit(replace: bool, dry_run: bool, fmt: str, **params: Any) -> None:
    """Submit one subject as a Kubernetes Job (the same Job the Helm chart renders)."""
    given = {k for k, v in params.items() if v not in (None, ())}
    if params.get("config_file"):
        given |= set(load_config_file(params["config_file"]))
    set_by_the_pod = sorted(given & SET_BY_THE_POD)
    if set_by_the_pod:
        raise InvalidInputError(f"{flag_name(set_by_the_pod[0])} is set by the pod, not by submit: "
                                "drop it")
    spec = JobSpec(train=resolve_train_config(params), cluster=resolve_cluster_settings(params))
    # The operator's prefixes, hosts and ceilings, as for batch and in the pod (config/policy_checks.py).
    _submit(spec, policy_problems(spec.train, spec.cluster.policy()), replace, dry_run, fmt, params,
            "for this subject")


@click.command("submit-generate")
@generate_config.generate_options
@cluster_options
@connection_options
@click.option("--replace", is_flag=True, help="Replace the Job of this --model and --output if it "
                                              "has finished.")
@click.option("--dry-run", is_flag=True, help="Print the Job instead of creating it.")
@_output_format
def submit_generate(replace: bool, dry_run: bool, fmt: str, **params: Any) -> None:
    """Submit `generate` (images from a finished run) as a Kubernetes Job: the training Job's pod,
    image and exit codes, named after --model and --output, never after a training Job."""
    spec = GenerateJobSpec(generate=generate_config.resolve(params),
                           cluster=resolve_cluster_settings(params))
    _submit(spec, generate_config.location_problems(spec.generate), replace, dry_run, fmt, params,
            "for this --model and --output")


def _submit(spec: JobSpec | GenerateJobSpec, problems: list[str], replace: bool, dry_run: bool,
            fmt: str, params: dict[str, Any], what: str) -> None:
    """Refuse what the operator's policy refuses, then print the Job or create it."""
    if problems:
        raise InvalidInputError("; ".join(problems))
    if dry_run:
        _print_manifests([k8s.render(spec, spec.cluster.namespace)], fmt)
        return
    _create(spec, replace, params, what)


def _create(spec: JobSpec | GenerateJobSpec, replace: bool, params: dict[str, Any],
            whose: str) -> None:
    job = k8s.submit(spec, replace=replace, connection=_connect(params))
    if job.created:
        click.echo(f"{'replaced' if job.replaced else 'created'} job {job.namespace}/{job.name}")
    else:
        click.echo(f"job {job.namespace}/{job.name} already exists {whose}: not created "
                   "(--replace replaces it once it has finished)")


@click.command()
@click.argument("subjects_file", type=click.Path(dir_okay=False))
@_set_option
@cluster_options
@connection_options
@click.option("--max-parallel", type=click.IntRange(min=1),
              help="Without --queue: run at most N Jobs of the batch at once; the command waits "
                   "and feeds new Jobs as others finish (rerun it to resume).")
@click.option("--poll-seconds", type=click.FloatRange(min=0), default=30, show_default=True,
              help="How often --max-parallel looks for finished Jobs.")
@click.option("--dry-run", is_flag=True, help="Print every Job instead of creating them.")
@_output_format
def batch(subjects_file: str, sets: tuple[str, ...], max_parallel: int | None,
          poll_seconds: float, dry_run: bool, fmt: str, **params: Any) -> None:
    """Submit one Job per row of SUBJECTS_FILE (.yaml, .csv or .jsonl).

    Every row is checked first; any bad row stops the command before anything is created.
    Subjects whose output holds a completed run, or whose Job is queued or running, are skipped.
    """
    the_batch = load_batch(subjects_file, _sets(sets))
    cluster = resolve_cluster_settings(params)
    # The rows were checked against the process's policy; the cluster settings may set their own.
    problems = [f"{config.subject_id}: {problem}" for config in the_batch.subjects
                for problem in policy_problems(config, cluster.policy())]
    if problems:
        raise BatchFileError(subjects_file, problems)
    if dry_run:
        _print_manifests(render_batch(the_batch, cluster), fmt)
        return
    outcome = submit_batch(the_batch, cluster, max_parallel=max_parallel, poll_seconds=poll_seconds,
                           connection=_connect(params), log=click.echo)
    click.echo(f"batch {the_batch.batch_id}: {len(outcome.created)} created, "
               f"{len(outcome.skipped_succeeded)} already succeeded, "
               f"{len(outcome.skipped_active)} already queued or running")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False),
              help="Subjects file of a batch: one row per subject, submitted or not.")
@_set_option
@click.option("--selector", "-l", help="Jobs with these labels, e.g. dreambooth-job/batch=night-42.")
@click.option("-o", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--watch", "-w", is_flag=True, help="Refresh until every Job has finished.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=10, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("-n", "--namespace", help="Namespace (default: the context's).")
@connection_options
def status(names: tuple[str, ...], batch_file: str | None, sets: tuple[str, ...],
           selector: str | None, fmt: str, watch: bool, interval: float, namespace: str | None,
           **params: Any) -> None:
    """Where Jobs stand: phase, retries, duration, loss, output and failure reason, by subject.

    Pass Job NAMES, a subjects file with --batch, or a label --selector.
    """
    if sum(map(bool, (names, batch_file, selector))) != 1:
        raise click.UsageError("give Job names, --batch FILE or --selector (exactly one)")
    the_batch = load_batch(batch_file, _sets(sets)) if batch_file else None
    conn = _connect(params)
    while True:
        statuses = _collect(conn, names, the_batch, selector, namespace)
        if watch and fmt == "table":
            click.clear()
        click.echo(_render_statuses(statuses, fmt))
        if not watch or all(s.phase in (Phase.SUCCEEDED, Phase.FAILED) for s in statuses):
            return
        time.sleep(interval)


@click.command()
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False), required=True,
              help="Subjects file of the batch.")
@_set_option
@click.option("--output", "output_uri", required=True,
              help="s3:// prefix or directory for report.json, index.html and images/.")
@click.option("--embed-images", is_flag=True, help="Inline the grids: one self-contained page.")
@click.option("-n", "--namespace", help="Namespace (default: the context's).")
@connection_options
def report(batch_file: str, sets: tuple[str, ...], output_uri: str, embed_images: bool,
           namespace: str | None, **params: Any) -> None:
    """Write a batch report: JSON summary and an HTML page of every subject's final sample grid,
    status and metrics, worst subjects first."""
    the_batch = load_batch(batch_file, _sets(sets))
    statuses = batch_status(the_batch, namespace, connection=_connect(params))
    written = write_report(statuses, output_uri, batch_id=the_batch.batch_id,
                           embed_images=embed_images)
    click.echo(_summary_line(statuses))
    click.echo(f"report: {output_uri.rstrip('/')}/index.html "
               f"({sum(1 for r in written['subjects'] if r['grid'])} sample grids)")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--batch", "batch_file", type=click.Path(dir_okay=False),
              help="Cancel every Job of this batch.")
@_set_option
@click.option("-n", "--namespace", help="Namespace (default: the context's).")
@connection_options
def cancel(names: tuple[str, ...], batch_file: str | None, sets: tuple[str, ...],
           namespace: str | None, **params: Any) -> None:
    """Delete Jobs and their pods. Outputs in S3 are left alone."""
    if bool(names) == bool(batch_file):
        raise click.UsageError("give Job names or --batch FILE (exactly one)")
    conn = _connect(params)
    if batch_file:
        the_batch = load_batch(batch_file, _sets(sets))
        selector = {BATCH_LABEL: label_value(the_batch.batch_id)}
        names = tuple(k8s.jobs_by_name(selector, namespace, connection=conn))
    for name in names:
        k8s.cancel(name, namespace, connection=conn)
        click.echo(f"deleted job {name}")


# ----------------------------------------------------------------------------------------------

def _collect(conn: k8s.Connection, names: tuple[str, ...], the_batch: Batch | None,
             selector: str | None, namespace: str | None) -> list[JobStatus]:
    if the_batch is not None:
        return batch_status(the_batch, namespace, connection=conn)
    if names:
        return [get_status(name, namespace, connection=conn) for name in names]
    labels = _parse_selector(selector or "")
    jobs = k8s.jobs_by_name(labels, namespace, connection=conn).values()
    ns = namespace or conn.namespace
    pods = conn.call(f"pods in {ns}", conn.core.list_namespaced_pod, ns,
                     label_selector=JOB_NAME_LABEL).items
    to_dict = conn.api_client.sanitize_for_serialization
    pods = [to_dict(p) for p in pods]
    statuses = [describe(to_dict(job), pods) for job in jobs]
    for item in statuses:
        attach_result(item)
    return sorted(statuses, key=lambda s: (s.batch_id or "", s.subject_id or s.name))


def _parse_selector(text: str) -> dict[str, str]:
    labels = {}
    for clause in filter(None, (c.strip() for c in text.split(","))):
        key, sep, value = clause.partition("=")
        if not sep or not key or key.endswith("!"):
            raise click.BadParameter(f"only key=value clauses are supported, got {clause!r}",
                                     param_hint="--selector")
        labels[key.strip()] = value.lstrip("=").strip()
    return labels


def _summary_line(statuses: list[JobStatus]) -> str:
    counts = ", ".join(f"{n} {phase}" for phase, n in summary(statuses).items())
    return f"{len(statuses)} subject(s): {counts or 'none'}"


def _render_statuses(statuses: list[JobStatus], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"summary": summary(statuses), "subjects": [s.to_dict() for s in statuses]},
                          indent=2)
    header = ("SUBJECT", "PHASE", "RETRIES", "DURATION", "LOSS", "WEIGHTS", "OUTPUT", "REASON")
    rows = [header] + [(
        s.subject_id or s.name, s.phase.value, str(s.retries), format_duration(s.duration_seconds) or "-",
        f"{s.final_loss:.4f}" if s.final_loss is not None else "-", s.weights or "-", s.output or "-",
        (s.failure_reason or s.result_error or "")[:120],
    ) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join([*(line.rstrip() for line in lines), _summary_line(statuses)])
