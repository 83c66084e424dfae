"""Byte-mutation fuzz of the image loader at scale: N seeded cases, each outcome classified.

The property test ``tests/test_ingest_fuzz.py`` keeps a small derandomized set for CI; this script
runs the same mutation space (``tests/fuzz_inputs.py``: truncation, bit flips, overwritten tags and
value lengths, runs of bytes) over many more cases. Case ``k`` of seed ``s`` draws its starting file
and its 1-4 mutations from ``numpy.random.default_rng([s, k])``, writes the mutated bytes to a file
with the starting file's suffix and loads it with :func:`ravl_med.data.pipeline.load_radiograph`
(default :class:`~ravl_med.config.IngestConfig`) in a worker process. Outcomes:

* ``valid``: a sample of shape (1, 224, 224), float32, finite, in [0, 1];
* ``ingest_error``: a clean :class:`~ravl_med.data.errors.IngestError` (a known reason, one line);
  those the pipeline's per-file boundary made from another exception (no reader or transform
  handled the input) are also counted by that exception's type;
* ``escape``: anything else: another exception, an IngestError with an unknown reason or a
  multi-line message, a non-finite / out-of-range / wrongly shaped sample, a case running past
  ``--timeout`` (the worker is killed and replaced) or a worker that died.

Starting files: the three DICOM files of the property test (pydicom's ``CT_small.dcm`` and
``JPGExtended.dcm``, a generated MONOCHROME1 CR), three generated PNGs (8- and 16-bit grey, and an
8-bit one whose image data spans two IDAT chunks, as in large real PNGs) and the real ``*.dcm``/``*.png`` samples in ``--real`` (default ``../shared/data/cxr-samples`` when it exists).
PNG ``tag``/``length`` mutations hit chunk types and chunk lengths.

Usage::

    python benchmarks/ingest_fuzz.py [--cases 10000] [--seed 0] [--workers 1] [--timeout 30]
        [--real DIR | --no-real] [--save-escapes DIR] [--json out.json]
    python benchmarks/ingest_fuzz.py --seed 0 --case 1234 --save-escapes /tmp/x   # reproduce one case

Prints the count per outcome (and per IngestError reason) and every escape with its seed and case
number; exits 1 when there is an escape.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

# Benchmark the checkout this file lives in (and import its tests' fuzz inputs).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.fuzz_inputs import (  # noqa: E402
    dicom_fields,
    draw_mutations,
    fuzz_bases,
    multi_chunk_png,
    mutate,
    png_fields,
    small_png,
)

DEFAULT_REAL = ROOT.parent / "shared" / "data" / "cxr-samples"


def starting_files(real: Path | None) -> list[tuple[str, bytes, tuple]]:
    """(name, bytes, fields) of every starting file, in a fixed order (the case draws index into it)."""
    bases = list(fuzz_bases())
    bases += [(f"generated_{bits}bit.png", raw, png_fields(raw)) for bits in (8, 16) for raw in [small_png(bits)]]
    bases.append(("generated_2idat.png", multi_chunk_png(), png_fields(multi_chunk_png())))
    if real is not None and real.is_dir():
        for path in sorted(real.glob("*.dcm")):
            raw = path.read_bytes()
            bases.append((f"real/{path.name}", raw, dicom_fields(raw)))
        for path in sorted(real.glob("*.png")):
            raw = path.read_bytes()
            bases.append((f"real/{path.name}", raw, png_fields(raw)))
    return bases


def case_input(seed: int, case: int, bases) -> tuple[str, list[tuple], bytes]:
    """(starting file name, mutations, mutated bytes) of one case."""
    rng = np.random.default_rng([seed, case])
    name, raw, fields = bases[int(rng.integers(len(bases)))]
    mutations = draw_mutations(rng)
    return name, mutations, mutate(raw, fields, mutations)


# --- the worker: loads one file per request -------------------------------------------------------


def _classify(path: Path) -> tuple[str, str]:
    """("valid" | "ingest_error" | "escape", detail) of loading ``path``."""
    import torch

    from ravl_med.data.errors import REASONS, IngestError
    from ravl_med.data.pipeline import load_radiograph

    try:
        sample = load_radiograph(path)
    except IngestError as err:
        if err.reason not in REASONS or "\n" in str(err):
            return "escape", f"IngestError not clean: {str(err)[:300]!r}"
        return "ingest_error", err.reason + _boundary(err)
    except BaseException as err:  # noqa: BLE001 - the point: anything but an IngestError escapes
        return "escape", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    image = sample["image"]
    if tuple(image.shape) != (1, 224, 224) or image.dtype != torch.float32:
        return "escape", f"sample of shape {tuple(image.shape)} and dtype {image.dtype}"
    if not bool(torch.isfinite(image).all()):
        return "escape", "non-finite values in the sample"
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        return "escape", f"sample values outside [0, 1]: {low} .. {high}"
    return "valid", ""


def _boundary(err: BaseException) -> str:
    """``""`` when a reader or transform raised ``err`` itself; `` | caught: <Type>`` when the pipeline's
    per-file boundary (:func:`~ravl_med.data.pipeline.as_ingest_error`) made it from another exception."""
    seen = err.__cause__
    while seen is not None:
        if seen is err:
            return ""
        seen = seen.__cause__ or seen.__context__
    root = err.__cause__
    while root is not None and (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    return f" | caught: {type(root).__name__}" if root is not None else ""


def _worker(conn) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    import ravl_med.data.pipeline  # noqa: F401 - import once, before the first timed case

    with tempfile.TemporaryDirectory(prefix="ingest-fuzz-") as folder:
        conn.send("ready")
        while True:
            request = conn.recv()
            if request is None:
                return
            case, suffix, data = request
            path = Path(folder) / f"case{suffix}"
            path.write_bytes(data)
            conn.send((case, *_classify(path)))


class Worker:
    """A loader process; replaced when a case hangs or kills it."""

    def __init__(self, context) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")
        self.case: int | None = None
        self.started = 0.0

    def submit(self, case: int, suffix: str, data: bytes) -> None:
        self.case, self.started = case, time.monotonic()
        self.conn.send((case, suffix, data))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.kill()


def _suffix(name: str) -> str:
    return ".png" if name.endswith(".png") else ".dcm"


def run(seed: int, cases: list[int], bases, workers: int, timeout: float, progress: bool = True) -> dict[int, tuple]:
    """case -> (outcome, detail) for every case, ``workers`` loader processes at a time."""
    context = multiprocessing.get_context("spawn")
    pool = [Worker(context) for _ in range(max(1, workers))]
    todo = list(reversed(cases))
    results: dict[int, tuple] = {}
    last_report = time.monotonic()

    def feed(worker: Worker) -> None:
        if todo:
            case = todo.pop()
            name, _, data = case_input(seed, case, bases)
            worker.submit(case, _suffix(name), data)
        else:
            worker.case = None

    for worker in pool:
        feed(worker)
    while any(w.case is not None for w in pool):
        busy = [w for w in pool if w.case is not None]
        ready = wait([w.conn for w in busy], timeout=1.0)
        now = time.monotonic()
        for index, worker in enumerate(pool):
            if worker.case is None:
                continue
            if worker.conn in ready:
                try:
                    case, outcome, detail = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(5)
                    results[worker.case] = ("escape", f"the loader process died (exit code {worker.process.exitcode})")
                    worker.kill()
                    pool[index] = worker = Worker(context)
                else:
                    results[case] = (outcome, detail)
                feed(worker)
            elif now - worker.started > timeout:
                results[worker.case] = ("escape", f"hang: no outcome within {timeout:g} s")
                worker.kill()
                pool[index] = worker = Worker(context)
                feed(worker)
        if progress and time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            counts = Counter(o for o, _ in results.values())
            print(f"  {len(results)}/{len(cases)} cases: {dict(counts)}", flush=True)
    for worker in pool:
        worker.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--case", type=int, action="append", help="run only this case (repeatable): reproduce an escape")
    parser.add_argument("--workers", type=int, default=1, help="loader processes (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a case counts as a hang (default 30)")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help=f"folder of real samples (default {DEFAULT_REAL})")
    parser.add_argument("--no-real", action="store_true", help="generated and pydicom starting files only")
    parser.add_argument("--save-escapes", type=Path, help="write each escaping input to this folder")
    parser.add_argument("--json", type=Path, help="write counts and escapes as JSON")
    args = parser.parse_args(argv)

    bases = starting_files(None if args.no_real else args.real)
    cases = args.case if args.case else list(range(args.cases))
    print(f"ingest fuzz: seed {args.seed}, {len(cases)} cases, {args.workers} worker(s), timeout {args.timeout:g} s")
    print("starting files: " + ", ".join(name for name, _, _ in bases))
    start = time.perf_counter()
    results = run(args.seed, cases, bases, args.workers, args.timeout)
    seconds = time.perf_counter() - start

    outcomes = Counter(outcome for outcome, _ in results.values())
    reasons = Counter(detail.split(" | ")[0] for outcome, detail in results.values() if outcome == "ingest_error")
    caught = Counter(detail.split(" | caught: ")[1] for outcome, detail in results.values()
                     if outcome == "ingest_error" and " | caught: " in detail)
    escapes = []
    for case in sorted(c for c, (outcome, _) in results.items() if outcome == "escape"):
        name, mutations, data = case_input(args.seed, case, bases)
        escapes.append({"seed": args.seed, "case": case, "file": name, "mutations": repr(mutations),
                        "detail": results[case][1]})
        if args.save_escapes is not None:
            args.save_escapes.mkdir(parents=True, exist_ok=True)
            (args.save_escapes / f"seed{args.seed}-case{case}{_suffix(name)}").write_bytes(data)

    print(f"\n{len(results)} cases in {seconds:.0f} s ({len(results) / max(seconds, 1e-9):.1f} cases/s)")
    for outcome in ("valid", "ingest_error", "escape"):
        print(f"  {outcome:<13} {outcomes.get(outcome, 0)}")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"    {reason:<30} {count}")
    if caught:
        print(f"  of the IngestErrors, {sum(caught.values())} were made by the pipeline's per-file boundary from "
              "another exception (clean for the caller, but no reader handled the input):")
        for kind, count in sorted(caught.items(), key=lambda item: -item[1]):
            where = [c for c, (o, d) in sorted(results.items()) if o == "ingest_error" and d.endswith(f"caught: {kind}")]
            print(f"    {kind:<30} {count}  (cases {', '.join(map(str, where[:5]))}{', ...' if len(where) > 5 else ''})")
    for escape in escapes:
        print(f"ESCAPE seed {escape['seed']} case {escape['case']} ({escape['file']}): {escape['detail']}\n"
              f"    mutations {escape['mutations']}\n"
              f"    reproduce: python benchmarks/ingest_fuzz.py --seed {escape['seed']} --case {escape['case']}")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "cases": len(results), "seconds": round(seconds, 1),
                                         "starting_files": [n for n, _, _ in bases], "outcomes": dict(outcomes),
                                         "ingest_error_reasons": dict(reasons),
                                         "caught_by_the_boundary": dict(caught), "escapes": escapes}, indent=2) + "\n")
    return 1 if escapes else 0


if __name__ == "__main__":
    raise SystemExit(main())
