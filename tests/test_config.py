"""Config loading: the example file, every kind of mistake, exit code 78."""

from __future__ import annotations

from pathlib import Path

import pytest

from hallway.cli import EX_CONFIG, main
from hallway.config import Config, load_config, parse_config
from hallway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_matches_defaults() -> None:
    config = load_config(ROOT / "config.example.toml")
    defaults = Config()
    # The example documents the defaults: every section's values equal the built-in ones,
    # apart from paths made absolute relative to the file.
    for section in ("scanner", "identity", "proximity", "server", "mdns", "logging", "mqtt"):
        got = getattr(config, section).model_dump()
        want = getattr(defaults, section).model_dump()
        for key in ("unix_socket", "token_file", "trace"):
            got.pop(key, None)
            want.pop(key, None)
        assert got == want, section
    assert config.storage.database == str(ROOT / "hallway.db")


def test_example_config_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    for section_name, section in Config().model_dump().items():
        assert f"[{section_name}]" in text
        for key in section:
            assert f"{key} =" in text, f"{section_name}.{key} is not in config.example.toml"


def test_check_config_example_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config.example.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_three_mistakes_are_all_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[scanner]\nmode = "loud"\nbogus = 1\n\n[proximity]\nnear_m = -3\n'
    )
    assert main(["check-config", str(bad)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{bad}:2: scanner.mode:" in err
    assert f"{bad}:3: scanner.bogus: unknown key" in err
    assert f"{bad}:6: proximity.near_m:" in err
    assert "3 problem(s)" in err


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.toml"
    bad.write_text('[server]\ntcp_port = 7447\ntcp_host = "x\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    (problem,) = info.value.problems
    assert problem.line == 3
    assert "TOML syntax error" in problem.reason


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.toml")]) == EX_CONFIG
    assert "file not found" in capsys.readouterr().err


def test_zone_edges_must_be_ordered() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[proximity]\nimmediate_m = 5.0\nnear_m = 4.0\n", file="x.toml")
    assert "proximity" in str(info.value)


def test_tokens_are_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "s3cr3t-token-value-0123456789"
    path = tmp_path / "c.toml"
    path.write_text(
        f'[server]\ntokens = ["{secret}"]\n'
        '[mqtt]\nusername = "kiosk"\npassword = "hunter2hunter2"\n'
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    assert "hunter2hunter2" not in out
    assert "***" in out


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.server.tcp_port = 1  # type: ignore[misc]


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[storage]\ndatabase = "data/h.db"\n[server]\nunix_socket = ""\n')
    config = load_config(path)
    assert config.storage.database == str(tmp_path / "data" / "h.db")
    assert config.server.unix_socket is None
