"""The ``kktrecon`` command line: parses options, calls the library, turns its errors into clean exits."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperOption

from kktrecon.errors import KKTReconError

app = typer.Typer(
    name="kktrecon",
    help="Reconstruct training data from trained neural networks (Haim et al., NeurIPS 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Markup off: paths and names the user supplied may contain rich markup ("[/]", "[bold]") and print as they are.
err = Console(stderr=True, markup=False)
out = Console(markup=False)


def _styled(label: str, style: str, text: str = "") -> Text:
    """``label`` in ``style``, then ``text`` verbatim (never parsed as markup)."""
    return Text.assemble((label, style), (" " + text) if text else "")


DataRoot = Annotated[
    Path | None,
    typer.Option("--data-root", help="Folder holding MNIST/raw or cifar-10-batches-py (default: $KKTRECON_DATA, "
                 "else the per-user cache)."),
]  # fmt: skip
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, …")]
Dtype = Annotated[str | None, typer.Option(help="float32 or float64.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing run in the output directory.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the output directory's last checkpoint.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a summary.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Library errors become a one-line message and exit code 1; Ctrl-C says how to resume.

    Every error kktrecon raises on purpose is a :class:`KKTReconError`; OSErrors (permissions, a
    full disk) are the user's to fix too. Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except KeyboardInterrupt:
        err.print(_styled("Interrupted.", "yellow", "Rerun the same command with --resume: each stage continues from "
                          "its last checkpoint (one that keeps none starts over)."))  # fmt: skip
        raise typer.Exit(130) from None
    except (KKTReconError, OSError) as exc:
        err.print(_styled("error:", "bold red", str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


# --- options that set config fields, and --set NAME=VALUE for every other field ------------------------


@dataclass(frozen=True)
class _Fields:
    """How a command's options map onto the fields of a config dataclass (every default is the dataclass's).

    Attributes:
        root: ``module:Class`` of the config, imported only when needed (``--help`` stays cheap).
        options: option parameter name -> dotted field name (``hidden`` -> ``model.hidden``).
        kinds: dotted fields holding one of several configs, picked by name -> ``module:registry`` whose
            entries have a ``config`` class (``model`` -> the architecture registry).
    """

    root: str
    options: dict[str, str]
    kinds: dict[str, str] = field(default_factory=dict)

    def load(self, path: str) -> Any:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    def kind_classes(self, name: str) -> dict[str, type]:
        return {key: entry.config for key, entry in self.load(self.kinds[name]).items()}


def _configure(fields: _Fields, values: dict[str, Any], *, fixed: tuple[str, ...] = ()) -> Any:
    """The default ``fields.root`` with ``values`` applied (:func:`kktrecon.configs.with_settings`)."""
    from kktrecon.configs import with_settings

    kinds = {name: fields.kind_classes(name) for name in fields.kinds}
    return with_settings(fields.load(fields.root)(), values, kinds=kinds, fixed=fixed)


def _settings(fields: _Fields, options: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """The dotted settings given on the command line: the options that were passed, then ``--set`` (last wins)."""
    values = {fields.options[k]: v for k, v in options.items() if k in fields.options and v is not None}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"Expected --set NAME=VALUE, e.g. model.padding=0. Got {item!r}.")
        values[name.strip()] = value
    return values


def _shown_default(fields: _Fields, name: str) -> str:
    """The default of dotted field ``name`` as ``--help`` shows it (per kind, for fields inside a kind)."""
    kind = next((k for k in fields.kinds if name.startswith(k + ".")), None)
    if kind is not None:
        leaf = name.removeprefix(kind + ".")
        per_kind = {k: cls() for k, cls in fields.kind_classes(kind).items()}
        return " · ".join(f"{k}: {_shown(getattr(c, leaf))}" for k, c in per_kind.items() if hasattr(c, leaf))
    value = fields.load(fields.root)()
    for part in name.split("."):
        value = getattr(value, part)
    if name in fields.kinds:
        return next(k for k, cls in fields.kind_classes(name).items() if type(value) is cls)
    return _shown(value)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "()"
    return "none" if value is None else str(value)


def _config_command(fields: _Fields) -> type[TyperCommand]:
    """A command class whose ``--help`` shows each option's default as read from the config dataclass."""

    class ConfigCommand(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.params:
                if param.name in fields.options and isinstance(param, TyperOption):
                    param.show_default = _shown_default(fields, fields.options[param.name])
            super().format_help(ctx, formatter)

    return ConfigCommand


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Set any field of the config: NAME=VALUE, repeatable; NAME may be dotted "
                 "(train: model.padding=0, data.seed=1; reconstruct: box=0.5); an unknown NAME lists the valid ones."),
]  # fmt: skip


