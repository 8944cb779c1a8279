"""What a person sees: a live progress bar while trials run, tables when they end (rich)."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

if TYPE_CHECKING:
    import optuna

    from hpo_infer.agent.loop import Progress

console = Console()


@contextlib.contextmanager
def progress_display(progress: "Progress", total: int | None) -> Iterator[None]:
    with RichProgress(
        SpinnerColumn(),
        TextColumn("[bold]trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TextColumn("trial {task.fields[trial]}: {task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("tune", total=total, best="-", trial="-", phase="starting")

        shown: set[int] = set()

        def show(p: "Progress") -> None:
            t = p.last
            if t is not None and t.number not in shown:
                shown.add(t.number)
                bar.console.print(trial_line(t))
            bar.update(
                task,
                completed=p.done,
                best=f"{p.best:,.1f} tok/s" if p.best is not None else "-",
                trial=p.trial if p.trial is not None else "-",
                phase=p.phase,
            )

        progress.listeners.append(show)
        try:
            yield
        finally:
            progress.listeners.remove(show)


def _status(t: Any) -> str:
    """A finished trial's status word: ours where we set one, "failed" for every FAIL but one that
    never started."""
    from hpo_infer.study.trials import NOT_STARTED

    status = t.user_attrs.get("status") or t.state.name.lower()
    return "failed" if t.state.name == "FAIL" and status != NOT_STARTED else status


def trial_line(t: Any) -> str:
    """One line per finished trial: number, status, value, settings, and why it failed."""
    from hpo_infer.study.trials import NOT_STARTED, tok_s

    status = _status(t)
    value = f"{tok_s(t):,.1f} tok/s" if tok_s(t) is not None and status == "ok" else ""
    why = t.user_attrs.get("failure") or ""
    if t.user_attrs.get("duplicate_of") is not None:
        why = f"(same settings as trial {t.user_attrs['duplicate_of']}: not measured again) {why}"
    role = t.user_attrs.get("hpo_infer_role")
    tag = f" [{role}]" if role else ""
    settings = "" if status == NOT_STARTED else _fmt_settings(t.user_attrs.get("settings", t.params))
    return f"trial {t.number}{tag}: {status} {value} {settings} {why}".rstrip()


def _fmt_settings(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(s.items())) or "(engine defaults)"


def print_summary(study: "optuna.Study", validation: dict[str, Any] | None) -> None:
    from hpo_infer.study.overhead import study_overhead
    from hpo_infer.study.trials import baseline_trial, cache_warnings, gain_pct, ranked, tok_s, uncertainty
    from hpo_infer.study.verdict import describe

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        key = _status(t)
        states[key] = states.get(key, 0) + 1
    console.print(
        f"[bold]{study.study_name}[/bold]: {len(trials)} trials "
        f"({', '.join(f'{v} {k}' for k, v in sorted(states.items()))})"
    )
    base = baseline_trial(study)
    best_list = ranked(study)
    table = Table(title="baseline vs best")
    for col in ("", "trial", "settings", "tok/s", "uncertainty", "vs baseline"):
        table.add_column(col)
    rows = []
    if base is not None:
        rows.append(("baseline", base))
    rows += [("best" if i == 0 else f"#{i + 1}", t) for i, t in enumerate(best_list[:3])]
    for role, t in rows:
        gain = f"{gain_pct(tok_s(t), tok_s(base)):+.1f}%" if base is not None and tok_s(base) else "-"
        table.add_row(
            role,
            str(t.number),
            _fmt_settings(t.user_attrs.get("settings", t.params)),
            f"{tok_s(t):,.1f}",
            uncertainty(t),
            gain,
        )
    console.print(table)
    for line in cache_warnings(trials):
        console.print(f"[bold yellow]warning[/bold yellow]: {escape(line)}")
    overhead = study_overhead(study)
    if overhead.workers:
        console.print(escape(overhead.line()))
    if validation:
        console.print(f"re-validated: {describe(validation)}")
        meas = validation.get("measured", {})
        console.print(
            "  " + "; ".join(f"{k} {m['value']:,.1f} tok/s" for k, m in meas.items() if m.get("value") is not None)
        )
    if len(study.directions) > 1:
        print_front(study, validation)
    elif best_list:
        best = best_list[0]
        console.print(f"[bold green]best configuration[/bold green] (trial {best.number}, {tok_s(best):,.1f} tok/s):")
        console.print(json.dumps(best.user_attrs.get("settings", best.params), sort_keys=True))
    else:
        console.print("[bold red]no feasible trial yet[/bold red]")


def print_front(study: "optuna.Study", validation: dict[str, Any] | None) -> None:
    """A multi-objective study's Pareto front: one row a configuration, and how to pick one."""
    from hpo_infer.study.front import front, measured, objective_names

    names = objective_names(study)
    points = front(study)
    if not points:
        console.print("[bold red]no feasible trial yet[/bold red]")
        return
    marks = (validation or {}).get("front", [])
    ties = {p["trial"]: p["next"]["trial"] for p in marks if p.get("next", {}).get("within_noise")}
    table = Table(title=f"Pareto front: {' vs '.join(names)}")
    for col in ("trial", "settings", *names, "re-validated"):
        table.add_column(col)
    for t in points:
        mark = "yes" if validation and "front" in validation else "-"
        mark = f"tie with trial {ties[t.number]}" if t.number in ties else mark
        cells = [f"{v:,.1f}" if (v := measured(t, n)) is not None else "-" for n in names]
        table.add_row(str(t.number), _fmt_settings(t.user_attrs.get("settings", t.params)), *cells, mark)
    console.print(table)
    example = f"{names[1]}<={measured(points[len(points) // 2], names[1]) or 0:g}"
    console.print(f"[bold green]{len(points)} configuration(s) on the front[/bold green]; one within a budget:")
    console.print(escape(f"  hpo-infer export {study.study_name} --pick '{example}'"), soft_wrap=True)  # copyable


