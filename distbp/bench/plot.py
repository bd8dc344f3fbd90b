"""The figure of a scaling study (`distbp bench scaling --plot PATH`): three panels, fit for a paper.

    speed-up      measured (solid, one colour per mode), the ideal line k (grey), the α–β prediction (dashed),
                  and the projection beyond the job (dotted, in the shaded region)
    efficiency    speed-up / k, the same lines
    exposed share the wait for the gradient's sum after the backward pass, as a share of the step

A footnote names the machine, the MPI library, the transport, the model and the batches. `compare` draws
several studies (transports, or hier before and after) side by side, a row per layout.
matplotlib is optional: imported here only, through the Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path

MODES = {"strong": "C0", "weak": "C1"}


def _figure(width: float, height: float, panels: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "distbp[plot]"') from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _rank_axis(ax, ticks: list[int]) -> None:
    """A log₂ axis of rank counts, labelled with the counts themselves."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("ranks")
    ax.grid(alpha=0.3)


def footnote(doc: dict) -> str:
    m, c = doc["machine"], doc["config"]
    transports = sorted({r["transport"] for r in doc["results"] if r["transport"] != "none"})
    return (f"{m['host']}: {m['cpu']}, {doc['ranks']} ranks on {m['nodes']} node(s) ({doc['per_node']} per node), "
            f"{c['threads']} thread(s) per rank; {m['mpi']}\n"
            f"MLP {'-'.join(map(str, c['layers']))} {c['activation']} {c['dtype']}, {c['optimizer']}; "
            f"--allreduce {c['allreduce']} ({', '.join(transports) or 'none'})"
            f"{', ' + c['comm_dtype'] + ' on the wire' if c['comm_dtype'] else ''}; strong: global batch "
            f"{doc['global_batch']}, weak: {doc['per_rank_batch']} rows per rank; {doc['repeats']} repeat(s) x "
            f"{doc['steps']} steps")


def plot_study(doc: dict, path: str) -> None:
    """The study's PNG (speed-up with the ideal line, efficiency, exposed-communication share) at `path`."""
    fig, (ax_s, ax_e, ax_x) = _figure(15, 4.8, 3)
    measured_max = doc["ranks"]
    for mode in doc["modes"]:
        rows = [r for r in doc["results"] if r["mode"] == mode]
        proj = [r for r in doc["projection"] if r["mode"] == mode]
        colour = MODES[mode]
        k = [r["ranks"] for r in rows]
        ax_s.plot(k, [r["speedup"] for r in rows], "o-", color=colour, label=f"{mode}, measured")
        ax_e.plot(k, [r["efficiency"] for r in rows], "o-", color=colour, label=f"{mode}, measured")
        ax_x.plot(k, [r["exposed_share"] for r in rows], "o-", color=colour, label=mode)
        predicted = [r for r in rows if r.get("predicted_speedup") is not None]
        if predicted:
            pk = [r["ranks"] for r in predicted]
            ax_s.plot(pk, [r["predicted_speedup"] for r in predicted], "s--", color=colour, alpha=0.7,
                      label=f"{mode}, α–β prediction")
            ax_e.plot(pk, [r["predicted_efficiency"] for r in predicted], "s--", color=colour, alpha=0.7,
                      label=f"{mode}, α–β prediction")
        if proj and predicted:
            tail = [predicted[-1]] + proj
            ax_s.plot([r["ranks"] for r in tail], [r["predicted_speedup"] for r in tail], ":", color=colour,
                      marker="^", label=f"{mode}, projection")
            ax_e.plot([r["ranks"] for r in tail], [r["predicted_efficiency"] for r in tail], ":", color=colour,
                      marker="^", label=f"{mode}, projection")
    measured = sorted({r["ranks"] for r in doc["results"]})
    every = sorted(set(measured) | {r["ranks"] for r in doc["projection"]})
    ax_s.plot(every, every, "-", color="0.6", linewidth=1, label="ideal")
    for ax, ticks in ((ax_s, every), (ax_e, every), (ax_x, measured)):
        _rank_axis(ax, ticks)
        if doc["projection"] and ax is not ax_x:
            ax.axvspan(measured_max, max(every), color="0.93", zorder=0)
            ax.text(measured_max, 0.98, " projection", transform=ax.get_xaxis_transform(), fontsize="small",
                    ha="left", va="top", color="0.35")
    ax_s.set_yscale("log", base=2)
    ax_s.set(title="speed-up (vs 1 rank)", ylabel="speed-up")
    ax_e.set(title="efficiency = speed-up / ranks", ylabel="efficiency", ylim=(0, 1.1))
    ax_x.set(title="exposed communication", ylabel="share of the step", ylim=(0, 1))
    for ax in (ax_s, ax_e, ax_x):
        ax.legend(fontsize="x-small")
    fig.suptitle(footnote(doc), fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def compare(studies: dict[str, dict[str, dict]], path: str, title: str = "") -> None:
    """Several studies side by side: one row per layout ({layout: {label: doc}}), the columns the step time and
    the efficiency of weak and of strong scaling against ranks, one line per label (transports, or before/after)."""
    rows = len(studies)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "distbp[plot]"') from exc
    fig = Figure(figsize=(18, 3.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, 4, squeeze=False)
    for axes, (layout, docs) in zip(grid, studies.items()):
        for col, (mode, what) in enumerate([(m, w) for m in ("weak", "strong") for w in ("step", "efficiency")]):
            ax = axes[col]
            for i, (label, doc) in enumerate(docs.items()):
                rows_ = [r for r in doc["results"] if r["mode"] == mode]
                values = [1e3 * r["step_s"] if what == "step" else r["efficiency"] for r in rows_]
                ax.plot([r["ranks"] for r in rows_], values, "o-", color=f"C{i}", label=label)
            _rank_axis(ax, sorted({r["ranks"] for doc in docs.values() for r in doc["results"]}))
            ax.set(title=f"{layout}: {mode}, {'step time' if what == 'step' else 'efficiency'}",
                   ylabel="ms (slowest rank, median)" if what == "step" else "speed-up / ranks")
            if what == "efficiency":
                ax.set_ylim(0, 1.1)
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
