"""Vowpal Wabbit on the same example stream as the joint model, one pass, logistic loss,
hashed features (2^18); prints progressive-validation CTR AUC and examples/s.

usage: python vw_compare.py STREAM.vw
STREAM.vw comes from `shopstream model quality --vw-out STREAM.vw` (same order, same
features as the joint model's inputs). Each example is predicted before VW learns it, so
the AUC is prequential like ours. Needs `pip install vowpalwabbit numpy`
(scripts/vw-compare.sh installs them into a venv).
"""
import sys
import time

import numpy as np
from vowpalwabbit import Workspace


def auc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    y = np.asarray(labels)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        ranks[i:j] = (i + j + 1) / 2.0
        i = j
    pos = y.sum()
    neg = len(y) - pos
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def main(stream):
    vw = Workspace("--loss_function logistic --link logistic -b 18 --quiet")
    scores, labels = [], []
    started = time.time()
    with open(stream) as lines:
        for line in lines:
            # Predict first, then learn: progressive validation, like the joint model.
            scores.append(vw.predict(line))
            vw.learn(line)
            labels.append(1 if line.startswith("1 ") else 0)
    elapsed = time.time() - started
    vw.finish()
    labels = np.array(labels)
    print(f"vw examples: {len(labels)}")
    print(f"vw CTR AUC (progressive): {auc(np.array(scores), labels):.4f}")
    print(f"vw wall time: {elapsed:.1f} s = {len(labels) / elapsed:.0f} examples/s (one pass, through the Python binding, text parsing included)")


if __name__ == "__main__":
    main(sys.argv[1])
