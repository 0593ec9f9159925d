"""Write this record's two tables into its README from `report.json`, `results.md` and `runs/`
(run from the repository root after `collect.py`).

    python records/2026-11-30_cpu-tiny-ablation/tables.py

1. The results table (the one starting "| variant | seeds | steps") becomes `results.md`'s,
   keeping the README's s/step and "min at pace" cells where `results.md` has "–" (runs whose
   step logs were not kept) and leaving out variants with no seed done.
2. The verdicts at a glance (starting "| variant | seeds | gen acc"): differences from the
   baseline's mean, the metrics whose verdict exceeds the spread, SST-2/CoLA/RTE per
   pre-training seed, STS-B over every seed pair, and the GLUE verdict.
"""

import statistics
from pathlib import Path

import orjson

from electra_fn import study

HERE = Path(__file__).resolve().parent
SHORT = {"generator MLM accuracy": "gen acc", "AUC, generator's replacements": "AUC gen",
         "AUC, unigram replacements": "unigram"}
HELD = ("gen_accuracy", "disc_auc", "unigram/disc_auc")


def replace_table(lines: list[str], header: str, rows: list[str]) -> None:
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = rows


def results_rows(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant | seeds | steps"))
    old = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        old[line.split("|")[1].strip()] = line.split("|")
    new = [line for line in (HERE / "results.md").read_text().splitlines()
           if line.startswith("|")]
    rows = new[:2]
    for line in new[2:]:
        cells = line.split("|")
        name = cells[1].strip()
        if cells[2].strip() == "0":
            continue
        if name in old and cells[4].strip() == "–":
            cells[4], cells[5] = old[name][4], old[name][5]
        rows.append("|".join(cells))
    return rows


def glue_cell(name: str) -> str:
    runs = [r for d in sorted((HERE / "runs" / name).glob("seed*"))
            if (r := study.read_run(d)) is not None]
    means = study.glue_seed_means(runs, ["sst2", "cola", "rte"])
    if not means:
        return "–"
    cell = f"{statistics.fmean(means):.1f}"
    return cell + (f" ({', '.join(f'{m:.1f}' for m in means)})" if len(means) > 1 else "")


def verdict_rows(report: dict) -> list[str]:
    variants, base = report["variants"], report["variants"][report["baseline"]]
    rows = ["| variant | seeds | gen acc | AUC gen | AUC unigram | held-out verdict | "
            "SST-2/CoLA/RTE | STS-B | GLUE verdict |",
            "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for name, row in variants.items():
        if not row["seeds_done"]:
            continue
        stsb = row["glue_tasks"].get("stsb")
        stsb = f"{stsb['mean']:.1f}" if stsb else "–"
        if name == report["baseline"]:
            held = [f"{row[k]['mean']:.3f}" for k in HELD]
            rows.append(f"| {name} | {row['seeds_done']} | {' | '.join(held)} | – | "
                        f"{glue_cell(name)} | {stsb} | – |")
            continue
        held = [f"{row[k]['mean'] - base[k]['mean']:+.3f}" for k in HELD]
        beyond = [short for label, short in SHORT.items()
                  for s in row["verdicts"] if s.startswith(f"{name}: {label} ")
                  and s.endswith("exceeds the spread.")]
        glue = next(s for s in row["verdicts"] if s.startswith(f"{name}: GLUE"))
        word = "beyond" if glue.endswith("exceeds the spread.") else "within"
        if "pooled over" in glue:
            word += f" (pooled, {glue.split(' degrees of freedom')[0].rsplit(' ', 1)[1]} df)"
        rows.append(f"| {name} | {row['seeds_done']} | {' | '.join(held)} | "
                    f"{'beyond: ' + ', '.join(beyond) if beyond else 'within'} | "
                    f"{glue_cell(name)} | {stsb} | {word} |")
    return rows


def main() -> None:
    report = orjson.loads((HERE / "report.json").read_bytes())
    lines = (HERE / "README.md").read_text().splitlines()
    replace_table(lines, "| variant | seeds | steps", results_rows(lines))
    verdicts = verdict_rows(report)
    replace_table(lines, "| variant | seeds | gen acc", verdicts)
    (HERE / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
