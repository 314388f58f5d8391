#!/usr/bin/env python3
"""length_reward.py — a tiny external scorer for safe-score --exec (tests and an example).

Reads one JSON request per line, {"id", "prompt", "response"}, and answers each with one line
    {"reward": <words in the response>, "chars": <characters>, "prompt_words": <words>, "id": <id>}
(safe-score checks that "id" names the request; the numeric extras become reward components).

Test switches:
    --nan-id ID      answer NaN (Python's json token) for record ID
    --die-after N    exit with status 4 after N answers
    --pad N          add a string of N bytes to every answer (big answers: pipe deadlock test)
    --bare           answer a bare number instead of an object
"""
import argparse
import json
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--nan-id")
ap.add_argument("--die-after", type=int)
ap.add_argument("--pad", type=int, default=0)
ap.add_argument("--bare", action="store_true")
args = ap.parse_args()

answered = 0
for line in sys.stdin:
    if args.die_after is not None and answered >= args.die_after:
        sys.exit(4)
    req = json.loads(line)
    words = len(req["response"].split())
    reward = float("nan") if req["id"] == args.nan_id else float(words)
    if args.bare:
        out = json.dumps(reward)
    else:
        ans = {"reward": reward, "chars": len(req["response"]),
               "prompt_words": len(req["prompt"].split()), "id": req["id"]}
        if args.pad:
            ans["pad"] = "x" * args.pad
        out = json.dumps(ans)
    print(out, flush=True)
    answered += 1
