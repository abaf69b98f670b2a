"""Crop type from phenology on generated time series: every date vs one date vs shuffled labels.

Prints a markdown table; the last stdout line is one JSON object.
`python benchmarks/temporal_phenology.py [PER_CLASS] [EPOCHS]` (defaults 96, 30; ~10 min on 1 CPU thread).
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch

from maekit.domains.multispectral.temporal_samples import make_time_series_dataset, phenology_experiment


def main() -> None:
    per_class = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_time_series_dataset(tmp, per_class=per_class, val_per_class=16, layout="stacks", seed=0)
        rows = {name: phenology_experiment(root, mode, epochs=epochs, layout="stacks", shuffle_labels=shuffled)
                for name, mode, shuffled in (("every date", "temporal", False), ("one date", "single", False),
                                             ("every date, shuffled labels", "temporal", True))}
    lines = ["| model | train acc | val acc |", "|---|---|---|"]
    lines += [f"| {name} | {r['train_acc']:.3f} | {r['val_acc']:.3f} |" for name, r in rows.items()]
    lines.append(f"\nchance {rows['every date']['chance']:.3f}; {per_class} series per class, {epochs} epochs")
    markdown = "\n".join(lines)
    print(markdown)
    gap = rows["every date"]["val_acc"] - rows["one date"]["val_acc"]
    print(json.dumps({"benchmark": "temporal_phenology", "results": rows, "markdown": markdown,
                      "targets": [{"target": "temporal - single-date val acc", "value": gap, "goal": ">= 0.1",
                                   "met": gap >= 0.1}]}))


if __name__ == "__main__":
    main()
