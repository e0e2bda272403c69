"""Text extraction on a corpus of real PDFs: word-level F1 against an independent reference, and pages/s.

Extractors, each over the same files in one run, order alternating between rounds:
- `pypdf`: `PdfReader(data)` and `page.extract_text()` per page (what worker/pdf.py did before PDFium);
- `pypdf-layout`: the same with `extraction_mode="layout"` (pypdf places glyphs by their positions);
- `pdfium`: pypdfium2, `PdfDocument(data)`, `page.get_textpage().get_text_range()` per page;
- `pdfium-words`: the same, then `worker.pdfwords.rejoin` (words split a glyph at a time put back
  together), as the worker's child does: its cost is the difference to `pdfium`;
- `worker`: `worker.pdf.extract(data)`, the job's path (checks, limits, progress hooks, metadata).
The reference is pdfminer.six (`extract_pages`, words from glyph gaps; text inside form
XObjects included, rotated text read as lines), a parser written independently of both; its
text is cached per file sha256 in var/corpus/reference/ and timed once. On two documents its
words are shown wrong (against the strings of the content stream and the rendered pages, see
docs/benchmarks.md), and another independent reading is their reference (REFERENCE_FOR):
poppler's `pdftotext` (Debian's poppler-utils) where pdfminer drops the `\\ ` escaped spaces
of a CAD drawing's strings, and pdfminer taking words from the producer's own space glyphs
only (word_margin 1.0) on a letter-spaced OCR layer, where gaps between letters are as wide as
a word space.

Word-level F1: the text of the whole document, NFKC-normalized, soft hyphens dropped, cut into
words (runs of letters and digits, `\\w+`; pdfminer's `(cid:N)` for a glyph without text is
no word), compared as multisets with the reference's (a word
in a right-to-left script counts in either order: pdfminer gives visual order, PDFium logical).
A document whose reference has no words (a scan) scores 1 when the extractor finds none either.
"glued" is the share of an extractor's words that are 20 letters or more (words run together).

Run: .venv/bin/python bench/corpus.py && .venv/bin/python bench/bench_extract.py [--rounds 3] [--json out.json]
(pdfminer.six and pypdf come with the `dev` extra, which `make venv` installs)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import re
import statistics
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import DEFAULT_OUT, fetch  # noqa: E402

logging.getLogger("pypdf").setLevel(logging.ERROR)
logging.getLogger("pdfminer").setLevel(logging.ERROR)

WORD = re.compile(r"\w+")
GOAL_F1 = 0.98


CID = re.compile(r"\(cid:\d+\)")  # pdfminer's mark for a glyph it has no text for: no word
RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")


def words(pages: list[str]) -> Counter[str]:
    """Words of the text; a right-to-left word counts the same in visual (pdfminer) and logical order."""
    text = CID.sub(" ", unicodedata.normalize("NFKC", "\n".join(pages)).replace("\u00ad", ""))
    return Counter(min(w, w[::-1]) if RTL.search(w) else w for w in WORD.findall(text))


def f1(got: Counter[str], ref: Counter[str]) -> float:
    if not ref:
        return 1.0 if not got else 0.0
    common = sum((got & ref).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def glued(counts: Counter[str]) -> float:
    total = sum(counts.values())
    return sum(n for w, n in counts.items() if len(w) >= 20 and w.isalpha()) / total if total else 0.0


# -- extractors: bytes -> text per page --------------------------------------------------------


def by_pypdf(data: bytes, mode: str = "plain") -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    return [page.extract_text(extraction_mode=mode) or "" for page in reader.pages]


def by_pdfium(data: bytes, rebuild: bool = False) -> list[str]:
    import pypdfium2 as pdfium

    from worker.pdfwords import rejoin

    doc = pdfium.PdfDocument(data)
    try:
        out = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            text = textpage.get_text_range()
            out.append(rejoin(textpage, text) if rebuild else text)
            textpage.close()
            page.close()
        return out
    finally:
        doc.close()


def by_worker(data: bytes) -> list[str]:
    from worker.pdf import extract

    return extract(data).pages


def by_pdftotext(data: bytes) -> list[str]:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=data, capture_output=True, check=True).stdout
    return out.decode("utf-8").split("\f")[:-1]  # a form feed ends every page


def by_pdfminer(data: bytes, word_margin: float = 0.1) -> list[str]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams, LTFigure, LTTextContainer

    def text(items: object) -> str:
        return "".join(
            el.get_text() if isinstance(el, LTTextContainer) else text(el) if isinstance(el, LTFigure) else ""
            for el in items  # type: ignore[attr-defined]
        )

    # all_texts: text inside figures (form XObjects) too; detect_vertical: rotated text as lines, not letters
    params = LAParams(all_texts=True, detect_vertical=True, word_margin=word_margin)
    return [text(page) for page in extract_pages(io.BytesIO(data), laparams=params)]


EXTRACTORS: dict[str, Callable[[bytes], list[str]]] = {
    "pypdf": by_pypdf,
    "pypdf-layout": lambda data: by_pypdf(data, "layout"),
    "pdfium": by_pdfium,
    "pdfium-words": lambda data: by_pdfium(data, rebuild=True),
    "worker": by_worker,
}


REFERENCES: dict[str, Callable[[bytes], list[str]]] = {
    "pdfminer": by_pdfminer,
    "pdftotext": by_pdftotext,
    "pdfminer-space-glyphs": lambda data: by_pdfminer(data, word_margin=1.0),
}
# Documents (by sha256) whose pdfminer words are shown wrong, and the reading that is right there.
REFERENCE_FOR = {
    # pypdf/AutoCad_Diagram.pdf: strings like `(1.\ Strip\ the\ cable) Tj`; pdfminer drops `\ `
    "057fa11250616292f87ffbca0a9a24c0482f7a476f77de2158ef673412442715": "pdftotext",
    # pypdf/indirect-rotation.pdf: `2.9 Tc ( Nort) Tj 0 Tc (h) Tj`, letter gaps a word space wide
    "d32136872da0ee462f685026a8ff5da21fde5776c4d53fc361cbf75dd62fb82f": "pdfminer-space-glyphs",
}


def reference(data: bytes, sha: str, cache: Path) -> tuple[list[str], float]:
    """The reference text per page and the seconds it took (cached: pdfminer is slow)."""
    kind = REFERENCE_FOR.get(sha, "pdfminer")
    path = cache / (f"{sha}.json" if kind == "pdfminer" else f"{sha}.{kind}.json")
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["pages"], saved["seconds"]
    t = time.perf_counter()
    pages = REFERENCES[kind](data)
    seconds = time.perf_counter() - t
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pages": pages, "seconds": seconds}))
    return pages, seconds


def timed(fn: Callable[[bytes], list[str]], data: bytes) -> tuple[list[str] | None, float, str | None]:
    t = time.perf_counter()
    try:
        pages: list[str] | None = fn(data)
        error = None
    except Exception as exc:  # a failing extractor is a figure too
        pages, error = None, f"{type(exc).__name__}: {exc}"[:120]
    return pages, time.perf_counter() - t, error


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, {' '.join(wanted)}"


def run(rounds: int, names: list[str], only: str | None) -> dict:
    manifest = fetch(DEFAULT_OUT)
    if only:
        manifest = [m for m in manifest if only in m["path"]]
    docs = []
    for entry in manifest:
        data = (DEFAULT_OUT / entry["path"]).read_bytes()
        ref_pages, ref_seconds = reference(data, entry["sha256"], DEFAULT_OUT / "reference")
        ref = words(ref_pages)
        doc = {**entry, "pages": len(ref_pages), "ref_words": sum(ref.values()), "ref_seconds": ref_seconds}
        doc["reference"] = REFERENCE_FOR.get(entry["sha256"], "pdfminer")
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                pages, seconds, error = timed(EXTRACTORS[name], data)
                times[name].append(seconds)
                if r == 0:
                    got = words(pages or [])
                    doc[name] = {"error": error, "words": sum(got.values()), "f1": f1(got, ref), "glued": glued(got)}
                    doc[name]["blank_pages"] = sum(1 for p in pages or [] if not p.strip())
        for name in names:
            doc[name]["seconds"] = statistics.median(times[name])
        docs.append(doc)
        print(row(doc, names), flush=True)
    return {"cpu": cpu(), "rounds": rounds, "versions": versions(), "documents": docs}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("pypdf", "pypdfium2", "pdfminer.six")}


def row(doc: dict, names: list[str]) -> str:
    ref = "" if doc["reference"] == "pdfminer" else f" ({doc['reference']})"
    cells = [f"{doc['path']:<48} {doc['pages']:>5}p {doc['ref_words']:>7}w{ref}"]
    for name in names:
        d = doc[name]
        pps = doc["pages"] / d["seconds"] if d["seconds"] else 0
        mark = "ERR " if d["error"] else ""
        cells.append(f"{name} {mark}F1 {d['f1']:.3f} {pps:7.1f} p/s")
    return " | ".join(cells)


def summary(result: dict, names: list[str]) -> str:
    docs = result["documents"]
    pages = sum(d["pages"] for d in docs)
    lines = [f"CPU: {result['cpu']}; {len(docs)} documents, {pages} pages; versions {result['versions']}"]
    ref_seconds = sum(d["ref_seconds"] for d in docs)
    lines.append(f"reference (once, pdfminer but {len(REFERENCE_FOR)}): {pages / ref_seconds:.1f} pages/s overall")
    for name in names:
        seconds = sum(d[name]["seconds"] for d in docs)
        scores = [d[name]["f1"] for d in docs]
        below = [f"{d['path']} {d[name]['f1']:.3f}" for d in docs if d[name]["f1"] < GOAL_F1]
        per_doc = [d["pages"] / d[name]["seconds"] for d in docs if d[name]["seconds"]]
        lines.append(
            f"{name:<13} overall {pages / seconds:7.1f} pages/s,"
            f" median per document {statistics.median(per_doc):7.1f};"
            f" F1 median {statistics.median(scores):.3f}, min {min(scores):.3f};"
            f" {len(docs) - len(below)}/{len(docs)} documents >= {GOAL_F1}"
            + (f"; below: {', '.join(below)}" if below else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--extractors", default=",".join(EXTRACTORS))
    parser.add_argument("--only", help="only files whose path contains this")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    names = args.extractors.split(",")
    result = run(args.rounds, names, args.only)
    print(summary(result, names))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
