"""One self-contained HTML page per evaluated reconstruction: headline, figures, recipe, table.

:func:`report` gathers ``metrics.json``/``per_sample.csv`` (written by :func:`kktrecon.evaluate`),
the victim's ``model.json``, the reconstruction's ``reconstruction.json`` and the figures into one
``report.html`` that opens offline: images are embedded as base64 data URIs and the page has no
scripts and no external style sheets. All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import warnings
from pathlib import Path
from typing import Any

from kktrecon.errors import ConfigError, RunDirectoryExistsError, RunFileNotFoundError
from kktrecon.files import (
    METRICS_FILE,
    PER_SAMPLE_FILE,
    RECONSTRUCTION_FILE,
    REPORT_FILE,
    VICTIM_FILE,
    atomic_write_text,
    read_json,
)
from kktrecon.reporting.figures import (
    FIG_ATTACKER,
    FIG_PAIRS,
    FIG_SCATTER,
    FIG_TOY,
    FIGURES,
    figure_png,
    plot_loss_history,
)

__all__ = ["RISK", "TOLERANCE", "chance_note", "family_line", "headline", "report", "write_audit_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { font-size: 1.0rem; }
.headline { font-size: 1.6rem; font-weight: 600; margin: 0.8rem 0 0.2rem; }
.sub { color: #444; margin-top: 0; }
.note { background: #fff6d6; border-left: 4px solid #e0b400; padding: 0.4rem 0.8rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
.wide { overflow-x: auto; max-width: 100%; }
.wide th, .wide td { overflow-wrap: normal; white-space: nowrap; }
.wide th:first-child, .wide td:first-child { position: sticky; left: 0; background: #fff; }
.wide th:first-child { background: #f4f4f4; }
.wide tr.ok td:first-child { background: #eef8ee; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td { background: #eef8ee; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


#: What the SSIM threshold tolerates, measured by benchmarks/verdict_controls.py (n = 20 per data set,
#: 200 held-out images): the candidates are the training images themselves, degraded.
TOLERANCE = (
    "How much degradation a recovered image may show (measured with the training images themselves as "
    "candidates, n = 20, 200 held-out images; MNIST / CIFAR-10): Gaussian blur σ = 1 px still counts for 20/20 "
    "and 20/20, σ = 2 px for 15/20 and 19/20, σ = 3 px for 0/20 and 12/20; pixel noise σ = 0.02 for 20/20 and "
    "20/20, σ = 0.05 for 15/20 and 20/20, σ = 0.1 for 1/20 and 18/20, σ ≥ 0.2 for at most 2/20. The 3×3-window "
    "SSIM is harsh on noise over flat backgrounds: a noisy copy of a training image is still a leak this count "
    "can miss, so look at the grid too. Held-out images given as candidates are recovered for 0/20 on both."
)


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, float) else "?"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; long lists are summarised."""
    if isinstance(obj, dict):
        items: list[tuple[str, Any]] = []
        for key, value in obj.items():
            items += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return items
    if isinstance(obj, list) and len(obj) > 12:
        return [(prefix, f"[list of {len(obj)} entries]")]
    if isinstance(obj, list):
        return [(prefix, ", ".join(_fmt(v) if not isinstance(v, dict | list) else str(v) for v in obj))]
    return [(prefix, _fmt(obj))]


