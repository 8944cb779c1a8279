"""``hpo-infer report --campaign``: the paper's views of a campaign, on your hardware.

* throughput vs batch size, one line per GPU count, one plot per model and engine;
* vLLM vs HF at batch 1 and at each engine's best, with whether the gap is larger than noise;
* the best configuration per model;
* ratios to arXiv 2408.01050's own A100/V100 figures where the model matches.

Each point is the median of the trial's repeats, with its min-max spread. Comparisons use
Welch's t-test on the repeats (scipy), the same verdict as the finalists' re-validation.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo_infer.study.trials import ranked, tok_s
from hpo_infer.study.verdict import verdict

GPU_KEYS = ("num_gpus", "tensor_parallel_size")
PAPER_HW = "A100 / V100 (arXiv 2408.01050, 2024: vLLM 0.4-era, transformers 4.3x-era)"


@dataclass
class Point:
    model: str
    engine: str
    batch: int
    gpus: int
    median: float
    lo: float
    hi: float
    repeats: list[float]
    trial: int
    settings: dict[str, Any]


def points(study: optuna.Study, model: str, engine: str) -> list[Point]:
    out = []
    for t in ranked(study):
        s = t.user_attrs.get("settings", t.params)
        reps = [float(x) for x in t.user_attrs.get("repeats") or [tok_s(t)]]
        gpus = next((int(s[k]) for k in GPU_KEYS if k in s), 1)
        # A baseline leaves batch_size to the engine: vLLM's default is every prompt at once,
        # not 1; the worker reports what it used.
        batch = s.get("batch_size") or (t.user_attrs.get("resolved") or {}).get("batch_size") or 1
        out.append(Point(model, engine, int(batch), gpus, float(tok_s(t)), min(reps), max(reps), reps, t.number, s))
    return out


def _best_at(pts: list[Point], batch: int | None = None) -> Point | None:
    cand = [p for p in pts if batch is None or p.batch == batch]
    return max(cand, key=lambda p: p.median) if cand else None


def plot_model_engine(pts: list[Point], title: str, path: Path) -> Path | None:
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for g in sorted({p.gpus for p in pts}):
        # Several trials can share (batch, gpus) with other settings: show the best of each.
        by_b: dict[int, Point] = {}
        for p in pts:
            if p.gpus == g and (p.batch not in by_b or p.median > by_b[p.batch].median):
                by_b[p.batch] = p
        xs = sorted(by_b)
        ys = [by_b[b].median for b in xs]
        err = [[by_b[b].median - by_b[b].lo for b in xs], [by_b[b].hi - by_b[b].median for b in xs]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, label=f"{g} GPU" + ("s" if g > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens/s (median, min-max)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paper_best(csv_path: Path, paper_model: str, engine: str) -> dict[str, float]:
    """The paper's best 5-token throughput per GPU type for one model and engine."""
    best: dict[str, float] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["model"] != paper_model or row["engine"] != engine or row["max_new_tokens"] != "5":
                continue
            if not row["throughput_tok_s"]:
                continue
            v = float(row["throughput_tok_s"])
            best[row["gpu"]] = max(best.get(row["gpu"], 0.0), v)
    return best


def _fmt(v: float | None) -> str:
    return f"{v:,.1f}" if v is not None else "-"


