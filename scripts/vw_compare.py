"""Vowpal Wabbit on the same example stream as the joint model, one pass, logistic loss,
hashed features (2^18); prints progressive-validation AUC overall, per scenario and over
clicked lines only, and examples/s.

usage: python vw_compare.py STREAM.vw [--by-window] [EXTRA VW OPTIONS...]   (e.g. -q ui)
STREAM.vw comes from `shopstream model quality --vw-out STREAM.vw` (click labels) or
`shopstream model evaluate --vw-out STREAM.vw` (conversion labels by default): same
order, same features as the joint model's inputs, each line tagged SCENARIO/CLICKED.
Each example is predicted before VW learns it, so the AUC is prequential like ours:
compare a click stream with the `ctr` rows, a conversion stream with the `ctcvr` rows
and its "clicked only" line with the `cvr` rows. Needs `pip install vowpalwabbit numpy`
(scripts/vw-compare.sh installs them into a venv). With --by-window VW scores a whole
training window before it learns any of it, as the joint model does (lines tagged
SCENARIO/CLICKED/WINDOW); by default it learns each example right after scoring it.
"""
import sys
import time

import numpy as np
from vowpalwabbit import Workspace


def auc(scores, labels):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    y = labels[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        ranks[i:j] = (i + j + 1) / 2.0
        i = j
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def main(stream, extra):
    by_window = "--by-window" in extra
    extra = [x for x in extra if x != "--by-window"]
    options = "--loss_function logistic --link logistic -b 18 --quiet " + " ".join(extra)
    vw = Workspace(options)
    scores, labels, scenarios, clicked = [], [], [], []
    pending, window = [], None
    started = time.time()
    with open(stream) as lines:
        for line in lines:
            tag = line.split(" ", 2)[1]
            fields = tag[1:].split("/") if tag.startswith("'") else ["all", "1", "0"]
            if by_window and fields[2:] != window:
                # The joint model's protocol: a window is scored, then learned.
                for held in pending:
                    vw.learn(held)
                pending, window = [], fields[2:]
            # Predict first, then learn: progressive validation.
            scores.append(vw.predict(line))
            if by_window:
                pending.append(line)
            else:
                vw.learn(line)
            labels.append(1 if line.startswith("1 ") else 0)
            scenarios.append(fields[0])
            clicked.append(fields[1] == "1")
    elapsed = time.time() - started
    vw.finish()
    scores, labels = np.array(scores), np.array(labels)
    scenarios, clicked = np.array(scenarios), np.array(clicked)
    fmt = lambda x: "   -  " if x is None else f"{x:.4f}"
    protocol = "each window scored, then learned (the joint model's protocol)" if by_window else "each example scored, then learned"
    print(f"vw options: {options.strip()}; {protocol}")
    print(f"vw examples: {len(labels)}, positives: {int(labels.sum())}")
    print(f"{'slice':<15} {'n':>9} {'pos':>8} {'vw AUC':>7}   {'clicked only: n':>15} {'pos':>8} {'vw AUC':>7}")
    for name in ["all"] + sorted(set(scenarios) - {"all"}):
        rows = np.ones(len(labels), bool) if name == "all" else scenarios == name
        both = rows & clicked
        print(
            f"{name:<15} {rows.sum():>9} {int(labels[rows].sum()):>8} {fmt(auc(scores[rows], labels[rows])):>7}"
            f"   {both.sum():>15} {int(labels[both].sum()):>8} {fmt(auc(scores[both], labels[both])):>7}"
        )
    print(f"vw wall time: {elapsed:.1f} s = {len(labels) / elapsed:.0f} examples/s (one pass, through the Python binding, text parsing included)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