def _kv_table(obj: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    rows = [(k, v) for k, v in _flatten({k: v for k, v in obj.items() if k not in skip})]
    if not rows:
        return "<p>(empty)</p>"
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _per_sample_table(rows: list[dict[str, str]], threshold: float, key: str) -> str:
    if not rows:
        return "<p>(no training samples)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    flag = key in ("found", "recovered")  # a 0/1 column, else a score against the threshold
    for row in rows:
        ok = row.get(key) == "1" if flag else _is_number(row.get(key, "")) and float(row[key]) > threshold
        cells = []
        for c in columns:
            text = row[c]
            if _is_number(text) and c not in ("index", "source_index", "label", "candidate", "candidate_run"):
                cells.append(f'<td class="num">{_e(_fmt(float(text)))}</td>')
            elif _is_number(text):
                cells.append(f'<td class="num">{_e(text)}</td>')
            else:
                cells.append(f"<td>{_e(text)}</td>")
        body.append(f"<tr{' class=ok' if ok else ''}>{''.join(cells)}</tr>")
    # One row per training image and a column per measure: the table scrolls in its own box, not the page.
    return f"<div class=wide><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def headline(metrics: dict[str, Any]) -> tuple[str, str]:
    """The headline of a result and its detail: what the count means and every baseline it is read against."""
    n = metrics.get("n_train", "?")
    if metrics.get("kind") == "toy":
        radius = metrics.get("toy_radius", "?")
        head = f"{metrics.get('n_found', '?')} of {n} training points found (a candidate within {radius})"
        sub = (
            f"on the margin: {metrics.get('n_found_margin', '?')} of {metrics.get('n_margin', '?')} · "
            f"off the margin: {metrics.get('n_found_off_margin', '?')} of {metrics.get('n_off_margin', '?')} · "
            f"median distance {_fmt(metrics.get('median_distance'))} · {metrics.get('n_candidates', '?')} candidates"
        )
        return head, sub
    return _image_headline(metrics, n)


def _image_headline(metrics: dict[str, Any], n: Any) -> tuple[str, str]:
    threshold = _fmt(metrics.get("ssim_threshold", 0.4))
    held = metrics.get("held_out") or {}
    recovered = metrics.get("n_recovered")
    if recovered is not None:
        others = int(n) - 1 if isinstance(n, int) else "?"
        head = f"{recovered} of {n} training images recovered"
        sub = (
            f"Recovered: a candidate is nearer to that training image than to any of the other {others} training "
            f"and {held.get('count', '?')} held-out images ({held.get('source', '?')}), with scale-aligned SSIM > "
            f"{threshold}. Read against: the nearest held-out look-alike reaches SSIM > {threshold} for "
            f"{metrics.get('held_out_n_reconstructed', '?')} of {n} (median "
            f"{_fmt(metrics.get('held_out_median_ssim_aligned'))})"
        )
        control = metrics.get("control")
        if control:
            sub += (
                f"; {control['count']} images the victim never saw, {control.get('placement', 'outside the pool')}, "
                f"judged as candidates by the same verdict, recover {control['n_recovered']} of {n} (chance at this "
                "many candidates)"
            )
    else:
        head = (
            f"{metrics.get('n_reconstructed', '?')} of {n} training images with SSIM > {threshold} (no held-out pool)"
        )
        sub = (
            "No held-out images were given, so a reconstruction cannot be told from a look-alike: read the count "
            "against the chance level below"
        )
    if "chance_n_reconstructed" in metrics:
        sub += (
            f"; the nearest other training image for {metrics['chance_n_reconstructed']} of {n} (median "
            f"{_fmt(metrics.get('chance_median_ssim_aligned'))}; min-max "
            f"{metrics.get('chance_n_reconstructed_reference', '?')} of {n})"
        )
    attacker = metrics.get("attacker")
    if attacker:
        sub += (
            f". The attacker's own ranking (no training set): {_pct(attacker.get('precision_at_10'))} of its top 10 "
            f"and {_pct(attacker.get('precision_at_20'))} of its top 20 pooled candidates are real"
        )
    sub += (
        f". Without the pool: {metrics.get('n_reconstructed', '?')} of {n} with aligned SSIM > {threshold} "
        f"(median {_fmt(metrics.get('median_ssim_aligned'))}) · the paper's min-max protocol: "
        f"{metrics.get('n_reconstructed_reference', '?')} of {n} (median {_fmt(metrics.get('median_ssim_reference'))})"
        f" · median PSNR {_fmt(metrics.get('median_psnr'))} dB · {metrics.get('n_candidates', '?')} candidates"
        + (" · best buddies" if metrics.get("best_buddies") else "")
        + "."
    )
    return head, sub


def report(rec_dir: str | Path, *, out: str | Path | None = None, force: bool = False) -> Path:
    """Write one self-contained ``report.html`` for an evaluated reconstruction.

    The page opens offline: the headline result first, the summary metrics, the figures (embedded as
    ``data:image/png;base64`` URIs), the victim's recipe (its ``model.json`` without the mean image),
    the configuration of each pooled reconstruction with its loss history, and the per-sample table.
    All text is HTML-escaped.

    Args:
        rec_dir: the directory :func:`kktrecon.evaluate` wrote into (holds ``metrics.json``).
        out: the ``.html`` file to write (a directory gets ``report.html`` inside); default
            ``rec_dir/report.html``.
        force: replace an existing report (refused otherwise; a file that is not ``.html`` never is).

    Returns:
        The path of the written report.

    Raises:
        RunFileNotFoundError: when ``metrics.json`` or ``per_sample.csv`` is missing (run
            ``kktrecon evaluate`` first).
        RunDirectoryExistsError: the target exists and ``force`` was not given.
        ConfigError: the target is not an ``.html`` file.
    """
    rec_dir = Path(rec_dir)
    target = _report_target(rec_dir, out, force=force)
    metrics, rows = _read_evaluation(rec_dir)
    notes: list[str] = []
    head, sub = headline(metrics)
    title = f"kktrecon report: {rec_dir.resolve().name}"
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="headline">{_e(head)}</p>', f'<p class="sub">{_e(sub)}</p>']
    if (chance := chance_note(metrics)) is not None:
        parts.append(f'<p class="note">{_e(chance)}</p>')
    notes_at = len(parts)
    if metrics.get("kind") != "toy":
        parts.append(f'<p class="sub">{_e(TOLERANCE)}</p>')
    parts.append("<h2>Summary</h2>")
    parts.append(_kv_table(metrics, skip=("versions", "data", "class_names", "files")))
    parts += _figures_section(rec_dir, metrics, notes)
    parts += _victim_section(metrics, notes)
    parts += _reconstruction_section(rec_dir, metrics, notes)
    parts += _per_sample_section(metrics, rows)
    for text in notes:
        warnings.warn(text, stacklevel=2)
    parts[notes_at:notes_at] = [f'<p class="note">{_e(text)}</p>' for text in notes]
    atomic_write_text(target, _page(title, parts))
    return target


def _report_target(rec_dir: Path, out: str | Path | None, *, force: bool) -> Path:
    target = Path(out) if out is not None else rec_dir / REPORT_FILE
    if target.is_dir():
        target = target / REPORT_FILE
    if target.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"Expected the report's --out to be an .html file or a directory. Got {target}.")
    if target.exists() and not force:
        raise RunDirectoryExistsError(f"{target} already exists; pass --force to replace it.")
    return target