@app.command()
def data(
    dataset: Annotated[str, typer.Option(help="mnist, cifar10 or toy.")] = "mnist",
    task: Annotated[
        str, typer.Option(help="odd-even / digits (mnist), vehicles-animals / classes (cifar10), spiral / grid (toy).")
    ] = "odd-even",
    n_per_class: Annotated[int, typer.Option(help="Training images per class (first in dataset order).")] = 250,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 500,
    data_root: DataRoot = None,
    as_json: AsJson = False,
) -> None:
    """Summarise the training set a victim would be trained on."""
    from kktrecon.data import DataConfig, load_dataset

    with _errors():
        config = DataConfig(dataset=dataset, task=task, n_per_class=n_per_class, test_per_class=test_per_class)
        summary = load_dataset(config, data_root=data_root).summary()
    if as_json:
        _print_json(summary)
        return
    for key, value in summary.items():
        if key in ("source_indices", "test_source_indices"):
            value = f"{value[:8]}… ({len(value)} indices)" if len(value) > 8 else value
        out.print(_styled(f"{key}:", "bold", str(value)), highlight=False)


@app.command()
def download(
    dataset: Annotated[str, typer.Option(help="mnist or cifar10.")] = "mnist",
    data_root: DataRoot = None,
) -> None:
    """Fetch a dataset's official archives (needs network), verified by SHA-256 before use."""
    from kktrecon.data import download as fetch
    from kktrecon.data import resolve_data_root

    with _errors():
        folder = fetch(dataset, resolve_data_root(data_root))
    out.print(f"{dataset}: {folder}", highlight=False)


_TRAIN = _Fields(
    root="kktrecon.training:TrainConfig",
    options={
        **{k: f"data.{k}" for k in ("dataset", "task", "n_per_class", "test_per_class")},
        **{k: f"model.{k}" for k in ("hidden", "channels", "kernel_size", "stride", "pool", "bias", "init_scale")},
        **{k: k for k in ("model", "weight_decay", "lr", "steps", "loss_threshold", "schedule", "seed", "dtype")},
        **{k: k for k in ("checkpoint_every", "init", "optimizer", "momentum", "batch_size")},
    },
    kinds={"model": "kktrecon.models:ARCHITECTURES"},
)


