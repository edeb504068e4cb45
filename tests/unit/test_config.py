from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sentinel.config import ConfigError, load_section, read_yaml_file


@dataclass
class Demo:
    listen_address: str = "0.0.0.0:9464"
    interval: float = field(default=5.0, metadata={"min": 0.1})
    collectors: list[str] = field(
        default_factory=lambda: ["gpu", "disk"], metadata={"choices": ("gpu", "disk", "host")}
    )
    enabled: bool = True
    root: Path = Path("/proc")


def test_precedence_file_env_flags():
    data = {"demo": {"interval": 2, "listen_address": "1.2.3.4:1"}}
    env = {"SENTINEL_DEMO_INTERVAL": "3.5", "SENTINEL_DEMO_ENABLED": "no", "OTHER": "x"}
    cfg = load_section(Demo, "demo", file_data=data, env=env, overrides={"interval": 7.0})
    assert cfg.interval == 7.0
    assert cfg.enabled is False
    assert cfg.listen_address == "1.2.3.4:1"


def test_env_list_is_comma_separated():
    cfg = load_section(Demo, "demo", env={"SENTINEL_DEMO_COLLECTORS": "gpu, host"})
    assert cfg.collectors == ["gpu", "host"]


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"demo": {"bogus": 1}}, "demo.bogus: unknown key (valid keys: collectors, enabled"),
        ({"demo": {"interval": "fast"}}, "demo.interval: 'fast' is not a number"),
        ({"demo": {"interval": 0}}, "below the minimum 0.1"),
        ({"demo": {"interval": float("nan")}}, "demo.interval: nan is not a finite number"),
        ({"demo": {"interval": float("inf")}}, "demo.interval: inf is not a finite number"),
        ({"demo": {"collectors": ["gpu", "tape"]}}, "'tape' is not valid (valid: gpu, disk, host)"),
        ({"demo": {"enabled": "maybe"}}, "not a boolean"),
        ({"demo": [1, 2]}, "demo: must be a mapping"),
    ],
)
def test_bad_values_name_key_value_and_valid(data, needle):
    with pytest.raises(ConfigError) as e:
        load_section(Demo, "demo", file_data=data, env={})
    assert needle in str(e.value)


def test_non_finite_env_number_is_refused():
    with pytest.raises(ConfigError, match="SENTINEL_DEMO_INTERVAL .*'nan' is not a finite"):
        load_section(Demo, "demo", env={"SENTINEL_DEMO_INTERVAL": "nan"})


def test_bad_env_key_is_a_warning_naming_it(caplog):
    """The environment is shared with other programs: a name that is no key is not fatal."""
    with caplog.at_level("WARNING"):
        cfg = load_section(Demo, "demo", env={"SENTINEL_DEMO_NOPE": "1",
                                              "SENTINEL_DEMO_INTERVALS": "2"})
    assert cfg.interval == 5.0
    assert "SENTINEL_DEMO_NOPE is not a setting of demo: ignored (valid:" in caplog.text
    assert "SENTINEL_DEMO_INTERVALS is not a setting of demo: ignored (did you mean " \
        "SENTINEL_DEMO_INTERVAL?" in caplog.text


def test_yaml_errors(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("agent: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml_file(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml_file(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_file(tmp_path / "missing.yml")
