"""
evalplus_harness.py: the program of one sandbox cell that grades a HumanEval(+)/MBPP+ solution.

It is not imported: rewards.check_code reads this file, puts the task (reference, solution, test inputs,
a nonce) where __PAYLOAD__ stands, and runs it in the sandbox; it prints one verdict line.

It runs the reference and the candidate on each input in turn, the
candidate under the per-input time limit max(1 s, 4 x the reference's time) (evalplus 0.3.1's
defaults) and at most 61 s per phase in all (evalplus: min(60, sum of the limits) + 1), both with
their prints swallowed, and stops at the first failure. Times are the cell's CPU time, where evalplus
measures wall time: on a loaded machine a correct solution ran 4x slower than its reference by the
wall clock (a wall limit of 10x still catches code that sleeps). It ends by writing one verdict line that
starts with a random nonce, so that a solution which prints or exits early cannot pass. This guards
against mistakes, not against code written to fool the checker (it runs in the same process).
"""
import base64
import copy
import json
import math
import os
import pickle
import resource
import signal
import sys
import time

import numpy as np
T = pickle.loads(base64.b64decode("__PAYLOAD__"))

class Limit(BaseException):
    pass

def alarm(*_):
    raise Limit

for sig in (signal.SIGPROF, signal.SIGALRM):
    signal.signal(sig, alarm)
sink = open(os.devnull, "w")

def timed(f, limit):  # (f(), CPU seconds) within `limit` CPU seconds (0: none) and 10 x that in wall time
    sys.stdout = sys.stderr = sink
    signal.setitimer(signal.ITIMER_PROF, limit)
    signal.setitimer(signal.ITIMER_REAL, 10 * limit)
    cpu = resource.getrlimit(resource.RLIMIT_CPU)
    if limit:  # code that catches Limit and goes on is killed by the kernel 2 s later (SIGXCPU)
        soft = int(time.process_time() + limit) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (soft if cpu[1] < 0 else min(soft, cpu[1]), cpu[1]))
    try:
        t = time.process_time()
        return f(), time.process_time() - t
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_CPU, cpu)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

def load(code):
    ns = {}
    timed(lambda: exec(code, ns), 10.0)
    fn = ns[T["entry_point"]]
    if T["test"] is None:
        return fn
    tests = dict(ns)  # the test may call the prompt's helpers (HumanEval/38's encode_cyclic)
    exec(T["test"], tests)
    return lambda: tests["check"](fn)  # plain HumanEval: one "input", check() raises on a failure

def floats(x):
    if isinstance(x, np.ndarray):
        return x.dtype in (np.float64, np.float32)
    return isinstance(x, float) or isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x)

def digits(a, b):
    a, b = str(a), str(b)
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(len(b)), b.zfill(len(a))))

def same(out, exp, args, atol):
    oracle = T["oracle"]
    if oracle == "find_zero":  # HumanEval/32: any root will do
        return abs(sum(c * math.pow(out, i) for i, c in enumerate(args[0]))) <= atol
    exact = out == exp
    if oracle == "set":
        exact = set(out) == set(exp)
    elif oracle == "not_none":
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    elif oracle == "pyramid":  # surface area with the height measured from the base to the apex
        b, h = args
        exact = exact or abs(out - round(b ** 2 + 4 * (b * math.sqrt((b / 2) ** 2 + h ** 2)) / 2)) <= atol
    elif oracle == "digits":  # the shorter number padded with zeros
        exact = exact or out == digits(*args)
    if not exact and atol:
        return (type(out) is type(exp) and (not isinstance(exp, (list, tuple)) or len(out) == len(exp))
                and bool(np.allclose(out, exp, rtol=1e-07, atol=atol)))
    return bool(exact)

def why(e, limit):
    return f"time limit {limit:.1f} s" if isinstance(e, Limit) else f"{type(e).__name__}: {str(e)[:200]}"

def verdict():
    v = {"base": False, "plus": None if T["plus"] is None else False, "error": None}
    try:
        ref = load(T["reference"])
    except BaseException as e:
        return dict(v, error="reference: " + why(e, 10.0))
    try:
        cand = load(T["solution"])
    except BaseException as e:
        return dict(v, error="solution: " + why(e, 10.0))
    for phase in ("base", "plus"):
        if T[phase] is None:
            break
        atol, spent = T["atol"], 0.0
        for i, args in enumerate(T[phase]):
            try:
                exp, t_ref = timed(lambda: ref(*copy.deepcopy(args)), 0)
            except BaseException as e:
                return dict(v, error=f"reference, {phase} input {i}: " + why(e, 0))
            exp = exp is not None if T["oracle"] == "not_none" else exp
            limit = max(1.0, 4.0 * t_ref)
            try:
                out, t = timed(lambda: cand(*copy.deepcopy(args)), limit)
                spent += t
                if atol == 0 and floats(exp):  # as evalplus: from here on, this phase compares with 1e-6
                    atol = 1e-6
                ok = same(out, exp, args, atol)
            except BaseException as e:
                return dict(v, error=f"{phase} input {i}: " + why(e, limit))
            if not ok or spent > 61:
                return dict(v, error=f"{phase} input {i}: " + ("wrong output" if not ok else "over 61 s in all"))
        v[phase] = True
    return v

os.write(1, (T["nonce"] + json.dumps(verdict()) + "\n").encode())