@app.command(cls=_config_command(_TRAIN))
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    dataset: Annotated[str | None, typer.Option(help="mnist, cifar10 or toy.")] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="odd-even, digits (10 classes), digit-value (regression) for mnist; vehicles-animals, "
            "classes for cifar10; grid, spiral for toy. The task decides the objective."
        ),
    ] = None,
    n_per_class: Annotated[int | None, typer.Option(help="Training images per class.")] = None,
    test_per_class: Annotated[int | None, typer.Option(help="Test images per class.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Architecture: mlp (the paper's) or cnn; its fields take its defaults.")
    ] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths, comma-separated (cnn: linear layers after the convs).")
    ] = None,
    channels: Annotated[str | None, typer.Option(help="cnn: convolution channels, comma-separated.")] = None,
    kernel_size: Annotated[int | None, typer.Option(help="cnn: convolution kernel size.")] = None,
    stride: Annotated[int | None, typer.Option(help="cnn: convolution stride.")] = None,
    pool: Annotated[
        str | None, typer.Option(help="cnn: none, max or avg pooling after each convolution (--set model.pool_size).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 weight decay of gradient descent (0: the paper).")
    ] = None,
    bias: Annotated[str | None, typer.Option(help="Bias policy: none, first (reference) or all.")] = None,
    init_scale: Annotated[float | None, typer.Option(help="First-layer init scale.")] = None,
    lr: Annotated[float | None, typer.Option(help="Gradient-descent step size.")] = None,
    steps: Annotated[int | None, typer.Option(help="Full-batch steps.")] = None,
    loss_threshold: Annotated[float | None, typer.Option(help="Stop once the loss is below this.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant (reference) or loss-scaled.")] = None,
    seed: Annotated[int | None, typer.Option(help="Initialisation seed.")] = None,
    dtype: Dtype = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints (0: never).")] = None,
    init: Annotated[
        str | None, typer.Option(help="model (the architecture's own: the reference) or pytorch (nn.Linear's default).")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd (reference) or adam.")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (default: the full batch).")] = None,
    settings: SetOption = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    force: Force = False,
    resume: Resume = False,
) -> None:
    """Train a victim on the task's loss: full-batch GD (the reference recipe), or as users train (--init pytorch,
    --batch-size, --momentum, --optimizer adam, --weight-decay, --loss-threshold). θ₀ is kept as initial.safetensors."""
    given = dict(locals())  # the options as passed; None: not given, the dataclass's default holds
    from kktrecon.training import DATA_DECIDED
    from kktrecon.training import train as train_victim

    with _errors():
        values = _settings(_TRAIN, given, settings)
        config = _configure(_TRAIN, values, fixed=tuple(f"model.{name}" for name in DATA_DECIDED))
        result = train_victim(config, out=out_dir, data_root=data_root, device=device, force=force, resume=resume)
    m = result.metrics
    test = (
        f"test accuracy {m['test_accuracy']:.4f}"
        if m["test_accuracy"] is not None
        else (f"test error {m['test_error']:.4g}" if m.get("test_error") is not None else "no test set")
    )
    out.print(
        f"trained {m['steps']} steps in {m['time_s']:.1f}s: loss {m['train_loss']:.3g}, train error "
        f"{m['train_error']:.4g}, {test}, min margin {m['min_margin']:.3g} → {out_dir}",
        highlight=False,
    )


@app.command()
def diagnose(
    run_dir: Annotated[Path, typer.Argument(help="Victim run directory.")],
    data_root: DataRoot = None,
    device: Device = "cpu",
    as_json: AsJson = False,
) -> None:
    """How close a victim is to a KKT point: fit its multipliers and report ‖θ − Σλᵢ∇θgᵢ‖/‖θ‖.

    gᵢ is the objective's margin of training sample i (binary: yᵢΦ(xᵢ); multiclass: Φ_y − max_{k≠y} Φ_k;
    λ ≥ 0 by NNLS) or Φ(xᵢ) itself (regression, λ free in sign). Victims trained with weight decay
    are judged by the same condition.
    """
    from kktrecon.victims import diagnose as run_diagnosis

    with _errors():
        d = run_diagnosis(run_dir, data_root=data_root, device=device)
    if as_json:
        _print_json(d.to_dict())
        return
    wd = d.extra.get("weight_decay")
    out.print(_styled("objective:", "bold", str(d.extra.get("objective")) + (f", weight decay {wd:g}" if wd else "")))
    out.print(_styled("relative residual:", "bold", f"{d.relative_residual:.4f}   (0 = exact KKT point)"))
    for name, value in d.residual_per_layer.items():
        out.print(f"  {name}: {value:.4f}", highlight=False)
    out.print(_styled("non-zero λ:", "bold", f"{d.n_nonzero} of {d.n}"))
    norm = sorted(d.normalized_margins)
    spread = f"min {norm[0]:.3f}, median {norm[len(norm) // 2]:.3f}, max {norm[-1]:.3f}"
    out.print(_styled("normalised margins (÷ min):", "bold", spread))
    if (room := d.extra.get("capacity")) is not None:
        counts = f"p = {room['parameters']:,}, d·n = {room['dn']:,}, p/dn = {room['ratio']:.3g}"
        out.print(_styled("capacity:", "bold", f"{counts}   ({room['reading']})"))


# The attack's settings that have an option of their own (every other one is reached by --set).
_ATTACK_OPTIONS = (
    "iterations objective candidates init_scale lr lambda_lr lambda_min alpha momentum kkt_weight prior_weight "
    "lambda_weight seed checkpoint_every dtype"
)
_RECONSTRUCT = _Fields(root="kktrecon.attack:ReconstructionConfig", options={k: k for k in _ATTACK_OPTIONS.split()})


