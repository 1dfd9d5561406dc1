"""The `labelgen` command. Each command loads the config, calls one library function, and says
where the result went. Errors a user can cause are printed without a traceback."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import shlex
import signal
import sys
from pathlib import Path

import click

from labelgen.config import load_recipe, read_by_layout, recipe_path, recipe_warnings
from labelgen.errors import ConfigError, LabelgenError

log = logging.getLogger("labelgen")

DATASETS = ("voc", "coco", "folder", "demo")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("distributed", "asyncio", "PIL", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _user_errors(fn):
    """Turn a LabelgenError into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelgenError as e:
            for line in str(e).splitlines():  # one line per wrong thing (a recipe can have several)
                click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except OSError as e:  # an input we did not wrap ourselves: still one line naming the file
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(2)

    return wrapper


def _recipe(dataset: str, recipe: str | None, data_root: str | None, overrides: tuple[str, ...]):
    overrides = (f"dataset.name={json.dumps(dataset)}", *overrides)
    if data_root:
        overrides = (*overrides, f"dataset.root={json.dumps(str(Path(data_root).resolve()))}")
    return load_recipe(Path(recipe) if recipe else recipe_path(dataset), overrides)


@click.group()
@click.version_option(package_name="labelgen", prog_name="labelgen")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """labelgen: dense pseudo-masks from image-level tags with WeakTr.

    \b
    Example:
      labelgen run full --dataset demo
      labelgen status --run-dir runs/demo
    """
    _setup_logging(verbose)


@main.command()
@click.argument("target")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Which data set layout.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder of the data set (not needed for demo).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder [default: runs/<dataset>].")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe TOML [default: the shipped one for --dataset].")
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one setting; repeatable."
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Use a running dask scheduler, e.g. tcp://host:8786, or tls://host:8786 with dask's TLS settings "
    "(DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._CLIENT__CERT, ..._CLIENT__KEY).",
)
@click.option(
    "--workers", type=int, help="Worker processes of the local cluster [default: one per core this process may use]."
)
@click.option(
    "--cluster",
    type=click.Choice(["local", "local-cuda"]),
    default="local",
    show_default=True,
    help="Local cluster kind when no --scheduler: CPU processes, or one worker per GPU (dask-cuda).",
)
@click.option("--force", multiple=True, metavar="STAGE", help="Recompute STAGE and what depends on it; repeatable.")
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (each stage, key, state) and the changed settings; run nothing."
)
@_user_errors
def run(target, dataset, data_root, run_dir, recipe, overrides, scheduler, workers, cluster, force, dry_run) -> None:
    """Bring TARGET (a stage name, or `full`) and everything upstream of it up to date.

    Finished stages and shards are skipped; a rerun after a crash does only what is missing.

    \b
    Examples:
      labelgen run full --dataset demo
      labelgen run pseudo_labels --dataset coco --data-root data/coco --set pseudo_labels.bg_threshold=0.42
    """
    from labelgen.pipeline.cluster import open_client, scheduler_security
    from labelgen.pipeline.runner import execute_run, prepare_run

    if scheduler:
        scheduler_security(scheduler)  # a tls:// address's certificate files: checked before any work
    resolved = _recipe(dataset, recipe, data_root, overrides)
    for warning in recipe_warnings(resolved):
        log.warning("%s", warning)
    run_path = Path(run_dir or Path("runs") / dataset).resolve()
    if dry_run:
        from labelgen.pipeline.runner import plan_run, stages_to_compute

        plan = plan_run(resolved, run_path, target)  # once: it fingerprints the data folder
        todo, forced = stages_to_compute(plan, tuple(force))
        _print_plan(resolved, run_path, target, plan, forced, _recipe(dataset, None, data_root, ()))
        _dry_run_checks(resolved, run_path, plan, todo)
        return
    prepared = prepare_run(resolved, run_path, target, tuple(force))  # every refusal before a cluster starts
    try:
        with open_client(scheduler, workers, cluster) as client:
            _quiet_exit_on_ctrl_c()
            artifacts = execute_run(prepared, client)
    except KeyboardInterrupt:
        prepared.release()
        _interrupted(run_path)
    for name, art in artifacts.items():
        click.echo(f"{name:14s} {art.path}")
    report = artifacts.get("evaluate")
    if report is not None:
        from labelgen.pipeline.dag import STAGES
        from labelgen.pipeline.stage import output_path

        evaluate = STAGES["evaluate"]
        click.echo(
            f"report: {output_path(evaluate, report, 'report_html')} (and {output_path(evaluate, report, 'report')})"
        )