def studies_table(summaries: list[Any]) -> None:
    from hpo_infer.study.trials import tok_s

    table = Table(title="studies")
    for col in ("study", "trials", "best tok/s"):
        table.add_column(col)
    for s in summaries:
        best = tok_s(s.best_trial) if s.best_trial is not None else None
        shown = f"{best:,.1f}" if best is not None else "front" if len(s.directions) > 1 else "-"
        table.add_row(s.study_name, str(s.n_trials), shown)
    console.print(table)


def settings_table(engine: Any) -> None:
    table = Table(title=f"{engine.name} settings (engine {engine.version() or 'not installed'})")
    for col in ("setting", "type", "default", "allowed", "default search", "help"):
        table.add_column(col)
    for s in engine.settings:
        allowed = (
            ", ".join(map(str, s.choices))
            if s.choices
            else f"{s.low if s.low is not None else ''}..{s.high if s.high is not None else ''}"
        )
        table.add_row(
            *(
                escape(x)
                for x in (s.name, s.kind, str(s.default), allowed, json.dumps(s.space) if s.space else "", s.help)
            )
        )
    console.print(table)


def compare_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="best settings across studies")
    for col in ("study", "engine", "model", "GPU", "trials", "baseline tok/s", "best tok/s", "gain", "best settings"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["study"],
            str(r["engine"]),
            str(r["model"]),
            r["gpu"],
            str(r["trials"]),
            f"{r['baseline_tok_s']:,.1f}" if r["baseline_tok_s"] is not None else "-",
            f"{r['best_tok_s']:,.1f}" if r["best_tok_s"] is not None else "-",
            f"{r['gain_pct']:+.1f}%" if r["gain_pct"] is not None else "-",
            _fmt_settings(r["best_settings"] or {}),
        )
    console.print(table)