def _read_evaluation(rec_dir: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    metrics_path = rec_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise RunFileNotFoundError(
            f"No metrics.json in {rec_dir}: run `kktrecon evaluate {rec_dir}` first, then `kktrecon report`."
        )
    metrics = read_json(metrics_path)
    csv_path = rec_dir / PER_SAMPLE_FILE
    if not csv_path.is_file():
        raise RunFileNotFoundError(f"No per_sample.csv in {rec_dir}: run `kktrecon evaluate {rec_dir}` again.")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return metrics, rows


def _figures_section(rec_dir: Path, metrics: dict[str, Any], notes: list[str]) -> list[str]:
    parts = ["<h2>Figures</h2>"]
    wanted = [FIG_TOY] if metrics.get("kind") == "toy" else [FIG_PAIRS, FIG_SCATTER]
    if "attacker" in metrics:
        wanted.insert(0, FIG_ATTACKER)
    for name in wanted:
        path = rec_dir / name
        if path.is_file():
            parts.append(
                f"<figure>{_img(path.read_bytes(), name)}<figcaption>{_e(FIGURES[name])}</figcaption></figure>"
            )
        else:
            notes.append(f"Figure {name} is missing from {rec_dir}; run `kktrecon evaluate` with figures.")
    return parts


def _victim_section(metrics: dict[str, Any], notes: list[str]) -> list[str]:
    victim_dir = metrics.get("victim_run_dir")
    parts = ["<h2>Victim</h2>", f"<p>Run directory: <code>{_e(victim_dir)}</code></p>"]
    model_json = Path(victim_dir) / VICTIM_FILE if victim_dir else None
    if model_json is not None and model_json.is_file():
        manifest = read_json(model_json)
        for key, value in manifest.items():
            if key == "train_mean":
                continue
            parts.append(f"<h3>{_e(key)}</h3>")
            parts.append(_kv_table(value) if isinstance(value, dict) else f"<p>{_e(_fmt(value))}</p>")
    elif victim_dir:
        notes.append(f"The victim's model.json was not found in {victim_dir}; its recipe is not shown.")
    else:
        notes.append("metrics.json names no victim run directory (evaluated in memory?); its recipe is not shown.")
    if metrics.get("versions"):
        parts.append("<h3>evaluation software</h3>")
        parts.append(_kv_table(metrics["versions"]))
    return parts


def _reconstruction_section(rec_dir: Path, metrics: dict[str, Any], notes: list[str]) -> list[str]:
    parts = ["<h2>Reconstruction</h2>"]
    rec_dirs = metrics.get("rec_dirs") or [str(rec_dir)]
    for run, directory in enumerate(rec_dirs):
        path = Path(directory) / RECONSTRUCTION_FILE
        if not path.is_file() and len(rec_dirs) == 1:
            path = rec_dir / RECONSTRUCTION_FILE
        parts.append(f"<h3>run {run}: <code>{_e(directory)}</code></h3>")
        if not path.is_file():
            notes.append(f"reconstruction.json of run {run} was not found at {path}; its configuration is not shown.")
            continue
        manifest = read_json(path)
        parts.append(_kv_table(manifest, skip=("loss_history",)))
        fig = plot_loss_history(manifest.get("loss_history") or [])
        if fig is not None:
            caption = f"<figcaption>Loss history of run {run}.</figcaption>"
            parts.append(f"<figure>{_img(figure_png(fig), 'loss history')}{caption}</figure>")
    return parts


def _per_sample_section(metrics: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    threshold = float(metrics.get("ssim_threshold") or 0.4)
    if metrics.get("kind") == "toy":
        key, shaded = "found", "found"
    elif rows and "recovered" in rows[0]:
        key, shaded = "recovered", "recovered (the count of the headline, read against the held-out pool)"
    else:
        key, shaded = "ssim_aligned", f"reconstructed (aligned SSIM &gt; {threshold:g}, no held-out pool)"
    return [
        "<h2>Per-sample results</h2>",
        f"<p>One row per training sample ({len(rows)}); shaded rows are {shaded}. "
        "<code>candidate</code> indexes the candidates of run <code>candidate_run</code>; -1: no match.</p>",
        _per_sample_table(rows, threshold, key),
    ]


def _page(title: str, parts: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


#: What raises or lowers the risk, each claim with the project's own measurement behind it
#: (docs/results/: the experiments at CPU scale; benchmarks/NOTES.md).
RISK = (
    "What raises the risk: few training images relative to the network's size (fig4-n: the recovered fraction "
    "falls as n grows), a network trained to zero training error and onwards towards the max-margin solution "
    "(training longer moves a victim closer to a KKT point: tests/test_training.py), weight decay (weight-decay "
    "experiment) and more classes (multiclass experiment). What lowers it: more training data, biases in every "
    "layer (the network is then not homogeneous: fig4-arch) and early stopping before the training set is fit. "
    "None of these prevents recovery on its own; only a measurement like this one tells."
)


#: Fewer held-out images than this make a weak baseline: a look-alike is then easily nearest to a training image.
WEAK_POOL = 200


def chance_note(metrics: dict[str, Any]) -> str | None:
    """What a recovered count at or below the unseen control's means (None: above it, none recovered, no control)."""
    control, recovered = metrics.get("control"), metrics.get("n_recovered")
    if not control or not recovered or recovered > control["n_recovered"]:
        return None
    return (
        f"{recovered} recovered is no more than the {control['n_recovered']} that {control['count']} images the "
        "victim never saw reach under the same verdict: at this many candidates, chance alone recovers as many. "
        "This count is not evidence of a leak; the pairs below show what matched."
    )


def weak_pool_note(metrics: dict[str, Any]) -> str:
    """Why a count read against fewer than :data:`WEAK_POOL` held-out images may include look-alikes."""
    count = (metrics.get("held_out") or {}).get("count", 0)
    return (
        f"Only {count} held-out images were given: with few of them, a candidate that merely resembles a training "
        f"image is rarely nearer to a held-out one, so the recovered count may include look-alikes. The verdict "
        f"controls use {WEAK_POOL}; pass at least that many with --held-out for a count that means a leak."
    )


def family_line(row: dict[str, Any]) -> str:
    """One attack family of an audit in words: what it recovered alone, against its unseen control; or why not."""
    if not row.get("ran"):
        return f"did not run: {row.get('why_not')}"
    control = row.get("control_n_recovered")
    return "".join([
        f"ran: {row.get('candidates')} candidates, {row.get('n_recovered')} recovered alone",
        f" (unseen control at as many candidates: {control})" if control is not None else "",
        f", rank {row['rank']} (drop {row['drop']:.3g}, decay {row['decay']:.6g})" if "rank" in row else "",
    ])  # fmt: skip


def _owner_sections(metrics: dict[str, Any]) -> list[str]:
    """Per attack family (what ran, what it recovered alone, what could not run and why), and membership evidence."""
    parts = ["<h2>Attack families</h2>"]
    rows = []
    for f in metrics.get("families") or []:
        rows.append(f"<tr><th>{_e(f.get('family'))}</th><td>{_e(family_line(f))}</td></tr>")
    parts.append(f"<table>{''.join(rows)}</table>" if rows else "<p>(none recorded)</p>")
    member = metrics.get("membership")
    parts.append("<h2>Membership evidence</h2>")
    if not member:
        why = (
            "needs the initial weights (--init-weights) and held-out images (--held-out)"
            if not metrics.get("initial_weights_given") or not metrics.get("held_out_given")
            else "neither the first layer nor a layer behind the convolutions is dense (two outputs or more)"
        )
        parts.append(f"<p>{_e('Not computed: ' + why + '.')}</p>")
        return parts
    parts.append(
        f"<p>{_e(str(member.get('score')))}: training images (members) against held-out images (non-members). "
        "A false-positive rate below 1 / (held-out images) cannot be resolved and is shown as none.</p>"
    )
    parts.append(_kv_table(member))
    return parts


def write_audit_report(out: Path, metrics: dict[str, Any], files: dict[str, Path]) -> Path:
    """The audit's self-contained ``audit.html``: the headline, which files leaked, the attacker's view,
    the recovered pairs, recovery against the margin, the model's validity findings and the risk."""
    n = metrics.get("n_train", "?")
    recovered = metrics.get("recovered_files") or []
    held = bool(metrics.get("held_out_given"))
    head = f"{len(recovered)} of {n} training images recovered from the weights"
    parts = [f"<h1>{_e('kktrecon privacy audit')}</h1>", f'<p class="headline">{_e(head)}</p>']
    _, sub = headline(metrics)
    parts.append(f'<p class="sub">{_e(sub)}</p>')
    if (chance := chance_note(metrics)) is not None:
        parts.append(f'<p class="note">{_e(chance)}</p>')
    if not held:
        parts.append(
            '<p class="note">No held-out images were given: a candidate that merely looks like a typical training '
            "image cannot be told from a leak, so every count here may include look-alikes. Pass --held-out.</p>"
        )
    elif (metrics.get("held_out") or {}).get("count", WEAK_POOL) < WEAK_POOL:
        parts.append(f'<p class="note">{_e(weak_pool_note(metrics))}</p>')
    parts.append(f'<p class="sub">{_e(TOLERANCE)}</p>')
    parts.append("<h2>Recovered training images</h2>")
    listing = "".join(f"<li><code>{_e(f)}</code></li>" for f in recovered) or "<li>none</li>"
    parts.append(f"<ul>{listing}</ul>")
    parts.extend(_owner_sections(metrics))
    parts.append("<h2>Figures</h2>")
    for name in (FIG_ATTACKER, FIG_PAIRS, FIG_SCATTER):
        if name in files and files[name].is_file():
            parts.append(
                f"<figure>{_img(files[name].read_bytes(), name)}<figcaption>{_e(FIGURES[name])}</figcaption></figure>"
            )
    parts.append("<h2>The model</h2>")
    findings = metrics.get("findings") or ["no finding: Linear/Conv2d/ReLU layers, homogeneous in its parameters"]
    parts.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>")
    parts.append(_kv_table(metrics.get("diagnosis") or {}))
    parts.append(
        "<p>relative_residual: ‖θ − Σλᵢ∇θgᵢ‖ / ‖θ‖ with the multipliers fitted on the training set (0: an exact KKT "
        "point of the max-margin problem, which the attack inverts; 1: none of θ explained).</p>"
    )
    parts.append("<h2>What raises or lowers the risk</h2>")
    parts.append(f"<p>{_e(RISK)}</p>")
    parts.append("<h2>Summary</h2>")
    skip = ("recovered_files", "findings", "diagnosis", "files", "class_names", "families", "membership")
    parts.append(_kv_table(metrics, skip=skip))
    target = out / "audit.html"
    atomic_write_text(target, _page("kktrecon privacy audit", parts))
    return target
