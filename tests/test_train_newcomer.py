"""python -m minivit.train for a newcomer (issue #15): a mistyped --data-dir is an error, --subset
scales the test pass too, the test pass shows progress, and a long run says how long it will take."""
import json

import pytest

import minivit.data.cifar10 as C
from minivit import train


def test_a_mistyped_data_dir_is_an_error_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "fetch", lambda *a, **k: pytest.fail("downloaded without --download"))
    with pytest.raises(SystemExit) as e:
        train.main(["--data-dir", str(tmp_path / "nonexistent"), "--epochs", "1", "--device", "cpu",
                    "--out-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"error: --data-dir {tmp_path / 'nonexistent'} does not exist") and "--download" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []            # no data folder, cache or run directory