def write(
    entries: list[Any], studies: list[optuna.Study], out_dir: Path, paper_csv: Path | None = None
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    by_model: dict[str, dict[str, list[Point]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for e, st in zip(entries, studies):
        pts = points(st, e.model_key, e.engine)
        by_model.setdefault(e.model_key, {})[e.engine] = pts
        meta[f"{e.model_key}/{e.engine}"] = {
            "paper": e.paper_name,
            "gpu": f"{st.user_attrs.get('gpu')} x{st.user_attrs.get('gpu_count')}",
            "version": st.user_attrs.get("engine_version"),
            "study": st.study_name,
        }
        p = plot_model_engine(
            pts,
            f"{e.model_key} / {e.engine} ({meta[f'{e.model_key}/{e.engine}']['gpu']})",
            out_dir / f"paper_{e.model_key}_{e.engine}.png",
        )
        if p is not None:
            files[f"plot {e.model_key}/{e.engine}"] = p

    md = ["# Campaign report", ""]
    hw = sorted({m["gpu"] for m in meta.values()})
    vers = sorted({f"{k.split('/')[1]} {m['version']}" for k, m in meta.items()})
    md.append(f"hardware: {', '.join(hw)} · engines: {', '.join(vers)}")
    md += [
        "",
        "## vLLM vs HF at batch 1 and at each engine's best",
        "",
        "| model | HF bs1 | vLLM bs1 | vLLM/HF bs1 | HF best | vLLM best | vLLM/HF best | larger than noise? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, eng in sorted(by_model.items()):
        hf, vl = eng.get("hf", []), eng.get("vllm", [])
        h1, v1, hb, vb = _best_at(hf, 1), _best_at(vl, 1), _best_at(hf), _best_at(vl)
        r1 = f"{v1.median / h1.median:.2f}x" if h1 and v1 else "-"
        rb = f"{vb.median / hb.median:.2f}x" if hb and vb else "-"
        sig = "-"
        if hb and vb:
            v = verdict(vb.repeats, hb.repeats)
            sig = f"{'yes' if v['significant'] else 'no'} (p={v['p_value']:.3g})" if v["p_value"] is not None else "n/a"
        md.append(
            f"| {model} | {_fmt(h1.median if h1 else None)} | {_fmt(v1.median if v1 else None)} | {r1} "
            f"| {_fmt(hb.median if hb else None)} | {_fmt(vb.median if vb else None)} | {rb} | {sig} |"
        )

    md += [
        "",
        "## Best configuration per model",
        "",
        "| model | engine | tokens/s (median, min-max) | settings |",
        "|---|---|---|---|",
    ]
    for model, eng in sorted(by_model.items()):
        allp = [p for pts in eng.values() for p in pts]
        b = _best_at(allp)
        if b:
            md.append(
                f"| {model} | {b.engine} | {b.median:,.1f} ({b.lo:,.1f}-{b.hi:,.1f}) "
                f"| `{json.dumps(b.settings, sort_keys=True)}` |"
            )

    if paper_csv is not None and paper_csv.is_file():
        md += [
            "",
            "## Against the paper's own figures",
            "",
            f"ours: {', '.join(hw)} with {', '.join(vers)}; paper: {PAPER_HW};"
            f" same workload shape (HumanEval single-line infilling, 5 new tokens) where the campaign used it.",
            "",
            "| model (paper name) | engine | ours best | paper A100 best | ours/A100 | paper V100 best | ours/V100 |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, eng in sorted(by_model.items()):
            for engine, pts in sorted(eng.items()):
                pn = meta[f"{model}/{engine}"]["paper"]
                b = _best_at(pts)
                if not pn or b is None:
                    continue
                pb = paper_best(paper_csv, pn, engine)
                a, v = pb.get("A100"), pb.get("V100")
                md.append(
                    f"| {model} ({pn}) | {engine} | {b.median:,.1f} "
                    f"| {_fmt(a)} | {f'{b.median / a:.2f}x' if a else '-'} "
                    f"| {_fmt(v)} | {f'{b.median / v:.2f}x' if v else '-'} |"
                )
        # The paper's headline: vLLM over HF best, median across models.
        ratios = []
        for model, eng in by_model.items():
            hb, vb = _best_at(eng.get("hf", [])), _best_at(eng.get("vllm", []))
            if hb and vb:
                ratios.append(vb.median / hb.median)
        if ratios:
            md.append(
                f"\nmedian vLLM/HF best ratio here: **{statistics.median(ratios):.2f}x** over {len(ratios)} models"
            )

    pts_csv = out_dir / "points.csv"
    with open(pts_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "engine", "batch_size", "gpus", "median_tok_s", "min", "max", "repeats", "trial", "settings"]
        )
        for model, eng in sorted(by_model.items()):
            for engine, pts in sorted(eng.items()):
                for p in sorted(pts, key=lambda p: (p.gpus, p.batch)):
                    w.writerow(
                        [
                            model,
                            engine,
                            p.batch,
                            p.gpus,
                            f"{p.median:.3f}",
                            f"{p.lo:.3f}",
                            f"{p.hi:.3f}",
                            len(p.repeats),
                            p.trial,
                            json.dumps(p.settings, sort_keys=True),
                        ]
                    )
    files["points"] = pts_csv
    md += ["", "## Plots", ""] + [f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png"]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(md) + "\n")
    files["summary"] = summary
    return files