def _print_plan(recipe, run_path: Path, target: str, plan: list, forced: set[str], shipped) -> None:
    """`run --dry-run`: every stage of the run with its key and what a run would do, then the
    settings that differ from the shipped recipe of the data set. Touches nothing."""
    from labelgen.pipeline.status import stage_status

    click.echo(f"plan of `labelgen run {target}` in {run_path}:")
    for p in plan:
        state = stage_status(p.artifact)
        does = {
            "done": "skip (done)",
            "damaged": f"skip ({state.detail})",
            "partial": f"resume ({state.detail})",
            "running": f"locked: another run is computing it ({state.detail})",
            "queued": f"locked: {state.detail}",
            "failed": f"rerun ({state.detail})",
        }
        action = "rerun (--force)" if p.stage.name in forced else does.get(state.state, "run")
        click.echo(f"  {p.stage.name:14s} {p.artifact.key}  {action}")
    changed = [
        f"  {section}.{key} = {value!r} (shipped: {shipped.to_dict()[section][key]!r})"
        for section, values in recipe.to_dict().items()
        for key, value in values.items()
        if shipped.to_dict()[section][key] != value
        and (section, key) != ("dataset", "root")
        and (section != "dataset" or read_by_layout(recipe["dataset"], key))
    ]
    click.echo("settings that differ from the shipped recipe:" if changed else "settings: the shipped recipe")
    for line in changed:
        click.echo(line)
    if recipe.dataset_defaults:  # set by the data set, not by a recipe: say so, with the values
        dataset = recipe["dataset"]
        values = ", ".join(f"dataset.{k} = {getattr(dataset, k)!r}" for k in recipe.dataset_defaults)
        click.echo(f"the {dataset.name} data set's own defaults (no recipe or --set gave them): {values}")


def _dry_run_checks(recipe, run_path: Path, plan: list, todo: list) -> None:
    """The checks a run makes before its cluster starts on the stages it would compute (data root,
    weights, settings against the class list where it is known), reported, not fatal to the plan;
    exit 2 if one fails, as the run would."""
    from labelgen.pipeline.runner import needs_classes, pre_start_problems, run_classes

    classes = run_classes(recipe, run_path, plan, todo)
    problems = pre_start_problems(recipe, run_path, todo, classes)
    if classes is None and not problems and needs_classes(todo):
        click.echo(
            f"note: the class list of this {recipe['dataset'].name} data set is not known before its index has run "
            "(COCO's categories are in its JSON; the demo set is generated by the index): the settings checked "
            "against it (train_decoder.clip_start) are checked by the run once the index has run",
            err=True,
        )
    for e in problems:
        click.echo(f"error: {e}", err=True)
    if problems:
        sys.exit(2)


def _interrupted(run_path: Path) -> None:
    """Ctrl-C in a run: one line saying what is finished and the command that resumes; exit 130."""
    from labelgen.pipeline.status import run_status

    states = {r.stage: r for r in run_status(run_path)}
    done = [s for s, r in states.items() if r.state == "done"]
    partial = [f"{s} ({r.detail.split()[0]} units)" for s, r in states.items() if r.state == "partial"]
    kept = f"done: {', '.join(done) or 'no stage'}" + (f"; partly done: {', '.join(partial)}" if partial else "")
    _interrupted_with(f"finished work is kept ({kept})")


def _interrupted_with(kept: str) -> None:
    """Ctrl-C: one line saying what is kept and the command that resumes; exit 130 (128 + SIGINT)."""
    command = " ".join(shlex.quote(a) for a in ["labelgen", *sys.argv[1:]])
    # Starts on a line of its own: a worker's progress bar may have left the cursor mid-line.
    click.echo(f"\ninterrupted; {kept}; resume with: {command}", err=True)
    sys.exit(130)


def _quiet_exit_on_ctrl_c() -> None:
    """From the end of this process on, ignore Ctrl-C: dask's exit handlers (registered when it was
    imported; this one, registered later, runs before them) close what is left of the cluster, and a
    Ctrl-C landing in one printed "Exception ignored in atexit callback ... KeyboardInterrupt"."""
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)


@main.command()
@click.option("--run-dir", type=click.Path(file_okay=False), help="A run folder [default: the last one run].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def status(run_dir: str | None, as_json: bool) -> None:
    """Show every stage of a run: done, damaged (a declared output gone), partial (k/n units), failed
    (with the error), stale or missing, with key and path.

    \b
    Example:
      labelgen status --run-dir runs/demo --json
    """
    from labelgen.pipeline.status import run_status
    from labelgen.store.runs import last_run_dir

    rows = run_status(Path(run_dir).resolve() if run_dir else last_run_dir())
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=1))
        return
    for r in rows:
        click.echo(f"{r.stage:14s} {r.state:8s} {r.key}  {r.detail}\n{'':14s} {r.path}")


