"""
OPO sensitivity sweep on a recipe: one knob at a time around the paper's point (alpha 0.4, mu 1.0).

    python benchmarks/sweep.py --config recipes/compare_cpu.yaml --seeds 0 --output_dir runs/sweep \
        --alphas 0.0 0.4 0.8 --mus 0.5 1.0 4.0 [--key value ...]

Each point is `opo-trl compare --algorithms opo` with `--alpha`/`--mu` set (so it resumes like a comparison), in
`<output_dir>/alpha<a>-mu<m>`. The recipe must reuse each rollout for 2+ optimizer steps, or mu cannot act. Prints
and writes `sweep.md`: held-out accuracy before/after and the final training reward of every point.
"""

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opo_trl.harness.compare import run_comparison  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--output_dir", default="runs/sweep")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.4, 0.8])
    parser.add_argument("--mus", nargs="+", type=float, default=[0.5, 1.0, 4.0])
    parser.add_argument("--grid", action="store_true", help="Every (alpha, mu) pair instead of one knob at a time.")
    parser.add_argument("--last_k", type=int, default=5)
    args, extra = parser.parse_known_args(argv)

    if args.grid:
        points = [(a, m) for a in args.alphas for m in args.mus]
    else:
        points = list(dict.fromkeys([(a, 1.0) for a in args.alphas] + [(0.4, m) for m in args.mus]))
    rows = []
    for alpha, mu in points:
        out = Path(args.output_dir) / f"alpha{alpha}-mu{mu}"
        summary = run_comparison(
            args.config, ["opo"], args.seeds, out, [*extra, "--alpha", str(alpha), "--mu", str(mu)], args.last_k
        )
        (row,) = summary["algorithms"]
        rows.append({"alpha": alpha, "mu": mu, **row})

    def spread(stat):
        return "n/a" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"

    def ci(cell):
        return "n/a" if cell is None else cell["str"]

    def quartiles(cell):
        return "n/a" if cell is None else f"{cell['median']:.3f} [{cell['q1']:.3f}, {cell['q3']:.3f}]"

    lines = [
        f"| alpha | mu | seeds | training reward (last {args.last_k}) | held-out before [95% CI] | "
        "held-out after [95% CI] | grad norm median [IQR] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['alpha']} | {r['mu']} | {len(r['seeds'])} | {spread(r['final_reward'])} | {ci(r['before'])} | "
            f"{ci(r['after'])} | {quartiles(r['grad_norm'])} |"
        )
    table = "\n".join(lines) + "\n"
    Path(args.output_dir, "sweep.md").write_text(table)
    Path(args.output_dir, "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