@app.command(cls=_config_command(_RECONSTRUCT))
def reconstruct(
    run_dir: Annotated[Path, typer.Argument(help="Victim run directory (model.safetensors + model.json).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Reconstruction directory to create.")],
    iterations: Annotated[int | None, typer.Option(help="Optimisation steps.")] = None,
    objective: Annotated[
        str | None,
        typer.Option(help="binary, multiclass, multiclass-full or regression (none: the victim's objective)."),
    ] = None,
    candidates: Annotated[int | None, typer.Option(help="Number of candidates m (none: 2n).")] = None,
    init_scale: Annotated[float | None, typer.Option(help="Candidates start at N(0,1)·init_scale.")] = None,
    lr: Annotated[float | None, typer.Option(help="Step size for the candidates.")] = None,
    lambda_lr: Annotated[float | None, typer.Option(help="Step size for λ.")] = None,
    lambda_min: Annotated[float | None, typer.Option(help="λ hinge threshold.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Modified-ReLU sigmoid slope.")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum of both optimisers.")] = None,
    kkt_weight: Annotated[float | None, typer.Option(help="Weight of the stationarity term.")] = None,
    prior_weight: Annotated[float | None, typer.Option(help="Weight of the [-1,1] box prior (0: off).")] = None,
    lambda_weight: Annotated[float | None, typer.Option(help="Weight of the λ hinge.")] = None,
    seed: Annotated[int | None, typer.Option(help="Initialisation seed.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Iterations between checkpoints (0: never).")] = None,
    dtype: Dtype = None,
    attack: Annotated[
        str,
        typer.Option(
            help="Attack family: kkt (the weights alone); unmix (a dense first layer) and delta (a dense layer "
            "behind convolutions) need the run's initial weights, simulate also its recipe; other families' "
            "settings by --set."
        ),
    ] = "kkt",
    settings: SetOption = None,
    device: Device = "auto",
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Run a reconstruction attack on a victim's weights (it never reads training images): the KKT attack, or
    another registered family (--attack unmix reads the initial weights a run keeps)."""
    given = dict(locals())  # the options as passed; None: not given, the dataclass's default holds
    from kktrecon.attack import reconstruct as run_kkt

    with _errors():
        if attack != "kkt":
            _reconstruct_family(attack, run_dir, out_dir, given, settings, device=device, resume=resume, force=force)
            return
        config = _configure(_RECONSTRUCT, _settings(_RECONSTRUCT, given, settings))
        result = run_kkt(run_dir, config, out=out_dir, device=device, resume=resume, force=force)
    last = result.history[-1] if result.history else {}
    out.print(
        f"{result.x.shape[0]} candidates after {config.iterations} iterations in {result.seconds:.1f}s "
        f"(kkt {last.get('kkt', float('nan')):.4g}) → {out_dir}",
        highlight=False,
    )


def _reconstruct_family(
    name: str, run_dir: Path, out_dir: Path, given: dict[str, Any], items: list[str] | None, **options: Any
) -> None:
    """Another attack family on a run directory: its config from --set (and --iterations / --seed where it has them)."""
    import dataclasses as dc

    from kktrecon.attack import get_attack, run_attack
    from kktrecon.configs import with_settings

    family = get_attack(name)
    fields = {f.name for f in dc.fields(family.config_type)}
    values = {k: given[k] for k in ("iterations", "seed") if given.get(k) is not None and k in fields}
    values.update(_settings(_Fields(root="", options={}), {}, items))
    config = with_settings(family.config_type(), values)
    candidates = run_attack(name, run_dir, config, out=out_dir, progress=True, **options)
    source = candidates.sources[0]
    extra = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in source.items() if k != "attack"
    )
    out.print(f"{len(candidates)} candidates from the {name!r} attack ({extra}) → {out_dir}", highlight=False)


@app.command()
def evaluate(
    rec_dirs: Annotated[list[Path], typer.Argument(help="Reconstruction directories of one victim (pooled).")],
    data_root: DataRoot = None,
    best_buddies: Annotated[bool, typer.Option(help="A candidate may serve only its nearest training image.")] = False,
    threshold: Annotated[float, typer.Option(help="SSIM above which an image counts as reconstructed.")] = 0.4,
    toy_radius: Annotated[float, typer.Option(help="2-D toy: distance within which a point is found.")] = 0.05,
    margin_tol: Annotated[float, typer.Option(help="2-D toy: normalised margin ≤ 1 + tol is 'on the margin'.")] = 0.1,
    held_out: Annotated[
        int | None,
        typer.Option(
            help="Held-out test images in the pool that decides 'recovered' (default: n, at least 200; 0: none)."
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write (default: the first dir).")] = None,
    device: Device = "cpu",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier evaluation in the output directory.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Score candidates against the training set: recovered (nearer than any held-out image), SSIMs, figures.

    A training image counts as recovered when some candidate is nearer to it than to any other
    training or held-out image and matches it with aligned SSIM > threshold; every count is printed
    beside what look-alikes (held-out images, other training images) reach.
    """
    from kktrecon.pipelines import evaluate as run_evaluation

    with _errors():
        result = run_evaluation(
            rec_dirs, data_root=data_root, best_buddies=best_buddies, threshold=threshold, toy_radius=toy_radius,
            margin_tol=margin_tol, held_out=held_out, device=device, out_dir=out_dir, force=force,
        )  # fmt: skip
    if as_json:
        _print_json(result.metrics)
        return
    from kktrecon.reporting import headline

    out.print("\n".join(headline(result.metrics)), highlight=False)
    out.print(f"wrote {', '.join(sorted(p.name for p in result.files.values()))} → {result.out_dir}", highlight=False)


@app.command()
def report(
    rec_dir: Annotated[Path, typer.Argument(help="An evaluated reconstruction directory.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Where to write (default REC_DIR/report.html).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing report.")] = False,
) -> None:
    """Write one self-contained report.html (figures embedded) for an evaluated reconstruction.

    It leads with the recovered count and every baseline it is read against. What the SSIM threshold
    tolerates (measured on the training images themselves): blur σ ≤ 1 px and pixel noise σ ≤ 0.02
    still count; on MNIST, noise σ ≥ 0.1 does not (a noisy copy can be a leak this count misses).
    """
    from kktrecon.reporting import report as write_report

    with _errors():
        path = write_report(rec_dir, out=out_file, force=force)
    out.print(f"report: {path}", highlight=False)


def _duration(text: str | None) -> float | None:
    """'20m', '1.5h', '900s' or '900' → seconds."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise typer.BadParameter(f"Expected a duration like 20m, 1.5h or 900s. Got {text!r}.") from None
    if not seconds > 0:
        raise typer.BadParameter(f"Expected a positive duration. Got {text!r}.")
    return seconds


def _space(items: list[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The named search space (``reference`` unless an item names one) and NAME=LOW:HIGH[:log] overrides."""
    from kktrecon.sweeps import SPACES, Parameter

    base, space = SPACES["reference"], {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            base = SPACES.get_entry(name)
            continue
        parts = spec.split(":")
        try:
            space[name] = Parameter(name, float(parts[0]), float(parts[1]), log=parts[2:] == ["log"])
        except (IndexError, ValueError):
            raise typer.BadParameter(
                f"Expected a space's name ({', '.join(SPACES)}) or NAME=LOW:HIGH[:log], e.g. lr=1e-4:0.1:log. "
                f"Got {item!r}."
            ) from None
    return base, space


def _fixed(items: list[str]) -> dict[str, Any]:
    """NAME=VALUE settings of the attack shared by every trial."""
    fixed: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"Expected NAME=VALUE, e.g. lambda_min=0.3. Got {item!r}.")
        fixed[name] = json.loads(value) if value[:1] in "-0123456789[{tfn" else value
    return fixed


@app.command()
def sweep(
    run_dir: Annotated[Path, typer.Argument(help="Victim run directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Sweep directory (study.db, trials/, pool/).")],
    trials: Annotated[int, typer.Option(help="Total number of trials (the released winners first).")] = 8,
    iterations: Annotated[int, typer.Option(help="Attack iterations per trial.")] = 750,
    extend: Annotated[
        int, typer.Option(help="Iterations added to the best trials once all are done (0: none).")
    ] = 6000,
    extend_top: Annotated[int, typer.Option(help="How many of the best trials are extended.")] = 1,
    warm_start: Annotated[
        bool, typer.Option(help="Start with the released winners (for the victim's data set) as the first trials.")
    ] = True,
    batch: Annotated[int, typer.Option(help="Trials that advance together as one program (K).")] = 8,
    sampler: Annotated[str, typer.Option(help="random (the reference's) or tpe.")] = "random",
    objective: Annotated[
        str, typer.Option(help="kkt: oracle-free (default); oracle: recovered training images, research only.")
    ] = "kkt",
    candidates: Annotated[int | None, typer.Option(help="Candidates per trial (default 2n).")] = None,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "--space",
            help="A search space by name (reference, the default; cnn: + the TV weight) or a swept range "
            "NAME=LOW:HIGH[:log] (repeatable).",
        ),
    ] = None,
    fix: Annotated[
        list[str] | None, typer.Option("--fix", help="Fix an attack setting for all trials: NAME=VALUE (repeatable).")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="Wall-time budget, e.g. 20m: no new batch past it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of the trials' candidates.")] = 0,
    data_root: DataRoot = None,
    backend: Annotated[str, typer.Option(help="local or ray (pip install 'kktrecon[cluster]').")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray instance).")] = None,
    device: Device = "auto",
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Sweep the attack's hyperparameters on a victim; score trials without (or, for research, with) the training set.

    Short trials explore (the released winners first), then the best are extended: by default
    8 × 750 + 6,000 = 12,000 trial-iterations, the budget of three 4,000-iteration runs. Each trial
    is an ordinary reconstruction directory under OUT/trials/; the best trials are pooled into
    OUT/pool (evaluate it with `kktrecon evaluate OUT`). A killed sweep continues with --resume.
    """
    from kktrecon.attack import ReconstructionConfig
    from kktrecon.evaluation import oracle_score
    from kktrecon.sweeps import SweepConfig
    from kktrecon.sweeps import sweep as run_sweep

    with _errors():
        (base, overrides), fixed = _space(space or []), _fixed(fix or [])
        swept = tuple(overrides.pop(p.name, p) for p in base) + tuple(overrides.values())
        swept = tuple(p for p in swept if p.name not in fixed)  # a fixed setting is not swept
        attack = ReconstructionConfig(candidates=candidates, **fixed)
        config = SweepConfig(
            trials=trials, iterations=iterations, batch=batch, sampler=sampler, objective=objective, seed=seed,
            space=swept, attack=attack, extend=extend, extend_top=extend_top, warm_start=warm_start,
        )  # fmt: skip
        oracle = oracle_score(data_root) if objective == "oracle" else None
        result = run_sweep(run_dir, out_dir, config, oracle=oracle, backend=backend, address=address,
                           budget_s=_duration(budget), device=device, resume=resume, force=force)  # fmt: skip
    _print_sweep(result, objective)


def _print_sweep(result: Any, objective: str) -> None:
    from rich.table import Table

    label = (
        "oracle: n_recovered (research only)" if objective == "oracle" else "kkt: −stationarity residual (oracle-free)"
    )
    table = Table(title=f"{len(result.rows)} trials in {result.seconds / 60:.1f} min · objective: {label}")
    for column in ("trial", "state", "iterations", "value", "kkt score", "init_scale", "lr", "lambda_min", "alpha"):
        table.add_column(column, justify="right")
    for r in sorted(result.rows, key=lambda r: -(r["value"] or -1.0)):
        p = r["params"]
        iterations = f"{r['iterations']}{' (extended)' if r['extended'] else ''}" if r.get("iterations") else "—"
        table.add_row(
            str(r["number"]), r["state"], iterations, _num(r["value"]), _num(r["kkt_score"]),
            *(_num(p.get(k)) for k in ("init_scale", "lr", "lambda_min", "alpha")),
        )  # fmt: skip
    out.print(table)
    if not any(r["state"] == "COMPLETE" for r in result.rows):  # then the sweep wrote no pool
        trials = result.out / "trials"
        out.print(f"no trial finished, so nothing was pooled: each trial's reason is in {trials}/NNNN/error.txt")
        return
    out.print(f"pooled candidates: {result.out / 'pool'} (evaluate with `kktrecon evaluate {result.out}`)")


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.5,0.5"`` -> (0.5, 0.5); a value that is no number is one line."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"Expected {option} as comma-separated numbers, e.g. 0.1307,0.3081. Got {text!r}."
        ) from None


@app.command()
def audit(
    weights: Annotated[Path, typer.Option(help="The model's weights: a .safetensors file or a PyTorch state dict.")],
    arch: Annotated[
        str,
        typer.Option(
            help="JSON description of the model's nn.Sequential (see the README), or your own factory "
            "package.module:make_model (called without arguments, importable from here)."
        ),
    ],
    train_dir: Annotated[Path, typer.Option("--train", help="Training images: DIR/<class>/<image>.png, or an .npz.")],
    held_out: Annotated[
        Path | None, typer.Option(help="Held-out images of the same task, same form (strongly advised).")
    ] = None,
    init_weights: Annotated[
        Path | None,
        typer.Option(
            help="The model's weights before training (same forms as --weights): enables the owner's "
            "attacks (first-layer unmixing; with --recipe, training simulation) and membership evidence."
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="JSON of how it was trained: optimizer, lr, momentum, weight_decay, batch_size, steps."),
    ] = None,
    normalize: Annotated[
        str | None,
        typer.Option(
            help="The torchvision Normalize after ToTensor, per channel: MEAN,…,STD,… (e.g. 0.1307,0.3081); "
            "replaces --mean."
        ),
    ] = None,
    budget: Annotated[str, typer.Option(help="Wall-time budget of the attack, e.g. 20m.")] = "15m",
    trials: Annotated[int | None, typer.Option(help="At most this many trials (default: until the budget).")] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Attack iterations per trial (default: ≤ 2,000, fitted to the budget).")
    ] = None,
    mean: Annotated[
        str, typer.Option(help="train: subtract the training images' mean (the reference); none.")
    ] = "train",
    rank: Annotated[
        int | None, typer.Option(help="The first layer's rank for the unmixing (default: read from its change).")
    ] = None,
    simulate_iterations: Annotated[
        int, typer.Option(help="Iterations of the simulation family (θ₀ + SGD recipe, first layer not dense).")
    ] = 300,
    out_dir: Annotated[Path, typer.Option("--out", help="Audit directory (audit.html inside).")] = Path(
        "kktrecon-audit"
    ),
    device: Device = "auto",
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Audit your own model: which of its training images can be read back from its weights?

    Checks every input first (nothing is written on bad input), attacks the weights within the budget
    without looking at the images (an oracle-free sweep) and, given --init-weights, unmixes the first
    layer's change, then compares every family's candidates with the training and held-out images and
    writes a self-contained audit.html (per family, and membership evidence when θ₀ is given).
    """
    from kktrecon.auditing import audit as run_audit
    from kktrecon.reporting.html import WEAK_POOL, chance_note, family_line, weak_pool_note

    with _errors():
        if held_out is None:
            err.print(_styled("warning:", "yellow", "no --held-out images: look-alikes cannot be told from leaks."))
        result = run_audit(
            weights=weights, arch=arch, train=train_dir, held_out=held_out, init_weights=init_weights, recipe=recipe,
            out=out_dir, budget_s=_duration(budget), mean=mean, trials=trials, iterations=iterations,
            normalize=_floats(normalize, "--normalize"), rank=rank, simulate_iterations=simulate_iterations,
            device=device, resume=resume, force=force,
        )  # fmt: skip
    if held_out is not None and result.metrics.get("held_out", {}).get("count", WEAK_POOL) < WEAK_POOL:
        err.print(_styled("warning:", "yellow", weak_pool_note(result.metrics)), highlight=False)
    out.rule("audit")
    out.print(_styled(f"{len(result.recovered)} of {result.metrics['n_train']} training images recovered", "bold"))
    for name in result.recovered:
        out.print(f"  {name}", highlight=False)
    control = result.metrics.get("control")
    if control:
        out.print(
            f"read against: {control['count']} held-out images as candidates ({control['placement']}) recover "
            f"{control['n_recovered']} (chance at this many candidates)",
            highlight=False,
        )
    if (chance := chance_note(result.metrics)) is not None:
        err.print(_styled("warning:", "yellow", chance), highlight=False)
    for row in result.metrics.get("families", []):
        out.print(f"  {row['family']}: {family_line(row)}", highlight=False)
    member = result.metrics.get("membership")
    if member:
        at = member.get("tpr_at_fpr_0.01")
        out.print(
            f"membership: AUC {member['auc']:.3f}, TPR {_num(at)} at 1 % FPR, {member['tpr_at_zero_fpr']:.3f} "
            f"above every held-out image (FPR < {member['lowest_resolvable_fpr']:.2g})",
            highlight=False,
        )
    out.print(f"report: {result.report.resolve()} · {result.seconds / 60:.1f} min", highlight=False)
    if init_weights is None:  # said after the audit: a refused input stays one line
        err.print(_styled("note:", "cyan", "no --init-weights: only the KKT attack ran. With the initial weights "
                          "the first layer's change is an exact mixture of the training images (SGD), which the "
                          "unmixing reads and which gives membership evidence."))  # fmt: skip


