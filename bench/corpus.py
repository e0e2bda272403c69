"""A corpus of real PDFs from several producers, fetched into var/corpus/ (gitignored, never in the package).

Sources, each pinned by version (the sha256 of every file is recorded in var/corpus/manifest.json
and printed by the benchmarks, so that figures can be reproduced):

- Debian `-doc` packages, fetched with `apt-get download PKG=VERSION` and unpacked with
  `dpkg-deb -x` (no install, no root): TeX (dblatex/XeTeX, pdfTeX), texinfo and LaTeX manuals;
- pypdf's own test resources from its source distribution on PyPI (`pip download --no-binary`):
  office suites (LibreOffice, Microsoft Word, Excel, Google Docs), a scanner with an OCR layer
  (LuraDocument, EPSON Scan), AutoCAD, cairo, Microsoft Print to PDF, InDesign;
- OCRmyPDF's test resources from its source distribution: a page with an OCR layer, and scans
  with no text layer at all (what a document of photographed pages looks like).

Run: .venv/bin/python bench/corpus.py [--out var/corpus]   (idempotent; about 60 MB downloaded once)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "var" / "corpus"


@dataclass(frozen=True)
class Source:
    kind: str  # "deb" or "sdist"
    package: str
    version: str
    files: tuple[str, ...]  # paths inside the unpacked package
    producer: str  # what made the files, for the tables


SOURCES = (
    Source(
        "deb", "debian-reference-en", "2.100", ("usr/share/debian-reference/debian-reference.en.pdf",), "dblatex, XeTeX"
    ),
    Source(
        "deb",
        "r-doc-pdf",
        "4.2.2.20221110-2",
        tuple(f"usr/share/R/doc/manual/R-{m}.pdf" for m in ("intro", "exts", "admin", "lang", "data")),
        "texinfo, pdfTeX",
    ),
    Source(
        "deb",
        "octave-doc",
        "7.3.0-2",
        ("usr/share/doc/octave/liboctave.pdf", "usr/share/doc/octave/refcard-a4.pdf"),
        "texinfo, plain TeX",
    ),
    Source(
        "deb",
        "pari-doc",
        "2.15.2-1",
        ("usr/share/pari/doc/tutorial.pdf", "usr/share/pari/doc/develop.pdf", "usr/share/pari/doc/refcard.pdf"),
        "plain TeX, pdfTeX",
    ),
    Source("deb", "gnuplot-doc", "5.4.4+dfsg1-2", ("usr/share/doc/gnuplot/gnuplot.pdf",), "LaTeX"),
    Source(
        "deb",
        "asymptote-doc",
        "2.85+ds-1",
        ("usr/share/doc/asymptote/asymptote.pdf", "usr/share/doc/asymptote/asy-latex.pdf"),
        "texinfo, LaTeX",
    ),
    Source(
        "sdist",
        "pypdf",
        "7.1.1",
        tuple(
            f"resources/{name}"
            for name in (
                "GeoBase_NHNC1_Data_Model_UML_EN.pdf",  # Microsoft Word 2010
                "FormTestFromOo.pdf",  # LibreOffice 6.0
                "multilang.pdf",  # LibreOffice 6.4
                "example.pdf",  # Google Docs (Skia)
                "test Orient.pdf",  # Microsoft Print to PDF
                "Seige_of_Vicksburg_Sample_OCR.pdf",  # scanner, OCR layer (LuraDocument)
                "indirect-rotation.pdf",  # EPSON Scan, OCR layer
                "AutoCad_Diagram.pdf",  # AutoCAD
                "selenium-pypdf-issue-177.pdf",  # cairo
                "crazyones.pdf",  # XeTeX (xdvipdfmx)
                "pdflatex-outline.pdf",  # pdfTeX
            )
        ),
        "various",
    ),
    Source(
        "sdist",
        "ocrmypdf",
        "17.13.0",
        tuple(
            f"tests/resources/{name}"
            for name in (
                "graph_ocred.pdf",  # OCR layer added by OCRmyPDF
                "tagged.pdf",  # LibreOffice 7.3
                "overlay.pdf",  # PDFpen
                "c03-29.pdf",  # scans, no text layer
                "skew.pdf",
                "francais.pdf",
                "3small.pdf",
                "cardinal.pdf",
            )
        ),
        "various; scans",
    ),
)


# Two of pypdf's files are named after its bug tracker; they are picked by content and named here.
BY_CONTENT = {
    "pypdf": {
        "e93598d0edf661cd4ff52618dccc5f005a31ab3c294644d2dd0e035688c7d8fc": "excel-pdfmaker-japanese.pdf",
        "4e06e1d09e4ea95a26227a5c13ddde11ab86f4d979a4ec3c70c416b2ac0c4271": "indesign-pdfsharp.pdf",
    }
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_deb(src: Source, cache: Path, into: Path) -> None:
    debs = list(cache.glob(f"{src.package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "-q", f"{src.package}={src.version}"], cwd=cache, check=True)
        debs = list(cache.glob(f"{src.package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(into)], check=True)


def _fetch_sdist(src: Source, cache: Path, into: Path) -> None:
    stem = src.package.replace("-", "_")
    found = list(cache.glob(f"{stem}-{src.version}.tar.gz"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "-d", str(cache), f"{src.package}=={src.version}"], check=True)
        found = list(cache.glob(f"{stem}-{src.version}.tar.gz"))
    prefix = f"{stem}-{src.version}/"
    wanted = BY_CONTENT.get(src.package, {})
    with tarfile.open(found[0]) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if not member.isfile() or not (name in src.files or name.endswith(".pdf") and wanted):
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            local = wanted.get(hashlib.sha256(data).hexdigest())
            if name in src.files or local:
                out = into / (name if name in src.files else str(Path(src.files[0]).parent / local))
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)


def fetch(out: Path = DEFAULT_OUT) -> list[dict]:
    """Fetch what is missing; the manifest: one entry per file (path, package, version, sha256, bytes)."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = []
    for src in SOURCES:
        dest = out / src.package
        src = Source(src.kind, src.package, src.version, src.files + _named(src), src.producer)
        if not all((dest / Path(f).name).exists() for f in src.files):
            with tempfile.TemporaryDirectory() as tmp:
                (_fetch_deb if src.kind == "deb" else _fetch_sdist)(src, cache, Path(tmp))
                dest.mkdir(parents=True, exist_ok=True)
                for f in src.files:
                    shutil.copyfile(Path(tmp) / f, dest / Path(f).name)
        for f in src.files:
            path = dest / Path(f).name
            manifest.append(
                {
                    "path": str(path.relative_to(out)),
                    "package": src.package,
                    "version": src.version,
                    "source": src.kind,
                    "sha256": sha256_of(path),
                    "bytes": path.stat().st_size,
                }
            )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _named(src: Source) -> tuple[str, ...]:
    """The files of `src` picked by content, as paths beside its others."""
    folder = Path(src.files[0]).parent
    return tuple(str(folder / local) for local in BY_CONTENT.get(src.package, {}).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for entry in fetch(args.out):
        print(f"{entry['sha256'][:16]}  {entry['package']}={entry['version']}  {entry['path']}")


if __name__ == "__main__":
    main()
