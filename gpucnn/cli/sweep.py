"""A hyperparameter sweep: one training trial per combination, run as concurrent tasks.

    gpucnn sweep --grid lr=1e-3,3e-4 --grid model=seed,lenet5 --limit 5000
    gpucnn sweep --grid lr=1e-3,3e-4 --dask-address tcp://scheduler:8786

With --dask-address the trials run on that Dask cluster through prefect-dask's
DaskTaskRunner (pip install 'gpucnn[dask]'); otherwise in threads of this process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gpucnn.cli.config import (
    add_config_options,
    add_preset_option,
    config_from,
    expand_grid,
    parse_args,
    parse_value,
    verify_data,
)
from gpucnn.cli.run import bad_values, command_parser, run_cli
from gpucnn.train.config import field_types


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """["lr=1e-3,3e-4", "model=seed"] -> {"lr": [0.001, 0.0003], "model": ["seed"]}."""
    grid: dict[str, list[Any]] = {}
    fields = field_types()
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in fields or fields[key][1] or not values:
            raise ValueError(
                f"--grid {item!r}: expected FIELD=V1,V2 with FIELD one of "
                f"{', '.join(sorted(k for k, (_, is_list) in fields.items() if not is_list))}"
            )
        grid[key] = [parse_value(key, v) for v in values.split(",")]
    return grid


def ranked_table(rows: list[dict[str, Any]], swept: list[str]) -> str:
    """The trials as a text table, best test accuracy first."""
    head = ["rank", *swept, "val acc", "test acc", "epochs", "run"]
    body = [
        [
            str(i + 1),
            *(str(r.get(k)) for k in swept),
            "-" if r.get("best_val_accuracy") is None else f"{r['best_val_accuracy']:.4f}",
            "-" if r.get("test_accuracy") is None else f"{r['test_accuracy']:.4f}",
            str(r.get("epochs")),
            str(r.get("run")),
        ]
        for i, r in enumerate(sorted(rows, key=lambda r: -(r.get("test_accuracy") or 0)))
    ]
    widths = [max(len(row[j]) for row in (head, *body)) for j in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None, prog: str = "gpucnn sweep") -> int:
    """The command line (``prog``: the name its usage line shows); returns the exit status."""
    ap = command_parser(prog, __doc__)
    ap.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="FIELD=V1,V2",
        help="values to try for one config field; repeat for a product",
    )
    ap.add_argument("--output-dir", default="runs/sweep", help="(default: %(default)s)")
    ap.add_argument(
        "--dask-address",
        default=None,
        help="run trials on this Dask scheduler (needs prefect-dask)",
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON, not a table")
    add_preset_option(ap)
    add_config_options(ap)
    args = parse_args(ap, argv)

    def body() -> None:
        with bad_values():  # every trial's config is checked before Prefect starts
            grid = parse_grid(args.grid)
            base = config_from(args)
            trials = [base.replace(**values) for values in expand_grid(grid)]
        from gpucnn.flows.cli import prefect_ready, start_prefect

        start_prefect()  # its local API starts while the trials' data is verified
        verify_data(trials)
        from gpucnn.flows.pipeline import sweep_flow  # meanwhile too

        prefect_ready()

        flow = sweep_flow
        if args.dask_address:
            try:
                from prefect_dask import DaskTaskRunner
            except ImportError as exc:
                raise ValueError(
                    "--dask-address needs prefect-dask: pip install 'gpucnn[dask]'"
                ) from exc
            flow = sweep_flow.with_options(task_runner=DaskTaskRunner(address=args.dask_address))
        rows = flow(grid=grid, base=base, output_dir=args.output_dir)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(ranked_table(rows, sorted(grid)))
            print(f"\nall trials, ranked: {args.output_dir}/sweep.json; curves: sweep.png")

    return run_cli(body)


if __name__ == "__main__":  # python -m gpucnn.cli.sweep: the same command
    sys.exit(main())