@main.group()
def data() -> None:
    """Index and validate data sets."""


def _data_options(fn):
    fn = click.option(
        "--workers", type=int, help="Processes that check images [default: one per core this process may use]."
    )(fn)
    fn = click.option("--set", "overrides", multiple=True, metavar="dataset.KEY=VALUE", help="Dataset setting.")(fn)
    fn = click.option(
        "--split", "splits", multiple=True, help="Splits to index [default: the recipe's train and val]."
    )(fn)
    fn = click.option("--data-root", type=click.Path(file_okay=False), required=True)(fn)
    fn = click.option("--dataset", type=click.Choice(DATASETS), required=True)(fn)
    return fn


def _dataset_params(dataset, data_root, splits, overrides):
    recipe = _recipe(dataset, None, data_root, overrides)
    params = recipe["dataset"]
    if splits:
        from dataclasses import replace

        if len(splits) > 2:
            raise ConfigError(f"--split given {len(splits)} times; give the train split and at most one val split")
        params = replace(params, train_split=splits[0], val_split=splits[1] if len(splits) > 1 else "")
    return params


@data.command("index")
@_data_options
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Manifest JSON to write.")
@_user_errors
def data_index(dataset, data_root, splits, overrides, workers, out) -> None:
    """Write a manifest (one row per usable image) and a problems report beside it.

    \b
    Example:
      labelgen data index --dataset voc --data-root data/VOCdevkit --split train --out voc_train.json
    """
    from labelgen.data.index import MANIFEST, PROBLEMS
    from labelgen.pipeline.indexing import index_dataset

    params = _dataset_params(dataset, data_root, splits, overrides)
    out_path = Path(out).resolve()
    files = out_path.parent / f"{out_path.stem}_files"  # problems report and COCO GT shapes
    manifest = index_dataset(params, Path(data_root).resolve(), files, workers)
    (files / MANIFEST).replace(out_path)
    click.echo(f"{len(manifest.records)} images -> {out_path}; problems -> {files / PROBLEMS}")


@data.command("check")
@_data_options
@_user_errors
def data_check(dataset, data_root, splits, overrides, workers) -> None:
    """Validate a data set and list every problem with its file, one line each; exit 1 if any image is
    left out or any GT is unusable (exit 0 when there are only notes: conversions, EXIF orientation,
    rows of splits not indexed).

    \b
    Example:
      labelgen data check --dataset folder --data-root my_images
    """
    import tempfile

    from labelgen.data.index import PROBLEMS, NoUsableImages
    from labelgen.data.problems import describe, is_problem, summary
    from labelgen.pipeline.indexing import index_dataset

    params = _dataset_params(dataset, data_root, splits, overrides)
    index_log = logging.getLogger("labelgen.data.index")
    level = index_log.level
    index_log.setLevel(logging.ERROR)  # its per-kind summary: the list below says it all, line by line
    with tempfile.TemporaryDirectory() as tmp:
        try:
            usable = len(index_dataset(params, Path(data_root).resolve(), Path(tmp), workers).records)
        except NoUsableImages:  # nothing usable: still list why, from the problems report
            usable = 0
        finally:
            index_log.setLevel(level)
        problems = json.loads((Path(tmp) / PROBLEMS).read_text())
    for p in problems:
        click.echo(describe(p))
    click.echo(summary(usable, problems))
    sys.exit(1 if any(is_problem(p) for p in problems) else 0)