@app.command()
def experiment(
    name: Annotated[str | None, typer.Argument(help="Experiment name (see --list).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Experiment directory.")] = None,
    scale: Annotated[
        str, typer.Option(help="cpu (this machine, ≤ 45 min) or paper (the paper's setting; a GPU).")
    ] = "cpu",
    list_all: Annotated[
        bool, typer.Option("--list", help="List the experiments and their time on this machine.")
    ] = False,
    data_root: DataRoot = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Another draw of the experiment: added to every seed.")] = 0,
    cells: Annotated[
        str | None, typer.Option(help="Run only these cells, comma-separated (their table and figures alone).")
    ] = None,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Run one of the paper's experiments end to end: victims, attacks, verdicts, a table and the figures."""
    from kktrecon.experiments import EXPERIMENTS
    from kktrecon.experiments import experiment as run_experiment

    if list_all or name is None:
        from rich.table import Table

        factor = _machine_factor()
        table = Table(title="kktrecon experiments (estimated time at CPU scale on this machine)")
        for column in ("name", "what", "cells", "CPU minutes"):
            table.add_column(column)
        for exp in EXPERIMENTS.values():
            table.add_row(exp.name, exp.title, str(len(exp.cpu)), f"~{exp.cpu_minutes * factor:.0f}")
        out.print(table)
        return
    with _errors():
        if out_dir is None:
            raise typer.BadParameter("Expected --out DIR for the experiment's results.")
        chosen = [c for c in cells.split(",") if c] if cells else None
        result = run_experiment(name, out_dir, scale=scale, data_root=data_root, device=device, seed=seed,
                                resume=resume, force=force, cells=chosen)  # fmt: skip
    out.print((result.out / "results.md").read_text(encoding="utf-8"), highlight=False)
    out.print(f"{len(result.files)} files in {result.out} · {result.seconds / 60:.1f} min", highlight=False)


def _machine_factor() -> float:
    """This machine's attack speed relative to the one the catalogue's times were measured on.

    Those were measured one thread per experiment, two at a time: ≈ 11 ms per trial-iteration of
    the probe; the same machine unloaded with both threads probes ≈ 7.5 ms (factor ≈ 0.7).
    """
    from kktrecon.demo import probe_trial_iteration_ms

    return max(0.25, probe_trial_iteration_ms() / 11.0)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Demo directory.")] = Path("kktrecon-demo"),
    toy: Annotated[bool, typer.Option("--toy", help="The paper's 2-D toy instead of MNIST.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the victim and of the attack.")] = 0,
    resume: Resume = False,
    force: Force = False,
    fail_under: Annotated[
        int | None,
        typer.Option(help="Exit with status 3 if fewer training images are recovered (toy: points found); for CI."),
    ] = None,
) -> None:
    """Train a victim on embedded MNIST digits, reconstruct them from its weights, and report (offline)."""
    from kktrecon.demo import demo as run_demo

    with _errors():
        result = run_demo(out_dir, toy=toy, seed=seed, resume=resume, force=force, console=out)
    out.rule("result")
    out.print(Text(result.headline, style="bold green"), highlight=False)
    times = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    out.print(f"time: {times}; total {result.total_s / 60:.1f} min", highlight=False)
    out.print(f"report: {result.report.resolve()}", highlight=False)
    count = result.metrics["n_found" if toy else "n_recovered"]
    if fail_under is not None and count < fail_under:
        err.print(_styled("fail:", "bold red", f"{count} < --fail-under {fail_under}"))
        raise typer.Exit(3)


def main() -> None:
    app()
