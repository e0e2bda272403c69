"""Settings are declared once (worker/settings.py): the environment, the flags of `run` and the
docs' table all come from those declarations."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import pytest

from tests.conftest import ROOT
from worker.settings import Settings, SettingsError, flagged


def test_the_docs_table_is_the_one_the_declarations_make():
    result = subprocess.run([sys.executable, "tools/settings_table.py", "--check"], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stdout.decode()


def test_every_setting_has_one_variable_and_a_flag_at_most_once():
    envs = [f.metadata["env"] for f in fields(Settings)]
    assert len(envs) == len(set(envs))
    flags = [flag for flag, _, _ in flagged()]
    assert len(flags) == len(set(flags)) and "--health-port" in flags


@pytest.mark.parametrize(
    ("env", "raw", "field", "value"),
    [
        ("WORKER_QUEUES", " a, b ,", "queues", ("a", "b")),
        ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("LOG_FORMAT", "JSON", "log_format", "json"),
        ("RETRY_INTERVALS", ",", "retry_intervals", ()),
        ("WEBHOOK_HOSTS", "A.example, b", "webhook_hosts", ("a.example", "b")),
        ("DEAD_WORKER_AFTER", "3.5", "dead_worker_after", 3.5),
        ("HEALTH_PORT", "", "health_port", 8001),  # empty: the default
    ],
)
def test_a_variable_is_parsed_by_its_declaration(env, raw, field, value):
    assert getattr(Settings.from_env({env: raw}), field) == value


@pytest.mark.parametrize(
    ("env", "raw"),
    [
        ("HEALTH_PORT", "x"),
        ("JOB_TIMEOUT", "0"),
        ("LIVENESS_TIMEOUT", "nan"),
        ("WORKER_QUEUES", ","),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_names_its_variable(env, raw):
    with pytest.raises(SettingsError, match=env):
        Settings.from_env({env: raw})


def test_a_flag_goes_through_the_same_parser_as_its_variable():
    cmd = [sys.executable, "-m", "worker", "run", "--log-level", "loud"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration error: LOG_LEVEL must be" in result.stderr


def test_setup_mistakes_are_said_at_start(tmp_path):
    from worker.app import setup_problems, store_error, store_note

    (tmp_path / "in").mkdir()
    (tmp_path / "store.db").write_bytes(b"")
    env = {"INPUT_ROOTS": f"{tmp_path}/in:{tmp_path}/typo", "STORE_URL": f"sqlite:///{tmp_path}/store.db"}
    assert setup_problems(Settings.from_env(env)) == [
        f"INPUT_ROOTS: {tmp_path}/typo is not a directory: no path input can be read from it"
    ]
    typo = Settings.from_env({**env, "STORE_URL": f"sqlite:///{tmp_path}/stroe.db"})
    assert store_note(typo) == (
        f"store {tmp_path}/stroe.db does not exist yet: the first job creates it"
        " (if you meant an existing store, check STORE_URL)"
    )
    assert store_error(typo) is None  # its folder exists: a new store, said at INFO
    assert store_error(Settings.from_env({})) is None  # the default's folder is made as needed


def test_a_store_url_whose_folder_does_not_exist_stops_the_worker(tmp_path):
    url = f"sqlite:///{tmp_path}/tpyo/store.db"
    env = dict(os.environ, STORE_URL=url, REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"STORE_URL names {tmp_path}/tpyo/store.db, whose folder {tmp_path}/tpyo does not exist" in line
    assert "mkdir -p" in line and not (tmp_path / "tpyo").exists()