@main.command()
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="A run folder.")
@click.option(
    "--what",
    type=click.Choice(["pseudo_labels", "predictions"]),
    required=True,
    help="CRF pseudo-labels of the train split, or the Segmenter's predictions of every split.",
)
@click.option("--format", "fmt", type=click.Choice(["voc", "mmseg", "coco", "yolo", "yolo-seg"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option(
    "--image-format",
    type=click.Choice(["auto", "jpg", "png"]),
    default="auto",
    show_default=True,
    help="mmseg, yolo, yolo-seg: the one suffix of the images; auto = the format most images have "
    "(png lossless, jpg quality 95).",
)
@click.option("--scheduler", metavar="ADDRESS", help="Use a running dask scheduler.")
@click.option("--workers", type=int, help="Worker processes of the local cluster.")
@_user_errors
def export(run_dir, what, fmt, out, image_format, scheduler, workers) -> None:
    """Export masks for another segmenter: VOC palette PNGs, mmsegmentation layout, COCO JSON
    (a dataset file and a results file for COCO.loadRes/COCOeval, with the source's ids), or
    Ultralytics data sets: semantic masks (yolo) or instance polygons (yolo-seg).

    \b
    Example:
      labelgen export --run-dir runs/demo --what pseudo_labels --format coco --out exported/
    """
    from labelgen.formats.write import export_folder, write_export
    from labelgen.pipeline.cluster import open_client, scheduler_security

    if scheduler:
        scheduler_security(scheduler)  # a tls:// address's certificate files: checked before any work
    # another export into the folder, a wrong format and a missing output are refused before a cluster starts
    counts = None
    try:
        with (
            export_folder(Path(run_dir).resolve(), what, fmt, Path(out).resolve(), image_format) as (source, folder),
            open_client(scheduler, workers) as client,
        ):
            _quiet_exit_on_ctrl_c()
            counts = write_export(source, what, fmt, folder, client, image_format)
    except KeyboardInterrupt:
        if counts is None:  # else Ctrl-C came while the cluster closed: the export is whole
            _interrupted_with("finished shards are kept and not rewritten")
    click.echo(f"exported {counts} -> {Path(out).resolve()}")


@main.group()
def review() -> None:
    """Have people correct the masks that most need it, in Label Studio or CVAT, and retrain on them.

    \b
    Example:
      labelgen review push --run-dir runs/demo --k 20 --url http://127.0.0.1:8080 --token TOKEN
      labelgen review pull --run-dir runs/demo --url http://127.0.0.1:8080 --token TOKEN
      labelgen review import --run-dir runs/demo export.zip --format cvat-mask
      labelgen run full --dataset demo --run-dir runs/demo    # retrains on the corrections
    """


def _server_options(fn):
    fn = click.option("--project", help="Label Studio project title [default: 'labelgen <run folder name>'].")(fn)
    fn = click.option(
        "--token", envvar="LABEL_STUDIO_TOKEN", required=True, help="API token (or env LABEL_STUDIO_TOKEN)."
    )(fn)
    fn = click.option("--url", required=True, help="Label Studio server, e.g. http://127.0.0.1:8080.")(fn)
    run_dir = click.option("--run-dir", type=click.Path(file_okay=False, exists=True), required=True, help="A run.")
    return run_dir(fn)


@review.command("push")
@_server_options
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="How many images to send.")
@_user_errors
def review_push(run_dir, url, token, project, k) -> None:
    """Send the K train images with the lowest GT-free score (spread over classes; negatives the
    decoder painted on included) with their current masks as pre-annotations to Label Studio.

    \b
    Example:
      labelgen review push --run-dir runs/demo --k 20 --url http://127.0.0.1:8080 --token TOKEN
    """
    from labelgen.review.commands import push
    from labelgen.review.labelstudio import LabelStudio

    out = push(Path(run_dir).resolve(), k, LabelStudio(url, token), project)
    where = f"{url.rstrip('/')}/projects/{out['project']}"
    click.echo(f"sent {len(out['sent'])} images to project {out['project']} ({out['title']}): {where}")


@review.command("pull")
@_server_options
@_user_errors
def review_pull(run_dir, url, token, project) -> None:
    """Read the people's corrections from Label Studio into the run; `labelgen run` then retrains on them.

    \b
    Example:
      labelgen review pull --run-dir runs/demo --url http://127.0.0.1:8080 --token TOKEN
    """
    from labelgen.review.commands import pull
    from labelgen.review.labelstudio import LabelStudio

    out = pull(Path(run_dir).resolve(), LabelStudio(url, token), project)
    _said_pulled(out["set"], out["corrections"])


@review.command("import")
@click.option("--run-dir", type=click.Path(file_okay=False, exists=True), required=True, help="A run folder.")
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["labelstudio-json", "cvat-mask", "coco"]),
    required=True,
    help="Label Studio JSON export, CVAT 'Segmentation mask 1.1' (.zip or folder), or COCO 1.0 instances JSON.",
)
@_user_errors
def review_import(run_dir, path, fmt) -> None:
    """Read corrections from a file exported by your own Label Studio or CVAT server into the run.

    \b
    Example:
      labelgen review import --run-dir runs/demo task_export.zip --format cvat-mask
    """
    from labelgen.review.commands import import_files

    out = import_files(Path(run_dir).resolve(), Path(path).resolve(), fmt)
    _said_pulled(out["set"], out["corrections"])


def _said_pulled(folder: str | None, count: int) -> None:
    if folder is None:
        click.echo("no new corrections: nothing changed")
    else:
        click.echo(f"kept {count} corrected masks -> {folder}; `labelgen run` retrains and rescores on them")


if __name__ == "__main__":
    main()
